// deno-lint-ignore-file no-explicit-any -- tests inspect arbitrary JSON documents
// Drives the simulator over real HTTP (ephemeral port) through its transport, shapes and faults.
// Billing (tokenizer, prices, caching, reasoning, web search, routing) is in billing.test.ts and
// tokens.test.ts; conformance to OpenRouter's schema, through @openrouter/sdk, in sdk.test.ts.
// Run: deno test --allow-net --allow-env tools/openrouter-sim/

import assert from 'node:assert/strict'
import { CATALOG } from './catalog.ts'
import { FAULT_TOKENS } from './chat.ts'
import {
  createSimulator,
  type RunningSimulator,
  type StartOptions,
  startSimulator,
} from './server.ts'
import { costUsd } from './billing.ts'
import { completionText, completionTokens, promptTokens, tokenText } from './tokens.ts'

const KEY = 'sk-or-v1-test-0123456789'
const AUTH = { authorization: `Bearer ${KEY}` }
const MESSAGES = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Say something, please. Ünïcödé counts in bytes: 😀' },
]
// By hand (README, "Token counting"): 3 priming + system 4 + (You 1, ' are' 1, ' terse' 2, '.' 1)
// + user 4 + (Say 1, ' something' 3, ',' 1, ' please' 2, '.' 1, ' ' 1, Ü 2, 'n' 1, ï 2, 'c' 1,
// ö 2, 'd' 1, é 2, ' counts' 2, ' in' 1, ' bytes' 2, ':' 1, ' ' 1, 😀 4).
const MESSAGES_PROMPT = 3 + 4 + 5 + 4 + 31

async function withSim(
  opts: StartOptions,
  fn: (sim: RunningSimulator) => Promise<void>,
): Promise<void> {
  const sim = await startSimulator(opts)
  try {
    await fn(sim)
  } finally {
    await sim.close()
  }
}

