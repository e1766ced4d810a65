// POST /auth/register: the new account's primary key (once) with the signup credits; a repeated email
// is a 400; sign-ups are rate-limited per client network (setting registrations_per_network_per_hour:
// the /24 of 127.0.0.1 here) and over all networks (registrations_per_hour). The per-network limit is
// raised for the test just enough to leave room for exactly the sign-ups it makes, then restored; the
// sign-ups it made are forgotten, so a person trying the stack afterwards is not refused.

import assert from 'node:assert/strict'
import { isWellFormedKey } from '../../functions/_shared/keys.ts'
import { uniqueEmail, withRegistrationRoom } from '../lib/accounts.ts'
import { api } from '../lib/http.ts'
import { db, test } from '../lib/stack.ts'

const loopbackSignups = async () => {
  const [{ n }] = await db()`
    select count(*)::int as n from gateway.signups
     where network && gateway.signup_network('127.0.0.1') and created_at > now() - interval '1 hour'`
  return n as number
}

test('register: the account, its primary key once, signup credits; then the per-network limit (429)', async () => {
  const [{ signup }] = await db()`
    select signup_credits as signup from gateway.system_settings where id`
  const before = await loopbackSignups()
  await withRegistrationRoom(2, async () => {
    const email = uniqueEmail('reg')
    const res = await api('/auth/register', { body: { email, username: `r${Date.now()}` } })
    assert.equal(res.status, 200, res.text)
    const r = res.json
    assert.equal(r.email, email)
    assert.ok(isWellFormedKey(r.api_key))
    assert.ok(r.api_key.startsWith('gw_live_'))
    assert.equal(r.key_prefix, `${r.api_key.slice(0, 12)}…`)
    assert.equal(r.credits, Number(signup))
    assert.equal(typeof r.user_id, 'number')
    const bal = await api('/user/balance', { key: r.api_key })
    assert.equal(bal.json.credits, Number(signup))

    const again = await api('/auth/register', { body: { email: email.toUpperCase() } })
    assert.equal(again.status, 400, again.text)
    assert.equal(again.json.error.code, 'email_taken')

    for (
      const body of [{}, { email: 'not-an-email' }, { email: uniqueEmail(), environment: 'prod' }]
    ) {
      const bad = await api('/auth/register', { body })
      assert.equal(bad.status, 400, JSON.stringify(body))
    }

    const test = await api('/auth/register', {
      body: { email: uniqueEmail('reg'), environment: 'test' },
    })
    assert.equal(test.status, 200, test.text)
    assert.ok(test.json.api_key.startsWith('gw_test_'))

    const limited = await api('/auth/register', { body: { email: uniqueEmail('reg') } })
    assert.equal(limited.status, 429, limited.text)
    assert.equal(limited.json.error.code, 'rate_limited')
    assert.ok(Number(limited.headers.get('retry-after')) >= 1)
  })
  assert.equal(
    await loopbackSignups(),
    before,
    "the test's sign-ups do not count against 127.0.0.1",
  )
})

test('register: a body that is not JSON is a 400 or 415, never a 500', async () => {
  const notJson = await api('/auth/register', {
    body: '{"email":',
    headers: { 'content-type': 'application/json' },
  })
  assert.equal(notJson.status, 400)
  const text = await api('/auth/register', {
    body: 'email=a@b.c',
    headers: { 'content-type': 'text/plain' },
  })
  assert.equal(text.status, 415)
  assert.equal(text.json.error.type, 'invalid_request_error')
})
