// POST /api/v1/chat/completions: validation, routing, faults, and the JSON or SSE response.

import { charge, usageJson } from './billing.ts'
import type { CacheUse, PromptCache } from './cache.ts'
import { json, openRouterError, sleep, StreamCut } from './http.ts'
import { usdNumber } from './money.ts'
import {
  type Candidate,
  checkWebPlugin,
  reasoningBudget,
  reasons,
  route,
  showsReasoning,
  webSearch,
} from './route.ts'
import { applyFault, type Spec, type StatusFault } from './spec.ts'
import type { Generation, Stats } from './stats.ts'
import {
  completionPlan,
  completionText,
  maxTokens,
  measurePrompt,
  type PromptMeasure,
  reasoningText,
  reasoningTokenText,
  tokenText,
  WEB_RESULT_TOKENS,
} from './tokens.ts'

export interface ChatContext {
  stats: Stats
  cache: PromptCache
  /** Completion length when the request has no `~len-N` (config `completion_tokens`). */
  defaultTokens(): number
  /** Reasoning length when neither `~reason-N` nor reasoning.max_tokens says (config). */
  defaultReasoningTokens(): number
  newId(): string
  /** A 401 response when the request's bearer is missing or wrong. */
  unauthorized(req: Request): Response | undefined
}

/** Body faults stream (or, for `stream-cut`, send) at most this many chunks before breaking. */
export const FAULT_TOKENS = 3

const STATUS_FAULTS: Record<StatusFault, string> = {
  '401': 'User not found.',
  '402': 'Insufficient credits. Add more using https://openrouter.ai/settings/credits',
  '429': 'Rate limit exceeded: too many requests. Please retry shortly.',
  '502': 'Provider returned error',
  '503': 'No allowed providers are available for the selected model.',
}
/** Account-level faults end the request; the others make OpenRouter try the next model. */
const ACCOUNT_FAULTS = new Set(['401', '402'])
const PROVIDER_ERROR = { code: 502, message: 'Provider returned error' }

const MESSAGE_ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool', 'function'])

// Headers worth checking in tests of what a gateway forwards.
const RECORDED_HEADERS = ['authorization', 'http-referer', 'x-title', 'x-sim-fault', 'x-sim-route']

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

function statusFault(spec: Spec): StatusFault | undefined {
  return spec.fault && spec.fault in STATUS_FAULTS ? spec.fault as StatusFault : undefined
}

