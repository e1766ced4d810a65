// The shapes a chat request's hold takes on its way (docs/SQL-API.md, "The request path"): what
// admission answers (a hold or a refusal), and the usage a hold is settled with. Types only, and the
// one rounding rule every settle applies: every step of the request path imports this, it imports
// nothing.

interface Window {
  limit: number | null
  remaining: number | null
  reset_seconds: number | null
}
export interface Limits {
  requests?: Window | null
  tokens?: Window | null
}

export interface Hold {
  hold_id: number
  user_id: number
  key_id: number
  key_prefix: string
  held_credits: number
  /** What may be sent upstream as max_tokens: the request's, capped by what the hold covers. */
  max_tokens: number
  /** The balance as admission saw it (before this request's charge). */
  balance: number
  /** Credits neither spent nor held once this hold was placed. */
  available_credits: number
  /** The multipliers the hold is priced at, as exact decimal text (see credits.ts). */
  prompt_multiplier: string
  completion_multiplier: string
  limits?: Limits
  /** When the hold sweeper may expire it (ISO time, from admission); hold-notes.ts extends it. */
  expires_at?: string
}

/** Admission's answer when it refuses: `reason` is the machine code (refusals.ts maps it to HTTP). */
export interface Refusal {
  ok: false
  reason: string
  message?: string
  retry_after_seconds?: number
  window?: string
  limits?: Limits
}

export type BeginResult = ({ ok: true } & Hold) | Refusal

/**
 * How a settle knows what was generated:
 *   usage         upstream's usage object (the normal case, stream or not)
 *   generation    OpenRouter's /generation stats for the X-Generation-Id (after a disconnect or a
 *                 broken response: they appear a few seconds after the generation ends)
 *   stream_count  counted by us: the prompt estimate and one token per streamed content chunk
 */
export type SettledBy = 'usage' | 'generation' | 'stream_count'

/** How the request ended, recorded with the usage. */
export type Outcome = 'success' | 'cancelled' | 'upstream_error'

export interface Usage {
  model: string
  promptTokens: number
  completionTokens: number
  cost: number | null
  generationId: string | null
  settledBy: SettledBy
  outcome: Outcome
  latencyMs: number
}

/** Token counts as settle_request receives them (non-negative integers). */
export function tokens(n: number): number {
  return Math.max(0, Math.round(n))
}
