// deno-lint-ignore-file no-explicit-any -- tests inspect arbitrary JSON documents
// What the simulator bills, over real HTTP: exact usage.cost from the catalog's decimal prices,
// reasoning, prompt caching (automatic and explicit), long-context overrides, web search, free
// variants, fallback lists and openrouter/auto. Every expected figure is worked out by hand in the
// comments from the README's rules and the catalog's list prices, not by the simulator's code.
// Run: deno test --allow-net tools/openrouter-sim/billing.test.ts

import assert from 'node:assert/strict'
import { type RunningSimulator, startSimulator } from './server.ts'

const AUTH = { authorization: 'Bearer sk-or-v1-test-0123456789' }
/** 'Hi' as the one user message: 3 priming + 4 + 1 = 8 prompt tokens. */
const HI = [{ role: 'user', content: 'Hi' }]

async function withSim(fn: (sim: RunningSimulator) => Promise<void>): Promise<void> {
  const sim = await startSimulator({ generationDelayMs: 0 })
  try {
    await fn(sim)
  } finally {
    await sim.close()
  }
}

interface Reply {
  status: number
  text: string
  doc: any
}

async function chat(
  sim: RunningSimulator,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Reply> {
  const res = await fetch(`${sim.baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { ...AUTH, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  })
  const text = await res.text()
  return { status: res.status, text, doc: JSON.parse(text) }
}

async function generation(sim: RunningSimulator, id: string): Promise<any> {
  const res = await fetch(`${sim.baseUrl}/generation?id=${id}`, { headers: AUTH })
  assert.equal(res.status, 200)
  return (await res.json()).data
}

/** usage.cost as written in the response: the exact decimal, never a rounded float. */
function assertCost(r: Reply, cost: string): void {
  assert.equal(r.status, 200, r.text)
  assert.ok(r.text.includes(`"cost":${cost},`), `cost ${cost} in ${r.text.slice(-500)}`)
  assert.equal(r.doc.usage.cost, Number(cost))
}

Deno.test('usage.cost and cost_details are exact decimal sums of count × list price', async () => {
  await withSim(async (sim) => {
    // gpt-4o-mini ($0.15/M in, $0.6/M out), 'Hello, world.' = 3 + 4 + 6 = 13 tokens, 16 out:
    // 13 × 0.00000015 = 0.00000195; 16 × 0.0000006 = 0.0000096 (in floats the sum is not exact).
    const r = await chat(sim, {
      model: 'openai/gpt-4o-mini',
      messages: [{ role: 'user', content: 'Hello, world.' }],
    })
    assertCost(r, '0.00001155')
    assert.ok(r.text.includes('"upstream_inference_prompt_cost":0.00000195,'))
    assert.ok(r.text.includes('"upstream_inference_completions_cost":0.0000096}'))
    assert.deepEqual(r.doc.usage.cost_details, {
      upstream_inference_cost: null,
      upstream_inference_prompt_cost: 0.00000195,
      upstream_inference_completions_cost: 0.0000096,
    })
    assert.deepEqual(
      [r.doc.usage.prompt_tokens, r.doc.usage.completion_tokens, r.doc.usage.total_tokens],
      [13, 16, 29],
    )

    // perplexity/sonar: $1/M both ways plus $0.005 a request: 8 + 16 tokens → 0.005024.
    const sonar = await chat(sim, { model: 'perplexity/sonar', messages: HI })
    assertCost(sonar, '0.005024')
    assert.equal(sonar.doc.usage.cost_details.upstream_inference_prompt_cost, 0.000008)
    assert.equal(sonar.doc.usage.cost_details.upstream_inference_completions_cost, 0.000016)

    // The dear end: claude-opus-4 at $15/M in, $75/M out; 8 in, 1000 out = 0.00012 + 0.075.
    assertCost(
      await chat(sim, { model: 'anthropic/claude-opus-4~len-1000', messages: HI }),
      '0.07512',
    )

    // A free model costs nothing (and is listed as a model of its own).
    const free = await chat(sim, { model: 'deepseek/deepseek-r1-0528:free', messages: HI })
    assertCost(free, '0')
    assert.equal(free.doc.model, 'deepseek/deepseek-r1-0528:free')
  })
})

Deno.test('reasoning: inside completion_tokens, billed as output or at internal_reasoning', async () => {
  await withSim(async (sim) => {
    // deepseek-r1 always reasons: 16 reasoning tokens (the default) + 3 content = 19 at $2.15/M,
    // 8 in at $0.5/M: 0.000004 + 0.00004085.
    const r1 = await chat(sim, { model: 'deepseek/deepseek-r1-0528~len-3', messages: HI })
    assertCost(r1, '0.00004485')
    assert.equal(r1.doc.usage.completion_tokens, 19)
    assert.deepEqual(r1.doc.usage.completion_tokens_details, { reasoning_tokens: 16 })
    const message = r1.doc.choices[0].message
    assert.equal(message.content, 'lorem ipsum dolor ')
    assert.equal(message.reasoning, 'first then check so therefore hence thus verify '.repeat(2))

    // o3-mini reasons but never shows it: 16 + 2 = 18 at $4.4/M, 8 at $1.1/M.
    const o3 = await chat(sim, { model: 'openai/o3-mini~len-2', messages: HI })
    assertCost(o3, '0.000088')
    assert.equal(o3.doc.choices[0].message.reasoning, null)
    assert.equal(o3.doc.usage.completion_tokens_details.reasoning_tokens, 16)

    // claude-sonnet-4 reasons only when asked: by reasoning.max_tokens, `:thinking`,
    // include_reasoning; not with effort "none". `exclude` hides the text, not the tokens.
    const sonnet = async (extra: object, model = 'anthropic/claude-sonnet-4~len-2') => {
      const r = await chat(sim, { model, messages: HI, ...extra })
      return [r.doc.usage.completion_tokens, r.doc.usage.completion_tokens_details.reasoning_tokens]
    }
    assert.deepEqual(await sonnet({}), [2, 0])
    assert.deepEqual(await sonnet({ reasoning: { max_tokens: 5 } }), [7, 5])
    assert.deepEqual(await sonnet({}, 'anthropic/claude-sonnet-4:thinking~len-2'), [18, 16])
    assert.deepEqual(await sonnet({ include_reasoning: true }), [18, 16])
    assert.deepEqual(await sonnet({ reasoning: { effort: 'none' } }), [2, 0])
    assert.deepEqual(await sonnet({ reasoning: { enabled: false } }), [2, 0])
    const hidden = await chat(sim, {
      model: 'anthropic/claude-sonnet-4~len-2~reason-4',
      messages: HI,
      reasoning: { exclude: true },
    })
    assert.equal(hidden.doc.usage.completion_tokens_details.reasoning_tokens, 4)
    assert.equal(hidden.doc.choices[0].message.reasoning, null)
    // 8 × $3/M + 6 × $15/M
    assertCost(hidden, '0.000114')

    // gemini-2.5-flash-preview prices thinking apart: 4 content at $0.6/M, 10 reasoning at
    // $3.5/M, 8 in at $0.15/M: 0.0000012 + 0.0000024 + 0.000035.
    const flash = await chat(sim, {
      model: 'google/gemini-2.5-flash-preview-05-20~len-4~reason-10',
      messages: HI,
      reasoning: {},
    })
    assertCost(flash, '0.0000386')
    assert.equal(flash.doc.usage.cost_details.upstream_inference_completions_cost, 0.0000374)

    // max_tokens bounds reasoning and content together; reasoning comes first.
    const capped = async (max_tokens: number) => {
      const r = await chat(sim, {
        model: 'deepseek/deepseek-r1-0528~len-10~reason-8',
        messages: HI,
        max_tokens,
      })
      const u = r.doc.usage
      return [
        u.completion_tokens,
        u.completion_tokens_details.reasoning_tokens,
        r.doc.choices[0].finish_reason,
      ]
    }
    assert.deepEqual(await capped(12), [12, 8, 'length'])
    assert.deepEqual(await capped(5), [5, 5, 'length'])
    assert.deepEqual(await capped(18), [18, 8, 'stop'])
  })
})

Deno.test('reasoning streams first, as delta.reasoning, and is counted in the usage chunk', async () => {
  await withSim(async (sim) => {
    const res = await fetch(`${sim.baseUrl}/chat/completions`, {
      method: 'POST',
      headers: AUTH,
      body: JSON.stringify({
        model: 'deepseek/deepseek-r1-0528~len-2~reason-3',
        messages: HI,
        stream: true,
      }),
    })
    const chunks = (await res.text()).split('\n\n').filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)))
    const deltas = chunks.slice(0, 5).map((c) => c.choices[0].delta)
    assert.deepEqual(deltas, [
      { role: 'assistant', content: '', reasoning: 'first ' },
      { role: 'assistant', content: '', reasoning: 'then ' },
      { role: 'assistant', content: '', reasoning: 'check ' },
      { role: 'assistant', content: 'lorem ' },
      { role: 'assistant', content: 'ipsum ' },
    ])
    const usage = chunks.at(-1).usage
    assert.deepEqual(
      [usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens],
      [5, 3],
    )
    // 8 × $0.5/M + 5 × $2.15/M
    assert.equal(usage.cost, 0.00001475)
  })
})

// 'abcd '.repeat(1100): 1,100 words of one token and a trailing space = 1,101 tokens; as a system
// message, 1,105. A user message 'qN' is 4 + 2 = 6. The prompt: 3 + 1,105 + 6 = 1,114 tokens.
const BIG = 'abcd '.repeat(1100)
const big = (user: string, system: unknown = BIG) => [
  { role: 'system', content: system },
  { role: 'user', content: user },
]

Deno.test('automatic caching: a repeated prefix is read from cache, rounded down to 1024', async () => {
  await withSim(async (sim) => {
    const body = (user: string, model = 'openai/gpt-4o-mini~len-1') => ({
      model,
      messages: big(user),
    })
    // First sighting: 1,114 × $0.15/M + 1 × $0.6/M, nothing cached.
    const first = await chat(sim, body('q1'))
    assertCost(first, '0.0001677')
    assert.equal(first.doc.usage.prompt_tokens, 1114)
    assert.deepEqual(first.doc.usage.prompt_tokens_details, { cached_tokens: 0, audio_tokens: 0 })

    // Same system message, new question: the 1,105-token prefix is cached as 1,024 tokens, read
    // at $0.075/M: 90 × 0.00000015 + 1024 × 0.000000075 + 0.0000006.
    const second = await chat(sim, body('q2'))
    assertCost(second, '0.0000909')
    assert.equal(second.doc.usage.prompt_tokens, 1114) // cached tokens are part of the prompt
    assert.equal(second.doc.usage.prompt_tokens_details.cached_tokens, 1024)
    const g = await generation(sim, second.doc.id)
    assert.equal(g.native_tokens_cached, 1024)
    assert.equal(g.cache_discount, 0.0000768) // 1024 × (0.00000015 − 0.000000075)
    assert.equal(g.total_cost, 0.0000909)

    // Caches are per model, and a different first message shares no prefix.
    const other = await chat(sim, body('q2', 'openai/gpt-4o~len-1'))
    assert.equal(other.doc.usage.prompt_tokens_details.cached_tokens, 0)
    const changed = await chat(sim, {
      model: 'openai/gpt-4o-mini~len-1',
      messages: big('q2', BIG + 'x'),
    })
    assert.equal(changed.doc.usage.prompt_tokens_details.cached_tokens, 0)
    // A prompt under 1,024 tokens is never cached.
    await chat(sim, { model: 'openai/gpt-4o-mini', messages: HI })
    const small = await chat(sim, { model: 'openai/gpt-4o-mini', messages: HI })
    assert.equal(small.doc.usage.prompt_tokens_details.cached_tokens, 0)
    // A variant is the same model; a reset forgets.
    const nitro = await chat(sim, body('q3', 'openai/gpt-4o-mini:nitro~len-1'))
    assert.equal(nitro.doc.usage.prompt_tokens_details.cached_tokens, 1024)
    await fetch(`${sim.url}/__sim/reset`, { method: 'POST' })
    assert.equal((await chat(sim, body('q2'))).doc.usage.prompt_tokens_details.cached_tokens, 0)
  })
})

Deno.test('explicit caching: cache_control writes at 1.25× (2× for 1h), reads at 0.1×', async () => {
  await withSim(async (sim) => {
    const model = 'anthropic/claude-sonnet-4~len-1' // $3/M in, $15/M out, write $3.75/M, read $0.3/M
    const marked = (text: string, ttl?: string) => [{
      type: 'text',
      text,
      cache_control: { type: 'ephemeral', ...(ttl ? { ttl } : {}) },
    }]
    // No cache_control: Anthropic caches nothing. 1,114 × 0.000003 + 0.000015.
    const plain = await chat(sim, { model, messages: big('q1') })
    assertCost(plain, '0.003357')
    assert.deepEqual(plain.doc.usage.prompt_tokens_details, {
      cached_tokens: 0,
      cache_write_tokens: 0,
      audio_tokens: 0,
    })
    assertCost(await chat(sim, { model, messages: big('q1') }), '0.003357')

    // A breakpoint on the system text: its 1,105 tokens are written.
    // 9 × 0.000003 + 1105 × 0.00000375 + 0.000015.
    const write = await chat(sim, { model, messages: big('q1', marked(BIG)) })
    assertCost(write, '0.00418575')
    assert.equal(write.doc.usage.prompt_tokens_details.cache_write_tokens, 1105)
    assert.equal(write.doc.usage.prompt_tokens_details.cached_tokens, 0)
    assert.equal((await generation(sim, write.doc.id)).cache_discount, -0.00082875) // 1105 × −0.00000075

    // Then read: 9 × 0.000003 + 1105 × 0.0000003 + 0.000015.
    const read = await chat(sim, { model, messages: big('q2', marked(BIG)) })
    assertCost(read, '0.0003735')
    assert.equal(read.doc.usage.prompt_tokens_details.cached_tokens, 1105)
    assert.equal(read.doc.usage.prompt_tokens_details.cache_write_tokens, 0)

    // A 1-hour breakpoint writes at $6/M: 9 × 0.000003 + 1105 × 0.000006 + 0.000015.
    const hour = await chat(sim, { model, messages: big('q1', marked('wxyz '.repeat(1100), '1h')) })
    assertCost(hour, '0.006672')

    // Top-level cache_control caches up to the last message: 1,105 + 6 = 1,111 written.
    // 3 × 0.000003 + 1111 × 0.00000375 + 0.000015.
    const auto = await chat(sim, {
      model,
      messages: big('q1', 'mnop '.repeat(1100)),
      cache_control: { type: 'ephemeral' },
    })
    assertCost(auto, '0.00419025')
    assert.equal(auto.doc.usage.prompt_tokens_details.cache_write_tokens, 1111)

    // Under 1,024 tokens a breakpoint writes nothing.
    const short = await chat(sim, { model, messages: [{ role: 'user', content: marked('Hi') }] })
    assert.equal(short.doc.usage.prompt_tokens_details.cache_write_tokens, 0)
  })
})

Deno.test('long-context override prices apply above min_prompt_tokens', async () => {
  await withSim(async (sim) => {
    // gemini-2.5-pro: $1.25/M in, $10/M out; above 200,000 prompt tokens $2.5/M and $15/M. It
    // always reasons: 16 reasoning + 1 content = 17 out. 'abcd '.repeat(n) is n + 1 tokens.
    const body = (n: number) => ({
      model: 'google/gemini-2.5-pro~len-1',
      messages: [{ role: 'user', content: 'abcd '.repeat(n) }],
    })
    // 3 + 4 + 199,991 = 199,998: 199998 × 0.00000125 + 17 × 0.00001.
    assertCost(await chat(sim, body(199_990)), '0.2501675')
    // 3 + 4 + 200,001 = 200,008: 200008 × 0.0000025 + 17 × 0.000015.
    assertCost(await chat(sim, body(200_000)), '0.500275')
  })
})

Deno.test('web search: result tokens in the prompt, Exa or native fees, web_search_requests', async () => {
  await withSim(async (sim) => {
    // gpt-4o-mini:online: 5 results × 1,000 tokens + 8 = 5,008 at $0.15/M, 1 out at $0.6/M, and
    // Exa's $0.007 a search: 0.0007512 + 0.0000006 + 0.007.
    const online = await chat(sim, { model: 'openai/gpt-4o-mini:online~len-1', messages: HI })
    assertCost(online, '0.0077518')
    assert.equal(online.doc.usage.prompt_tokens, 5008)
    assert.deepEqual(online.doc.usage.server_tool_use_details, { web_search_requests: 1 })
    assert.equal(online.doc.model, 'openai/gpt-4o-mini:online')
    const g = await generation(sim, online.doc.id)
    assert.deepEqual([g.num_search_results, g.web_search_engine], [5, 'exa'])
    // The web plugin and web_search_options do the same; no search, no details.
    const viaPlugin = await chat(sim, {
      model: 'openai/gpt-4o-mini~len-1',
      messages: HI,
      plugins: [{ id: 'web' }],
    })
    assertCost(viaPlugin, '0.0077518')
    const viaOptions = await chat(sim, {
      model: 'openai/gpt-4o-mini~len-1',
      messages: HI,
      web_search_options: { search_context_size: 'low' },
    })
    assertCost(viaOptions, '0.0077518')
    const none = await chat(sim, { model: 'openai/gpt-4o-mini~len-1', messages: HI })
    assert.equal(none.doc.usage.server_tool_use_details, undefined)

    // 12 results: 12,008 tokens; Exa charges $0.001 for each result past 10.
    // 0.0018012 + 0.0000006 + 0.007 + 0.002.
    const twelve = await chat(sim, {
      model: 'openai/gpt-4o-mini~len-1',
      messages: HI,
      plugins: [{ id: 'web', max_results: 12 }],
    })
    assertCost(twelve, '0.0108018')

    // gpt-4.1 searches natively at its web_search price, $0.01: 5008 × 0.000002 + 0.000008 + 0.01;
    // with engine "exa" it pays Exa's $0.007 instead.
    assertCost(await chat(sim, { model: 'openai/gpt-4.1:online~len-1', messages: HI }), '0.020024')
    const exa = await chat(sim, {
      model: 'openai/gpt-4.1~len-1',
      messages: HI,
      plugins: [{ id: 'web', engine: 'exa' }],
    })
    assertCost(exa, '0.017024')

    // Search costs even on a free model.
    const free = await chat(sim, {
      model: 'meta-llama/llama-3.3-70b-instruct:free:online~len-1',
      messages: HI,
    })
    assertCost(free, '0.007')

    for (const max_results of [0, 1.5, '3']) {
      const bad = await chat(sim, {
        model: 'openai/gpt-4o-mini',
        messages: HI,
        plugins: [{ id: 'web', max_results }],
      })
      assert.equal(bad.status, 400)
    }
  })
})

Deno.test('images, audio and files are billed as prompt tokens and counted in /generation', async () => {
  await withSim(async (sim) => {
    const r = await chat(sim, {
      model: 'openai/gpt-4o~len-1', // $2.5/M in, $10/M out
      messages: [{
        role: 'user',
        content: [
          { type: 'text', text: 'Hi' },
          { type: 'image_url', image_url: { url: 'https://x/a.png', detail: 'low' } },
          { type: 'input_audio', input_audio: { data: 'A'.repeat(2000), format: 'wav' } },
          { type: 'file', file: { file_data: 'https://x/a.pdf' } },
        ],
      }],
    })
    // 3 + 4 + 1 + 85 + 3 + 3000 = 3,096 × 0.0000025 + 0.00001.
    assert.equal(r.doc.usage.prompt_tokens, 3096)
    assert.equal(r.doc.usage.prompt_tokens_details.audio_tokens, 3)
    assertCost(r, '0.00775')
    const g = await generation(sim, r.doc.id)
    assert.deepEqual([g.num_media_prompt, g.num_input_audio_prompt], [3, 1])
  })
})

Deno.test('fallback lists: OpenRouter order, failing candidates skipped, the served model echoed', async () => {
  await withSim(async (sim) => {
    // The first model fails (502): OpenRouter serves the next. 8 × 0.000015 + 16 × 0.000075.
    const fell = await chat(sim, {
      models: ['openai/gpt-4o-mini~fault-502', 'anthropic/claude-opus-4'],
      messages: HI,
    })
    assert.equal(fell.doc.model, 'anthropic/claude-opus-4')
    assert.equal(fell.doc.provider, 'Anthropic')
    assertCost(fell, '0.00132')

    // `model` first, then `models`: a healthy `model` serves.
    const first = await chat(sim, {
      model: 'openai/gpt-4o-mini',
      models: ['anthropic/claude-opus-4'],
      messages: HI,
    })
    assert.equal(first.doc.model, 'openai/gpt-4o-mini')

    // ~route-dearest (or X-Sim-Route) serves the candidate whose cost is highest for this request:
    // 1 token out, sonar's $0.005 request fee wins; 1,000 out, opus's $75/M wins.
    const list = ['anthropic/claude-opus-4', 'perplexity/sonar']
    const dearest = async (len: number) =>
      (await chat(sim, {
        model: `openai/gpt-4o-mini~route-dearest~len-${len}`,
        models: list,
        messages: HI,
      }))
        .doc.model
    assert.equal(await dearest(1), 'perplexity/sonar')
    assert.equal(await dearest(1000), 'anthropic/claude-opus-4')
    const cheapest = await chat(sim, {
      models: ['anthropic/claude-opus-4', 'openai/gpt-4o-mini'],
      messages: HI,
    }, {
      'x-sim-route': 'cheapest',
    })
    assert.equal(cheapest.doc.model, 'openai/gpt-4o-mini')

    // Account faults end the request; when every candidate fails, the last failure is returned.
    const paid = await chat(sim, {
      models: ['openai/gpt-4o~fault-402', 'openai/gpt-4o-mini'],
      messages: HI,
    })
    assert.equal(paid.status, 402)
    const down = await chat(sim, {
      models: ['openai/gpt-4o~fault-429', 'openai/gpt-4o-mini~fault-503'],
      messages: HI,
    })
    assert.equal(down.status, 503)
    assert.equal(down.doc.error.code, 503)

    const invalid = await chat(sim, { models: ['openai/gpt-4o-mini', 'nope/nope'], messages: HI })
    assert.deepEqual(invalid.doc, {
      error: { code: 400, message: 'nope/nope is not a valid model ID' },
    })
    assert.equal((await chat(sim, { models: 'openai/gpt-4o', messages: HI })).status, 400)
  })
})

Deno.test('openrouter/auto: the dearest catalog model for the request serves, unless told', async () => {
  await withSim(async (sim) => {
    // 1,000 tokens out: claude-opus-4 ($75/M out) is the dearest model of the catalog.
    const dear = await chat(sim, { model: 'openrouter/auto~len-1000', messages: HI })
    assert.equal(dear.doc.model, 'anthropic/claude-opus-4')
    assertCost(dear, '0.07512')
    const g = await generation(sim, dear.doc.id)
    assert.deepEqual([g.model, g.router], ['anthropic/claude-opus-4', 'openrouter/auto'])
    // The cheapest: llama-3.1-8b at $0.02/M in, $0.03/M out: 8 × 0.00000002 + 0.00000003.
    const cheap = await chat(sim, { model: 'openrouter/auto~route-cheapest~len-1', messages: HI })
    assert.equal(cheap.doc.model, 'meta-llama/llama-3.1-8b-instruct')
    assertCost(cheap, '0.00000019')
    // Never a free model.
    assert.ok(!dear.doc.model.endsWith(':free') && !cheap.doc.model.endsWith(':free'))
  })
})
