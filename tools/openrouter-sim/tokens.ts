// The simulator's deterministic "tokenizer": what it bills as prompt tokens, from everything in the
// body OpenRouter would bill as prompt, and the generated text. These functions are the documented
// contract (README.md, "Token counting"): tests compute expected usage by hand from its rules.
//
// Text is priced like a real tokenizer prices it: ordinary English at about 4 bytes a token, but
// digits, punctuation and non-ASCII text at up to 1 token a byte, never more. So a gateway that
// bounds a request's text by its bytes is right, and one that assumes 4 bytes a token is not.

import { parseModel } from './spec.ts'

export const DEFAULT_COMPLETION_TOKENS = 16
export const DEFAULT_REASONING_TOKENS = 16

/** Template tokens per message (role and delimiters), per tool schema, per tool call. */
export const MESSAGE_TOKENS = 4
export const REPLY_PRIMING_TOKENS = 3
export const NAME_TOKENS = 1
export const TOOL_TOKENS = 8
export const TOOL_CALL_TOKENS = 3
export const SCHEMA_TOKENS = 8
/** An image part: `detail: "low"` or anything else. */
export const IMAGE_LOW_TOKENS = 85
export const IMAGE_TOKENS = 1105
/** A file given by URL or file_id (its bytes are not in the body). */
export const FILE_URL_TOKENS = 3000
/** Audio: one token per this many decoded bytes (32 tokens a second of 128 kbit/s audio). */
export const AUDIO_BYTES_PER_TOKEN = 500
/** Prompt tokens each web-search result adds. */
export const WEB_RESULT_TOKENS = 1000

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

const isLetter = (c: number) => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)

/**
 * Tokens of a text, over its UTF-8 bytes: each run of ASCII letters costs ceil(length / 4); a
 * space directly before a letter belongs to that word and costs nothing; every other byte (digit,
 * punctuation, other whitespace, each byte of a non-ASCII character) costs 1. So tokens ≤ bytes.
 */
export function textTokens(s: string): number {
  let tokens = 0
  const n = s.length
  for (let i = 0; i < n;) {
    const c = s.charCodeAt(i)
    if (isLetter(c)) {
      let j = i + 1
      while (j < n && isLetter(s.charCodeAt(j))) j++
      tokens += Math.ceil((j - i) / 4)
      i = j
    } else if (c === 0x20 && i + 1 < n && isLetter(s.charCodeAt(i + 1))) {
      i++
    } else if (c < 0x80) {
      tokens++
      i++
    } else if (c < 0x800) {
      tokens += 2
      i++
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
      const next = s.charCodeAt(i + 1)
      const pair = next >= 0xdc00 && next <= 0xdfff
      tokens += pair ? 4 : 3
      i += pair ? 2 : 1
    } else {
      tokens += 3
      i++
    }
  }
  return tokens
}

/** textTokens over raw bytes given as a binary string (one char per byte, as atob returns). */
function binaryTokens(bytes: string): number {
  let tokens = 0
  const n = bytes.length
  for (let i = 0; i < n;) {
    const c = bytes.charCodeAt(i)
    if (isLetter(c)) {
      let j = i + 1
      while (j < n && isLetter(bytes.charCodeAt(j))) j++
      tokens += Math.ceil((j - i) / 4)
      i = j
    } else if (c === 0x20 && i + 1 < n && isLetter(bytes.charCodeAt(i + 1))) i++
    else {
      tokens++
      i++
    }
  }
  return tokens
}

/** Bytes a base64 string decodes to: floor(3 × length / 4), `=` padding not counted. */
export function base64Bytes(data: string): number {
  let len = data.length
  while (len > 0 && data.charCodeAt(len - 1) === 0x3d) len--
  return Math.floor((len * 3) / 4)
}

/** `#sim-tokens=N` at the end of a URL: a test's way to say what a part by URL costs. */
const SIM_TOKENS = /#sim-tokens=(\d+)$/

function urlTokens(url: unknown, otherwise: number): number {
  const m = typeof url === 'string' ? SIM_TOKENS.exec(url) : null
  return m ? Number(m[1]) : otherwise
}

