// A streamed chat completion, metered on its way through. OpenRouter's SSE events are forwarded as
// they arrive (one complete event at a time, sse-events.ts; keep-alive comments too), except two that
// are held back: the usage chunk (`choices: []`, `usage`) and `data: [DONE]`. When upstream ends, the
// hold is settled from that usage (in background) and the usage chunk goes out at once with
// its `cost` the client's (credits × usd_per_credit) and `gateway_usage` added (the charge that
// settle makes, computed from the hold: gateway-usage.ts), then [DONE].
//
// The stream is pull-based (highWaterMark 0): upstream is read only as fast as the client reads.
// If the client goes away, `cancel` aborts upstream (stops spending) and settles in background from
// whatever is known: the usage chunk, else OpenRouter's generation stats, else our own count. A
// broken upstream stream (cut, malformed event, idle too long) ends with an OpenAI-style error event
// and is settled the same way. Exactly one settle or none is started per stream (`#finished`).
//
// Two bounds keep a stream inside its hold and its worker (config.ts): a maximum duration from the
// admission (GATEWAY_STREAM_MAX_SECONDS) and a client stall (GATEWAY_CLIENT_STALL_SECONDS: nothing
// taken by the client's connection for that long). On either, upstream is aborted, the client gets
// a last chunk with finish_reason "length" (native_finish_reason says why) and [DONE], and the
// request is billed like a client that left: from /generation, else our count. The hold's lease is
// renewed while the stream runs (open-holds.ts).

import {
  appendMember,
  gatewayUsageJson,
  readUsage,
  usageCounts,
  withClientUsage,
} from './gateway-usage.ts'
import type { Hold, Outcome, Usage } from './hold.ts'
import { settleWithoutUsage } from './recovery.ts'
import { reportedCharge, settle } from './settlement.ts'
import { MalformedEvent, UpstreamEvents } from './sse-events.ts'
import type { UpstreamCall } from './upstream.ts'

export interface StreamMeta {
  hold: Hold
  /** The model the hold was begun for (billing falls back to it when upstream names none). */
  model: string
  /** The last-resort count of the prompt (recovery.ts, chat-request.ts estimatePromptTokens). */
  promptEstimate: number
  /** Input images sent (billed per image where the catalog prices them). */
  images: number
  generationId: string | null
  startedAt: number
  call: UpstreamCall
  idleTimeoutMs: number
  /** Epoch ms when the stream is cut (its maximum duration, counted from the admission). */
  deadline: number
  /** A client that takes nothing for this long is cut. */
  stallMs: number
}

/** Why the gateway itself ended a stream early. */
type Cut = 'max_duration' | 'client_stall'

const encoder = new TextEncoder()
/**
 * Upstream is read into one buffer of this size per stream, reused. A default reader of a fetch
 * body answers each read with a fresh 64 KiB ArrayBuffer, however few bytes arrived (an SSE token
 * event is ~250): 10 streams read ahead of stalled clients took a worker from 70 to 230 MiB RSS,
 * 56 MiB of it external memory waiting for the GC; with one reused buffer, 75 MiB (bench/README.md,
 * "Memory").
 */
const READ_BUFFER_BYTES = 16 * 1024
const DONE = 'data: [DONE]\n\n'

class IdleTimeout extends Error {
  override name = 'IdleTimeout'
}

class StreamCut extends Error {
  override name = 'StreamCut'
}

function errorEvent(message: string, code: string): string {
  return `data: ${JSON.stringify({ error: { message, type: 'api_error', code, param: null } })}\n\n`
}

