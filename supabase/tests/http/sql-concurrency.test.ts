// The request path under real concurrency, straight against Postgres (no HTTP): many connections,
// each assuming gateway_api exactly like the edge function, run begin_request/settle_request pairs
// against ONE account with a small balance. Whatever the interleaving:
//   - no hold is ever placed beyond the balance (available = balance - held never below zero),
//   - the balance never goes negative, and the ledger sums to it,
//   - the number admitted is exactly what the balance allows,
//   - a request limit admits exactly its limit, and refused requests are never counted.
// And batches (begin_requests, settle_requests) over many accounts at once: no deadlock whatever the
// order of their elements, with the same exact counts.
//
//   DB_URL  Postgres as postgres (default postgresql://postgres:postgres@127.0.0.1:54322/postgres)

import postgres from 'postgres'
import assert from 'node:assert/strict'

const DB_URL = Deno.env.get('DB_URL') ?? 'postgresql://postgres:postgres@127.0.0.1:54322/postgres'
const CONNECTIONS = 64

type Json = Record<string, unknown>

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false })
}

/** The operator's connection, for set-up and for reading what happened. */
function operator(): postgres.Sql {
  return postgres(DB_URL, { max: 2, onnotice: () => {} })
}

/** A pool of `max` connections that, like the edge function, can only execute the API functions. */
function gatewayPool(max: number): postgres.Sql {
  return postgres(DB_URL, {
    max,
    onnotice: () => {},
    connection: { application_name: 'sql-concurrency-test', options: '-c role=gateway_api' },
  })
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('')
}

interface Account {
  userId: number
  keyHashHex: string
}

/** A fresh account holding exactly `credits`, with request limits out of the way unless given. */
async function newAccount(
  op: postgres.Sql,
  credits: number,
  limits: Record<string, number> = {
    requests_per_minute: 1e6,
    requests_per_hour: 1e6,
    requests_per_day: 1e6,
  },
): Promise<Account> {
  const email = `concurrency-${crypto.randomUUID()}@example.com`
  const [{ r }] = await op`select gateway.register(${email}, null, 'test', null) as r`
  const delta = credits - Number(r.credits)
  if (delta !== 0) await op`select * from gateway.add_credits(${r.user_id}, ${delta}, 'test')`
  await op`select gateway.set_rate_limits(${r.user_id}, ${op.json(limits)})`
  return { userId: Number(r.user_id), keyHashHex: await sha256Hex(r.api_key) }
}

// A catalog model no test prices otherwise: 1 credit a token in flat mode, no fees (served at the
// default too before any catalog is loaded).
const MODEL = 'mistralai/mistral-nemo'

async function begin(
  sql: postgres.Sql,
  a: Account,
  maxTokens: number,
  now: string | null = null,
): Promise<Json> {
  const [{ r }] = await sql`
    select gateway.begin_request(decode(${a.keyHashHex}, 'hex'), null, null,
                                 jsonb_build_object('models', jsonb_build_array(${MODEL}::text),
                                                    'prompt_bound', 0, 'max_tokens', ${maxTokens}::int),
                                 coalesce(${now}::timestamptz, now())) as r`
  return r as Json
}