function chat(
  sim: RunningSimulator,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<Response> {
  return fetch(`${sim.baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { ...AUTH, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  })
}

async function expectError(res: Response, code: number, message?: string): Promise<void> {
  assert.equal(res.status, code)
  assert.match(res.headers.get('content-type')!, /application\/json/)
  const body = await res.json()
  assert.equal(body.error.code, code)
  assert.equal(typeof body.error.message, 'string')
  if (message !== undefined) assert.equal(body.error.message, message)
}

/** Reads a body to the end, returning what arrived and the read error, if any. */
async function readAll(res: Response): Promise<{ text: string; error?: unknown }> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
  let text = ''
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return { text }
      text += value
    }
  } catch (error) {
    return { text, error }
  }
}

/** SSE events of a stream body: comments (without ':') and data payloads, in order. */
function sseEvents(text: string): { comment?: string; data?: string }[] {
  return text.split('\n\n').filter((e) => e !== '').map((e) =>
    e.startsWith(':') ? { comment: e.slice(1).trim() } : { data: e.replace(/^data: /, '') }
  )
}

async function stats(sim: RunningSimulator, query = ''): Promise<any> {
  return await (await fetch(`${sim.url}/__sim/stats${query}`)).json()
}

async function generationStat(sim: RunningSimulator, id: string): Promise<any> {
  return (await stats(sim)).generations.find((g: any) => g.id === id)
}

async function configure(sim: RunningSimulator, patch: unknown): Promise<Response> {
  return await fetch(`${sim.url}/__sim/config`, { method: 'POST', body: JSON.stringify(patch) })
}

/** Polls `probe` until it returns a value (bounded, so a bug fails instead of hanging). */
async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 300; i++) {
    const value = await probe()
    if (value !== undefined) return value
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** The usage of a plain request (no cache, reasoning or web search) on `model`. */
function expectedUsage(model: string, body: any, completion: number) {
  const prompt = promptTokens(body)
  const price = CATALOG.find((m) => m.id === model.replace(/[:~].*$/, ''))!.pricing
  const free = model.includes(':free')
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    cost: Number(costUsd(model, { prompt, completion })),
    is_byok: false,
    prompt_tokens_details: {
      cached_tokens: 0,
      ...(price.input_cache_write && !free ? { cache_write_tokens: 0 } : {}),
      audio_tokens: 0,
    },
    cost_details: {
      upstream_inference_cost: null,
      upstream_inference_prompt_cost: free ? 0 : Number(costUsd(model, { prompt, completion: 0 })),
      upstream_inference_completions_cost: free
        ? 0
        : Number(costUsd(model, { prompt: 0, completion })),
    },
    completion_tokens_details: { reasoning_tokens: 0 },
  }
}

Deno.test('completion length, its cap, the generated text and the test messages', () => {
  assert.equal(promptTokens({ messages: MESSAGES }), MESSAGES_PROMPT)
  assert.equal(completionTokens({ model: 'openai/gpt-4o-mini' }), 16)
  assert.equal(completionTokens({ model: 'openai/gpt-4o-mini' }, 7), 7)
  assert.equal(completionTokens({ model: 'openai/gpt-4o-mini~len-40' }), 40)
  assert.equal(completionTokens({ model: 'openai/gpt-4o-mini~len-40', max_tokens: 10 }), 10)
  assert.equal(
    completionTokens({ model: 'x~len-40', max_tokens: 10, max_completion_tokens: 5 }),
    5,
  )

  assert.equal(completionText(3), 'lorem ipsum dolor ')
  assert.equal(completionText(0), '')
  const long = completionText(200)
  assert.equal(long.split(' ').length - 1, 200)
  assert.equal(long, Array.from({ length: 200 }, (_, i) => tokenText(i)).join(''))
})

Deno.test('catalog has OpenRouter /models shape and realistic coverage', () => {
  assert.ok(CATALOG.length >= 30)
  const ids = CATALOG.map((m) => m.id)
  assert.ok(ids.includes('deepseek/deepseek-r1-0528'))
  assert.ok(ids.includes('openai/gpt-4o-mini'))
  assert.equal(new Set(ids).size, ids.length)
  const authors = new Set(ids.map((id) => id.split('/')[0]))
  for (const a of ['openai', 'anthropic', 'google', 'meta-llama', 'mistralai', 'deepseek']) {
    assert.ok(authors.has(a), a)
  }
  for (const a of ['qwen', 'x-ai', 'cohere']) assert.ok(authors.has(a), a)
  for (const m of CATALOG) {
    assert.deepEqual(Object.keys(m).filter((k) => k !== 'reasoning'), [
      'id',
      'canonical_slug',
      'name',
      'created',
      'description',
      'context_length',
      'architecture',
      'pricing',
      'top_provider',
      'per_request_limits',
      'supported_parameters',
      'default_parameters',
      'supported_voices',
      'links',
    ])
    if (m.id === 'openrouter/auto') {
      assert.deepEqual(m.pricing, { prompt: '-1', completion: '-1' }) // as OpenRouter lists it
      continue
    }
    for (
      const k of ['prompt', 'completion', 'request', 'image', 'web_search', 'internal_reasoning']
    ) {
      assert.equal(typeof (m.pricing as any)[k], 'string', `${m.id} pricing.${k}`)
    }
    for (const [k, v] of Object.entries(m.pricing)) {
      if (k !== 'overrides') assert.match(v as string, /^\d+(\.\d+)?$/, `${m.id} pricing.${k}`)
    }
    const free = m.id.endsWith(':free')
    assert.equal(Number(m.pricing.prompt) === 0, free, m.id)
    if (!free) assert.ok(Number(m.pricing.prompt) < 0.0001, m.id)
  }
  const mini = CATALOG.find((m) => m.id === 'openai/gpt-4o-mini')!
  assert.equal(mini.pricing.prompt, '0.00000015')
  assert.equal(mini.pricing.completion, '0.0000006')
  assert.equal(mini.pricing.input_cache_read, '0.000000075') // OpenAI reads at 0.5×
  const sonnet = CATALOG.find((m) => m.id === 'anthropic/claude-sonnet-4')!
  assert.equal(sonnet.pricing.input_cache_write, '0.00000375') // Anthropic writes at 1.25×
  assert.equal(sonnet.pricing.input_cache_write_1h, '0.000006') // and 2× for an hour
  assert.equal(
    CATALOG.find((m) => m.id === 'anthropic/claude-opus-4')!.pricing.completion,
    '0.000075',
  )
  assert.equal(CATALOG.find((m) => m.id === 'perplexity/sonar')!.pricing.request, '0.005')
  assert.ok(ids.filter((id) => id.endsWith(':free')).length >= 3)
})

Deno.test('GET /models serves the catalog without auth and ignores ?category', async () => {
  await withSim({}, async (sim) => {
    const res = await fetch(`${sim.baseUrl}/models`)
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type')!, /application\/json/)
    const all = { data: CATALOG, links: { next: null }, total_count: CATALOG.length }
    assert.deepEqual(await res.json(), all)
    const filtered = await fetch(`${sim.baseUrl}/models?category=programming`)
    assert.deepEqual(await filtered.json(), all)
  })
})

Deno.test('/models fault via /__sim/config and via option', async () => {
  await withSim({}, async (sim) => {
    const set = await configure(sim, { models_fault: 503 })
    assert.equal((await set.json()).models_fault, 503)
    await expectError(await fetch(`${sim.baseUrl}/models`), 503)
    await configure(sim, { models_fault: null })
    assert.equal(
      (await fetch(`${sim.baseUrl}/models`).then((r) => r.json())).data.length,
      CATALOG.length,
    )
  })
  await withSim({ modelsFault: 502 }, async (sim) => {
    await expectError(await fetch(`${sim.baseUrl}/models`), 502)
  })
})

Deno.test('chat requires a non-empty bearer, and the configured key when set', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini', messages: MESSAGES }
    await expectError(await chat(sim, body, { authorization: '' }), 401)
    await expectError(await chat(sim, body, { authorization: 'Bearer ' }), 401)
    await expectError(await chat(sim, body, { authorization: 'Basic abc' }), 401)
    const ok = await chat(sim, body, { authorization: 'Bearer anything' })
    assert.equal(ok.status, 200)
    await ok.body!.cancel()
  })
  await withSim({ apiKey: KEY }, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini', messages: MESSAGES }
    await expectError(await chat(sim, body, { authorization: 'Bearer wrong' }), 401)
    const ok = await chat(sim, body)
    assert.equal(ok.status, 200)
    await ok.body!.cancel()
  })
})

Deno.test('chat validates the body, model id, suffixes and X-Sim-Fault', async () => {
  await withSim({}, async (sim) => {
    await expectError(await chat(sim, '{not json'), 400)
    await expectError(await chat(sim, { messages: MESSAGES }), 400)
    await expectError(
      await chat(sim, { model: 'nope/model', messages: MESSAGES }),
      400,
      'nope/model is not a valid model ID',
    )
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini~bogus', messages: MESSAGES }),
      400,
      'openai/gpt-4o-mini~bogus is not a valid model ID',
    )
    await expectError(await chat(sim, { model: 'openai/gpt-4o-mini~fault-418', messages: [] }), 400)
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini:turbo', messages: MESSAGES }),
      400,
    )
    await expectError(await chat(sim, { model: 'openai/gpt-4o-mini', messages: [] }), 400)
    await expectError(await chat(sim, { model: 'openai/gpt-4o-mini' }), 400)
    // Messages OpenRouter rejects: no role, an unknown role, content of the wrong type.
    for (const bad of [[{ content: 'hi' }], [{ role: 'robot', content: 'hi' }], [null]]) {
      await expectError(await chat(sim, { model: 'openai/gpt-4o-mini', messages: bad }), 400)
    }
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 7 }] }),
      400,
    )
    await expectError(await chat(sim, [1, 2]), 400, 'Invalid JSON body')
    // Billed parts OpenRouter's schema rejects are refused, not billed.
    const user = [{ role: 'user', content: 'hi' }]
    for (
      const extra of [
        { tools: [[1]] },
        { tools: [{ type: 'function' }] },
        { tools: { type: 'function', function: { name: 'f' } } },
        { functions: [{ parameters: {} }] },
        { response_format: 'json' },
        { messages: [{ role: 'user', content: ['hi'] }] },
        { messages: [{ role: 'user', content: [{ text: 'hi' }] }] },
      ]
    ) {
      await expectError(
        await chat(sim, { model: 'openai/gpt-4o-mini', messages: user, ...extra }),
        400,
      )
    }
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini', messages: MESSAGES }, { 'x-sim-fault': 'x' }),
      400,
    )
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini', messages: MESSAGES }, { 'x-sim-route': 'x' }),
      400,
    )
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o-mini~route-random', messages: MESSAGES }),
      400,
    )
    assert.equal((await stats(sim)).generations_count, 0)
  })
})

Deno.test('a tool schema nested 100,000 deep is billed a token a bracket, never a 500', async () => {
  await withSim({}, async (sim) => {
    const deep = '['.repeat(100_000) + ']'.repeat(100_000)
    for (const model of ['openai/gpt-4o-mini~len-3', 'anthropic/claude-sonnet-4~len-3']) {
      const res = await chat(
        sim,
        `{"model":"${model}","cache_control":{"type":"ephemeral"},` +
          `"messages":[{"role":"user","content":"x"}],` +
          `"tools":[{"type":"function","function":{"name":"f","parameters":${deep}}}]}`,
      )
      assert.equal(res.status, 200)
      // 3 + 4 + 1 for the message; the tool: 8 + '{"name":"f","parameters":' (10 punctuation,
      // name, f, parameters 3) + 200,000 brackets + '}'.
      assert.equal((await res.json()).usage.prompt_tokens, 8 + 8 + 15 + 200_000 + 1)
    }
  })
})

Deno.test('non-streamed completion: OpenRouter shape, usage and cost from the token functions', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'deepseek/deepseek-chat-v3-0324', messages: MESSAGES }
    const before = Math.floor(Date.now() / 1000)
    const res = await chat(sim, body)
    const after = Math.ceil(Date.now() / 1000)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-type'), 'application/json')
    const doc = await res.json()
    assert.match(doc.id, /^gen-\d{10}-[a-z0-9]{20}$/)
    assert.equal(res.headers.get('x-generation-id'), doc.id)
    // `created` is the request's own time (unix seconds), not a stale or made-up one.
    assert.ok(
      before <= doc.created && doc.created <= after,
      `${before} ≤ ${doc.created} ≤ ${after}`,
    )
    assert.deepEqual(doc, {
      id: doc.id,
      provider: 'DeepSeek',
      model: 'deepseek/deepseek-chat-v3-0324',
      object: 'chat.completion',
      created: doc.created,
      system_fingerprint: null,
      choices: [{
        logprobs: null,
        finish_reason: 'stop',
        native_finish_reason: 'stop',
        index: 0,
        message: { role: 'assistant', content: completionText(16), refusal: null, reasoning: null },
      }],
      usage: expectedUsage(body.model, body, 16),
    })
    // The content can be re-counted: one space per token.
    assert.equal(doc.choices[0].message.content.split(' ').length - 1, 16)
  })
})

Deno.test('max_tokens / max_completion_tokens cap generation with finish_reason "length"', async () => {
  await withSim({}, async (sim) => {
    const cases: [any, number, string][] = [
      [{ model: 'openai/gpt-4o-mini', max_tokens: 5 }, 5, 'length'],
      [
        { model: 'openai/gpt-4o-mini~len-200', max_completion_tokens: 50, max_tokens: 99 },
        50,
        'length',
      ],
      [{ model: 'openai/gpt-4o-mini~len-200' }, 200, 'stop'],
      [{ model: 'openai/gpt-4o-mini~len-8', max_tokens: 8 }, 8, 'stop'],
    ]
    for (const [partial, tokens, finish] of cases) {
      const body = { ...partial, messages: MESSAGES }
      assert.equal(completionTokens(body), tokens)
      const doc = await (await chat(sim, body)).json()
      assert.equal(doc.usage.completion_tokens, tokens)
      assert.equal(doc.choices[0].finish_reason, finish)
      assert.equal(doc.choices[0].message.content, completionText(tokens))
      assert.equal(doc.model, 'openai/gpt-4o-mini') // suffixes are not echoed
    }
  })
})

Deno.test('variants resolve to their model; :free only where the catalog lists it', async () => {
  await withSim({}, async (sim) => {
    for (const variant of ['', ':nitro', ':floor', ':exacto', ':free', ':free:nitro']) {
      const body = { model: `meta-llama/llama-3.3-70b-instruct${variant}`, messages: MESSAGES }
      const doc = await (await chat(sim, body)).json()
      assert.equal(doc.model, body.model)
      assert.deepEqual(doc.usage, expectedUsage(body.model, body, 16))
      assert.equal(doc.usage.cost === 0, variant.startsWith(':free'))
    }
    // No `openai/gpt-4o:free` in the catalog: OpenRouter refuses it, it is never priced at zero.
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o:free', messages: MESSAGES }),
      400,
      'openai/gpt-4o:free is not a valid model ID',
    )
    await expectError(
      await chat(sim, { model: 'openai/gpt-4o:nitro:turbo', messages: MESSAGES }),
      400,
    )
  })
})

Deno.test('completion_tokens default is configurable', async () => {
  await withSim({ completionTokens: 4 }, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini', messages: MESSAGES }
    assert.equal((await (await chat(sim, body)).json()).usage.completion_tokens, 4)
    await configure(sim, { completion_tokens: 9 })
    const doc = await (await chat(sim, body)).json()
    assert.equal(doc.usage.completion_tokens, completionTokens(body, 9))
    assert.equal(doc.choices[0].finish_reason, 'stop')
  })
})

Deno.test('streamed completion: processing comment, one chunk per token, finish, usage, [DONE]', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini~len-5', messages: MESSAGES, stream: true }
    const res = await chat(sim, body)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-type'), 'text/event-stream')
    const id = res.headers.get('x-generation-id')!
    const { text, error } = await readAll(res)
    assert.equal(error, undefined)
    const events = sseEvents(text)
    assert.deepEqual(events[0], { comment: 'OPENROUTER PROCESSING' })
    const chunks = events.slice(1, -1).map((e) => JSON.parse(e.data!))
    assert.deepEqual(events.at(-1), { data: '[DONE]' })
    assert.equal(chunks.length, 5 + 2)
    const head = {
      id,
      provider: 'OpenAI',
      model: 'openai/gpt-4o-mini',
      object: 'chat.completion.chunk',
      created: chunks[0].created,
    }
    chunks.slice(0, 5).forEach((chunk, i) =>
      assert.deepEqual(chunk, {
        ...head,
        choices: [{
          index: 0,
          delta: { role: 'assistant', content: tokenText(i) },
          finish_reason: null,
          native_finish_reason: null,
          logprobs: null,
        }],
      })
    )
    assert.deepEqual(chunks[5], {
      ...head,
      choices: [{
        index: 0,
        delta: { role: 'assistant', content: '' },
        finish_reason: 'stop',
        native_finish_reason: 'stop',
        logprobs: null,
      }],
    })
    assert.deepEqual(chunks[6], { ...head, choices: [], usage: expectedUsage(body.model, body, 5) })
    const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')
    assert.equal(content, completionText(5))
  })
})

Deno.test('streamed completion cut by max_tokens ends with finish_reason "length"', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini', messages: MESSAGES, stream: true, max_tokens: 3 }
    const events = sseEvents((await readAll(await chat(sim, body))).text)
    const chunks = events.filter((e) => e.data && e.data !== '[DONE]').map((e) =>
      JSON.parse(e.data!)
    )
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'length')
    assert.equal(chunks.at(-1).usage.completion_tokens, 3)
  })
})

Deno.test('client abort mid-stream stops generation and records it as cancelled', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini~len-1000~delay-20', messages: MESSAGES, stream: true }
    const abort = new AbortController()
    const res = await chat(sim, body, {}, abort.signal)
    const id = res.headers.get('x-generation-id')!
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    let seen = ''
    while ((seen.match(/"content":"\w+ "/g) ?? []).length < 3) seen += (await reader.read()).value
    abort.abort()
    await reader.read().catch(() => {})

    const g = await until('the cancelled generation', async () => {
      const g = await generationStat(sim, id)
      return g.ended ? g : undefined
    })
    assert.equal(g.cancelled, true)
    assert.equal(g.stream, true)
    assert.equal(g.finish_reason, null)
    assert.ok(g.completion_tokens >= 3 && g.completion_tokens < 1000, String(g.completion_tokens))
    const cost = costUsd(body.model, { prompt: MESSAGES_PROMPT, completion: g.completion_tokens })
    assert.equal(g.total_cost, Number(cost))
    assert.equal(g.cost, cost)
  })
})

Deno.test('/generation: auth, 404 until the stats delay has passed, then the OpenRouter shape', async () => {
  await withSim({ generationDelayMs: 60_000 }, async (sim) => {
    const body = { model: 'anthropic/claude-sonnet-4~len-7', messages: MESSAGES }
    const before = Date.now()
    const res = await chat(sim, body, { 'http-referer': 'https://app.example', 'x-title': 'App' })
    const id = (await res.json()).id
    const after = Date.now()
    const get = (q: string, headers: HeadersInit = AUTH) =>
      fetch(`${sim.baseUrl}/generation${q}`, { headers })

    await expectError(await get(`?id=${id}`, {}), 401)
    await expectError(await get(''), 400)
    await expectError(await get('?id=gen-0-unknown'), 404, 'Generation not found')
    await expectError(await get(`?id=${id}`), 404, 'Generation not found') // not yet

    await configure(sim, { generation_delay_ms: 0 })
    const doc = await (await get(`?id=${id}`)).json()
    // 47 × $3/M + 7 × $15/M
    const cost = 0.000246
    assert.equal(doc.data.total_cost, cost)
    assert.ok(doc.data.latency >= 0 && doc.data.generation_time >= doc.data.latency - 1)
    const createdAt = Date.parse(doc.data.created_at)
    assert.ok(before <= createdAt && createdAt <= after, doc.data.created_at)
    assert.deepEqual(doc, {
      data: {
        id,
        upstream_id: `chatcmpl-${id.slice(4)}`,
        total_cost: cost,
        cache_discount: null,
        upstream_inference_cost: null,
        created_at: doc.data.created_at,
        model: 'anthropic/claude-sonnet-4',
        app_id: null,
        streamed: false,
        cancelled: false,
        provider_name: 'Anthropic',
        latency: doc.data.latency,
        moderation_latency: null,
        generation_time: doc.data.generation_time,
        finish_reason: 'stop',
        native_finish_reason: 'stop',
        service_tier: null,
        tokens_prompt: MESSAGES_PROMPT,
        tokens_completion: 7,
        native_tokens_prompt: MESSAGES_PROMPT,
        native_tokens_completion: 7,
        native_tokens_completion_images: 0,
        native_tokens_reasoning: 0,
        native_tokens_cached: 0,
        num_media_prompt: 0,
        num_input_audio_prompt: 0,
        num_media_completion: 0,
        num_search_results: 0,
        num_fetches: 0,
        web_search_engine: null,
        origin: 'https://app.example',
        usage: cost,
        is_byok: false,
        external_user: null,
        api_type: 'completions',
        preset_id: null,
        router: null,
        provider_responses: null,
        user_agent: doc.data.user_agent,
        http_referer: 'https://app.example',
        data_region: 'global',
        workspace_id: null,
      },
    })
    assert.match(doc.data.user_agent, /Deno/)
  })
})

Deno.test('/generation appears once the default-style delay elapses after the stream ends', async () => {
  await withSim({ generationDelayMs: 50 }, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini~len-2', messages: MESSAGES, stream: true }
    const res = await chat(sim, body)
    const id = res.headers.get('x-generation-id')!
    await readAll(res)
    const url = `${sim.baseUrl}/generation?id=${id}`
    const doc = await until('generation stats', async () => {
      const r = await fetch(url, { headers: AUTH })
      return r.status === 200 ? await r.json() : void await r.body?.cancel()
    })
    assert.equal(doc.data.streamed, true)
    assert.equal(doc.data.tokens_completion, 2)
  })
})

Deno.test('status faults via X-Sim-Fault header and ~fault- suffix', async () => {
  await withSim({}, async (sim) => {
    for (const mode of ['401', '402', '429', '502', '503']) {
      const viaHeader = await chat(
        sim,
        { model: 'openai/gpt-4o-mini', messages: MESSAGES },
        { 'x-sim-fault': mode },
      )
      const viaSuffix = await chat(sim, {
        model: `openai/gpt-4o-mini~fault-${mode}`,
        messages: MESSAGES,
      })
      for (const res of [viaHeader, viaSuffix]) {
        assert.equal(res.headers.get('x-generation-id'), null)
        assert.equal(res.headers.get('retry-after'), mode === '429' ? '2' : null)
        await expectError(res, Number(mode))
      }
    }
    const res = await chat(sim, { model: 'openai/gpt-4o-mini~fault-402', messages: MESSAGES })
    assert.match((await res.json()).error.message, /^Insufficient credits/)
    const retry = await chat(sim, { model: 'openai/gpt-4o-mini~fault-429-7', messages: MESSAGES })
    assert.equal(retry.headers.get('retry-after'), '7')
    await retry.body!.cancel()

    const s = await stats(sim)
    assert.equal(s.generations_count, 0)
    assert.deepEqual(s.chat_by_status, { 401: 2, 402: 3, 429: 3, 502: 2, 503: 2 })
  })
})

Deno.test('slow delays the response headers (suffix, header, and composed with a fault)', async () => {
  await withSim({}, async (sim) => {
    let t0 = performance.now()
    const res = await chat(sim, { model: 'openai/gpt-4o-mini~slow-300', messages: MESSAGES })
    assert.ok(performance.now() - t0 >= 290) // coarse lower bound only
    assert.equal(res.status, 200)
    assert.equal((await res.json()).usage.completion_tokens, 16)

    t0 = performance.now()
    const streamed = await chat(
      sim,
      { model: 'openai/gpt-4o-mini~len-2', messages: MESSAGES, stream: true },
      { 'x-sim-fault': 'slow-200' },
    )
    assert.ok(performance.now() - t0 >= 190)
    assert.match((await readAll(streamed)).text, /data: \[DONE\]/)

    t0 = performance.now()
    const failed = await chat(sim, {
      model: 'openai/gpt-4o-mini~slow-100~fault-502',
      messages: MESSAGES,
    })
    assert.ok(performance.now() - t0 >= 90)
    await expectError(failed, 502)

    const first = (await stats(sim)).generations[0]
    assert.equal((await generationStat(sim, first.id)).fault, 'slow')
    assert.ok(first.held_ms >= 290, 'stats say how long the headers were held')
  })
})

Deno.test('default slow (5 s) can be abandoned by the client: counted as 499, no generation', async () => {
  await withSim({}, async (sim) => {
    const req = chat(
      sim,
      { model: 'openai/gpt-4o-mini~fault-slow', messages: MESSAGES },
      {},
      AbortSignal.timeout(100),
    )
    await assert.rejects(req)
    await until('the abandoned request to be counted', async () => {
      const s = await stats(sim)
      return s.chat_by_status['499'] === 1 ? s : undefined
    })
    assert.equal((await stats(sim)).generations_count, 0)
  })
})

Deno.test('stream-error: a few chunks, then the mid-stream error event, no [DONE]', async () => {
  await withSim({}, async (sim) => {
    for (
      const [model, headers] of [
        ['openai/gpt-4o-mini~len-10~fault-stream-error', {}],
        ['openai/gpt-4o-mini~len-10', { 'x-sim-fault': 'stream-error' }],
      ] as const
    ) {
      const body = { model, messages: MESSAGES, stream: true }
      const res = await chat(sim, body, headers)
      assert.equal(res.status, 200)
      const id = res.headers.get('x-generation-id')!
      const { text, error } = await readAll(res)
      assert.equal(error, undefined)
      const events = sseEvents(text)
      assert.deepEqual(events[0], { comment: 'OPENROUTER PROCESSING' })
      const chunks = events.slice(1).map((e) => JSON.parse(e.data!))
      assert.equal(chunks.length, FAULT_TOKENS + 1)
      assert.deepEqual(chunks.at(-1), {
        id,
        provider: 'OpenAI',
        model: 'openai/gpt-4o-mini',
        object: 'chat.completion.chunk',
        created: chunks[0].created,
        error: { code: 502, message: 'Provider returned error' },
        choices: [{
          index: 0,
          delta: { content: '' },
          finish_reason: 'error',
          native_finish_reason: null,
        }],
      })
      const g = await generationStat(sim, id)
      assert.deepEqual(
        [g.completion_tokens, g.fault, g.finish_reason, g.cancelled],
        [FAULT_TOKENS, 'stream-error', 'error', false],
      )
      assert.equal(g.total_cost, Number(costUsd(model, { prompt: MESSAGES_PROMPT, completion: 3 })))
    }
    // Fewer tokens than FAULT_TOKENS: all of them, then the error.
    const short = await chat(sim, {
      model: 'openai/gpt-4o-mini~len-1~fault-stream-error',
      messages: MESSAGES,
      stream: true,
    })
    assert.equal(sseEvents((await readAll(short)).text).length, 1 + 1 + 1)
  })
})

Deno.test('stream-error without streaming: HTTP 200 carrying the OpenRouter error', async () => {
  await withSim({}, async (sim) => {
    const res = await chat(sim, {
      model: 'openai/gpt-4o-mini~fault-stream-error',
      messages: MESSAGES,
    })
    assert.equal(res.status, 200)
    const id = res.headers.get('x-generation-id')!
    assert.deepEqual(await res.json(), { error: { code: 502, message: 'Provider returned error' } })
    assert.equal((await generationStat(sim, id)).completion_tokens, FAULT_TOKENS)
  })
})

Deno.test('stream-cut: chunks, then the connection drops with no usage and no [DONE]', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini~fault-stream-cut', messages: MESSAGES, stream: true }
    const res = await chat(sim, body)
    assert.equal(res.status, 200)
    const id = res.headers.get('x-generation-id')!
    const { text, error } = await readAll(res)
    assert.ok(error instanceof TypeError, 'the body read fails')
    assert.ok(!text.includes('[DONE]') && !text.includes('"usage"'))
    assert.equal(sseEvents(text).filter((e) => e.data).length, FAULT_TOKENS)
    const g = await generationStat(sim, id)
    assert.deepEqual(
      [g.completion_tokens, g.fault, g.finish_reason, g.cancelled],
      [FAULT_TOKENS, 'stream-cut', 'error', false],
    )

    const plain = await chat(sim, { model: 'openai/gpt-4o-mini', messages: MESSAGES }, {
      'x-sim-fault': 'stream-cut',
    })
    assert.equal(plain.status, 200)
    assert.ok((await readAll(plain)).error instanceof TypeError)
  })
})

Deno.test('malformed: 200 JSON that does not parse; for streams a garbage data line', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini~fault-malformed', messages: MESSAGES }
    const res = await chat(sim, body)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-type'), 'application/json')
    const id = res.headers.get('x-generation-id')!
    const text = await res.text()
    assert.ok(text.startsWith('{'))
    assert.throws(() => JSON.parse(text))
    assert.equal((await generationStat(sim, id)).completion_tokens, 16) // generated in full

    const streamed = await chat(sim, { ...body, stream: true })
    const { text: sse, error } = await readAll(streamed)
    assert.equal(error, undefined)
    const data = sseEvents(sse).filter((e) => e.data).map((e) => e.data!)
    assert.equal(data.length, FAULT_TOKENS + 1)
    data.slice(0, -1).forEach((d) => JSON.parse(d))
    assert.throws(() => JSON.parse(data.at(-1)!))
    assert.ok(!sse.includes('[DONE]'))
  })
})

Deno.test('stats count requests, record bodies and masked headers; reset clears', async () => {
  await withSim({}, async (sim) => {
    const body = { model: 'openai/gpt-4o-mini', messages: MESSAGES, max_tokens: 3 }
    await (await chat(sim, body, { 'http-referer': 'https://app.example', 'x-title': 'My App' }))
      .json()
    await (await chat(sim, { model: 'nope' })).body!.cancel()
    await (await fetch(`${sim.baseUrl}/models`)).body!.cancel()
    await (await fetch(`${sim.baseUrl}/generation?id=x`, { headers: AUTH })).body!.cancel()
    await expectError(await fetch(`${sim.url}/nowhere`), 404, 'Not Found')
    await expectError(await fetch(`${sim.baseUrl}/chat/completions`), 404) // wrong method

    const s = await stats(sim)
    assert.deepEqual(s.requests, { total: 6, chat: 2, models: 1, generation: 1, other: 2 })
    assert.deepEqual(s.chat_by_status, { 200: 1, 400: 1 })
    assert.equal(s.generations_count, 1)
    assert.deepEqual(s.generations[0], {
      id: s.generations[0].id,
      model: 'openai/gpt-4o-mini',
      stream: false,
      router: null,
      prompt_tokens: MESSAGES_PROMPT,
      completion_tokens: 3,
      reasoning_tokens: 0,
      cached_tokens: 0,
      cache_write_tokens: 0,
      web_search_requests: 0,
      cancelled: false,
      fault: null,
      // 47 × $0.15/M + 3 × $0.6/M
      total_cost: 0.00000885,
      cost: '0.00000885',
      finish_reason: 'length',
      ended: true,
      held_ms: s.generations[0].held_ms,
    })
    assert.ok(s.generations[0].held_ms >= 0 && s.generations[0].held_ms < 1_000)
    assert.deepEqual(s.received[0], {
      body,
      headers: {
        authorization: 'Bearer ****6789',
        'http-referer': 'https://app.example',
        'x-title': 'My App',
      },
    })
    assert.deepEqual(s.received[1].body, { model: 'nope' })

    const summary = await stats(sim, '?summary=1')
    assert.equal(summary.generations, undefined)
    assert.equal(summary.received, undefined)
    assert.deepEqual(summary.requests, s.requests) // reading stats is not counted

    assert.deepEqual(await (await fetch(`${sim.url}/__sim/reset`, { method: 'POST' })).json(), {
      ok: true,
    })
    const cleared = await stats(sim)
    assert.deepEqual(cleared.requests, { total: 0, chat: 0, models: 0, generation: 0, other: 0 })
    assert.deepEqual([cleared.generations, cleared.received, cleared.chat_by_status], [[], [], {}])
  })
})

Deno.test('received keeps the last 100 chat bodies; generations are bounded', async () => {
  await withSim({ maxGenerations: 3 }, async (sim) => {
    for (let i = 0; i < 105; i++) {
      await (await chat(sim, { model: `nope-${i}`, messages: MESSAGES })).body!.cancel()
    }
    const received = (await stats(sim)).received
    assert.equal(received.length, 100)
    assert.equal(received[0].body.model, 'nope-5')
    assert.equal(received[99].body.model, 'nope-104')

    const ids = []
    for (let i = 0; i < 5; i++) {
      ids.push(
        (await (await chat(sim, { model: 'openai/gpt-4o-mini', messages: MESSAGES })).json()).id,
      )
    }
    const s = await stats(sim, '?summary=1')
    assert.deepEqual([s.generations_count, s.generations_dropped], [3, 2])
    assert.deepEqual((await stats(sim)).generations.map((g: any) => g.id), ids.slice(2))
    await configure(sim, { generation_delay_ms: 0 })
    const dropped = await fetch(`${sim.baseUrl}/generation?id=${ids[0]}`, { headers: AUTH })
    await expectError(dropped, 404)
  })
})

Deno.test('/__sim/config reads, validates and applies settings', async () => {
  await withSim({}, async (sim) => {
    assert.deepEqual(await (await fetch(`${sim.url}/__sim/config`)).json(), {
      generation_delay_ms: 500,
      models_fault: null,
      completion_tokens: 16,
      reasoning_tokens: 16,
    })
    await expectError(await configure(sim, { generation_delay_ms: -1 }), 400)
    await expectError(await configure(sim, { reasoning_tokens: -2 }), 400)
    await expectError(await configure(sim, { models_fault: 200 }), 400)
    await expectError(await configure(sim, { completion_tokens: 1.5 }), 400)
    await expectError(await configure(sim, [1]), 400)
    const res = await configure(sim, { generation_delay_ms: 5, models_fault: 0 })
    assert.deepEqual(await res.json(), {
      generation_delay_ms: 5,
      models_fault: null,
      completion_tokens: 16,
      reasoning_tokens: 16,
    })
    await expectError(await fetch(`${sim.url}/__sim/nothing`), 404)
  })
  assert.throws(() => createSimulator({ modelsFault: 42 }), RangeError)
})

Deno.test('createSimulator runs in-process without a server', async () => {
  const sim = createSimulator()
  const res = await sim.handler(
    new Request('http://sim.local/api/v1/chat/completions', {
      method: 'POST',
      headers: AUTH,
      body: JSON.stringify({ model: 'qwen/qwen3-235b-a22b~len-2', messages: MESSAGES }),
    }),
  )
  assert.equal((await res.json()).choices[0].message.content, completionText(2))
  assert.deepEqual((sim.stats(true) as any).requests.chat, 1)
  sim.reset()
  assert.equal((sim.stats(true) as any).requests.total, 0)
})
