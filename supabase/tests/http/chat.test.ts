// POST /v1/chat/completions over real HTTP against the simulator: billing to the token (JSON and
// SSE), what goes upstream, refusals that never reach upstream, and validation.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits, settled, unknownKey } from '../lib/accounts.ts'
import { api, chat, sseData } from '../lib/http.ts'
import { simChatCount, simGeneration, simLastReceived } from '../lib/sim.ts'
import { test, waitFor } from '../lib/stack.ts'

const RATE_HEADERS = [
  'x-ratelimit-limit-requests',
  'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens',
  'x-ratelimit-remaining-tokens',
  'x-ratelimit-reset-tokens',
]

test("non-stream: OpenRouter's JSON plus gateway_usage; the balance drops by exactly the tokens", async () => {
  const a = await newAccount(1000)
  const res = await chat(a.key, { model: 'openai/gpt-4o-mini~len-7' })
  assert.equal(res.status, 200, res.text)
  for (const h of RATE_HEADERS) assert.ok(res.headers.get(h), h)
  const id = res.headers.get('x-generation-id')!
  const g = await simGeneration(id)
  const tokens = g.prompt_tokens + g.completion_tokens
  assert.equal(g.completion_tokens, 7)
  assert.equal(res.json.object, 'chat.completion')
  assert.equal(res.json.choices[0].message.content.split(' ').length - 1, 7)
  assert.deepEqual(res.json.usage.total_tokens, tokens)
  assert.deepEqual(res.json.gateway_usage, {
    credits_charged: tokens,
    tokens_charged: tokens,
    cached_tokens: 0,
    reasoning_tokens: 0,
    user_balance_after: 1000 - tokens,
    user_api_key: `${a.key.slice(0, 12)}…`,
  })
  // usage.cost is what the client pays (credits × usd_per_credit 0.00002), not upstream's cost.
  assert.equal(res.text.match(/"cost":([0-9.e-]+)/)![1], String(tokens * 2 / 100_000))
  assert.equal(res.json.usage.cost_details, null)
  // The settle runs after the response: wait for it to land, then the books must match exactly.
  const u = await settled(a.userId)
  assert.deepEqual(await balance(a.userId), { balance: 1000 - tokens, held: 0 })
  assert.equal(u.settled_by, 'usage')
  assert.equal(u.generation_id, id)
  assert.equal(u.credits_charged, tokens)
})

test('stream: chunks pass through; the usage chunk carries gateway_usage, then [DONE]', async () => {
  const a = await newAccount(1000)
  const res = await chat(a.key, { model: 'openai/gpt-4o-mini~len-5', stream: true })
  assert.equal(res.status, 200, res.text)
  assert.match(res.headers.get('content-type')!, /^text\/event-stream/)
  for (const h of RATE_HEADERS) assert.ok(res.headers.get(h), h)
  const data = sseData(res.text)
  assert.equal(data.at(-1), '[DONE]')
  const chunks = data.slice(0, -1).map((d) => JSON.parse(d))
  const content = chunks.map((c) => c.choices?.[0]?.delta?.content ?? '').join('')
  assert.equal(content, 'lorem ipsum dolor sit amet ')
  const last = chunks.at(-1)
  assert.deepEqual(last.choices, [])
  const g = await simGeneration(res.headers.get('x-generation-id')!)
  const tokens = g.prompt_tokens + g.completion_tokens
  assert.equal(last.usage.total_tokens, tokens)
  assert.deepEqual(last.gateway_usage, {
    credits_charged: tokens,
    tokens_charged: tokens,
    cached_tokens: 0,
    reasoning_tokens: 0,
    user_balance_after: 1000 - tokens,
    user_api_key: `${a.key.slice(0, 12)}…`,
  })
  assert.equal(last.usage.cost, tokens * 2 / 100_000)
  assert.equal(last.usage.cost_details, null)
  // Only the last chunk has gateway_usage; the keep-alive comment came through too.
  assert.equal(chunks.filter((c) => c.gateway_usage).length, 1)
  assert.match(res.text, /^: OPENROUTER PROCESSING/)
  // The settle runs after the usage chunk: wait for it to land, then the books must match exactly.
  assert.equal((await settled(a.userId)).settled_by, 'usage')
  assert.deepEqual(await balance(a.userId), { balance: 1000 - tokens, held: 0 })
})

