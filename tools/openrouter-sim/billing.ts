// What a generation costs, from its token counts and its model's catalog prices, as OpenRouter
// documents it, in exact atto-dollars (money.ts); and the `usage` object that reports it.

import { type Caching, type Price, priceFor, resolveModel } from './catalog.ts'
import { formatUsd, parseUsd, usdJson } from './money.ts'
import { parseModel } from './spec.ts'

/** Exa, the web plugin's engine when the model has no native search: per search, 10 results in. */
export const EXA_SEARCH_USD = '0.007'
export const EXA_RESULTS_INCLUDED = 10
export const EXA_EXTRA_RESULT_USD = '0.001'
const EXA_SEARCH = parseUsd(EXA_SEARCH_USD)
const EXA_EXTRA_RESULT = parseUsd(EXA_EXTRA_RESULT_USD)

export interface UsageCounts {
  /** All prompt tokens: cached and cache-write tokens are part of them. */
  prompt: number
  /** All completion tokens: reasoning tokens are part of them. */
  completion: number
  reasoning: number
  cached: number
  cacheWrite: number
  /** The cache write asked for the 1-hour TTL. */
  cacheWrite1h: boolean
  audio: number
  webSearches: number
  webResults: number
  /** The search ran on the model's own engine (pricing.web_search) rather than Exa. */
  nativeSearch: boolean
}

/** A cost in atto-dollars, by part; `total` is `usage.cost`. */
export interface Charge {
  /** Prompt tokens: uncached at `prompt`, cached at `input_cache_read`, written at the write price. */
  prompt: bigint
  /** Completion tokens: content at `completion`, reasoning at `internal_reasoning` (or completion). */
  completion: bigint
  request: bigint
  webSearch: bigint
  total: bigint
}

const n = (x: number) => BigInt(x)

export function charge(price: Price, u: UsageCounts): Charge {
  const p = priceFor(price, u.prompt)
  const uncached = u.prompt - u.cached - u.cacheWrite
  const prompt = n(uncached) * p.prompt + n(u.cached) * p.cacheRead +
    n(u.cacheWrite) * (u.cacheWrite1h ? p.cacheWrite1h : p.cacheWrite)
  const completion = n(u.completion - u.reasoning) * p.completion + n(u.reasoning) * p.reasoning
  const extra = n(Math.max(0, u.webResults - EXA_RESULTS_INCLUDED))
  const webSearch = u.webSearches === 0
    ? 0n
    : u.nativeSearch
    ? n(u.webSearches) * p.webSearch
    : n(u.webSearches) * (EXA_SEARCH + extra * EXA_EXTRA_RESULT)
  return {
    prompt,
    completion,
    request: p.request,
    webSearch,
    total: prompt + completion + p.request + webSearch,
  }
}

/**
 * What caching saved against the same prompt uncached (negative when a cache write cost more than
 * it saved), as /generation's `cache_discount`; null when nothing was read or written.
 */
export function cacheDiscount(price: Price, u: UsageCounts): bigint | null {
  if (u.cached === 0 && u.cacheWrite === 0) return null
  const p = priceFor(price, u.prompt)
  const write = u.cacheWrite1h ? p.cacheWrite1h : p.cacheWrite
  return n(u.cached) * (p.prompt - p.cacheRead) - n(u.cacheWrite) * (write - p.prompt)
}

/** The `usage` object (OpenRouter's ChatUsage); costs are exact decimal JSON numbers. */
export function usageJson(u: UsageCounts, c: Charge, caching: Caching) {
  return {
    prompt_tokens: u.prompt,
    completion_tokens: u.completion,
    total_tokens: u.prompt + u.completion,
    cost: usdJson(c.total),
    is_byok: false,
    prompt_tokens_details: {
      cached_tokens: u.cached,
      // "Only returned for models with explicit caching and cache write pricing."
      ...(caching === 'explicit' ? { cache_write_tokens: u.cacheWrite } : {}),
      audio_tokens: u.audio,
    },
    cost_details: {
      // Not BYOK: OpenRouter reports the provider's own charge only for BYOK requests.
      upstream_inference_cost: null,
      upstream_inference_prompt_cost: usdJson(c.prompt),
      upstream_inference_completions_cost: usdJson(c.completion),
    },
    completion_tokens_details: { reasoning_tokens: u.reasoning },
    ...(u.webSearches ? { server_tool_use_details: { web_search_requests: u.webSearches } } : {}),
  }
}

/**
 * `usage.cost` of a usage on `model` (variants and `~` suffixes allowed), as the exact decimal
 * string; counts not given are 0. For tests that want a charge without hand-computing it.
 */
export function costUsd(
  model: string,
  u: Partial<UsageCounts> & { prompt: number; completion: number },
): string {
  const resolved = resolveModel(parseModel(model)?.id ?? model)
  if (!resolved) throw new Error(`${model} is not in the simulator catalog`)
  return formatUsd(
    charge(resolved.price, {
      reasoning: 0,
      cached: 0,
      cacheWrite: 0,
      cacheWrite1h: false,
      audio: 0,
      webSearches: 0,
      webResults: 0,
      nativeSearch: false,
      ...u,
    }).total,
  )
}
