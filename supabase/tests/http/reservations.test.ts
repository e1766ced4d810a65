// Reserved admissions (reservations.ts): a busy context is admitted ahead by
// gateway.reserve_admissions (many contexts at once by gateway.reserve_admissions_batch), its
// requests take those admissions without a round trip, and what they do not take is given back
// (gateway.cancel_admissions). The stack's function runs with the
// defaults (at most 64 ahead, kept 1 s, once a caller has had 8 admissions within 4 s).
//
// What must hold whatever the timing: every request is admitted, counted and charged exactly once;
// nothing reserved and unused stays counted, held or open; a tight limit or a small balance is never
// reserved against; a revocation through the API applies to the next request.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits, settled } from '../lib/accounts.ts'
import { api, call, chat } from '../lib/http.ts'
import { startFunctions } from '../lib/procs.ts'
import { db, GATEWAY_URL, test, waitFor } from '../lib/stack.ts'
import { type Compact, spelledOut } from '../../functions/gateway/hold.ts'

/** Sequential requests (a client at concurrency 1); every status. */
async function burst(key: string, n: number, body: Record<string, unknown> = {}) {
  const statuses: number[] = []
  for (let i = 0; i < n; i++) statuses.push((await chat(key, { max_tokens: 16, ...body })).status)
  return statuses
}

/**
 * The same, as a client that honours a Retry-After of a second (up to 5 times a request): a window
 * that reserved admissions alone fill says so, as they go back within a second or two — those of
 * a worker the runtime retired mid-burst included (the suite's workers retire every 10 s).
 */
async function patientBurst(key: string, n: number, base = GATEWAY_URL) {
  const statuses: number[] = []
  let retries = 0
  let last = ''
  for (let i = 0; i < n; i++) {
    for (let attempt = 0;; attempt++) {
      const res = await call(base, '/v1/chat/completions', {
        key,
        body: {
          model: 'openai/gpt-4o-mini',
          messages: [{ role: 'user', content: 'Hello' }],
          max_tokens: 16,
        },
      })
      if (res.status === 429 && res.headers.get('retry-after') === '1' && attempt < 5) {
        retries++
        await new Promise((r) => setTimeout(r, 1_100))
        continue
      }
      statuses.push(res.status)
      last = res.text
      break
    }
  }
  return { statuses, retries, last }
}

/** Waits until nothing of the account is held or open: reservations given back, requests settled. */
async function quiet(userId: number) {
  await waitFor(`account ${userId} without holds`, async () => {
    const [r] = await db()`
      select (select count(*) from gateway.holds where account_id = ${userId})::int as open,
             (select held from gateway.credit_balances where account_id = ${userId})::int as held`
    return r.open === 0 && r.held === 0
  })
}

/** A busy account: room in every request window (the defaults allow 60 a minute). */
async function busyAccount(credits = 1_000_000) {
  const a = await newAccount(credits)
  await setRateLimits(a.userId, {
    requests_per_minute: 100_000,
    requests_per_hour: 100_000,
    requests_per_day: 100_000,
  })
  return a
}

async function counts(userId: number, keyId: number) {
  const [r] = await db()`
    select (select requests_used from gateway.key_counters where key_id = ${keyId})::int as used,
           (select day_requests from gateway.rate_counters
             where subject_kind = 'account' and subject_id = ${userId})::int as day,
           (select count(*) from gateway.usage_records where account_id = ${userId})::int as records,
           (select count(distinct created_at) from gateway.usage_records
             where account_id = ${userId})::int as admissions_times`
  return r as { used: number; day: number; records: number; admissions_times: number }
}

test('a batch answers compactly, and the function spells it out as gateway.reserved_answers does', async () => {
  const [plain, limited] = [await newAccount(100_000), await newAccount(100_000)]
  await setRateLimits(limited.userId, { requests_per_minute: 50 })
  const item = (key: string, count: number, maxTokens: number) => ({
    key_hash: key,
    client_ip: '203.0.113.9',
    referrer: null,
    count,
    models: ['openai/gpt-4o-mini'],
    prompt_bound: 40,
    max_tokens: maxTokens,
  })
  class Rollback {}
  await db().begin(async (tx) => {
    const hex = async (key: string) =>
      (await tx`select encode(gateway.hash_key(${key}), 'hex') as h`)[0].h as string
    const batch = [
      item(await hex(plain.key), 12, 30),
      item(await hex(limited.key), 7, 20),
      item(await hex(`gw_live_${'x'.repeat(28)}`), 4, 10),
    ]
    const [{ r }] = await tx`select gateway.reserve_admissions_batch(${tx.json(batch)}) as r`
    const answers = r as Compact[]
    assert.equal(answers.length, 3)
    assert.equal(answers[0].more?.hold_ids.length, 11, 'eleven after the first')
    assert.equal(answers[1].more?.hold_ids.length, 6)
    assert.equal(answers[2].first.ok, false, 'an unknown key is refused')
    for (const a of answers) {
      const [{ full }] = await tx`select gateway.reserved_answers(${tx.json(a as never)}) as full`
      assert.deepEqual(spelledOut(a), full)
    }
    const limits = spelledOut(answers[1]).map((x) => x.ok && x.limits?.requests?.remaining)
    assert.deepEqual(limits, [49, 48, 47, 46, 45, 44, 43], 'one fewer request remaining each')
    throw new Rollback()
  }).catch((err) => {
    if (!(err instanceof Rollback)) throw err
  })
})

