// The simulator's request "spec": test knobs carried in the model id as `~` suffixes
// (so they survive a proxy that forwards only the body) or in the X-Sim-Fault header.
//
//   model    := catalog-id { ":" variant } { "~" suffix }
//   suffix   := "len-" N | "reason-" N | "delay-" N | "slow" ["-" N] | "route-" route
//             | "fault-" mode
//   route    := "first" | "dearest" | "cheapest"
//   mode     := "401" | "402" | "429" ["-" N] | "502" | "503" | "slow" ["-" N]
//             | "stream-error" | "stream-cut" | "malformed"

/** Faults that replace the whole response with an OpenRouter error of that status. */
export type StatusFault = '401' | '402' | '429' | '502' | '503'
/** Faults that answer 200 and then break the body. */
export type BodyFault = 'stream-error' | 'stream-cut' | 'malformed'

export interface Spec {
  /** The model id with the `~` suffixes removed (variant kept). */
  id: string
  /** Tokens to generate (`~len-N`); undefined = the simulator's default. */
  len?: number
  /** Reasoning tokens, when the model reasons (`~reason-N`); undefined = the default. */
  reason?: number
  /** How a fallback list or openrouter/auto picks the model that serves (`~route-…`). */
  route?: Route
  /** Delay before each streamed token chunk, ms (`~delay-N`). */
  delayMs: number
  /** Delay before the response headers, ms (`slow`). */
  slowMs: number
  fault?: StatusFault | BodyFault
  /** Retry-After seconds sent with a 429 fault. */
  retryAfterS: number
}

/** `first`: the first candidate that does not fail (OpenRouter's order); or the dearest/cheapest. */
export type Route = 'first' | 'dearest' | 'cheapest'
export const ROUTES: readonly Route[] = ['first', 'dearest', 'cheapest']

export const DEFAULT_SLOW_MS = 5000
export const DEFAULT_RETRY_AFTER_S = 2

const MODE =
  /^(?:(401|402|502|503)|429(?:-(\d+))?|slow(?:-(\d+))?|(stream-error|stream-cut|malformed))$/
const SUFFIX = /^(len|reason|delay)-(\d+)$/

/**
 * Applies one fault mode (header value or `fault-` suffix) to `spec`.
 * Returns false when the mode is not part of the grammar.
 */
export function applyFault(spec: Spec, mode: string): boolean {
  const m = MODE.exec(mode)
  if (!m) return false
  const [, status, retryAfter, slow, body] = m
  if (status) spec.fault = status as StatusFault
  else if (body) spec.fault = body as BodyFault
  else if (mode.startsWith('429')) {
    spec.fault = '429'
    spec.retryAfterS = retryAfter ? Number(retryAfter) : DEFAULT_RETRY_AFTER_S
  } else spec.slowMs = slow ? Number(slow) : DEFAULT_SLOW_MS
  return true
}

/** Splits `model~suffix~…` into a Spec; undefined when a suffix is not in the grammar. */
export function parseModel(model: string): Spec | undefined {
  const parts = model.split('~')
  const spec: Spec = { id: parts[0], delayMs: 0, slowMs: 0, retryAfterS: DEFAULT_RETRY_AFTER_S }
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i]
    const knob = SUFFIX.exec(part)
    if (knob) {
      if (knob[1] === 'len') spec.len = Number(knob[2])
      else if (knob[1] === 'reason') spec.reason = Number(knob[2])
      else spec.delayMs = Number(knob[2])
    } else if (part.startsWith('route-')) {
      const route = part.slice(6) as Route
      if (!ROUTES.includes(route)) return undefined
      spec.route = route
    } else if (part.startsWith('fault-')) {
      if (!applyFault(spec, part.slice(6))) return undefined
    } else if (!part.startsWith('slow') || !applyFault(spec, part)) {
      return undefined
    }
  }
  return spec
}
