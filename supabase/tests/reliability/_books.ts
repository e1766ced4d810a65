// Accounts made for a reliability run, and the books of those accounts checked against every
// invariant a metering gateway must keep, whatever happened on the way (faults, aborts, crashes):
//
//   - no balance below zero (the simulator never overruns a hold), and available never either;
//   - the ledger sums to the balance, account by account;
//   - no hold left open, nothing held;
//   - every admitted request (key_counters.requests_used, counted at admission) has exactly one
//     usage record, and every charge one ledger row;
//   - usage records = the simulator's generations: each generation billed once, to the token, and
//     nothing billed that was not generated;
//   - every charge = the tokens at the model's price (credits = ⌈prompt·pm + completion·cm⌉).

import { db } from '../gateway/_helpers.ts'
import { type OwnSimulator, sleep } from './_stack.ts'

export interface PoolKey {
  keyId: number
  key: string
}
export interface PoolAccount {
  userId: number
  keys: PoolKey[]
}

const NO_LIMIT = 2_000_000_000
const LIMITS = {
  requests_per_minute: NO_LIMIT,
  requests_per_hour: NO_LIMIT,
  requests_per_day: NO_LIMIT,
  tokens_per_minute: NO_LIMIT,
  tokens_per_hour: NO_LIMIT,
  tokens_per_day: NO_LIMIT,
}

/**
 * `accounts` fresh accounts of `credits` each, with `keysPerAccount` keys (the primary and more,
 * all read + write) and rate limits out of reach, made through the operator SQL API.
 */
export async function newPool(
  accounts: number,
  keysPerAccount: number,
  credits: number,
  tag = 'rel',
): Promise<PoolAccount[]> {
  const sql = db()
  const make = async (i: number): Promise<PoolAccount> => {
    const email = `${tag}-${i}-${crypto.randomUUID().slice(0, 12)}@example.com`
    const [{ r }] = await sql`select gateway.register(${email}, null, 'test', null) as r`
    const userId = Number(r.user_id)
    const delta = credits - Number(r.credits)
    if (delta !== 0) {
      await sql`select * from gateway.add_credits(${userId}, ${delta}, 'test set-up')`
    }
    await sql`select gateway.set_rate_limits(${userId}, ${sql.json(LIMITS)})`
    const keys: PoolKey[] = [{ keyId: Number(r.key_id), key: r.api_key }]
    for (let k = 1; k < keysPerAccount; k++) {
      const [{ c }] = await sql`
        select gateway.create_key(gateway.hash_key(${r.api_key}), null, null,
                                  ${sql.json({ key_name: `k${k}` })}) as c`
      keys.push({ keyId: Number(c.key_id), key: c.api_key })
    }
    return { userId, keys }
  }
  const out: PoolAccount[] = []
  for (let i = 0; i < accounts; i += 4) {
    const batch = Array.from({ length: Math.min(4, accounts - i) }, (_, j) => make(i + j))
    out.push(...await Promise.all(batch))
  }
  return out
}

export async function openHolds(userIds: number[]): Promise<number> {
  const [{ n }] = await db()`
    select count(*)::int as n from gateway.holds where account_id = any(${userIds}::bigint[])`
  return n
}

/** Waits until no hold of these accounts is open (every admitted request settled or voided). */
export async function waitSettled(userIds: number[], timeoutMs = 60_000): Promise<number> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const n = await openHolds(userIds)
    if (n === 0 || Date.now() > until) return n
    await sleep(200)
  }
}

/** Samples the lowest balance and available credit of the accounts while `work` runs. */
export async function watchBalances<T>(userIds: number[], work: Promise<T>) {
  let done = false
  let minBalance = Infinity
  let minAvailable = Infinity
  let samples = 0
  const sql = db()
  const poller = (async () => {
    while (!done) {
      const rows = await sql`
        select min(balance)::bigint as b, min(balance - held)::bigint as a
          from gateway.credit_balances where account_id = any(${userIds}::bigint[])`.catch(() => [])
      if (rows[0]?.b != null) {
        minBalance = Math.min(minBalance, Number(rows[0].b))
        minAvailable = Math.min(minAvailable, Number(rows[0].a))
        samples++
      }
      await sleep(100)
    }
  })()
  try {
    return { result: await work, minBalance, minAvailable, samples }
  } finally {
    done = true
    await poller
  }
}

