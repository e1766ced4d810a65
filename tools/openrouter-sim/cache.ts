// Prompt caching, deterministic: a prompt prefix this simulator has already served (same model) is
// a cache hit. Prefixes are whole segments (the tools/schemas header, then each message), hashed
// in a chain, so a request that repeats the first k messages of an earlier one hits on them.
//
//   automatic (OpenAI-style, models with input_cache_read only): every served prefix is cached;
//     cached_tokens = tokens of the longest cached prefix, rounded down to a multiple of 1024.
//   explicit (Anthropic-style, models with input_cache_write): only prefixes that end at a
//     `cache_control` breakpoint are written, and only with ≥ 1024 tokens; cached_tokens = the
//     longest written prefix ending at or before the last breakpoint; cache_write_tokens = the
//     prefix up to the last breakpoint minus cached_tokens, when that prefix is new.

import type { Caching } from './catalog.ts'
import type { PromptMeasure } from './tokens.ts'

export const CACHE_BLOCK_TOKENS = 1024
/** Prefixes remembered; the oldest are forgotten beyond this (a long benchmark stays bounded). */
const MAX_PREFIXES = 100_000

export interface CacheUse {
  cached: number
  write: number
  /** The written breakpoint asked for the 1-hour TTL (priced at input_cache_write_1h). */
  write1h: boolean
  /** Prefix keys to remember once the request is served. */
  keys: string[]
}

const NONE: CacheUse = { cached: 0, write: 0, write1h: false, keys: [] }

// deno-lint-ignore no-explicit-any -- an arbitrary client body, checked field by field
type Json = any

/** cyrb53: a fast 53-bit string hash; collisions are irrelevant at a test's scale. */
function hash(s: string, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed
  let h2 = 0x41c6ce57 ^ seed
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    h1 = Math.imul(h1 ^ c, 2654435761)
    h2 = Math.imul(h2 ^ c, 1597334677)
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909)
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909)
  return 4294967296 * (2097151 & h2) + (h1 >>> 0)
}

const hasCacheControl = (v: Json) => typeof v === 'object' && v !== null && 'cache_control' in v

/** A message's breakpoint: its own cache_control or that of its last marked content part. */
function messageBreakpoint(msg: Json): Json {
  let mark = hasCacheControl(msg) ? msg.cache_control : undefined
  if (Array.isArray(msg?.content)) {
    for (const part of msg.content) if (hasCacheControl(part)) mark = part.cache_control
  }
  return mark
}

export class PromptCache {
  #prefixes = new Map<string, true>()

  /**
   * What `model` would read from and write to the cache for this body (nothing is stored).
   * `marked`: the body mentions cache_control at all (markers are not part of a prefix's content).
   */
  lookup(model: string, caching: Caching, body: Json, m: PromptMeasure, marked: boolean): CacheUse {
    if (caching === 'none') return NONE
    const messages: Json[] = Array.isArray(body.messages) ? body.messages : []
    // Breakpoints (explicit caching only): segment index → its cache_control.
    const marks = new Map<number, Json>()
    if (caching === 'explicit') {
      if (Array.isArray(body.tools)) {
        for (const tool of body.tools) if (hasCacheControl(tool)) marks.set(0, tool.cache_control)
      }
      messages.forEach((msg, i) => {
        const mark = messageBreakpoint(msg)
        if (mark !== undefined) marks.set(i + 1, mark)
      })
      // Top-level cache_control: automatic caching up to the last message (Anthropic).
      if (hasCacheControl(body) && messages.length) marks.set(messages.length, body.cache_control)
      if (marks.size === 0) return NONE
    }
    // Markers are not content: two requests that differ only in cache_control share prefixes.
    // (A regex over the JSON text, not a stringify replacer, which recurses and runs out of stack
    // on deep schemas; in string values the key's quotes are escaped, so it cannot match there.)
    const json = (v: unknown) => {
      const text = JSON.stringify(v ?? null)
      return marked ? text.replace(/,?"cache_control":\{[^{}]*\}/g, '') : text
    }

    // keys[i] / ends[i]: the prefix through segment i and its tokens.
    const keys: string[] = []
    const ends: number[] = []
    let h = hash(json([body.tools, body.functions, body.response_format]), hash(model))
    let end = m.segments[0]
    keys.push(String(h))
    ends.push(end)
    for (let i = 0; i < messages.length; i++) {
      // Chained: the key of prefix i covers the key of prefix i - 1 and message i.
      h = hash(`${hash(json(messages[i]))}:${h}`)
      end += m.segments[i + 1]
      keys.push(String(h))
      ends.push(end)
    }

    if (caching === 'automatic') {
      let cached = 0
      for (let i = keys.length - 1; i >= 0; i--) {
        if (this.#prefixes.has(keys[i])) {
          cached = Math.floor(ends[i] / CACHE_BLOCK_TOKENS) * CACHE_BLOCK_TOKENS
          break
        }
      }
      const store = keys.filter((_, i) => ends[i] >= CACHE_BLOCK_TOKENS)
      return { cached, write: 0, write1h: false, keys: store }
    }

    const last = Math.max(...marks.keys())
    let cached = 0
    for (let i = last; i >= 0; i--) {
      if (this.#prefixes.has(keys[i])) {
        cached = ends[i]
        break
      }
    }
    const fresh = ends[last] >= CACHE_BLOCK_TOKENS && !this.#prefixes.has(keys[last])
    const store = [...marks.keys()].filter((i) => ends[i] >= CACHE_BLOCK_TOKENS).map((i) => keys[i])
    return {
      cached,
      write: fresh ? ends[last] - cached : 0,
      write1h: fresh && marks.get(last)?.ttl === '1h',
      keys: store,
    }
  }

  /** Remembers the prefixes of a served request. */
  store(use: CacheUse): void {
    for (const key of use.keys) {
      this.#prefixes.delete(key)
      this.#prefixes.set(key, true)
    }
    while (this.#prefixes.size > MAX_PREFIXES) {
      this.#prefixes.delete(this.#prefixes.keys().next().value!)
    }
  }

  clear(): void {
    this.#prefixes.clear()
  }
}
