// A chat completion end to end: admit and hold (one SQL call), forward to OpenRouter with the token
// cap the hold covers, then either stream it through metered (sse.ts) or return the JSON with
// `gateway_usage` added, settling exactly once. Upstream failures become OpenAI-style errors; the
// hold is voided when nothing was generated, and settled for what was generated otherwise.

import { begin } from './admission.ts'
import {
  type ChatCompletionRequest,
  estimatePromptTokens,
  requestedMaxTokens,
  requestedModel,
  upstreamBody,
} from './chat-request.ts'
import { config } from './config.ts'
import { ApiError } from './errors.ts'
import { appendMember, charge, gatewayUsageJson } from './gateway-usage.ts'
import type { Hold, Usage } from './hold.ts'
import type { Caller } from './identity.ts'
import type { LogFields } from './log.ts'
import { settleWithoutUsage } from './recovery.ts'
import { rateLimitHeaders } from './refusals.ts'
import { settle, voidHold } from './settlement.ts'
import * as notes from './hold-notes.ts'
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
  const promptEstimate = estimatePromptTokens(body.messages)
  if (opts.log) {
    opts.log.model = model
    opts.log.stream = body.stream === true
  }
  const hold = await begin(who, model, requestedMaxTokens(body), promptEstimate)
  if (opts.log) {
    opts.log.user_id = hold.user_id
    opts.log.key_prefix = hold.key_prefix
    opts.log.hold_id = hold.hold_id
  }
  const limits = rateLimitHeaders(hold.limits)
  try {
    return await forward(hold, body, text, model, promptEstimate, startedAt, limits, opts)
  } catch (err) {
    throw err instanceof ApiError ? withHeaders(err, limits) : err
  }
}

async function forward(
  hold: Hold,
  body: ChatCompletionRequest,
  requestText: string,
  model: string,
  promptEstimate: number,
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
      countedPromptTokens: promptEstimate,
      countedCompletionTokens: 0,
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
      promptEstimate,
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

  const usage = doc.usage
  if (!usage || typeof usage !== 'object') {
    lost()
    opts.onResult?.({
      ...doc,
      gateway_usage: JSON.parse(gatewayUsageJson(null, null, hold.key_prefix)),
    })
    return new Response(
      appendMember(text, 'gateway_usage', gatewayUsageJson(null, null, hold.key_prefix)),
      { headers: { ...JSON_HEADERS, ...limits, ...idHeader } },
    )
  }
  const settled: Usage = {
    model: typeof doc.model === 'string' ? doc.model : model,
    promptTokens: usage.prompt_tokens ?? promptEstimate,
    completionTokens: usage.completion_tokens ?? 0,
    cost: typeof usage.cost === 'number' ? usage.cost : null,
    generationId: generationId ?? (typeof doc.id === 'string' ? doc.id : null),
    settledBy: 'usage',
    outcome: 'success',
    latencyMs: Date.now() - startedAt,
  }
  // The response does not wait for the settle (one committed round trip): it reports the charge
  // the settle will make, computed from the hold (the balance after it is as of admission).
  settle(hold, settled, opts.log !== undefined)
  const { credits, balanceAfter } = charge(hold, settled)
  if (opts.log) {
    opts.log.prompt_tokens = settled.promptTokens
    opts.log.completion_tokens = settled.completionTokens
    opts.log.credits_charged = credits
  }
  const gatewayUsage = gatewayUsageJson(credits, balanceAfter, hold.key_prefix)
  opts.onResult?.({ ...doc, gateway_usage: JSON.parse(gatewayUsage) })
  return new Response(appendMember(text, 'gateway_usage', gatewayUsage), {
    headers: { ...JSON_HEADERS, ...limits, ...idHeader },
  })
}
