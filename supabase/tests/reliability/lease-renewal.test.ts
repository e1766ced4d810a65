// One locked hold must not stop the renewal of a worker's other holds. A worker renews all its open
// holds in one note_holds call; when that call waited for a row another transaction had locked
// (a settle, the sweeper, an operator's `select … for update` in Studio), every other hold in it
// went unrenewed for as long as the lock lasted, and lapsed. note_holds now skips a locked hold.

import assert from 'node:assert/strict'
import { newAccount } from '../lib/accounts.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep, test, waitFor } from '../lib/stack.ts'

function stream(url: string, key: string) {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    // 600 tokens, 20 ms apart: a 12 s stream.
    body: JSON.stringify({
      model: 'openai/gpt-4o-mini~len-600~delay-20',
      stream: true,
      messages: [{ role: 'user', content: 'a long answer' }],
    }),
  })
}

test("a hold locked by another transaction does not stop the renewal of the worker's other holds", async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  const [{ lease }] = await db()`select hold_lease_seconds as lease from gateway.system_settings`
  // The shortest lease allowed, so that a lock of 7 s outlasts it.
  await db()`update gateway.system_settings set hold_lease_seconds = 4`
  try {
    const a = await newAccount(1_000_000, 'renewal')
    const responses = await Promise.all([stream(fn.url, a.key), stream(fn.url, a.key)])
    for (const r of responses) assert.equal(r.status, 200)
    const bodies = responses.map((r) => r.text())
    const [locked, other] = await waitFor('both holds open for 1.5 s', async () => {
      const rows = await db()`select id from gateway.holds where account_id = ${a.userId}
                               and created_at < now() - interval '1.5 seconds' order by id`
      return rows.length === 2 ? rows.map((r) => Number(r.id)) : undefined
    })

    // Another transaction locks one hold for 7 s; meanwhile the other's lease must stay ahead of
    // the clock and move on.
    const lapses: string[] = []
    let renewals = 0
    let last = ''
    const lock = db().begin(async (tx) => {
      await tx`select id from gateway.holds where id = ${locked} for update`
      const until = Date.now() + 7_000
      while (Date.now() < until) {
        const [h] = await db()`
          select expires_at::text as expires_at, expires_at > clock_timestamp() as alive
            from gateway.holds where id = ${other}`
        assert.ok(h, 'the other hold is still open')
        if (!h.alive) lapses.push(h.expires_at)
        if (last && h.expires_at !== last) renewals++
        last = h.expires_at
        await sleep(200)
      }
    })
    await lock
    console.log(
      `renewal: while hold ${locked} was locked 7 s, hold ${other} was renewed ${renewals} times, ` +
        `lapsed ${lapses.length} times`,
    )
    assert.deepEqual(lapses, [], 'the other hold lapsed while one was locked')
    assert.ok(renewals >= 2, `the other hold was renewed ${renewals} times in 7 s (every 2 s)`)

    // Both streams end and are billed by their usage.
    const texts = await Promise.all(bodies)
    for (const t of texts) assert.ok(t.endsWith('data: [DONE]\n\n'))
    const records = await waitFor('both settled', async () => {
      const rows = await db()`select status, settled_by from gateway.usage_records
                               where account_id = ${a.userId} order by hold_id`
      return rows.length === 2 ? rows : undefined
    })
    assert.deepEqual(
      records.map((r) => [r.status, r.settled_by]),
      [['success', 'usage'], ['success', 'usage']],
    )
  } finally {
    await db()`update gateway.system_settings set hold_lease_seconds = ${lease}`
    await fn.stop()
    await sim.close()
  }
})
