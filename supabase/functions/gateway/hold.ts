// The shapes a chat request's hold takes on its way (docs/SQL-API.md, "The request path"): what
// admission answers (a hold or a refusal; a reservation's in compact form), and the usage a hold is
// settled with. Types, the one rounding rule every settle applies and the one reading of a compact
// answer: every step of the request path imports this, it imports nothing.

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
  /** When the hold sweeper may expire it (ISO time): the end of its first lease, which
   * open-holds.ts renews while the request runs. */
  expires_at: string
  /** What the settle will charge by (credits.ts reports it without waiting). */
  pricing: Pricing
  limits?: Limits
}

/** One candidate's prices as the hold keeps them; numbers as exact decimal text (credits.ts). */
export interface Price {
  model: string
  catalog_id: string | null
  canonical_slug: string | null
  /** USD per token. */
  prompt: string
  completion: string
  input_cache_read: string
  input_cache_write: string
  internal_reasoning: string
  /** USD per request, per web search, per input image. */
  request: string
  web_search: string
  image: string
  /** Credits per token (flat mode; cost mode: a fixed selling price). */
  prompt_multiplier: string
  completion_multiplier: string
  markup_percent: string
  fixed: boolean
  by_cost: boolean
  free: boolean
}

/** begin_request's `pricing`: the mode, the candidates in order, the dearest of each category. */
export interface Pricing {
  mode: 'flat' | 'cost'
  usd_per_credit: string
  candidates: Price[]
  dearest: Price
}

/** Admission's answer when it refuses: `reason` is the machine code (refusals.ts maps it to HTTP). */
export interface Refusal {
  ok: false
  reason: string
  message?: string
  /** The candidate refused (model_not_found, model_not_available, pricing_unavailable). */
  model?: string
  /** insufficient_credits: what the request's worst case of one completion token costs. */
  needed_credits?: number
  retry_after_seconds?: number
  window?: string
  limits?: Limits
}

export type BeginResult = ({ ok: true } & Hold) | Refusal

/**
 * A context's answer as reserve_admissions_batch gives it (gateway.reserve): the first admission's
 * answer in full, and of the others only what differs from it, by column.
 */
export interface Compact {
  first: BeginResult
  more?: {
    hold_ids: number[]
    held_credits: number[]
    max_tokens: number[]
    available_credits: number[]
  }
}

/**
 * The admissions a compact answer stands for, as gateway.reserved_answers spells them out in SQL
 * (supabase/tests/http/reservations.test.ts checks that the two agree): the (i+1)-th is the first
 * but for its hold, credits and max_tokens, and i fewer requests remaining when that window has a
 * limit. They share the first's pricing object: it is read, never written.
 */
export function spelledOut({ first, more }: Compact): BeginResult[] {
  const answers: BeginResult[] = [first]
  if (!first.ok || !more) return answers
  const remaining = first.limits?.requests?.remaining
  for (let i = 0; i < more.hold_ids.length; i++) {
    answers.push({
      ...first,
      hold_id: more.hold_ids[i],
      held_credits: more.held_credits[i],
      max_tokens: more.max_tokens[i],
      available_credits: more.available_credits[i],
      limits: remaining == null ? first.limits : {
        ...first.limits,
        requests: { ...first.limits!.requests!, remaining: remaining - i - 1 },
      },
    })
  }
  return answers
}

/**
 * How a settle knows what was generated:
 *   usage         upstream's usage object (the normal case, stream or not)
 *   generation    OpenRouter's /generation stats for the X-Generation-Id (after a disconnect or a
 *                 broken response: they appear a few seconds after the generation ends)
 *   stream_count  counted by us: the prompt estimate and one token per streamed content chunk (a
 *                 JSON completion: a quarter of its text's bytes)
 */
export type SettledBy = 'usage' | 'generation' | 'stream_count'

/** How the request ended, recorded with the usage. */
export type Outcome = 'success' | 'cancelled' | 'upstream_error'

export interface Usage {
  model: string
  promptTokens: number
  completionTokens: number
  /** Parts of promptTokens: read from the cache, written to it. */
  cachedTokens?: number
  cacheWriteTokens?: number
  /** Part of completionTokens. */
  reasoningTokens?: number
  webSearchRequests?: number
  /** Input images sent (billed per image where the catalog prices them). */
  images?: number
  /** OpenRouter's usage.cost, USD, as the exact decimal text it sent; null when not reported. */
  cost: string | null
  generationId: string | null
  settledBy: SettledBy
  outcome: Outcome
  latencyMs: number
}

// DUPLICATE of gateway.usage_facts' range for counts (supabase/schemas/06_settlement.sql): a count
// it refuses fails the settle (the hold then expires uncharged) and stops a reconcile run.
/** The largest count settle_request takes. */
export const MAX_COUNT = 2147483647

/** Token counts as settle_request receives them (integers from 0 to MAX_COUNT). */
export function tokens(n: number): number {
  return Math.min(MAX_COUNT, Math.max(0, Math.round(n)))
}

/**
 * An upstream count as settle_request takes it, or undefined when it is none: not a finite number,
 * negative, or beyond MAX_COUNT (an upstream that reports 3 billion or -5 tokens reported nothing
 * usable; -5 clamped to 0 billed a completion as nothing). Undefined is treated as a count upstream
 * left out: the prompt's bound stands for it, and a completion is billed from /generation or our
 * own count (completions.ts, sse.ts).
 */
export function tokenCount(n: unknown): number | undefined {
  return typeof n === 'number' && Number.isFinite(n) && n >= 0 && Math.round(n) <= MAX_COUNT
    ? tokens(n)
    : undefined
}

/** What a usage is charged by, as SQL's usage jsonb names it (settle_request, credits.ts). */
export interface ChargedCounts {
  model: string
  prompt_tokens: number
  completion_tokens: number
  cached_tokens: number
  cache_write_tokens: number
  reasoning_tokens: number
  web_search_requests: number
  images: number
  /** USD, exact decimal text as upstream sent it (a JSON number would go through a double). */
  cost: string | null
}

/** `usage`'s counts for the charge: the one mapping of a Usage to SQL's names. */
export function chargedCounts(usage: Usage): ChargedCounts {
  return {
    model: usage.model,
    prompt_tokens: tokens(usage.promptTokens),
    completion_tokens: tokens(usage.completionTokens),
    cached_tokens: tokens(usage.cachedTokens ?? 0),
    cache_write_tokens: tokens(usage.cacheWriteTokens ?? 0),
    reasoning_tokens: tokens(usage.reasoningTokens ?? 0),
    web_search_requests: tokens(usage.webSearchRequests ?? 0),
    images: tokens(usage.images ?? 0),
    cost: usage.cost,
  }
}