test("upstream gets the operator key and app attribution, never the client's key", async () => {
  const a = await newAccount()
  const res = await chat(a.key, {}, {
    'http-referer': 'https://client.example',
    'x-title': 'client',
  })
  assert.equal(res.status, 200)
  const { headers } = await simLastReceived()
  // The simulator shows the last 4 characters of the bearer it received.
  assert.ok(!headers.authorization.endsWith(a.key.slice(-4)), 'the client key went upstream')
  assert.notEqual(headers['http-referer'], 'https://client.example')
  assert.notEqual(headers['x-title'], 'client')
})

test("OpenRouter fields beyond OpenAI's pass through; max_tokens is capped to what the hold covers", async () => {
  const a = await newAccount(1000)
  const extra = {
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    response_format: { type: 'json_object' },
    provider: { order: ['OpenAI'], allow_fallbacks: false },
    reasoning: { effort: 'low' },
    transforms: ['middle-out'],
    models: ['openai/gpt-4o-mini', 'openai/gpt-4o'],
    temperature: 0.2,
    user: 'end-user-7',
  }
  const res = await chat(a.key, { ...extra, max_tokens: 5000 })
  assert.equal(res.status, 200, res.text)
  const { body } = await simLastReceived()
  for (const [k, v] of Object.entries(extra)) assert.deepEqual(body[k], v, k)
  // 1,000 credits at 1 credit a token (flat mode), less the prompt bound (the body's bytes as it
  // goes upstream, tools and all): the rest is what the hold affords of completion tokens.
  const u = await settled(a.userId)
  assert.ok(u.facts.prompt_bound >= new TextEncoder().encode(JSON.stringify(body)).length)
  assert.equal(body.max_tokens, 1000 - u.facts.prompt_bound)
  assert.equal(res.headers.get('x-ratelimit-remaining-requests') !== null, true)
})

test('a missing or malformed Authorization header is 401 and costs no upstream call', async () => {
  const before = await simChatCount()
  const cases: [Record<string, string>, string][] = [
    [{}, 'missing_api_key'],
    [{ authorization: 'Basic abc' }, 'invalid_api_key'],
    [{ authorization: 'Bearer sk-not-a-gateway-key' }, 'invalid_api_key'],
    [{ authorization: `Bearer ${unknownKey()}` }, 'invalid_api_key'],
  ]
  for (const [headers, code] of cases) {
    const res = await api('/v1/chat/completions', {
      headers,
      body: { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] },
    })
    assert.equal(res.status, 401, JSON.stringify(headers))
    assert.equal(res.json.error.type, 'authentication_error')
    assert.equal(res.json.error.code, code)
  }
  assert.equal(await simChatCount(), before)
})

test('refusals map to 403 / 402 / 429 (with Retry-After) and never reach upstream', async () => {
  const a = await newAccount(1000)
  const readOnly = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'reader', permissions: ['read'] },
  })
  assert.equal(readOnly.status, 200, readOnly.text)
  const before = await simChatCount()

  const forbidden = await chat(readOnly.json.api_key, {})
  assert.equal(forbidden.status, 403)
  assert.equal(forbidden.json.error.code, 'permission_denied')

  const broke = await newAccount(0)
  const poor = await chat(broke.key, {})
  assert.equal(poor.status, 402)
  assert.equal(poor.json.error.code, 'insufficient_credits')

  await setRateLimits(a.userId, { requests_per_minute: 0 })
  const limited = await chat(a.key, {})
  assert.equal(limited.status, 429)
  assert.equal(limited.json.error.code, 'rate_limited')
  assert.ok(Number(limited.headers.get('retry-after')) >= 1)
  assert.equal(limited.headers.get('x-ratelimit-remaining-requests'), '0')

  assert.equal(await simChatCount(), before)
  assert.deepEqual(await balance(a.userId), { balance: 1000, held: 0 })
})

