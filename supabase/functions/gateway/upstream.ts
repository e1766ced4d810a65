// OpenRouter, as the gateway sees it: chat completions with the operator's key and app attribution,
// generation stats (the billing fallback after a disconnect), the model catalog, and the mapping of
// upstream failures to the errors our clients get. Nothing of the client's request but its body is
// forwarded: not its Authorization, not its other headers.

import { maskKeysIn } from '../_shared/keys.ts'
import { config } from './config.ts'
import { costText, parseWithSources } from './gateway-usage.ts'
import { ApiError } from './errors.ts'
import { tokenCount } from './hold.ts'

const base = config.openRouterBaseUrl

// Built once per isolate: every upstream call carries the same identity.
const IDENTITY: Record<string, string> = {
  authorization: `Bearer ${config.openRouterKey ?? ''}`,
  ...(config.siteUrl ? { 'http-referer': config.siteUrl } : {}),
  ...(config.siteName ? { 'x-title': config.siteName } : {}),
}
const CHAT_HEADERS: Record<string, string> = { ...IDENTITY, 'content-type': 'application/json' }

export class UpstreamTimeout extends Error {
  override name = 'UpstreamTimeout'
}

/**
 * POSTs a chat completion. Resolves once the response headers arrive; `timeoutMs` bounds the wait
 * for them (and, until `done()` is called, the body too). `abort()` stops the upstream request,
 * which is how a client disconnect stops spending.
 */
export function postChat(body: string, timeoutMs: number): UpstreamCall {
  return new UpstreamCall(body, timeoutMs)
}

export class UpstreamCall {
  readonly controller = new AbortController()
  readonly response: Promise<Response>
  #timer: ReturnType<typeof setTimeout> | undefined
  #timedOut = false

  constructor(body: string, timeoutMs: number) {
    this.#timer = setTimeout(() => {
      this.#timedOut = true
      this.controller.abort(new UpstreamTimeout('upstream timed out'))
    }, timeoutMs)
    this.response = fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: CHAT_HEADERS,
      body,
      signal: this.controller.signal,
    }).catch((err) => {
      this.done()
      throw this.#timedOut ? new UpstreamTimeout('upstream timed out') : err
    })
  }

  get timedOut(): boolean {
    return this.#timedOut
  }

  /** Stops the timeout (the caller now bounds the body itself). */
  done(): void {
    clearTimeout(this.#timer)
  }

  abort(): void {
    this.done()
    this.controller.abort()
  }
}

export interface GenerationStats {
  model: string | null
  /** Native counts (the provider's tokenizer, what OpenRouter bills). */
  promptTokens: number
  completionTokens: number
  cachedTokens: number
  reasoningTokens: number
  webSearchRequests: number
  /** total_cost, USD, exact decimal text as sent. */
  cost: string | null
}

/** OpenRouter's stats for a finished generation, or null while they are not (yet) available. */
export async function generationStats(id: string): Promise<GenerationStats | null> {
  const res = await fetch(`${base}/generation?id=${encodeURIComponent(id)}`, {
    headers: IDENTITY,
    signal: AbortSignal.timeout(10_000),
  })
  if (!res.ok) {
    await res.body?.cancel()
    return null
  }
  const text = await res.text().catch(() => '')
  let parsed: ReturnType<typeof parseWithSources>
  try {
    parsed = parseWithSources(text, 'total_cost')
  } catch {
    return null
  }
  // deno-lint-ignore no-explicit-any -- OpenRouter's GenerationResponse; a few fields are read
  const d = (parsed.value as any)?.data
  // Stats for another generation (a broken or hostile upstream, a cache keyed wrong) are not this
  // one's: billed, they would charge this hold for that generation, another account's perhaps.
  if (!d || d.id !== id) return null
  // Counts settle_request would refuse make the stats unusable (the caller falls back to its own
  // count; the reconcile leaves the hold pending): settled, they would fail, and stop the run.
  const prompt = tokenCount(d.native_tokens_prompt ?? d.tokens_prompt)
  const completion = tokenCount(d.native_tokens_completion ?? d.tokens_completion)
  if (prompt === undefined || completion === undefined) return null
  const n = (x: unknown) => tokenCount(x) ?? 0
  return {
    model: typeof d.model === 'string' ? d.model : null,
    promptTokens: prompt,
    completionTokens: completion,
    cachedTokens: n(d.native_tokens_cached),
    reasoningTokens: n(d.native_tokens_reasoning),
    // One search per request that searched (the web plugin's, or the model's own).
    webSearchRequests: d.web_search_engine || n(d.num_search_results) > 0 ? 1 : 0,
    cost: costText(parsed.sourceOf(d)),
  }
}

/** GET /models as text (the catalog is stored and served without re-serialising it). */
export async function fetchModelsText(): Promise<string> {
  const res = await fetch(`${base}/models`, {
    headers: IDENTITY,
    signal: AbortSignal.timeout(15_000),
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`upstream /models answered ${res.status}`)
  return text
}

const MAX_MESSAGE = 500

/**
 * Upstream's error message, passed on to the client: cut short, and with anything key-shaped masked
 * (an upstream error may quote the request, e.g. an unknown model named like a key).
 */
function upstreamMessage(text: string): string | undefined {
  try {
    const message = JSON.parse(text)?.error?.message
    return typeof message === 'string' && message
      ? maskKeysIn(message).slice(0, MAX_MESSAGE)
      : undefined
  } catch {
    return undefined
  }
}

/**
 * The error a client gets for an upstream non-2xx. The operator's own problems with OpenRouter
 * (its key refused, its OpenRouter credits exhausted) are 503s: a client's 401/402 must mean the
 * client's key or credits, never ours.
 */
export function upstreamError(status: number, text: string, headers: Headers): ApiError {
  const message = upstreamMessage(text)
  if (status === 429) {
    const retry = Number(headers.get('retry-after'))
    return new ApiError(429, message ?? 'The upstream provider is rate limited; retry shortly', {
      code: 'upstream_rate_limited',
      headers: {
        'retry-after': String(Number.isFinite(retry) && retry > 0 ? Math.ceil(retry) : 1),
      },
    })
  }
  if (status === 401 || status === 402 || status === 403) {
    return new ApiError(503, 'The upstream provider is unavailable', {
      code: 'upstream_unavailable',
    })
  }
  if (status === 400 || status === 404 || status === 413 || status === 422) {
    return new ApiError(
      status === 422 ? 400 : status,
      message ?? 'The upstream provider refused the request',
      {
        code: 'upstream_invalid_request',
      },
    )
  }
  if (status === 408) return upstreamTimeoutError()
  if (status === 503) {
    return new ApiError(503, message ?? 'The upstream provider is unavailable', {
      code: 'upstream_unavailable',
    })
  }
  return new ApiError(502, message ?? 'The upstream provider returned an error', {
    code: 'upstream_error',
  })
}

export function upstreamTimeoutError(): ApiError {
  return new ApiError(503, 'The upstream provider did not answer in time', {
    code: 'upstream_timeout',
  })
}

export function upstreamUnreachableError(): ApiError {
  return new ApiError(502, 'The upstream provider could not be reached', {
    code: 'upstream_unreachable',
  })
}

export function upstreamMalformedError(): ApiError {
  return new ApiError(502, 'The upstream provider returned a malformed response', {
    code: 'upstream_malformed',
  })
}
