// credits.ts on its own: exact decimal arithmetic where a double would round the charge up. That it
// equals SQL's gateway.credits_for is http/credits.test.ts's (it needs the database).

import assert from 'node:assert/strict'
import fc from 'fast-check'
import { creditsFor } from '../../functions/gateway/credits.ts'

Deno.test('credits.ts: exact decimals where a double would round up', () => {
  // 3 × 0.1 + 7 × 0.1 is exactly 1 (a double says 1.0000000000000002, whose ceil is 2).
  assert.equal(creditsFor(3, 7, '0.1', '0.1'), 1)
  assert.equal(creditsFor(0, 0, '0', '1'), 0)
  assert.equal(creditsFor(1, 0, '0.000001', '1'), 1)
  assert.equal(creditsFor(12, 30, '1', '1'), 42)
  assert.equal(creditsFor(1000, 1000, '1.5', '2.25'), 3750)
  assert.throws(() => creditsFor(1, 1, '1e3', '1'))
})

Deno.test('credits.ts: ⌈p·pm + c·cm⌉ computed in integers equals the exact rational ceiling', () => {
  // The multipliers as integer millionths: the exact value is (p·PM + c·CM) / 10^6, rounded up.
  const millionths = fc.integer({ min: 0, max: 20_000_000 })
  const text = (m: number) => `${Math.floor(m / 1e6)}.${String(m % 1e6).padStart(6, '0')}`
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 50_000_000 }),
      fc.integer({ min: 0, max: 50_000_000 }),
      millionths,
      millionths,
      (p, c, pm, cm) => {
        const exact = BigInt(p) * BigInt(pm) + BigInt(c) * BigInt(cm)
        const ceil = (exact + 999_999n) / 1_000_000n
        assert.equal(BigInt(creditsFor(p, c, text(pm), text(cm))), ceil)
      },
    ),
    { numRuns: 2000 },
  )
})
