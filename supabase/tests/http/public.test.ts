// Public routes and cross-cutting behaviour: /health, /, the models cache (fresh, stale-while-
// revalidate, dead upstream), /models/providers, /openapi.json, the docs' assets, 404/405/413, CORS.

import assert from 'node:assert/strict'
import { gunzipSync } from 'node:zlib'
import { newAccount, newAdmin } from '../lib/accounts.ts'
import { api } from '../lib/http.ts'
import { simConfig, simStats } from '../lib/sim.ts'
import { db, GATEWAY_URL, test, waitFor } from '../lib/stack.ts'

test('/health: database and model cache state; / lists the endpoints', async () => {
  const health = await api('/health')
  assert.equal(health.status, 200, health.text)
  assert.ok(['ok', 'degraded'].includes(health.json.status))
  assert.equal(health.json.database, 'ok')
  assert.equal(typeof health.json.models_cache.upstream_ok, 'boolean')

  for (const path of ['', '/']) {
    const root = await api(path)
    assert.equal(root.status, 200, `${path}: ${root.text}`)
    for (
      const e of [
        'GET /health',
        'GET /models',
        'GET /models/providers',
        'POST /auth/register',
        'POST /admin/add_credits',
        'GET /admin/balance',
        'GET /admin/monitor',
        'POST /admin/limit',
        'POST /admin/refresh-models',
        'GET /admin/cache-status',
        'GET /user/balance',
        'GET /user/monitor',
        'GET /user/limit',
        'GET /user/profile',
        'PUT /user/profile',
        'DELETE /user/account',
        'POST /user/api-keys',
        'GET /user/api-keys',
        'PUT /user/api-keys/:key_id',
        'DELETE /user/api-keys/:key_id',
        'GET /user/api-keys/usage',
        'POST /v1/chat/completions',
        'GET /openapi.json',
        'GET /docs',
        'GET /redoc',
      ]
    ) assert.ok(root.json.endpoints.includes(e), e)
  }
})

test('models: refresh, serve from cache, group by provider; /v1/models for OpenAI clients', async () => {
  const admin = await newAdmin()
  const refreshed = await api('/admin/refresh-models', { key: admin.key, method: 'POST' })
  assert.equal(refreshed.status, 200, refreshed.text)
  assert.ok(refreshed.json.models > 10)
  assert.equal(refreshed.json.models_cache.status, 'fresh')

  const before = (await simStats(true)).requests.models
  const models = await api('/models')
  assert.equal(models.status, 200)
  assert.equal(models.json.object, 'list')
  assert.equal(models.json.data.length, refreshed.json.models)
  assert.ok(models.json.data.some((m: { id: string }) => m.id === 'openai/gpt-4o-mini'))
  assert.equal(models.headers.get('x-models-cache'), 'fresh')
  const v1 = await api('/v1/models')
  assert.deepEqual(v1.json, models.json)
  assert.equal((await simStats(true)).requests.models, before, 'served from the cache')

  const providers = await api('/models/providers')
  assert.equal(providers.status, 200, providers.text)
  const p = providers.json
  assert.equal(p.total_models, models.json.data.length)
  assert.equal(
    p.providers.reduce((n: number, x: { model_count: number }) => n + x.model_count, 0),
    p.total_models,
  )
  const openai = p.providers.find((x: { provider: string }) => x.provider === 'openai')
  assert.ok(openai.model_count >= 3)
  assert.ok(openai.pricing.prompt.min <= openai.pricing.prompt.max)
  assert.ok(openai.models.includes('openai/gpt-4o-mini'))
})

test('models: a dead upstream serves the last good copy, and /health and cache-status say so', async () => {
  const admin = await newAdmin()
  assert.equal((await api('/admin/refresh-models', { key: admin.key, method: 'POST' })).status, 200)
  await simConfig({ models_fault: 503 })
  try {
    const failed = await api('/admin/refresh-models', { key: admin.key, method: 'POST' })
    assert.equal(failed.status, 503, failed.text)
    const models = await api('/models')
    assert.equal(models.status, 200)
    assert.ok(models.json.data.length > 10)
    const health = await api('/health')
    assert.equal(health.json.status, 'degraded')
    assert.equal(health.json.models_cache.upstream_ok, false)
    assert.equal(health.json.models_cache.serving_last_good_copy, true)
    assert.ok(health.json.models_cache.last_error)
    const status = await api('/admin/cache-status', { key: admin.key })
    assert.equal(status.status, 200)
    assert.equal(status.json.models_cache.serving_last_good_copy, true)
  } finally {
    await simConfig({ models_fault: 0 })
  }
  assert.equal((await api('/admin/refresh-models', { key: admin.key, method: 'POST' })).status, 200)
  const health = await api('/health')
  assert.equal(health.json.models_cache.upstream_ok, true)
  assert.equal(health.json.status, 'ok')
})

test('models: past the TTL a stale copy is served at once and refreshed in background', async () => {
  const [{ ttl }] =
    await db()`select models_cache_ttl_seconds as ttl from gateway.system_settings where id`
  const admin = await newAdmin()
  assert.equal((await api('/admin/refresh-models', { key: admin.key, method: 'POST' })).status, 200)
  await db()`select gateway.set_setting('models_cache_ttl_seconds', '1')`
  try {
    await new Promise((r) => setTimeout(r, 6_000))
    const before = (await simStats(true)).requests.models
    const stale = await api('/models')
    assert.equal(stale.status, 200)
    assert.equal(stale.headers.get('x-models-cache'), 'stale')
    await waitFor(
      'a background refresh',
      async () => (await simStats(true)).requests.models > before,
    )
  } finally {
    await db()`select gateway.set_setting('models_cache_ttl_seconds', ${String(ttl)})`
  }
})

