// Pricing end to end, against the stack and the tokenizer-faithful simulator (issues 11 and 14):
// a hold bounds what a hostile body costs (tools, images, fallback lists), variants cannot sidestep
// a price, and every price category is charged exactly, in flat and in cost mode. Expected credits
// come from what the simulator billed (its /__sim/stats: tokens by kind and `cost`, exact decimal)
// and the catalog's prices, by hand, never from the gateway's own code.

import assert from 'node:assert/strict'
import {
  balance,
  newAccount,
  setRateLimits,
  settled,
  type UsageRecord,
  usageRecords,
} from '../lib/accounts.ts'
import { api, chat, sseData } from '../lib/http.ts'
import { simChatCount, simStats } from '../lib/sim.ts'
import { db, test } from '../lib/stack.ts'

const USD_PER_CREDIT = '0.00002'
const UNLIMITED = {
  requests_per_minute: 100_000,
  requests_per_hour: 100_000,
  requests_per_day: 100_000,
  tokens_per_minute: 1_000_000_000,
  tokens_per_hour: 1_000_000_000,
  tokens_per_day: 1_000_000_000,
}

/** The simulator's record of a generation: tokens by kind and the exact `cost` it billed. */
// deno-lint-ignore no-explicit-any
async function billed(id: string): Promise<any> {
  // deno-lint-ignore no-explicit-any
  const g = (await simStats()).generations.find((x: any) => x.id === id)
  assert.ok(g, `the simulator has no generation ${id}`)
  return g
}

/** A decimal's text as [integer, scale]. */
function decimal(text: string): [bigint, number] {
  const [whole, fraction = ''] = text.split('.')
  return [BigInt(whole + fraction), fraction.length]
}

/** ⌈usd × (100 + markup) / (100 × usd_per_credit)⌉, exactly. */
function costCredits(usd: string, markupPercent: number): number {
  const [n, s] = decimal(usd)
  const [u, us] = decimal(USD_PER_CREDIT)
  // usd / 10^s × (100 + m) / (100 × u / 10^us) = n × (100 + m) × 10^us / (100 × u × 10^s)
  const num = n * BigInt(100 + markupPercent) * 10n ** BigInt(us)
  const den = 100n * u * 10n ** BigInt(s)
  return Number((num + den - 1n) / den)
}

/** What `credits` cost the client, as the exact decimal text a response carries. */
function usd(credits: number): string {
  const [u, us] = decimal(USD_PER_CREDIT)
  const digits = (BigInt(credits) * u).toString().padStart(us + 1, '0')
  const text = `${digits.slice(0, -us)}.${digits.slice(-us)}`.replace(/\.?0+$/, '')
  return text === '' ? '0' : text
}

/** USD as credits in flat mode: ⌈usd / usd_per_credit⌉. */
const feeCredits = (usd: string) => costCredits(usd, 0)

async function setting(name: string, value: string): Promise<string> {
  const [{ old }] = await db()`
    select to_jsonb(s) ->> ${name} as old from gateway.system_settings s where s.id`
  await db()`select gateway.set_setting(${name}, ${value})`
  return old
}

/** Runs `fn` in cost mode with `markup` percent, then puts the settings back. */
async function inCostMode(markup: number, fn: () => Promise<void>): Promise<void> {
  const mode = await setting('pricing_mode', 'cost')
  const oldMarkup = await setting('markup_percent', String(markup))
  try {
    await fn()
  } finally {
    await setting('pricing_mode', mode)
    await setting('markup_percent', oldMarkup)
  }
}

/** The catalog loaded (GET /v1/models loads it when it never was). */
async function catalogLoaded(): Promise<void> {
  const res = await api('/v1/models')
  assert.equal(res.status, 200, res.text)
}

async function richAccount(credits = 10_000_000) {
  const a = await newAccount(credits, 'pricing')
  await setRateLimits(a.userId, UNLIMITED)
  return a
}

/** The usage record of one response (by its generation id), once settled. */
async function recordOf(userId: number, generationId: string): Promise<UsageRecord> {
  for (let i = 0; i < 200; i++) {
    const r = (await usageRecords(userId)).find((u) => u.generation_id === generationId)
    if (r && (await balance(userId)).held === 0) return r
    await new Promise((ok) => setTimeout(ok, 50))
  }
  throw new Error(`no usage record for ${generationId}`)
}

