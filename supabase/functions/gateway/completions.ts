// A chat completion end to end: admit and hold (one SQL call), forward to OpenRouter with the token
// cap the hold covers, then either stream it through metered (sse.ts) or return the JSON with
// `gateway_usage` added, settling exactly once. Upstream failures become OpenAI-style errors; the
// hold is voided when nothing was generated, and settled for what was generated otherwise.

import { begin } from './admission.ts'
import {
  type ChatCompletionRequest,
  estimateCompletionTokens,
  estimatePromptTokens,
  requestedModel,
  type RequestFacts,
  requestFacts,
  upstreamBody,
} from './chat-request.ts'
import { config } from './config.ts'
import { ApiError } from './errors.ts'
import {
  appendMember,
  gatewayUsageJson,
  readUsage,
  usageCounts,
  withClientUsage,
} from './gateway-usage.ts'
import type { Hold, Usage } from './hold.ts'
import type { Caller } from './identity.ts'
import type { LogFields } from './log.ts'
import { settleWithoutUsage } from './recovery.ts'
import { rateLimitHeaders } from './refusals.ts'
import { reportedCharge, SETTLE_RETRY_MS, voidHold } from './settlement.ts'
import * as notes from './open-holds.ts'
import { MeteredStream } from './sse.ts'
import {
  postChat,
  upstreamError,
  upstreamMalformedError,
  UpstreamTimeout,
  upstreamTimeoutError,
  upstreamUnreachableError,
} from './upstream.ts'

export interface CompletionOptions {
  /** Bound on the wait for upstream headers (and a non-streamed body). */
  timeoutMs: number
  /** The request's log fields, to which the admitted hold is added. */
  log?: LogFields
  /** Receives the body of a successful non-streamed completion (for Idempotency-Key replays). */
  onResult?: (body: Record<string, unknown>) => void
}

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  // no-transform also keeps Deno from compressing, which would hold chunks back.
  'cache-control': 'no-cache, no-transform',
}
const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8' }

/** Adds headers (the x-ratelimit-* ones) to an error on its way out. */
function withHeaders(err: ApiError, headers: Record<string, string>): ApiError {
  for (const [name, value] of Object.entries(headers)) err.headers[name] ??= value
  return err
}

/**
 * How long the function may keep a request alive, so that its hold outlives it: upstream's headers
 * (GATEWAY_UPSTREAM_TIMEOUT_MS), the longest stream (GATEWAY_STREAM_MAX_SECONDS), then the
 * /generation lookups and the settle's retries while the database is unreachable.
 */
export function requestLifetimeSeconds(): number {
  const lookups = config.generationLookupDelaysMs.reduce((a, b) => a + b, 0)
  return Math.ceil(
    (config.upstreamTimeoutMs + lookups + SETTLE_RETRY_MS) / 1000 + config.streamMaxSeconds,
  )
}

/** `body` is the validated request, `text` the JSON it was parsed from (forwarded as written). */
export async function chatCompletion(
  who: Caller,
  body: ChatCompletionRequest,
  text: string,
  opts: CompletionOptions,
): Promise<Response> {
  const startedAt = Date.now()
  if (!config.openRouterKey) {
    // A deployment without its OpenRouter key: refuse before holding anything.
    throw new ApiError(503, 'The upstream provider is not configured', {
      code: 'upstream_unavailable',
    })
  }
  const model = requestedModel(body)
  const facts = requestFacts(body, text, requestLifetimeSeconds())
  if (opts.log) {
    opts.log.model = model
    opts.log.stream = body.stream === true
  }
  const hold = await begin(who, facts)
  if (opts.log) {
    opts.log.user_id = hold.user_id
    opts.log.key_prefix = hold.key_prefix
    opts.log.hold_id = hold.hold_id
  }
  const limits = rateLimitHeaders(hold.limits)
  try {
    return await forward(hold, body, text, model, facts, startedAt, limits, opts)
  } catch (err) {
    throw err instanceof ApiError ? withHeaders(err, limits) : err
  }
}

