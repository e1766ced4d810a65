// /admin/*: only keys with `admin` permission; users named by user_id or by one of their keys.

import assert from 'node:assert/strict'
import { newAccount, newAdmin, setRateLimits } from '../lib/accounts.ts'
import { api, chat } from '../lib/http.ts'
import { test } from '../lib/stack.ts'

test('admin routes refuse keys without admin (403) and requests without a key (401)', async () => {
  const user = await newAccount()
  const routes: [string, string, unknown?][] = [
    ['POST', '/admin/add_credits', { user_id: user.userId, credits: 5 }],
    ['GET', '/admin/balance'],
    ['GET', '/admin/monitor'],
    ['POST', '/admin/limit', { user_id: user.userId, rate_limits: { requests_per_minute: 1 } }],
    ['POST', '/admin/refresh-models'],
    ['GET', '/admin/cache-status'],
  ]
  for (const [method, path, body] of routes) {
    const denied = await api(path, { method, key: user.key, body })
    assert.equal(denied.status, 403, `${path}: ${denied.text}`)
    assert.equal(denied.json.error.code, 'permission_denied')
    const anonymous = await api(path, { method, body })
    assert.equal(anonymous.status, 401, path)
  }
  assert.equal((await api('/user/balance', { key: user.key })).json.credits, 1000)
})

test('/admin/add_credits by user_id or by api_key returns the new balance', async () => {
  const admin = await newAdmin()
  const user = await newAccount(100)
  const byId = await api('/admin/add_credits', {
    key: admin.key,
    body: { user_id: user.userId, credits: 50, reason: 'support' },
  })
  assert.equal(byId.status, 200, byId.text)
  assert.deepEqual(byId.json, { user_id: user.userId, credits_added: 50, balance: 150 })
  const byKey = await api('/admin/add_credits', {
    key: admin.key,
    body: { api_key: user.key, credits: 25 },
  })
  assert.equal(byKey.status, 200, byKey.text)
  assert.equal(byKey.json.balance, 175)
  assert.equal((await api('/user/balance', { key: user.key })).json.credits, 175)

  const cases: [unknown, number][] = [
    [{ credits: 5 }, 400],
    [{ user_id: user.userId, api_key: user.key, credits: 5 }, 400],
    [{ user_id: user.userId, credits: 0 }, 400],
    [{ user_id: user.userId, credits: 1.5 }, 400],
    [{ api_key: 'gw_live_nope', credits: 5 }, 400],
    [{ user_id: 999_999_999, credits: 5 }, 404],
    [{ user_id: user.userId, credits: -10_000 }, 400],
  ]
  for (const [body, status] of cases) {
    const res = await api('/admin/add_credits', { key: admin.key, body })
    assert.equal(res.status, status, `${JSON.stringify(body)}: ${res.text}`)
  }
})

test('/admin/add_credits with an Idempotency-Key grants once', async () => {
  const admin = await newAdmin()
  const user = await newAccount(0)
  const idem = { 'idempotency-key': crypto.randomUUID() }
  const body = { user_id: user.userId, credits: 40 }
  const first = await api('/admin/add_credits', { key: admin.key, body, headers: idem })
  const again = await api('/admin/add_credits', { key: admin.key, body, headers: idem })
  assert.equal(first.status, 200, first.text)
  assert.equal(again.status, 200)
  assert.equal(again.json.idempotent_replay, true)
  assert.equal(again.json.balance, 40)
  const other = await api('/admin/add_credits', {
    key: admin.key,
    body: { ...body, credits: 41 },
    headers: idem,
  })
  assert.equal(other.status, 422)
  assert.equal((await api('/user/balance', { key: user.key })).json.credits, 40)
})

test('/admin/balance lists users with their keys (masked), paged', async () => {
  const admin = await newAdmin()
  await newAccount()
  const res = await api('/admin/balance?limit=5&offset=0', { key: admin.key })
  assert.equal(res.status, 200, res.text)
  assert.ok(res.json.total_users >= 2)
  assert.ok(res.json.users.length <= 5)
  const u = res.json.users[0]
  for (const k of ['user_id', 'email', 'credits', 'held_credits', 'keys']) assert.ok(k in u, k)
  assert.ok(!/gw_(live|test|staging|dev)_[0-9A-Za-z]{28}/.test(res.text), 'no plaintext keys')
  const bad = await api('/admin/balance?limit=0', { key: admin.key })
  assert.equal(bad.status, 400)
  assert.equal(bad.json.error.param, 'limit')
})

test('/admin/monitor reports system-wide totals', async () => {
  const admin = await newAdmin()
  const res = await api('/admin/monitor', { key: admin.key })
  assert.equal(res.status, 200, res.text)
  for (const k of ['users', 'keys', 'requests', 'tokens', 'credits', 'open_holds']) {
    assert.ok(k in res.json, k)
  }
})

test("/admin/limit sets a user's limits (by user_id or api_key), or one key's (scope key)", async () => {
  const admin = await newAdmin()
  const user = await newAccount()
  const set = await api('/admin/limit', {
    key: admin.key,
    body: {
      api_key: user.key,
      rate_limits: {
        requests_per_minute: 1,
        requests_per_hour: 1000,
        requests_per_day: 10000,
        tokens_per_minute: 10000,
        tokens_per_hour: 100000,
        tokens_per_day: 1000000,
      },
    },
  })
  assert.equal(set.status, 200, set.text)
  assert.equal(set.json.user_id, user.userId)
  assert.equal(set.json.rate_limits.requests_per_minute, 1)
  assert.equal((await chat(user.key, {})).status, 200)
  const limited = await chat(user.key, {})
  assert.equal(limited.status, 429)
  assert.ok(limited.headers.get('retry-after'))
  await setRateLimits(user.userId, { requests_per_minute: null })

  const keyScope = await api('/admin/limit', {
    key: admin.key,
    body: { api_key: user.key, scope: 'key', rate_limits: { tokens_per_day: 5 } },
  })
  assert.equal(keyScope.status, 200, keyScope.text)
  assert.equal(keyScope.json.key_id, user.keyId)
  const limits = await api('/user/limit', { key: user.key })
  assert.equal(limits.json.key_rate_limits.tokens_per_day, 5)

  const bad = await api('/admin/limit', {
    key: admin.key,
    body: { user_id: user.userId, rate_limits: { requests_per_minute: -1 } },
  })
  assert.equal(bad.status, 400)
  const needsKey = await api('/admin/limit', {
    key: admin.key,
    body: { user_id: user.userId, scope: 'key', rate_limits: { requests_per_minute: 1 } },
  })
  assert.equal(needsKey.status, 400)
})
