// The chat completions request: the OpenAI body validated with zod where the gateway depends on a
// field (model, messages, stream, token caps), everything else OpenRouter accepts passed through
// untouched (`tools`, `response_format`, `provider`, `reasoning`, `models`, `transforms`, …). Also
// the request's facts the hold is sized from (requestFacts), and the body as it goes upstream.

import { Buffer } from 'node:buffer'
import { z } from '@hono/zod-openapi'
import { type Names, namesOf, topLevelMembers } from './json-text.ts'

const ContentPart = z.looseObject({ type: z.string() })

const Message = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool', 'function']),
  content: z.union([z.string(), z.array(ContentPart), z.null()]).optional(),
}).openapi('ChatMessage')

/** The most web results a request may ask for (the facts' range: a hold covers at most this many). */
export const MAX_WEB_RESULTS = 100

const tokenCap = z.number().int().min(1).max(10_000_000)

export const ChatCompletionRequest = z.looseObject({
  model: z.string().min(1).max(256).optional().openapi({ example: 'openai/gpt-4o-mini' }),
  /** OpenRouter's fallback list; the first entry sizes the hold when `model` is absent. */
  models: z.array(z.string().min(1).max(256)).min(1).max(16).optional(),
  messages: z.array(Message).min(1).max(100_000),
  stream: z.boolean().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullable().optional(),
  max_tokens: tokenCap.nullable().optional(),
  max_completion_tokens: tokenCap.nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().min(0).max(1).nullable().optional(),
  // One choice only: the hold covers one completion.
  n: z.literal(1).nullable().optional(),
  /** OpenRouter's plugins; a `web` plugin's max_results sizes the hold's web-search part. */
  plugins: z.array(z.looseObject({
    id: z.string(),
    max_results: z.number().int().min(1).max(MAX_WEB_RESULTS).optional(),
  })).max(16).optional(),
  web_search_options: z.looseObject({}).nullable().optional(),
}).refine((b) => b.model !== undefined || b.models !== undefined, {
  message: 'model is required',
  path: ['model'],
}).refine((b) => new Set([...(b.model ? [b.model] : []), ...(b.models ?? [])]).size <= 16, {
  message: 'model and models name at most 16 different models',
  path: ['models'],
}).openapi('ChatCompletionRequest')

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>

/** The request's facts, as gateway.begin_request takes them (docs/SQL-API.md, "The request path"). */
export interface RequestFacts {
  /** The candidate models, `model` then the fallbacks, deduplicated, without `~…` suffixes. */
  models: string[]
  /** Bytes of the body as it goes upstream, minus inline image/audio data: bounds its text tokens. */
  prompt_bound: number
  /** Non-text parts: each adds its allowance (settings image_part_tokens, …) to the bound. */
  parts: { images: number; audio: number; files: number }
  /** Web-search results the request may pull (the web plugin's max_results, `:online`). */
  web_results: number
  max_tokens: number | null
  /** How long the function may keep this request alive: the hold expires no earlier. */
  lifetime_seconds: number
}

/** Results the web plugin pulls when the request does not say (OpenRouter's default). */
export const DEFAULT_WEB_RESULTS = 5

/**
 * The id a model is priced by: the simulator's fault grammar (`openai/gpt-4o-mini~len-3`) appends
 * `~…` knobs that are not part of the model; variants (`:free`, `:online`) stay, SQL resolves them.
 * Only for pricing: the model goes upstream as the client wrote it.
 */
export function pricedModel(id: string): string {
  const tilde = id.indexOf('~')
  return tilde > 0 ? id.slice(0, tilde) : id
}

/** The candidates: `model` first, then the `models` fallbacks, deduplicated, in order. */
export function candidateModels(body: ChatCompletionRequest): string[] {
  const ids = [...(body.model !== undefined ? [body.model] : []), ...(body.models ?? [])]
  return [...new Set(ids.map(pricedModel))]
}

/**
 * Web-search results the request may pull: a `web` plugin's max_results (default 5),
 * `web_search_options` (5), an `:online` candidate (5; SQL also counts it). 0 otherwise.
 */