async function forward(
  hold: Hold,
  body: ChatCompletionRequest,
  requestText: string,
  model: string,
  facts: RequestFacts,
  startedAt: number,
  limits: Record<string, string>,
  opts: CompletionOptions,
): Promise<Response> {
  const call = postChat(upstreamBody(requestText, body, hold.max_tokens), opts.timeoutMs)
  let res: Response
  try {
    res = await call.response
  } catch (err) {
    // Nothing came back, so nothing is known to have been generated: release the hold.
    const timedOut = err instanceof UpstreamTimeout
    voidHold(hold, timedOut ? 'upstream_timeout' : 'upstream_unreachable')
    throw timedOut ? upstreamTimeoutError() : upstreamUnreachableError()
  }

  const generationId = res.headers.get('x-generation-id')
  // Noted at once: if this worker dies before the settle, the reconcile bills it by this id.
  notes.generation(hold, generationId)
  const idHeader: Record<string, string> = generationId ? { 'x-generation-id': generationId } : {}
  // Errors after upstream answered name its generation, for support and reconciliation.
  const fail = (err: ApiError) => withHeaders(err, idHeader)
  // A generation that started but whose usage we cannot read: bill it from OpenRouter's stats.
  const lost = () =>
    settleWithoutUsage(hold, {
      model,
      generationId,
      countedPromptTokens: estimatePromptTokens(body.messages),
      countedCompletionTokens: 0,
      images: facts.parts.images,
      outcome: 'upstream_error',
      latencyMs: Date.now() - startedAt,
    })

  if (!res.ok) {
    const text = await res.text().catch(() => '')
    call.done()
    // An upstream refusal generated nothing (OpenRouter does not bill errors).
    voidHold(hold, `upstream_${res.status}`)
    throw fail(upstreamError(res.status, text, res.headers))
  }

  const isSse = (res.headers.get('content-type') ?? '').includes('text/event-stream')
  if (body.stream && isSse && res.body) {
    // From here the stream's own idle timeout bounds upstream.
    call.done()
    const stream = new MeteredStream(res.body, {
      hold,
      model,
      promptEstimate: estimatePromptTokens(body.messages),
      images: facts.parts.images,
      generationId,
      startedAt,
      call,
      idleTimeoutMs: config.streamIdleTimeoutMs,
      deadline: startedAt + config.streamMaxSeconds * 1000,
      stallMs: config.clientStallSeconds * 1000,
    })
    return new Response(stream.readable, { headers: { ...SSE_HEADERS, ...limits, ...idHeader } })
  }

  let text: string
  try {
    text = await res.text()
  } catch (err) {
    lost()
    throw fail(
      err instanceof UpstreamTimeout || call.timedOut
        ? upstreamTimeoutError()
        : upstreamMalformedError(),
    )
  } finally {
    call.done()
  }

  // deno-lint-ignore no-explicit-any -- OpenRouter's completion; only usage/model/error are read
  let doc: any
  try {
    doc = JSON.parse(text)
  } catch {
    lost()
    throw fail(upstreamMalformedError())
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    lost()
    throw fail(upstreamMalformedError())
  }
  // OpenRouter reports a generation that failed after it started as a 200 carrying an error.
  if (doc.error) {
    lost()
    const status = Number(doc.error.code)
    throw fail(upstreamError(status >= 400 && status <= 599 ? status : 502, text, res.headers))
  }

  const read = doc.usage && typeof doc.usage === 'object' ? readUsage(text) : undefined
  if (!read) {
    lost()
    const gatewayUsage = gatewayUsageJson(null, null, hold.key_prefix)
    opts.onResult?.({ ...doc, gateway_usage: JSON.parse(gatewayUsage) })
    return new Response(
      appendMember(text, 'gateway_usage', gatewayUsage),
      { headers: { ...JSON_HEADERS, ...limits, ...idHeader } },
    )
  }
  const counts = usageCounts(read.usage, read.costText)
  const servedModel = typeof doc.model === 'string' ? doc.model : model
  const servedId = generationId ?? (typeof doc.id === 'string' ? doc.id : null)
  // OpenRouter always counts the completion. A usage without a count SQL can take (left out, not a
  // number, beyond its range) is billed as a lost usage, from /generation or else by our own
  // count of what came back: 0 completion tokens would let the generation go uncharged.
  if (counts.completionTokens === undefined) {
    settleWithoutUsage(hold, {
      model: servedModel,
      generationId: servedId,
      countedPromptTokens: counts.promptTokens ?? estimatePromptTokens(body.messages),
      countedCompletionTokens: estimateCompletionTokens(doc.choices),
      images: facts.parts.images,
      outcome: 'success',
      latencyMs: Date.now() - startedAt,
    })
    const out = appendMember(
      withClientUsage(text, read.usage, null, read.at),
      'gateway_usage',
      gatewayUsageJson(null, null, hold.key_prefix),
    )
    opts.onResult?.(JSON.parse(out))
    return new Response(out, { headers: { ...JSON_HEADERS, ...limits, ...idHeader } })
  }
  const settled: Usage = {
    ...counts,
    model: servedModel,
    promptTokens: counts.promptTokens ?? facts.prompt_bound,
    completionTokens: counts.completionTokens,
    images: facts.parts.images,
    generationId: servedId,
    settledBy: 'usage',
    outcome: 'success',
    latencyMs: Date.now() - startedAt,
  }
  const reported = await reportedCharge(hold, settled, opts.log !== undefined)
  if (opts.log) {
    opts.log.prompt_tokens = settled.promptTokens
    opts.log.completion_tokens = settled.completionTokens
    opts.log.credits_charged = reported?.credits
  }
  const gatewayUsage = gatewayUsageJson(reported, settled, hold.key_prefix)
  const out = appendMember(
    withClientUsage(text, read.usage, reported?.usd ?? null, read.at),
    'gateway_usage',
    gatewayUsage,
  )
  opts.onResult?.(JSON.parse(out))
  return new Response(out, { headers: { ...JSON_HEADERS, ...limits, ...idHeader } })
}
