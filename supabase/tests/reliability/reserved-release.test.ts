// A reserved admission taken by a request must be charged like any other, even when the server
// releases it as unused (issue 11: "no request may cost more than its hold", every generation upstream
// billed is charged or recorded). A taken reservation tells the database it is in use with its first
// note (gateway.note_holds, a second after it was reserved); the server releases reserved admissions
// older than 5 s (gateway.release_reserved_admissions, every 2 s). When the function cannot reach the
// database for a few seconds (PgBouncer or Postgres restarting, a stalled pool), the note is late, the
// release cancels the in-use admission without a trace (cancel_admissions: no usage record), and the
// request's settle finds an unknown hold: upstream billed the stream, the account is charged nothing
// and nothing records it. An expired ordinary hold, by contrast, is charged late (settle_hold).
//
// The outage is a TCP proxy between the function and PgBouncer that stops forwarding; the release
// runs as the scheduler does, at a p_now 10 s on (no wall clock in the test).

import assert from 'node:assert/strict'
import { balance, newAccount, setCredits, setRateLimits } from '../lib/accounts.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, FUNCTION_DB_URL, test, waitFor } from '../lib/stack.ts'

/** A proxy to `target` (host:port) whose forwarding can be paused: calls through it hang. */
function pausableProxy(target: { hostname: string; port: number }) {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 })
  let gate: Promise<void> = Promise.resolve()
  let open = () => {}
  const conns = new Set<Deno.Conn>()
  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(64 * 1024)
    try {
      for (;;) {
        const n = await from.read(buf)
        if (n === null) break
        await gate
        let off = 0
        while (off < n) off += await to.write(buf.subarray(off, n))
      }
    } catch { /* closed */ }
    try {
      to.close()
    } catch { /* already */ }
  }
  ;(async () => {
    for await (const c of listener) {
      const s = await Deno.connect(target).catch(() => null)
      if (!s) {
        c.close()
        continue
      }
      conns.add(c).add(s)
      pipe(c, s)
      pipe(s, c)
    }
  })().catch(() => {})
  return {
    port: (listener.addr as Deno.NetAddr).port,
    pause() {
      gate = new Promise((r) => (open = r))
    },
    resume() {
      open()
    },
    close() {
      open()
      listener.close()
      for (const c of conns) {
        try {
          c.close()
        } catch { /* already */ }
      }
    },
  }
}

test('a reserved admission in use when the server releases it is still charged', async () => {
  const sim = startOwnSimulator()
  const pooler = new URL(FUNCTION_DB_URL)
  const proxy = pausableProxy({ hostname: pooler.hostname, port: Number(pooler.port) })
  const viaProxy = new URL(FUNCTION_DB_URL)
  viaProxy.hostname = '127.0.0.1'
  viaProxy.port = String(proxy.port)
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    dbUrl: viaProxy.href,
    env: { GATEWAY_LOG_REQUESTS: '0', GATEWAY_RESERVE_MS: '2000' },
  })
  const a = await newAccount(100_000, 'reserved-release')
  try {
    await setRateLimits(a.userId, {
      requests_per_minute: 100_000,
      requests_per_hour: 100_000,
      requests_per_day: 100_000,
    })
    const body = JSON.stringify({
      model: 'openai/gpt-4o-mini~len-200~delay-2',
      max_tokens: 200,
      stream: true,
      messages: [{ role: 'user', content: 'a busy client' }],
    })
    const chat = () =>
      fetch(`${fn.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
        body,
      })
    // A busy context: admissions reserved ahead for it.
    await waitFor('admissions reserved for the busy key', async () => {
      // (one at a time: concurrent requests may each go to a worker of their own)
      await (await chat()).text()
      const [r] = await db()`select count(*)::int as n from gateway.holds
                              where account_id = ${a.userId} and reserved`
      return r.n > 0
    })
    // The database goes out of reach; the next request takes a reserved admission (no round trip).
    proxy.pause()
    const res = await chat()
    assert.equal(res.status, 200)
    const gen = res.headers.get('x-generation-id')!
    const streamed = res.text()
    // The scheduler, 10 s on: every reserved admission of the account is older than 5 s.
    const [rel] = await db()`
      select gateway.release_reserved_admissions(5, now() + interval '10 seconds') as n`
    assert.ok(rel.n > 0, 'reserved admissions released')
    await streamed
    await waitFor('the generation to end', () => Promise.resolve(sim.generation(gen)?.ended))
    proxy.resume()
    // Its settle lands (late); the stream was billed upstream, so the account must be charged.
    const record = await waitFor('a usage record of the stream', async () => {
      const [u] = await db()`select credits_charged, settled_late, overrun_credits
                               from gateway.usage_records
                              where account_id = ${a.userId} and generation_id = ${gen}`
      return u
    }, 5_000).catch(() => null)
    const b = await balance(a.userId)
    console.log(
      `reserved-release: stream ${gen} record ${JSON.stringify(record)}, balance ${b.balance}`,
    )
    assert.ok(record, 'the stream upstream billed has no usage record: it was free')
    assert.ok(record.credits_charged > 0)
  } finally {
    await fn.stop()
    proxy.close()
    await sim.close()
    const b = await balance(a.userId)
    if (b.balance < 0) await setCredits(a.userId, 0, b.balance)
  }
})