test('/openapi.json documents every route from the same zod schemas', async () => {
  const res = await api('/openapi.json')
  assert.equal(res.status, 200)
  const doc = res.json
  assert.equal(doc.openapi, '3.1.0')
  for (
    const [path, method] of [
      ['/gateway/health', 'get'],
      ['/gateway/models', 'get'],
      ['/gateway/models/providers', 'get'],
      ['/gateway/auth/register', 'post'],
      ['/gateway/admin/add_credits', 'post'],
      ['/gateway/admin/limit', 'post'],
      ['/gateway/user/profile', 'put'],
      ['/gateway/user/account', 'delete'],
      ['/gateway/user/api-keys/{key_id}', 'put'],
      ['/gateway/user/api-keys/usage', 'get'],
      ['/gateway/v1/chat/completions', 'post'],
    ]
  ) assert.ok(doc.paths[path]?.[method], `${method} ${path}`)
  for (
    const s of ['Error', 'ChatCompletionRequest', 'UserMonitor', 'KeyUsage', 'RegisterRequest']
  ) {
    assert.ok(doc.components.schemas[s], s)
  }
  assert.equal(doc.components.securitySchemes.bearerAuth.scheme, 'bearer')
})

test('/docs and /redoc pages and their assets are served by the function (gzip or plain)', async () => {
  for (const page of ['/docs', '/redoc']) {
    const res = await api(page)
    assert.equal(res.status, 200)
    assert.match(res.headers.get('content-type')!, /text\/html/)
    const assets = [...res.text.matchAll(/(?:src|href)="(docs\/[^"]+)"/g)].map((m) => m[1])
    assert.ok(assets.length >= 1, page)
    for (const asset of assets) {
      const gz = await fetch(`${GATEWAY_URL}/${asset}`, { headers: { 'accept-encoding': 'gzip' } })
      assert.equal(gz.status, 200, asset)
      const bytes = new Uint8Array(await gz.arrayBuffer())
      // fetch may already have decoded the gzip; either way the content is the asset.
      const text = new TextDecoder().decode(
        bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes,
      )
      assert.ok(text.length > 10_000, asset)
      const plain = await fetch(`${GATEWAY_URL}/${asset}`, {
        headers: { 'accept-encoding': 'identity' },
      })
      assert.equal(plain.status, 200)
      assert.equal((await plain.text()).length, text.length)
    }
  }
  assert.equal((await api('/docs/swagger-ui/0.0.0/swagger-ui.css')).status, 404)
})

test('unknown routes are 404, wrong methods 405 (with Allow), oversized bodies 413', async () => {
  const missing = await api('/nope')
  assert.equal(missing.status, 404)
  assert.deepEqual(Object.keys(missing.json.error).sort(), ['code', 'message', 'param', 'type'])
  const wrong = await api('/health', { method: 'POST', body: {} })
  assert.equal(wrong.status, 405)
  assert.equal(wrong.headers.get('allow'), 'GET')
  const wrongChat = await api('/v1/chat/completions')
  assert.equal(wrongChat.status, 405)
  assert.equal(wrongChat.headers.get('allow'), 'POST')

  const a = await newAccount()
  const big = 'x'.repeat(5 * 1024 * 1024)
  const tooLarge = await api('/v1/chat/completions', {
    key: a.key,
    body: { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: big }] },
  })
  assert.equal(tooLarge.status, 413)
  assert.equal(tooLarge.json.error.code, 'request_too_large')
})

test('CORS: preflight and response headers for browsers; nothing for server-side clients', async () => {
  const pre = await fetch(`${GATEWAY_URL}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: {
      origin: 'https://app.example.com',
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type',
    },
  })
  await pre.body?.cancel()
  assert.equal(pre.status, 204)
  assert.ok(pre.headers.get('access-control-allow-origin'))
  assert.match(pre.headers.get('access-control-allow-methods')!, /POST/)
  const withOrigin = await api('/health', { headers: { origin: 'https://app.example.com' } })
  assert.ok(withOrigin.headers.get('access-control-allow-origin'))
  assert.match(
    withOrigin.headers.get('access-control-expose-headers')!,
    /x-ratelimit-remaining-requests/,
  )
  const without = await api('/health')
  assert.equal(without.headers.get('access-control-allow-origin'), null)
})

test('errors never carry SQL text, stack traces or keys', async () => {
  const a = await newAccount()
  const responses = await Promise.all([
    api('/user/api-keys/99999999999', { method: 'DELETE', key: a.key }),
    api('/user/api-keys', { key: a.key, body: { key_name: 'x', allowed_ips: ['1.2.3.4/99'] } }),
    api('/admin/balance', { key: a.key }),
    api('/v1/chat/completions', { key: a.key, body: { model: 'x', messages: 'hi' } }),
  ])
  for (const r of responses) {
    assert.ok(r.status >= 400 && r.status < 500, r.text)
    assert.doesNotMatch(r.text, /select |gateway\.|\bat [\w.]+ \(|PostgresError|stack/i)
    assert.ok(!r.text.includes(a.key))
  }
})