function faultResponse(spec: Spec): Response {
  const fault = statusFault(spec)!
  const retry = fault === '429' ? { 'retry-after': String(spec.retryAfterS) } : undefined
  return openRouterError(Number(fault), STATUS_FAULTS[fault], retry)
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

/**
 * A 400 message when the parts of the body that are billed as prompt are not what OpenRouter's
 * request schema accepts (it rejects them rather than bill them): messages, content parts,
 * tools, functions, response_format.
 */
function checkBody(body: Json): string | undefined {
  const messages = body.messages
  if (!Array.isArray(messages) || messages.length === 0) {
    return 'messages must be a non-empty array'
  }
  for (const m of messages) {
    if (!isObject(m) || !MESSAGE_ROLES.has(m.role as string)) {
      return 'each message must be an object with a valid role'
    }
    const c = m.content
    if (c !== undefined && c !== null && typeof c !== 'string' && !Array.isArray(c)) {
      return 'message content must be a string, an array of content parts or null'
    }
    if (Array.isArray(c) && !c.every((part) => isObject(part) && typeof part.type === 'string')) {
      return 'each content part must be an object with a type'
    }
  }
  if (body.tools !== undefined && body.tools !== null) {
    const ok = Array.isArray(body.tools) &&
      body.tools.every((t: unknown) =>
        isObject(t) && typeof t.type === 'string' &&
        (t.type !== 'function' || (isObject(t.function) && typeof t.function.name === 'string'))
      )
    if (!ok) return 'tools must be an array of tool objects ({type, function: {name, …}})'
  }
  if (body.functions !== undefined && body.functions !== null) {
    const ok = Array.isArray(body.functions) &&
      body.functions.every((f: unknown) => isObject(f) && typeof f.name === 'string')
    if (!ok) return 'functions must be an array of function objects ({name, …})'
  }
  const format = body.response_format
  if (
    format !== undefined && format !== null &&
    !(isObject(format) && typeof format.type === 'string')
  ) {
    return 'response_format must be an object with a type'
  }
}

/** What one candidate would bill for this request. */
interface Quote {
  candidate: Candidate
  promptTokens: number
  cache: CacheUse
  web: { results: number; native: boolean } | undefined
  reasoning: number
  content: number
  finishReason: 'stop' | 'length'
  showReasoning: boolean
  cost: bigint
}

// deno-lint-ignore no-explicit-any -- an arbitrary client body, checked field by field
type Json = any

function quote(
  c: Candidate,
  body: Json,
  m: PromptMeasure,
  marked: boolean,
  primary: Spec,
  ctx: ChatContext,
): Quote {
  const web = webSearch(body, c)
  const promptTokens = m.tokens + (web ? web.results * WEB_RESULT_TOKENS : 0)
  const cache = ctx.cache.lookup(c.catalogId, c.resolved.caching, body, m, marked)
  const wantedReasoning = reasons(body, c.resolved)
    ? primary.reason ?? reasoningBudget(body) ?? ctx.defaultReasoningTokens()
    : 0
  const plan = completionPlan(
    { content: primary.len ?? ctx.defaultTokens(), reasoning: wantedReasoning },
    maxTokens(body),
  )
  const cost = charge(c.resolved.price, {
    prompt: promptTokens,
    completion: plan.reasoning + plan.content,
    reasoning: plan.reasoning,
    cached: cache.cached,
    cacheWrite: cache.write,
    cacheWrite1h: cache.write1h,
    audio: m.audioTokens,
    webSearches: web ? 1 : 0,
    webResults: web?.results ?? 0,
    nativeSearch: web?.native ?? false,
  }).total
  return {
    candidate: c,
    promptTokens,
    cache,
    web,
    ...plan,
    showReasoning: showsReasoning(body, c.resolved),
    cost,
  }
}

/**
 * The candidate that serves: a candidate whose own `~fault-` is 429/502/503 fails and OpenRouter
 * falls back to the next; 401/402 are the account's and end the request. Among the candidates
 * that do not fail, `first` takes the first (OpenRouter's order), `dearest`/`cheapest` the one
 * whose usage.cost for this very request is highest/lowest (the earliest on a tie).
 */
function choose(
  candidates: Candidate[],
  mode: string,
  quoteOf: (c: Candidate) => Quote,
): Quote | Response {
  const account = candidates.find((c) => ACCOUNT_FAULTS.has(c.spec.fault ?? ''))
  if (account) return faultResponse(account.spec)
  const healthy = candidates.filter((c) => !statusFault(c.spec))
  if (healthy.length === 0) return faultResponse(candidates[candidates.length - 1].spec)
  if (mode === 'first') return quoteOf(healthy[0])
  let best = quoteOf(healthy[0])
  for (const c of healthy.slice(1)) {
    const q = quoteOf(c)
    if (mode === 'dearest' ? q.cost > best.cost : q.cost < best.cost) best = q
  }
  return best
}

export async function handleChat(req: Request, ctx: ChatContext): Promise<Response> {
  const startedAt = Date.now()
  const text = await req.text()
  let body: Json
  try {
    body = JSON.parse(text)
  } catch {
    body = undefined
  }
  ctx.stats.receive({ body: body ?? text, headers: recordedHeaders(req.headers) })

  const denied = ctx.unauthorized(req)
  if (denied) return denied
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return openRouterError(400, 'Invalid JSON body')
  }
  const routing = route(body)
  if (typeof routing === 'string') return openRouterError(400, routing)
  const problem = checkBody(body) ?? checkWebPlugin(body)
  if (problem) return openRouterError(400, problem)
  const { candidates, primary } = routing

  // The header applies to the request as a whole: a status fault fails it, whatever the model.
  const headerFault = req.headers.get('x-sim-fault')
  const requestSpec: Spec = { ...primary, fault: undefined }
  if (headerFault !== null && !applyFault(requestSpec, headerFault)) {
    return openRouterError(400, `Unknown X-Sim-Fault mode: ${headerFault}`)
  }
  const routeMode = req.headers.get('x-sim-route') ?? primary.route ??
    (routing.router ? 'dearest' : 'first')
  if (!['first', 'dearest', 'cheapest'].includes(routeMode)) {
    return openRouterError(400, `Unknown X-Sim-Route mode: ${routeMode}`)
  }

  if (requestSpec.slowMs > 0) {
    await sleep(requestSpec.slowMs, req.signal)
    // The client gave up while we held the headers; 499 marks that in chat_by_status.
    if (req.signal.aborted) return new Response(null, { status: 499 })
  }
  if (statusFault(requestSpec)) return faultResponse(requestSpec)

  let measure: PromptMeasure
  let chosen: Quote | Response
  try {
    measure = measurePrompt(body)
    const marked = text.includes('"cache_control"')
    chosen = choose(candidates, routeMode, (c) => quote(c, body, measure, marked, primary, ctx))
  } catch (error) {
    // A schema nested deeper than JSON.stringify's stack allows.
    if (error instanceof RangeError) return openRouterError(400, 'Request is nested too deeply')
    throw error
  }
  if (chosen instanceof Response) return chosen
  const served = chosen.candidate
  ctx.cache.store(chosen.cache)

  const g: Generation = {
    id: ctx.newId(),
    model: served.id,
    router: routing.router,
    provider: served.resolved.provider,
    price: served.resolved.price,
    caching: served.resolved.caching,
    stream: body.stream === true,
    promptTokens: chosen.promptTokens,
    cachedTokens: chosen.cache.cached,
    cacheWriteTokens: chosen.cache.write,
    cacheWrite1h: chosen.cache.write1h,
    audioTokens: measure.audioTokens,
    media: measure.images + measure.audioParts + measure.files,
    audioParts: measure.audioParts,
    webSearches: chosen.web ? 1 : 0,
    webResults: chosen.web?.results ?? 0,
    nativeSearch: chosen.web?.native ?? false,
    completionTokens: 0,
    reasoningTokens: 0,
    cancelled: false,
    fault: requestSpec.fault ?? served.spec.fault ??
      (requestSpec.slowMs > 0 ? 'slow' : null),
    totalCost: 0,
    finishReason: null,
    origin: req.headers.get('http-referer') ?? '',
    userAgent: req.headers.get('user-agent'),
    externalUser: typeof body.user === 'string' ? body.user : null,
    startedAt,
    heldMs: Date.now() - startedAt,
  }
  ctx.stats.addGeneration(g)
  const plan: Plan = {
    reasoning: chosen.reasoning,
    content: chosen.content,
    showReasoning: chosen.showReasoning,
    finishReason: chosen.finishReason,
    delayMs: primary.delayMs,
  }
  return g.stream ? streamResponse(g, plan) : completeResponse(g, plan)
}

