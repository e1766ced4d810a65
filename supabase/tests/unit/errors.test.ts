// errors.ts and upstream.ts's error mapping: every failure a client can meet, shaped once. A
// database error becomes the status its SQLSTATE means (SQL's own message and machine code pass
// through), a value Postgres cannot store a 400, an unreachable database a 503, anything else a
// bare 500 that says nothing of SQL; an upstream failure becomes what the client can act on (the
// operator's own OpenRouter problems are 503s, never the client's 401/402).

import assert from 'node:assert/strict'
import { ApiError, errorBody, errorType, fromDbError } from '../../functions/gateway/errors.ts'
import { upstreamError } from '../../functions/gateway/upstream.ts'

class PostgresError extends Error {
  override name = 'PostgresError'
  constructor(
    readonly code: string,
    message = 'sql message',
    readonly hint = '',
    readonly detail = '',
  ) {
    super(message)
  }
}

Deno.test("SQLSTATE → status, with SQL's message and its machine code (hint)", () => {
  const cases: [string, number, string][] = [
    ['28000', 401, 'invalid_api_key'],
    ['42501', 403, 'permission_denied'],
    ['P0002', 404, 'not_found'],
    ['22023', 400, 'invalid_request'],
    ['23505', 400, 'duplicate'],
    ['53400', 429, 'rate_limited'],
    ['P0003', 402, 'insufficient_credits'],
    ['P0422', 422, 'idempotency_key_reused'],
    ['P0409', 409, 'idempotency_in_progress'],
  ]
  for (const [sqlstate, status, code] of cases) {
    const plain = fromDbError(new PostgresError(sqlstate, 'Refused by SQL'))
    assert.equal(plain.status, status, sqlstate)
    assert.equal(plain.code, code)
    assert.equal(plain.message, 'Refused by SQL')
    assert.equal(fromDbError(new PostgresError(sqlstate, 'm', 'key_inactive')).code, 'key_inactive')
  }
  const limited = fromDbError(new PostgresError('53400', 'slow down', '', '2.3'))
  assert.equal(limited.headers['retry-after'], '3')
})

Deno.test('a value Postgres cannot take is a 400 that never quotes it', () => {
  for (const sqlstate of ['22021', '22P05', '22P02', '22003', '54001']) {
    const err = fromDbError(new PostgresError(sqlstate, 'invalid input: "gw_live_secret"'))
    assert.equal(err.status, 400, sqlstate)
    assert.equal(err.code, 'invalid_request')
    assert.doesNotMatch(err.message, /gw_live|invalid input/)
  }
})

Deno.test('an unreachable database is a 503 to retry; anything else a bare 500', () => {
  const broken = [
    ...['08006', '08P01', '57P01', '57P03', '53300', '40P01'].map((c) => new PostgresError(c, 'x')),
    ...[
      'ECONNREFUSED',
      'ECONNRESET',
      'EPIPE',
      'ENOTCONN',
      'CONNECT_TIMEOUT',
      'CONNECTION_CLOSED',
      'ERR_STREAM_DESTROYED',
      'ERR_STREAM_WRITE_AFTER_END',
      'ERR_SOCKET_CLOSED',
      'EAI_AGAIN',
    ].map((code) => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:54322'), { code })),
  ]
  for (const err of broken) {
    const code = (err as { code: string }).code
    const mapped = fromDbError(err)
    assert.equal(mapped.status, 503, code)
    assert.equal(mapped.code, 'database_unavailable')
    assert.equal(mapped.getResponse().headers.get('retry-after'), '1', code)
  }
  for (
    const err of [
      new PostgresError('42883', 'function gateway.x() does not exist'),
      // postgres.js's codes for a mistake of ours, not an outage.
      Object.assign(new Error('undefined'), { code: 'UNDEFINED_VALUE' }),
      Object.assign(new Error('too many'), { code: 'MAX_PARAMETERS_EXCEEDED' }),
      Object.assign(new TypeError('bad'), { code: 'ERR_INVALID_ARG_TYPE' }),
      'boom',
      null,
    ]
  ) {
    const mapped = fromDbError(err)
    assert.equal(mapped.status, 500)
    assert.deepEqual([mapped.code, mapped.message], ['internal_error', 'Internal error'])
  }
  const already = new ApiError(418 as 400, 'kept')
  assert.equal(fromDbError(already), already)
})

Deno.test('error bodies are OpenAI-shaped, typed by status', () => {
  assert.deepEqual(errorBody(429, 'slow', 'rate_limited'), {
    error: { message: 'slow', type: 'rate_limit_error', code: 'rate_limited', param: null },
  })
  assert.equal(errorType(401), 'authentication_error')
  assert.equal(errorType(402), 'insufficient_quota')
  assert.equal(errorType(403), 'permission_error')
  assert.equal(errorType(502), 'api_error')
})

Deno.test('upstream failures → what the client can act on; keys in upstream messages masked', () => {
  const headers = new Headers({ 'retry-after': '7.2' })
  const body = (message: string) => JSON.stringify({ error: { message } })
  const cases: [number, number, string][] = [
    [429, 429, 'upstream_rate_limited'],
    [401, 503, 'upstream_unavailable'],
    [402, 503, 'upstream_unavailable'],
    [403, 503, 'upstream_unavailable'],
    [400, 400, 'upstream_invalid_request'],
    [404, 404, 'upstream_invalid_request'],
    [413, 413, 'upstream_invalid_request'],
    [422, 400, 'upstream_invalid_request'],
    [408, 503, 'upstream_timeout'],
    [503, 503, 'upstream_unavailable'],
    [500, 502, 'upstream_error'],
    [529, 502, 'upstream_error'],
  ]
  for (const [upstream, status, code] of cases) {
    const err = upstreamError(upstream, body('upstream says no'), headers)
    assert.deepEqual([err.status, err.code], [status, code], String(upstream))
  }
  assert.equal(upstreamError(429, '', headers).headers['retry-after'], '8')
  assert.equal(upstreamError(429, '', new Headers()).headers['retry-after'], '1')
  // The operator's key trouble never reads as the client's.
  assert.doesNotMatch(upstreamError(401, body('Invalid key sk-or-v1-x'), headers).message, /sk-or/)
  const key = 'gw_live_' + 'A'.repeat(28)
  const echoed = upstreamError(400, body(`unknown model ${key}`), headers).message
  assert.ok(!echoed.includes(key) && echoed.includes('gw_live_AAAA…'), echoed)
  assert.equal(upstreamError(400, body('x'.repeat(2000)), headers).message.length, 500)
  assert.equal(
    upstreamError(502, 'not json', headers).message,
    'The upstream provider returned an error',
  )
})
