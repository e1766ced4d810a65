// The hold lifecycle of a chat request (docs/SQL-API.md, "The request path"): `begin_request` admits
// and holds credits before anything goes upstream; then exactly one of `settle_request` (charge what
// was generated) or `void_request` (release: nothing was generated). SQL makes settling idempotent
// per hold, so a duplicate attempt changes nothing; this module makes sure one attempt happens even
// when the client is gone or the isolate is about to be recycled (every settle runs in background).
//
// Under load admissions and settles are each batched into one call (batcher.ts).
//
// How a settle knows what was generated (`settled_by`):
//   usage         upstream's usage object (the normal case, stream or not)
//   generation    OpenRouter's /generation stats for the X-Generation-Id (after a disconnect or a
//                 broken response: they appear a few seconds after the generation ends)
//   stream_count  counted by us: the prompt estimate and one token per streamed content chunk

import type { Caller } from './auth.ts'
import { callerArgs } from './auth.ts'
import { toHex } from '../_shared/keys.ts'
import { describe, inBackground, keepWorker } from './background.ts'
import { Batcher } from './batcher.ts'
import { config } from './config.ts'
import { creditsFor } from './credits.ts'
import { call } from './db.ts'
import { ApiError } from './errors.ts'
import { log } from './log.ts'
import * as reservations from './reservations.ts'
import { generationStats } from './upstream.ts'

interface Window {
  limit: number | null
  remaining: number | null
  reset_seconds: number | null
}
export interface Limits {
  requests?: Window | null
  tokens?: Window | null
}

export interface Hold {
  hold_id: number
  user_id: number
  key_id: number
  key_prefix: string
  held_credits: number
  /** What may be sent upstream as max_tokens: the request's, capped by what the hold covers. */
  max_tokens: number
  /** The balance as admission saw it (before this request's charge). */
  balance: number
  /** Credits neither spent nor held once this hold was placed. */
  available_credits: number
  /** The multipliers the hold is priced at, as exact decimal text (see credits.ts). */
  prompt_multiplier: string
  completion_multiplier: string
  limits?: Limits
}

interface Refusal {
  ok: false
  reason: string
  message?: string
  retry_after_seconds?: number
  window?: string
  limits?: Limits
}

const REFUSAL_STATUS: Record<string, 401 | 402 | 403 | 429> = {
  invalid_api_key: 401,
  key_inactive: 401,
  key_expired: 401,
  permission_denied: 403,
  ip_not_allowed: 403,
  referrer_not_allowed: 403,
  key_request_cap: 429,
  rate_limited: 429,
  insufficient_credits: 402,
}

/** The x-ratelimit-* headers OpenAI clients read, from the tightest window of each kind. */
export function rateLimitHeaders(limits: Limits | undefined): Record<string, string> {
  const headers: Record<string, string> = {}
  for (const kind of ['requests', 'tokens'] as const) {
    const w = limits?.[kind]
    if (!w) continue
    if (w.limit != null) headers[`x-ratelimit-limit-${kind}`] = String(w.limit)
    if (w.remaining != null) {
      headers[`x-ratelimit-remaining-${kind}`] = String(Math.max(0, w.remaining))
    }
    if (w.reset_seconds != null) headers[`x-ratelimit-reset-${kind}`] = `${w.reset_seconds}s`
  }
  return headers
}

export type BeginResult = ({ ok: true } & Hold) | Refusal

interface Admission {
  who: Caller
  model: string
  maxTokens: number | null
  promptTokens: number
}

// Admissions are batched (batcher.ts): one goes alone (`begin_request`), those that queue behind it
// go together (`begin_requests`, each admitted by begin_request itself, in account order). Two calls
// in flight, not one, so that a batch fills while the other is at the database instead of waiting
// for it; measured against one, three and four (docs/PERFORMANCE.md). At most 64 per call: every
// account a batch admits stays locked until it commits.
const admissions = new Batcher<Admission, BeginResult>({
  name: 'admissions',
  maxCalls: 2,
  maxBatch: 64,
  call: (batch) =>
    batch.length === 1
      ? call<BeginResult>('begin_request', [
        ...callerArgs(batch[0].who),
        batch[0].model,
        batch[0].maxTokens,
        batch[0].promptTokens,
      ]).then((r) => [r])
      : call<BeginResult[]>('begin_requests', [
        batch.map((a) => ({
          key_hash: toHex(a.who.keyHash),
          client_ip: a.who.ip,
          referrer: a.who.referrer,
          model: a.model,
          max_tokens: a.maxTokens,
          prompt_tokens: a.promptTokens,
        })),
      ]),
})

// Holds this worker admitted and has not settled or voided yet. While any is open the worker is kept
// alive (background.ts): the edge runtime drops an idle worker as soon as nothing is under waitUntil,
// and a client that hangs up leaves the request's settle to work registered a moment later. Dropped
// in between, the hold would wait for the sweeper: credits held for its timeout, then unbilled.
const openHolds = new Set<number>()

function opened(hold: Hold): Hold {
  openHolds.add(hold.hold_id)
  keepWorker('holds', true)
  return hold
}

function closed(hold: Hold): void {
  if (openHolds.delete(hold.hold_id) && openHolds.size === 0) keepWorker('holds', false)
}