/** The payload of a `data:` URL, or undefined when `url` is not one. */
function dataUrlTokens(url: string): number | undefined {
  if (!url.startsWith('data:')) return undefined
  const comma = url.indexOf(',')
  if (comma < 0) return textTokens(url)
  const payload = url.slice(comma + 1)
  if (!/;base64$/i.test(url.slice(0, comma))) {
    try {
      return textTokens(decodeURIComponent(payload))
    } catch {
      return textTokens(payload)
    }
  }
  return base64Tokens(payload)
}

/** Decoded base64 through the tokenizer; text that is not base64 is counted as text. */
function base64Tokens(data: string): number {
  try {
    return binaryTokens(atob(data))
  } catch {
    return textTokens(data)
  }
}

// deno-lint-ignore no-explicit-any -- parts of an arbitrary client body, checked field by field
type Json = any

const str = (v: unknown): string => (typeof v === 'string' ? v : '')

/** What the prompt of one request is made of. */
export interface PromptMeasure {
  /**
   * Tokens per cacheable prefix segment, in prompt order: [0] the tools, functions and response
   * format (providers put them first), then one per message.
   */
  segments: number[]
  /** Tokens after the messages: reply priming and `prediction`. */
  tail: number
  /** Σ segments + tail: the prompt without web-search results. */
  tokens: number
  images: number
  audioParts: number
  audioTokens: number
  files: number
}

function partTokens(part: Json, m: PromptMeasure): number {
  if (typeof part !== 'object' || part === null) return textTokens(JSON.stringify(part) ?? '')
  switch (part.type) {
    case 'text':
      return textTokens(str(part.text))
    case 'image_url': {
      m.images++
      const low = part.image_url?.detail === 'low'
      return urlTokens(part.image_url?.url, low ? IMAGE_LOW_TOKENS : IMAGE_TOKENS)
    }
    case 'input_audio': {
      m.audioParts++
      let data = str(part.input_audio?.data)
      if (data.startsWith('data:')) data = data.slice(data.indexOf(',') + 1)
      const tokens = Math.ceil(base64Bytes(data) / AUDIO_BYTES_PER_TOKEN)
      m.audioTokens += tokens
      return tokens
    }
    case 'file': {
      m.files++
      const data = part.file?.file_data
      if (typeof data !== 'string' || /^https?:\/\//i.test(data)) {
        return urlTokens(data, FILE_URL_TOKENS)
      }
      return dataUrlTokens(data) ?? base64Tokens(data)
    }
    default: // anything else upstream receives is billed as the text it is sent as
      return textTokens(JSON.stringify(part))
  }
}

function callTokens(call: Json): number {
  const fn = call?.function ?? call
  if (typeof fn !== 'object' || fn === null) return 0
  return TOOL_CALL_TOKENS + textTokens(str(fn.name)) + textTokens(str(fn.arguments))
}

function messageTokens(msg: Json, m: PromptMeasure): number {
  let tokens = MESSAGE_TOKENS
  const content = msg.content
  if (typeof content === 'string') tokens += textTokens(content)
  else if (Array.isArray(content)) { for (const part of content) tokens += partTokens(part, m) }
  if (typeof msg.name === 'string') tokens += NAME_TOKENS + textTokens(msg.name)
  if (Array.isArray(msg.tool_calls)) {
    for (const call of msg.tool_calls) {
      if (typeof call?.function === 'object') tokens += callTokens(call)
    }
  }
  if (typeof msg.function_call === 'object' && msg.function_call !== null) {
    tokens += callTokens(msg.function_call)
  }
  if (typeof msg.tool_call_id === 'string') tokens += textTokens(msg.tool_call_id)
  return tokens
}

/** A tool's schema as the compact JSON upstream renders into the prompt. */
function schemaTokens(schema: unknown, overhead: number): number {
  return overhead + textTokens(JSON.stringify(schema) ?? '')
}

