// Closes a hold exactly once: `settle_request` charges what was generated, `void_request` releases a
// hold nothing was generated for (docs/SQL-API.md, "The request path"). SQL makes settling idempotent
// per hold, so a duplicate attempt changes nothing; this module makes sure one attempt happens even
// when the client is gone or the isolate is about to be recycled (every settle runs in background),
// and that it lands after a database outage (retries). Under load settles are batched (batcher.ts).

import { describe, inBackground } from './background.ts'
import { Batcher } from './batcher.ts'
import { config } from './config.ts'
import { call } from './db.ts'
import { ApiError } from './errors.ts'
import { charge, type ReportedCharge, settled as settledCharge } from './gateway-usage.ts'
import {
  type ChargedCounts,
  chargedCounts,
  type Hold,
  type Outcome,
  type SettledBy,
  tokens,
  type Usage,
} from './hold.ts'
import { log } from './log.ts'
import { closed } from './open-holds.ts'
import * as reservations from './reservations.ts'

export interface Settlement {
  settled: boolean
  credits_charged?: number
  balance_after?: number
  /** Credits charged above the hold (charged in full; gateway.overruns lists them). */
  overrun_credits?: number
  /** What upstream cost, USD decimal text (usage.cost, else computed from the hold's prices). */
  upstream_usd?: string
  /** The hold had expired: the charge was posted all the same. */
  late?: boolean
  reason?: string
}

// A settle that cannot reach the database keeps trying in background for about two minutes. The
// hold's lease cannot be renewed meanwhile either: if it lapses, the settle that gets through
// charges the expired hold all the same (late, gateway.settle_hold).
const RETRY_DELAYS_MS = [100, 500, 2_000, 5_000, 15_000, 30_000, 60_000]
/** How long a settle may keep retrying (a request's lifetime includes it: completions.ts). */
export const SETTLE_RETRY_MS = RETRY_DELAYS_MS.reduce((a, b) => a + b, 0)
/**
 * What a settle may take after its request ended: the /generation lookups (about 10 s), and the
 * retries while the database is unreachable (about 2 minutes).
 */
export const SETTLE_MARGIN_MS = 180_000

async function withRetries<T>(what: string, attempt: () => Promise<T>): Promise<T> {
  for (let i = 0;; i++) {
    try {
      return await attempt()
    } catch (err) {
      // Only an unreachable database is worth retrying; anything else will fail the same way.
      const retriable = err instanceof ApiError && err.status === 503
      if (!retriable || i >= RETRY_DELAYS_MS.length) throw err
      log('warn', `${what}: retrying`, { error: describe(err) })
      await new Promise((r) => setTimeout(r, RETRY_DELAYS_MS[i]))
    }
  }
}

/** settle_request's usage (docs/SQL-API.md), with the hold's id as settle_requests takes it. */
export interface SettleArgs extends ChargedCounts {
  hold_id: number
  status: Outcome
  latency_ms: number
  generation_id: string | null
  settled_by: SettledBy
}

/** `usage` as settle_request(s) take it: its counts (hold.ts) and how it ended. */
export function settleArgs(holdId: number, usage: Usage): SettleArgs {
  return {
    hold_id: holdId,
    ...chargedCounts(usage),
    status: usage.outcome,
    latency_ms: tokens(usage.latencyMs),
    generation_id: usage.generationId,
    settled_by: usage.settledBy,
  }
}

// Settles are batched (batcher.ts) with one call in flight: under load the commits per request drop
// from two towards one. At most 100 per call: after a database outage thousands may have queued,
// and one call would keep every row it settles locked until it commits. A call that cannot reach
// the database keeps trying (withRetries). With nothing in flight a settle lingers 10 ms for company
// (GATEWAY_SETTLE_LINGER_MS): at concurrency 1 a settle per request was a commit per request,
// competing with the next request for the same two cores; the hold is open 10 ms longer. Not when
// the hold is a large part of what the account has left: a client sending requests back to back
// would find its credits tied up in holds waiting to settle (a 402 it did not get before).
const settlements = new Batcher<SettleArgs, Settlement>({
  name: 'settlements',
  maxCalls: 1,
  maxBatch: 100,
  lingerMs: config.settleLingerMs,
  call: (batch) => {
    if (batch.length > 1) {
      return withRetries('settle_requests', () => call<Settlement[]>('settle_requests', [batch]))
    }
    const { hold_id, ...usage } = batch[0]
    return withRetries('settle_request', () => call<Settlement>('settle_request', [hold_id, usage]))
      .then((s) => [s])
  },
})