const BIG = 'abcd '.repeat(1100) // > 1024 tokens: a prompt prefix providers cache
const TOOLS = Array.from({ length: 100 }, (_, i) => ({
  type: 'function',
  function: {
    name: `tool_${i}`,
    description: 'x'.repeat(3900),
    parameters: { type: 'object', properties: { a: { type: 'string' } } },
  },
}))

// Issue 11, finding 1 ------------------------------------------------------------------------------

test('20 parallel chats with 100 tools of 4 KB each from a 1,000-credit account: refused, never an overrun', async () => {
  await catalogLoaded()
  const a = await newAccount(1000, 'overrun')
  const upstream = await simChatCount()
  const bodies = [
    { tools: TOOLS },
    // Images by URL (1,105 tokens each upstream, 3,000 allowed), and a fallback list whose second
    // model is dearer than the first.
    {
      messages: [{
        role: 'user',
        content: Array.from({ length: 40 }, () => ({
          type: 'image_url',
          image_url: { url: 'https://example.com/cat.png' },
        })),
      }],
    },
    { tools: TOOLS, models: ['openai/gpt-4o-mini', 'anthropic/claude-opus-4'] },
  ]
  for (const extra of bodies) {
    const responses = await Promise.all(
      Array.from({ length: 20 }, () =>
        chat(a.key, {
          model: 'openai/gpt-4o-mini',
          messages: [{ role: 'user', content: 'hi' }],
          max_tokens: 10,
          ...extra,
        })),
    )
    for (const r of responses) {
      assert.equal(r.status, 402, r.text.slice(0, 300))
      assert.equal(r.json.error.code, 'insufficient_credits')
      assert.match(r.json.error.message, /worst case/)
    }
  }
  assert.equal(await simChatCount(), upstream, 'nothing went upstream')
  assert.deepEqual(await balance(a.userId), { balance: 1000, held: 0 })
})

test('the same bodies from an account that can pay: held in full, charged within the hold, no overrun', async () => {
  await catalogLoaded()
  const start = 5_000_000
  const a = await richAccount(start)
  const image = `data:image/png;base64,${'iVBORw0KGgo'.repeat(2000)}`
  const bodies = [
    { tools: TOOLS },
    {
      messages: [{
        role: 'user',
        content: [
          { type: 'text', text: 'hi' },
          ...Array.from({ length: 10 }, () => ({ type: 'image_url', image_url: { url: image } })),
          ...Array.from({ length: 10 }, () => ({
            type: 'image_url',
            image_url: { url: 'https://example.com/cat.png', detail: 'high' },
          })),
        ],
      }],
    },
    { tools: TOOLS, models: ['openai/gpt-4o-mini~fault-502', 'openai/gpt-4o'] },
  ]
  let n = 0
  for (const extra of bodies) {
    const responses = await Promise.all(
      Array.from({ length: 5 }, () =>
        chat(a.key, {
          model: 'openai/gpt-4o-mini~len-5',
          messages: [{ role: 'user', content: 'hi' }],
          max_tokens: 10,
          ...extra,
        })),
    )
    for (const r of responses) assert.equal(r.status, 200, r.text.slice(0, 300))
    n += responses.length
  }
  await settled(a.userId, n)
  const records = await usageRecords(a.userId)
  assert.equal(records.length, n)
  let charged = 0
  for (const u of records) {
    assert.equal(u.overrun_credits, 0, `hold ${u.hold_id} overran`)
    assert.ok(
      u.credits_charged <= u.credits_held,
      `hold ${u.hold_id}: ${u.credits_charged} > ${u.credits_held}`,
    )
    // The simulator billed every tool schema as prompt (the old estimate saw 2 tokens of "hi").
    assert.ok(u.prompt_tokens > 90 || u.facts.images > 0, `hold ${u.hold_id}: ${u.prompt_tokens}`)
    charged += u.credits_charged
  }
  assert.deepEqual(await balance(a.userId), { balance: start - charged, held: 0 })
})

// Issue 11, finding 3: variants cannot sidestep a price -------------------------------------------

