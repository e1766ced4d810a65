// Chat completions when upstream misbehaves or the client leaves: every request ends voided (nothing
// generated) or settled exactly once for what was generated, and clients get OpenAI-style errors.
// Faults come from the simulator's model suffixes (tools/openrouter-sim/spec.ts).

import assert from 'node:assert/strict'
import { balance, newAccount, settled, usageRecords } from '../lib/accounts.ts'
import { chat, sseData } from '../lib/http.ts'
import { simChatCount, simConfig, simGeneration } from '../lib/sim.ts'
import { GATEWAY_URL, test, waitFor } from '../lib/stack.ts'

async function assertVoided(userId: number, credits: number) {
  const u = await settled(userId)
  assert.equal(u.status, 'voided')
  assert.equal(u.credits_charged, 0)
  assert.deepEqual(await balance(userId), { balance: credits, held: 0 })
}

test('upstream 502 / 503 / 429 / 401 / 402 map to 502 / 503 / 429 / 503 / 503; the hold is voided', async () => {
  const cases: [string, number, string][] = [
    ['502', 502, 'upstream_error'],
    ['503', 503, 'upstream_unavailable'],
    ['429-7', 429, 'upstream_rate_limited'],
    // The operator's OpenRouter key or credits failing is not the client's 401/402.
    ['401', 503, 'upstream_unavailable'],
    ['402', 503, 'upstream_unavailable'],
  ]
  for (const [fault, status, code] of cases) {
    const a = await newAccount(500)
    const res = await chat(a.key, { model: `openai/gpt-4o-mini~fault-${fault}` })
    assert.equal(res.status, status, `${fault}: ${res.text}`)
    assert.equal(res.json.error.code, code, fault)
    assert.ok(res.json.error.message)
    if (status === 429) assert.equal(res.headers.get('retry-after'), '7')
    assert.ok(res.headers.get('x-ratelimit-limit-requests'), 'rate headers on errors too')
    await assertVoided(a.userId, 500)
  }
})

test('an upstream timeout is 503 upstream_timeout and the hold is voided', async () => {
  const a = await newAccount(500)
  const res = await chat(
    a.key,
    { model: 'openai/gpt-4o-mini~slow-3000' },
    { 'x-gateway-upstream-timeout-ms': '300' },
  )
  assert.equal(res.status, 503, res.text)
  assert.equal(res.json.error.code, 'upstream_timeout')
  await assertVoided(a.userId, 500)
})

test("a malformed upstream body is 502, settled from OpenRouter's generation stats", async () => {
  const a = await newAccount(500)
  const res = await chat(a.key, { model: 'openai/gpt-4o-mini~fault-malformed~len-6' })
  assert.equal(res.status, 502, res.text)
  assert.equal(res.json.error.code, 'upstream_malformed')
  const id = res.headers.get('x-generation-id')!
  const u = await settled(a.userId)
  const g = await simGeneration(id)
  assert.equal(u.settled_by, 'generation')
  assert.equal(u.completion_tokens, g.completion_tokens)
  assert.equal((await balance(a.userId)).balance, 500 - g.prompt_tokens - g.completion_tokens)
})

test('a 200 carrying an error (non-stream) is 502 and settled for what was generated', async () => {
  const a = await newAccount(500)
  const res = await chat(a.key, { model: 'openai/gpt-4o-mini~fault-stream-error' })
  assert.equal(res.status, 502, res.text)
  const g = await simGeneration(res.headers.get('x-generation-id')!)
  const u = await settled(a.userId)
  assert.equal(u.settled_by, 'generation')
  assert.equal(u.credits_charged, g.prompt_tokens + g.completion_tokens)
})

test('an error event inside a 200 stream is forwarded, and the request settled', async () => {
  const a = await newAccount(500)
  const res = await chat(a.key, { model: 'openai/gpt-4o-mini~fault-stream-error', stream: true })
  assert.equal(res.status, 200)
  const events = sseData(res.text).filter((d) => d !== '[DONE]').map((d) => JSON.parse(d))
  assert.ok(events.some((e) => e.error?.message), res.text)
  const g = await simGeneration(res.headers.get('x-generation-id')!)
  const u = await settled(a.userId)
  assert.equal(u.settled_by, 'generation')
  assert.equal(u.completion_tokens, g.completion_tokens)
  assert.equal((await balance(a.userId)).balance, 500 - g.prompt_tokens - g.completion_tokens)
})

