// The app built in process (app.request), with no database and no upstream: what it answers before
// any SQL runs. CORS (hono/cors, skipped entirely without an Origin), unknown routes and wrong
// methods, the body limit, the chat route's refusals of a missing key, bad JSON and a body its
// schema refuses — all OpenAI-shaped errors — and /health with the database gone, each as the
// document the app publishes says.

import assert from 'node:assert/strict'
import { buildApp } from '../../functions/gateway/app.ts'
import { unknownKey } from '../lib/accounts.ts'
import { Contract } from '../lib/contract.ts'
import type { ApiOptions, ApiResponse } from '../lib/http.ts'

const app = buildApp()
const CHAT = '/gateway/v1/chat/completions'

Deno.test('CORS: a preflight is answered for browsers; a request without Origin gets no CORS', async () => {
  const pre = await app.request(CHAT, {
    method: 'OPTIONS',
    headers: {
      origin: 'https://app.example.com',
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type, x-stainless-os',
    },
  })
  assert.equal(pre.status, 204)
  assert.equal(pre.headers.get('access-control-allow-origin'), '*')
  assert.match(pre.headers.get('access-control-allow-methods')!, /POST/)
  // What the preflight asks for is allowed (the OpenAI SDK sends headers of its own).
  assert.match(pre.headers.get('access-control-allow-headers')!, /x-stainless-os/)
  assert.equal(pre.headers.get('access-control-max-age'), '86400')

  const browser = await app.request('/gateway/nowhere', { headers: { origin: 'https://a.b' } })
  assert.equal(browser.headers.get('access-control-allow-origin'), '*')
  assert.match(
    browser.headers.get('access-control-expose-headers')!,
    /x-ratelimit-remaining-tokens/,
  )
  assert.ok(browser.headers.get('x-request-id'))

  const server = await app.request('/gateway/nowhere')
  for (const [name] of server.headers) assert.doesNotMatch(name, /^access-control-/)
})

Deno.test('unknown routes are 404, known routes with another method 405 with Allow', async () => {
  const unknown = await app.request('/gateway/v1/secret/gw_live_x')
  assert.equal(unknown.status, 404)
  const body = await unknown.json()
  assert.equal(body.error.code, 'not_found')
  assert.doesNotMatch(JSON.stringify(body), /gw_live_x/, 'the path is not echoed')
  const wrong = await app.request(CHAT, { method: 'GET' })
  assert.equal(wrong.status, 405)
  assert.equal(wrong.headers.get('allow'), 'POST')
  assert.equal((await wrong.json()).error.type, 'invalid_request_error')
})

Deno.test('chat: a missing key, bad JSON and a refused body are 4xx before any SQL', async () => {
  const post = (body: string, headers: Record<string, string> = {}) =>
    app.request(CHAT, {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json', ...headers },
    })
  const auth = { authorization: `Bearer ${unknownKey()}` }
  const cases: [Response, number, string][] = [
    [await post('{}'), 401, 'missing_api_key'],
    [await post('{"model": ', auth), 400, 'invalid_json'],
    [await post('{"model":"m","messages":[]}', auth), 400, 'invalid_request'],
    [await post('{"messages":[{"role":"user","content":"x"}]}', auth), 400, 'invalid_request'],
    [
      await post('{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}', auth),
      400,
      'invalid_request',
    ],
    [
      await post('{"model":"m","messages":[{"role":"robot","content":"x"}]}', auth),
      400,
      'invalid_request',
    ],
    [
      await post('{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}', auth),
      400,
      'invalid_request',
    ],
  ]
  for (const [res, status, code] of cases) {
    const body = await res.json()
    assert.equal(res.status, status, JSON.stringify(body))
    assert.equal(body.error.code, code)
    assert.equal(typeof body.error.message, 'string')
  }
})

Deno.test('a body over the limit is a 413, whatever the route', async () => {
  const big = 'x'.repeat(4 * 1024 * 1024 + 1)
  const res = await app.request(CHAT, {
    method: 'POST',
    body: big,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${unknownKey()}` },
  })
  assert.equal(res.status, 413)
  assert.equal((await res.json()).error.code, 'request_too_large')
})

/** A request to the app in process, answered as lib/http.ts answers one over HTTP. */
async function inProcess(path: string, opts: ApiOptions): Promise<ApiResponse> {
  const headers: Record<string, string> = { ...opts.headers }
  if (opts.key) headers.authorization = `Bearer ${opts.key}`
  const body = opts.body === undefined ? undefined : JSON.stringify(opts.body)
  if (body) headers['content-type'] = 'application/json'
  const res = await app.request(`/gateway${path}`, { method: opts.method, headers, body })
  const text = await res.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, text, json }
}

Deno.test('without a database: /health is a 503 and the errors are as the document publishes', async () => {
  const doc = await (await app.request('/gateway/openapi.json')).json()
  const c = new Contract(doc, inProcess)
  const health = await c.call('GET', '/health')
  assert.equal(health.status, 503)
  assert.equal(health.json.status, 'unhealthy')
  const chat = { model: 'm', messages: [{ role: 'user', content: 'x' }] }
  assert.equal((await c.call('POST', '/v1/chat/completions', { body: chat })).status, 401)
  const bad = await c.call('POST', '/v1/chat/completions', {
    key: unknownKey(),
    body: { ...chat, n: 3 },
  })
  assert.equal(bad.status, 400)
  assert.equal((await c.call('GET', '/user/balance')).status, 401)
  assert.deepEqual(c.problems, [])
})