test('variants: :nitro and :floor at the base price, :free free, :online adds the web fee, unknown refused', async () => {
  await catalogLoaded()
  const a = await richAccount()
  const model = 'openai/gpt-4o'
  await db()`select gateway.set_model_pricing(${model}, 2.5, 10)`
  try {
    for (const variant of ['', ':nitro', ':floor']) {
      const r = await chat(a.key, { model: `${model}${variant}~len-4` })
      assert.equal(r.status, 200, r.text)
      const g = await billed(r.headers.get('x-generation-id')!)
      const expected = Math.ceil(g.prompt_tokens * 2.5 + g.completion_tokens * 10)
      assert.equal(r.json.gateway_usage.credits_charged, expected, variant)
      assert.equal((await recordOf(a.userId, g.id)).credits_charged, expected, variant)
    }
  } finally {
    await db()`delete from gateway.model_pricing where model = ${model}`
  }
  const free = await chat(a.key, { model: 'meta-llama/llama-3.3-70b-instruct:free~len-4' })
  assert.equal(free.status, 200, free.text)
  assert.equal(free.json.gateway_usage.credits_charged, 0)
  assert.equal(free.json.usage.cost, 0)
  // :online on a model without a search price of its own: Exa, $0.007 a search (350 credits).
  const online = await chat(a.key, { model: 'openai/gpt-4o-mini:online~len-4' })
  assert.equal(online.status, 200, online.text)
  const g = await billed(online.headers.get('x-generation-id')!)
  assert.equal(g.web_search_requests, 1)
  assert.equal(
    online.json.gateway_usage.credits_charged,
    g.prompt_tokens + g.completion_tokens + feeCredits('0.007'),
  )
  for (const unknown of ['nope/nope', 'openai/gpt-4o-mini:free']) {
    const r = await chat(a.key, { model: unknown })
    assert.equal(r.status, 400, r.text)
    assert.equal(r.json.error.code, 'model_not_found')
    assert.ok(r.json.error.message.includes(unknown), r.json.error.message)
  }
  await inCostMode(0, async () => {
    const r = await chat(a.key, { model: 'nope/nope' })
    assert.equal(r.status, 400, r.text)
    assert.equal(r.json.error.code, 'model_not_found')
  })
})

// Issue 14: every price category, both modes, exact ----------------------------------------------

interface Case {
  name: string
  body: Record<string, unknown>
  /** Flat-mode credits from the simulator's record of the generation. */
  // deno-lint-ignore no-explicit-any
  flat: (g: any) => number
  /** Asserts what the category is about on the simulator's record. */
  // deno-lint-ignore no-explicit-any
  check?: (g: any) => void
}

const tokensOf = (
  // deno-lint-ignore no-explicit-any
  g: any,
) => g.prompt_tokens + g.completion_tokens

const CASES: Case[] = [
  { name: 'plain', body: { model: 'openai/gpt-4o-mini~len-6' }, flat: tokensOf },
  {
    name: 'cached read',
    body: { model: 'openai/gpt-4o-mini~len-3', messages: [{ role: 'user', content: BIG }] },
    flat: tokensOf,
    check: (g) => assert.ok(g.cached_tokens > 0, 'a cache hit'),
  },
  {
    name: 'cache write',
    body: {
      model: 'anthropic/claude-sonnet-4~len-2',
      messages: [{
        role: 'system',
        content: [{ type: 'text', text: BIG, cache_control: { type: 'ephemeral' } }],
      }, { role: 'user', content: 'hi' }],
    },
    flat: tokensOf,
    check: (g) => assert.ok(g.cache_write_tokens > 0 || g.cached_tokens > 0, 'the cache used'),
  },
  {
    name: 'reasoning at its own price',
    body: {
      model: 'google/gemini-2.5-flash-preview-05-20~len-2~reason-5',
      reasoning: { enabled: true },
    },
    flat: tokensOf,
    check: (g) => assert.equal(g.reasoning_tokens, 5),
  },
  {
    name: 'native web search',
    body: { model: 'openai/gpt-4.1:online~len-2' },
    flat: (g) => tokensOf(g) + feeCredits('0.01'),
    check: (g) => assert.equal(g.web_search_requests, 1),
  },
  {
    name: 'web plugin (Exa), 1 result',
    body: { model: 'openai/gpt-4o-mini~len-2', plugins: [{ id: 'web', max_results: 1 }] },
    flat: (g) => tokensOf(g) + feeCredits('0.007'),
    check: (g) => assert.equal(g.web_search_requests, 1),
  },
  {
    name: 'request fee',
    body: { model: 'perplexity/sonar~len-2' },
    flat: (g) => tokensOf(g) + feeCredits('0.005'),
  },
  { name: 'free variant', body: { model: 'qwen/qwen3-235b-a22b:free~len-3' }, flat: () => 0 },
]

