// Authorization: what a valid key may do. IP allowlists (IPv4 and IPv6, over real connections of
// each family) that no client-supplied X-Forwarded-For or other address header gets around — the
// gateway trusts only the LAST X-Forwarded-For entry, the one the platform's edge appends (here
// scripts/serve-functions.ts); referrer rules; object-level authorization (BOLA) on every endpoint
// that takes a key id or a target; privilege escalation through key creation and update.

import assert from 'node:assert/strict'
import {
  type Account,
  forgettingSignups,
  newAccount,
  newAdmin,
  uniqueEmail,
} from '../lib/accounts.ts'
import { CHAT, client } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, waitFor } from '../lib/stack.ts'

const opts = { sanitizeOps: false, sanitizeResources: false }

/** Headers a client might use to claim another address; none of them may count. */
const SPOOFS: Record<string, string>[] = [
  { 'x-forwarded-for': '203.0.113.9' },
  { 'x-forwarded-for': '203.0.113.9, 203.0.113.10' },
  { 'x-forwarded-for': '2001:db8::1' },
  { 'x-forwarded-for': '[2001:db8::1]:443' },
  { 'x-forwarded-for': '127.0.0.1' },
  { 'x-forwarded-for': '::1' },
  { 'x-forwarded-for': 'unknown, ' },
  { 'x-real-ip': '203.0.113.9' },
  { forwarded: 'for=203.0.113.9;proto=https' },
  { forwarded: 'for="[2001:db8::1]"' },
  { 'true-client-ip': '203.0.113.9' },
  { 'cf-connecting-ip': '2001:db8::1' },
  { 'x-client-ip': '203.0.113.9' },
]