/** Admits the request and holds credits for it, or throws the refusal as a 401/402/403/429. */
export async function begin(
  who: Caller,
  model: string,
  maxTokens: number | null,
  promptTokens: number,
): Promise<Hold> {
  const context = { who, model, maxTokens }
  const reserved = reservations.take(context, promptTokens)
  if (reserved) return opened(reserved)
  const r = await admissions.submit({ who, model, maxTokens, promptTokens })
  reservations.admitted(context, promptTokens, r)
  if (r.ok) return opened(r)
  const status = REFUSAL_STATUS[r.reason] ?? 403
  const headers = rateLimitHeaders(r.limits)
  if (status === 429) {
    headers['retry-after'] = String(Math.max(1, Math.ceil(r.retry_after_seconds ?? 1)))
  }
  throw new ApiError(status, r.message ?? 'Request refused', { code: r.reason, headers })
}

export type SettledBy = 'usage' | 'generation' | 'stream_count'

/** How the request ended, recorded with the usage. */
export type Outcome = 'success' | 'cancelled' | 'upstream_error'

export interface Usage {
  model: string
  promptTokens: number
  completionTokens: number
  cost: number | null
  generationId: string | null
  settledBy: SettledBy
  outcome: Outcome
  latencyMs: number
}

/** Token counts as settle_request receives them (non-negative integers). */
function tokens(n: number): number {
  return Math.max(0, Math.round(n))
}

/**
 * What settling `usage` will charge the hold (settle_request's own formula, see credits.ts), and the
 * balance after it as of admission: requests of the same account running concurrently may move the
 * actual balance. Lets a response report the charge without waiting for the settle.
 */
export function charge(hold: Hold, usage: Usage): { credits: number; balanceAfter: number } {
  const credits = creditsFor(
    tokens(usage.promptTokens),
    tokens(usage.completionTokens),
    hold.prompt_multiplier,
    hold.completion_multiplier,
  )
  return { credits, balanceAfter: hold.balance - credits }
}

export interface Settlement {
  settled: boolean
  credits_charged?: number
  balance_after?: number
  reason?: string
}

// A settle that cannot reach the database keeps trying in background for about two minutes (well
// within the hold timeout, after which the sweeper would release the hold unbilled).
const RETRY_DELAYS_MS = [100, 500, 2_000, 5_000, 15_000, 30_000, 60_000]

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

/** settle_request's arguments, named as settle_requests takes them. */
interface SettleArgs {
  hold_id: number
  model: string
  prompt_tokens: number
  completion_tokens: number
  upstream_cost: number | null
  status: Outcome
  latency_ms: number
  generation_id: string | null
  settled_by: SettledBy
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
    const a = batch[0]
    return withRetries('settle_request', () =>
      call<Settlement>('settle_request', [
        a.hold_id,
        a.model,
        a.prompt_tokens,
        a.completion_tokens,
        a.upstream_cost,
        a.status,
        a.latency_ms,
        a.generation_id,
        a.settled_by,
      ])).then((s) => [s])
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
  const reported = charge(hold, usage).credits
  reservations.charged(hold, reported)
  return inBackground(
    (async () => {
      // A hold that is a large part of what the account has left is settled without lingering:
      // until it is, its credits are not available to the account's next request.
      const urgent = hold.available_credits < 8 * hold.held_credits
      const s = await settlements.submit({
        hold_id: hold.hold_id,
        model: usage.model,
        prompt_tokens: tokens(usage.promptTokens),
        completion_tokens: tokens(usage.completionTokens),
        upstream_cost: usage.cost,
        status: usage.outcome,
        latency_ms: tokens(usage.latencyMs),
        generation_id: usage.generationId,
        settled_by: usage.settledBy,
      }, urgent)
      if (s.settled && s.credits_charged !== reported) {
        // Never expected (a test pins credits.ts to SQL); if it happens, the books are right (SQL
        // charged) but a response reported another figure.
        log('error', 'settle charged other than reported', { hold_id: hold.hold_id })
      }
      if (logged && s.settled) return s
      log('info', 'settled', {
        hold_id: hold.hold_id,
        user_id: hold.user_id,
        key_prefix: hold.key_prefix,
        model: usage.model,
        settled_by: usage.settledBy,
        outcome: usage.outcome,
        prompt_tokens: usage.promptTokens,
        completion_tokens: usage.completionTokens,
        credits_charged: s.credits_charged,
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

export interface LostUsage {
  model: string
  generationId: string | null
  /** Our own count, the last resort: prompt estimate and streamed content chunks. */
  countedPromptTokens: number
  countedCompletionTokens: number
  outcome: Outcome
  latencyMs: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Settles a request whose usage object never arrived (client gone, stream broken): from
 * OpenRouter's generation stats once they appear, else from our own count. Never unbilled.
 */
export function settleWithoutUsage(hold: Hold, lost: LostUsage): Promise<Settlement | undefined> {
  return inBackground(
    (async () => {
      if (lost.generationId) {
        for (const delay of config.generationLookupDelaysMs) {
          await sleep(delay)
          const stats = await generationStats(lost.generationId).catch(() => null)
          if (stats) {
            return await settle(hold, {
              model: lost.model,
              promptTokens: stats.promptTokens,
              completionTokens: stats.completionTokens,
              cost: stats.cost,
              generationId: lost.generationId,
              settledBy: 'generation',
              outcome: lost.outcome,
              latencyMs: lost.latencyMs,
            })
          }
        }
      }
      return await settle(hold, {
        model: lost.model,
        promptTokens: lost.countedPromptTokens,
        completionTokens: lost.countedCompletionTokens,
        cost: null,
        generationId: lost.generationId,
        settledBy: 'stream_count',
        outcome: lost.outcome,
        latencyMs: lost.latencyMs,
      })
    })().finally(() => closed(hold)),
    'settle without usage',
  )
}