for (const mode of ['flat', 'cost'] as const) {
  test(`every price category in ${mode} mode: exact credits, usage.cost = credits × usd_per_credit, nothing overrun`, async () => {
    await catalogLoaded()
    const markup = 25
    const run = async () => {
      const a = await richAccount()
      for (const c of CASES) {
        for (const stream of [false, true]) {
          // The cached read needs the prompt seen once before.
          if (c.name === 'cached read') await chat(a.key, { ...c.body, stream: false })
          const r = await chat(a.key, { ...c.body, stream })
          assert.equal(r.status, 200, `${c.name}: ${r.text.slice(0, 300)}`)
          const what = `${c.name} (${mode}${stream ? ', stream' : ''})`
          const text = stream ? sseData(r.text).find((d) => d.includes('"gateway_usage"'))! : r.text
          const usage = JSON.parse(text)
          const g = await billed(r.headers.get('x-generation-id')!)
          c.check?.(g)
          const expected = mode === 'flat' ? c.flat(g) : costCredits(g.cost, markup)
          assert.equal(usage.gateway_usage.credits_charged, expected, what)
          // What the client pays, never upstream's cost.
          assert.equal(
            text.slice(text.indexOf('"usage"')).match(/"cost":([^,}]+)/)![1],
            usd(expected),
            what,
          )
          assert.equal(usage.usage.cost_details, null, what)
          const u = await recordOf(a.userId, g.id)
          assert.equal(u.credits_charged, expected, `${what}: the settle`)
          assert.equal(u.overrun_credits, 0, what)
          assert.equal(u.pricing_mode, mode, what)
          assert.equal(Number(u.upstream_usd), Number(g.cost), `${what}: upstream USD recorded`)
          assert.equal(u.cached_tokens, g.cached_tokens, what)
          assert.equal(u.reasoning_tokens, g.reasoning_tokens, what)
          assert.equal(usage.gateway_usage.cached_tokens, g.cached_tokens, what)
          assert.equal(usage.gateway_usage.reasoning_tokens, g.reasoning_tokens, what)
        }
      }
    }
    if (mode === 'cost') await inCostMode(markup, run)
    else await run()
  })
}

test('a price change during a request does not alter its hold: charged at the admission price', async () => {
  await catalogLoaded()
  const a = await richAccount()
  const model = 'mistralai/codestral-2501'
  await db()`select gateway.set_model_pricing(${model}, 1, 1)`
  try {
    const pending = chat(a.key, { model: `${model}~len-4~slow-1500` })
    await new Promise((ok) => setTimeout(ok, 500))
    await db()`select gateway.set_model_pricing(${model}, 100, 100)`
    const r = await pending
    assert.equal(r.status, 200, r.text)
    const g = await billed(r.headers.get('x-generation-id')!)
    assert.equal(r.json.gateway_usage.credits_charged, tokensOf(g))
    assert.equal((await recordOf(a.userId, g.id)).credits_charged, tokensOf(g))
  } finally {
    await db()`delete from gateway.model_pricing where model = ${model}`
  }
})

test('a model the catalog learned upstream since its last refresh: refreshed, then served', async () => {
  await catalogLoaded()
  const a = await richAccount()
  const model = 'mistralai/mistral-large-2411'
  // As if the model appeared upstream after the last refresh, two minutes ago.
  await db()`delete from gateway.model_catalog where model = ${model}`
  await db()`update gateway.models_cache set fetched_at = now() - interval '2 minutes' where id`
  const r = await chat(a.key, { model: `${model}~len-2` })
  assert.equal(r.status, 200, r.text)
  const [row] =
    await db()`select count(*)::int as n from gateway.model_catalog where model = ${model}`
  assert.equal(row.n, 1, 'the catalog was refreshed')
})
