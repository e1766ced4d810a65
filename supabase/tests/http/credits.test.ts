// The charge a response reports (credits.ts, computed before the settle runs) must be the charge
// settle_request makes (SQL's gateway.charge at gateway.served_price). Two definitions of one
// formula: this property test keeps them from drifting. Each run draws 1,200 random cases — prices
// with up to 12 decimal places (the catalog's are USD per token: 0.000000075), markups with
// decimals, multipliers, both modes, free and fixed prices, fallback candidates, usages with cached,
// cache-write, reasoning tokens, web searches, images and an exact reported cost or none — and asks
// `gateway.charge_for` (as the operator: gateway_api may not call it) for every one in one query.

import assert from 'node:assert/strict'
import { chargeFor, type ChargeUsage } from '../../functions/gateway/credits.ts'
import type { Price, Pricing } from '../../functions/gateway/hold.ts'
import { db, test } from '../lib/stack.ts'

const CASES = 1200

const int = (max: number) => Math.floor(Math.random() * (max + 1))
const pick = <T>(xs: T[]): T => xs[int(xs.length - 1)]

/** A non-negative decimal as numeric text: `digits` before the point at most, `places` after. */
function decimal(digits: number, places: number): string {
  const whole = String(int(10 ** digits - 1))
  if (places === 0 || Math.random() < 0.15) return whole
  const n = 1 + int(places - 1)
  const fraction = Array.from({ length: n }, () => int(9)).join('')
  return `${whole}.${fraction}`
}

/** A USD price per token/request/search/image: often zero, else up to 12 decimal places. */
function usd(): string {
  const traps = ['0', '0.0000025', '0.00000015', '0.000000075', '0.1', '0.3', '0.000001', '0.005']
  if (Math.random() < 0.25) return pick(traps)
  return `0.${'0'.repeat(int(7))}${decimal(0, 6).replace(/^0\.?/, '') || '1'}`
}

function price(model: string, mode: 'flat' | 'cost'): Price {
  const overrideFixed = mode === 'cost' && Math.random() < 0.25
  const multiplier = () => Math.random() < 0.3 ? pick(['1', '0.1', '2.675', '0']) : decimal(2, 6)
  const fixed = mode === 'flat' || overrideFixed
  return {
    model,
    catalog_id: Math.random() < 0.5 ? model.split(':')[0] : null,
    canonical_slug: Math.random() < 0.5 ? `${model}-2025` : null,
    prompt: usd(),
    completion: usd(),
    input_cache_read: usd(),
    input_cache_write: usd(),
    internal_reasoning: usd(),
    request: Math.random() < 0.2 ? usd() : '0',
    web_search: pick(['0.004', '0.01', usd()]),
    image: Math.random() < 0.3 ? usd() : '0',
    prompt_multiplier: fixed ? multiplier() : '1',
    completion_multiplier: fixed ? multiplier() : '1',
    markup_percent: pick(['0', '25', '12.5', decimal(3, 4)]),
    fixed,
    by_cost: mode === 'cost' && !overrideFixed,
    free: mode === 'flat' && Math.random() < 0.1,
  }
}

/** The dearest of each category, as gateway.price_candidates builds it for several candidates. */
function dearest(prices: Price[]): Price {
  if (prices.length === 1) return prices[0]
  const max = (k: keyof Price) =>
    prices.map((p) => p[k] as string).reduce((a, b) => (Number(a) >= Number(b) ? a : b))
  const numeric = [
    'prompt',
    'completion',
    'input_cache_read',
    'input_cache_write',
    'internal_reasoning',
    'request',
    'web_search',
    'image',
    'prompt_multiplier',
    'completion_multiplier',
    'markup_percent',
  ] as const
  return {
    ...Object.fromEntries(numeric.map((k) => [k, max(k)])),
    model: '*',
    catalog_id: null,
    canonical_slug: null,
    fixed: prices.some((p) => p.fixed),
    by_cost: prices.some((p) => p.by_cost),
    free: prices.every((p) => p.free),
  } as Price
}

// (Number() only orders the draws: the values compared stay the decimal text SQL reads.)

function pricing(): Pricing {
  const mode = Math.random() < 0.5 ? 'flat' : 'cost'
  const n = Math.random() < 0.7 ? 1 : 2 + int(2)
  const candidates = Array.from(
    { length: n },
    (_, i) =>
      price(`${pick(['openai', 'anthropic', 'x'])}/m-${i}${pick(['', ':nitro', ':free'])}`, mode),
  )
  return {
    mode,
    usd_per_credit: pick(
      ['0.00002', '0.00001', '0.001', '0.0000037', decimal(0, 8)].filter((x) => Number(x) > 0),
    ),
    candidates,
    dearest: dearest(candidates),
  }
}

const count = () => Math.random() < 0.7 ? int(5_000) : int(50_000_000)

function usage(p: Pricing): ChargeUsage {
  const c = pick(p.candidates)
  const prompt = count()
  const completion = count()
  return {
    model: pick([
      c.model,
      c.catalog_id ?? c.model,
      c.canonical_slug ?? c.model,
      'other/model',
      null,
    ]),
    prompt_tokens: prompt,
    completion_tokens: completion,
    // Sometimes above what they are part of: both sides clamp.
    cached_tokens: Math.random() < 0.5 ? int(prompt + 10) : 0,
    cache_write_tokens: Math.random() < 0.3 ? int(prompt + 10) : 0,
    reasoning_tokens: Math.random() < 0.5 ? int(completion + 10) : 0,
    web_search_requests: Math.random() < 0.2 ? int(5) : 0,
    images: Math.random() < 0.2 ? int(10) : 0,
    cost: Math.random() < 0.4
      ? pick([decimal(2, 18), `${1 + int(8)}.${int(99)}e-${1 + int(9)}`, '0'])
      : null,
  }
}

test(`credits.ts charges exactly what gateway.charge_for charges (${CASES} random cases)`, async () => {
  const cases = Array.from({ length: CASES }, () => {
    const p = pricing()
    return { pricing: p, usage: usage(p) }
  })
  const rows = await db()`
    select c.ord, gateway.charge_for(c.v -> 'pricing', c.v -> 'usage') as r
      from jsonb_array_elements((${JSON.stringify(cases)}::text)::jsonb) with ordinality c (v, ord)
     order by c.ord`
  assert.equal(rows.length, CASES)
  let byCost = 0
  let multi = 0
  for (const [i, row] of rows.entries()) {
    const { pricing: p, usage: u } = cases[i]
    const mine = chargeFor(p, u)
    const what = () => JSON.stringify(cases[i])
    assert.ok(mine, `credits.ts cannot tell: ${what()}`)
    assert.equal(mine.credits, Number(row.r.credits), `credits: ${what()}`)
    assert.equal(Number(mine.upstreamUsd), Number(row.r.upstream_usd), `upstream_usd: ${what()}`)
    assert.equal(stripZeros(mine.upstreamUsd), stripZeros(row.r.upstream_usd), what())
    assert.equal(mine.model, row.r.model, `model charged: ${what()}`)
    if (p.dearest.by_cost) byCost++
    if (p.candidates.length > 1) multi++
  }
  // The draw covers both modes and fallback lists (else the test proves less than it says).
  assert.ok(byCost > CASES / 4 && CASES - byCost > CASES / 4, `${byCost} by cost`)
  assert.ok(multi > CASES / 10, `${multi} with fallbacks`)
})

/** Decimal text without trailing zeros (numeric::text keeps the scale: 0.0050 is 0.005). */
function stripZeros(s: string): string {
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s
}