async function settle(sql: postgres.Sql, holdId: number, completion: number): Promise<Json> {
  const [{ r }] = await sql`
    select gateway.settle_request(${holdId}::bigint,
                                  jsonb_build_object('model', ${MODEL}::text, 'completion_tokens',
                                                     ${completion}::int, 'status', 'success',
                                                     'latency_ms', 1, 'settled_by', 'usage')) as r`
  return r as Json
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls balance/held while `work` runs; returns the worst `available` and `balance` seen. */
async function watch(op: postgres.Sql, userId: number, work: Promise<unknown>) {
  let done = false
  let minAvailable = Infinity
  let minBalance = Infinity
  let samples = 0
  const poller = (async () => {
    while (!done) {
      const [b] = await op`
        select balance::bigint as balance, held::bigint as held
          from gateway.credit_balances where account_id = ${userId}`
      minAvailable = Math.min(minAvailable, Number(b.balance) - Number(b.held))
      minBalance = Math.min(minBalance, Number(b.balance))
      samples++
    }
  })()
  try {
    await work
  } finally {
    done = true
    await poller
  }
  return { minAvailable, minBalance, samples }
}

async function finalState(op: postgres.Sql, userId: number) {
  const [s] = await op`
    select b.balance::bigint as balance, b.held::bigint as held,
           (select coalesce(sum(amount), 0)::bigint from gateway.ledger l
             where l.account_id = b.account_id) as ledger_sum,
           (select count(*)::int from gateway.holds h where h.account_id = b.account_id) as open_holds,
           (select count(*)::int from gateway.usage_records u where u.account_id = b.account_id)
             as usage_records
      from gateway.credit_balances b where b.account_id = ${userId}`
  return {
    balance: Number(s.balance),
    held: Number(s.held),
    ledgerSum: Number(s.ledger_sum),
    openHolds: s.open_holds as number,
    usageRecords: s.usage_records as number,
  }
}

test('600 concurrent begin/settle pairs on one account admit exactly what 1000 credits allow', async () => {
  const op = operator()
  const api = gatewayPool(CONNECTIONS)
  try {
    const PAIRS = 600
    const COST = 10 // max_tokens 10, no prompt: a hold of 10 credits, settled in full
    const account = await newAccount(op, 1000)
    // Open every connection first, so the pairs really run on CONNECTIONS backends at once.
    await Promise.all(Array.from({ length: CONNECTIONS }, () => api`select 1`))

    const outcomes = new Map<string, number>()
    const pairs = Array.from({ length: PAIRS }, async () => {
      const b = await begin(api, account, COST)
      const key = b.ok ? 'admitted' : String(b.reason)
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1)
      if (!b.ok) return
      assert.equal(b.held_credits, COST)
      assert.equal(b.max_tokens, COST)
      await pause(Math.random() * 5) // the upstream call
      const s = await settle(api, b.hold_id as number, COST)
      assert.equal(s.settled, true)
      assert.equal(s.credits_charged, COST)
    })
    const seen = await watch(op, account.userId, Promise.all(pairs))

    assert.deepEqual(Object.fromEntries(outcomes), { admitted: 100, insufficient_credits: 500 })
    assert.ok(seen.minAvailable >= 0, `available went to ${seen.minAvailable}`)
    assert.ok(seen.minBalance >= 0, `balance went to ${seen.minBalance}`)
    assert.ok(seen.samples > 0)
    assert.deepEqual(await finalState(op, account.userId), {
      balance: 0,
      held: 0,
      ledgerSum: 0,
      openHolds: 0,
      usageRecords: 100,
    })
    await op`select gateway.erase_account(${account.userId})`
  } finally {
    await api.end()
    await op.end()
  }
})

test('concurrent pairs that use less than they hold never overspend and keep ledger = balance', async () => {
  const op = operator()
  const api = gatewayPool(CONNECTIONS)
  try {
    const account = await newAccount(op, 2000)
    let admitted = 0
    let charged = 0
    const pairs = Array.from({ length: 600 }, async (_, i) => {
      const b = await begin(api, account, 25 + (i % 50))
      if (!b.ok) {
        assert.equal(b.reason, 'insufficient_credits')
        return
      }
      admitted++
      const hold = b.held_credits as number
      assert.ok(hold >= 1 && hold <= 74)
      await pause(Math.random() * 5)
      const used = Math.floor(hold * Math.random()) // upstream stops early: the rest is released
      const s = await settle(api, b.hold_id as number, used)
      charged += s.credits_charged as number
      // A second settle of the same hold (a retried callback) changes nothing.
      assert.deepEqual(await settle(api, b.hold_id as number, used), {
        settled: false,
        reason: 'already_settled',
      })
    })
    const seen = await watch(op, account.userId, Promise.all(pairs))
    const end = await finalState(op, account.userId)

    assert.ok(seen.minAvailable >= 0, `available went to ${seen.minAvailable}`)
    assert.ok(seen.minBalance >= 0, `balance went to ${seen.minBalance}`)
    assert.equal(end.held, 0)
    assert.equal(end.openHolds, 0)
    assert.equal(end.balance, 2000 - charged)
    assert.equal(end.ledgerSum, end.balance)
    assert.equal(end.usageRecords, admitted)
    assert.ok(admitted > 26, `released credits were reused: ${admitted} admitted`)
    await op`select gateway.erase_account(${account.userId})`
  } finally {
    await api.end()
    await op.end()
  }
})

