// Every error the gateway answers with, in OpenAI's shape: {"error":{"message","type","code","param"}}.
// Handlers throw ApiError; app.onError turns it (and anything else) into a response exactly once.
// Database errors are translated here by SQLSTATE (docs/SQL-API.md, "Errors"): the SQL side's
// user-safe message and its machine code (hint) pass through; any other failure becomes a generic
// 500, or 503 when the database cannot be reached — never SQL text, a stack or a key.

import { HTTPException } from 'hono/http-exception'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { log } from './log.ts'

export interface ErrorBody {
  error: { message: string; type: string; code: string | null; param: string | null }
}

/** OpenAI's `type` for each status; clients (the OpenAI SDK) branch on the status itself. */
const TYPE_BY_STATUS: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'insufficient_quota',
  403: 'permission_error',
  404: 'invalid_request_error',
  405: 'invalid_request_error',
  408: 'invalid_request_error',
  409: 'invalid_request_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  422: 'invalid_request_error',
  429: 'rate_limit_error',
}

export function errorType(status: number): string {
  return TYPE_BY_STATUS[status] ?? 'api_error'
}

export function errorBody(
  status: number,
  message: string,
  code: string | null = null,
  param: string | null = null,
): ErrorBody {
  return { error: { message, type: errorType(status), code, param } }
}

export class ApiError extends HTTPException {
  readonly code: string | null
  readonly param: string | null
  readonly headers: Record<string, string>

  constructor(
    status: ContentfulStatusCode,
    message: string,
    opts: { code?: string | null; param?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(status, { message })
    this.code = opts.code ?? null
    this.param = opts.param ?? null
    this.headers = opts.headers ?? {}
  }

  override getResponse(): Response {
    return errorResponse(this.status, this.message, this.code, this.param, this.headers)
  }
}

const JSON_TYPE = 'application/json; charset=utf-8'

export function errorResponse(
  status: number,
  message: string,
  code: string | null = null,
  param: string | null = null,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(errorBody(status, message, code, param)), {
    status,
    headers: { 'content-type': JSON_TYPE, ...headers },
  })
}

// docs/SQL-API.md "Errors": SQLSTATE → HTTP status (and the code used when the hint is empty).
const SQLSTATE: Record<string, [ContentfulStatusCode, string]> = {
  '28000': [401, 'invalid_api_key'],
  '42501': [403, 'permission_denied'],
  'P0002': [404, 'not_found'],
  '22023': [400, 'invalid_request'],
  '23505': [400, 'duplicate'],
  '53400': [429, 'rate_limited'],
  'P0003': [402, 'insufficient_credits'],
  'P0422': [422, 'idempotency_key_reused'],
  'P0409': [409, 'idempotency_in_progress'],
}

// Values of the request that Postgres cannot take: a NUL character in a text or jsonb value (22021,
// 22P05), an unpaired UTF-16 surrogate escape in JSON (22P02), a number out of range (22003), JSON
// nested deeper than the server's stack allows (54001). The client's input, so a 400 — never a 500 —
// and never Postgres's own message, which quotes the value. (Found by
// supabase/tests/http/bad-input-every-route.test.ts: any string with "\u0000" was a 500.)
const INVALID_VALUE: Record<string, string> = {
  '22021': 'The request contains a character that cannot be stored (such as NUL)',
  '22P05': 'The request contains a character that cannot be stored (such as NUL)',
  '22P02': 'The request contains a value that is not valid text (such as an unpaired surrogate)',
  '22003': 'A number in the request is out of range',
  '54001': 'The request is nested too deeply',
}

// SQLSTATE classes and client-side codes that mean "the database is unreachable or overloaded" (a
// deadlock or serialization failure that persisted through db.ts's retries counts as overloaded).
// Client side: postgres.js's own connection codes, and whatever the socket under it reports when
// the server goes away (an errno name such as EPIPE or ECONNRESET, or Node's ERR_STREAM_DESTROYED
// / ERR_SOCKET_CLOSED for a write to a socket already closed): a broken connection, never a bug.
const UNAVAILABLE = /^(08|57P0[1-3]|53300|40001|40P01)/
const UNREACHABLE =
  /^(CONNECT_TIMEOUT$|CONNECTION_|E[A-Z0-9]+$|EAI_[A-Z]+$|ERR_STREAM_|ERR_SOCKET_)/

interface PgErrorLike {
  name?: string
  code?: string
  message?: string
  hint?: string
  detail?: string
}

/** Translates a postgres.js error into the ApiError a client may see. */
export function fromDbError(err: unknown): ApiError {
  if (err instanceof ApiError) return err
  const e = (err ?? {}) as PgErrorLike
  const code = typeof e.code === 'string' ? e.code : ''
  const mapped = e.name === 'PostgresError' ? SQLSTATE[code] : undefined
  if (mapped) {
    const [status, fallbackCode] = mapped
    const headers: Record<string, string> = {}
    if (status === 429) {
      const seconds = Math.max(1, Math.ceil(Number(e.detail)))
      if (Number.isFinite(seconds)) headers['retry-after'] = String(seconds)
    }
    return new ApiError(status, e.message || 'Request refused', {
      code: e.hint || fallbackCode,
      headers,
    })
  }
  const invalid = e.name === 'PostgresError' ? INVALID_VALUE[code] : undefined
  if (invalid) return new ApiError(400, invalid, { code: 'invalid_request' })
  // Only the SQLSTATE / client code is logged: messages may quote values, and values may be keys.
  const unavailable = e.name === 'PostgresError' ? UNAVAILABLE.test(code) : UNREACHABLE.test(code)
  log('error', unavailable ? 'database unavailable' : 'unexpected database error', {
    code: code || (e.name ?? 'unknown'),
  })
  if (unavailable) {
    // A restart or failover of Postgres lasts about a second; clients back off by this.
    return new ApiError(503, 'The service is temporarily unavailable; please retry', {
      code: 'database_unavailable',
      headers: { 'retry-after': '1' },
    })
  }
  return new ApiError(500, 'Internal error', { code: 'internal_error' })
}