// The edge runtime announces the end of a worker with `beforeunload` (near its wall clock, over its
// memory): settles waiting for company go at once.
globalThis.addEventListener?.('beforeunload', () => settlements.flushNow())

/**
 * Charges the hold for `usage`. Runs in background (it survives the response and retries while the
 * database is unreachable); awaiting it gives the settlement, or undefined if it failed for good.
 * A response reports `charge(hold, usage)` instead of waiting. `logged`: the request's own log line
 * already carries the tokens and the charge, so a settle that charged exactly that logs nothing.
 */
export function settle(
  hold: Hold,
  usage: Usage,
  logged = false,
): Promise<Settlement | undefined> {
  return settleReported(hold, usage, charge(hold, usage)?.credits, logged)
}

/** `settle`, given what the response reports it charges (`charge(hold, usage)`). */
function settleReported(
  hold: Hold,
  usage: Usage,
  reported: number | undefined,
  logged: boolean,
): Promise<Settlement | undefined> {
  if (reported !== undefined) reservations.charged(hold, reported)
  return inBackground(
    (async () => {
      // A hold that is a large part of what the account has left is settled without lingering:
      // until it is, its credits are not available to the account's next request.
      const urgent = hold.available_credits < 8 * hold.held_credits
      const s = await settlements.submit(settleArgs(hold.hold_id, usage), urgent)
      if (s.settled && reported !== undefined && s.credits_charged !== reported) {
        // Never expected (a test pins credits.ts to SQL); if it happens, the books are right (SQL
        // charged) but a response reported another figure.
        log('error', 'settle charged other than reported', { hold_id: hold.hold_id })
      }
      if (logged && s.settled && !s.overrun_credits && !s.late) return s
      // A hold the database no longer knows: whatever upstream billed for it is charged to nobody.
      // Never expected (expired and released holds settle late); loud if it happens.
      const level = !s.settled && s.reason === 'unknown_hold' ? 'error' : 'info'
      log(level, 'settled', {
        hold_id: hold.hold_id,
        user_id: hold.user_id,
        key_prefix: hold.key_prefix,
        model: usage.model,
        settled_by: usage.settledBy,
        outcome: usage.outcome,
        prompt_tokens: usage.promptTokens,
        completion_tokens: usage.completionTokens,
        credits_charged: s.credits_charged,
        overrun_credits: s.overrun_credits || undefined,
        late: s.late || undefined,
        latency_ms: usage.latencyMs,
        repeated: s.settled ? undefined : s.reason,
      })
      return s
    })().finally(() => closed(hold)),
    'settle_request',
  )
}

/** Releases the hold without a charge (nothing reached upstream, or upstream refused it). */
export function voidHold(hold: Hold, reason: string): Promise<unknown> {
  return inBackground(
    withRetries('void_request', () => call('void_request', [hold.hold_id, reason]))
      .finally(() => closed(hold)),
    'void_request',
  )
}

/**
 * Resolves once every settle this isolate has submitted so far is committed (or failed): the
 * caller's balance and usage read after it include them (routes/user.ts, read your writes).
 */
export function settlesCommitted(): Promise<void> {
  return settlements.drain()
}

/** The longest a response waits for a settle to learn its charge (reportedCharge). */
const REPORT_WAIT_MS = 2_000

/**
 * Settles in background and says what it charges: computed from the hold without waiting (one
 * committed round trip saved; the balance after it is as of admission), or, when only the settle
 * can know (openrouter/auto served a model outside the candidates), from the settle itself — for at
 * most REPORT_WAIT_MS: a settle retrying through a database outage must not hold the response back
 * (it then reports no charge; the settle still lands).
 */
export async function reportedCharge(
  hold: Hold,
  usage: Usage,
  logged = false,
): Promise<ReportedCharge | undefined> {
  const known = charge(hold, usage)
  const settling = settleReported(hold, usage, known?.credits, logged)
  if (known) return known
  let timer: ReturnType<typeof setTimeout> | undefined
  const s = await Promise.race([
    settling,
    new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), REPORT_WAIT_MS)),
  ]).finally(() => clearTimeout(timer))
  return s?.settled && s.credits_charged !== undefined
    ? settledCharge(hold, s.credits_charged)
    : undefined
}