function headerTokens(body: Json): number {
  let tokens = 0
  if (Array.isArray(body.tools)) {
    for (const tool of body.tools) {
      tokens += typeof tool?.function === 'object' && tool.function !== null
        ? schemaTokens(tool.function, TOOL_TOKENS)
        : schemaTokens(tool, 0)
    }
  }
  if (Array.isArray(body.functions)) {
    for (const fn of body.functions) tokens += schemaTokens(fn, TOOL_TOKENS)
  }
  const format = body.response_format
  if (format?.type === 'json_schema' && typeof format.json_schema === 'object') {
    tokens += schemaTokens(format.json_schema, SCHEMA_TOKENS)
  }
  return tokens
}

function predictionTokens(prediction: Json): number {
  const content = prediction?.content
  if (typeof content === 'string') return textTokens(content)
  if (!Array.isArray(content)) return 0
  let tokens = 0
  for (const part of content) tokens += textTokens(str(part?.text))
  return tokens
}

/** Measures the prompt of a chat body (see PromptMeasure and the README's rules). */
export function measurePrompt(body: Json): PromptMeasure {
  const m: PromptMeasure = {
    segments: [],
    tail: 0,
    tokens: 0,
    images: 0,
    audioParts: 0,
    audioTokens: 0,
    files: 0,
  }
  m.segments.push(headerTokens(body))
  if (Array.isArray(body.messages)) {
    for (const msg of body.messages) m.segments.push(messageTokens(msg ?? {}, m))
  }
  m.tail = REPLY_PRIMING_TOKENS + predictionTokens(body.prediction)
  m.tokens = m.segments.reduce((a, b) => a + b, 0) + m.tail
  return m
}

/**
 * Prompt tokens of a body: measurePrompt(body).tokens + webResults × WEB_RESULT_TOKENS, where
 * `webResults` is what the served model's web search returned (see webSearch in route.ts).
 */
export function promptTokens(body: unknown, webResults = 0): number {
  return measurePrompt(body).tokens + webResults * WEB_RESULT_TOKENS
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

export interface CompletionPlan {
  /** Reasoning tokens generated first (part of completion_tokens). */
  reasoning: number
  /** Content tokens generated after them. */
  content: number
  /** "length" when max_tokens cut the reasoning or the content short. */
  finishReason: 'stop' | 'length'
}

/**
 * What a generation produces: `reasoning` wanted reasoning tokens first, then `content` wanted
 * content tokens, both within the cap (max_completion_tokens ?? max_tokens), which bounds the sum.
 */
export function completionPlan(
  wanted: { content: number; reasoning: number },
  cap: number | undefined,
): CompletionPlan {
  const reasoning = cap === undefined ? wanted.reasoning : Math.min(wanted.reasoning, cap)
  const content = cap === undefined ? wanted.content : Math.min(wanted.content, cap - reasoning)
  const cut = reasoning < wanted.reasoning || content < wanted.content
  return { reasoning, content, finishReason: cut ? 'length' : 'stop' }
}

/**
 * Completion tokens of a model that does not reason: min(`~len-N` suffix or `defaultTokens`,
 * max_completion_tokens ?? max_tokens).
 */
export function completionTokens(
  body: CompletionBody,
  defaultTokens = DEFAULT_COMPLETION_TOKENS,
): number {
  const len = typeof body.model === 'string' ? parseModel(body.model)?.len : undefined
  return completionPlan({ content: len ?? defaultTokens, reasoning: 0 }, maxTokens(body)).content
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
// Reasoning text: its own words, so content and reasoning cannot be mistaken for each other.
const THOUGHTS = 'first then check so therefore hence thus verify'.split(' ').map((w) => w + ' ')

function cycleText(words: string[], n: number): string {
  const cycle = words.join('')
  let text = cycle.repeat(Math.floor(n / words.length))
  for (let i = 0; i < n % words.length; i++) text += words[i]
  return text
}

/** The i-th generated token, trailing space included. */
export function tokenText(i: number): string {
  return VOCAB[i % VOCAB.length]
}

/** The content of a completion of `n` tokens: tokenText(0) + … + tokenText(n - 1). */
export function completionText(n: number): string {
  return cycleText(VOCAB, n)
}

/** The i-th reasoning token, trailing space included. */
export function reasoningTokenText(i: number): string {
  return THOUGHTS[i % THOUGHTS.length]
}

/** The reasoning text of `n` reasoning tokens. */
export function reasoningText(n: number): string {
  return cycleText(THOUGHTS, n)
}
