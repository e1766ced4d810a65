// /user/*: balance, monitor, limits, profile, account deletion — each with its documented failures,
// and the rule that a key of account A never reads or changes anything of account B.

import assert from 'node:assert/strict'
import { newAccount, settled, unknownKey } from '../lib/accounts.ts'
import { api, chat } from '../lib/http.ts'
import { test } from '../lib/stack.ts'

async function readKey(key: string): Promise<string> {
  const res = await api('/user/api-keys', {
    key,
    body: { key_name: 'read only', permissions: ['read'] },
  })
  assert.equal(res.status, 200, res.text)
  return res.json.api_key
}

test('/user/balance: the balance, credits held by requests in flight, and what is available', async () => {
  const a = await newAccount(1234)
  const res = await api('/user/balance', { key: a.key })
  assert.equal(res.status, 200, res.text)
  assert.equal(res.json.user_id, a.userId)
  assert.equal(res.json.credits, 1234)
  assert.equal(res.json.held_credits, 0)
  assert.equal(res.json.available_credits, 1234)
  assert.equal(res.json.api_key, `${a.key.slice(0, 12)}…`)
  assert.ok(!res.text.includes(a.key), 'the plaintext key is never echoed')
})

test("/user/monitor: the spec's shape, counting what the account did", async () => {
  const a = await newAccount(1000)
  const done = await chat(a.key, { model: 'openai/gpt-4o-mini~len-4' })
  assert.equal(done.status, 200)
  await settled(a.userId)
  const res = await api('/user/monitor', { key: a.key })
  assert.equal(res.status, 200, res.text)
  const m = res.json
  assert.equal(m.status, 'success')
  assert.equal(m.user_id, a.userId)
  assert.equal(m.api_key, `${a.key.slice(0, 12)}…`)
  assert.equal(m.current_credits, done.json.gateway_usage.user_balance_after)
  for (
    const k of [
      'total_requests',
      'total_tokens',
      'total_cost',
      'requests_today',
      'tokens_today',
      'cost_today',
      'requests_this_month',
      'tokens_this_month',
      'cost_this_month',
      'average_tokens_per_request',
      'most_used_model',
      'last_request_time',
    ]
  ) assert.ok(k in m.usage_metrics, k)
  assert.equal(m.usage_metrics.total_requests, 1)
  assert.equal(m.usage_metrics.total_tokens, done.json.usage.total_tokens)
  assert.equal(m.usage_metrics.most_used_model, 'openai/gpt-4o-mini')
  for (
    const k of [
      'requests_per_minute',
      'requests_per_hour',
      'requests_per_day',
      'tokens_per_minute',
      'tokens_per_hour',
      'tokens_per_day',
    ]
  ) assert.equal(typeof m.rate_limits[k], 'number', k)
})

test("/user/limit: the account's limits and current usage", async () => {
  const a = await newAccount()
  const res = await api('/user/limit', { key: a.key })
  assert.equal(res.status, 200, res.text)
  assert.equal(res.json.user_id, a.userId)
  assert.equal(typeof res.json.rate_limits.requests_per_minute, 'number')
  assert.equal(res.json.key_rate_limits, null)
  assert.equal(typeof res.json.usage, 'object')
})

test('/user/profile: GET, PUT (write key), validation, duplicate username', async () => {
  const a = await newAccount()
  const got = await api('/user/profile', { key: a.key })
  assert.equal(got.status, 200, got.text)
  assert.equal(got.json.email, a.email)

  const username = `u${crypto.randomUUID().slice(0, 8)}`
  const put = await api('/user/profile', {
    method: 'PUT',
    key: a.key,
    body: { username, full_name: 'Ada Lovelace', company: 'Engines', settings: { theme: 'dark' } },
  })
  assert.equal(put.status, 200, put.text)
  assert.equal(put.json.username, username)
  assert.equal(put.json.full_name, 'Ada Lovelace')
  assert.deepEqual(put.json.settings, { theme: 'dark' })

  const b = await newAccount()
  const taken = await api('/user/profile', { method: 'PUT', key: b.key, body: { username } })
  assert.equal(taken.status, 400)
  assert.equal(taken.json.error.code, 'username_taken')

  const bad = await api('/user/profile', { method: 'PUT', key: a.key, body: { settings: 'dark' } })
  assert.equal(bad.status, 400)
  assert.equal(bad.json.error.param, 'settings')
  const unknown = await api('/user/profile', { method: 'PUT', key: a.key, body: { credits: 1e9 } })
  assert.equal(unknown.status, 400)
  const empty = await api('/user/profile', { method: 'PUT', key: a.key, body: {} })
  assert.equal(empty.status, 400)

  const reader = await readKey(a.key)
  assert.equal((await api('/user/profile', { key: reader })).status, 200)
  const denied = await api('/user/profile', { method: 'PUT', key: reader, body: { company: 'x' } })
  assert.equal(denied.status, 403)
  assert.equal(denied.json.error.code, 'permission_denied')
})

