// refusals.ts: every reason admission refuses with becomes the HTTP status an OpenAI client expects
// (401 for the key, 402 for credits, 403 for the key's rules, 429 for limits, with Retry-After),
// and the rate windows admission reports become the x-ratelimit-* headers.

import assert from 'node:assert/strict'
import type { Refusal } from '../../functions/gateway/hold.ts'
import { rateLimitHeaders, refusalError } from '../../functions/gateway/refusals.ts'

const refused = (reason: string, more: Partial<Refusal> = {}): Refusal => ({
  ok: false,
  reason,
  ...more,
})

Deno.test('each refusal reason maps to its status and keeps its code and message', () => {
  const expected: Record<string, number> = {
    invalid_api_key: 401,
    key_inactive: 401,
    key_expired: 401,
    permission_denied: 403,
    ip_not_allowed: 403,
    referrer_not_allowed: 403,
    insufficient_credits: 402,
    key_request_cap: 429,
    rate_limited: 429,
    // A reason this function does not know yet is refused, never admitted.
    something_new: 403,
  }
  for (const [reason, status] of Object.entries(expected)) {
    const err = refusalError(refused(reason, { message: `no: ${reason}` }))
    assert.equal(err.status, status, reason)
    assert.equal(err.code, reason)
    assert.equal(err.message, `no: ${reason}`)
  }
  assert.equal(refusalError(refused('rate_limited')).message, 'Request refused')
})

Deno.test('a 429 says when to retry: whole seconds, at least 1; other statuses do not', () => {
  const retry = (s?: number) => refusalError(refused('rate_limited', { retry_after_seconds: s }))
  assert.equal(retry(0.2).headers['retry-after'], '1')
  assert.equal(retry(41.5).headers['retry-after'], '42')
  assert.equal(retry(0).headers['retry-after'], '1')
  assert.equal(retry(undefined).headers['retry-after'], '1')
  assert.equal(refusalError(refused('key_request_cap')).headers['retry-after'], '1')
  assert.equal(refusalError(refused('insufficient_credits')).headers['retry-after'], undefined)
})

Deno.test('x-ratelimit-* headers from the windows admission reports, on refusals too', () => {
  const limits = {
    requests: { limit: 60, remaining: -2, reset_seconds: 12 },
    tokens: { limit: null, remaining: 500, reset_seconds: null },
  }
  assert.deepEqual(rateLimitHeaders(limits), {
    'x-ratelimit-limit-requests': '60',
    'x-ratelimit-remaining-requests': '0',
    'x-ratelimit-reset-requests': '12s',
    'x-ratelimit-remaining-tokens': '500',
  })
  assert.deepEqual(rateLimitHeaders(undefined), {})
  assert.deepEqual(rateLimitHeaders({ requests: null }), {})
  const err = refusalError(refused('rate_limited', { limits, retry_after_seconds: 3 }))
  assert.equal(err.headers['x-ratelimit-remaining-requests'], '0')
  assert.equal(err.headers['retry-after'], '3')
})
