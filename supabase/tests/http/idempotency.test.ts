// Idempotency-Key, the Stripe way, on /v1/chat/completions and on admin credit grants: a retry with
// the same key and body within 24 h gets the first response and costs nothing more; the same key
// with another body is a 422; a retry while the first is still running is a 409. Beyond what
// chat.test.ts and admin.test.ts show one request at a time: retries racing the first, the first
// still upstream (a slow upstream keeps it running), a client that left, and the 24 h window.

import assert from 'node:assert/strict'
import { balance, newAccount, newAdmin } from '../lib/accounts.ts'
import { checkBooks } from '../lib/books.ts'
import { CHAT, client } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep, test, waitFor } from '../lib/stack.ts'

test('Idempotency-Key: retries racing a running chat get 409, later ones the first answer, one charge', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  const gw = client(fn.url)
  try {
    const a = await newAccount(10_000, 'idem')
    const idem = { 'idempotency-key': crypto.randomUUID() }
    const body = { ...CHAT, model: 'openai/gpt-4o-mini~len-5~slow-1500' }
    // The first request waits 1.5 s for upstream; 12 retries race it meanwhile.
    const first = gw('/v1/chat/completions', { key: a.key, body, headers: idem })
    await sleep(300)
    const racing = await Promise.all(
      Array.from(
        { length: 12 },
        () => gw('/v1/chat/completions', { key: a.key, body, headers: idem }),
      ),
    )
    for (const r of racing) {
      assert.equal(r.status, 409, r.text)
      assert.equal(r.json.error.code, 'idempotency_in_progress')
    }
    // Another body under the same key, even while it runs: 422.
    const other = await gw('/v1/chat/completions', {
      key: a.key,
      body: { ...body, max_tokens: 11 },
      headers: idem,
    })
    assert.equal(other.status, 422, other.text)
    const done = await first
    assert.equal(done.status, 200, done.text)
    const charged = done.json.gateway_usage.credits_charged
    // Afterwards every retry is the first answer, byte for byte, and free.
    const replays = await Promise.all(
      Array.from(
        { length: 8 },
        () => gw('/v1/chat/completions', { key: a.key, body, headers: idem }),
      ),
    )
    for (const r of replays) {
      assert.equal(r.status, 200)
      assert.equal(r.headers.get('idempotent-replayed'), 'true')
      assert.deepEqual(r.json, done.json)
    }
    assert.equal(sim.chats(), 1, 'upstream saw the request once')
    assert.deepEqual(await balance(a.userId), { balance: 10_000 - charged, held: 0 })
    const books = await checkBooks([a.userId], sim.stats())
    assert.deepEqual(books.problems, [])
    assert.equal(books.admitted, 1)
    console.log(
      `1 request + 12 racing retries (409) + 1 other body (422) + 8 later retries (replayed): ` +
        `${sim.chats()} upstream call, ${charged} credits charged once`,
    )

    // A client that leaves before the answer: the request completes, the retry gets its answer.
    const gone = { 'idempotency-key': crypto.randomUUID() }
    const leaving = new AbortController()
    const pending = fetch(`${fn.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json', ...gone },
      body: JSON.stringify(body),
      signal: leaving.signal,
    }).catch(() => null)
    await sleep(300)
    leaving.abort()
    await pending
    const after = await waitFor('the abandoned request to complete', async () => {
      const r = await gw('/v1/chat/completions', { key: a.key, body, headers: gone })
      return r.status === 200 ? r : undefined
    })
    assert.equal(after.headers.get('idempotent-replayed'), 'true')
    assert.equal(sim.chats(), 2)
    console.log('a client that left mid-request: its retry got the completed answer, no 2nd call')

    // A retry sent the instant the first answer's headers arrive is already a replay: the answer
    // is stored before it goes out (it used to be stored after, so such a retry could get a 409).
    await db()`select gateway.set_rate_limits(${a.userId}, ${
      db().json({ requests_per_minute: 100_000 })
    })`
    const rounds = 80
    const notReplayed: number[] = []
    await Promise.all(Array.from({ length: 4 }, async (_, w) => {
      for (let i = w; i < rounds; i += 4) {
        const headers = {
          authorization: `Bearer ${a.key}`,
          'content-type': 'application/json',
          'idempotency-key': crypto.randomUUID(),
        }
        const init = {
          method: 'POST',
          headers,
          body: JSON.stringify({ ...CHAT, max_tokens: i + 1 }),
        }
        const firstAnswer = await fetch(`${fn.url}/v1/chat/completions`, init)
        const retry = fetch(`${fn.url}/v1/chat/completions`, init)
        await firstAnswer.body?.cancel()
        const r = await retry
        await r.body?.cancel()
        if (r.status !== 200 || r.headers.get('idempotent-replayed') !== 'true') notReplayed.push(i)
      }
    }))
    assert.deepEqual(notReplayed, [], 'retries that were not replays')
    console.log(`${rounds} retries sent as the first answer arrived: all replays`)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('Idempotency-Key on credit grants: racing duplicates grant once; another body is 422', async () => {
  const admin = await newAdmin()
  const user = await newAccount(0, 'idem-grant')
  const url = Deno.env.get('GATEWAY_URL') ?? 'http://127.0.0.1:54321/functions/v1/gateway'
  const gw = client(url)
  const idem = { 'idempotency-key': crypto.randomUUID() }
  const body = { user_id: user.userId, credits: 250, reason: 'refund 117' }
  const answers = await Promise.all(
    Array.from(
      { length: 16 },
      () => gw('/admin/add_credits', { key: admin.key, body, headers: idem }),
    ),
  )
  // The grant and its record are one transaction: a racing duplicate waits for it, then replays.
  const statuses = answers.map((r) => r.status)
  assert.ok(statuses.every((s) => s === 200 || s === 409), JSON.stringify(statuses))
  const granted = answers.filter((r) => r.status === 200 && !r.json.idempotent_replay)
  assert.equal(granted.length, 1, JSON.stringify(answers.map((r) => r.json)))
  for (const r of answers.filter((x) => x.status === 200)) assert.equal(r.json.balance, 250)
  assert.equal((await balance(user.userId)).balance, 250)
  for (
    const changed of [{ ...body, credits: 251 }, { ...body, reason: 'refund 118' }, {
      api_key: user.key,
      credits: 250,
      reason: 'refund 117',
    }]
  ) {
    const res = await gw('/admin/add_credits', { key: admin.key, body: changed, headers: idem })
    assert.equal(res.status, 422, `${JSON.stringify(changed)}: ${res.text}`)
    assert.equal(res.json.error.code, 'idempotency_key_reused')
  }
  const [{ grants }] = await db()`
    select count(*)::int as grants from gateway.ledger
     where account_id = ${user.userId} and kind = 'grant' and reason = 'refund 117'`
  assert.equal(grants, 1)
  console.log(
    `16 racing duplicates of one grant: ${
      JSON.stringify(statuses.reduce(
        (m, s) => ({ ...m, [s]: (m[s] ?? 0) + 1 }),
        {} as Record<number, number>,
      ))
    }, ${granted.length} grant in the ledger; 3 altered bodies → 422`,
  )
})

test('Idempotency-Key lives 24 h: replayed within, a new request after', async () => {
  const a = await newAccount(1000, 'idem-ttl')
  const [{ ttl }] = await db()`select idempotency_ttl_seconds as ttl from gateway.system_settings`
  assert.equal(Number(ttl), 86_400)
  const hash = db()`select gateway.hash_key(${a.key}) as h`
  const [{ h }] = await hash
  const begin = (at: string) =>
    db()`select gateway.idempotency_begin(${h}, null, null, 'ttl-key', 'fp-1', ${at}::timestamptz)
           ->> 'state' as state`
  const [{ now }] = await db()`select now()::text as now`
  assert.equal((await begin(now))[0].state, 'started')
  await db()`select gateway.idempotency_complete(${h}, 'ttl-key', 200, '{"id":"first"}'::jsonb,
                                                 ${now}::timestamptz)`
  const within =
    await db()`select (${now}::timestamptz + interval '23 hours 59 minutes')::text as t`
  assert.equal((await begin(within[0].t))[0].state, 'replay')
  const past = await db()`select (${now}::timestamptz + interval '24 hours 1 second')::text as t`
  assert.equal((await begin(past[0].t))[0].state, 'started')
  console.log('same key and body: replay at +23h59m, a new request at +24h00m01s')
})
