// Reserved admissions: for a busy caller, admit requests ahead so that a request does not wait for
// its admission's round trip (docs/PERFORMANCE.md, "Reserved admissions").
//
// A context is everything a request's admission depends on: the key (its hash), the client's address,
// the referrer, and the request's facts but for its prompt bound (the candidates, parts, web results,
// max_tokens, lifetime); a reservation is made for a prompt bound rounded up to a power of two and
// serves the requests whose bound is at most that. Once a context is busy (`reserveAfter`
// admissions within about four lifetimes, `reserveMs` each) and its last admission shows ample room
// (credits, rate windows), `gateway.reserve_admissions` admits ahead as many as its recent rate
// would use in one lifetime (at most `reserveCount`), each by begin_request itself: counted in the
// windows and the key's counter, with its own hold. The reservations of many contexts go in one
// call (`gateway.reserve_admissions_batch`, batched like admissions). Requests of that context then
// take one of those admissions instead of calling SQL; what is not taken within `reserveMs` is given
// back by `gateway.cancel_admissions`, which uncounts it. So SQL stays the one place that decides
// admission; this module only hands out what SQL decided, in order.
//
// What it changes for the caller (README, "Reserved admissions"): a revoked key, a changed limit or
// fence reaches a reserved admission only when it is given back, so up to `reserveMs` late in each
// isolate (in this isolate, a call db.ts flags as changing admission gives every reservation back
// at once); and the windows count reserved admissions from the moment they are reserved (stricter,
// never looser).
// Money is exact as before: each request is settled or voided against its own hold.

import { toHex } from '../_shared/keys.ts'
import { describe, inBackground, keepWorker } from './background.ts'
import { config } from './config.ts'
import { Batcher } from './batcher.ts'
import { call, onAdmissionChange } from './db.ts'
import type { RequestFacts } from './chat-request.ts'
import * as notes from './open-holds.ts'
import { type BeginResult, type Compact, type Hold, spelledOut } from './hold.ts'
import type { Caller } from './identity.ts'
import { log } from './log.ts'

interface Reserved {
  hold: Hold
  /** The prompt bound it was admitted for: it serves requests whose bound is at most that. */
  promptBound: number
  expiresAt: number
}

interface Pool {
  reserved: Reserved[]
  reserving: boolean
  /** No reservation before this (after a refusal or an error). */
  coolUntil: number
  /** Admissions of this context since `since`, and in the window before (how busy it is). */
  admissions: number
  since: number
  previous: number
  /** The balance the next reserved admission reports (see `charged`). */
  balance: number
  /** Bumped when the pool is given back: a reservation in flight then gives its answers back too. */
  epoch: number
}

// A context must be busy to be worth a reservation, and its room ample, so that reserving never
// refuses another request (another isolate's, another context's) that SQL would have admitted:
// everything is measured against the last admission SQL answered for the context.
const HEADROOM = 4
// Contexts remembered at most; beyond it, those holding nothing are forgotten.
const MAX_POOLS = 10_000

interface Reservation {
  who: Caller
  facts: RequestFacts
  count: number
}

// One reservation call in flight, for all contexts: it shares the pool's few connections with the
// requests' own calls, and a request must never queue behind work done for later ones. Contexts
// that want a reservation meanwhile queue and go together in the next call (batcher.ts), in account
// order as begin_requests does. When only one call could be in flight and a context found it busy,
// its requests went to SQL one by one: at c=64 over 64 keys, two thirds of them
// (docs/PERFORMANCE.md, "Reservations batched"). At most 8 contexts a call: each may be 64 holds,
// and every account of a batch stays locked until it commits.
const reservations = new Batcher<Reservation, BeginResult[]>({
  // Not 'reservations': that name is the sweep's (keepWorker below), held while anything is reserved.
  name: 'reservation calls',
  maxCalls: 1,
  maxBatch: 8,
  call: (batch) =>
    call<Compact[]>('reserve_admissions_batch', [
      batch.map((r) => ({
        key_hash: toHex(r.who.keyHash),
        client_ip: r.who.ip,
        referrer: r.who.referrer,
        count: r.count,
        ...r.facts,
      })),
    ]).then((answers) => answers.map(spelledOut)),
})

