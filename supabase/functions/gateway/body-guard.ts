// Request bodies are read here, once, before any route sees them: within a size limit per route, a
// deadline, and two budgets shared by every request of this isolate whose body is still arriving
// (how many, and how many bytes they hold). A client that announces a large body and sends it
// slowly, or never finishes it, can hold no more than that: beyond the budgets a request is refused
// at once (503), past the deadline it is cut (408). (Issue 11, finding 6: 50 sockets announcing
// 4 MB and stopping one byte short took the function from ~100 to ~780 MB until they closed.)
//
// Each client network (IPv4 /24, IPv6 /64: identity.ts, clientNetwork) gets only a share of both
// budgets once they are more than half taken, so one network cannot take them all; the
// isolate-wide budgets stay the last line. (Issue
// 11, resource bounds: 130 sockets from one client, each announcing 1000 bytes and sending 9, held
// all 128 readers for the 10 s deadline, and every other client's request with a body got 503.)

import type { Context, MiddlewareHandler } from 'hono'
import { ApiError } from './errors.ts'

export interface BodyLimits {
  /** The largest body a route takes (bytes). */
  maxBytes: number
  /** How long a body may take to arrive in full (ms). */
  timeoutMs: number
  /** Requests whose body is being read at once, over the isolate. */
  maxReaders: number
  /** Bytes reserved at once by bodies larger than SMALL_BODY, over the isolate. */
  maxBytesInFlight: number
  /** Of maxReaders, how many one client network may hold. */
  maxReadersPerNetwork: number
  /** Of maxBytesInFlight, how many one client network may reserve (at least maxBytes). */
  maxBytesPerNetwork: number
}

/**
 * A body up to this size needs only a reader slot; a larger one also reserves its size from the
 * byte budget before a byte of it is read. So the memory bodies being read can hold is at most
 * maxReaders × SMALL_BODY + maxBytesInFlight, and a flood of large uploads cannot crowd out
 * ordinary requests (every API route's body, and most prompts, are small).
 */
export const SMALL_BODY = 64 * 1024

const decoder = new TextDecoder()
let readers = 0
let bytesReserved = 0
/** What each client network is reading now; a network is dropped when it reads nothing. */
const networks = new Map<string, { readers: number; bytes: number }>()

/** What the isolate is reading now, and how many client networks it is reading from. */
export function bodiesInFlight(): { readers: number; bytes: number; networks: number } {
  return { readers, bytes: bytesReserved, networks: networks.size }
}

const busy = (yours: boolean) =>
  new ApiError(
    503,
    yours
      ? 'The gateway is receiving too many request bodies from your network at once; retry shortly'
      : 'The gateway is receiving too many request bodies at once; retry shortly',
    { code: 'server_busy', headers: { 'retry-after': '1' } },
  )

// Parsed bodies. A body's bytes are bounded, not what JSON.parse makes of them: `{}` is 2 bytes and
// a V8 object of some 140. One chat body may hold MAX_CONTAINERS objects and arrays (~30 MB parsed);
// the ones beyond FREE_CONTAINERS each (real prompts hold a few per message) share one budget per
// isolate while their request runs, so that concurrent heavy bodies cannot take a worker past its
// memory limit — the runtime would kill it, and every request in flight in it (16 concurrent bodies
// of 199,000 `{}` did, attack of 2026-12-03). Beyond the budget: 503 server_busy, retry in 1 s.
const FREE_CONTAINERS = 1_000
const MAX_CONTAINERS_IN_FLIGHT = 300_000
let containersInFlight = 0

/**
 * Reserves a parsed body's `containers` (beyond the free allowance) from the isolate's budget, or
 * refuses with 503. Returns the release (idempotent), or undefined for an ordinary body, which
 * reserves nothing (and whose response is then not wrapped).
 */
export function reserveParsed(containers: number): (() => void) | undefined {
  const heavy = containers - FREE_CONTAINERS
  if (heavy <= 0) return undefined
  if (containersInFlight > 0 && containersInFlight + heavy > MAX_CONTAINERS_IN_FLIGHT) {
    throw busy(false)
  }
  containersInFlight += heavy
  let held = true
  return () => {
    if (held) containersInFlight -= heavy
    held = false
  }
}

/** `res`, with `release` called once its body has been sent or abandoned (at once if it has none). */
export function releasedAtEnd(res: Response, release: () => void): Response {
  if (!res.body) {
    release()
    return res
  }
  const reader = res.body.getReader()
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read()
        if (done) {
          release()
          controller.close()
        } else controller.enqueue(value)
      } catch (err) {
        release()
        controller.error(err)
      }
    },
    cancel(reason) {
      release()
      return reader.cancel(reason)
    },
  })
  return new Response(body, {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  })
}

const tooLarge = (max: number) =>
  new ApiError(413, `The request body exceeds ${max} bytes`, { code: 'request_too_large' })