test('500 concurrent requests against a 37/minute limit admit exactly 37 and count only those', async () => {
  const op = operator()
  const api = gatewayPool(CONNECTIONS)
  try {
    const account = await newAccount(op, 1_000_000, { requests_per_minute: 37 })
    // One fixed instant for every call: the run may cross a real minute boundary.
    const [{ now }] = await op`
      select (date_trunc('minute', now()) + interval '30 seconds')::text as now`
    const results = await Promise.all(
      Array.from({ length: 500 }, () => begin(api, account, 1, now)),
    )
    const admitted = results.filter((r) => r.ok)
    assert.equal(admitted.length, 37)
    assert.ok(results.filter((r) => !r.ok).every((r) => r.window === 'requests_per_minute'))
    const [{ usage }] =
      await op`select gateway.window_usage('account', ${account.userId}, ${now}) as usage`
    assert.equal(usage.requests_this_minute, 37)
    const remaining = admitted.map((r) => (r.limits as Json).requests as Json)
      .map((l) => l.remaining as number).sort((a, b) => a - b)
    assert.deepEqual(remaining, Array.from({ length: 37 }, (_, i) => i))
    await Promise.all(admitted.map((r) => settle(api, r.hold_id as number, 1)))
    await op`select gateway.erase_account(${account.userId})`
  } finally {
    await api.end()
    await op.end()
  }
})

/** Fisher–Yates, in place. */
function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[items[i], items[j]] = [items[j], items[i]]
  }
  return items
}

/** The SQLSTATE of a failed call (40P01 = deadlock), or its message. */
function sqlState(err: unknown): string {
  const e = err as { code?: string; message?: string }
  return `${e.code ?? '?'} ${e.message ?? String(err)}`
}