export interface Books {
  accounts: number
  admitted: number
  usageRecords: number
  byStatus: Record<string, number>
  bySettledBy: Record<string, number>
  charged: number
  chargeRows: number
  generations: number
  generationsMatched: number
  /**
   * Generations the simulator recorded for requests the gateway had given up on before upstream's
   * headers came (its upstream timeout: voided, no generation id to bill by). The documented limit
   * "a connection that dies before the headers is voided"; see lostBeforeHeaders below.
   */
  lostBeforeHeaders: number
  openHolds: number
  problems: string[]
}

interface UsageRow {
  hold_id: string
  account_id: string
  status: string
  settled_by: string
  model: string
  prompt_tokens: number
  completion_tokens: number
  credits_charged: string
  generation_id: string | null
  note: string | null
}

// The load's timeout fault holds headers 1 500 ms against a 150 ms gateway timeout
// (x-gateway-upstream-timeout-ms, _load.ts); its client-abort case holds 400 ms and is waited out.
const LONGEST_TEST_TIMEOUT_MS = 1_000

const count = (into: Record<string, number>, key: string) => into[key] = (into[key] ?? 0) + 1

/**
 * The books of these accounts, and every broken invariant as a readable problem. `sim` (our own
 * simulator, which saw only these accounts' requests) adds the generation checks.
 */
export async function checkBooks(userIds: number[], sim?: OwnSimulator): Promise<Books> {
  const sql = db()
  const ids = userIds
  const problems: string[] = []
  const accounts = await sql`
    select b.account_id, b.balance::bigint as balance, b.held::bigint as held,
           (select coalesce(sum(l.amount), 0)::bigint from gateway.ledger l
             where l.account_id = b.account_id) as ledger_sum
      from gateway.credit_balances b where b.account_id = any(${ids}::bigint[])`
  if (accounts.length !== ids.length) {
    problems.push(`${ids.length - accounts.length} accounts missing`)
  }
  for (const a of accounts) {
    const [balance, held, ledger] = [Number(a.balance), Number(a.held), Number(a.ledger_sum)]
    if (balance < 0) problems.push(`account ${a.account_id}: balance ${balance} < 0`)
    if (held !== 0) problems.push(`account ${a.account_id}: ${held} credits still held`)
    if (ledger !== balance) {
      problems.push(`account ${a.account_id}: ledger sums to ${ledger}, balance is ${balance}`)
    }
  }
  const open = await openHolds(ids)
  if (open) problems.push(`${open} holds still open`)

  const [{ admitted }] = await sql`
    select coalesce(sum(c.requests_used), 0)::int as admitted
      from gateway.key_counters c join gateway.api_keys k on k.id = c.key_id
     where k.account_id = any(${ids}::bigint[])`
  const usage = await sql<UsageRow[]>`
    select u.hold_id, u.account_id, u.status, u.settled_by, u.model, u.prompt_tokens,
           u.completion_tokens, u.credits_charged, u.generation_id, u.note,
           coalesce(p.prompt_multiplier, 1)::float8 as pm,
           coalesce(p.completion_multiplier, 1)::float8 as cm
      from gateway.usage_records u
      left join gateway.model_pricing p on p.model = u.model
     where u.account_id = any(${ids}::bigint[])`
  if (usage.length !== admitted) {
    problems.push(`${admitted} requests admitted but ${usage.length} usage records`)
  }
  const [charges] = await sql`
    select count(*)::int as n, coalesce(sum(-amount), 0)::bigint as total,
           count(distinct hold_id)::int as holds
      from gateway.ledger where kind = 'charge' and account_id = any(${ids}::bigint[])`
  if (charges.n !== charges.holds) problems.push(`${charges.n - charges.holds} holds charged twice`)

  const byStatus: Record<string, number> = {}
  const bySettledBy: Record<string, number> = {}
  let charged = 0
  let chargedRecords = 0
  const byGeneration = new Map<string, UsageRow>()
  for (const u of usage) {
    count(byStatus, u.status)
    count(bySettledBy, u.settled_by)
    const credits = Number(u.credits_charged)
    charged += credits
    if (credits > 0) chargedRecords++
    const { pm, cm } = u as unknown as { pm: number; cm: number }
    const price = Math.ceil(u.prompt_tokens * pm + u.completion_tokens * cm)
    if (credits !== price) {
      problems.push(`hold ${u.hold_id}: charged ${credits}, its tokens cost ${price}`)
    }
    if (['voided', 'expired'].includes(u.status) && credits !== 0) {
      problems.push(`hold ${u.hold_id}: ${u.status} yet charged ${credits}`)
    }
    if (u.generation_id && !['voided', 'expired'].includes(u.status)) {
      if (byGeneration.has(u.generation_id)) {
        problems.push(`generation ${u.generation_id} billed twice`)
      }
      byGeneration.set(u.generation_id, u)
    }
  }
  if (chargedRecords !== charges.n || charged !== Number(charges.total)) {
    problems.push(
      `usage records charge ${charged} in ${chargedRecords}, the ledger ${charges.total} in ${charges.n}`,
    )
  }

  let generations = 0
  let matched = 0
  let lostBeforeHeaders = 0
  if (sim) {
    const gens = sim.generations()
    generations = gens.length
    const dropped = Number(sim.sim.stats(true).generations_dropped ?? 0)
    if (dropped) problems.push(`the simulator dropped ${dropped} generations`)
    for (const g of gens) {
      const u = byGeneration.get(g.id)
      if (!u && g.fault === 'slow' && g.held_ms >= LONGEST_TEST_TIMEOUT_MS) {
        // Headers held back past the gateway's upstream timeout: the gateway aborted and voided
        // (no generation id to bill by), and now and then the simulator does not see the abort
        // before its delay ends and generates anyway, as OpenRouter might. Counted, not hidden;
        // bounded by the timeouts voided below. (Shorter holds, such as the 400 ms of the load's
        // client-abort case, are waited out by the gateway and must be billed.)
        lostBeforeHeaders++
        continue
      }
      if (!u) {
        problems.push(`generation ${g.id} (${g.prompt_tokens}+${g.completion_tokens}) never billed`)
        continue
      }
      byGeneration.delete(g.id)
      if (u.settled_by === 'stream_count') {
        // Our own count, when OpenRouter's stats never came: never more than was generated.
        if (u.completion_tokens > g.completion_tokens) {
          problems.push(`hold ${u.hold_id}: counted ${u.completion_tokens} > generated`)
        }
      } else if (
        u.prompt_tokens !== g.prompt_tokens || u.completion_tokens !== g.completion_tokens
      ) {
        problems.push(
          `hold ${u.hold_id}: billed ${u.prompt_tokens}+${u.completion_tokens}, generated ` +
            `${g.prompt_tokens}+${g.completion_tokens} (${u.settled_by})`,
        )
      }
      matched++
    }
    for (const [id, u] of byGeneration) {
      problems.push(`hold ${u.hold_id} billed for generation ${id} the simulator never made`)
    }
    const timeouts = usage.filter((u) => u.status === 'voided' && u.note === 'upstream_timeout')
    if (lostBeforeHeaders > timeouts.length) {
      problems.push(
        `${lostBeforeHeaders} slow generations unbilled, but only ${timeouts.length} upstream timeouts`,
      )
    }
  }
  return {
    accounts: accounts.length,
    admitted,
    usageRecords: usage.length,
    byStatus,
    bySettledBy,
    charged,
    chargeRows: charges.n,
    generations,
    generationsMatched: matched,
    lostBeforeHeaders,
    openHolds: open,
    problems,
  }
}