/** The client's side of a streamed completion: `readable`, metered as it is read. */
export class MeteredStream extends UpstreamEvents {
  readonly readable: ReadableStream<Uint8Array>
  readonly #meta: StreamMeta
  readonly #reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>
  /** The buffer upstream is read into (BYOB), handed back after each read; null: default reader. */
  #buffer: Uint8Array | null = null
  readonly #decoder = new TextDecoder()
  #finished = false
  #idle = false
  #cut: Cut | null = null
  #pulling = false
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined
  #deadlineTimer: ReturnType<typeof setTimeout> | undefined
  // The idle and stall bounds are checked by one lazy timer each, not a timer per chunk: a
  // setTimeout + clearTimeout pair costs 3-4 µs here (Deno's timers are Node's Timeout objects),
  // and a token stream did two per token. Each records since when it counts (null: not counting);
  // its timer, when it fires early, is armed again for the rest (LazyDeadline).
  readonly #stall = new LazyDeadline(() => this.#cutNow('client_stall'))
  readonly #idleRead = new LazyDeadline(() => {
    this.#idle = true
    this.#meta.call.abort()
  })

  constructor(upstream: ReadableStream<Uint8Array>, meta: StreamMeta) {
    super(meta.generationId)
    this.#meta = meta
    try {
      this.#reader = upstream.getReader({ mode: 'byob' })
      this.#buffer = new Uint8Array(READ_BUFFER_BYTES)
    } catch {
      // Not a byte stream (fetch bodies are): chunks as they come.
      this.#reader = upstream.getReader()
    }
    this.readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c
      },
      pull: (c) => this.#pull(c),
      cancel: () => this.#clientGone(),
    }, { highWaterMark: 0 })
    this.#deadlineTimer = setTimeout(
      () => this.#cutNow('max_duration'),
      Math.max(0, meta.deadline - Date.now()),
    )
  }

  async #pull(c: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    this.#stall.stop()
    this.#pulling = true
    try {
      for (;;) {
        let read: ReadableStreamReadResult<Uint8Array>
        let out: string
        try {
          read = await this.#read()
          if (this.#cut) return this.#endCut(c)
          if (read.done) return await this.#end(c)
          out = this.feed(this.#decoder.decode(read.value, { stream: true }))
        } catch (err) {
          return this.#fail(c, err)
        }
        if (out) {
          c.enqueue(encoder.encode(out))
          // The next pull comes when the client's connection took this: until then it stalls.
          if (!this.#finished) this.#stall.start(this.#meta.stallMs)
          return
        }
      }
    } finally {
      this.#pulling = false
    }
  }

  /** The stream is past its maximum duration, or its client stalled: end it now. */
  #cutNow(why: Cut): void {
    if (this.#finished || this.#cut) return
    this.#cut = why
    // A pull waiting on upstream ends it once the abort fails its read; else it ends here.
    this.#meta.call.abort()
    if (!this.#pulling && this.#controller) this.#endCut(this.#controller)
  }

  /** Ends a stream the gateway cut: a last chunk (finish_reason length), [DONE]; billed as left. */
  #endCut(c: ReadableStreamDefaultController<Uint8Array>): void {
    if (this.#finished) return
    this.#finished = true
    this.#stopTimers()
    this.#meta.call.abort()
    this.#reader.cancel().catch(() => {})
    this.#settleKnown('cancelled')
    const last = {
      id: this.generationId ?? `gen-cut-${this.#meta.hold.hold_id}`,
      object: 'chat.completion.chunk',
      created: Math.floor(Date.now() / 1000),
      model: this.#billedModel(),
      choices: [{
        index: 0,
        delta: {},
        finish_reason: 'length',
        native_finish_reason: `gateway_${this.#cut}`,
      }],
    }
    this.#close(c, `data: ${JSON.stringify(last)}\n\n${DONE}`)
  }

  #stopTimers(): void {
    clearTimeout(this.#deadlineTimer)
    this.#stall.clear()
    this.#idleRead.clear()
  }

  /** One upstream read, cut when upstream stays silent longer than the idle timeout. */
  async #read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    this.#idleRead.start(this.#meta.idleTimeoutMs)
    try {
      if (!this.#buffer) {
        return await (this.#reader as ReadableStreamDefaultReader<Uint8Array>).read()
      }
      const read = await (this.#reader as ReadableStreamBYOBReader).read(this.#buffer)
      // The buffer moved into the view read; the next read reuses it whole.
      if (read.value) this.#buffer = new Uint8Array(read.value.buffer)
      return read as ReadableStreamReadResult<Uint8Array>
    } catch (err) {
      if (this.#cut) throw new StreamCut(this.#cut)
      throw this.#idle ? new IdleTimeout('upstream stream idle') : err
    } finally {
      this.#idleRead.stop()
    }
  }

  /** Upstream's usage chunk, parsed (undefined when none came, or it holds no usage object). */
  #readUsage(): ReturnType<typeof readUsage> {
    return this.usageData ? readUsage(this.usageData) : undefined
  }

  #billedModel(): string {
    return this.model ?? this.#meta.model
  }

  #elapsed(): number {
    return Date.now() - this.#meta.startedAt
  }

  /** The usage upstream reported (its usage chunk, read exactly), as a settle takes it. */
  #reported(outcome: Outcome, read = this.#readUsage()): Usage | undefined {
    if (!read) return undefined
    const counts = usageCounts(read.usage, read.costText)
    return {
      ...counts,
      model: this.#billedModel(),
      promptTokens: counts.promptTokens ?? this.#meta.promptEstimate,
      completionTokens: counts.completionTokens ?? this.contentChunks,
      images: this.#meta.images,
      generationId: this.generationId,
      settledBy: 'usage',
      outcome,
      latencyMs: this.#elapsed(),
    }
  }

  /** Settles in background from what is known; the caller has set #finished. */
  #settleKnown(outcome: Outcome): void {
    const usage = this.#reported(outcome)
    if (usage) {
      settle(this.#meta.hold, usage)
      return
    }
    settleWithoutUsage(this.#meta.hold, {
      model: this.#billedModel(),
      generationId: this.generationId,
      countedPromptTokens: this.#meta.promptEstimate,
      countedCompletionTokens: this.contentChunks,
      images: this.#meta.images,
      outcome,
      latencyMs: this.#elapsed(),
    })
  }

  /** Upstream finished: settle from its usage, then send the usage chunk and [DONE]. */
  async #end(c: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    if (this.#finished) return
    let tail: string
    try {
      tail = this.flush(this.#decoder.decode())
    } catch (err) {
      return this.#fail(c, err)
    }
    this.#finished = true
    this.#stopTimers()
    this.#meta.call.done()
    const outcome = this.sawError ? 'upstream_error' : 'success'
    // Parsed once: the settle and the client's usage chunk both come from it.
    const read = this.#readUsage()
    const settled = this.#reported(outcome, read)
    if (!settled || !read || !this.usageData) {
      this.#settleKnown(outcome)
      this.#close(c, tail + (this.sawError ? '' : DONE))
      return
    }
    // The usage chunk does not wait for the settle: it reports the charge the settle will make
    // (unless only the settle can know it: reportedCharge).
    const reported = await reportedCharge(this.#meta.hold, settled)
    const gatewayUsage = gatewayUsageJson(reported, settled, this.#meta.hold.key_prefix)
    const chunk = withClientUsage(this.usageData, read.usage, reported?.usd ?? null, read.at)
    // Upstream may have sent the chunk over several data lines (its text then has line breaks,
    // blanks between JSON tokens): each line goes out as a data line of its own, as SSE frames it.
    const data = appendMember(chunk, 'gateway_usage', gatewayUsage).replaceAll('\n', '\ndata: ')
    this.#close(c, `${tail}data: ${data}\n\n${DONE}`)
  }

  /** Upstream broke (cut, malformed, idle): tell the client in-stream, settle what is known. */
  #fail(c: ReadableStreamDefaultController<Uint8Array>, err: unknown): void {
    if (err instanceof StreamCut) return this.#endCut(c)
    if (this.#finished) return
    this.#finished = true
    this.#stopTimers()
    this.#meta.call.abort()
    this.#reader.cancel().catch(() => {})
    this.#settleKnown('upstream_error')
    const message = err instanceof MalformedEvent
      ? 'The upstream provider sent a malformed event'
      : err instanceof IdleTimeout
      ? 'The upstream provider stopped sending'
      : 'The upstream stream was interrupted'
    this.#close(
      c,
      errorEvent(
        message,
        err instanceof IdleTimeout ? 'upstream_timeout' : 'upstream_stream_error',
      ),
    )
  }

  /** The client went away: stop upstream and bill what was generated. */
  #clientGone(): void {
    if (this.#finished) return
    this.#finished = true
    this.#stopTimers()
    this.#meta.call.abort()
    this.#reader.cancel().catch(() => {})
    this.#settleKnown('cancelled')
  }

  #close(c: ReadableStreamDefaultController<Uint8Array>, last: string): void {
    // The client may have gone while we settled; then there is no one to write to.
    try {
      if (last) c.enqueue(encoder.encode(last))
      c.close()
    } catch {
      // already cancelled
    }
  }
}