test('100 concurrent begin_requests batches across 12 accounts, settled by concurrent settle_requests batches: no deadlock, exact admissions', async () => {
  const op = operator()
  const api = gatewayPool(20)
  try {
    const ACCOUNTS = 12
    const BATCHES = 100
    const COST = 10 // max_tokens 10, no prompt: a hold of 10 credits, settled in full
    // Each batch: 8 distinct accounts plus 2 more of them, shuffled; every 4th also an unknown key.
    const plan = Array.from({ length: BATCHES }, (_, b) => {
      const picked = shuffle(Array.from({ length: ACCOUNTS }, (_, i) => i)).slice(0, 8)
      const items: (number | null)[] = shuffle([...picked, picked[0], picked[1]])
      if (b % 4 === 0) items.splice(Math.floor(Math.random() * items.length), 0, null)
      return items
    })
    const demand = Array.from(
      { length: ACCOUNTS },
      (_, i) => plan.flat().filter((a) => a === i).length,
    )
    // A third of the accounts run out of credits, a third hit a per-minute request limit, both at
    // 60% of what is asked of them; the rest admit everything.
    const kind = (i: number) => (['credits', 'limit', 'free'] as const)[i % 3]
    const cap = demand.map((d, i) => kind(i) === 'free' ? d : Math.floor(d * 0.6))
    const START = 1_000_000
    const accounts = await Promise.all(demand.map((_, i) => {
      if (kind(i) === 'credits') return newAccount(op, cap[i] * COST)
      if (kind(i) === 'limit') return newAccount(op, START, { requests_per_minute: cap[i] })
      return newAccount(op, START)
    }))
    const unknownHash = await sha256Hex(`gw_test_unknown_${crypto.randomUUID()}`)
    // One fixed instant for every call, begins and settles: the run may cross a real minute boundary.
    // In the next minute, so that the holds' leases (6 s from it) outlive the run: no renewals here,
    // and the stack's sweeper (real time) must not void a hold whose settle is on its way (it did,
    // when the instant was this minute's second 30 and the run passed second 36: more admitted than
    // the credits allow, the late settles charged them).
    const [{ now }] = await op`
      select (date_trunc('minute', now()) + interval '90 seconds')::text as now`
    await Promise.all(Array.from({ length: 20 }, () => api`select 1`))

    const errors: string[] = []
    const outcomes = accounts.map(() => new Map<string, number>())
    const pending: { holdId: number; account: number }[] = []
    const charged = accounts.map(() => 0)
    let begun = false

    const beginBatch = async (items: (number | null)[]) => {
      const batch = items.map((i) => ({
        key_hash: i === null ? unknownHash : accounts[i].keyHashHex,
        client_ip: null,
        referrer: null,
        models: [MODEL],
        max_tokens: COST,
        prompt_bound: 0,
      }))
      const [{ r }] = await api`
        select gateway.begin_requests(${api.json(batch)}, ${now}::timestamptz) as r`
      const results = r as Json[]
      assert.equal(results.length, items.length)
      results.forEach((res, k) => {
        const i = items[k]
        if (i === null) {
          assert.equal(res.reason, 'invalid_api_key')
          return
        }
        const outcome = res.ok ? 'admitted' : String(res.reason)
        outcomes[i].set(outcome, (outcomes[i].get(outcome) ?? 0) + 1)
        if (!res.ok) return
        assert.equal(res.user_id, accounts[i].userId, 'results come back in the order given')
        assert.equal(res.held_credits, COST)
        assert.ok((res.available_credits as number) >= 0)
        pending.push({ holdId: res.hold_id as number, account: i })
      })
    }

    // Settlers: while admissions go on, settle up to 16 pending holds at a time, in random order.
    // Half the settles of the accounts that do not run out of credits count no token (so lock no
    // counter row, only the balance): what they are charged does not change what they admit.
    const settler = async () => {
      while (!begun || pending.length > 0) {
        if (pending.length === 0) {
          await pause(1)
          continue
        }
        shuffle(pending)
        const holds = pending.splice(0, 16)
        const [{ r }] = await api`
          select gateway.settle_requests(${
          api.json(holds.map((h) => ({
            hold_id: h.holdId,
            model: MODEL,
            prompt_tokens: 0,
            completion_tokens: kind(h.account) !== 'credits' && Math.random() < 0.5 ? 0 : COST,
            status: 'success',
            settled_by: 'usage',
          })))
        }, ${now}::timestamptz) as r`
        ;(r as Json[]).forEach((s, k) => {
          assert.equal(s.settled, true)
          charged[holds[k].account] += s.credits_charged as number
        })
      }
    }

    const catching = (p: Promise<unknown>) => p.catch((err) => void errors.push(sqlState(err)))
    // 12 admitters take the batches one after another, 8 settlers settle meanwhile: 20 connections.
    const queue = [...plan]
    const admitter = async () => {
      for (let items = queue.shift(); items; items = queue.shift()) {
        await beginBatch(items)
        await pause(Math.random() * 3)
      }
    }
    const settlers = Array.from({ length: 8 }, () => catching(settler()))
    await Promise.all(Array.from({ length: 12 }, () => catching(admitter())))
    begun = true
    await Promise.all(settlers)

    assert.deepEqual(errors, [], 'no call failed (in particular no deadlock, 40P01)')
    const admitted = outcomes.map((o) => o.get('admitted') ?? 0)
    assert.deepEqual(admitted, cap, 'each account admits exactly what its credits or limit allow')
    outcomes.forEach((o, i) => {
      const refused = { credits: 'insufficient_credits', limit: 'rate_limited', free: '' }[kind(i)]
      assert.deepEqual(
        Object.fromEntries(o),
        kind(i) === 'free'
          ? { admitted: demand[i] }
          : { admitted: cap[i], [refused]: demand[i] - cap[i] },
      )
    })
    for (const [i, a] of accounts.entries()) {
      const start = kind(i) === 'credits' ? cap[i] * COST : START
      if (kind(i) === 'credits') assert.equal(charged[i], start, 'credits run out exactly')
      assert.ok(start - charged[i] >= 0)
      assert.deepEqual(await finalState(op, a.userId), {
        balance: start - charged[i],
        held: 0,
        ledgerSum: start - charged[i],
        openHolds: 0,
        usageRecords: cap[i],
      })
      const [{ usage }] =
        await op`select gateway.window_usage('account', ${a.userId}, ${now}) as usage`
      assert.equal(usage.requests_this_minute, cap[i], 'refused admissions are not counted')
    }
    await Promise.all(accounts.map((a) => op`select gateway.erase_account(${a.userId})`))
  } finally {
    await api.end()
    await op.end()
  }
})

