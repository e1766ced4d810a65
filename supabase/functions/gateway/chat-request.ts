// The chat completions request: the OpenAI body validated with zod where the gateway depends on a
// field (model, messages, stream, token caps), everything else OpenRouter accepts passed through
// untouched (`tools`, `response_format`, `provider`, `reasoning`, `models`, `transforms`, …). Also
// the prompt-token estimate the hold is sized with, and the body as it goes upstream.

import { Buffer } from 'node:buffer'
import { z } from '@hono/zod-openapi'

const ContentPart = z.looseObject({ type: z.string() })

const Message = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool', 'function']),
  content: z.union([z.string(), z.array(ContentPart), z.null()]).optional(),
}).openapi('ChatMessage')

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
}).refine((b) => b.model !== undefined || b.models !== undefined, {
  message: 'model is required',
  path: ['model'],
}).openapi('ChatCompletionRequest')

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>

/**
 * Prompt tokens, estimated: 3 + Σ (4 + ⌈UTF-8 bytes of the message's text / 4⌉). Only sizes the
 * hold and is the last-resort count; the charge comes from upstream's usage whenever it exists.
 * (Buffer.byteLength counts without encoding, natively: a JS loop over the characters cost ~400 µs
 * for a 200 KB prompt, more than everything else the function does with it.)
 */
export function estimatePromptTokens(messages: ChatCompletionRequest['messages']): number {
  let tokens = 3
  for (const m of messages) {
    const content = m.content
    let bytes = 0
    if (typeof content === 'string') bytes = Buffer.byteLength(content, 'utf8')
    else if (Array.isArray(content)) {
      for (const part of content) {
        if (part.type === 'text' && typeof part.text === 'string') {
          bytes += Buffer.byteLength(part.text, 'utf8')
        }
      }
    }
    tokens += 4 + Math.ceil(bytes / 4)
  }
  return tokens
}

/** The model the hold is begun for. */
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
  const members = topLevelMembers(text)
  // The scan must account for every member JSON.parse saw; if it ever did not, re-serialise.
  if (new Set(members.map((m) => m.name)).size !== Object.keys(body).length) {
    return serialisedUpstreamBody(body, maxTokens)
  }
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

interface Member {
  /** The member's name, decoded. */
  name: string
  /** Where `"name": value` starts and ends in the text. */
  start: number
  end: number
}

/**
 * The members of a JSON object's text, in order, duplicates included. Only for text JSON.parse has
 * accepted as an object (so no error handling): strings are skipped by jumping to the next quote,
 * nested values by counting brackets outside strings.
 */
export function topLevelMembers(text: string): Member[] {
  const members: Member[] = []
  let i = skipSpace(text, text.indexOf('{') + 1)
  while (text.charCodeAt(i) === QUOTE) {
    const start = i
    const nameEnd = stringEnd(text, i)
    const name = JSON.parse(text.slice(i, nameEnd)) as string
    i = skipSpace(text, skipSpace(text, nameEnd) + 1) // past the colon
    i = valueEnd(text, i)
    if (i <= start) break // no progress: not JSON (never for text JSON.parse accepted)
    members.push({ name, start, end: i })
    i = skipSpace(text, i)
    if (text.charCodeAt(i) === COMMA) i = skipSpace(text, i + 1)
  }
  return members
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c

function skipSpace(text: string, i: number): number {
  for (let c = text.charCodeAt(i); c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;) {
    c = text.charCodeAt(++i)
  }
  return i
}

/** `i` at a string's opening quote: the index just past its closing quote. */
function stringEnd(text: string, i: number): number {
  for (let from = i + 1;;) {
    const q = text.indexOf('"', from)
    if (q < 0) return text.length // (not JSON: never for text JSON.parse accepted)
    let backslashes = 0
    while (text.charCodeAt(q - 1 - backslashes) === BACKSLASH) backslashes++
    if (backslashes % 2 === 0) return q + 1
    from = q + 1
  }
}

/** `i` at a value's first character: the index just past the value. */
function valueEnd(text: string, i: number): number {
  const first = text.charCodeAt(i)
  if (first === QUOTE) return stringEnd(text, i)
  if (first !== 0x7b && first !== 0x5b) {
    // A number, true, false or null: up to the next delimiter.
    while (i < text.length) {
      const c = text.charCodeAt(i)
      if (c === COMMA || c === 0x7d || c === 0x5d || c <= 0x20) break
      i++
    }
    return i
  }
  let depth = 0
  while (i < text.length) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      i = stringEnd(text, i)
      continue
    }
    if (c === 0x7b || c === 0x5b) depth++
    else if ((c === 0x7d || c === 0x5d) && --depth === 0) return i + 1
    i++
  }
  return i
}
