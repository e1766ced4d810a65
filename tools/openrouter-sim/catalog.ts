// The simulator's model catalog, in OpenRouter's GET /api/v1/models shape.
// Prices are public list prices (USD per token, as strings, like OpenRouter) at the
// time of writing; they only need to be realistic, not current.

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
    request: string
    image: string
    web_search: string
    internal_reasoning: string
  }
  top_provider: {
    context_length: number
    max_completion_tokens: number | null
    is_moderated: boolean
  }
  per_request_limits: null
  supported_parameters: string[]
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
  tokenizer: string
  instruct?: string
  vision?: boolean
  moderated?: boolean
  params: string[]
}

// deno-fmt-ignore
const ROWS: Row[] = [
  { id: 'openai/gpt-4o-mini', slug: 'openai/gpt-4o-mini-2024-07-18', name: 'OpenAI: GPT-4o-mini', created: 1721260800, ctx: 128000, maxOut: 16384, prompt: '0.00000015', completion: '0.0000006', image: '0.000217', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4o', slug: 'openai/gpt-4o-2024-08-06', name: 'OpenAI: GPT-4o', created: 1715558400, ctx: 128000, maxOut: 16384, prompt: '0.0000025', completion: '0.00001', image: '0.003613', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1', slug: 'openai/gpt-4.1-2025-04-14', name: 'OpenAI: GPT-4.1', created: 1744651385, ctx: 1047576, maxOut: 32768, prompt: '0.000002', completion: '0.000008', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1-mini', slug: 'openai/gpt-4.1-mini-2025-04-14', name: 'OpenAI: GPT-4.1 Mini', created: 1744651381, ctx: 1047576, maxOut: 32768, prompt: '0.0000004', completion: '0.0000016', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/gpt-4.1-nano', slug: 'openai/gpt-4.1-nano-2025-04-14', name: 'OpenAI: GPT-4.1 Nano', created: 1744651369, ctx: 1047576, maxOut: 32768, prompt: '0.0000001', completion: '0.0000004', tokenizer: 'GPT', vision: true, moderated: true, params: TOOLS },
  { id: 'openai/o3-mini', slug: 'openai/o3-mini-2025-01-31', name: 'OpenAI: o3 Mini', created: 1738351721, ctx: 200000, maxOut: 100000, prompt: '0.0000011', completion: '0.0000044', tokenizer: 'GPT', moderated: true, params: REASONING },
  { id: 'openai/gpt-3.5-turbo', name: 'OpenAI: GPT-3.5 Turbo', created: 1685232000, ctx: 16385, maxOut: 4096, prompt: '0.0000005', completion: '0.0000015', tokenizer: 'GPT', moderated: true, params: TOOLS },
  { id: 'anthropic/claude-opus-4', slug: 'anthropic/claude-4-opus-20250522', name: 'Anthropic: Claude Opus 4', created: 1747931245, ctx: 200000, maxOut: 32000, prompt: '0.000015', completion: '0.000075', image: '0.024', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-sonnet-4', slug: 'anthropic/claude-4-sonnet-20250522', name: 'Anthropic: Claude Sonnet 4', created: 1747930371, ctx: 200000, maxOut: 64000, prompt: '0.000003', completion: '0.000015', image: '0.0048', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-3.7-sonnet', slug: 'anthropic/claude-3-7-sonnet-20250219', name: 'Anthropic: Claude 3.7 Sonnet', created: 1740422110, ctx: 200000, maxOut: 64000, prompt: '0.000003', completion: '0.000015', image: '0.0048', tokenizer: 'Claude', vision: true, moderated: true, params: REASONING },
  { id: 'anthropic/claude-3.5-sonnet', slug: 'anthropic/claude-3.5-sonnet', name: 'Anthropic: Claude 3.5 Sonnet', created: 1729555200, ctx: 200000, maxOut: 8192, prompt: '0.000003', completion: '0.000015', image: '0.0048', tokenizer: 'Claude', vision: true, moderated: true, params: TOOLS },
  { id: 'anthropic/claude-3.5-haiku', slug: 'anthropic/claude-3-5-haiku', name: 'Anthropic: Claude 3.5 Haiku', created: 1730678400, ctx: 200000, maxOut: 8192, prompt: '0.0000008', completion: '0.000004', tokenizer: 'Claude', moderated: true, params: TOOLS },
  { id: 'google/gemini-2.5-pro', name: 'Google: Gemini 2.5 Pro', created: 1750169544, ctx: 1048576, maxOut: 65536, prompt: '0.00000125', completion: '0.00001', image: '0.00516', tokenizer: 'Gemini', vision: true, params: REASONING },
  { id: 'google/gemini-2.5-flash', name: 'Google: Gemini 2.5 Flash', created: 1750172488, ctx: 1048576, maxOut: 65535, prompt: '0.0000003', completion: '0.0000025', image: '0.001238', tokenizer: 'Gemini', vision: true, params: REASONING },
  { id: 'google/gemini-2.0-flash-001', name: 'Google: Gemini 2.0 Flash', created: 1738769413, ctx: 1048576, maxOut: 8192, prompt: '0.0000001', completion: '0.0000004', image: '0.0000258', tokenizer: 'Gemini', vision: true, params: TOOLS },
  { id: 'google/gemma-3-27b-it', name: 'Google: Gemma 3 27B', created: 1741756359, ctx: 131072, maxOut: 16384, prompt: '0.00000009', completion: '0.00000017', tokenizer: 'Gemini', instruct: 'gemma', vision: true, params: SAMPLING },
  { id: 'meta-llama/llama-4-maverick', slug: 'meta-llama/llama-4-maverick-17b-128e-instruct', name: 'Meta: Llama 4 Maverick', created: 1743881822, ctx: 1048576, maxOut: 16384, prompt: '0.00000015', completion: '0.0000006', tokenizer: 'Llama4', vision: true, params: TOOLS },
  { id: 'meta-llama/llama-3.3-70b-instruct', name: 'Meta: Llama 3.3 70B Instruct', created: 1733506137, ctx: 131072, maxOut: 16384, prompt: '0.00000013', completion: '0.0000004', tokenizer: 'Llama3', instruct: 'llama3', params: TOOLS },
  { id: 'meta-llama/llama-3.1-8b-instruct', name: 'Meta: Llama 3.1 8B Instruct', created: 1721692800, ctx: 131072, maxOut: 16384, prompt: '0.00000002', completion: '0.00000003', tokenizer: 'Llama3', instruct: 'llama3', params: TOOLS },
  { id: 'mistralai/mistral-large-2411', name: 'Mistral Large 2411', created: 1731978415, ctx: 131072, maxOut: null, prompt: '0.000002', completion: '0.000006', tokenizer: 'Mistral', params: TOOLS },
  { id: 'mistralai/mistral-small-3.1-24b-instruct', slug: 'mistralai/mistral-small-3.1-24b-instruct-2503', name: 'Mistral: Mistral Small 3.1 24B', created: 1742238937, ctx: 131072, maxOut: null, prompt: '0.00000005', completion: '0.0000001', tokenizer: 'Mistral', vision: true, params: TOOLS },
  { id: 'mistralai/mistral-nemo', name: 'Mistral: Mistral Nemo', created: 1721347200, ctx: 131072, maxOut: 16384, prompt: '0.00000002', completion: '0.00000004', tokenizer: 'Mistral', instruct: 'mistral', params: TOOLS },
  { id: 'mistralai/codestral-2501', name: 'Mistral: Codestral 2501', created: 1736895522, ctx: 262144, maxOut: null, prompt: '0.0000003', completion: '0.0000009', tokenizer: 'Mistral', params: TOOLS },
  { id: 'deepseek/deepseek-r1-0528', name: 'DeepSeek: R1 0528', created: 1748455170, ctx: 163840, maxOut: 163840, prompt: '0.0000005', completion: '0.00000215', tokenizer: 'DeepSeek', instruct: 'deepseek-r1', params: REASONING },
  { id: 'deepseek/deepseek-chat-v3-0324', name: 'DeepSeek: DeepSeek V3 0324', created: 1742824755, ctx: 163840, maxOut: 163840, prompt: '0.00000028', completion: '0.00000088', tokenizer: 'DeepSeek', params: TOOLS },
  { id: 'qwen/qwen3-235b-a22b', slug: 'qwen/qwen3-235b-a22b-04-28', name: 'Qwen: Qwen3 235B A22B', created: 1745875757, ctx: 40960, maxOut: 40960, prompt: '0.00000013', completion: '0.0000006', tokenizer: 'Qwen3', instruct: 'qwen3', params: REASONING },
  { id: 'qwen/qwen-2.5-72b-instruct', name: 'Qwen2.5 72B Instruct', created: 1726704000, ctx: 32768, maxOut: 16384, prompt: '0.00000012', completion: '0.00000039', tokenizer: 'Qwen', instruct: 'chatml', params: TOOLS },
  { id: 'qwen/qwen-2.5-coder-32b-instruct', name: 'Qwen2.5 Coder 32B Instruct', created: 1731368400, ctx: 32768, maxOut: 16384, prompt: '0.00000006', completion: '0.00000015', tokenizer: 'Qwen', instruct: 'chatml', params: SAMPLING },
  { id: 'x-ai/grok-3', name: 'xAI: Grok 3', created: 1749582908, ctx: 131072, maxOut: null, prompt: '0.000003', completion: '0.000015', tokenizer: 'Grok', params: TOOLS },
  { id: 'x-ai/grok-3-mini', name: 'xAI: Grok 3 Mini', created: 1749583245, ctx: 131072, maxOut: null, prompt: '0.0000003', completion: '0.0000005', tokenizer: 'Grok', params: REASONING },
  { id: 'cohere/command-r-plus-08-2024', name: 'Cohere: Command R+ (08-2024)', created: 1724976000, ctx: 128000, maxOut: 4000, prompt: '0.0000025', completion: '0.00001', tokenizer: 'Cohere', moderated: true, params: TOOLS },
  { id: 'cohere/command-r-08-2024', name: 'Cohere: Command R (08-2024)', created: 1724976000, ctx: 128000, maxOut: 4000, prompt: '0.00000015', completion: '0.0000006', tokenizer: 'Cohere', moderated: true, params: TOOLS },
  // Priced per request as well as per token, so gateways can test the `request` price.
  { id: 'perplexity/sonar', name: 'Perplexity: Sonar', created: 1738013808, ctx: 127072, maxOut: null, prompt: '0.000001', completion: '0.000001', request: '0.005', tokenizer: 'Other', vision: true, params: SAMPLING },
]

