// End to end with real, unmodified clients pointed at the gateway: the `openai` SDK (JSON, stream,
// abort mid-way, its error classes), `@supabase/supabase-js` functions.invoke, and the `ai` SDK's
// streamText through `@openrouter/ai-sdk-provider`. After each, the balance changed by exactly the
// tokens the simulator reports for that generation.

import assert from 'node:assert/strict'
import OpenAI from 'openai'
import { createClient } from '@supabase/supabase-js'
import { createOpenRouter } from '@openrouter/ai-sdk-provider'
import { streamText } from 'ai'
import {
  type Account,
  balance,
  newAccount,
  setRateLimits,
  settled,
  usageRecords,
} from '../lib/accounts.ts'
import { api } from '../lib/http.ts'
import { simGeneration } from '../lib/sim.ts'
import { GATEWAY_URL, SUPABASE_URL, test } from '../lib/stack.ts'

function openai(key: string) {
  // No retries: each refusal must be seen exactly once (the SDK retries 429/5xx by default).
  return new OpenAI({ apiKey: key, baseURL: `${GATEWAY_URL}/v1`, maxRetries: 0 })
}

/** Waits for the account's n-th settlement; returns the simulator's tokens for it. */
async function simTokensOfLatest(a: Account, count: number): Promise<number> {
  const u = await settled(a.userId, count)
  assert.ok(u.generation_id, 'the usage record names the generation')
  const g = await simGeneration(u.generation_id!)
  assert.equal(u.prompt_tokens, g.prompt_tokens)
  assert.equal(u.completion_tokens, g.completion_tokens)
  return g.prompt_tokens + g.completion_tokens
}

test('openai SDK: a completion, billed to the token, gateway_usage in the body', async () => {
  const a = await newAccount(1000)
  const res = await openai(a.key).chat.completions.create({
    model: 'openai/gpt-4o-mini~len-6',
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }],
  })
  assert.equal(res.choices[0].finish_reason, 'stop')
  assert.equal(res.usage?.completion_tokens, 6)
  const tokens = await simTokensOfLatest(a, 1)
  assert.equal(res.usage?.total_tokens, tokens)
  const gw = (res as unknown as { gateway_usage: Record<string, unknown> }).gateway_usage
  assert.equal(gw.tokens_charged, tokens)
  assert.equal(gw.user_balance_after, 1000 - tokens)
  assert.equal((await balance(a.userId)).balance, 1000 - tokens)
})

test('openai SDK: streaming, with the usage chunk and gateway_usage at the end', async () => {
  const a = await newAccount(1000)
  const stream = await openai(a.key).chat.completions.create({
    model: 'openai/gpt-4o-mini~len-8',
    messages: [{ role: 'user', content: 'Count' }],
    stream: true,
    stream_options: { include_usage: true },
  })
  let text = ''
  let usage: OpenAI.CompletionUsage | undefined | null
  let gateway: Record<string, unknown> | undefined
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? ''
    if (chunk.usage) usage = chunk.usage
    const g = (chunk as unknown as { gateway_usage?: Record<string, unknown> }).gateway_usage
    if (g) gateway = g
  }
  assert.equal(text.split(' ').length - 1, 8)
  const tokens = await simTokensOfLatest(a, 1)
  assert.equal(usage?.total_tokens, tokens)
  assert.equal(gateway?.tokens_charged, tokens)
  assert.equal(gateway?.user_balance_after, 1000 - tokens)
  assert.equal((await balance(a.userId)).balance, 1000 - tokens)
})

