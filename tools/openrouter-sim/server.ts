// The simulator: routing, auth, /models, /generation and the /__sim control endpoints.
// createSimulator() is transport-free (tests may call handler directly);
// startSimulator() serves it on loopback.

import { cacheDiscount } from './billing.ts'
import { PromptCache } from './cache.ts'
import { CATALOG } from './catalog.ts'
import { type ChatContext, counts, handleChat } from './chat.ts'
import { json, openRouterError, StreamCut } from './http.ts'
import { usdJson } from './money.ts'
import { DEFAULT_MAX_GENERATIONS, type Generation, Stats } from './stats.ts'
import { DEFAULT_COMPLETION_TOKENS, DEFAULT_REASONING_TOKENS } from './tokens.ts'

export interface SimulatorOptions {
  /** When set, the bearer token must equal it; otherwise any non-empty bearer is accepted. */
  apiKey?: string
  /** How long after a generation ends /generation starts answering (default 500 ms). */
  generationDelayMs?: number
  /** Status for GET /models to fail with (e.g. 503); null = serve the catalog. */
  modelsFault?: number | null
  /** Completion length when a request has no `~len-N` (default 16). */
  completionTokens?: number
  /** Reasoning length of a reasoning model when the request does not say (default 16). */
  reasoningTokens?: number
  /** Generations kept for /generation and stats; the oldest are dropped beyond it. */
  maxGenerations?: number
}

/** Runtime-adjustable settings, as read and written by /__sim/config. */
export interface SimConfig {
  generation_delay_ms: number
  models_fault: number | null
  completion_tokens: number
  reasoning_tokens: number
}

export interface Simulator {
  handler(req: Request): Promise<Response>
  /** The GET /__sim/stats document. */
  stats(summary?: boolean): Record<string, unknown>
  /** Clears counters, generations, recorded requests and the prompt cache (config is kept). */
  reset(): void
  /** Applies a /__sim/config patch; returns an error message when it is invalid. */
  configure(patch: Record<string, unknown>): string | undefined
  config(): SimConfig
}

export const DEFAULT_GENERATION_DELAY_MS = 500

// The catalog never changes, so its JSON is built once (OpenRouter's ModelsListResponse).
const MODELS_BODY = JSON.stringify({
  data: CATALOG,
  links: { next: null },
  total_count: CATALOG.length,
})

/** Path and query of an absolute request URL, without the cost of a full URL parse. */
function splitUrl(url: string): [path: string, query: string] {
  const start = url.indexOf('/', url.indexOf('//') + 2)
  const q = url.indexOf('?', start)
  return q < 0 ? [url.slice(start), ''] : [url.slice(start, q), url.slice(q + 1)]
}

/** GET /generation's document (OpenRouter's GenerationResponse), for an ended generation. */
function generationDocument(g: Generation & { endedAt: number }) {
  const cost = usdJson(g.charge!.total)
  const discount = cacheDiscount(g.price, counts(g))
  return {
    data: {
      id: g.id,
      upstream_id: `chatcmpl-${g.id.slice(4)}`,
      total_cost: cost,
      cache_discount: discount === null ? null : usdJson(discount),
      // Not BYOK: OpenRouter reports the provider's own charge only for BYOK requests.
      upstream_inference_cost: null,
      created_at: new Date(g.startedAt).toISOString(),
      model: g.model,
      app_id: null,
      streamed: g.stream,
      cancelled: g.cancelled,
      provider_name: g.provider,
      latency: (g.firstTokenAt ?? g.endedAt) - g.startedAt,
      moderation_latency: null,
      generation_time: g.endedAt - g.startedAt,
      finish_reason: g.finishReason,
      native_finish_reason: g.finishReason,
      service_tier: null,
      tokens_prompt: g.promptTokens,
      tokens_completion: g.completionTokens,
      native_tokens_prompt: g.promptTokens,
      native_tokens_completion: g.completionTokens,
      native_tokens_completion_images: 0,
      native_tokens_reasoning: g.reasoningTokens,
      native_tokens_cached: g.cachedTokens,
      num_media_prompt: g.media,
      num_input_audio_prompt: g.audioParts,
      num_media_completion: 0,
      num_search_results: g.webResults,
      num_fetches: 0,
      web_search_engine: g.webSearches ? (g.nativeSearch ? 'native' : 'exa') : null,
      origin: g.origin,
      usage: cost,
      is_byok: false,
      external_user: g.externalUser,
      api_type: 'completions',
      preset_id: null,
      router: g.router,
      provider_responses: null,
      user_agent: g.userAgent,
      http_referer: g.origin || null,
      data_region: 'global',
      workspace_id: null,
    },
  }
}

const isCount = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0

