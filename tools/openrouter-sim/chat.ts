// POST /api/v1/chat/completions: validation, faults, and the JSON or SSE response.

import { type Price, resolveModel } from './catalog.ts'
import { json, openRouterError, sleep, StreamCut } from './http.ts'
import { applyFault, parseModel } from './spec.ts'
import type { Generation, Stats } from './stats.ts'
import { completionText, completionTokens, priceTokens, promptTokens, tokenText } from './tokens.ts'

export interface ChatContext {
  stats: Stats
  /** Completion length when the request has no `~len-N` (config `completion_tokens`). */
  defaultTokens(): number
  newId(): string
  /** A 401 response when the request's bearer is missing or wrong. */
  unauthorized(req: Request): Response | undefined
}

/** Body faults stream (or, for `stream-cut`, send) at most this many tokens before breaking. */
export const FAULT_TOKENS = 3

const STATUS_FAULTS: Record<string, string> = {
  '401': 'User not found.',
  '402': 'Insufficient credits. Add more using https://openrouter.ai/settings/credits',
  '429': 'Rate limit exceeded: too many requests. Please retry shortly.',
  '502': 'Provider returned error',
  '503': 'No allowed providers are available for the selected model.',
}
const PROVIDER_ERROR = { code: 502, message: 'Provider returned error' }

// Headers worth checking in tests of what a gateway forwards.
const RECORDED_HEADERS = ['authorization', 'http-referer', 'x-title', 'x-sim-fault']

function recordedHeaders(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of RECORDED_HEADERS) {
    const value = headers.get(name)
    if (value !== null) out[name] = name === 'authorization' ? maskBearer(value) : value
  }
  return out
}

/** Keeps the scheme and the last 4 characters, enough to tell keys apart. */
function maskBearer(value: string): string {
  const [scheme, key = ''] = value.split(' ', 2)
  return `${scheme} ****${key.length > 8 ? key.slice(-4) : ''}`
}

export async function handleChat(req: Request, ctx: ChatContext): Promise<Response> {
  const startedAt = Date.now()
  const text = await req.text()
  // deno-lint-ignore no-explicit-any -- an arbitrary client body, checked field by field
  let body: any
  try {
    body = JSON.parse(text)
  } catch {
    body = undefined
  }
  ctx.stats.receive({ body: body ?? text, headers: recordedHeaders(req.headers) })

  const denied = ctx.unauthorized(req)
  if (denied) return denied
  if (typeof body !== 'object' || body === null) return openRouterError(400, 'Invalid JSON body')
  if (typeof body.model !== 'string' || body.model === '') {
    return openRouterError(400, 'No model provided')
  }
  const spec = parseModel(body.model)
  const resolved = spec && resolveModel(spec.id)
  if (!spec || !resolved) return openRouterError(400, `${body.model} is not a valid model ID`)
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    return openRouterError(400, 'messages must be a non-empty array')
  }
  const headerFault = req.headers.get('x-sim-fault')
  if (headerFault !== null && !applyFault(spec, headerFault)) {
    return openRouterError(400, `Unknown X-Sim-Fault mode: ${headerFault}`)
  }

  if (spec.slowMs > 0) {
    await sleep(spec.slowMs, req.signal)
    // The client gave up while we held the headers; 499 marks that in chat_by_status.
    if (req.signal.aborted) return new Response(null, { status: 499 })
  }
  const statusMessage = spec.fault && STATUS_FAULTS[spec.fault]
  if (statusMessage) {
    const retry = spec.fault === '429' ? { 'retry-after': String(spec.retryAfterS) } : undefined
    return openRouterError(Number(spec.fault), statusMessage, retry)
  }

  const tokens = completionTokens(body, ctx.defaultTokens())
  const g: Generation = {
    id: ctx.newId(),
    model: spec.id,
    provider: resolved.provider,
    stream: body.stream === true,
    promptTokens: promptTokens(body),
    completionTokens: 0,
    cancelled: false,
    fault: spec.fault ?? (spec.slowMs > 0 ? 'slow' : null),
    totalCost: 0,
    finishReason: null,
    origin: req.headers.get('http-referer') ?? '',
    startedAt,
    heldMs: Date.now() - startedAt,
  }
  ctx.stats.addGeneration(g)
  const plan: Plan = {
    tokens,
    finishReason: tokens < (spec.len ?? ctx.defaultTokens()) ? 'length' : 'stop',
    delayMs: spec.delayMs,
    price: resolved.price,
  }
  return g.stream ? streamResponse(g, plan) : completeResponse(g, plan)
}

interface Plan {
  tokens: number
  finishReason: 'stop' | 'length'
  delayMs: number
  price: Price
}

function end(g: Generation, plan: Plan, finishReason: string | null): void {
  g.endedAt = Date.now()
  g.firstTokenAt ??= g.endedAt
  g.finishReason = finishReason
  g.totalCost = priceTokens(plan.price, g.promptTokens, g.completionTokens)
}

function usage(g: Generation) {
  return {
    prompt_tokens: g.promptTokens,
    completion_tokens: g.completionTokens,
    total_tokens: g.promptTokens + g.completionTokens,
    cost: g.totalCost,
    is_byok: false,
    prompt_tokens_details: { cached_tokens: 0 },
    cost_details: { upstream_inference_cost: null },
    completion_tokens_details: { reasoning_tokens: 0 },
  }
}

