// What a request is charged, computed here so that a response can report it without waiting for
// settle_request (which runs after the response, in background).
//
// DUPLICATE of SQL's `gateway.charge` with `gateway.served_price` (supabase/schemas/02_pricing.sql),
// the one definition settle_request charges by; `gateway.charge_for(pricing, usage)` runs that SQL
// on a begin_request answer's `pricing`, and supabase/tests/http/charge-property.test.ts checks that
// this equals it over ≥ 1,000 random prices, markups and usages per run. Change both together.
//
// Exact: prices arrive as decimal text (numeric::text: a JSON number would be a double, and
// ceil(3 × 0.1 + 7 × 0.1) must be 1, not 2), and every step is BigInt over scaled integers, one ceil
// at the end, as SQL does it.

import type { Price, Pricing } from './hold.ts'

/** A non-negative decimal: `n / 10^s`. */
interface Dec {
  n: bigint
  s: number
}

const DECIMAL = /^(\d+)(?:\.(\d*))?(?:[eE]([-+]?\d{1,3}))?$/

/** A non-negative decimal's text ("0.0000025", "12", "1.5e-7") as an exact value. */
export function dec(text: string): Dec {
  const m = DECIMAL.exec(text)
  if (!m) throw new TypeError(`not a non-negative decimal: ${text}`)
  const fraction = m[2] ?? ''
  const exponent = Number(m[3] ?? 0)
  const n = BigInt(m[1] + fraction)
  const s = fraction.length - exponent
  return s >= 0 ? { n, s } : { n: n * 10n ** BigInt(-s), s: 0 }
}

const int = (i: number | bigint): Dec => ({ n: BigInt(i), s: 0 })

// Prices and usd_per_credit are a handful of texts, met on every request (reserved holds share one
// pricing object): each is parsed once. Dec values are never modified (add and mul make new ones).
const known = new Map<string, Dec>()

/** `dec` of a price's text, remembered (a charge parsed its prices' texts on every request). */
function priceDec(text: string): Dec {
  let d = known.get(text)
  if (d === undefined) {
    if (known.size >= 10_000) known.clear()
    d = dec(text)
    known.set(text, d)
  }
  return d
}

function scaled(a: Dec, s: number): bigint {
  return a.n * 10n ** BigInt(s - a.s)
}

function add(...xs: Dec[]): Dec {
  const s = Math.max(...xs.map((x) => x.s))
  return { n: xs.reduce((sum, x) => sum + scaled(x, s), 0n), s }
}

function mul(a: Dec, b: Dec): Dec {
  return { n: a.n * b.n, s: a.s + b.s }
}

function cmp(a: Dec, b: Dec): number {
  const s = Math.max(a.s, b.s)
  const d = scaled(a, s) - scaled(b, s)
  return d > 0n ? 1 : d < 0n ? -1 : 0
}

/** ⌈a / b⌉ for a ≥ 0, b > 0. */
function ceilDiv(a: Dec, b: Dec): bigint {
  const s = Math.max(a.s, b.s)
  const num = scaled(a, s)
  const den = scaled(b, s)
  return (num + den - 1n) / den
}

/** A decimal as plain text, no exponent, no trailing zeros ("0.00114", "3", "0"). */
export function decText(a: Dec): string {
  if (a.s <= 0) return scaled(a, 0).toString()
  const digits = a.n.toString().padStart(a.s + 1, '0')
  const whole = digits.slice(0, digits.length - a.s)
  const fraction = digits.slice(digits.length - a.s).replace(/0+$/, '')
  return fraction ? `${whole}.${fraction}` : whole
}

/** The usage a charge is computed from (settle_request's `p_usage`, the counts and the cost). */
export interface ChargeUsage {
  model?: string | null
  prompt_tokens?: number
  completion_tokens?: number
  cached_tokens?: number
  cache_write_tokens?: number
  reasoning_tokens?: number
  web_search_requests?: number
  images?: number
  /** OpenRouter's usage.cost, USD, exact decimal text. */
  cost?: string | null
}