interface Plan {
  reasoning: number
  content: number
  showReasoning: boolean
  finishReason: 'stop' | 'length'
  delayMs: number
}

/** Records `n` tokens produced in all, reasoning first. */
function produce(g: Generation, plan: Plan, n: number): void {
  g.reasoningTokens = Math.min(n, plan.reasoning)
  g.completionTokens = n
}

/** Bills what was produced so far: the generation's usage.cost and /generation's total_cost. */
function end(g: Generation, finishReason: string | null): void {
  g.endedAt = Date.now()
  g.firstTokenAt ??= g.endedAt
  g.finishReason = finishReason
  g.charge = charge(g.price, counts(g))
  g.totalCost = usdNumber(g.charge.total)
}

export function counts(g: Generation) {
  return {
    prompt: g.promptTokens,
    completion: g.completionTokens,
    reasoning: g.reasoningTokens,
    cached: g.cachedTokens,
    cacheWrite: g.cacheWriteTokens,
    cacheWrite1h: g.cacheWrite1h,
    audio: g.audioTokens,
    webSearches: g.webSearches,
    webResults: g.webResults,
    nativeSearch: g.nativeSearch,
  }
}

function usage(g: Generation) {
  return usageJson(counts(g), g.charge!, g.caching)
}

const created = (g: Generation) => Math.floor(g.startedAt / 1000)

function completeResponse(g: Generation, plan: Plan): Response {
  const headers = { 'x-generation-id': g.id }
  const breaks = g.fault === 'stream-error' || g.fault === 'stream-cut'
  const total = plan.reasoning + plan.content
  produce(g, plan, breaks ? Math.min(FAULT_TOKENS, total) : total)
  end(g, breaks ? 'error' : plan.finishReason)
  // A non-streamed generation that fails mid-way is a 200 carrying the error (OpenRouter docs).
  if (g.fault === 'stream-error') return json(200, { error: PROVIDER_ERROR }, headers)

  const body = JSON.stringify({
    id: g.id,
    provider: g.provider,
    model: g.model,
    object: 'chat.completion',
    created: created(g),
    system_fingerprint: null,
    choices: [{
      logprobs: null,
      finish_reason: g.finishReason,
      native_finish_reason: g.finishReason,
      index: 0,
      message: {
        role: 'assistant',
        content: completionText(g.completionTokens - g.reasoningTokens),
        refusal: null,
        reasoning: plan.showReasoning && g.reasoningTokens > 0
          ? reasoningText(g.reasoningTokens)
          : null,
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
  const reasoningHead = `${tokenHead}","reasoning":"`
  const tokenTail = '"},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}\n\n'
  const total = plan.reasoning + plan.content
  // Hidden reasoning is produced before the first chunk and streams nothing.
  const hidden = plan.showReasoning ? 0 : plan.reasoning
  const stopAt = g.fault ? Math.min(hidden + FAULT_TOKENS, total) : total
  const cancel = new AbortController()
  produce(g, plan, hidden)

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
        const i = g.completionTokens
        c.enqueue(ENCODER.encode(
          i < plan.reasoning
            ? reasoningHead + reasoningTokenText(i) + tokenTail
            : tokenHead + tokenText(i - plan.reasoning) + tokenTail,
        ))
        produce(g, plan, i + 1)
        return
      }
      switch (g.fault) {
        case 'stream-error':
          end(g, 'error')
          c.enqueue(ENCODER.encode(
            `data: ${base},"error":${JSON.stringify(PROVIDER_ERROR)},"choices":[{"index":0,` +
              '"delta":{"content":""},"finish_reason":"error","native_finish_reason":null}]}\n\n',
          ))
          return c.close()
        case 'stream-cut':
          await sleep(CUT_DELAY_MS, cancel.signal)
          if (cancel.signal.aborted) return
          end(g, 'error')
          return c.error(new StreamCut())
        case 'malformed':
          end(g, 'error')
          c.enqueue(ENCODER.encode(`data: ${base.slice(0, base.length >> 1)}\n\n`))
          return c.close()
        default: {
          end(g, plan.finishReason)
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
      end(g, null)
    },
  })
  return new Response(body, { headers: { ...SSE_HEADERS, 'x-generation-id': g.id } })
}