const created = (g: Generation) => Math.floor(g.startedAt / 1000)

function completeResponse(g: Generation, plan: Plan): Response {
  const headers = { 'x-generation-id': g.id }
  const breaks = g.fault === 'stream-error' || g.fault === 'stream-cut'
  g.completionTokens = breaks ? Math.min(FAULT_TOKENS, plan.tokens) : plan.tokens
  end(g, plan, breaks ? 'error' : plan.finishReason)
  // A non-streamed generation that fails mid-way is a 200 carrying the error (OpenRouter docs).
  if (g.fault === 'stream-error') return json(200, { error: PROVIDER_ERROR }, headers)

  const body = JSON.stringify({
    id: g.id,
    provider: g.provider,
    model: g.model,
    object: 'chat.completion',
    created: created(g),
    choices: [{
      logprobs: null,
      finish_reason: g.finishReason,
      native_finish_reason: g.finishReason,
      index: 0,
      message: {
        role: 'assistant',
        content: completionText(g.completionTokens),
        refusal: null,
        reasoning: null,
      },
    }],
    usage: usage(g),
  })
  // Half of a JSON object is never valid JSON.
  if (g.fault === 'malformed') return json(200, body.slice(0, body.length >> 1), headers)
  if (g.fault === 'stream-cut') {
    return new Response(cutAfter(ENCODER.encode(body.slice(0, body.length >> 1))), {
      headers: { 'content-type': 'application/json', ...headers },
    })
  }
  return json(200, body, headers)
}

const ENCODER = new TextEncoder()
const PROCESSING = ENCODER.encode(': OPENROUTER PROCESSING\n\n')
const SSE_HEADERS = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' }

// A cut body errors only after this pause. OpenRouter's cuts come mid-body, after the headers and the
// first bytes reached the client; erroring at once let Deno's server drop the connection before it
// had flushed the headers, now and then, so the client saw no response at all while a generation was
// recorded (1 request in 10,000 of the soak, scripts/soak.sh).
const CUT_DELAY_MS = 20

/** A body that sends `bytes` and then fails, which aborts the HTTP connection mid-body. */
function cutAfter(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(c) {
      c.enqueue(bytes)
    },
    async pull(c) {
      await sleep(CUT_DELAY_MS)
      c.error(new StreamCut())
    },
  })
}

function streamResponse(g: Generation, plan: Plan): Response {
  // Every chunk shares this prefix; built once so each token costs one concatenation.
  const base = `{"id":"${g.id}","provider":${JSON.stringify(g.provider)},"model":${
    JSON.stringify(g.model)
  },"object":"chat.completion.chunk","created":${created(g)}`
  const tokenHead = `data: ${base},"choices":[{"index":0,"delta":{"role":"assistant","content":"`
  const tokenTail = '"},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
  const stopAt = g.fault ? Math.min(FAULT_TOKENS, plan.tokens) : plan.tokens
  const cancel = new AbortController()

  const body = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(PROCESSING)
    },
    // One token per pull, so generation follows the client's pace and stops on cancel.
    async pull(c) {
      if (g.completionTokens < stopAt) {
        if (plan.delayMs > 0) {
          await sleep(plan.delayMs, cancel.signal)
          if (cancel.signal.aborted) return
        }
        g.firstTokenAt ??= Date.now()
        c.enqueue(ENCODER.encode(tokenHead + tokenText(g.completionTokens) + tokenTail))
        g.completionTokens++
        return
      }
      switch (g.fault) {
        case 'stream-error':
          end(g, plan, 'error')
          c.enqueue(ENCODER.encode(
            `data: ${base},"error":${JSON.stringify(PROVIDER_ERROR)},"choices":[{"index":0,` +
              '"delta":{"content":""},"finish_reason":"error","native_finish_reason":null}]}\n\n',
          ))
          return c.close()
        case 'stream-cut':
          await sleep(CUT_DELAY_MS, cancel.signal)
          if (cancel.signal.aborted) return
          end(g, plan, 'error')
          return c.error(new StreamCut())
        case 'malformed':
          end(g, plan, 'error')
          c.enqueue(ENCODER.encode(`data: ${base.slice(0, base.length >> 1)}\n\n`))
          return c.close()
        default: {
          end(g, plan, plan.finishReason)
          const finish =
            `"finish_reason":"${g.finishReason}","native_finish_reason":"${g.finishReason}"`
          c.enqueue(ENCODER.encode(
            `data: ${base},"choices":[{"index":0,"delta":{"role":"assistant","content":""},` +
              `${finish},"logprobs":null}]}\n\n` +
              `data: ${base},"choices":[],"usage":${JSON.stringify(usage(g))}}\n\n` +
              'data: [DONE]\n\n',
          ))
          return c.close()
        }
      }
    },
    // The client went away: stop generating and bill what was produced so far.
    cancel() {
      cancel.abort()
      if (g.endedAt !== undefined) return
      g.cancelled = true
      end(g, plan, null)
    },
  })
  return new Response(body, { headers: { ...SSE_HEADERS, 'x-generation-id': g.id } })
}