Deno.test('authorization: what a valid key may do', opts, async (t) => {
  const sim = startOwnSimulator()
  const env = { GATEWAY_LOG_REQUESTS: '0' }
  const v4 = await startFunctions({ upstream: sim.baseUrl, env })
  const v6 = await startFunctions({ upstream: sim.baseUrl, env, hostname: '::1' })
  const gw4 = client(v4.url)
  const gw6 = client(v6.url)
  try {
    const owner = await newAccount(100_000, 'authz')
    // Many admitted chats below: the default 60 a minute would refuse some.
    await db()`select gateway.set_rate_limits(${owner.userId}, ${
      db().json({ requests_per_minute: 100_000 })
    })`
    const key = async (spec: Record<string, unknown>, by = owner.key) => {
      const r = await gw4('/user/api-keys', { key: by, body: spec })
      assert.equal(r.status, 200, `${JSON.stringify(spec)}: ${r.text}`)
      return r.json as { key_id: number; api_key: string }
    }

    await t.step(
      'IP allowlists hold over IPv4 and IPv6; no address header a client sends counts',
      async () => {
        // Every connection comes from 127.0.0.1 (v4 server) or ::1 (v6 server).
        const cases: [string, string[], boolean, boolean][] = [
          // name, allowed_ips, allowed over IPv4, allowed over IPv6
          ['a documentation range', ['203.0.113.0/24'], false, false],
          ['IPv4 loopback', ['127.0.0.1'], true, false],
          ['IPv4 loopback /8', ['127.0.0.0/8'], true, false],
          ['IPv6 loopback', ['::1'], false, true],
          ['IPv6 loopback /128 and a v4 range', ['::1/128', '198.51.100.0/24'], false, true],
          ['an IPv6 documentation range', ['2001:db8::/32'], false, false],
          ['IPv4-mapped IPv6 of 127.0.0.1', ['::ffff:127.0.0.1/128'], false, false],
        ]
        const before = sim.chats()
        let tried = 0
        let admitted = 0
        for (const [name, ips, ok4, ok6] of cases) {
          const k = await key({ key_name: `ip ${name}`, allowed_ips: ips })
          for (const [gw, ok, family] of [[gw4, ok4, 'IPv4'], [gw6, ok6, 'IPv6']] as const) {
            for (const spoof of [{}, ...SPOOFS]) {
              for (
                const [path, body] of [['/user/balance', undefined], ['/v1/chat/completions', CHAT]]
              ) {
                const res = await gw(path as string, { key: k.api_key, headers: spoof, body })
                tried++
                const what = `${name} over ${family} with ${JSON.stringify(spoof)} on ${path}`
                if (ok) {
                  assert.equal(res.status, 200, `${what}: ${res.text}`)
                  if (path !== '/user/balance') admitted++
                } else {
                  assert.equal(res.status, 403, `${what}: ${res.text}`)
                  assert.equal(res.json.error.code, 'ip_not_allowed', what)
                }
              }
            }
          }
        }
        assert.equal(sim.chats() - before, admitted, 'only admitted chats went upstream')
        console.log(
          `${cases.length} allowlists × 2 address families × ${SPOOFS.length + 1} header sets × ` +
            `2 routes = ${tried} requests: every spoof ignored, ${admitted} chats admitted`,
        )
      },
    )

    await t.step(
      'registrations count against the connecting address, whatever X-Forwarded-For says',
      async () => {
        const res = await forgettingSignups(() =>
          gw6('/auth/register', {
            body: { email: uniqueEmail('authz-reg') },
            headers: { 'x-forwarded-for': `198.51.100.${Math.floor(Math.random() * 250)}` },
          })
        )
        // 429 would mean ::1 is out of registrations this hour: the limit held despite the spoof.
        assert.ok(res.status === 200 || res.status === 429, res.text)
        if (res.status === 200) {
          const [{ ip }] = await db()`
          select host(registration_ip) as ip from gateway.accounts where id = ${res.json.user_id}`
          assert.equal(ip, '::1')
        }
        console.log(`registration over IPv6 with a spoofed X-Forwarded-For: ${res.status}`)
      },
    )

    await t.step(
      'referrer rules: exact and wildcard hosts; look-alikes and missing headers refused',
      async () => {
        const k = await key({
          key_name: 'referrers',
          allowed_referrers: ['app.example.com', '*.example.org'],
        })
        const cases: [Record<string, string>, boolean][] = [
          [{ origin: 'https://app.example.com' }, true],
          [{ origin: 'https://APP.Example.com:8443' }, true],
          [{ referer: 'https://app.example.com/some/page?q=1' }, true],
          [{ origin: 'https://a.example.org' }, true],
          [{ origin: 'https://deep.a.example.org' }, true],
          [{ referer: 'https://x.example.org/' }, true],
          [{}, false],
          [{ origin: 'null' }, false],
          [{ origin: 'https://example.org' }, false], // the wildcard is for subdomains only
          [{ origin: 'https://app.example.com.evil.net' }, false],
          [{ origin: 'https://evilapp.example.com' }, false],
          [{ origin: 'https://app.example.com@evil.net' }, false],
          [{ origin: 'https://evil-example.org' }, false],
          [{ origin: 'http://[::1]:3000' }, false],
          [{ origin: 'not a url' }, false],
          // Origin is the browser's own statement; it wins over a Referer.
          [{ origin: 'https://evil.net', referer: 'https://app.example.com/' }, false],
        ]
        for (const [headers, ok] of cases) {
          for (
            const [path, body] of [['/user/balance', undefined], ['/v1/chat/completions', CHAT]]
          ) {
            const res = await gw4(path as string, { key: k.api_key, headers, body })
            const what = `${JSON.stringify(headers)} on ${path}: ${res.text}`
            if (ok) assert.equal(res.status, 200, what)
            else {
              assert.equal(res.status, 403, what)
              assert.equal(res.json.error.code, 'referrer_not_allowed', what)
            }
          }
        }
        console.log(`${cases.length * 2} requests against a referrer rule, each as expected`)
      },
    )

    await t.step(
      'BOLA: no key id or target of another account is reachable, and nothing of it changes',
      async () => {
        const a = await newAccount(1000, 'bola-a')
        const b = await newAccount(1000, 'bola-b')
        const admin = await newAdmin()
        const bSecond = await key({ key_name: 'b second' }, b.key)
        const bGone = await key({ key_name: 'b deleted' }, b.key)
        assert.equal(
          (await gw4(`/user/api-keys/${bGone.key_id}`, { method: 'DELETE', key: b.key })).status,
          200,
        )
        const snapshot = async () =>
          JSON.stringify(
            await db()`
            select k.id, encode(k.key_hash, 'hex') as h, k.updated_at, k.is_active, k.deleted_at,
                   k.permissions, k.name, b.balance,
                   (select count(*) from gateway.key_audit_log l where l.account_id = k.account_id)
                     as audits
              from gateway.api_keys k join gateway.credit_balances b on b.account_id = k.account_id
             where k.account_id in (${b.userId}, ${admin.userId}) order by k.id`,
          )
        const before = await snapshot()
        const foreign = [b.keyId, bSecond.key_id, bGone.key_id, admin.keyId]
        let tried = 0
        for (const id of foreign) {
          for (
            const [method, path, body] of [
              ['PUT', `/user/api-keys/${id}`, { is_active: false }],
              ['PUT', `/user/api-keys/${id}`, { permissions: ['read'], key_name: 'mine now' }],
              ['POST', `/user/api-keys/${id}/rotate`, { grace_seconds: 0 }],
              ['DELETE', `/user/api-keys/${id}`, undefined],
            ] as const
          ) {
            const res = await gw4(path, { method, key: a.key, body })
            tried++
            assert.equal(res.status, 404, `${method} ${path}: ${res.text}`)
            assert.equal(res.json.error.code, 'not_found')
          }
        }
        // Targets of admin calls: refused to a key without admin, whatever it names.
        for (
          const body of [
            { user_id: b.userId, credits: 1_000_000 },
            { api_key: b.key, credits: 1_000_000 },
            { user_id: b.userId, rate_limits: { requests_per_minute: 0 } },
          ]
        ) {
          const path = 'credits' in body ? '/admin/add_credits' : '/admin/limit'
          const res = await gw4(path, { key: a.key, body })
          tried++
          assert.equal(res.status, 403, `${path}: ${res.text}`)
        }
        // Reads answer about the caller, whatever the query names.
        for (const path of ['/user/balance', '/user/monitor', '/user/limit', '/user/profile']) {
          const res = await gw4(`${path}?user_id=${b.userId}&key_id=${b.keyId}`, { key: a.key })
          tried++
          assert.equal(res.json.user_id, a.userId, path)
        }
        const listed = await gw4('/user/api-keys', { key: a.key })
        assert.ok(listed.json.keys.every((k: { key_id: number }) => !foreign.includes(k.key_id)))
        assert.equal(await snapshot(), before, "B's and the admin's keys and balance are untouched")

        // Idempotency-Keys are per account: the same key from A is not B's replay.
        const idem = { 'idempotency-key': `shared-${crypto.randomUUID()}` }
        const fromB = await gw4('/v1/chat/completions', { key: b.key, body: CHAT, headers: idem })
        const fromA = await gw4('/v1/chat/completions', { key: a.key, body: CHAT, headers: idem })
        assert.equal(fromB.status, 200, fromB.text)
        assert.equal(fromA.status, 200, fromA.text)
        assert.notEqual(fromA.json.id, fromB.json.id, "A got B's completion")
        assert.equal(fromA.headers.get('idempotent-replayed'), null)
        assert.equal(fromA.json.gateway_usage.user_api_key, `${a.key.slice(0, 12)}…`)
        const other = await newAdmin()
        // A's completion settles in background (a lone settle waits ~10 ms for company): let it
        // land first, so that the two grants below are the only changes between their answers.
        await waitFor('A settled', async () => {
          const [r] =
            await db()`select held from gateway.credit_balances where account_id = ${a.userId}`
          return Number(r.held) === 0
        })
        const grant = { user_id: a.userId, credits: 5 }
        const g1 = await gw4('/admin/add_credits', { key: admin.key, body: grant, headers: idem })
        const g2 = await gw4('/admin/add_credits', { key: other.key, body: grant, headers: idem })
        assert.equal(g1.json.idempotent_replay, undefined)
        assert.equal(g2.json.idempotent_replay, undefined, 'another admin is not a replay')
        assert.equal(g2.json.balance, g1.json.balance + 5)
        console.log(`${tried + 4} cross-account attempts: all refused or scoped to the caller`)
      },
    )

    await t.step(
      'privilege escalation: permissions and fences bind key creation and update',
      async () => {
        const acct = await newAccount(10_000, 'escalate')
        const mk = (spec: Record<string, unknown>, by = acct.key) =>
          gw4('/user/api-keys', { key: by, body: spec })
        const reader = (await mk({ key_name: 'reader', permissions: ['read'] })).json
        const writer = (await mk({ key_name: 'writer' })).json
        const other = (await mk({ key_name: 'other' })).json
        const inAnHour = new Date(Date.now() + 3_600_000).toISOString()
        const fenced = (await mk({
          key_name: 'fenced',
          allowed_ips: ['127.0.0.0/8'],
          allowed_referrers: ['*.example.com'],
          expires_at: inAnHour,
          max_requests: 50,
        })).json
        const fromSite = { origin: 'https://ci.example.com' }
        const attempts: [string, Promise<{ status: number; text: string }>, number][] = []
        const expect = (
          what: string,
          p: Promise<{ status: number; text: string }>,
          status: number,
        ) => attempts.push([what, p, status])

        // A read key writes nothing.
        expect('read key creates a key', mk({ key_name: 'x' }, reader.api_key), 403)
        expect(
          'read key widens itself',
          gw4(`/user/api-keys/${reader.key_id}`, {
            method: 'PUT',
            key: reader.api_key,
            body: { permissions: ['read', 'write'] },
          }),
          403,
        )
        expect(
          'read key rotates itself',
          gw4(`/user/api-keys/${reader.key_id}/rotate`, { key: reader.api_key, body: {} }),
          403,
        )
        expect(
          'read key deletes the account',
          gw4('/user/account', { method: 'DELETE', key: reader.api_key }),
          403,
        )
        expect(
          'read key chats',
          gw4('/v1/chat/completions', { key: reader.api_key, body: CHAT }),
          403,
        )
        // A write key mints no admin.
        expect(
          'write key mints admin',
          mk({ key_name: 'adm', permissions: ['admin'] }, writer.api_key),
          400,
        )
        expect(
          'write key raises itself to admin',
          gw4(`/user/api-keys/${writer.key_id}`, {
            method: 'PUT',
            key: writer.api_key,
            body: { permissions: ['read', 'write', 'admin'] },
          }),
          400,
        )
        expect(
          'write key raises another to admin',
          gw4(`/user/api-keys/${other.key_id}`, {
            method: 'PUT',
            key: writer.api_key,
            body: { permissions: ['admin', 'read'] },
          }),
          400,
        )
        // A fenced key (IP range, site, expiry, request cap) cannot escape its fences.
        const f = fenced.api_key
        expect('fenced key mints an unfenced key', mk({ key_name: 'free' }, f), 403)
        for (
          const [field, value] of [
            ['allowed_ips', null],
            ['allowed_ips', ['0.0.0.0/0']],
            ['allowed_referrers', null],
            ['allowed_referrers', ['*.com']],
            ['expires_at', null],
            ['expires_at', new Date(Date.now() + 86_400_000 * 30).toISOString()],
            ['max_requests', null],
            ['max_requests', 1_000_000],
          ] as const
        ) {
          expect(
            `fenced key lifts its own ${field} (${JSON.stringify(value)})`,
            gw4(`/user/api-keys/${fenced.key_id}`, {
              method: 'PUT',
              key: f,
              headers: fromSite,
              body: { [field]: value },
            }),
            403,
          )
        }
        for (
          const [what, target] of [['the primary key', acct.keyId], ['another key', other.key_id]]
        ) {
          expect(
            `fenced key rotates ${what} (to receive its secret)`,
            gw4(`/user/api-keys/${target}/rotate`, { key: f, headers: fromSite, body: {} }),
            403,
          )
          expect(
            `fenced key fences ${what}`,
            gw4(`/user/api-keys/${target}`, {
              method: 'PUT',
              key: f,
              headers: fromSite,
              body: { allowed_ips: ['127.0.0.1'] },
            }),
            403,
          )
        }
        expect(
          'fenced key deletes another key',
          gw4(`/user/api-keys/${other.key_id}`, { method: 'DELETE', key: f, headers: fromSite }),
          403,
        )
        expect(
          'fenced key deletes the account',
          gw4('/user/account', { method: 'DELETE', key: f, headers: fromSite }),
          403,
        )
        for (const [what, p, status] of attempts) {
          const res = await p
          assert.equal(res.status, status, `${what}: ${res.text}`)
        }
        // A key with a request cap of its own creates no keys at all, even within its fences
        // (key-caps.test.ts); a fenced key without one creates keys at least as fenced.
        const capped = await gw4('/user/api-keys', {
          key: f,
          headers: fromSite,
          body: { key_name: 'child', permissions: ['read'], max_requests: 10 },
        })
        assert.equal(capped.status, 403, capped.text)
        const uncapped = (await mk({
          key_name: 'fenced, uncapped',
          allowed_ips: ['127.0.0.0/8'],
          allowed_referrers: ['*.example.com'],
          expires_at: inAnHour,
        })).json
        const child = await gw4('/user/api-keys', {
          key: uncapped.api_key,
          headers: fromSite,
          body: {
            key_name: 'child',
            permissions: ['read'],
            allowed_ips: ['127.0.0.1'],
            allowed_referrers: ['ci.example.com'],
            expires_at: inAnHour,
            max_requests: 10,
          },
        })
        assert.equal(child.status, 200, child.text)
        const tighten = await gw4(`/user/api-keys/${fenced.key_id}`, {
          method: 'PUT',
          key: f,
          headers: fromSite,
          body: { key_name: 'fenced, renamed', max_requests: 40 },
        })
        assert.equal(tighten.status, 200, tighten.text)
        // The owner's keys are intact.
        assert.equal((await gw4('/user/balance', { key: acct.key })).status, 200)
        assert.equal((await gw4('/user/balance', { key: other.api_key })).status, 200)
        console.log(
          `${attempts.length} escalation attempts refused; 2 changes within fences allowed`,
        )
      },
    )

    await t.step('an operator-suspended key stays suspended; admin routes need admin', async () => {
      const acct = await newAccount(1000, 'suspend')
      const s = (await gw4('/user/api-keys', { key: acct.key, body: { key_name: 's' } })).json
      await db()`select gateway.deactivate_key(${s.key_id}, 'leaked')`
      const again = await gw4(`/user/api-keys/${s.key_id}`, {
        method: 'PUT',
        key: acct.key,
        body: { is_active: true },
      })
      assert.equal(again.status, 403, again.text)
      assert.equal(again.json.error.code, 'permission_denied')
      const rotated = await gw4(`/user/api-keys/${s.key_id}/rotate`, { key: acct.key, body: {} })
      assert.equal(rotated.status, 200)
      assert.equal((await gw4('/user/balance', { key: rotated.json.api_key })).status, 401)
      await db()`select gateway.reactivate_key(${s.key_id})`
      assert.equal((await gw4('/user/balance', { key: rotated.json.api_key })).status, 200)

      const reader = (await gw4('/user/api-keys', {
        key: acct.key,
        body: { key_name: 'r', permissions: ['read'] },
      })).json
      const admin: Account = await newAdmin()
      const target = { user_id: acct.userId }
      let tried = 0
      for (const k of [acct.key, reader.api_key]) {
        for (
          const [method, path, body] of [
            ['POST', '/admin/add_credits', { ...target, credits: 5 }],
            ['GET', '/admin/balance', undefined],
            ['GET', '/admin/monitor', undefined],
            ['POST', '/admin/limit', { ...target, rate_limits: { requests_per_minute: 1 } }],
            ['POST', '/admin/refresh-models', undefined],
            ['GET', '/admin/cache-status', undefined],
          ] as const
        ) {
          const res = await gw4(path, { method, key: k, body })
          tried++
          assert.equal(res.status, 403, `${path}: ${res.text}`)
        }
      }
      assert.equal((await gw4('/admin/monitor', { key: admin.key })).status, 200)
      console.log(`${tried} admin calls with non-admin keys: all 403`)
    })
  } finally {
    await v4.stop()
    await v6.stop()
    await sim.close()
  }
})
