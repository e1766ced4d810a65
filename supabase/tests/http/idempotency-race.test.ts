// idempotency_claim against a row deleted under it (issue 11, finding 8). The interleaving, forced
// with two real sessions and a row lock rather than left to timing:
//   1. a done entry for key K exists (committed);
//   2. session D locks it (`select … for update`), as a release or the purge is about to delete it;
//   3. session B claims K: its insert meets the live row (a lock does not make it wait there), so it
//      goes on to `select … for update`, which waits for D's lock — the test sees B waiting in
//      pg_stat_activity before it goes on;
//   4. D deletes the row and commits: B's select finds nothing.
// Before the fix B answered {state: "replay", status: null, response: null} — a 200 with body null
// for a request that never ran. Now it claims the key afresh: {state: "started"}.

import assert from 'node:assert/strict'
import postgres from 'postgres'
import { newAccount } from '../lib/accounts.ts'
import { DB_URL, test, waitFor } from '../lib/stack.ts'

test('idempotency_claim: a conflicting entry deleted before its lock is claimed anew, never a null replay', async () => {
  const sql = postgres(DB_URL, { max: 4, idle_timeout: 1, onnotice: () => {} })
  try {
    const a = await newAccount(1000, 'idem-race')
    const idemKey = `race-${crypto.randomUUID()}`
    const claim = (s: postgres.Sql | postgres.ReservedSql) =>
      s`select gateway.idempotency_claim(${a.userId}, 'chat', ${idemKey}, 'fp', now()) as c`
    assert.equal((await claim(sql))[0].c.state, 'started')
    await sql`select gateway.idempotency_store(${a.userId}, 'chat', ${idemKey}, 200,
                ${sql.json({ id: 'first' })}, now())`
    assert.equal((await claim(sql))[0].c.state, 'replay', 'a done entry replays')

    const d = await sql.reserve()
    const b = await sql.reserve()
    try {
      await d`begin`
      await d`select 1 from gateway.idempotency_keys
               where account_id = ${a.userId} and scope = 'chat' and idem_key = ${idemKey}
                 for update`
      const [{ pid }] = await b`select pg_backend_pid() as pid`
      // postgres.js sends a query when it is awaited or executed: send it now, await it later.
      const claimed = claim(b).execute()
      await waitFor('B to wait for the row lock', async () => {
        const [r] = await sql`select wait_event_type from pg_stat_activity where pid = ${pid}`
        return r?.wait_event_type === 'Lock'
      })
      await d`delete from gateway.idempotency_keys
               where account_id = ${a.userId} and scope = 'chat' and idem_key = ${idemKey}`
      await d`commit`
      const [{ c }] = await claimed
      assert.deepEqual(c, { state: 'started' }, `claim after the delete: ${JSON.stringify(c)}`)
      const [row] = await sql`select state, response from gateway.idempotency_keys
                               where account_id = ${a.userId} and idem_key = ${idemKey}`
      assert.deepEqual({ ...row }, { state: 'running', response: null }, 'B holds a new claim')
    } finally {
      d.release()
      b.release()
    }
  } finally {
    await sql.end()
  }
})