test('a busy key is admitted ahead; every request counted and charged once, the rest given back', async () => {
  const n = 40
  const a = await busyAccount()
  const statuses = await burst(a.key, n)
  assert.deepEqual(statuses, Array(n).fill(200))
  await settled(a.userId, n)
  await quiet(a.userId)

  const c = await counts(a.userId, a.keyId)
  assert.equal(c.records, n, 'one usage record per request')
  assert.equal(c.used, n, 'requests_used counts the requests made, not the admissions reserved')
  assert.equal(c.day, n, 'the day window counts the requests made')
  // Admissions reserved together share their transaction's timestamp: fewer distinct admission
  // times than requests means requests took reserved admissions.
  assert.ok(c.admissions_times < n / 2, `${c.admissions_times} admission times for ${n} requests`)

  const [{ charged }] = await db()`
    select coalesce(sum(credits_charged), 0)::int as charged from gateway.usage_records
     where account_id = ${a.userId}`
  assert.deepEqual(await balance(a.userId), { balance: 1_000_000 - charged, held: 0 })
  const [{ bad }] = await db()`select count(*)::int as bad from gateway.ledger_discrepancies()`
  assert.equal(bad, 0)
})

test('concurrent requests of one key with reservations: the books stay exact', async () => {
  const a = await busyAccount()
  const waves = 6
  const width = 12
  for (let w = 0; w < waves; w++) {
    const rs = await Promise.all(
      Array.from({ length: width }, () => chat(a.key, { max_tokens: 8 })),
    )
    for (const r of rs) assert.equal(r.status, 200, r.text)
  }
  await settled(a.userId, waves * width)
  await quiet(a.userId)
  const c = await counts(a.userId, a.keyId)
  assert.equal(c.records, waves * width)
  assert.equal(c.used, waves * width)
  assert.equal(c.day, waves * width)
})

test('many busy keys at once: their reservations are made together, the books exact', async () => {
  // Twelve clients, each sending its requests one after the other on its own key: every context
  // becomes busy at about the same moment and wants a reservation while another's is at the
  // database. Those go together in one call (gateway.reserve_admissions_batch, one transaction):
  // seen as one admission time shared by several accounts, each with several requests.
  const n = 40
  const accounts = await Promise.all(Array.from({ length: 12 }, () => busyAccount()))
  const statuses = await Promise.all(accounts.map((a) => burst(a.key, n)))
  for (const s of statuses) assert.deepEqual(s, Array(n).fill(200))
  const ids = accounts.map((a) => a.userId)
  for (const a of accounts) {
    await settled(a.userId, n)
    await quiet(a.userId)
    const c = await counts(a.userId, a.keyId)
    assert.deepEqual(
      [c.records, c.used, c.day],
      [n, n, n],
      `account ${a.userId}: one of each per request`,
    )
    const [{ charged }] = await db()`
      select coalesce(sum(credits_charged), 0)::int as charged from gateway.usage_records
       where account_id = ${a.userId}`
    assert.deepEqual(await balance(a.userId), { balance: 1_000_000 - charged, held: 0 })
  }
  const [{ shared }] = await db()`
    select count(*)::int as shared from (
      select created_at from (
        select created_at, account_id from gateway.usage_records
         where account_id = any(${ids}::bigint[])
         group by created_at, account_id having count(*) >= 2) per_account
       group by created_at having count(*) >= 2) t`
  assert.ok(shared > 0, 'some reservations of several accounts were made in one transaction')
})

test('a limit stays exact with reservations: exactly the limit is admitted, nothing reserved stays counted', async () => {
  // A day window, so that no window boundary falls inside the test (but at midnight UTC).
  const a = await busyAccount()
  await setRateLimits(a.userId, { requests_per_day: 90 })
  const { statuses, retries } = await patientBurst(a.key, 100)
  if (retries > 0) console.log(`limit: ${retries} retries after a second (reservations elsewhere)`)
  assert.equal(statuses.filter((s) => s === 200).length, 90)
  assert.deepEqual(statuses.slice(90), Array(10).fill(429))
  await quiet(a.userId)
  const c = await counts(a.userId, a.keyId)
  assert.equal(c.used, 90)
  assert.equal(c.day, 90, 'refusals and cancelled reservations are not counted')
})

