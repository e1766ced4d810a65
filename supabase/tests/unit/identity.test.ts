// identity.ts, driven through a Hono app in process: the key is taken from `Authorization: Bearer`
// and refused (401) before any query when it is missing or not a gateway key; the client address is
// the LAST X-Forwarded-For entry (the one the platform appends), else the socket's; the referrer is
// the Origin's host, else the Referer's.

import assert from 'node:assert/strict'
import { hashKey, toHex } from '../../functions/_shared/keys.ts'
import { ApiError } from '../../functions/gateway/errors.ts'
import {
  caller,
  callerArgs,
  clientIp,
  clientNetwork,
  referrerHost,
} from '../../functions/gateway/identity.ts'
import { router } from '../../functions/gateway/routes/common.ts'
import { unknownKey } from '../lib/accounts.ts'

// The gateway's own router (a Hono app), so that the test needs nothing the function does not.
const app = router()
app.get('/who', (c) => {
  const who = caller(c)
  return c.json({ hash: toHex(who.keyHash), ip: who.ip, referrer: who.referrer })
})
app.get('/where', (c) => c.json({ ip: clientIp(c), referrer: referrerHost(c) }))
app.onError((err: Error) =>
  err instanceof ApiError ? err.getResponse() : new Response(String(err), { status: 500 })
)

const peer = { remoteAddr: { transport: 'tcp', hostname: '192.0.2.9', port: 4000 } }
const where = async (headers: Record<string, string>) =>
  await (await app.request('/where', { headers }, peer)).json()

Deno.test('the key: 401 missing_api_key without one, invalid_api_key for anything not a key', async () => {
  const missing = await app.request('/who')
  assert.equal(missing.status, 401)
  assert.equal((await missing.json()).error.code, 'missing_api_key')
  const key = unknownKey()
  // Its last character changed (to one it is not: a key ending in x stayed itself, 1 run in 62).
  const mistyped = `${key.slice(0, -1)}${key.endsWith('x') ? 'y' : 'x'}`
  for (
    const header of [
      'Basic abc',
      'Bearer',
      `Bearer ${mistyped}`,
      `Bearer ${key} extra`,
      key,
    ]
  ) {
    const res = await app.request('/who', { headers: { authorization: header } })
    assert.equal(res.status, 401, header)
    assert.equal((await res.json()).error.code, 'invalid_api_key')
  }
})

Deno.test('a well-formed key: SQL gets its SHA-256 (never the key), the address and referrer', async () => {
  const key = unknownKey('test')
  const res = await app.request('/who', {
    headers: { authorization: `bearer   ${key}  `, origin: 'https://app.example.com' },
  }, peer)
  assert.equal(res.status, 200)
  assert.deepEqual(await res.json(), {
    hash: toHex(hashKey(key)),
    ip: '192.0.2.9',
    referrer: 'app.example.com',
  })
  const args = callerArgs({ keyHash: hashKey(key), ip: null, referrer: 'r' })
  assert.equal(args.length, 3)
  assert.ok(!JSON.stringify(args).includes(key))
})

Deno.test('the client address is the last X-Forwarded-For entry, else the peer', async () => {
  assert.equal((await where({})).ip, '192.0.2.9')
  assert.equal((await where({ 'x-forwarded-for': '203.0.113.7' })).ip, '203.0.113.7')
  // Whatever the client put first is ignored: the platform appends the real address last.
  assert.equal((await where({ 'x-forwarded-for': '10.0.0.1, 198.51.100.4' })).ip, '198.51.100.4')
  assert.equal((await where({ 'x-forwarded-for': '1.2.3.4,  2001:db8::1 ' })).ip, '2001:db8::1')
  assert.equal((await where({ 'x-forwarded-for': '[2001:db8::2]:443' })).ip, '2001:db8::2')
  // Anything that is not plainly an address is unknown (it would fail SQL's inet cast).
  for (const junk of ["1.2.3.4'; drop table x", 'localhost', '']) {
    assert.equal((await where({ 'x-forwarded-for': `9.9.9.9, ${junk}` })).ip, null, junk)
  }
})

Deno.test('the referrer is the Origin host, else the Referer host; unparsable is none', async () => {
  assert.equal((await where({ origin: 'https://a.example:8443' })).referrer, 'a.example')
  assert.equal((await where({ referer: 'https://b.example/page?q=1' })).referrer, 'b.example')
  assert.equal(
    (await where({ origin: 'null', referer: 'https://c.example/' })).referrer,
    'c.example',
  )
  assert.equal((await where({ origin: 'not a url' })).referrer, null)
  assert.equal((await where({})).referrer, null)
})

Deno.test('the client network (per-client body shares): IPv4 /24, IPv6 /64, mapped IPv4 as IPv4', () => {
  const cases: [string | null, string][] = [
    ['203.0.113.7', '203.0.113.0/24'],
    ['203.0.113.250', '203.0.113.0/24'],
    ['203.0.114.7', '203.0.114.0/24'],
    ['127.0.9.1', '127.0.9.0/24'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
    ['2001:db8:1:2::9', '2001:db8:1:2::/64'],
    ['2001:DB8:1:2:ffff::', '2001:db8:1:2::/64'],
    ['2001:db8:1:3::9', '2001:db8:1:3::/64'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['::1', '0:0:0:0::/64'],
    ['::', '0:0:0:0::/64'],
    ['::ffff:203.0.113.7', '203.0.113.0/24'],
    ['::ffff:cb00:7107', '203.0.113.0/24'],
    ['64:ff9b::203.0.113.7', '64:ff9b:0:0::/64'],
    [null, 'unknown'],
  ]
  for (const [ip, network] of cases) assert.equal(clientNetwork(ip), network, String(ip))
  // Not an address (clientIp lets through only address characters): its own network, never another's.
  for (const odd of ['1:2:3', '1::2::3', '1:2:3:4:5:6:7:8:9', '::ffff:1.2.3.999']) {
    assert.equal(clientNetwork(odd), odd)
  }
})