const pools = new Map<string, Pool>()
/** Which pool a reserved hold came from, while its request runs. */
const origin = new WeakMap<Hold, Pool>()

function contextKey(who: Caller, f: RequestFacts): string {
  return `${toHex(who.keyHash)}|${who.ip ?? ''}|${who.referrer ?? ''}|${
    JSON.stringify([f.models, f.parts, f.web_results, f.max_tokens, f.lifetime_seconds])
  }`
}

/** The prompt bound a reservation is made for: the request's, rounded up to a power of two. */
function promptBucket(promptBound: number): number {
  return Math.min(2 ** 31 - 1, 2 ** Math.ceil(Math.log2(Math.max(16, promptBound))))
}

/**
 * A reserved admission for this request, if its context holds one it fits; undefined otherwise (the
 * request is then admitted by SQL, and `admitted` is told the answer).
 */
export function take(who: Caller, facts: RequestFacts): Hold | undefined {
  if (config.reserveCount === 0) return undefined
  const pool = pools.get(contextKey(who, facts))
  if (!pool) return undefined
  const now = Date.now()
  busy(pool, now)
  const i = pool.reserved.findIndex((r) => r.expiresAt > now && r.promptBound >= facts.prompt_bound)
  if (i < 0) return undefined
  const [r] = pool.reserved.splice(i, 1)
  // Before anything else: the server releases reserved admissions not noted as taken.
  notes.taken(r.hold, r.expiresAt - config.reserveMs)
  r.hold.balance = pool.balance
  origin.set(r.hold, pool)
  if (low(pool)) reserve(who, facts, pool, r.hold, r.promptBound)
  return r.hold
}

/** Told every admission SQL answered for a request (not a reserved one), admitted or refused. */
export function admitted(who: Caller, facts: RequestFacts, answer: BeginResult): void {
  if (config.reserveCount === 0) return
  const key = contextKey(who, facts)
  let pool = pools.get(key)
  if (!answer.ok) {
    // Whatever refused this request (a revoked key, a limit, the credits) would refuse what is
    // reserved for its context too, had it been asked now.
    if (pool) giveBack(key, pool, 'refused')
    return
  }
  const now = Date.now()
  if (!pool) {
    if (pools.size >= MAX_POOLS) forgetIdle()
    pool = {
      reserved: [],
      reserving: false,
      coolUntil: 0,
      admissions: 0,
      since: now,
      previous: 0,
      balance: 0,
      epoch: 0,
    }
    pools.set(key, pool)
  }
  busy(pool, now)
  if (low(pool)) reserve(who, facts, pool, answer, promptBucket(facts.prompt_bound))
}

/** The charge a response reported for a reserved admission: the next one reports a balance after it. */
export function charged(hold: Hold, credits: number): void {
  const pool = origin.get(hold)
  if (pool) pool.balance -= credits
}

/** Gives every reservation of this isolate back (a key, its limits or its account changed). */
export function giveBackAll(why: string): Promise<unknown> {
  return Promise.all([...pools].map(([key, pool]) => giveBack(key, pool, why)))
}

// A call that changes what admission decides (a key's state, fences or limits, an account's; db.ts
// flags which): once it succeeds, every reservation of this isolate is given back, so that in this
// isolate the change applies to the very next request.
onAdmissionChange(() => {
  giveBackAll('admission changed')
})

// How busy a context is, counted over windows of four lifetimes (4 s by default): long enough that
// a caller sending a few requests a second is seen as the steady caller it is.
const windowMs = () => 4 * config.reserveMs