/**
 * "Call `fire` once something has lasted `ms`", restarted and stopped far more often than it fires,
 * with at most one timer: `start` records when it began (and arms a timer only if none is armed),
 * `stop` records that it ended (the timer stays). A timer that fires finds either nothing running
 * (it lapses; the next `start` arms one), or something running for less than its `ms` (it is armed
 * for the rest), or for long enough (it calls `fire`). So `fire` comes when a single start has gone
 * `ms` without a stop, as with a timer per start, and a start without a timer costs a clock read.
 */
export class LazyDeadline {
  #since: number | null = null
  #ms = 0
  #timer: ReturnType<typeof setTimeout> | undefined
  /** When the armed timer fires. */
  #due = 0

  constructor(private readonly fire: () => void) {}

  start(ms: number): void {
    const now = performance.now()
    this.#since = now
    this.#ms = ms
    // One armed for a later moment (a longer `ms` before) would fire too late: armed again.
    if (this.#timer !== undefined && now + ms < this.#due) {
      clearTimeout(this.#timer)
      this.#timer = undefined
    }
    if (this.#timer === undefined) this.#arm(ms)
  }

  stop(): void {
    this.#since = null
  }

  /** Stopped and disarmed (the stream ended). */
  clear(): void {
    this.#since = null
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #arm(ms: number): void {
    this.#due = performance.now() + ms
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      if (this.#since === null) return
      const left = this.#since + this.#ms - performance.now()
      if (left > 0) return this.#arm(left)
      this.#since = null
      this.fire()
    }, Math.max(0, ms))
  }
}
