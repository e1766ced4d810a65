// Concurrent completions: the function reports each charge before settling, and settles that arrive
// while one is in flight go together in one `settle_requests` call. Whatever the batching, every
// request is charged exactly once, exactly what its response reported.

import assert from 'node:assert/strict'
import { balance, newAccount, settled } from '../lib/accounts.ts'
import { chat, sseData } from '../lib/http.ts'
import { db, test } from '../lib/stack.ts'

test('concurrent completions: each charged once, exactly what its response reported', async () => {
  const n = 24
  const a = await newAccount(100_000)
  const responses = await Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        chat(a.key, { model: `openai/gpt-4o-mini~len-${1 + (i % 7)}`, stream: i % 3 === 0 }),
    ),
  )
  for (const r of responses) assert.equal(r.status, 200, r.text)
  await settled(a.userId, n)

  const rows = await db()`
    select generation_id, credits_charged::int as charged from gateway.usage_records
     where account_id = ${a.userId}`
  assert.equal(rows.length, n, 'one usage record per request')
  const charged = new Map(rows.map((r) => [r.generation_id, r.charged]))
  let total = 0
  for (const r of responses) {
    const usage = r.headers.get('content-type')!.startsWith('text/event-stream')
      ? JSON.parse(sseData(r.text).find((d) => d.includes('"gateway_usage"'))!).gateway_usage
      : r.json.gateway_usage
    const id = r.headers.get('x-generation-id')!
    assert.equal(charged.get(id), usage.credits_charged, `generation ${id}`)
    total += usage.credits_charged
  }
  assert.deepEqual(await balance(a.userId), { balance: 100_000 - total, held: 0 })
  const [{ entries }] = await db()`
    select count(*)::int as entries from gateway.ledger
     where account_id = ${a.userId} and kind = 'charge'`
  assert.equal(entries, n, 'one ledger charge per request')
})