test('a worker retired with reservations: they cost the client nothing of its limit', async () => {
  // A busy worker holds reserved admissions (counted in the windows) when the runtime retires it
  // (half a 3 s wall clock); it gives them back within a second. A limit that they alone fill must
  // say retry in a second, so that a client honouring it gets exactly its limit.
  const fn = await startFunctions({
    env: { FUNCTIONS_WALL_CLOCK_MS: '3000', GATEWAY_LOG_REQUESTS: '0' },
  })
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  const retired = async () => (await (await fetch(`${base}/_edge/lifecycle`)).json()).events.retired
  try {
    const a = await busyAccount()
    // Room in every window, tokens too (the default 10,000 a minute is some 400 of these requests).
    const room = {
      requests_per_minute: 100_000,
      requests_per_hour: 100_000,
      requests_per_day: 100_000,
      tokens_per_minute: 100_000_000,
      tokens_per_hour: 100_000_000,
      tokens_per_day: 100_000_000,
    }
    await setRateLimits(a.userId, room)
    // Busy until the worker serving the burst retires (at most one wall clock) holding reserved
    // admissions: it may have just used its last ones, then the next worker's turn.
    let admitted = 0
    let reserved = 0
    for (let turn = 0; turn < 5 && reserved === 0; turn++) {
      const before = await retired()
      for (let i = 0; (await retired()) === before && i < 2_000; i++) {
        const one = await patientBurst(a.key, 1, fn.url)
        assert.equal(one.statuses[0], 200, one.last)
        admitted++
      }
      const [r] = await db()`
        select count(*)::int as n from gateway.holds where account_id = ${a.userId} and reserved`
      reserved = r.n
    }
    // Ten more a day than already admitted: the retired worker's reservations fill the window.
    await setRateLimits(a.userId, { ...room, requests_per_day: admitted + 10 })
    const { statuses, retries } = await patientBurst(a.key, 20, fn.url)
    console.log(
      `retired: after ${admitted} requests the worker retired holding ${reserved} reservations; ` +
        `${retries} refusals said retry in a second`,
    )
    assert.ok(reserved > 0, 'the premise: the retired worker held reservations')
    assert.deepEqual(statuses, [...Array(10).fill(200), ...Array(10).fill(429)])
    await quiet(a.userId)
    const c = await counts(a.userId, a.keyId)
    assert.equal(c.used, admitted + 10)
    assert.equal(c.day, admitted + 10)
  } finally {
    await fn.stop()
  }
})

test('a small balance is never reserved against', async () => {
  // A request holds about 300 credits here (its body's ~200 bytes as the prompt bound, max_tokens
  // 100) and costs 10 (9 prompt tokens, the simulator writes one): reserving even the fewest (4) at
  // 4x headroom needs about 4 800 available, more than the account ever has, while it can pay for
  // all the requests (two holds at once included, while the last one settles).
  const a = await busyAccount(1200)
  const body = { model: 'openai/gpt-4o-mini~len-1', max_tokens: 100 }
  assert.deepEqual(await burst(a.key, 12, body), Array(12).fill(200))
  await settled(a.userId, 12)
  const c = await counts(a.userId, a.keyId)
  assert.equal(c.admissions_times, 12, 'each request admitted on its own')
})

test('a key revoked through the API is refused at its next request, its reservations given back', async () => {
  const a = await busyAccount()
  const created = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'busy', permissions: ['read', 'write'] },
  })
  assert.equal(created.status, 200, created.text)
  const second = created.json as { key_id: number; api_key: string }
  assert.deepEqual(await burst(second.api_key, 20), Array(20).fill(200))
  const off = await api(`/user/api-keys/${second.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { is_active: false },
  })
  assert.equal(off.status, 200, off.text)
  const after = await chat(second.api_key, { max_tokens: 16 })
  assert.equal(after.status, 401, after.text)
  await settled(a.userId, 20)
  await quiet(a.userId)
  const c = await counts(a.userId, second.key_id)
  assert.equal(c.used, 20)
  assert.equal(c.records, 20)
})

test('a key deactivated by an operator in SQL is refused within the reservation lifetime', async () => {
  const a = await busyAccount()
  assert.deepEqual(await burst(a.key, 20), Array(20).fill(200))
  await db()`select gateway.deactivate_key(${a.keyId}, 'test')`
  // Until the reservations made before the deactivation are used up or given back (1 s), a
  // request may still take one; after that, every request reaches SQL and is refused.
  const refused = await waitFor('a refusal', async () => {
    const r = await chat(a.key, { max_tokens: 16 })
    return r.status === 401 ? r : undefined
  }, 10_000)
  assert.equal(refused.json.error.code, 'key_inactive')
  await quiet(a.userId)
  const c = await counts(a.userId, a.keyId)
  assert.equal(c.used, c.records, 'every admission counted was a request made')
})
