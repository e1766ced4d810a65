// /user/api-keys: create (plaintext once), list (masked), usage, update, rotate with grace, delete,
// and the permission rule: a key never creates or manages a key with more rights than its own.

import assert from 'node:assert/strict'
import { isWellFormedKey } from '../../functions/_shared/keys.ts'
import { newAccount, settled } from '../lib/accounts.ts'
import { api, chat } from '../lib/http.ts'
import { test } from '../lib/stack.ts'

test('create: the plaintext key once, then only its masked prefix', async () => {
  const a = await newAccount()
  const created = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'CI', permissions: ['read', 'write'], environment: 'test', max_requests: 10 },
  })
  assert.equal(created.status, 200, created.text)
  const k = created.json
  assert.ok(isWellFormedKey(k.api_key))
  assert.ok(k.api_key.startsWith('gw_test_'))
  assert.equal(k.key_name, 'CI')
  assert.deepEqual(k.permissions, ['read', 'write'])
  assert.equal(k.is_primary, false)
  assert.equal(k.max_requests, 10)

  const list = await api('/user/api-keys', { key: a.key })
  assert.equal(list.status, 200)
  assert.equal(list.json.total_keys, 2)
  assert.ok(!list.text.includes(k.api_key), 'list never shows a plaintext key')
  assert.ok(!list.text.includes(a.key))
  assert.equal(
    list.json.keys.find((x: { key_id: number }) => x.key_id === k.key_id).api_key,
    `${k.api_key.slice(0, 12)}…`,
  )

  // The new key works.
  assert.equal((await api('/user/balance', { key: k.api_key })).status, 200)
  // A duplicate name is a 400.
  const dup = await api('/user/api-keys', { key: a.key, body: { key_name: 'CI' } })
  assert.equal(dup.status, 400)
  assert.equal(dup.json.error.code, 'duplicate_key_name')
})

test('create: invalid specs are 400 with the field named', async () => {
  const a = await newAccount()
  const cases: [unknown, string][] = [
    [{ key_name: '' }, 'key_name'],
    [{ key_name: 'x', permissions: ['root'] }, 'permissions.0'],
    [{ key_name: 'x', environment: 'prod' }, 'environment'],
    [{ key_name: 'x', max_requests: 0 }, 'max_requests'],
    [{ key_name: 'x', expires_at: 'tomorrow' }, 'expires_at'],
    [{ key_name: 'x', unknown_field: 1 }, ''],
  ]
  for (const [body, param] of cases) {
    const res = await api('/user/api-keys', { key: a.key, body })
    assert.equal(res.status, 400, JSON.stringify(body))
    if (param) assert.equal(res.json.error.param, param)
  }
  const ips = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'x', allowed_ips: ['nope'] },
  })
  assert.equal(ips.status, 400)
})

test('privilege escalation: a read key cannot create a write key, nor a write key an admin key', async () => {
  const a = await newAccount()
  const reader = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'reader', permissions: ['read'] },
  })
  assert.equal(reader.status, 200)
  // A read key cannot create keys at all (creating is a write).
  const byReader = await api('/user/api-keys', {
    key: reader.json.api_key,
    body: { key_name: 'writer', permissions: ['read', 'write'] },
  })
  assert.equal(byReader.status, 403, byReader.text)
  // The primary key (read + write) cannot mint admin.
  const admin = await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'admin', permissions: ['read', 'write', 'admin'] },
  })
  assert.equal(admin.status, 400, admin.text)
  // Nor raise a key to admin by updating it.
  const raise = await api(`/user/api-keys/${reader.json.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { permissions: ['read', 'write', 'admin'] },
  })
  assert.equal(raise.status, 400)
  // And a read key cannot widen itself.
  const self = await api(`/user/api-keys/${reader.json.key_id}`, {
    method: 'PUT',
    key: reader.json.api_key,
    body: { permissions: ['read', 'write'] },
  })
  assert.equal(self.status, 403)
  const list = await api('/user/api-keys', { key: a.key })
  assert.deepEqual(
    list.json.keys.find((k: { key_id: number }) => k.key_id === reader.json.key_id).permissions,
    ['read'],
  )
})

test('update: rename, deactivate (then 401), cap requests (then 429), IP and referrer rules (403)', async () => {
  const a = await newAccount(1000)
  const k = (await api('/user/api-keys', { key: a.key, body: { key_name: 'k' } })).json
  const renamed = await api(`/user/api-keys/${k.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { key_name: 'renamed', max_requests: 1 },
  })
  assert.equal(renamed.status, 200, renamed.text)
  assert.equal(renamed.json.key_name, 'renamed')

  assert.equal((await chat(k.api_key, {})).status, 200)
  const capped = await chat(k.api_key, {})
  assert.equal(capped.status, 429)
  assert.equal(capped.json.error.code, 'key_request_cap')

  const ip = await api(`/user/api-keys/${k.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { max_requests: null, allowed_ips: ['203.0.113.0/24'] },
  })
  assert.equal(ip.status, 200, ip.text)
  const blocked = await api('/user/balance', { key: k.api_key })
  assert.equal(blocked.status, 403)
  assert.equal(blocked.json.error.code, 'ip_not_allowed')
  // The client cannot spoof its address: only the last X-Forwarded-For entry (the proxy's) counts.
  const spoof = await api('/user/balance', {
    key: k.api_key,
    headers: { 'x-forwarded-for': '203.0.113.9' },
  })
  assert.equal(spoof.status, 403)

  const ref = await api(`/user/api-keys/${k.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { allowed_ips: null, allowed_referrers: ['app.example.com', '*.example.org'] },
  })
  assert.equal(ref.status, 200, ref.text)
  assert.equal((await api('/user/balance', { key: k.api_key })).status, 403)
  const okOrigin = await api('/user/balance', {
    key: k.api_key,
    headers: { origin: 'https://app.example.com' },
  })
  assert.equal(okOrigin.status, 200, okOrigin.text)
  const okReferer = await api('/user/balance', {
    key: k.api_key,
    headers: { referer: 'https://www.example.org/page' },
  })
  assert.equal(okReferer.status, 200)
  const badOrigin = await chat(k.api_key, {}, { origin: 'https://evil.example.net' })
  assert.equal(badOrigin.status, 403)
  assert.equal(badOrigin.json.error.code, 'referrer_not_allowed')

  const off = await api(`/user/api-keys/${k.key_id}`, {
    method: 'PUT',
    key: a.key,
    body: { is_active: false },
  })
  assert.equal(off.status, 200)
  const inactive = await api('/user/balance', { key: k.api_key })
  assert.equal(inactive.status, 401)
  assert.equal(inactive.json.error.code, 'key_inactive')
})