function toModel(r: Row): CatalogModel {
  const input = r.vision ? ['text', 'image'] : ['text']
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
    pricing: {
      prompt: r.prompt,
      completion: r.completion,
      request: r.request ?? '0',
      image: r.image ?? '0',
      web_search: '0',
      internal_reasoning: '0',
    },
    top_provider: {
      context_length: r.ctx,
      max_completion_tokens: r.maxOut,
      is_moderated: r.moderated ?? false,
    },
    per_request_limits: null,
    supported_parameters: r.params,
  }
}

export const CATALOG: readonly CatalogModel[] = ROWS.map(toModel)

/** Per-token prices parsed once, so requests never parse price strings. */
export interface Price {
  prompt: number
  completion: number
  request: number
}

export interface ResolvedModel {
  model: CatalogModel
  provider: string
  price: Price
}

const FREE: Price = { prompt: 0, completion: 0, request: 0 }

// OpenRouter routing variants accepted on any catalog id. `:free` is priced at zero
// (as OpenRouter's free variants are); the others only change routing, not price.
const VARIANTS = ['free', 'nitro', 'floor']

// Every accepted id (bare and with each variant) is resolved once, up front.
const BY_ID = new Map<string, ResolvedModel>()
for (const model of CATALOG) {
  const resolved: ResolvedModel = {
    model,
    provider: PROVIDER_BY_AUTHOR[model.id.slice(0, model.id.indexOf('/'))],
    price: {
      prompt: Number(model.pricing.prompt),
      completion: Number(model.pricing.completion),
      request: Number(model.pricing.request),
    },
  }
  BY_ID.set(model.id, resolved)
  for (const v of VARIANTS) {
    BY_ID.set(`${model.id}:${v}`, v === 'free' ? { ...resolved, price: FREE } : resolved)
  }
}

/** Looks up a catalog id, optionally with a `:free` / `:nitro` / `:floor` variant. */
export function resolveModel(id: string): ResolvedModel | undefined {
  return BY_ID.get(id)
}
