// A request whose admission Postgres picks as a deadlock victim is admitted on a retry, not answered
// 500: the rolled-back call changed nothing, so db.ts runs it again. The deadlock is real: an
// operator transaction locks the account's balance row, the request's begin_request locks the
// account's rate counter and waits for the balance, then the operator transaction wants the counter.
// begin_request waited first, so its backend's deadlock check (after deadlock_timeout, 1 s) finds the
// cycle and cancels it; the operator transaction goes on.

import assert from 'node:assert/strict'
import { balance, newAccount, settled } from '../lib/accounts.ts'
import { chat } from '../lib/http.ts'
import { db, test } from '../lib/stack.ts'

test('a deadlock victim admission is retried: the request succeeds and is billed once', async () => {
  const a = await newAccount(10_000, 'deadlock')
  // The account's counter row must exist for the operator transaction to wait on it.
  assert.equal((await chat(a.key, { model: 'openai/gpt-4o-mini~len-2' })).status, 200)
  await settled(a.userId, 1)

  const operator = await db().reserve()
  let response
  try {
    await operator`begin`
    await operator`select 1 from gateway.credit_balances where account_id = ${a.userId} for update`
    const pending = chat(a.key, { model: 'openai/gpt-4o-mini~len-3' })
    // Until begin_request holds the counter and waits for the balance row.
    for (let i = 0; i < 100; i++) {
      const [w] = await db()`
        select count(*)::int as n from pg_stat_activity
         where wait_event_type = 'Lock' and query like '%gateway.begin_request%'`
      if (w.n > 0) break
      await new Promise((r) => setTimeout(r, 20))
    }
    await operator`
      update gateway.rate_counters set minute_requests = minute_requests
       where subject_kind = 'account' and subject_id = ${a.userId}`
    await operator`rollback`
    response = await pending
  } finally {
    operator.release()
  }
  assert.equal(response.status, 200, response.text)
  await settled(a.userId, 2)
  const [d] = await db()`
    select count(*)::int as n from gateway.usage_records where account_id = ${a.userId}`
  assert.equal(d.n, 2, 'one usage record per request: the retried admission held once')
  const b = await balance(a.userId)
  assert.equal(b.held, 0)
})
