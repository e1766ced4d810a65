// Reads OpenRouter's SSE stream one complete event at a time: what to forward to the client, and
// what metering needs of it — the usage chunk (`choices: []`, `usage`: held back, for sse.ts to send
// amended), the model and generation id upstream named, the chunks that carried content (our own
// count, the last resort) and whether an error event came. No I/O: sse.ts feeds it what arrives.

export interface UpstreamUsage {
  prompt_tokens?: number
  completion_tokens?: number
  cost?: number
}

export class MalformedEvent extends Error {
  override name = 'MalformedEvent'
}

export class UpstreamEvents {
  /** Upstream's usage object, once seen, and the data of the event that carried it (held back). */
  usage: UpstreamUsage | null = null
  usageData: string | null = null
  /** The model upstream named in its chunks. */
  model: string | null = null
  /** The X-Generation-Id upstream answered with, else the first chunk's id. */
  generationId: string | null
  /** Chunks that carried content (text, reasoning, tool calls, a refusal). */
  contentChunks = 0
  /** An event carried an error (a generation that failed after it started). */
  sawError = false
  #buffer = ''

  constructor(generationId: string | null) {
    this.generationId = generationId
  }

  /** Splits the complete events out of what has arrived; returns the text to forward now. */
  feed(text: string): string {
    this.#buffer += text
    if (this.#buffer.includes('\r')) this.#buffer = this.#buffer.replace(/\r\n?/g, '\n')
    let out = ''
    let start = 0
    for (;;) {
      const end = this.#buffer.indexOf('\n\n', start)
      if (end < 0) break
      out += this.#event(this.#buffer.slice(start, end))
      start = end + 2
    }
    this.#buffer = this.#buffer.slice(start)
    return out
  }

  /**
   * The stream ended: a last event without its terminating blank line still counts. `text` is what
   * the decoder still held. Returns what to forward of it.
   */
  flush(text: string): string {
    const rest = this.#buffer + text
    this.#buffer = ''
    return rest.trim() ? this.#event(rest.trim()) : ''
  }

  /** Inspects one event (without its blank-line terminator); returns what to forward of it. */
  #event(event: string): string {
    if (event === '') return ''
    if (event.startsWith(':') && !event.includes('\ndata:')) return `${event}\n\n`
    let data = ''
    for (const line of event.split('\n')) {
      if (line.startsWith('data:')) {
        const value = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5)
        data = data ? `${data}\n${value}` : value
      }
    }
    if (data === '') return `${event}\n\n`
    if (data === '[DONE]') return ''
    // deno-lint-ignore no-explicit-any -- an OpenRouter chunk; only a few fields are read
    let chunk: any
    try {
      chunk = JSON.parse(data)
    } catch {
      throw new MalformedEvent('malformed upstream event')
    }
    if (typeof chunk?.id === 'string' && !this.generationId) this.generationId = chunk.id
    if (typeof chunk?.model === 'string') this.model = chunk.model
    const delta = chunk?.choices?.[0]?.delta
    if (delta && (delta.content || delta.reasoning || delta.tool_calls || delta.refusal)) {
      this.contentChunks++
      // OpenRouter's usage comes last: content after it was not counted by it, so it is not the
      // generation's usage (settled then as a lost one: /generation, else our count).
      if (this.usage && !chunk?.usage) {
        this.usage = null
        this.usageData = null
      }
    }
    if (chunk?.error) this.sawError = true
    if (chunk?.usage && typeof chunk.usage === 'object') {
      this.usage = chunk.usage
      this.usageData = data
      return ''
    }
    return `${event}\n\n`
  }
}
