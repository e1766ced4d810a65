// A settle of a reserved admission the server released while a request had it counts its request
// again (settle_hold, 20261203233000): it takes the account's counter row even with zero tokens.
// settle_requests made an account's zero-token settles last, as taking only the balance row; a
// released one placed after another zero-token settle took the balance, then waited for the
// counter. An admission takes the counter, then the balance: the two deadlocked (40P01).
//
// The admission is an operator transaction taking the same rows in admission's order (as
// http/deadlock-retry.test.ts does): the counter, then, once the batch waits for it, the balance.
// The release runs as the scheduler does, at a p_now 10 s on (no wall clock in the test).
//
// And the release itself: it cancels reserved admissions in use (their note late), which a
// settle_requests batch may be settling at that moment (second test).

import postgres from 'postgres'
import assert from 'node:assert/strict'
import { newAccount } from '../lib/accounts.ts'
import { db, DB_URL, test } from '../lib/stack.ts'

// Served at the default flat price before any catalog is loaded, 1 credit a token in a catalog.
const MODEL = 'mistralai/mistral-nemo'
const FACTS = { models: [MODEL], prompt_bound: 0, max_tokens: 10 }

test('a released reservation settled with zero tokens in a batch after another zero-token settle: no deadlock with an admission', async () => {
  const a = await newAccount(100_000, 'released-lock-order')
  const sql = db()
  const [{ n }] = await sql`
    select (gateway.begin_request(gateway.hash_key(${a.key}), null, null, ${sql.json(FACTS)})
            ->> 'hold_id')::bigint as n`
  const [{ r }] = await sql`
    select ((gateway.reserve_admissions(gateway.hash_key(${a.key}), null, null,
                                        ${sql.json(FACTS)}, 1) -> 0) ->> 'hold_id')::bigint as r`
  await sql`select gateway.release_reserved_admissions(5, now() + interval '10 seconds')`
  const [{ released }] = await sql`
    select exists (select from gateway.released_reservations where id = ${r}) as released`
  assert.ok(released, 'the reservation is released by the server (its request still runs)')

  const errors: string[] = []
  const admission = postgresSession()
  const batch = postgresSession()
  try {
    await admission`begin`
    await admission`
      select 1 from gateway.rate_counters
       where subject_kind = 'account' and subject_id = ${a.userId} for update`
    // [the open hold's zero-token settle, the released reservation's zero-token settle], as given.
    const settling = batch`
      select gateway.settle_requests(jsonb_build_array(
        jsonb_build_object('hold_id', ${n}::bigint, 'model', ${MODEL}::text, 'prompt_tokens', 0,
                           'completion_tokens', 0, 'settled_by', 'usage'),
        jsonb_build_object('hold_id', ${r}::bigint, 'model', ${MODEL}::text, 'prompt_tokens', 0,
                           'completion_tokens', 0, 'settled_by', 'usage'))) as s`
      .catch((e) => errors.push(`settle_requests: ${e.code ?? '?'} ${e.message}`))
    // Until the batch waits for a lock the admission holds.
    for (let i = 0; i < 200; i++) {
      const [w] = await sql`
        select count(*)::int as n from pg_stat_activity
         where wait_event_type = 'Lock' and query like '%gateway.settle_requests%'`
      if (w.n > 0) break
      await new Promise((res) => setTimeout(res, 20))
    }
    try {
      await admission`
        select 1 from gateway.credit_balances where account_id = ${a.userId} for update`
      await admission`commit`
    } catch (e) {
      const err = e as { code?: string; message?: string }
      errors.push(`admission: ${err.code ?? '?'} ${err.message}`)
      await admission`rollback`.catch(() => {})
    }
    await settling
  } finally {
    await admission.end()
    await batch.end()
  }
  assert.deepEqual(errors, [], 'neither transaction fails (no deadlock, 40P01)')

  const [u] = await sql`
    select count(*)::int as records, count(*) filter (where settled_late)::int as late
      from gateway.usage_records where hold_id in (${n}, ${r})`
  assert.deepEqual(u, { records: 2, late: 1 }, 'both settled, the released one late')
  const [k] =
    await sql`select requests_used::int as used from gateway.key_counters where key_id = ${a.keyId}`
  assert.equal(k.used, 2, "both requests ran: both counted in the key's requests_used")
  const [d] = await sql`select count(*)::int as n from gateway.ledger_discrepancies()`
  assert.equal(d.n, 0, 'every ledger sums to its balance')
})

