// The simulator's deterministic "tokenizer" and price arithmetic. These functions are the
// documented contract (see README.md): tests compute expected usage and charges with them.

import { type Price, resolveModel } from './catalog.ts'
import { parseModel } from './spec.ts'

export const DEFAULT_COMPLETION_TOKENS = 16

/** Number of bytes of `s` in UTF-8 (lone surrogates count 3, as TextEncoder emits U+FFFD). */
export function utf8Length(s: string): number {
  let n = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c < 0x80) n += 1
    else if (c < 0x800) n += 2
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1)
      if (next >= 0xdc00 && next <= 0xdfff) {
        n += 4
        i++
      } else n += 3
    } else n += 3
  }
  return n
}

/** The text of a message's content: a string, or the concatenated `text` of its text parts. */
export function contentText(content: unknown): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return ''
  let text = ''
  for (const part of content) {
    if (part?.type === 'text' && typeof part.text === 'string') text += part.text
  }
  return text
}

/**
 * Prompt tokens: 3 + Σ over messages of (4 + ceil(utf8Length(contentText(content)) / 4)).
 * Only message content counts (not roles, names, tools or images).
 */
export function promptTokens(body: { messages?: unknown }): number {
  let tokens = 3
  if (!Array.isArray(body.messages)) return tokens
  for (const message of body.messages) {
    tokens += 4 + Math.ceil(utf8Length(contentText(message?.content)) / 4)
  }
  return tokens
}

interface CompletionBody {
  model?: unknown
  max_tokens?: unknown
  max_completion_tokens?: unknown
}

/** The token budget the request asked for (max_completion_tokens wins over max_tokens). */
export function maxTokens(body: CompletionBody): number | undefined {
  const cap = body.max_completion_tokens ?? body.max_tokens
  return typeof cap === 'number' && cap >= 0 ? Math.floor(cap) : undefined
}

/**
 * Completion tokens: min(`~len-N` suffix or `defaultTokens`, max_completion_tokens ??
 * max_tokens). `defaultTokens` is 16 unless the simulator was configured otherwise
 * (SIM_COMPLETION_TOKENS, `completion_tokens` in /__sim/config).
 */
export function completionTokens(
  body: CompletionBody,
  defaultTokens = DEFAULT_COMPLETION_TOKENS,
): number {
  const len = typeof body.model === 'string' ? parseModel(body.model)?.len : undefined
  const wanted = len ?? defaultTokens
  const cap = maxTokens(body)
  return cap === undefined ? wanted : Math.min(wanted, cap)
}

/** Price arithmetic shared by costUsd and the server; rounded to 1e-12 USD. */
export function priceTokens(price: Price, prompt: number, completion: number): number {
  const usd = price.request + prompt * price.prompt + completion * price.completion
  return Math.round(usd * 1e12) / 1e12
}

/**
 * `usage.cost` in USD: pricing.request + prompt × pricing.prompt + completion ×
 * pricing.completion, rounded to 12 decimals. `model` may carry a variant and `~` suffixes.
 */
export function costUsd(model: string, prompt: number, completion: number): number {
  const resolved = resolveModel(parseModel(model)?.id ?? model)
  if (!resolved) throw new Error(`${model} is not in the simulator catalog`)
  return priceTokens(resolved.price, prompt, completion)
}

// Generated text: token i is VOCAB[i % VOCAB.length] followed by one space, so a
// completion's token count is the number of spaces in its content.
const VOCAB = (
  'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ' +
  'incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud ' +
  'exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure ' +
  'in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint ' +
  'occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est'
).split(' ').map((w) => w + ' ')
const CYCLE = VOCAB.join('')
// CYCLE_END[k] = length of the first k words of CYCLE, so prefixes are one slice.
const CYCLE_END = VOCAB.reduce((ends, w) => [...ends, ends[ends.length - 1] + w.length], [0])

/** The i-th generated token, trailing space included. */
export function tokenText(i: number): string {
  return VOCAB[i % VOCAB.length]
}

/** The content of a completion of `n` tokens: tokenText(0) + … + tokenText(n - 1). */
export function completionText(n: number): string {
  const cycles = Math.floor(n / VOCAB.length)
  return CYCLE.repeat(cycles) + CYCLE.slice(0, CYCLE_END[n % VOCAB.length])
}
