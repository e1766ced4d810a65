// The charge a response reports (credits.ts, computed before the settle runs) must be the charge
// settle_request makes (SQL's gateway.credits_for). Two definitions of one formula: this test keeps
// them from drifting, over random token counts and multipliers, including the decimals a double
// gets wrong. Runs in one transaction as the operator, rolled back (nothing is left behind).

import assert from 'node:assert/strict'
import { creditsFor } from '../../functions/gateway/credits.ts'
import { uniqueEmail } from '../lib/accounts.ts'
import { db, test } from '../lib/stack.ts'

class Rollback extends Error {}

const int = (max: number) => Math.floor(Math.random() * (max + 1))

/** A multiplier as numeric text: 0–20 with up to 6 decimals, or one of the double traps. */
function multiplier(allowZero: boolean): string {
  const traps = ['0.1', '0.3', '0.7', '1.1', '2.675', '0.000001', '1', '0.5', '19.999999']
  for (;;) {
    const m = Math.random() < 0.3
      ? traps[int(traps.length - 1)]
      : `${int(20)}${
        Math.random() < 0.8 ? `.${String(int(999_999)).padStart(int(6) || 1, '0')}` : ''
      }`
    if (allowZero || Number(m) > 0) return m
  }
}

/** Token counts: mostly small (the common case), some up to settle_request's integer range. */
const tokens = () => Math.random() < 0.7 ? int(5_000) : int(50_000_000)

test('credits.ts charges exactly what settle_request charges (random tokens and multipliers)', async () => {
  const cases = 300
  let checked = 0
  await db().begin(async (sql) => {
    const [{ r }] = await sql`select gateway.register(${
      uniqueEmail('credits')
    }, null, 'live', null) as r`
    await sql`select gateway.grant_credits(${r.user_id}, 1000000000000000, 'test', 'tests')`
    const unlimited = Object.fromEntries(
      ['requests', 'tokens'].flatMap((k) =>
        ['minute', 'hour', 'day'].map((g) => [`${k}_per_${g}`, 1_000_000_000])
      ),
    )
    await sql`select gateway.set_rate_limits(${r.user_id}, ${sql.json(unlimited)})`
    for (let i = 0; i < cases; i++) {
      // Each case on its own day, so that its tokens never meet a rate window's limit.
      const model = `test/credits-${i}`
      await sql`select gateway.set_model_pricing(${model}, ${multiplier(true)}, ${
        multiplier(false)
      })`
      const [{ b }] = await sql`
        select gateway.begin_request(gateway.hash_key(${r.api_key}), null, null, ${model}, 1, 0,
                                     now() + ${i} * interval '1 day') as b`
      assert.equal(b.ok, true, JSON.stringify(b))
      const prompt = tokens()
      const completion = tokens()
      const [{ s }] = await sql`
        select gateway.settle_request(${b.hold_id}, null, ${prompt}, ${completion}, null, 'success',
                                      1, null, 'usage', now() + ${i} * interval '1 day') as s`
      const mine = creditsFor(prompt, completion, b.prompt_multiplier, b.completion_multiplier)
      assert.equal(
        mine,
        Number(s.credits_charged),
        `${prompt} × ${b.prompt_multiplier} + ${completion} × ${b.completion_multiplier}`,
      )
      checked++
    }
    throw new Rollback()
  }).catch((err) => {
    if (!(err instanceof Rollback)) throw err
  })
  assert.equal(checked, cases)
})
