// Request counters, recorded generations and the last chat request bodies, all bounded
// so a long benchmark cannot grow the simulator's memory without limit.

import type { Caching, Price } from './catalog.ts'
import type { Charge } from './billing.ts'
import { formatUsd } from './money.ts'

export interface Generation {
  id: string
  /** The model that served, as requested but without `~` suffixes (variants kept), as echoed. */
  model: string
  /** `openrouter/auto` when the auto router chose the model, else null. */
  router: string | null
  provider: string
  price: Price
  caching: Caching
  stream: boolean
  /** Prompt tokens, web-search results included; cached and cache-write tokens are part of them. */
  promptTokens: number
  cachedTokens: number
  cacheWriteTokens: number
  cacheWrite1h: boolean
  audioTokens: number
  /** Image, audio and file parts of the prompt. */
  media: number
  audioParts: number
  webSearches: number
  webResults: number
  nativeSearch: boolean
  /** Tokens produced so far (reasoning included); final once `endedAt` is set. */
  completionTokens: number
  reasoningTokens: number
  cancelled: boolean
  fault: string | null
  /** Set by end(): the exact charge and `usage.cost` as a number. */
  charge?: Charge
  totalCost: number
  finishReason: string | null
  origin: string
  userAgent: string | null
  externalUser: string | null
  startedAt: number
  /** How long the response headers were held back before generating (the `slow` fault), ms. */
  heldMs: number
  /** Time the first byte of output was ready (for `latency`). */
  firstTokenAt?: number
  /** Set when the generation finished, failed or was cancelled; /generation waits on it. */
  endedAt?: number
}

export interface Received {
  body: unknown
  headers: Record<string, string>
}

export type Route = 'chat' | 'models' | 'generation' | 'other'

/** Deepest a recorded body may nest and still be written back by JSON.stringify, with margin. */
const MAX_RECORDED_DEPTH = 1000

/** Nesting depth of a JSON value, without recursion (it may be deeper than the stack allows). */
function depth(value: unknown): number {
  let max = 0
  const stack: [unknown, number][] = [[value, 1]]
  while (stack.length) {
    const [v, d] = stack.pop()!
    if (v === null || typeof v !== 'object') continue
    max = Math.max(max, d)
    if (max > MAX_RECORDED_DEPTH) return max
    for (const x of Object.values(v)) stack.push([x, d + 1])
  }
  return max
}

/**
 * The entry, or a note in place of a body nested too deeply for JSON.stringify: one such request
 * must not make /__sim/stats fail until 100 more have pushed it out of the ring. Checked when stats
 * are read, so chat requests pay nothing for it.
 */
function writable(entry: Received): Received {
  if (depth(entry.body) <= MAX_RECORDED_DEPTH) return entry
  return { ...entry, body: '[not recorded: nested too deeply to serialise]' }
}

export const DEFAULT_MAX_GENERATIONS = 200_000
const MAX_RECEIVED = 100

export class Stats {
  requests = { total: 0, chat: 0, models: 0, generation: 0, other: 0 }
  chatByStatus: Record<string, number> = {}
  /** Insertion-ordered, so the oldest entry is the first key when evicting. */
  generations = new Map<string, Generation>()
  generationsDropped = 0
  #received: Received[] = []
  #receivedNext = 0

  constructor(readonly maxGenerations = DEFAULT_MAX_GENERATIONS) {}

  count(route: Route): void {
    this.requests.total++
    this.requests[route]++
  }

  chatStatus(status: number): void {
    this.chatByStatus[status] = (this.chatByStatus[status] ?? 0) + 1
  }

  addGeneration(g: Generation): void {
    this.generations.set(g.id, g)
    if (this.generations.size > this.maxGenerations) {
      this.generations.delete(this.generations.keys().next().value!)
      this.generationsDropped++
    }
  }

  /** Keeps the last MAX_RECEIVED chat requests in a ring buffer. */
  receive(entry: Received): void {
    this.#received[this.#receivedNext] = entry
    this.#receivedNext = (this.#receivedNext + 1) % MAX_RECEIVED
  }

  /** Oldest first. */
  received(): Received[] {
    // Until the ring is full, #receivedNext === length and the first slice is empty.
    const r = this.#received
    return [...r.slice(this.#receivedNext), ...r.slice(0, this.#receivedNext)].map(writable)
  }

  reset(): void {
    this.requests = { total: 0, chat: 0, models: 0, generation: 0, other: 0 }
    this.chatByStatus = {}
    this.generations.clear()
    this.generationsDropped = 0
    this.#received = []
    this.#receivedNext = 0
  }

  /** The GET /__sim/stats document; `summary` leaves out the per-item arrays. */
  snapshot(summary = false): Record<string, unknown> {
    const head = {
      requests: { ...this.requests },
      chat_by_status: { ...this.chatByStatus },
      generations_count: this.generations.size,
      generations_dropped: this.generationsDropped,
    }
    if (summary) return head
    return {
      ...head,
      generations: Array.from(this.generations.values(), (g) => ({
        id: g.id,
        model: g.model,
        stream: g.stream,
        router: g.router,
        prompt_tokens: g.promptTokens,
        completion_tokens: g.completionTokens,
        reasoning_tokens: g.reasoningTokens,
        cached_tokens: g.cachedTokens,
        cache_write_tokens: g.cacheWriteTokens,
        web_search_requests: g.webSearches,
        cancelled: g.cancelled,
        fault: g.fault,
        total_cost: g.totalCost,
        cost: g.charge ? formatUsd(g.charge.total) : null,
        finish_reason: g.finishReason,
        ended: g.endedAt !== undefined,
        held_ms: g.heldMs,
      })),
      received: this.received(),
    }
  }
}
