// deno-lint-ignore-file no-explicit-any -- the SDK's results are inspected loosely
// OpenRouter's own SDK (@openrouter/sdk, pinned in deno.json) against the simulator: it validates
// every response with zod schemas generated from OpenRouter's published OpenAPI document, so any
// shape of ours that drifts from OpenRouter's (a missing system_fingerprint, cost_details member,
// /models or /generation field, an error body) throws ResponseValidationError here.
// Run: deno test --allow-net --allow-env --allow-read tools/openrouter-sim/sdk.test.ts

import assert from 'node:assert/strict'
import { OpenRouter } from '@openrouter/sdk'
import * as errors from '@openrouter/sdk/models/errors'
import { type RunningSimulator, startSimulator } from './server.ts'

const KEY = 'sk-or-v1-sdk-test-0123456789'
const HI = [{ role: 'user' as const, content: 'Hi' }]
const BIG = 'abcd '.repeat(1100)

async function withClient(
  fn: (client: OpenRouter, sim: RunningSimulator) => Promise<void>,
): Promise<void> {
  const sim = await startSimulator({ apiKey: KEY, generationDelayMs: 0 })
  const client = new OpenRouter({
    apiKey: KEY,
    serverURL: sim.baseUrl,
    retryConfig: { strategy: 'none' },
  })
  try {
    await fn(client, sim)
  } finally {
    await sim.close()
  }
}

/** Fails the test on a schema mismatch; any other error is the caller's to expect. */
async function valid<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (error) {
    if (error instanceof errors.ResponseValidationError) {
      assert.fail(
        `${what}: response does not match OpenRouter's schema: ${error.pretty?.() ?? error}`,
      )
    }
    throw error
  }
}

// Requests that exercise every optional part of a response: reasoning text, cache reads and
// writes, web search, request fees, fallbacks, the auto router, a free model.
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

Deno.test('@openrouter/sdk accepts every non-streamed completion', async () => {
  await withClient(async (client) => {
    for (const [name, body] of Object.entries(BODIES)) {
      for (const round of [1, 2]) { // twice: the second request reads the cache
        const r: any = await valid(
          `${name} #${round}`,
          () => client.chat.send({ chatRequest: body }),
        )
        assert.equal(r.object, 'chat.completion')
        assert.equal(r.systemFingerprint, null)
        assert.ok(r.usage.costDetails, name)
        assert.equal(typeof r.usage.cost, 'number')
        assert.equal(r.choices[0].message.role, 'assistant')
      }
    }
  })
})

Deno.test('@openrouter/sdk accepts every stream chunk, the usage chunk included', async () => {
  await withClient(async (client) => {
    for (const [name, body] of Object.entries(BODIES)) {
      const stream: any = await valid(
        name,
        () => client.chat.send({ chatRequest: { ...body, stream: true } }),
      )
      let usage: any
      let chunks = 0
      await valid(name, async () => {
        for await (const chunk of stream) {
          chunks++
          assert.equal(chunk.object, 'chat.completion.chunk')
          if (chunk.usage) usage = chunk.usage
        }
      })
      assert.ok(chunks >= 3, `${name}: ${chunks} chunks`)
      assert.ok(usage?.costDetails, `${name}: the last chunk carries the usage`)
    }
  })
})

Deno.test('@openrouter/sdk accepts /models and /generation', async () => {
  await withClient(async (client) => {
    const page: any = await valid('models', () => client.models.list())
    assert.equal(page.result.data.length, page.result.totalCount)
    assert.ok(page.result.data.some((m: any) => m.id === 'openrouter/auto'))
    for (const body of [BODIES.reasoning, BODIES.web, BODIES.cacheWrite, BODIES.auto]) {
      const r: any = await valid('chat', () => client.chat.send({ chatRequest: body }))
      const g: any = await valid('generation', () => client.generations.getGeneration({ id: r.id }))
      assert.equal(g.data.id, r.id)
      assert.equal(g.data.totalCost, r.usage.cost)
      assert.equal(g.data.nativeTokensReasoning, r.usage.completionTokensDetails.reasoningTokens)
    }
  })
})

Deno.test('@openrouter/sdk parses every error the simulator answers with', async () => {
  await withClient(async (client, sim) => {
    const expectError = async (what: string, call: () => Promise<unknown>, type: any) => {
      await assert.rejects(
        () => valid(what, call),
        (e: unknown) => e instanceof type,
        `${what} should fail with ${type.name}`,
      )
    }
    const send = (model: string) => () => client.chat.send({ chatRequest: { model, messages: HI } })
    await expectError('invalid model', send('nope/nope'), errors.BadRequestResponseError)
    await expectError(
      '402',
      send('openai/gpt-4o-mini~fault-402'),
      errors.PaymentRequiredResponseError,
    )
    await expectError(
      '429',
      send('openai/gpt-4o-mini~fault-429'),
      errors.TooManyRequestsResponseError,
    )
    await expectError('502', send('openai/gpt-4o-mini~fault-502'), errors.BadGatewayResponseError)
    await expectError(
      '503',
      send('openai/gpt-4o-mini~fault-503'),
      errors.ServiceUnavailableResponseError,
    )
    const stranger = new OpenRouter({
      apiKey: 'sk-or-v1-wrong',
      serverURL: sim.baseUrl,
      retryConfig: { strategy: 'none' },
    })
    await expectError(
      '401',
      () => stranger.chat.send({ chatRequest: { model: 'openai/gpt-4o-mini', messages: HI } }),
      errors.UnauthorizedResponseError,
    )
    await expectError(
      'unknown generation',
      () => client.generations.getGeneration({ id: 'gen-0-unknown' }),
      errors.NotFoundResponseError,
    )
  })
})
