// Idempotency-Key on chat completions (non-streamed): a retry with the same key and the same body
// within 24 h gets the first answer and is not charged again; the same key with another body is a
// 422, and a retry while the first still runs a 409 (docs/SQL-API.md, "Idempotency-Key on chat").
// Costs one extra SQL call, only for requests that send the header. A stream cannot be replayed,
// so the header is refused there rather than silently ignored.

import type { Caller } from './identity.ts'
import { callerArgs } from './identity.ts'
import { inBackground } from './background.ts'
import { call } from './db.ts'
import { ApiError } from './errors.ts'
import { toHex } from '../_shared/keys.ts'

interface Claim {
  state: 'started' | 'replay' | 'in_progress' | 'mismatch'
  status?: number
  response?: unknown
}

const encoder = new TextEncoder()

/**
 * Claims `key` for this body. Returns the response to answer with instead of running the request
 * (a replay), throws 409/422, or returns undefined: go on, then call `complete`.
 */
export async function claim(
  who: Caller,
  key: string,
  rawBody: string,
): Promise<Response | undefined> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', encoder.encode(rawBody)))
  const c = await call<Claim>('idempotency_begin', [...callerArgs(who), key, toHex(digest)])
  switch (c.state) {
    case 'started':
      return undefined
    case 'replay':
      return new Response(JSON.stringify(c.response), {
        status: c.status ?? 200,
        headers: {
          'content-type': 'application/json; charset=utf-8',
          'idempotent-replayed': 'true',
        },
      })
    case 'in_progress':
      throw new ApiError(409, 'A request with this Idempotency-Key is still running', {
        code: 'idempotency_in_progress',
      })
    default:
      throw new ApiError(422, 'This Idempotency-Key was used with a different request body', {
        code: 'idempotency_key_reused',
      })
  }
}

/**
 * Stores the answer for replays, or (response null) releases the key so a retry runs anew. Await it
 * before answering: a retry sent the moment the answer arrives must find it stored, not "still
 * running" (a 409; found by supabase/tests/http/idempotency.test.ts). Never rejects.
 */
export function complete(
  who: Caller,
  key: string,
  status: number,
  response: unknown | null,
): Promise<unknown> {
  return inBackground(
    call('idempotency_complete', [who.keyHash, key, status, response as never]),
    'idempotency_complete',
  )
}