export function webResults(body: ChatCompletionRequest, models: string[]): number {
  let results = 0
  for (const plugin of body.plugins ?? []) {
    if (plugin.id === 'web') results = Math.max(results, plugin.max_results ?? DEFAULT_WEB_RESULTS)
  }
  if (body.web_search_options != null) results = Math.max(results, DEFAULT_WEB_RESULTS)
  if (models.some((m) => m.split(':').slice(1).includes('online'))) {
    results = Math.max(results, DEFAULT_WEB_RESULTS)
  }
  return results
}

// The members upstreamBody may add or widen: at most `"max_tokens":2147483647` (24 bytes),
// `"max_completion_tokens":2147483647` (35), `"stream_options":` (17) and `"include_usage":true`
// beside the client's own stream_options (21), and their commas.
const REWRITE_BYTES = 24 + 35 + 17 + 21 + 2 + 4

/**
 * Whether upstreamBody re-serialises the body: its text names a member twice in some object, at any
 * depth (JSON.parse kept the last), or (never seen) names another count of members than JSON.parse
 * made. Such a text is never forwarded as written: a parser upstream that keeps the first of two
 * names would see what the gateway did not count — image parts in the first `content` of a
 * message whose last one is `"hi"`, each part an allowance the hold would lack.
 */
function reserialised(text: string, body: ChatCompletionRequest): boolean {
  return namesOfCached(text).repeated || lastNames.topLevel !== Object.keys(body).length
}
function namesOfCached(text: string): Names {
  if (text !== lastText) {
    lastNames = namesOf(text)
    lastText = text
  }
  return lastNames
}
// The last text asked about: requestFacts and upstreamBody ask about the same one.
let lastText = ''
let lastNames: Names = { repeated: false, topLevel: 0, longer: 0 }

/**
 * The request's facts. `text` is the JSON `body` was parsed from: the body upstream receives is its
 * members, verbatim, with max_tokens/stream_options rewritten (upstreamBody), so its bytes are at
 * most the text's plus the rewritten members'; or, when the text has duplicate members, the body
 * re-serialised, whose bytes can exceed the text's (`1e20` is 21 digits to JSON.stringify): then
 * the greater of the two counts. Verbatim, the same holds upstream: what it renders into the prompt
 * as JSON (tool schemas, response formats, parts it does not know) it renders from the parsed
 * value, so each number written with an exponent counts as printed again (namesOf's `longer`: 4
 * bytes of `1e20` bill 21 tokens). Tokenizers never make fewer than one byte a token, so
 * the bytes bound every text token upstream bills (messages, names, tools, tool calls, schemas,
 * `prediction`, …). Inline image and audio data are taken out of the bound: they count as parts,
 * each with its allowance. Inline file data stays in it (text-like) and counts as a file as well.
 */
export function requestFacts(
  body: ChatCompletionRequest,
  text: string,
  lifetimeSeconds: number,
): RequestFacts {
  let bytes = Buffer.byteLength(text, 'utf8')
  if (reserialised(text, body)) {
    bytes = Math.max(bytes, Buffer.byteLength(JSON.stringify(body), 'utf8'))
  } else {
    // Forwarded as written, but upstream bills a tool's schema (and a part it does not know) as the
    // compact JSON of its parsed value: a number written with an exponent prints longer there.
    bytes += namesOfCached(text).longer
  }
  const parts = { images: 0, audio: 0, files: 0 }
  let inline = 0
  for (const m of body.messages) {
    if (!Array.isArray(m.content)) continue
    for (const part of m.content) {
      switch (part.type) {
        case 'image_url': {
          parts.images++
          const url = (part.image_url as { url?: unknown } | undefined)?.url
          if (typeof url === 'string' && url.startsWith('data:')) inline += url.length
          break
        }
        case 'input_audio': {
          parts.audio++
          const data = (part.input_audio as { data?: unknown } | undefined)?.data
          if (typeof data === 'string') inline += data.length
          break
        }
        case 'file':
          parts.files++
          break
      }
    }
  }
  const models = candidateModels(body)
  return {
    models,
    // (A data URL or base64 is ASCII as JSON.parse returns it: its length is its bytes in the body,
    // or fewer than its escaped form there, so the subtraction never takes out more than it was.)
    prompt_bound: Math.min(2 ** 31 - 1, Math.max(0, bytes + REWRITE_BYTES - inline)),
    parts,
    web_results: webResults(body, models),
    max_tokens: requestedMaxTokens(body),
    lifetime_seconds: Math.min(86_400, Math.max(0, Math.ceil(lifetimeSeconds))),
  }
}

