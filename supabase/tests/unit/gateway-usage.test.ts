// gateway-usage.ts, what both response paths report: the charge settle will make, computed from the
// hold alone (credits.ts at the hold's multipliers, tokens rounded as settle_request rounds them),
// and the `gateway_usage` member added to upstream's JSON text without re-serialising it.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  appendMember,
  charge,
  gatewayUsageJson,
  parseUsage,
  parseWithSources,
  readUsage,
  usageCounts,
  withClientUsage,
} from '../../functions/gateway/gateway-usage.ts'
import { MAX_COUNT, tokens } from '../../functions/gateway/hold.ts'
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
  expires_at: '2026-12-03T00:00:00Z',
  pricing: {
    mode: 'flat',
    usd_per_credit: '0.00002',
    candidates: [],
    dearest: {
      model: 'm',
      catalog_id: 'm',
      canonical_slug: null,
      prompt: '0.000001',
      completion: '0.000002',
      input_cache_read: '0',
      input_cache_write: '0',
      internal_reasoning: '0',
      request: '0',
      web_search: '0.004',
      image: '0',
      prompt_multiplier: pm,
      completion_multiplier: cm,
      markup_percent: '0',
      fixed: true,
      by_cost: false,
      free: false,
    },
  },
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
  assert.deepEqual(charge(hold('1', '1'), usage(12, 30)), {
    credits: 42,
    usd: '0.00084',
    balanceAfter: 958,
  })
  assert.deepEqual(charge(hold('0.1', '0.1'), usage(3, 7)), {
    credits: 1,
    usd: '0.00002',
    balanceAfter: 999,
  })
  // Token counts as settle_request takes them: rounded, never negative.
  assert.deepEqual(charge(hold('1', '2'), usage(-5, 2.6)), {
    credits: 6,
    usd: '0.00012',
    balanceAfter: 994,
  })
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
  const charged = { credits: 42, usd: '0.00084', balanceAfter: 958 }
  assert.deepEqual(JSON.parse(gatewayUsageJson(charged, usage(12, 30), 'gw_live_abcd…')), {
    credits_charged: 42,
    tokens_charged: 42,
    cached_tokens: 0,
    reasoning_tokens: 0,
    user_balance_after: 958,
    user_api_key: 'gw_live_abcd…',
  })
  assert.deepEqual(JSON.parse(gatewayUsageJson(null, undefined, 'k')), {
    credits_charged: null,
    tokens_charged: null,
    cached_tokens: null,
    reasoning_tokens: null,
    user_balance_after: null,
    user_api_key: 'k',
  })
})

Deno.test('the client usage: cost is what the client pays, exactly; upstream cost_details hidden', () => {
  const text =
    '{"id":"x","usage":{"prompt_tokens":3,"cost":0.000001234567890123456,"cost_details":{"upstream_inference_cost":1}},"z":1}'
  const read = readUsage(text)!
  assert.equal(read.costText, '0.000001234567890123456')
  const out = withClientUsage(text, read.usage, '0.00114')
  assert.match(out, /"cost":0\.00114,/)
  assert.deepEqual(JSON.parse(out), {
    id: 'x',
    usage: { prompt_tokens: 3, cost: 0.00114, cost_details: null },
    z: 1,
  })
})

// parseUsage finds cost's source text by scanning the members (a reviver costs 7 µs a call): it must
// say exactly what V8's own `context.source` says, for every way upstream may write a usage object.
Deno.test("parseUsage: cost's exact source text, as JSON.parse's reviver reports it", () => {
  const blank = fc.constantFrom('', ' ', '\n  ', '\t')
  const number = fc.oneof(
    fc.constantFrom('0', '-0', '5', '0.00000375', '0.000001234567890123', '1e-7', '1E+2', '2.50'),
    fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
    fc.integer().map(String),
  )
  const value = fc.oneof(
    number,
    fc.string().map((x) => JSON.stringify(x)),
    fc.constantFrom('null', 'true', '{}', '[1,{"cost":3}]', '{"cost":0.5}'),
  )
  const name = fc.oneof(
    fc.constantFrom('cost', 'cost', '\\u0063ost', 'prompt_tokens', 'cost_details', 'co\\"st'),
    fc.string().map((x) => JSON.stringify(x).slice(1, -1)),
  )
  const member = fc.tuple(name, blank, value, blank).map(([n, b1, v, b2]) =>
    `"${n}"${b1}:${b2}${v}`
  )
  fc.assert(
    fc.property(fc.array(member, { maxLength: 6 }), blank, (members, b) => {
      const text = `${b}{${b}${members.join(`${b},${b}`)}${b}}${b}`
      const { value: parsed, sourceOf } = parseWithSources(text, 'cost')
      assert.equal(parseUsage(text).costText, sourceOf(parsed), text)
    }),
    { numRuns: 2000 },
  )
  // Not an object: no cost.
  for (const text of ['null', '[{"cost":1}]', '7', '"cost"']) {
    assert.equal(parseUsage(text).costText, null)
  }
  assert.equal(parseUsage('{"cost": 0.000001234567890123 }').costText, '0.000001234567890123')
  assert.equal(parseUsage('{"cost":1,"cost":"2"}').costText, null)
  assert.equal(parseUsage('{"cost":"2","cost":1e-7}').costText, '1e-7')
})

// settle_request refuses a count above 2147483647 (usage_facts): such an upstream count is no count
// (the request's own bound is charged instead), and nothing the function sends is ever beyond it.
Deno.test('upstream counts beyond settle_request’s range are not counts; tokens() stays in range', () => {
  for (const huge of [MAX_COUNT + 1, 3e9, 1e300]) {
    const c = usageCounts(
      {
        prompt_tokens: huge,
        completion_tokens: huge,
        prompt_tokens_details: { cached_tokens: huge },
      } as never,
      null,
    )
    assert.equal(c.promptTokens, undefined, String(huge))
    assert.equal(c.completionTokens, undefined, String(huge))
    assert.equal(c.cachedTokens, undefined, String(huge))
    assert.equal(tokens(huge), MAX_COUNT)
  }
  // A negative count is no count either: clamped to 0 it billed a completion as nothing.
  const c = usageCounts({ prompt_tokens: MAX_COUNT, completion_tokens: -4 } as never, null)
  assert.equal(c.promptTokens, MAX_COUNT)
  assert.equal(c.completionTokens, undefined)
  assert.equal(usageCounts({ completion_tokens: 2.4 } as never, null).completionTokens, 2)
})