test('every /user route is 401 without a key, with a malformed key, and with an unknown key', async () => {
  const routes: [string, string][] = [
    ['GET', '/user/balance'],
    ['GET', '/user/monitor'],
    ['GET', '/user/limit'],
    ['GET', '/user/profile'],
    ['PUT', '/user/profile'],
    ['DELETE', '/user/account'],
    ['GET', '/user/api-keys'],
    ['POST', '/user/api-keys'],
    ['GET', '/user/api-keys/usage'],
    ['PUT', '/user/api-keys/1'],
    ['DELETE', '/user/api-keys/1'],
  ]
  for (const [method, path] of routes) {
    const body = method === 'PUT' || method === 'POST' ? { key_name: 'x', company: 'x' } : undefined
    for (const key of [undefined, 'gw_live_nope', unknownKey()]) {
      const res = await api(path, { method, key, body })
      // Validation of the body may come first for PUT/POST; a key problem is always 401 or 400.
      assert.ok(
        res.status === 401 || (res.status === 400 && body),
        `${method} ${path}: ${res.status}`,
      )
      if (!body) assert.equal(res.json.error.type, 'authentication_error')
    }
  }
})

test('DELETE /user/account revokes every key at once and keeps the ledger', async () => {
  const a = await newAccount(500)
  const second = await api('/user/api-keys', { key: a.key, body: { key_name: 'second' } })
  assert.equal(second.status, 200)
  const del = await api('/user/account', { method: 'DELETE', key: a.key })
  assert.equal(del.status, 200, del.text)
  assert.deepEqual(del.json, { status: 'deleted', user_id: a.userId, keys_revoked: 2 })
  for (const key of [a.key, second.json.api_key]) {
    const res = await api('/user/balance', { key })
    assert.equal(res.status, 401)
  }
  const chatAfter = await chat(a.key, {})
  assert.equal(chatAfter.status, 401)
})

test('BOLA: a key of account A never reads, changes or deletes anything of account B', async () => {
  const a = await newAccount(1000, 'bola-a')
  const b = await newAccount(1000, 'bola-b')
  const bKey = await api('/user/api-keys', { key: b.key, body: { key_name: 'b-secondary' } })
  assert.equal(bKey.status, 200)
  const bKeyId = bKey.json.key_id

  // Reads answer about the caller's own account, whatever is asked.
  for (const path of ['/user/balance', '/user/monitor', '/user/limit', '/user/profile']) {
    const res = await api(`${path}?user_id=${b.userId}`, { key: a.key })
    assert.equal(res.status, 200)
    assert.equal(res.json.user_id, a.userId, path)
  }
  const list = await api('/user/api-keys', { key: a.key })
  assert.ok(list.json.keys.every((k: { key_id: number }) => k.key_id !== bKeyId))

  // B's keys are not found from A.
  for (const keyId of [bKeyId, b.keyId]) {
    const put = await api(`/user/api-keys/${keyId}`, {
      method: 'PUT',
      key: a.key,
      body: { is_active: false },
    })
    assert.equal(put.status, 404, put.text)
    const rot = await api(`/user/api-keys/${keyId}/rotate`, { key: a.key, body: {} })
    assert.equal(rot.status, 404)
    const del = await api(`/user/api-keys/${keyId}`, { method: 'DELETE', key: a.key })
    assert.equal(del.status, 404)
  }
  // B is untouched.
  const bKeys = await api('/user/api-keys', { key: b.key })
  assert.equal(bKeys.json.total_keys, 2)
  assert.ok(bKeys.json.keys.every((k: { is_active: boolean }) => k.is_active))
  assert.equal((await api('/user/balance', { key: bKey.json.api_key })).status, 200)
})
