// The simulator's model catalog, in OpenRouter's GET /api/v1/models shape (its published OpenAPI
// `Model`), and the resolution of a requested id to a catalog row and its prices. Prices are
// public list prices (USD per token / request / search, decimal strings, like OpenRouter) at the
// time of writing; they only need to be realistic, not current.

import { parseUsd } from './money.ts'

export interface PricingOverride {
  min_prompt_tokens: number
  prompt?: string
  completion?: string
  input_cache_read?: string
  input_cache_write?: string
  input_cache_write_1h?: string
}

export interface CatalogModel {
  id: string
  canonical_slug: string
  name: string
  created: number
  description: string
  context_length: number
  architecture: {
    modality: string
    input_modalities: string[]
    output_modalities: string[]
    tokenizer: string
    instruct_type: string | null
  }
  pricing: {
    prompt: string
    completion: string
    request?: string
    image?: string
    web_search?: string
    internal_reasoning?: string
    input_cache_read?: string
    input_cache_write?: string
    input_cache_write_1h?: string
    overrides?: PricingOverride[]
  }
  top_provider: {
    context_length: number | null
    max_completion_tokens: number | null
    is_moderated: boolean
  }
  per_request_limits: null
  supported_parameters: string[]
  default_parameters: null
  supported_voices: null
  reasoning?: { mandatory: boolean }
  links: { details: string }
}

const SAMPLING = [
  'max_tokens',
  'temperature',
  'top_p',
  'stop',
  'frequency_penalty',
  'presence_penalty',
  'seed',
]
const TOOLS = [...SAMPLING, 'tools', 'tool_choice', 'response_format', 'structured_outputs']
const REASONING = [...TOOLS, 'reasoning', 'include_reasoning']

// The upstream provider that "served" a model, reported as `provider` in completions
// and `provider_name` in /generation. Keyed by the author prefix of the model id.
const PROVIDER_BY_AUTHOR: Record<string, string> = {
  openai: 'OpenAI',
  anthropic: 'Anthropic',
  google: 'Google AI Studio',
  'meta-llama': 'DeepInfra',
  mistralai: 'Mistral',
  deepseek: 'DeepSeek',
  qwen: 'Alibaba',
  'x-ai': 'xAI',
  cohere: 'Cohere',
  perplexity: 'Perplexity',
}

/**
 * How a model reasons: `mandatory` always (its reasoning text is returned), `hidden` always but the
 * text is never returned (OpenAI o-series), `optional` only when the request enables it.
 */
export type Reasoning = 'none' | 'optional' | 'mandatory' | 'hidden'

interface Row {
  id: string
  slug?: string // canonical_slug when it differs from id
  name: string
  created: number
  ctx: number
  maxOut: number | null
  prompt: string
  completion: string
  request?: string
  image?: string
  /** pricing.web_search: the model searches natively at this price per search. */
  web?: string
  /** pricing.internal_reasoning, when reasoning tokens are priced apart from output. */
  reasoningPrice?: string
  /** pricing.input_cache_read: automatic caching (OpenAI, Gemini, Grok) unless `write` is set. */
  read?: string
  /** pricing.input_cache_write: explicit caching with cache_control breakpoints (Anthropic). */
  write?: string
  write1h?: string
  overrides?: PricingOverride[]
  reasoning?: Reasoning
  tokenizer: string
  instruct?: string
  vision?: boolean
  moderated?: boolean
  /** Serving provider when not the author's own (free variants). */
  provider?: string
  params: string[]
}