test('openai SDK: stream.abort() mid-way stops upstream and bills exactly what was generated', async () => {
  const a = await newAccount(2000)
  const runner = openai(a.key).chat.completions.stream({
    model: 'openai/gpt-4o-mini~len-500~delay-20',
    messages: [{ role: 'user', content: 'Go on' }],
  })
  let deltas = 0
  runner.on('content', () => {
    if (++deltas === 5) runner.abort()
  })
  await assert.rejects(runner.finalChatCompletion(), OpenAI.APIUserAbortError)
  const u = await settled(a.userId)
  assert.equal(u.status, 'cancelled')
  const g = await simGeneration(u.generation_id!)
  assert.equal(g.cancelled, true)
  assert.ok(g.completion_tokens < 500 && g.completion_tokens >= 5)
  assert.equal(u.completion_tokens, g.completion_tokens)
  assert.equal((await balance(a.userId)).balance, 2000 - g.prompt_tokens - g.completion_tokens)
  assert.equal((await usageRecords(a.userId)).length, 1)
})

test('openai SDK: 401, 402 and 429 surface as its error classes', async () => {
  const auth = openai('gw_live_thisisnotarealkeyatall0000000')
  await assert.rejects(
    auth.chat.completions.create({
      model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'x' }],
    }),
    OpenAI.AuthenticationError,
  )
  const broke = await newAccount(0)
  await assert.rejects(
    openai(broke.key).chat.completions.create({
      model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'x' }],
    }),
    (err: unknown) => err instanceof OpenAI.APIError && err.status === 402,
  )
  const limited = await newAccount(1000)
  await setRateLimits(limited.userId, { requests_per_minute: 0 })
  await assert.rejects(
    openai(limited.key).chat.completions.create({
      model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'x' }],
    }),
    (err: unknown) =>
      err instanceof OpenAI.RateLimitError && Number(err.headers?.get('retry-after')) >= 1,
  )
  // The models list works too (client.models.list() reads /v1/models).
  const models = await openai(limited.key).models.list()
  assert.ok(models.data.some((m) => m.id === 'openai/gpt-4o-mini'))
})

test("supabase-js functions.invoke('gateway/…'): account routes and a metered completion", async () => {
  const a = await newAccount(1000)
  // The project key goes in `apikey`; the gateway key in Authorization (verify_jwt is off).
  const supabase = createClient(SUPABASE_URL, 'local-anon-key', {
    global: { headers: { Authorization: `Bearer ${a.key}` } },
  })
  const bal = await supabase.functions.invoke('gateway/user/balance', { method: 'GET' })
  assert.equal(bal.error, null, String(bal.error))
  assert.equal(bal.data.credits, 1000)

  const done = await supabase.functions.invoke('gateway/v1/chat/completions', {
    body: { model: 'openai/gpt-4o-mini~len-4', messages: [{ role: 'user', content: 'Hi' }] },
  })
  assert.equal(done.error, null, String(done.error))
  const tokens = await simTokensOfLatest(a, 1)
  assert.equal(done.data.gateway_usage.tokens_charged, tokens)
  assert.equal((await balance(a.userId)).balance, 1000 - tokens)

  const anonymous = createClient(SUPABASE_URL, 'local-anon-key')
  const denied = await anonymous.functions.invoke('gateway/user/balance', { method: 'GET' })
  assert.ok(denied.error)
  const res = denied.error.context as Response
  assert.equal(res.status, 401)
  assert.equal((await res.json()).error.type, 'authentication_error')
})

test('ai SDK streamText via @openrouter/ai-sdk-provider, billed to the token', async () => {
  const a = await newAccount(1000)
  const openrouter = createOpenRouter({ apiKey: a.key, baseURL: `${GATEWAY_URL}/v1` })
  const result = streamText({
    model: openrouter.chat('openai/gpt-4o-mini~len-9'),
    prompt: 'Tell me something',
  })
  let text = ''
  for await (const part of result.textStream) text += part
  assert.equal(text.split(' ').length - 1, 9)
  const usage = await result.usage
  const tokens = await simTokensOfLatest(a, 1)
  assert.equal((usage.inputTokens ?? 0) + (usage.outputTokens ?? 0), tokens)
  assert.equal((await balance(a.userId)).balance, 1000 - tokens)
  assert.equal((await api('/user/balance', { key: a.key })).json.credits, 1000 - tokens)
})
