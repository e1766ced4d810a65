// No hold lapses while its request lives, and none is lost when its worker dies (issue 11 finding 2,
// issue 13 item 3):
// - a stream past its maximum duration, or whose client stopped reading, is cut cleanly (a last
//   chunk with finish_reason "length", then [DONE]) and billed exactly from /generation;
// - a stream that outlives its hold's lease many times keeps its hold (renewed, not expired and
//   settled late);
// - a worker killed mid-stream stops renewing its hold's lease: the lapsed hold keeps its credits
//   held (upstream billed its generation) and the reconcile settles it, within the hold, exactly
//   from the simulator's /generation;
// - reserved admissions of a killed worker are released by the server within seconds.
// Each test runs its own simulator and functions server with short settings.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits, settled, usageRecords } from '../lib/accounts.ts'
import { type Functions, startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep, test, waitFor } from '../lib/stack.ts'

const decoder = new TextDecoder()

interface WorkerInfo {
  pid: number
  state: string
  in_flight: number
  rss_mib: number
  peak_rss_mib: number
  isolate_mib: number
  heap_mib: number
  external_mib: number
}

async function workers(fn: Functions): Promise<WorkerInfo[]> {
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  return (await (await fetch(`${base}/_edge/lifecycle`)).json()).workers
}

function chat(fn: Functions, key: string, body: Record<string, unknown>, signal?: AbortSignal) {
  return fetch(`${fn.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'a long answer' }], ...body }),
    signal,
  })
}

async function readAll(res: Response): Promise<string> {
  let text = ''
  for await (const chunk of res.body!) text += decoder.decode(chunk, { stream: true })
  return text
}

async function openHolds(userId: number) {
  const [r] = await db()`
    select (select count(*) from gateway.holds where account_id = ${userId})::int as open,
           (select held from gateway.credit_balances where account_id = ${userId})::int as held`
  return r as { open: number; held: number }
}

test('a stream past its maximum duration ends cleanly and is billed exactly from /generation', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_STREAM_MAX_SECONDS: '2', GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const a = await newAccount(1_000_000, 'stream-max')
    // 400 tokens, one every 20 ms: 8 s, four times the maximum.
    const res = await chat(fn, a.key, {
      model: 'openai/gpt-4o-mini~len-400~delay-20',
      stream: true,
    })
    assert.equal(res.status, 200)
    const gen = res.headers.get('x-generation-id')!
    const text = await readAll(res)
    assert.match(text, /"finish_reason":"length","native_finish_reason":"gateway_max_duration"/)
    assert.ok(text.endsWith('data: [DONE]\n\n'), text.slice(-200))
    const r = await settled(a.userId)
    const g = await waitFor('the generation to end', () => {
      const g = sim.generation(gen)
      return Promise.resolve(g?.ended ? g : undefined)
    })
    assert.equal(g.cancelled, true, 'upstream was aborted')
    assert.ok(g.completion_tokens < 400)
    assert.equal(r.settled_by, 'generation')
    assert.equal(r.completion_tokens, g.completion_tokens)
    assert.equal(r.prompt_tokens, g.prompt_tokens)
    assert.ok(r.credits_charged > 0)
    assert.equal((await balance(a.userId)).balance, 1_000_000 - r.credits_charged)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

/** Issue 13.4: a worker stays under this at c=64, and with stalled readers too (hosted: 256 MB). */
const WORKER_PEAK_RSS_MIB = 160

test('a client that stops reading is cut: upstream stopped, billed exactly, the stream ended, the worker small', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_CLIENT_STALL_SECONDS: '1', GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const n = 10
    const a = await newAccount(100_000_000, 'stall')
    await setRateLimits(a.userId, { requests_per_minute: 10_000 })
    const before = (await workers(fn))[0]?.rss_mib
    // Readers that take 200 bytes and then nothing: far more tokens than the buffers between
    // hold, so the function's pulls stop.
    const readers = await Promise.all(Array.from({ length: n }, async () => {
      const res = await chat(fn, a.key, {
        model: 'openai/gpt-4o-mini~len-100000',
        max_tokens: 100000,
        stream: true,
      })
      assert.equal(res.status, 200)
      const reader = res.body!.getReader()
      let got = 0
      while (got < 200) got += (await reader.read()).value?.length ?? 0
      return { reader, gen: res.headers.get('x-generation-id')! }
    }))
    // Settled while every client still stalls.
    await settled(a.userId, n, 30_000)
    const records = await usageRecords(a.userId)
    const tokens = records.map((r) => r.completion_tokens)
    for (const { gen } of readers) {
      const g = await waitFor('the generation to end', () => {
        const g = sim.generation(gen)
        return Promise.resolve(g?.ended ? g : undefined)
      })
      assert.equal(g.cancelled, true, 'upstream was aborted for the stalled client')
      assert.ok(g.completion_tokens < 100000)
      const r = records.find((r) => r.generation_id === gen)!
      assert.equal(r.settled_by, 'generation')
      assert.equal(r.completion_tokens, g.completion_tokens)
    }
    await sleep(2000)
    const during = await workers(fn)
    console.log(
      `stall: ${n} stalled streams settled after ${Math.min(...tokens)}–${Math.max(...tokens)} ` +
        `tokens each; worker RSS ${before} MiB before, ` +
        `${during[0]?.rss_mib} MiB with them cut (isolate heap + external ` +
        `${during[0]?.isolate_mib} MiB, peak RSS ${during[0]?.peak_rss_mib}: heap ${
          during[0]?.heap_mib
        }, external ` +
        `${during[0]?.external_mib}; in flight ${during[0]?.in_flight})`,
    )
    // What the stalled clients left unread (~4 MB each) sits in the kernel's socket buffers, not in
    // the worker: upstream is read into one reused buffer per stream, and the isolate's heap is
    // limited as the edge runtime limits it (a small young generation). Without those the peak
    // was 230-240 MiB.
    const peak = Math.max(...during.map((w) => w.peak_rss_mib))
    assert.ok(
      peak < WORKER_PEAK_RSS_MIB,
      `a worker's peak RSS with ${n} stalled streams: ${peak} MiB (limit ${WORKER_PEAK_RSS_MIB})`,
    )
    // A client that comes back finds its stream ended cleanly.
    let tail = ''
    for (;;) {
      const { value, done } = await readers[0].reader.read()
      if (done) break
      tail += decoder.decode(value, { stream: true })
    }
    assert.match(tail, /"native_finish_reason":"gateway_client_stall"/)
    assert.ok(tail.endsWith('data: [DONE]\n\n'))
    for (const r of readers.slice(1)) await r.reader.cancel()
    assert.deepEqual(await openHolds(a.userId), { open: 0, held: 0 })
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('a stream that outlives its lease many times keeps its hold and is billed by its usage', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_STREAM_MAX_SECONDS: '120', GATEWAY_LOG_REQUESTS: '0' },
  })
  const [{ lease }] = await db()`select hold_lease_seconds as lease from gateway.system_settings`
  // The shortest lease allowed: a 12 s stream outlives it three times over.
  await db()`update gateway.system_settings set hold_lease_seconds = 4`
  try {
    const a = await newAccount(1_000_000, 'hold-alive')
    const res = await chat(fn, a.key, {
      model: 'openai/gpt-4o-mini~len-600~delay-20',
      stream: true,
    })
    assert.equal(res.status, 200)
    const reader = res.body!.getReader()
    let text = ''
    let swept = 0
    let next = Date.now()
    // Read at normal speed; meanwhile the sweeper runs now and then, as pg_cron does: the hold must
    // still be there each time.
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      text += decoder.decode(value, { stream: true })
      if (Date.now() >= next) {
        next = Date.now() + 1_000
        swept++
        await db()`select gateway.expire_stale_holds()`
        assert.equal((await openHolds(a.userId)).open, 1, 'the open stream lost its hold')
      }
    }
    assert.ok(swept >= 8, `swept ${swept} times`)
    assert.ok(text.endsWith('data: [DONE]\n\n'))
    const r = await settled(a.userId)
    assert.equal(r.settled_by, 'usage')
    assert.equal(r.status, 'success')
    assert.equal(r.completion_tokens, 600)
    const [late] =
      await db()`select settled_late from gateway.usage_records where hold_id = ${r.hold_id}`
    assert.equal(late.settled_late, false, 'settled on time, not after an expiry')
    assert.equal((await balance(a.userId)).balance, 1_000_000 - r.credits_charged)
  } finally {
    await db()`update gateway.system_settings set hold_lease_seconds = ${lease}`
    await fn.stop()
    await sim.close()
  }
})