function busy(pool: Pool, now: number): void {
  if (now - pool.since > windowMs()) {
    pool.previous = now - pool.since > 2 * windowMs() ? 0 : pool.admissions
    pool.admissions = 0
    pool.since = now
  }
  pool.admissions++
}

function isBusy(pool: Pool): boolean {
  return pool.admissions + pool.previous >= config.reserveAfter
}

/** Admissions of the context in one lifetime at its recent rate. */
function perLifetime(pool: Pool, now: number): number {
  const span = Math.max(config.reserveMs, now - pool.since + (pool.previous ? windowMs() : 0))
  return (pool.admissions + pool.previous) * config.reserveMs / span
}

/**
 * How many to reserve: what the context's recent rate would use in one lifetime, at least 4, at
 * most `reserveCount`. Reserving again before the last runs out (`low`) keeps requests off SQL;
 * reserving more than a lifetime uses is given back unused, each an admission and a cancel for
 * nothing. Twice the rate, reserved again at half, gave back 42 % of what it reserved at c=64.
 */
function size(pool: Pool, now = Date.now()): number {
  return Math.min(config.reserveCount, Math.max(4, Math.ceil(perLifetime(pool, now))))
}

// A reservation call takes a few milliseconds alone, tens under load (it queues behind other
// contexts' and waits for the account's rows): a context must reserve again while what it holds
// lasts at least that long.
const REFILL_MS = 100

/**
 * Reserve again when a quarter is left, counting only what has at least a quarter of its lifetime
 * left: at a steady rate that is when the last quarter of a reservation starts being used, in time
 * for the next to arrive before it runs out. A caller sending a request every 400 ms would
 * otherwise find its reservation expired every third request, and wait. A context busier than one
 * reservation a lifetime (a hot key: `reserveCount` lasts less than a lifetime) reserves again
 * whenever what is left would not outlast the next call, so that one is always on its way.
 */
function low(pool: Pool, now = Date.now()): boolean {
  let lasting = 0
  for (const r of pool.reserved) if (r.expiresAt - now > config.reserveMs / 4) lasting++
  const refill = perLifetime(pool, now) * REFILL_MS / config.reserveMs
  return lasting <= Math.max(size(pool, now) / 4, refill)
}

/**
 * The most admissions the last answer has room for, HEADROOM times over: every one of them at its
 * worst (the prompt bound and max_tokens) within the tightest token window. The prompt bound is
 * bytes, several times the tokens of most prompts, so this caps the count rather than forbid the
 * reservation (a context whose bound is large is reserved fewer at a time).
 */
function tokenRoom(answer: Hold, promptBound: number): number {
  const remaining = answer.limits?.tokens?.remaining
  if (remaining == null) return Infinity
  return Math.floor(remaining / (HEADROOM * (answer.max_tokens + promptBound)))
}

/** The fewest admissions worth a reservation call. */
const MIN_RESERVATION = 4

function roomFor(answer: Hold, promptBound: number, count: number): boolean {
  const n = HEADROOM * count
  const { requests, tokens } = answer.limits ?? {}
  return answer.available_credits >= n * answer.held_credits &&
    (requests?.remaining == null || requests.remaining >= n) &&
    (tokens?.remaining == null || tokens.remaining >= n * (answer.max_tokens + promptBound))
}

