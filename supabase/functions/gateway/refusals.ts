// Admission's answers as HTTP: a refusal's reason → its status (400/401/402/403/429/503) and
// Retry-After, with a message that names what was refused, and
// the rate windows it reports → the x-ratelimit-* headers OpenAI clients read (on refusals and on
// admitted requests alike).

import { maskKeysIn } from '../_shared/keys.ts'
import { ApiError } from './errors.ts'
import type { Limits, Refusal } from './hold.ts'

const REFUSAL_STATUS: Record<string, 400 | 401 | 402 | 403 | 429 | 503> = {
  model_not_found: 400,
  model_not_available: 403,
  pricing_unavailable: 503,
  invalid_api_key: 401,
  key_inactive: 401,
  key_expired: 401,
  permission_denied: 403,
  ip_not_allowed: 403,
  referrer_not_allowed: 403,
  key_request_cap: 429,
  rate_limited: 429,
  insufficient_credits: 402,
}

/** The x-ratelimit-* headers OpenAI clients read, from the tightest window of each kind. */
export function rateLimitHeaders(limits: Limits | undefined): Record<string, string> {
  const headers: Record<string, string> = {}
  for (const kind of ['requests', 'tokens'] as const) {
    const w = limits?.[kind]
    if (!w) continue
    if (w.limit != null) headers[`x-ratelimit-limit-${kind}`] = String(w.limit)
    if (w.remaining != null) {
      headers[`x-ratelimit-remaining-${kind}`] = String(Math.max(0, w.remaining))
    }
    if (w.reset_seconds != null) headers[`x-ratelimit-reset-${kind}`] = `${w.reset_seconds}s`
  }
  return headers
}

/** The message of a refusal: SQL's (it names the model, or the credits needed), else a default. */
function refusalMessage(r: Refusal): string {
  if (r.message) return r.message
  const model = r.model ? JSON.stringify(r.model) : 'the model requested'
  switch (r.reason) {
    case 'model_not_found':
      return `Model ${model} is not in the model catalog`
    case 'model_not_available':
      return `Model ${model} is not available on this gateway`
    case 'pricing_unavailable':
      return 'The model catalog has not been loaded yet, so no request can be priced; retry shortly'
    case 'insufficient_credits':
      return r.needed_credits != null
        ? `Insufficient credits: this request needs at least ${r.needed_credits} credits`
        : 'Insufficient credits'
  }
  return 'Request refused'
}

/** The error a refused admission is answered with (an unknown reason is a 403). */
export function refusalError(r: Refusal): ApiError {
  const status = REFUSAL_STATUS[r.reason] ?? 403
  const headers = rateLimitHeaders(r.limits)
  if (status === 429) {
    headers['retry-after'] = String(Math.max(1, Math.ceil(r.retry_after_seconds ?? 1)))
  }
  if (status === 503) headers['retry-after'] = '5'
  // A refusal may quote the model the client sent, and a key pasted as the model must not come back.
  return new ApiError(status, maskKeysIn(refusalMessage(r)), {
    code: r.reason,
    headers,
    ...(r.reason === 'model_not_found' ? { param: 'model' } : {}),
  })
}