// deno-fmt-ignore
const ROWS: Row[] = [
  { id: 'openai/gpt-4o-mini', slug: 'openai/gpt-4o-mini-2024-07-18', name: 'OpenAI: GPT-4o-mini', created: 1721260800, ctx: 128000, maxOut: 16384, prompt: '0.00000015', completion: '0.0000006', image: '0.000217', read: '0.000000075', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4o', slug: 'openai/gpt-4o-2024-08-06', name: 'OpenAI: GPT-4o', created: 1715558400, ctx: 128000, maxOut: 16384, prompt: '0.0000025', completion: '0.00001', image: '0.003613', read: '0.00000125', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1', slug: 'openai/gpt-4.1-2025-04-14', name: 'OpenAI: GPT-4.1', created: 1744651385, ctx: 1047576, maxOut: 32768, prompt: '0.000002', completion: '0.000008', read: '0.0000005', web: '0.01', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1-mini', slug: 'openai/gpt-4.1-mini-2025-04-14', name: 'OpenAI: GPT-4.1 Mini', created: 1744651381, ctx: 1047576, maxOut: 32768, prompt: '0.0000004', completion: '0.0000016', read: '0.0000001', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1-nano', slug: 'openai/gpt-4.1-nano-2025-04-14', name: 'OpenAI: GPT-4.1 Nano', created: 1744651369, ctx: 1047576, maxOut: 32768, prompt: '0.0000001', completion: '0.0000004', read: '0.000000025', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/o3-mini', slug: 'openai/o3-mini-2025-01-31', name: 'OpenAI: o3 Mini', created: 1738351721, ctx: 200000, maxOut: 100000, prompt: '0.0000011', completion: '0.0000044', read: '0.00000055', reasoning: 'hidden', tokenizer: 'GPT', moderated: true, params: REASONING },
  { id: 'openai/gpt-3.5-turbo', name: 'OpenAI: GPT-3.5 Turbo', created: 1685232000, ctx: 16385, maxOut: 4096, prompt: '0.0000005', completion: '0.0000015', tokenizer: 'GPT', moderated: true, params: TOOLS },
  { id: 'anthropic/claude-opus-4', slug: 'anthropic/claude-4-opus-20250522', name: 'Anthropic: Claude Opus 4', created: 1747931245, ctx: 200000, maxOut: 32000, prompt: '0.000015', completion: '0.000075', image: '0.024', read: '0.0000015', write: '0.00001875', write1h: '0.00003', reasoning: 'optional', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-sonnet-4', slug: 'anthropic/claude-4-sonnet-20250522', name: 'Anthropic: Claude Sonnet 4', created: 1747930371, ctx: 200000, maxOut: 64000, prompt: '0.000003', completion: '0.000015', image: '0.0048', read: '0.0000003', write: '0.00000375', write1h: '0.000006', reasoning: 'optional', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-3.7-sonnet', slug: 'anthropic/claude-3-7-sonnet-20250219', name: 'Anthropic: Claude 3.7 Sonnet', created: 1740422110, ctx: 200000, maxOut: 64000, prompt: '0.000003', completion: '0.000015', image: '0.0048', read: '0.0000003', write: '0.00000375', write1h: '0.000006', reasoning: 'optional', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-3.5-sonnet', slug: 'anthropic/claude-3.5-sonnet', name: 'Anthropic: Claude 3.5 Sonnet', created: 1729555200, ctx: 200000, maxOut: 8192, prompt: '0.000003', completion: '0.000015', image: '0.0048', read: '0.0000003', write: '0.00000375', write1h: '0.000006', tokenizer: 'Claude', vision: true, moderated: true, params: TOOLS },
  { id: 'anthropic/claude-3.5-haiku', slug: 'anthropic/claude-3-5-haiku', name: 'Anthropic: Claude 3.5 Haiku', created: 1730678400, ctx: 200000, maxOut: 8192, prompt: '0.0000008', completion: '0.000004', read: '0.00000008', write: '0.000001', write1h: '0.0000016', tokenizer: 'Claude', moderated: true, params: TOOLS },
  { id: 'google/gemini-2.5-pro', name: 'Google: Gemini 2.5 Pro', created: 1750169544, ctx: 1048576, maxOut: 65536, prompt: '0.00000125', completion: '0.00001', image: '0.00516', read: '0.00000031', reasoning: 'mandatory', overrides: [{ min_prompt_tokens: 200000, prompt: '0.0000025', completion: '0.000015', input_cache_read: '0.000000625' }], tokenizer: 'Gemini', vision: true, params: REASONING },
  { id: 'google/gemini-2.5-flash', name: 'Google: Gemini 2.5 Flash', created: 1750172488, ctx: 1048576, maxOut: 65535, prompt: '0.0000003', completion: '0.0000025', image: '0.001238', read: '0.000000075', reasoning: 'optional', tokenizer: 'Gemini', vision: true, params: REASONING },
  // Thinking tokens priced apart from output (`internal_reasoning`), as this preview was.
  { id: 'google/gemini-2.5-flash-preview-05-20', name: 'Google: Gemini 2.5 Flash Preview 05-20', created: 1747761924, ctx: 1048576, maxOut: 65535, prompt: '0.00000015', completion: '0.0000006', image: '0.0006192', reasoningPrice: '0.0000035', read: '0.0000000375', reasoning: 'optional', tokenizer: 'Gemini', vision: true, params: REASONING },
  { id: 'google/gemini-2.0-flash-001', name: 'Google: Gemini 2.0 Flash', created: 1738769413, ctx: 1048576, maxOut: 8192, prompt: '0.0000001', completion: '0.0000004', image: '0.0000258', read: '0.000000025', tokenizer: 'Gemini', vision: true, params: TOOLS },
  { id: 'google/gemma-3-27b-it', name: 'Google: Gemma 3 27B', created: 1741756359, ctx: 131072, maxOut: 16384, prompt: '0.00000009', completion: '0.00000017', tokenizer: 'Gemini', instruct: 'gemma', vision: true, params: SAMPLING },
  { id: 'meta-llama/llama-4-maverick', slug: 'meta-llama/llama-4-maverick-17b-128e-instruct', name: 'Meta: Llama 4 Maverick', created: 1743881822, ctx: 1048576, maxOut: 16384, prompt: '0.00000015', completion: '0.0000006', tokenizer: 'Llama4', vision: true, params: TOOLS },
  { id: 'meta-llama/llama-3.3-70b-instruct', name: 'Meta: Llama 3.3 70B Instruct', created: 1733506137, ctx: 131072, maxOut: 16384, prompt: '0.00000013', completion: '0.0000004', tokenizer: 'Llama3', instruct: 'llama3', params: TOOLS },
  { id: 'meta-llama/llama-3.1-8b-instruct', name: 'Meta: Llama 3.1 8B Instruct', created: 1721692800, ctx: 131072, maxOut: 16384, prompt: '0.00000002', completion: '0.00000003', tokenizer: 'Llama3', instruct: 'llama3', params: TOOLS },
  { id: 'mistralai/mistral-large-2411', name: 'Mistral Large 2411', created: 1731978415, ctx: 131072, maxOut: null, prompt: '0.000002', completion: '0.000006', tokenizer: 'Mistral', params: TOOLS },
  { id: 'mistralai/mistral-small-3.1-24b-instruct', slug: 'mistralai/mistral-small-3.1-24b-instruct-2503', name: 'Mistral: Mistral Small 3.1 24B', created: 1742238937, ctx: 131072, maxOut: null, prompt: '0.00000005', completion: '0.0000001', tokenizer: 'Mistral', vision: true, params: TOOLS },
  { id: 'mistralai/mistral-nemo', name: 'Mistral: Mistral Nemo', created: 1721347200, ctx: 131072, maxOut: 16384, prompt: '0.00000002', completion: '0.00000004', tokenizer: 'Mistral', instruct: 'mistral', params: TOOLS },
  { id: 'mistralai/codestral-2501', name: 'Mistral: Codestral 2501', created: 1736895522, ctx: 262144, maxOut: null, prompt: '0.0000003', completion: '0.0000009', tokenizer: 'Mistral', params: TOOLS },
  { id: 'deepseek/deepseek-r1-0528', name: 'DeepSeek: R1 0528', created: 1748455170, ctx: 163840, maxOut: 163840, prompt: '0.0000005', completion: '0.00000215', reasoning: 'mandatory', tokenizer: 'DeepSeek', instruct: 'deepseek-r1', params: REASONING },
  { id: 'deepseek/deepseek-chat-v3-0324', name: 'DeepSeek: DeepSeek V3 0324', created: 1742824755, ctx: 163840, maxOut: 163840, prompt: '0.00000028', completion: '0.00000088', tokenizer: 'DeepSeek', params: TOOLS },
  { id: 'qwen/qwen3-235b-a22b', slug: 'qwen/qwen3-235b-a22b-04-28', name: 'Qwen: Qwen3 235B A22B', created: 1745875757, ctx: 40960, maxOut: 40960, prompt: '0.00000013', completion: '0.0000006', reasoning: 'optional', tokenizer: 'Qwen3', instruct: 'qwen3', params: REASONING },
  { id: 'qwen/qwen-2.5-72b-instruct', name: 'Qwen2.5 72B Instruct', created: 1726704000, ctx: 32768, maxOut: 16384, prompt: '0.00000012', completion: '0.00000039', tokenizer: 'Qwen', instruct: 'chatml', params: TOOLS },
  { id: 'qwen/qwen-2.5-coder-32b-instruct', name: 'Qwen2.5 Coder 32B Instruct', created: 1731368400, ctx: 32768, maxOut: 16384, prompt: '0.00000006', completion: '0.00000015', tokenizer: 'Qwen', instruct: 'chatml', params: SAMPLING },
  { id: 'x-ai/grok-3', name: 'xAI: Grok 3', created: 1749582908, ctx: 131072, maxOut: null, prompt: '0.000003', completion: '0.000015', read: '0.00000075', tokenizer: 'Grok', params: TOOLS },
  { id: 'x-ai/grok-3-mini', name: 'xAI: Grok 3 Mini', created: 1749583245, ctx: 131072, maxOut: null, prompt: '0.0000003', completion: '0.0000005', read: '0.000000075', reasoning: 'optional', tokenizer: 'Grok', params: REASONING },
  { id: 'cohere/command-r-plus-08-2024', name: 'Cohere: Command R+ (08-2024)', created: 1724976000, ctx: 128000, maxOut: 4000, prompt: '0.0000025', completion: '0.00001', tokenizer: 'Cohere', moderated: true, params: TOOLS },
  { id: 'cohere/command-r-08-2024', name: 'Cohere: Command R (08-2024)', created: 1724976000, ctx: 128000, maxOut: 4000, prompt: '0.00000015', completion: '0.0000006', tokenizer: 'Cohere', moderated: true, params: TOOLS },
  // Priced per request as well as per token, so gateways can test the `request` price.
  { id: 'perplexity/sonar', name: 'Perplexity: Sonar', created: 1738013808, ctx: 127072, maxOut: null, prompt: '0.000001', completion: '0.000001', request: '0.005', tokenizer: 'Other', vision: true, params: SAMPLING },
  // OpenRouter lists free variants as models of their own, every price zero.
  { id: 'deepseek/deepseek-r1-0528:free', name: 'DeepSeek: R1 0528 (free)', created: 1748455170, ctx: 163840, maxOut: null, prompt: '0', completion: '0', reasoning: 'mandatory', tokenizer: 'DeepSeek', instruct: 'deepseek-r1', provider: 'Chutes', params: REASONING },
  { id: 'meta-llama/llama-3.3-70b-instruct:free', name: 'Meta: Llama 3.3 70B Instruct (free)', created: 1733506137, ctx: 65536, maxOut: null, prompt: '0', completion: '0', tokenizer: 'Llama3', instruct: 'llama3', provider: 'Chutes', params: TOOLS },
  { id: 'google/gemma-3-27b-it:free', name: 'Google: Gemma 3 27B (free)', created: 1741756359, ctx: 96000, maxOut: 8192, prompt: '0', completion: '0', tokenizer: 'Gemini', instruct: 'gemma', vision: true, provider: 'Chutes', params: SAMPLING },
  { id: 'mistralai/mistral-small-3.1-24b-instruct:free', name: 'Mistral: Mistral Small 3.1 24B (free)', created: 1742238937, ctx: 96000, maxOut: null, prompt: '0', completion: '0', tokenizer: 'Mistral', vision: true, provider: 'Chutes', params: TOOLS },
  { id: 'qwen/qwen3-235b-a22b:free', name: 'Qwen: Qwen3 235B A22B (free)', created: 1745875757, ctx: 40960, maxOut: null, prompt: '0', completion: '0', reasoning: 'optional', tokenizer: 'Qwen3', instruct: 'qwen3', provider: 'Chutes', params: REASONING },
]

function toModel(r: Row): CatalogModel {
  const input = r.vision ? ['text', 'image'] : ['text']
  const pricing: CatalogModel['pricing'] = {
    prompt: r.prompt,
    completion: r.completion,
    request: r.request ?? '0',
    image: r.image ?? '0',
    web_search: r.web ?? '0',
    internal_reasoning: r.reasoningPrice ?? '0',
  }
  // OpenRouter lists cache prices only for models that cache.
  if (r.read) pricing.input_cache_read = r.read
  if (r.write) pricing.input_cache_write = r.write
  if (r.write1h) pricing.input_cache_write_1h = r.write1h
  if (r.overrides) pricing.overrides = r.overrides
  return {
    id: r.id,
    canonical_slug: r.slug ?? r.id,
    name: r.name,
    created: r.created,
    description: `${r.name} (simulated by openrouter-sim; output is deterministic filler text).`,
    context_length: r.ctx,
    architecture: {
      modality: `${input.join('+')}->text`,
      input_modalities: input,
      output_modalities: ['text'],
      tokenizer: r.tokenizer,
      instruct_type: r.instruct ?? null,
    },
    pricing,
    top_provider: {
      context_length: r.ctx,
      max_completion_tokens: r.maxOut,
      is_moderated: r.moderated ?? false,
    },
    per_request_limits: null,
    supported_parameters: r.params,
    default_parameters: null,
    supported_voices: null,
    ...(r.reasoning ? { reasoning: { mandatory: r.reasoning !== 'optional' } } : {}),
    links: { details: `/api/v1/models/${r.id}/endpoints` },
  }
}

/** The auto router: listed like OpenRouter lists it, with prices "-1" (decided per request). */
export const AUTO_ID = 'openrouter/auto'

const AUTO: CatalogModel = {
  id: AUTO_ID,
  canonical_slug: AUTO_ID,
  name: 'Auto Router',
  created: 1699401600,
  description:
    'Routes each request to one of the models of this catalog (simulated by openrouter-sim).',
  context_length: 2000000,
  architecture: {
    modality: 'text+image->text',
    input_modalities: ['text', 'image'],
    output_modalities: ['text'],
    tokenizer: 'Router',
    instruct_type: null,
  },
  pricing: { prompt: '-1', completion: '-1' },
  top_provider: { context_length: null, max_completion_tokens: null, is_moderated: false },
  per_request_limits: null,
  supported_parameters: REASONING,
  default_parameters: null,
  supported_voices: null,
  links: { details: `/api/v1/models/${AUTO_ID}/endpoints` },
}

export const CATALOG: readonly CatalogModel[] = [...ROWS.map(toModel), AUTO]

/** Prices parsed once to exact atto-dollars (see money.ts), per token / request / search. */
export interface Price {
  prompt: bigint
  completion: bigint
  request: bigint
  webSearch: bigint
  /** Price of a reasoning token: pricing.internal_reasoning, or the completion price when 0. */
  reasoning: bigint
  cacheRead: bigint
  cacheWrite: bigint
  cacheWrite1h: bigint
  overrides: { minPromptTokens: number; price: Partial<Price> }[]
}

/** `explicit`: Anthropic-style cache_control breakpoints; `automatic`: OpenAI-style prefixes. */
export type Caching = 'none' | 'automatic' | 'explicit'

export interface CatalogEntry {
  model: CatalogModel
  provider: string
  price: Price
  caching: Caching
  reasoning: Reasoning
  free: boolean
}

export interface ResolvedModel extends CatalogEntry {
  /** Routing variants after the catalog id (`:nitro`, `:online`, …), in request order. */
  variants: string[]
}

function parsePrice(r: Row): Price {
  const prompt = parseUsd(r.prompt)
  const completion = parseUsd(r.completion)
  const write = r.write ? parseUsd(r.write) : prompt
  const reasoning = parseUsd(r.reasoningPrice ?? '0')
  return {
    prompt,
    completion,
    request: parseUsd(r.request ?? '0'),
    webSearch: parseUsd(r.web ?? '0'),
    reasoning: reasoning > 0n ? reasoning : completion,
    cacheRead: r.read ? parseUsd(r.read) : prompt,
    cacheWrite: write,
    cacheWrite1h: r.write1h ? parseUsd(r.write1h) : write,
    overrides: (r.overrides ?? []).map((o) => ({
      minPromptTokens: o.min_prompt_tokens,
      price: {
        ...(o.prompt ? { prompt: parseUsd(o.prompt) } : {}),
        ...(o.completion ? { completion: parseUsd(o.completion) } : {}),
        ...(o.input_cache_read ? { cacheRead: parseUsd(o.input_cache_read) } : {}),
        ...(o.input_cache_write ? { cacheWrite: parseUsd(o.input_cache_write) } : {}),
        ...(o.input_cache_write_1h ? { cacheWrite1h: parseUsd(o.input_cache_write_1h) } : {}),
      },
    })),
  }
}

/**
 * The prices that apply to a request of `promptTokens` prompt tokens: the base prices, with every
 * override whose `min_prompt_tokens` the prompt exceeds applied in order (later entries win),
 * as OpenRouter documents `pricing.overrides`.
 */
export function priceFor(price: Price, promptTokens: number): Price {
  let p = price
  for (const o of price.overrides) {
    if (promptTokens > o.minPromptTokens) {
      const completionChanged = o.price.completion !== undefined
      p = {
        ...p,
        ...o.price,
        // Reasoning billed as output follows the completion override.
        reasoning: completionChanged && p.reasoning === p.completion
          ? o.price.completion!
          : p.reasoning,
      }
    }
  }
  return p
}

// Every catalog id (the `:free` rows included) is resolved once, up front.
const BY_ID = new Map<string, CatalogEntry>()
for (const [i, r] of ROWS.entries()) {
  BY_ID.set(r.id, {
    model: CATALOG[i],
    provider: r.provider ?? PROVIDER_BY_AUTHOR[r.id.slice(0, r.id.indexOf('/'))],
    price: parsePrice(r),
    caching: r.write ? 'explicit' : r.read ? 'automatic' : 'none',
    reasoning: r.reasoning ?? 'none',
    free: r.id.endsWith(':free'),
  })
}

/** The models `openrouter/auto` chooses among: every paid catalog model. */
export const AUTO_CANDIDATES: readonly string[] = ROWS.filter((r) => !r.id.endsWith(':free'))
  .map((r) => r.id)

/** Variants that change routing or behaviour, never the price (`:free` is a catalog row). */
export const ROUTING_VARIANTS = ['nitro', 'floor', 'online', 'thinking', 'exacto']

/**
 * A catalog id followed by any routing variants (`:nitro`, `:floor`, `:online`, `:thinking`,
 * `:exacto`). `:free` is not stripped: it resolves only where the catalog lists the `:free` model
 * itself, as on OpenRouter; anything else is undefined (a 400 "not a valid model ID").
 */
export function resolveModel(id: string): ResolvedModel | undefined {
  const variants: string[] = []
  let base = id
  for (;;) {
    const entry = BY_ID.get(base)
    if (entry) return { ...entry, variants }
    const colon = base.lastIndexOf(':')
    if (colon < 0 || !ROUTING_VARIANTS.includes(base.slice(colon + 1))) return undefined
    variants.unshift(base.slice(colon + 1))
    base = base.slice(0, colon)
  }
}
