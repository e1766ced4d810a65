// gateway-usage.ts, what both response paths report: the charge settle will make, computed from the
// hold alone (credits.ts at the hold's multipliers, tokens rounded as settle_request rounds them),
// and the `gateway_usage` member added to upstream's JSON text without re-serialising it.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import { appendMember, charge, gatewayUsageJson } from '../../functions/gateway/gateway-usage.ts'
import type { Hold, Usage } from '../../functions/gateway/hold.ts'

const hold = (pm: string, cm: string, balance = 1000): Hold => ({
  hold_id: 1,
  user_id: 1,
  key_id: 1,
  key_prefix: 'gw_live_abcd…',
  held_credits: 100,
  max_tokens: 64,
  balance,
  available_credits: balance - 100,
  prompt_multiplier: pm,
  completion_multiplier: cm,
})
const usage = (prompt: number, completion: number): Usage => ({
  model: 'm',
  promptTokens: prompt,
  completionTokens: completion,
  cost: null,
  generationId: null,
  settledBy: 'usage',
  outcome: 'success',
  latencyMs: 1,
})

Deno.test("charge: the tokens at the hold's price, and the balance after it as of admission", () => {
  assert.deepEqual(charge(hold('1', '1'), usage(12, 30)), { credits: 42, balanceAfter: 958 })
  assert.deepEqual(charge(hold('0.1', '0.1'), usage(3, 7)), { credits: 1, balanceAfter: 999 })
  // Token counts as settle_request takes them: rounded, never negative.
  assert.deepEqual(charge(hold('1', '2'), usage(-5, 2.6)), { credits: 6, balanceAfter: 994 })
})

Deno.test('appendMember adds the member last, to any object text, as valid JSON', () => {
  assert.equal(appendMember('{}', 'a', '1'), '{"a":1}')
  assert.equal(appendMember('{ }\n', 'a', '1'), '{"a":1}')
  assert.equal(appendMember('{"x":{"y":"}"}}', 'a', 'null'), '{"x":{"y":"}"},"a":null}')
  fc.assert(
    fc.property(
      fc.dictionary(
        fc.string().filter((k) => k !== 'gateway_usage' && k !== '__proto__'),
        fc.jsonValue(),
      ),
      fc.integer({ min: 0, max: 2 }),
      (obj, indent) => {
        const text = appendMember(JSON.stringify(obj, null, indent), 'gateway_usage', '{"n":1}')
        assert.deepEqual(JSON.parse(text), {
          ...JSON.parse(JSON.stringify(obj)),
          gateway_usage: { n: 1 },
        })
      },
    ),
    { numRuns: 300 },
  )
})

Deno.test('gateway_usage: the charge, the balance after it and the key prefix; null when unknown', () => {
  assert.deepEqual(JSON.parse(gatewayUsageJson(42, 958, 'gw_live_abcd…')), {
    tokens_charged: 42,
    user_balance_after: 958,
    user_api_key: 'gw_live_abcd…',
  })
  assert.deepEqual(JSON.parse(gatewayUsageJson(null, undefined, 'k')), {
    tokens_charged: null,
    user_balance_after: null,
    user_api_key: 'k',
  })
})