/**
 * Prompt tokens, estimated: 3 + Σ (4 + ⌈UTF-8 bytes of the message's text / 4⌉). Only the last-resort
 * count of a request settled without upstream's usage and without OpenRouter's generation stats
 * (recovery.ts, `stream_count`); holds are sized from the facts' byte bound, never from this.
 * (Buffer.byteLength counts without encoding, natively.)
 */
export function estimatePromptTokens(messages: ChatCompletionRequest['messages']): number {
  let tokens = 3
  for (const m of messages) tokens += 4 + Math.ceil(textBytes(m.content) / 4)
  return tokens
}

/** The UTF-8 bytes of a message's text: a string, or the text parts of a list of parts. */
function textBytes(content: unknown): number {
  if (typeof content === 'string') return Buffer.byteLength(content, 'utf8')
  let bytes = 0
  if (Array.isArray(content)) {
    for (const part of content) {
      if (part?.type === 'text' && typeof part.text === 'string') {
        bytes += Buffer.byteLength(part.text, 'utf8')
      }
    }
  }
  return bytes
}

/**
 * Our count of a JSON completion's tokens, a quarter of its text's bytes as for the prompt: the
 * last resort when upstream's usage leaves the count out and /generation cannot be read.
 * `choices` is upstream's, unchecked: what is not a choice with a message counts nothing.
 */
export function estimateCompletionTokens(choices: unknown): number {
  if (!Array.isArray(choices)) return 0
  let tokens = 0
  for (const c of choices) {
    const message = c !== null && typeof c === 'object'
      ? (c as { message?: unknown }).message
      : null
    if (message !== null && typeof message === 'object') {
      tokens += Math.ceil(textBytes((message as { content?: unknown }).content) / 4)
    }
  }
  return tokens
}

/** The model the request names first (logs, and billing when upstream names none). */
export function requestedModel(body: ChatCompletionRequest): string {
  return body.model ?? body.models![0]
}

/** The token cap the client asked for (max_completion_tokens wins, as with OpenAI). */
export function requestedMaxTokens(body: ChatCompletionRequest): number | null {
  return body.max_completion_tokens ?? body.max_tokens ?? null
}

// The members of the body the gateway rewrites; every other member goes upstream as the client wrote
// it, byte for byte.
const REWRITTEN = new Set(['max_tokens', 'max_completion_tokens', 'stream_options'])

/**
 * The body sent upstream: the client's, with its token cap replaced by what the hold covers, and
 * usage always requested when streaming (the gateway settles from it). Built from the client's own
 * text: the members kept are copied, not re-serialised (JSON.stringify of a 200 KB prompt cost ~340
 * µs, the copy ~100 µs). `text` must be the JSON `body` was parsed from.
 */
export function upstreamBody(text: string, body: ChatCompletionRequest, maxTokens: number): string {
  // (requestFacts bounded the bytes of either form.)
  if (reserialised(text, body)) return serialisedUpstreamBody(body, maxTokens)
  const members = topLevelMembers(text)
  const parts: string[] = []
  for (const m of members) {
    if (!REWRITTEN.has(m.name)) parts.push(text.slice(m.start, m.end))
  }
  parts.push(`"max_tokens":${maxTokens}`)
  if (body.max_completion_tokens !== undefined) {
    parts.push(`"max_completion_tokens":${body.max_completion_tokens === null ? null : maxTokens}`)
  }
  if (body.stream) {
    parts.push(
      `"stream_options":${JSON.stringify({ ...(body.stream_options ?? {}), include_usage: true })}`,
    )
  } else if (body.stream_options !== undefined) {
    parts.push(`"stream_options":${JSON.stringify(body.stream_options)}`)
  }
  return `{${parts.join(',')}}`
}

/** upstreamBody by re-serialising the parsed body (the fallback). */
function serialisedUpstreamBody(body: ChatCompletionRequest, maxTokens: number): string {
  const out: Record<string, unknown> = { ...body, max_tokens: maxTokens }
  if (body.max_completion_tokens != null) out.max_completion_tokens = maxTokens
  if (body.stream) out.stream_options = { ...(body.stream_options ?? {}), include_usage: true }
  return JSON.stringify(out)
}
