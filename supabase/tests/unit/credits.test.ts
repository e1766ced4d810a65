// credits.ts on its own: exact decimal arithmetic where a double would round the charge up. That it
// equals SQL's gateway.charge_for is http/credits.test.ts's (it needs the database).

import assert from 'node:assert/strict'
import { chargeAt, creditsUsd, dec, decText } from '../../functions/gateway/credits.ts'
import type { Price } from '../../functions/gateway/hold.ts'

const price = (p: Partial<Price>): Price => ({
  model: 'm',
  catalog_id: 'm',
  canonical_slug: null,
  prompt: '0',
  completion: '0',
  input_cache_read: '0',
  input_cache_write: '0',
  internal_reasoning: '0',
  request: '0',
  web_search: '0.004',
  image: '0',
  prompt_multiplier: '1',
  completion_multiplier: '1',
  markup_percent: '0',
  fixed: true,
  by_cost: false,
  free: false,
  ...p,
})

Deno.test('credits.ts: exact decimals where a double would round up', () => {
  const flat = (pm: string, cm: string, p: number, c: number) =>
    chargeAt(price({ prompt_multiplier: pm, completion_multiplier: cm }), '0.00002', {
      prompt_tokens: p,
      completion_tokens: c,
    }).credits
  // 3 × 0.1 + 7 × 0.1 is exactly 1 (a double says 1.0000000000000002, whose ceil is 2).
  assert.equal(flat('0.1', '0.1', 3, 7), 1)
  assert.equal(flat('0', '1', 0, 0), 0)
  assert.equal(flat('0.000001', '1', 1, 0), 1)
  assert.equal(flat('1', '1', 12, 30), 42)
  assert.equal(flat('1.5', '2.25', 1000, 1000), 3750)
})

Deno.test('credits.ts: cost mode from usage.cost text, markup, and the client price in USD', () => {
  const byCost = price({ fixed: false, by_cost: true, markup_percent: '25' })
  // 0.0001234 USD × 1.25 / 0.00002 = 7.7125 → 8
  assert.equal(chargeAt(byCost, '0.00002', { cost: '0.0001234' }).credits, 8)
  assert.equal(chargeAt(byCost, '0.00002', { cost: '1.234e-4' }).credits, 8)
  // Computed from the prices when no cost: cached at the read price, reasoning at its own.
  const computed = chargeAt(
    price({
      fixed: false,
      by_cost: true,
      prompt: '0.000003',
      input_cache_read: '0.0000003',
      completion: '0.000015',
      internal_reasoning: '0.00003',
    }),
    '0.00002',
    { prompt_tokens: 1000, cached_tokens: 800, completion_tokens: 100, reasoning_tokens: 60 },
  )
  assert.equal(computed.upstreamUsd, '0.00324') // 200×3e-6 + 800×3e-7 + 40×1.5e-5 + 60×3e-5
  assert.equal(computed.credits, 162)
  assert.equal(creditsUsd(57, '0.00002'), '0.00114')
  assert.equal(decText(dec('1.50e2')), '150')
  assert.throws(() => dec('-1'))
})
