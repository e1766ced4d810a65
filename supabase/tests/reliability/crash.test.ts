// A crash of the function mid-request (kill -9 of a functions server we started ourselves): nothing
// can settle what it had open, and nothing renews the holds' leases any more, so the hold sweeper
// (gateway.expire_stale_holds, every 2 s) closes them once their leases lapse (hold_lease_seconds):
// released without charge and RECORDED (status expired, settled_by sweeper, a note), never
// silently. An Idempotency-Key the crashed request held is not replayed or re-run meanwhile (409)
// until it is abandoned.

import assert from 'node:assert/strict'
import { balance, newAccount, usageRecords } from '../lib/accounts.ts'
import { openHolds, sweepOpenHolds } from '../lib/books.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, test, waitFor } from '../lib/stack.ts'

test('kill -9 mid-request: the holds lapse within seconds, and the sweeper closes and records them', async () => {
  const sim = startOwnSimulator()
  const first = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  let second: Awaited<ReturnType<typeof startFunctions>> | undefined
  try {
    const a = await newAccount(5000, 'crash')
    const headers = { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' }
    // 1. A stream well under way...
    const streamed = await fetch(`${first.url}/v1/chat/completions`, {
      method: 'POST',
      headers,
      body: JSON.stringify({
        model: 'openai/gpt-4o-mini~len-300~delay-20',
        stream: true,
        messages: [{ role: 'user', content: 'a long answer please' }],
      }),
    })
    assert.equal(streamed.status, 200)
    const reader = streamed.body!.pipeThrough(new TextDecoderStream()).getReader()
    let text = ''
    while ((text.match(/"content":"[^"]/g) ?? []).length < 3) text += (await reader.read()).value
    // 2. ...and a non-streamed request with an Idempotency-Key, waiting for a slow upstream.
    const idem = { 'idempotency-key': crypto.randomUUID() }
    const jsonBody = JSON.stringify({
      model: 'openai/gpt-4o-mini~len-5~slow-5000',
      messages: [{ role: 'user', content: 'slowly' }],
    })
    const pending = fetch(`${first.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...headers, ...idem },
      body: jsonBody,
    }).then((r) => r.status, (e) => (e as Error).name)
    await waitFor('both holds to be open', async () => (await openHolds([a.userId])) === 2)

    // 3. The crash.
    await first.crash()
    const clientSaw = await pending
    const streamEnd = await reader.read().then(() => 'read', (e) => (e as Error).name)
    const held = await balance(a.userId)
    console.log(
      `crash: SIGKILL with 2 requests in flight; the clients saw ${streamEnd} / ${clientSaw}; ` +
        `${await openHolds([a.userId])} holds open, ${held.held} credits held`,
    )
    assert.equal(await openHolds([a.userId]), 2, 'nothing could have settled them')
    assert.ok(held.held > 0)
    assert.deepEqual(await usageRecords(a.userId), [])

    // 4. A new instance: the retry of the crashed idempotent request is neither replayed nor run
    //    a second time while its first attempt is unresolved.
    second = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
    const retry = await fetch(`${second.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...headers, ...idem },
      body: jsonBody,
    })
    const retryBody = await retry.json()
    assert.equal(retry.status, 409, JSON.stringify(retryBody))
    assert.equal(retryBody.error.code, 'idempotency_in_progress')

    // 5. The sweeper, when their leases have lapsed (the stack's scheduler may have been first).
    const lapsed = await db()`
      select count(*)::int as n from gateway.holds
       where account_id = ${a.userId}
         and expires_at > now() + make_interval(secs => (select hold_lease_seconds
                                                          from gateway.system_settings))`
    assert.equal(lapsed[0].n, 0, 'no hold of the dead worker is leased past hold_lease_seconds')
    const swept = await sweepOpenHolds([a.userId])
    const records = await usageRecords(a.userId)
    console.log(
      `sweeper: closed ${swept} holds here; records: ${
        JSON.stringify(records.map((r) => [r.status, r.settled_by, r.credits_charged, r.note]))
      }`,
    )
    assert.equal(records.length, 2)
    for (const r of records) {
      assert.equal(r.status, 'expired')
      assert.equal(r.settled_by, 'sweeper')
      assert.equal(r.credits_charged, 0)
      assert.ok(r.note && /released/.test(r.note), 'the record says what happened')
    }
    assert.deepEqual(await balance(a.userId), { balance: 5000, held: 0 })
    const [{ ledger }] = await db()`
      select coalesce(sum(amount), 0)::bigint as ledger from gateway.ledger
       where account_id = ${a.userId}`
    assert.equal(Number(ledger), 5000, 'ledger = balance')
    // Visible to operators, not silent.
    const [m] = await db()`select expired_holds_today from gateway.monitor`
    assert.ok(Number(m.expired_holds_today) >= 2)
    const generated = sim.generations().reduce((n, g) => n + g.completion_tokens, 0)
    console.log(
      `upstream generated ${generated} completion tokens for the crashed requests; the sweeper ` +
        `released them unbilled and recorded them as expired (admin monitor: ` +
        `${m.expired_holds_today} expired holds today)`,
    )
  } finally {
    await first.crash()
    await second?.stop()
    await sim.close()
  }
})