for (const fault of ['stream-cut', 'malformed']) {
  test(`a broken stream (${fault}) ends with an error event and is settled`, async () => {
    const a = await newAccount(500)
    const res = await chat(a.key, { model: `openai/gpt-4o-mini~fault-${fault}`, stream: true })
    assert.equal(res.status, 200)
    const events = sseData(res.text)
    assert.notEqual(events.at(-1), '[DONE]')
    const last = JSON.parse(events.at(-1)!)
    assert.equal(last.error.code, 'upstream_stream_error', res.text)
    const g = await simGeneration(res.headers.get('x-generation-id')!)
    const u = await settled(a.userId)
    assert.equal(u.settled_by, 'generation')
    assert.equal(u.credits_charged, g.prompt_tokens + g.completion_tokens)
  })
}

/** Starts a slow stream, reads `chunks` content chunks, then hangs up. */
async function streamAndHangUp(key: string, model: string, chunks: number) {
  const controller = new AbortController()
  const res = await fetch(`${GATEWAY_URL}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, stream: true, messages: [{ role: 'user', content: 'Hello' }] }),
    signal: controller.signal,
  })
  assert.equal(res.status, 200)
  const id = res.headers.get('x-generation-id')!
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
  let text = ''
  while ((text.match(/"content":"[^"]/g) ?? []).length < chunks) {
    const { value, done } = await reader.read()
    if (done) throw new Error('the stream ended before the client hung up')
    text += value
  }
  controller.abort()
  await reader.cancel().catch(() => {})
  return { id, received: (text.match(/"content":"[^"]/g) ?? []).length }
}

test('client disconnect mid-stream: upstream stops, billing comes from the generation stats', async () => {
  const a = await newAccount(2000)
  const { id } = await streamAndHangUp(a.key, 'openai/gpt-4o-mini~len-400~delay-20', 5)
  const u = await settled(a.userId)
  const g = await simGeneration(id)
  assert.equal(g.cancelled, true, 'upstream was not aborted')
  assert.ok(g.completion_tokens < 400)
  assert.equal(u.settled_by, 'generation')
  assert.equal(u.status, 'cancelled')
  assert.equal(u.prompt_tokens, g.prompt_tokens)
  assert.equal(u.completion_tokens, g.completion_tokens)
  assert.deepEqual(await balance(a.userId), {
    balance: 2000 - g.prompt_tokens - g.completion_tokens,
    held: 0,
  })
  // Settled once: a single usage record.
  assert.equal((await usageRecords(a.userId)).length, 1)
})

test('client disconnect without generation stats: billed from the count of streamed chunks', async () => {
  const a = await newAccount(2000)
  const before = await simConfig()
  await simConfig({ generation_delay_ms: 600_000 })
  try {
    const { id, received } = await streamAndHangUp(a.key, 'openai/gpt-4o-mini~len-400~delay-20', 4)
    const u = await settled(a.userId, 1, 30_000)
    const g = await simGeneration(id)
    assert.equal(u.settled_by, 'stream_count')
    assert.equal(u.prompt_tokens, g.prompt_tokens)
    assert.ok(u.completion_tokens >= received, `${u.completion_tokens} < ${received} received`)
    assert.ok(u.completion_tokens <= g.completion_tokens)
    assert.equal((await balance(a.userId)).balance, 2000 - u.prompt_tokens - u.completion_tokens)
  } finally {
    await simConfig({ generation_delay_ms: before.generation_delay_ms ?? 500 })
  }
})

test('client disconnect during a non-streamed request: it completes upstream and is billed by usage', async () => {
  const a = await newAccount(500)
  const controller = new AbortController()
  const upstreamBefore = await simChatCount()
  const pending = fetch(`${GATEWAY_URL}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'openai/gpt-4o-mini~slow-500~len-4',
      messages: [{ role: 'user', content: 'Hello' }],
    }),
    signal: controller.signal,
  }).catch((e) => e)
  // Hang up once the request is upstream (the simulator holds its answer 500 ms): a fixed wait
  // could end before the request even reaches the function (a worker starting cold), and a request
  // abandoned before its admission is rightly never billed.
  await waitFor('the request upstream', async () => (await simChatCount()) > upstreamBefore)
  controller.abort()
  await pending
  const u = await settled(a.userId)
  assert.equal(u.settled_by, 'usage')
  assert.equal(u.completion_tokens, 4)
  assert.equal((await balance(a.userId)).balance, 500 - u.prompt_tokens - 4)
})