test('rotate: a new secret; the old one works for the grace only', async () => {
  const a = await newAccount()
  const k = (await api('/user/api-keys', { key: a.key, body: { key_name: 'rot' } })).json
  const rotated = await api(`/user/api-keys/${k.key_id}/rotate`, {
    key: a.key,
    body: { grace_seconds: 60 },
  })
  assert.equal(rotated.status, 200, rotated.text)
  assert.notEqual(rotated.json.api_key, k.api_key)
  assert.equal((await api('/user/balance', { key: rotated.json.api_key })).status, 200)
  assert.equal((await api('/user/balance', { key: k.api_key })).status, 200, 'grace')
  const again = await api(`/user/api-keys/${k.key_id}/rotate`, { key: a.key, body: {} })
  assert.equal(again.status, 200)
  assert.equal((await api('/user/balance', { key: rotated.json.api_key })).status, 401)
})

test('delete: the key stops working; the primary key cannot be deleted; unknown ids are 404', async () => {
  const a = await newAccount()
  const k = (await api('/user/api-keys', { key: a.key, body: { key_name: 'tmp' } })).json
  const del = await api(`/user/api-keys/${k.key_id}`, { method: 'DELETE', key: a.key })
  assert.equal(del.status, 200, del.text)
  assert.deepEqual(del.json, { status: 'deleted', key_id: k.key_id })
  assert.equal((await api('/user/balance', { key: k.api_key })).status, 401)
  assert.equal(
    (await api(`/user/api-keys/${k.key_id}`, { method: 'DELETE', key: a.key })).status,
    404,
  )
  const primary = await api(`/user/api-keys/${a.keyId}`, { method: 'DELETE', key: a.key })
  assert.equal(primary.status, 400)
  assert.equal((await api('/user/api-keys/abc', { method: 'DELETE', key: a.key })).status, 400)
})

test("/user/api-keys/usage: the spec's shape, counting requests per key", async () => {
  const a = await newAccount(1000)
  const k = (await api('/user/api-keys', {
    key: a.key,
    body: { key_name: 'metered', max_requests: 4 },
  })).json
  assert.equal((await chat(k.api_key, {})).status, 200)
  const res = await api('/user/api-keys/usage', { key: a.key })
  assert.equal(res.status, 200, res.text)
  assert.equal(res.json.user_id, a.userId)
  assert.equal(res.json.total_keys, 2)
  const u = res.json.keys.find((x: { key_id: number }) => x.key_id === k.key_id)
  assert.deepEqual(
    Object.keys(u).sort(),
    [
      'api_key',
      'created_at',
      'credits_used',
      'environment_tag',
      'is_active',
      'is_primary',
      'key_id',
      'key_name',
      'last_used_at',
      'max_requests',
      'requests_remaining',
      'requests_used',
      'tokens_used',
      'usage_percentage',
    ],
  )
  assert.equal(u.requests_used, 1)
  // Flat pricing, no multiplier: a credit per token, once the request's settle has landed.
  await settled(a.userId)
  const after = (await api('/user/api-keys/usage', { key: a.key })).json.keys
    .find((x: { key_id: number }) => x.key_id === k.key_id)
  assert.ok(
    after.tokens_used > 0 && after.credits_used === after.tokens_used,
    JSON.stringify(after),
  )
  assert.equal(u.requests_remaining, 3)
  assert.equal(u.usage_percentage, 25)
  const primary = res.json.keys.find((x: { key_id: number }) => x.key_id === a.keyId)
  assert.equal(primary.is_primary, true)
  assert.equal(primary.key_name, 'Primary Key')
})
