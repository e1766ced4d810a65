// deno-lint-ignore-file no-explicit-any -- the SDK's results are inspected loosely
// OpenRouter's own SDK (@openrouter/sdk) pointed at the gateway, unchanged: it validates every
// response against OpenRouter's published schema, so the usage the gateway rewrites (cost = what the
// client pays, cost_details null, gateway_usage added) must stay valid, streamed and not, over every
// optional part of a response (reasoning, cache writes, web search, request fees, fallbacks, the
// auto router, a free model). And the cost it reports is what the account was charged.

import assert from 'node:assert/strict'
import { OpenRouter } from '@openrouter/sdk'
import * as errors from '@openrouter/sdk/models/errors'
import { balance, newAccount, setRateLimits, settled } from '../lib/accounts.ts'
import { GATEWAY_URL, test } from '../lib/stack.ts'

const HI = [{ role: 'user' as const, content: 'Hi' }]
const BIG = 'abcd '.repeat(1100)

const BODIES: Record<string, any> = {
  plain: { model: 'openai/gpt-4o-mini~len-3', messages: HI },
  reasoning: { model: 'deepseek/deepseek-r1-0528~len-2~reason-2', messages: HI },
  hiddenReasoning: { model: 'openai/o3-mini~len-2~reason-2', messages: HI },
  cacheWrite: {
    model: 'anthropic/claude-sonnet-4~len-2',
    messages: [{
      role: 'system',
      content: [{ type: 'text', text: BIG, cacheControl: { type: 'ephemeral' } }],
    }, ...HI],
  },
  web: { model: 'openai/gpt-4.1:online~len-2', messages: HI },
  requestFee: { model: 'perplexity/sonar~len-2', messages: HI },
  fallback: { models: ['openai/gpt-4o~fault-502', 'anthropic/claude-opus-4~len-2'], messages: HI },
  auto: { model: 'openrouter/auto~len-2', messages: HI },
  free: { model: 'meta-llama/llama-3.3-70b-instruct:free~len-2', messages: HI },
  length: { model: 'openai/gpt-4o-mini~len-9', messages: HI, maxTokens: 2 },
}

/** Fails the test on a schema mismatch; any other error is the caller's to expect. */
async function valid<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (error) {
    if (error instanceof errors.ResponseValidationError) {
      assert.fail(`${what}: not OpenRouter's schema: ${error.pretty?.() ?? error}`)
    }
    throw error
  }
}

/** usage.cost in USD → credits at 0.00002 USD a credit (exact for the figures involved). */
const credits = (usd: number) => Math.round(usd / 0.00002)

test('@openrouter/sdk through the gateway: every completion and stream valid, cost = what was charged', async () => {
  const start = 1_000_000
  const a = await newAccount(start)
  await setRateLimits(a.userId, { requests_per_minute: 1000, tokens_per_minute: 10_000_000 })
  const client = new OpenRouter({
    apiKey: a.key,
    serverURL: `${GATEWAY_URL}/v1`,
    retryConfig: { strategy: 'none' },
  })
  let charged = 0
  let requests = 0
  for (const [name, body] of Object.entries(BODIES)) {
    const r: any = await valid(name, () => client.chat.send({ chatRequest: body })).catch((e) => {
      throw new Error(`${name}: ${e?.body ?? e}`)
    })
    assert.equal(r.object, 'chat.completion', name)
    assert.equal(typeof r.usage.cost, 'number', name)
    assert.equal(r.usage.costDetails, null, name)
    charged += credits(r.usage.cost)
    requests++

    const stream: any = await valid(
      name,
      () => client.chat.send({ chatRequest: { ...body, stream: true } }),
    )
    let usage: any
    await valid(`${name} (stream)`, async () => {
      for await (const chunk of stream) if (chunk.usage) usage = chunk.usage
    })
    assert.equal(typeof usage?.cost, 'number', `${name}: the last chunk carries the cost`)
    charged += credits(usage.cost)
    requests++
  }
  await settled(a.userId, requests)
  // What the SDK reported, summed, is what the account paid: the client's price, not upstream's.
  assert.equal(start - (await balance(a.userId)).balance, charged)
})