/** One line of figures for a test's output. */
export function booksLine(b: Books): string {
  return `books: ${b.accounts} accounts, ${b.admitted} admitted, ${b.usageRecords} usage records ` +
    `${JSON.stringify(b.byStatus)} by ${JSON.stringify(b.bySettledBy)}, ${b.charged} credits in ` +
    `${b.chargeRows} charges, ${b.generationsMatched}/${b.generations} generations matched` +
    (b.lostBeforeHeaders ? ` (+${b.lostBeforeHeaders} generated after an upstream timeout)` : '') +
    `, ${b.openHolds} open holds, ${b.problems.length} problems`
}

/**
 * The hold sweeper (gateway.expire_stale_holds), run at the earliest `p_now` that expires every open
 * hold of these accounts: rather than `now() + 1 hour`, which would also expire every request in
 * flight on the shared database, only holds at least as old as the newest of ours expire. Returns
 * how many holds it closed in all.
 */
export async function sweepOpenHolds(userIds: number[]): Promise<number> {
  const [{ n }] = await db()`
    select gateway.expire_stale_holds(
             (select max(h.created_at) from gateway.holds h
               where h.account_id = any(${userIds}::bigint[]))
             + make_interval(secs => (select s.hold_timeout_seconds from gateway.system_settings s
                                       where s.id))) as n`
  return Number(n ?? 0)
}