test('bad bodies are 400 with the offending field in error.param', async () => {
  const a = await newAccount()
  const cases: [unknown, string | null][] = [
    [{ messages: [{ role: 'user', content: 'x' }] }, 'model'],
    [{ model: 'openai/gpt-4o-mini', messages: [] }, 'messages'],
    [
      { model: 'openai/gpt-4o-mini', messages: [{ role: 'robot', content: 'x' }] },
      'messages.0.role',
    ],
    [
      { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], max_tokens: 0 },
      'max_tokens',
    ],
    [{ model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], n: 2 }, 'n'],
    [
      { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], stream: 'yes' },
      'stream',
    ],
    ['[1,2', null],
    ['[]', null],
  ]
  for (const [body, param] of cases) {
    const res = await api('/v1/chat/completions', { key: a.key, body })
    assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`)
    assert.equal(res.json.error.type, 'invalid_request_error')
    if (param) assert.equal(res.json.error.param, param)
  }
  assert.deepEqual(await balance(a.userId), { balance: 1000, held: 0 })
})

// The function's log (scripts/stack.sh writes it to .local/functions.log).
const FUNCTIONS_LOG = Deno.env.get('FUNCTIONS_LOG') ??
  new URL('../../../.local/functions.log', import.meta.url).pathname

test('logs: one JSON line per request, with its tokens and charge; no key, upstream key or prompt', async () => {
  const exists = await Deno.stat(FUNCTIONS_LOG).then(() => true, () => false)
  if (!exists) return console.warn(`skipped: no function log at ${FUNCTIONS_LOG}`)
  const a = await newAccount(1000)
  const secret = `prompt-${crypto.randomUUID()}`
  const res = await chat(a.key, { messages: [{ role: 'user', content: secret }] })
  assert.equal(res.status, 200)
  const requestId = res.headers.get('x-request-id')!
  await settled(a.userId)
  const lines = await waitFor("the request's log line", async () => {
    const text = await Deno.readTextFile(FUNCTIONS_LOG)
    return text.includes(requestId) ? text.split('\n') : undefined
  })
  const mine = lines.filter((l) => l.includes(requestId)).map((l) => JSON.parse(l))
  assert.equal(mine.length, 1)
  assert.equal(mine[0].status, 200)
  assert.equal(mine[0].route, '/gateway/v1/chat/completions')
  assert.equal(mine[0].user_id, a.userId)
  assert.equal(mine[0].key_prefix, `${a.key.slice(0, 12)}…`)
  // The settlement is part of the request's line (the response reports it without waiting for the
  // settle), so a non-streamed request writes no second line; the charge is what was recorded.
  const u = await settled(a.userId)
  assert.equal(typeof mine[0].model, 'string')
  assert.equal(mine[0].prompt_tokens, u.prompt_tokens)
  assert.equal(mine[0].completion_tokens, u.completion_tokens)
  assert.equal(mine[0].credits_charged, u.credits_charged)
  assert.equal(mine[0].credits_charged, res.json.gateway_usage.credits_charged)
  assert.equal(typeof mine[0].latency_ms, 'number')
  assert.ok(
    !lines.some((l) => l.includes('"settled"') && l.includes(`"hold_id":${mine[0].hold_id}`)),
    'a second line for the settlement',
  )
  const text = lines.join('\n')
  assert.ok(!text.includes(a.key), 'a full key was logged')
  assert.ok(!text.includes(secret), 'a prompt was logged')
  assert.ok(!text.includes('simulated-upstream-key'), 'the upstream key was logged')
})

test('Idempotency-Key: a retry gets the first answer and is charged once', async () => {
  const a = await newAccount(1000)
  const idem = { 'idempotency-key': crypto.randomUUID() }
  const before = await simChatCount()
  const first = await chat(a.key, { model: 'openai/gpt-4o-mini~len-3' }, idem)
  assert.equal(first.status, 200, first.text)
  await settled(a.userId)
  const again = await chat(a.key, { model: 'openai/gpt-4o-mini~len-3' }, idem)
  assert.equal(again.status, 200, again.text)
  assert.equal(again.headers.get('idempotent-replayed'), 'true')
  assert.equal(again.json.id, first.json.id)
  assert.deepEqual(again.json.gateway_usage, first.json.gateway_usage)
  assert.equal(await simChatCount(), before + 1)
  const charged = first.json.gateway_usage.credits_charged
  assert.deepEqual(await balance(a.userId), { balance: 1000 - charged, held: 0 })

  const other = await chat(a.key, { model: 'openai/gpt-4o-mini~len-4' }, idem)
  assert.equal(other.status, 422)
  assert.equal(other.json.error.code, 'idempotency_key_reused')
  const stream = await chat(a.key, { stream: true }, { 'idempotency-key': crypto.randomUUID() })
  assert.equal(stream.status, 400)
  assert.equal(stream.json.error.param, 'stream')
})

test('Idempotency-Key: a failed request releases the key, so a retry runs again', async () => {
  const a = await newAccount(1000)
  const idem = { 'idempotency-key': crypto.randomUUID() }
  const before = await simChatCount()
  const failed = await chat(a.key, { model: 'openai/gpt-4o-mini~fault-502' }, idem)
  assert.equal(failed.status, 502)
  await settled(a.userId)
  // The release runs after the response; give it a moment.
  const retried = await waitFor('the key to be released', async () => {
    const r = await chat(a.key, { model: 'openai/gpt-4o-mini~fault-502' }, idem)
    return r.status === 502 ? r : undefined
  })
  assert.equal(retried.headers.get('idempotent-replayed'), null)
  assert.ok(await simChatCount() >= before + 2)
})