export function createSimulator(opts: SimulatorOptions = {}): Simulator {
  const stats = new Stats(opts.maxGenerations ?? DEFAULT_MAX_GENERATIONS)
  const config: SimConfig = {
    generation_delay_ms: DEFAULT_GENERATION_DELAY_MS,
    models_fault: null,
    completion_tokens: DEFAULT_COMPLETION_TOKENS,
    reasoning_tokens: DEFAULT_REASONING_TOKENS,
  }
  const cache = new PromptCache()

  // gen-<unix>-<20 chars>: a per-simulator random prefix plus a counter, so ids are
  // unique without per-request randomness.
  const prefix = crypto.randomUUID().replaceAll('-', '').slice(0, 12)
  let seq = 0

  function unauthorized(req: Request): Response | undefined {
    const auth = req.headers.get('authorization')
    const key = auth?.startsWith('Bearer ') ? auth.slice(7).trim() : ''
    if (key === '') return openRouterError(401, 'No auth credentials found')
    if (opts.apiKey !== undefined && key !== opts.apiKey) {
      return openRouterError(401, 'User not found.')
    }
  }

  const chat: ChatContext = {
    stats,
    cache,
    defaultTokens: () => config.completion_tokens,
    defaultReasoningTokens: () => config.reasoning_tokens,
    newId: () =>
      `gen-${Math.floor(Date.now() / 1000)}-${prefix}${(seq++).toString(36).padStart(8, '0')}`,
    unauthorized,
  }

  function generation(req: Request, query: string): Response {
    const denied = unauthorized(req)
    if (denied) return denied
    const id = new URLSearchParams(query).get('id')
    if (!id) return openRouterError(400, 'Missing generation id')
    const g = stats.generations.get(id)
    // OpenRouter's stats appear a little after the generation ends; unknown until then.
    if (!g || g.endedAt === undefined || Date.now() < g.endedAt + config.generation_delay_ms) {
      return openRouterError(404, 'Generation not found')
    }
    return json(200, generationDocument(g as Generation & { endedAt: number }))
  }

  function configure(patch: Record<string, unknown>): string | undefined {
    const {
      generation_delay_ms: delay,
      models_fault: fault,
      completion_tokens: tokens,
      reasoning_tokens: reasoning,
    } = patch
    if (delay !== undefined && !isCount(delay)) return 'generation_delay_ms must be an integer >= 0'
    if (
      fault !== undefined && fault !== null && fault !== 0 &&
      !(Number.isInteger(fault) && (fault as number) >= 400 && (fault as number) <= 599)
    ) return 'models_fault must be null, 0 or an HTTP status 400-599'
    if (tokens !== undefined && !isCount(tokens)) return 'completion_tokens must be an integer >= 0'
    if (reasoning !== undefined && !isCount(reasoning)) {
      return 'reasoning_tokens must be an integer >= 0'
    }
    if (delay !== undefined) config.generation_delay_ms = delay
    if (fault !== undefined) config.models_fault = fault === 0 ? null : fault as number | null
    if (tokens !== undefined) config.completion_tokens = tokens
    if (reasoning !== undefined) config.reasoning_tokens = reasoning
  }

  // Options go through the same validation as /__sim/config.
  const invalid = configure({
    generation_delay_ms: opts.generationDelayMs,
    models_fault: opts.modelsFault,
    completion_tokens: opts.completionTokens,
    reasoning_tokens: opts.reasoningTokens,
  })
  if (invalid) throw new RangeError(`openrouter-sim: ${invalid}`)

  async function control(req: Request, path: string, query: string): Promise<Response> {
    switch (`${req.method} ${path}`) {
      case 'GET /__sim/stats':
        return json(200, stats.snapshot(/(^|&)summary=(1|true)(&|$)/.test(query)))
      case 'POST /__sim/reset':
        stats.reset()
        cache.clear()
        return json(200, { ok: true })
      case 'GET /__sim/config':
        return json(200, config)
      case 'POST /__sim/config': {
        const patch = await req.json().catch(() => undefined)
        const problem = typeof patch === 'object' && patch !== null && !Array.isArray(patch)
          ? configure(patch)
          : 'body must be a JSON object'
        return problem ? openRouterError(400, problem) : json(200, config)
      }
    }
    return openRouterError(404, 'Not Found')
  }

  async function handler(req: Request): Promise<Response> {
    const [path, query] = splitUrl(req.url)
    // Control traffic is not counted, so reading stats does not change them.
    if (path.startsWith('/__sim/')) return control(req, path, query)
    switch (`${req.method} ${path}`) {
      case 'POST /api/v1/chat/completions': {
        stats.count('chat')
        const res = await handleChat(req, chat)
        stats.chatStatus(res.status)
        return res
      }
      case 'GET /api/v1/models': // ?category= and other filters are ignored
        stats.count('models')
        return config.models_fault
          ? openRouterError(config.models_fault, 'Service temporarily unavailable')
          : json(200, MODELS_BODY)
      case 'GET /api/v1/generation':
        stats.count('generation')
        return generation(req, query)
    }
    stats.count('other')
    return openRouterError(404, 'Not Found')
  }

  return {
    handler,
    stats: (summary = false) => stats.snapshot(summary),
    reset: () => {
      stats.reset()
      cache.clear()
    },
    configure,
    config: () => ({ ...config }),
  }
}

export interface StartOptions extends SimulatorOptions {
  /** 0 (the default) picks a free port. */
  port?: number
  hostname?: string
}

export interface RunningSimulator extends Simulator {
  /** e.g. http://127.0.0.1:54340 */
  url: string
  /** url + '/api/v1', what an OpenRouter client takes as its base URL. */
  baseUrl: string
  close(): Promise<void>
}

export function startSimulator(opts: StartOptions = {}): Promise<RunningSimulator> {
  const sim = createSimulator(opts)
  const hostname = opts.hostname ?? '127.0.0.1'
  return new Promise((resolve) => {
    const server = Deno.serve({
      port: opts.port ?? 0,
      hostname,
      onListen({ port }) {
        const url = `http://${hostname}:${port}`
        resolve({ ...sim, url, baseUrl: `${url}/api/v1`, close: () => server.shutdown() })
      },
      onError(error) {
        if (!(error instanceof StreamCut)) console.error('openrouter-sim:', error)
        return openRouterError(500, 'Internal simulator error')
      },
    }, sim.handler)
  })
}