test('the sweeper racing settle_requests batches over the same lapsed holds: no deadlock, each hold charged once', async () => {
  const op = operator()
  const sweepers = postgres(DB_URL, { max: 4, onnotice: () => {} })
  const api = gatewayPool(12)
  try {
    const ACCOUNTS = 12
    const BATCHES = 60
    const COST = 10
    const START = 1_000_000
    const accounts = await Promise.all(
      Array.from({ length: ACCOUNTS }, () => newAccount(op, START)),
    )
    // Admitted as of an hour ago: each hold's lease has lapsed when it is born, and none has a
    // generation id, so the sweeper voids each hold it gets to first; the settle that comes for it
    // then charges it late. Admissions, settles and sweeps all run at once.
    const made = accounts.map(() => 0)
    const pending: number[] = []
    let admitting = true
    let settling = true
    const errors: string[] = []
    const catching = (p: Promise<unknown>) => p.catch((err) => void errors.push(sqlState(err)))
    const admitter = async (n: number) => {
      for (let b = 0; b < n; b++) {
        const picked = shuffle(Array.from({ length: ACCOUNTS }, (_, i) => i)).slice(0, 8)
        const [{ r }] = await api`
          select gateway.begin_requests(${
          api.json(picked.map((i) => ({
            key_hash: accounts[i].keyHashHex,
            client_ip: null,
            referrer: null,
            models: [MODEL],
            max_tokens: COST,
            prompt_bound: 0,
          })))
        }, now() - interval '1 hour') as r`
        ;(r as Json[]).forEach((h, k) => {
          assert.equal(h.ok, true, JSON.stringify(h))
          made[picked[k]]++
          pending.push(h.hold_id as number)
        })
      }
    }
    const settler = async () => {
      while (admitting || pending.length > 0) {
        if (pending.length === 0) {
          await pause(1)
          continue
        }
        const batch = shuffle(pending).splice(0, 6)
        const [{ r }] = await api`
          select gateway.settle_requests(${
          api.json(batch.map((id) => ({
            hold_id: id,
            model: MODEL,
            prompt_tokens: 0,
            completion_tokens: COST,
            status: 'success',
            settled_by: 'usage',
          })))
        }) as r`
        for (const s of r as Json[]) assert.equal(s.settled, true, JSON.stringify(s))
      }
    }
    const sweeper = async () => {
      while (settling) {
        await sweepers`select gateway.expire_stale_holds()`
        await pause(Math.random() * 2)
      }
    }
    const sweeping = Array.from({ length: 4 }, () => catching(sweeper()))
    const settlers = Array.from({ length: 8 }, () => catching(settler()))
    await Promise.all(Array.from({ length: 4 }, () => catching(admitter(BATCHES / 4))))
    admitting = false
    await Promise.all(settlers)
    settling = false
    await Promise.all(sweeping)

    assert.deepEqual(errors, [], 'no call failed (in particular no deadlock, 40P01)')
    for (const [i, a] of accounts.entries()) {
      assert.deepEqual(await finalState(op, a.userId), {
        balance: START - made[i] * COST,
        held: 0,
        ledgerSum: START - made[i] * COST,
        openHolds: 0,
        usageRecords: made[i],
      })
    }
    await Promise.all(accounts.map((a) => op`select gateway.erase_account(${a.userId})`))
  } finally {
    await api.end()
    await sweepers.end()
    await op.end()
  }
})