test('a worker killed mid-stream: the reconcile settles its hold exactly from /generation', async () => {
  const sim = startOwnSimulator()
  const secret = 'test-scheduler-secret'
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_CRON_SECRET: secret, GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const a = await newAccount(1_000_000, 'killed')
    const res = await chat(fn, a.key, {
      model: 'openai/gpt-4o-mini~len-400~delay-20',
      stream: true,
    })
    assert.equal(res.status, 200)
    const gen = res.headers.get('x-generation-id')!
    const reader = res.body!.getReader()
    await reader.read()
    await waitFor('the generation id to be noted', async () => {
      const [h] = await db()`select generation_id from gateway.holds where account_id = ${a.userId}`
      return h?.generation_id === gen
    })
    const w = (await workers(fn)).find((w) => w.in_flight > 0)!
    Deno.kill(w.pid, 'SIGKILL')
    await reader.read().then(() => reader.cancel()).catch(() => {})
    const g = await waitFor('the generation to end', () => {
      const g = sim.generation(gen)
      return Promise.resolve(g?.ended ? g : undefined)
    })
    // Nobody renews its lease, so it lapses; the sweeper (every 2 s) does not release it: upstream
    // billed its generation, and released credits could be spent before the reconcile's charge.
    await waitFor("the dead worker's lease to lapse", async () => {
      const [h] = await db()`select count(*)::int as n from gateway.holds
                              where account_id = ${a.userId} and expires_at <= now()`
      return h.n === 1
    })
    await db()`select gateway.expire_stale_holds()`
    const held = await openHolds(a.userId)
    assert.equal(held.open, 1, 'the lapsed hold of a billed generation stays')
    assert.ok(held.held > 0)

    const reconcile = (auth: string, body: unknown) =>
      fetch(`${fn.url}/internal/reconcile`, {
        method: 'POST',
        headers: { authorization: auth, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
    const wrong = await reconcile('Bearer not-the-secret', {})
    assert.equal(wrong.status, 401)
    await wrong.body?.cancel()
    // The default age waits longer than a request can live; a lapsed lease needs none.
    const report = await waitFor('the reconcile to settle it', async () => {
      const r = await (await reconcile(`Bearer ${secret}`, {})).json()
      return r.settled > 0 ? r : undefined
    })
    assert.equal(report.settled, 1)
    const r = await settled(a.userId)
    assert.equal(r.settled_by, 'generation')
    assert.equal(r.generation_id, gen)
    const [late] =
      await db()`select settled_late from gateway.usage_records where hold_id = ${r.hold_id}`
    assert.equal(late.settled_late, false, 'settled within its hold')
    assert.equal(r.prompt_tokens, g.prompt_tokens)
    assert.equal(r.completion_tokens, g.completion_tokens)
    assert.equal(report.credits_charged, r.credits_charged)
    assert.equal((await balance(a.userId)).balance, 1_000_000 - r.credits_charged)
    // Once settled, nothing is left to reconcile for it.
    const again = await (await reconcile(`Bearer ${secret}`, { min_age_seconds: 0 })).json()
    assert.equal(again.settled, 0)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('reserved admissions of a killed worker are released by the server within seconds', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: {
      GATEWAY_RESERVE_ADMISSIONS: '32',
      GATEWAY_RESERVE_AFTER: '8',
      GATEWAY_RESERVE_MS: '2000',
      GATEWAY_LOG_REQUESTS: '0',
    },
  })
  try {
    const a = await newAccount(1_000_000, 'reserved-killed')
    await setRateLimits(a.userId, { requests_per_minute: 10_000, requests_per_hour: 10_000 })
    for (let i = 0; i < 16; i++) {
      const r = await chat(fn, a.key, { model: 'openai/gpt-4o-mini', max_tokens: 8 })
      assert.equal(r.status, 200)
      await r.body?.cancel()
    }
    // The last requests' settles have landed; what is open now is reserved.
    await sleep(300)
    const reserved = await openHolds(a.userId)
    assert.ok(reserved.open > 0, 'the burst reserved admissions ahead (else this proves nothing)')
    // The worker vanishes without a word: no beforeunload, no give-back.
    for (const w of await workers(fn)) Deno.kill(w.pid, 'SIGKILL')
    await sleep(200)
    assert.equal((await openHolds(a.userId)).open, reserved.open, 'nothing gave them back')
    // What pg_cron runs every 5 s (the local scheduler every 2 s), as 6 s later.
    await db()`select gateway.release_reserved_admissions(5, now() + interval '6 seconds')`
    assert.deepEqual(await openHolds(a.userId), { open: 0, held: 0 })
    const [k] = await db()`select requests_used::int as used from gateway.key_counters
                            where key_id = ${a.keyId}`
    assert.equal(k.used, 16, 'the key counts the 16 requests made, not what was reserved')
    const records = await usageRecords(a.userId)
    assert.equal(records.length, 16)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('read your writes: /user/balance right after a response shows its charge', async () => {
  const sim = startOwnSimulator()
  // Settles linger 300 ms for company: a balance read that did not wait for them would miss them.
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    // No reserved admissions: five requests of one key in a second make it busy, and what is
    // reserved ahead is held (held_credits) until taken or given back, which is not this test's.
    env: {
      GATEWAY_SETTLE_LINGER_MS: '300',
      GATEWAY_LOG_REQUESTS: '0',
      GATEWAY_RESERVE_ADMISSIONS: '0',
    },
  })
  try {
    const start = 1_000_000
    const a = await newAccount(start, 'read-writes')
    let charged = 0
    for (let i = 0; i < 5; i++) {
      const res = await chat(fn, a.key, { model: 'openai/gpt-4o-mini', max_tokens: 16 })
      assert.equal(res.status, 200)
      charged += (await res.json()).gateway_usage.credits_charged
      const b = await (await fetch(`${fn.url}/user/balance`, {
        headers: { authorization: `Bearer ${a.key}` },
      })).json()
      assert.equal(b.credits, start - charged, `balance read after request ${i + 1}`)
      assert.equal(b.held_credits, 0)
      const m = await fetch(`${fn.url}/user/monitor`, {
        headers: { authorization: `Bearer ${a.key}` },
      })
      assert.equal(m.status, 200)
      await m.body?.cancel()
    }
  } finally {
    await fn.stop()
    await sim.close()
  }
})