test('the server releasing a reserved admission in use while a settle_requests batch settles it after another hold of the account: no deadlock', async () => {
  // The release took the hold, then the account's counter row; the batch had taken the counter row
  // (an earlier settle of the account) and waited for the hold. An operator transaction holding
  // the hold for a moment puts both in that place (the release queued first for it).
  const a = await newAccount(100_000, 'release-lock-order')
  const sql = db()
  const [{ n }] = await sql`
    select (gateway.begin_request(gateway.hash_key(${a.key}), null, null, ${sql.json(FACTS)})
            ->> 'hold_id')::bigint as n`
  const [{ x }] = await sql`
    select ((gateway.reserve_admissions(gateway.hash_key(${a.key}), null, null,
                                        ${sql.json(FACTS)}, 1) -> 0) ->> 'hold_id')::bigint as x`

  const errors: string[] = []
  const holder = postgresSession()
  const release = postgresSession()
  const batch = postgresSession()
  const waiting = async (fn: string) => {
    const [w] = await sql`
      select count(*)::int as n from pg_stat_activity
       where wait_event_type = 'Lock' and query like ${'%gateway.' + fn + '%'}`
    return w.n > 0
  }
  try {
    await holder`begin`
    await holder`select 1 from gateway.holds where id = ${x} for update`
    let released = false
    const releasing = release`
      select gateway.release_reserved_admissions(5, now() + interval '10 seconds') as r`
      .then(() => (released = true))
      .catch((e) => errors.push(`release: ${e.code ?? '?'} ${e.message}`))
    for (let i = 0; i < 200 && !released && !(await waiting('release_reserved_admissions')); i++) {
      await new Promise((res) => setTimeout(res, 20))
    }
    const settling = batch`
      select gateway.settle_requests(jsonb_build_array(
        jsonb_build_object('hold_id', ${n}::bigint, 'model', ${MODEL}::text, 'prompt_tokens', 2,
                           'completion_tokens', 3, 'settled_by', 'usage'),
        jsonb_build_object('hold_id', ${x}::bigint, 'model', ${MODEL}::text, 'prompt_tokens', 2,
                           'completion_tokens', 3, 'settled_by', 'usage'))) as s`
      .catch((e) => errors.push(`settle_requests: ${e.code ?? '?'} ${e.message}`))
    for (let i = 0; i < 200 && !(await waiting('settle_requests')); i++) {
      await new Promise((res) => setTimeout(res, 20))
    }
    await holder`commit`
    await Promise.all([releasing, settling])
  } finally {
    await holder.end()
    await release.end()
    await batch.end()
  }
  assert.deepEqual(errors, [], 'neither transaction fails (no deadlock, 40P01)')

  const [u] = await sql`
    select count(*)::int as records, coalesce(sum(credits_charged), 0)::int as charged
      from gateway.usage_records where hold_id in (${n}, ${x})`
  assert.deepEqual(u, { records: 2, charged: 10 }, 'both settled and charged, once each')
  const [k] =
    await sql`select requests_used::int as used from gateway.key_counters where key_id = ${a.keyId}`
  assert.equal(k.used, 2, "both requests ran: both counted in the key's requests_used")
  const [d] = await sql`select count(*)::int as n from gateway.ledger_discrepancies()`
  assert.equal(d.n, 0, 'every ledger sums to its balance')
})

/** A connection of its own (db() pools two, used here to poll and read). */
function postgresSession(): postgres.Sql {
  return postgres(DB_URL, { max: 1, onnotice: () => {} })
}