/**
 * Reads the body (if any) within `limitsFor(path)`, and within the share of `networkOf(c)` (the
 * client's network), and leaves it, decoded as `Request.text()`
 * would, in Hono's body cache: `c.req.text()`, `c.req.json()` and the validators take it from
 * there without waiting on the network. (`c.req.raw`'s own stream is spent: read the body through
 * `c.req`.) Replacing `c.req.raw` with a Request over the bytes instead cost ~20 µs per request.
 */
export function bodyGuard(
  limitsFor: (path: string) => BodyLimits,
  networkOf: (c: Context) => string,
): MiddlewareHandler {
  return async function bodyGuard(c, next) {
    const raw = c.req.raw
    if (!raw.body) return next()
    const limits = limitsFor(c.req.path)
    const length = raw.headers.has('transfer-encoding')
      ? NaN
      : Number(raw.headers.get('content-length') ?? NaN)
    // Without a declared length (chunked), the body may be as large as the route allows.
    const declared = Number.isSafeInteger(length) && length >= 0 ? length : null
    if (declared !== null && declared > limits.maxBytes) throw tooLarge(limits.maxBytes)
    const size = declared ?? limits.maxBytes
    const reserve = size > SMALL_BODY ? size : 0
    const network = networkOf(c)
    const mine = networks.get(network) ?? { readers: 0, bytes: 0 }
    // A network's share binds only while the isolate's budget is more than half taken: a busy
    // client alone (20 parallel 400 KB prompts from one server) is not refused while there is room,
    // and a flood from one network still leaves the other half to everyone else.
    const readersCrowded = readers >= limits.maxReaders / 2
    const bytesCrowded = bytesReserved + reserve > limits.maxBytesInFlight / 2
    if (
      readersCrowded && mine.readers >= Math.min(limits.maxReadersPerNetwork, limits.maxReaders)
    ) {
      throw busy(true)
    }
    if (
      reserve && bytesCrowded &&
      mine.bytes + reserve > Math.max(limits.maxBytesPerNetwork, limits.maxBytes)
    ) throw busy(true)
    if (readers >= limits.maxReaders) throw busy(false)
    if (reserve && bytesReserved + reserve > Math.max(limits.maxBytesInFlight, limits.maxBytes)) {
      throw busy(false)
    }
    readers++
    bytesReserved += reserve
    mine.readers++
    mine.bytes += reserve
    networks.set(network, mine)
    let body: Uint8Array<ArrayBuffer>
    try {
      body = await read(raw.body, size, declared !== null, limits)
    } finally {
      readers--
      bytesReserved -= reserve
      mine.readers--
      mine.bytes -= reserve
      if (mine.readers === 0) networks.delete(network)
    }
    // Hono keeps a promise per body kind there (its type says the value); text is what json()
    // and the validators read too.
    const cache = c.req.bodyCache as { text?: Promise<string> }
    cache.text = Promise.resolve(decoder.decode(body))
    return next()
  }
}

/**
 * The body as one buffer: a body that arrives in one chunk is that chunk; otherwise `size` bytes
 * are allocated at once when the length is declared (exactly what was reserved; the runtime's own
 * framing refuses a shorter or longer body), else grown by doubling up to `size`, and each chunk is
 * copied in and dropped, so the runtime's chunk buffers (64 KiB each, however little of one a slow
 * sender filled) are not kept.
 */
async function read(
  stream: ReadableStream<Uint8Array>,
  size: number,
  exact: boolean,
  limits: BodyLimits,
): Promise<Uint8Array<ArrayBuffer>> {
  const reader = stream.getReader()
  let buffer = new Uint8Array(0)
  let filled = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new ApiError(408, `The request body did not arrive within ${limits.timeoutMs} ms`, {
            code: 'request_timeout',
          }),
        ),
      limits.timeoutMs,
    )
  })
  try {
    for (;;) {
      const { done, value } = await Promise.race([reader.read(), deadline])
      if (done) break
      if (filled + value.length > size) throw tooLarge(limits.maxBytes)
      if (filled === 0 && exact && value.length === size) {
        buffer = value as Uint8Array<ArrayBuffer>
        filled = size
        continue
      }
      if (filled + value.length > buffer.length) {
        const grown = new Uint8Array(
          exact ? size : Math.min(size, Math.max(filled + value.length, buffer.length * 2)),
        )
        grown.set(buffer.subarray(0, filled))
        buffer = grown
      }
      buffer.set(value, filled)
      filled += value.length
    }
    return buffer.subarray(0, filled)
  } catch (err) {
    // The rest of the body is not wanted: release the connection's stream (the runtime closes it).
    reader.cancel().catch(() => {})
    if (err instanceof ApiError) throw err
    // The stream broke (the client hung up mid-body, or its framing was wrong): the client's doing,
    // not an unhandled error (a 500 and an error line that anyone could write at will).
    throw new ApiError(400, 'The request body ended before it was complete', {
      code: 'incomplete_body',
    })
  } finally {
    clearTimeout(timer)
  }
}