function reserve(
  who: Caller,
  facts: RequestFacts,
  pool: Pool,
  last: Hold,
  promptBound: number,
): void {
  const now = Date.now()
  const count = Math.min(size(pool), tokenRoom(last, promptBound))
  if (
    count < MIN_RESERVATION ||
    unloading || pool.reserving || !isBusy(pool) ||
    now < pool.coolUntil ||
    !roomFor(last, promptBound, count)
  ) return
  pool.reserving = true
  const epoch = pool.epoch
  inBackground(
    reservations.submit({ who, facts: { ...facts, prompt_bound: promptBound }, count }).then(
      (answers) => {
        const expiresAt = Date.now() + config.reserveMs
        if (pool.epoch !== epoch) {
          // Given back while in flight (a refusal, a key change): these were admitted before it.
          const ok = answers.filter((a): a is BeginResult & Hold => a.ok)
          return cancel(ok.map((hold) => ({ hold, promptBound, expiresAt })), 'given back')
        }
        for (const a of answers) {
          if (a.ok) pool.reserved.push({ hold: a, promptBound, expiresAt })
        }
        // Fewer than asked: something (a window, the cap, the credits) is close to its end. Let the
        // context's requests go to SQL one by one for a while.
        if (answers.length < count || answers.some((a) => !a.ok)) pool.coolUntil = expiresAt
        const first = answers.find((a): a is BeginResult & Hold => a.ok)
        if (first) pool.balance = first.balance
        arm()
      },
    ).catch((err) => {
      pool.coolUntil = Date.now() + config.reserveMs
      log('warn', 'reserve_admissions failed', { error: describe(err) })
    }).finally(() => {
      pool.reserving = false
    }),
    'reserve_admissions',
  )
}

// One sweep for all pools, a few times per lifetime while anything is reserved: what expired in any
// pool goes back in one call (at concurrency 1 over many keys, a timer per pool made a call each).
// While it is armed something is reserved, and the worker is kept alive (a timer would not keep it:
// dropped, its reservations would stay held and counted until the hold sweeper).
let sweeping: ReturnType<typeof setTimeout> | undefined

function arm(): void {
  if (sweeping !== undefined) return
  sweeping = setTimeout(sweep, Math.max(20, Math.round(config.reserveMs / 5)))
  keepWorker('reservations', true)
}

function sweep(): void {
  sweeping = undefined
  const now = Date.now()
  const expired: Reserved[] = []
  let holding = false
  for (const [key, pool] of pools) {
    if (pool.reserved.some((r) => r.expiresAt <= now)) {
      expired.push(...pool.reserved.filter((r) => r.expiresAt <= now))
      pool.reserved = pool.reserved.filter((r) => r.expiresAt > now)
    }
    if (pool.reserved.length > 0) holding = true
    else if (now - pool.since > windowMs() && !pool.reserving) pools.delete(key)
  }
  cancel(expired, 'expired')
  if (holding) arm()
  else keepWorker('reservations', false)
}

function giveBack(key: string, pool: Pool, why: string): Promise<unknown> {
  const unused = pool.reserved
  pool.reserved = []
  pool.epoch++
  pool.coolUntil = Date.now() + config.reserveMs
  if (!pool.reserving) pools.delete(key)
  return cancel(unused, why)
}

function cancel(unused: Reserved[], why: string): Promise<unknown> {
  if (unused.length === 0) return Promise.resolve()
  // A Postgres array literal: a JS array would go as jsonb (db.ts).
  const ids = `{${unused.map((r) => r.hold.hold_id).join(',')}}`
  // If this fails for good the holds stay open until the hold sweeper releases them (recorded as
  // expired, uncharged): nothing is charged that was not used, only counted.
  return inBackground(call('cancel_admissions', [ids]), `cancel_admissions (${why})`)
}

function forgetIdle(): void {
  for (const [key, pool] of pools) {
    if (pool.reserved.length === 0 && !pool.reserving) pools.delete(key)
  }
}

// On Supabase the runtime announces an isolate's end with `beforeunload` (scripts/serve-functions.ts
// does too): give back what is reserved rather than leave it to the hold sweeper, and reserve no
// more (a request still in flight would reserve for requests this worker will not get).
let unloading = false
globalThis.addEventListener?.('beforeunload', () => {
  unloading = true
  giveBackAll('shutdown')
  // Nothing is reserved any more (the calls giving it back and any reservation still in flight are
  // under waitUntil themselves): the sweep has nothing to wait for.
  clearTimeout(sweeping)
  sweeping = undefined
  keepWorker('reservations', false)
})
