// The response contract: every route /openapi.json publishes is called for real against the stack,
// and each JSON answer is validated (Ajv, JSON Schema 2020-12, as OpenAPI 3.1 uses) against the
// schema the document publishes for that route and status: the 2xx body and the error bodies of the
// 4xx it documents. Response bodies come from SQL's jsonb (docs/SQL-API.md) while the document comes
// from schemas.ts: this is where the two must agree. Beyond the published schema, a member the
// document does not name is a mismatch too (the document would be incomplete), and so is a status
// it does not list. The test fails if a route of the document is not exercised.

import assert from 'node:assert/strict'
import {
  type Account,
  newAccount,
  newAdmin,
  uniqueEmail,
  withRegistrationRoom,
} from '../lib/accounts.ts'
import { Contract, missed } from '../lib/contract.ts'
import type { ApiOptions } from '../lib/http.ts'
import { GATEWAY_URL, test } from '../lib/stack.ts'

test('every route of /openapi.json answers what the document publishes (2xx and 4xx)', async () => {
  const doc = await (await fetch(`${GATEWAY_URL}/openapi.json`)).json()
  const c = new Contract(doc)
  const user: Account = await newAccount(100_000, 'contract')
  const admin: Account = await newAdmin()
  const leaving: Account = await newAccount(10, 'contract-leaving')
  const other: Account = await newAccount(10, 'contract-other')
  const as = (a: Account, body?: unknown): ApiOptions => ({ key: a.key, body })

  // public
  await c.call('GET', '/health')
  await c.call('GET', '/models')
  await c.call('GET', '/v1/models')
  await c.call('GET', '/models/providers')
  await withRegistrationRoom(1, async () => {
    await c.call('POST', '/auth/register', { body: { email: uniqueEmail('contract') } })
  })
  await c.call('POST', '/auth/register', { body: { email: 'not an email' } })

  // a completion first, so that usage, monitors and balances have something to say
  const chat = {
    model: 'openai/gpt-4o-mini~len-3',
    messages: [{ role: 'user', content: 'hi' }],
    max_tokens: 10,
  }
  await c.call('POST', '/v1/chat/completions', as(user, chat))
  await c.call('POST', '/v1/chat/completions', as(user, { ...chat, messages: [] }))
  await c.call('POST', '/v1/chat/completions', { body: chat })

  // the caller's account
  for (const path of ['/user/balance', '/user/monitor', '/user/limit', '/user/profile']) {
    await c.call('GET', path, as(user))
    await c.call('GET', path)
  }
  await c.call('PUT', '/user/profile', as(user, { full_name: 'Contract Test', settings: { a: 1 } }))
  await c.call('PUT', '/user/profile', as(user, { credits: 5 }))
  await c.call('DELETE', '/user/account', as(leaving))
  await c.call('DELETE', '/user/account')

  // keys
  const created = await c.call('POST', '/user/api-keys', as(user, { key_name: 'contract' }))
  const keyId = created.json?.key_id
  await c.call('POST', '/user/api-keys', as(user, { key_name: '' }))
  await c.call('GET', '/user/api-keys', as(user))
  await c.call('GET', '/user/api-keys')
  await c.call('GET', '/user/api-keys/usage', as(user))
  await c.call('GET', '/user/api-keys/usage')
  await c.call('PUT', `/user/api-keys/${keyId}`, as(user, { key_name: 'renamed', max_requests: 5 }))
  await c.call('PUT', `/user/api-keys/${other.keyId}`, as(user, { key_name: 'not mine' }))
  await c.call('POST', `/user/api-keys/${keyId}/rotate`, as(user, { grace_seconds: 0 }))
  await c.call('POST', `/user/api-keys/${keyId}/rotate`, as(user, { grace_seconds: -1 }))
  await c.call('DELETE', `/user/api-keys/${keyId}`, as(user))
  await c.call('DELETE', `/user/api-keys/${keyId}`, as(user))

  // admin
  await c.call('POST', '/admin/add_credits', as(admin, { user_id: user.userId, credits: 5 }))
  await c.call('POST', '/admin/add_credits', as(user, { user_id: user.userId, credits: 5 }))
  await c.call('POST', '/admin/add_credits', as(admin, { user_id: 2 ** 40, credits: 5 }))
  await c.call('GET', '/admin/balance?limit=3', as(admin))
  await c.call('GET', '/admin/balance?limit=0', as(admin))
  await c.call('GET', '/admin/monitor', as(admin))
  await c.call('GET', '/admin/monitor', as(user))
  await c.call(
    'POST',
    '/admin/limit',
    as(admin, {
      user_id: user.userId,
      rate_limits: { requests_per_minute: 1000, tokens_per_day: null },
    }),
  )
  await c.call(
    'POST',
    '/admin/limit',
    as(admin, {
      api_key: user.key,
      scope: 'key',
      rate_limits: { requests_per_hour: 500 },
    }),
  )
  await c.call('POST', '/admin/limit', as(admin, { rate_limits: {} }))
  await c.call('POST', '/admin/refresh-models', as(admin))
  await c.call('POST', '/admin/refresh-models')
  await c.call('GET', '/admin/cache-status', as(admin))
  await c.call('GET', '/admin/cache-status', as(user))
  await c.call('POST', '/admin/reconcile', as(admin, { limit: 1 }))
  await c.call('POST', '/admin/reconcile', as(user, {}))

  console.log(`${c.checked.length} answers checked against ${c.operations.length} operations`)
  assert.deepEqual(missed(c), [], 'every operation of the document is exercised with a 2xx answer')
  assert.deepEqual(c.problems, [])
})
