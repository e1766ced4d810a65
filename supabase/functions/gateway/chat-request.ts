// The chat completions request: the OpenAI body validated with zod where the gateway depends on a
// field (model, messages, stream, token caps), everything else OpenRouter accepts passed through
// untouched (`tools`, `response_format`, `provider`, `reasoning`, `models`, `transforms`, …). Also
// the prompt-token estimate the hold is sized with, and the body as it goes upstream.

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

/** UTF-8 byte length without encoding the string. */
function utf8Length(s: string): number {
  let n = s.length
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) continue
    if (c < 0x800) n += 1
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 2
      i++
    } else n += 2
  }
  return n
}

/**
 * Prompt tokens, estimated: 3 + Σ (4 + ⌈UTF-8 bytes of the message's text / 4⌉). Only sizes the
 * hold and is the last-resort count; the charge comes from upstream's usage whenever it exists.
 */
export function estimatePromptTokens(messages: ChatCompletionRequest['messages']): number {
  let tokens = 3
  for (const m of messages) {
    const content = m.content
    let bytes = 0
    if (typeof content === 'string') bytes = utf8Length(content)
    else if (Array.isArray(content)) {
      for (const part of content) {
        if (part.type === 'text' && typeof part.text === 'string') bytes += utf8Length(part.text)
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

/**
 * The body sent upstream: the client's, with its token cap replaced by what the hold covers, and
 * usage always requested when streaming (the gateway settles from it).
 */
export function upstreamBody(body: ChatCompletionRequest, maxTokens: number): string {
  const out: Record<string, unknown> = { ...body, max_tokens: maxTokens }
  if (body.max_completion_tokens != null) out.max_completion_tokens = maxTokens
  if (body.stream) out.stream_options = { ...(body.stream_options ?? {}), include_usage: true }
  return JSON.stringify(out)
}
