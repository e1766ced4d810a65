// Authorization comes before validation on /admin/*: a key without `admin` gets 403 whatever its
// request looks like (an invalid body, unreadable JSON, the wrong content type), and no key gets
// 401, so an admin route's validation errors tell nothing to someone who may not use it. Every
// admin route the API documents is tried (/openapi.json), so a new one cannot skip the rule.

import assert from 'node:assert/strict'
import { newAccount, newAdmin } from '../lib/accounts.ts'
import { api } from '../lib/http.ts'
import { test } from '../lib/stack.ts'

async function adminRoutes(): Promise<[string, string][]> {
  const doc = (await api('/openapi.json')).json as { paths: Record<string, object> }
  return Object.entries(doc.paths)
    .filter(([path]) => path.startsWith('/gateway/admin/'))
    .flatMap(([path, ops]) => Object.keys(ops).map((m): [string, string] => [m, path]))
}

const BODIES: [string, { body?: string; headers?: Record<string, string> }][] = [
  ['an invalid body', { body: '{"user_id":"not a number","credits":"x"}' }],
  ['unreadable JSON', { body: '{"user_id": ' }],
  ['the wrong content type', { body: 'credits=5', headers: { 'content-type': 'text/plain' } }],
  ['a valid body', { body: '{"user_id":1,"credits":1}' }],
]

test('a key without admin gets 403 on every admin route, whatever its body', async () => {
  const user = await newAccount(0, 'not-admin')
  const routes = await adminRoutes()
  assert.ok(routes.length >= 6, JSON.stringify(routes))
  for (const [method, path] of routes) {
    for (const [what, req] of BODIES) {
      const opts = { method: method.toUpperCase(), headers: { ...req.headers } }
      const withBody = method === 'get' ? opts : { ...opts, body: req.body }
      const denied = await api(path.slice('/gateway'.length), { ...withBody, key: user.key })
      assert.equal(denied.status, 403, `${method} ${path} with ${what}: ${denied.text}`)
      assert.equal(denied.json.error.code, 'permission_denied')
      const anonymous = await api(path.slice('/gateway'.length), withBody)
      assert.equal(anonymous.status, 401, `${method} ${path} without a key, ${what}`)
    }
  }
})

test('an admin key still gets the validation error of an invalid body', async () => {
  const admin = await newAdmin()
  const res = await api('/admin/add_credits', {
    key: admin.key,
    body: '{"user_id":"not a number","credits":1}',
  })
  assert.equal(res.status, 400, res.text)
  assert.equal(res.json.error.type, 'invalid_request_error')
})