export interface Charge {
  credits: number
  /** What upstream cost (usage.cost when reported, else computed), USD, decimal text. */
  upstreamUsd: string
  /** The candidate charged (its requested id), or `*` for the dearest of several. */
  model: string
}

/**
 * The price a settle charges (gateway.served_price): the only candidate, the candidate the served
 * model is (by the id requested, its catalog id or canonical slug), else the dearest. Undefined for
 * `openrouter/auto` serving a model outside the candidates: SQL then prices it from the catalog as
 * it is at the settle, which only the settle can know.
 */
export function servedPrice(
  pricing: Pricing,
  served: string | null | undefined,
): Price | undefined {
  const { candidates, dearest } = pricing
  const prices = candidates.length > 1 ? candidates : [dearest]
  if (candidates.length <= 1 && dearest.model !== 'openrouter/auto') return dearest
  if (served != null) {
    const p = prices.find((x) =>
      served === x.model || served === x.catalog_id || served === x.canonical_slug
    )
    if (p) return p
  }
  if (served == null || !prices.some((x) => x.model === 'openrouter/auto')) return dearest
  return undefined
}

/**
 * The charge of `usage` at `price` (gateway.charge): fixed, ⌈tokens × multipliers + fees / usd per
 * credit⌉ (a free model's tokens cost 0); by cost, ⌈USD × (100 + markup) / (100 × usd per credit)⌉;
 * both: the greater. Cached and cache-write tokens are part of the prompt, reasoning of the
 * completion, clamped to them.
 */
export function chargeAt(price: Price, usdPerCredit: string, usage: ChargeUsage): Charge {
  const count = (n: number | undefined) => BigInt(Math.max(0, Math.round(n ?? 0)))
  const prompt = count(usage.prompt_tokens)
  const completion = count(usage.completion_tokens)
  const cached = min(count(usage.cached_tokens), prompt)
  const write = min(count(usage.cache_write_tokens), prompt - cached)
  const reasoning = min(count(usage.reasoning_tokens), completion)
  const p = (name: keyof Price) => priceDec(price[name] as string)
  const upc = priceDec(usdPerCredit)

  const fees = add(
    p('request'),
    mul(int(count(usage.web_search_requests)), p('web_search')),
    mul(int(count(usage.images)), p('image')),
  )
  const tokenCredits = price.free ? int(0) : add(
    mul(int(prompt), p('prompt_multiplier')),
    mul(int(completion), p('completion_multiplier')),
  )
  const upstream = usage.cost != null ? dec(usage.cost) : add(
    mul(int(prompt - cached - write), p('prompt')),
    mul(int(cached), p('input_cache_read')),
    mul(int(write), p('input_cache_write')),
    mul(int(completion - reasoning), p('completion')),
    mul(int(reasoning), p('internal_reasoning')),
    fees,
  )
  let credits = 0n
  if (price.fixed) credits = ceilDiv(add(mul(tokenCredits, upc), fees), upc)
  if (price.by_cost) {
    const byCost = ceilDiv(
      mul(upstream, add(int(100), p('markup_percent'))),
      mul(int(100), upc),
    )
    if (byCost > credits) credits = byCost
  }
  return { credits: Number(credits), upstreamUsd: decText(upstream), model: price.model }
}

const min = (a: bigint, b: bigint) => (a < b ? a : b)

/**
 * What settle_request will charge for `usage` at an admission's `pricing` (gateway.charge_for), or
 * undefined when only the settle can say (openrouter/auto served a model outside the candidates).
 */
export function chargeFor(pricing: Pricing, usage: ChargeUsage): Charge | undefined {
  const price = servedPrice(pricing, usage.model)
  return price && chargeAt(price, pricing.usd_per_credit, usage)
}

/** What `credits` cost the client in USD: credits × usd_per_credit, exact decimal text. */
export function creditsUsd(credits: number, usdPerCredit: string): string {
  return decText(mul(int(credits), priceDec(usdPerCredit)))
}

/** Whether a ≥ b, for decimal texts (tests and checks). */
export function decAtLeast(a: string, b: string): boolean {
  return cmp(dec(a), dec(b)) >= 0
}
