// Authentication: which keys get in (none but a live one), and how a key is looked up — shown
// structurally, never by asserting on wall-clock time: the checksum refuses a mistyped key before
// any query (a functions server with NO database still answers 401), a valid-checksum key costs one
// probe of a unique index by its SHA-256 (so how much of a key is right changes nothing: the hashes
// of a near miss and of the key share nothing). Timings are printed for information only.

import assert from 'node:assert/strict'
import { hashKey, keyChecksum } from '../../functions/_shared/keys.ts'
import { type Account, newAccount, newAdmin, unknownKey } from '../lib/accounts.ts'
import { CHAT, client } from '../lib/http.ts'
import { freePort, startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep } from '../lib/stack.ts'

const opts = { sanitizeOps: false, sanitizeResources: false }

/** The same body with one character changed and the checksum recomputed: valid, but not the key. */
function nearMiss(key: string, at = key.length - 7): string {
  const head = key.slice(0, key.length - 6)
  const c = head[at] === 'A' ? 'B' : 'A'
  const body = head.slice(0, at) + c + head.slice(at + 1)
  return body + keyChecksum(body)
}

/** Every way a presented key can be malformed; all refused by shape or checksum. */
function malformed(key: string): [string, Record<string, string>][] {
  const env = key.slice(3, key.indexOf('_', 3))
  const other = env === 'live' ? 'test' : 'live'
  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'x' ? 'y' : 'x') + s.slice(i + 1)
  const bearer = (k: string) => ({ authorization: `Bearer ${k}` })
  return [
    ['no Authorization header', {}],
    ['empty bearer', { authorization: 'Bearer ' }],
    ['another scheme', { authorization: `Basic ${btoa(`user:${key}`)}` }],
    ['no scheme', { authorization: key }],
    ['two keys', { authorization: `Bearer ${key} ${key}` }],
    ['the key in x-api-key only', { 'x-api-key': key }],
    ['truncated by one', bearer(key.slice(0, -1))],
    ['truncated to the body', bearer(key.slice(0, -6))],
    ['only the prefix', bearer(key.slice(0, 12))],
    ['one extra character', bearer(`${key}x`)],
    ['checksum broken', bearer(flip(key, key.length - 1))],
    ['body changed, old checksum', bearer(flip(key, 12))],
    [
      'wrong environment, same body and checksum',
      bearer(key.replace(`gw_${env}_`, `gw_${other}_`)),
    ],
    ['unknown environment', bearer(key.replace(`gw_${env}_`, 'gw_prod_'))],
    ['upper-case prefix', bearer(key.replace('gw_', 'GW_'))],
    // Header values are bytes: a Latin-1 look-alike of a body character.
    ['a look-alike character (à)', bearer(`${key.slice(0, 10)}\u00e0${key.slice(11)}`)],
    // An OpenRouter-shaped key, built here so that no secret-looking literal sits in the repository.
    ['an OpenRouter key', bearer(`sk-or-v1-${'0123456789abcdef'.repeat(2)}`)],
    ['forged: random body, random checksum', bearer(`gw_${env}_${'Zz9'.repeat(9)}Z`)],
  ]
}

Deno.test('authentication: which keys get in', opts, async (t) => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  // The same function with a database that does not exist: whatever needs a query fails with 503.
  const deadPort = freePort()
  const noDb = await startFunctions({
    upstream: sim.baseUrl,
    dbUrl: `postgresql://postgres:postgres@127.0.0.1:${deadPort}/postgres`,
    env: { GATEWAY_LOG_REQUESTS: '0' },
  })
  const gw = client(fn.url)
  const chats = () => sim.chats()
  try {
    const a = await newAccount(1000, 'authn')

    await t.step(
      'a malformed key is refused (401) before any query: even with no database',
      async () => {
        const before = chats()
        let tried = 0
        for (const [what, headers] of malformed(a.key)) {
          for (const base of [fn.url, noDb.url]) {
            for (const path of ['/user/balance', '/v1/chat/completions']) {
              const res = await client(base)(path, {
                headers,
                body: path.includes('chat') ? CHAT : undefined,
              })
              tried++
              assert.equal(res.status, 401, `${what} on ${path}: ${res.text}`)
              assert.equal(res.json.error.type, 'authentication_error')
              assert.match(res.json.error.code, /^(missing_api_key|invalid_api_key)$/, what)
            }
          }
        }
        // A well-formed key needs the database: without one it is a 503, not a 401.
        const unknown = await client(noDb.url)('/user/balance', { key: unknownKey() })
        assert.equal(unknown.status, 503, unknown.text)
        assert.equal(unknown.json.error.code, 'database_unavailable')
        assert.equal(chats(), before, 'nothing went upstream')
        console.log(
          `${malformed(a.key).length} malformed forms × 2 servers × 2 routes = ${tried} ` +
            `requests, all 401; the server without a database refused them all the same`,
        )
      },
    )

    await t.step(
      'revoked, expired, deactivated, suspended, closed and rotated-out keys are 401 everywhere',
      async () => {
        const b = await newAccount(1000, 'authn-b')
        const mk = async (spec: Record<string, unknown>) => {
          const r = await gw('/user/api-keys', { key: b.key, body: spec })
          assert.equal(r.status, 200, r.text)
          return r.json as { key_id: number; api_key: string }
        }
        const soon = new Date(Date.now() + 1500).toISOString()
        const [revoked, expired, inactive, suspended, rotated, graced] = await Promise.all([
          mk({ key_name: 'revoked' }),
          mk({ key_name: 'expired', expires_at: soon }),
          mk({ key_name: 'inactive' }),
          mk({ key_name: 'suspended' }),
          mk({ key_name: 'rotated' }),
          mk({ key_name: 'graced' }),
        ])
        assert.equal(
          (await gw(`/user/api-keys/${revoked.key_id}`, { method: 'DELETE', key: b.key })).status,
          200,
        )
        assert.equal(
          (await gw(`/user/api-keys/${inactive.key_id}`, {
            method: 'PUT',
            key: b.key,
            body: { is_active: false },
          })).status,
          200,
        )
        await db()`select gateway.deactivate_key(${suspended.key_id}, 'reliability test')`
        assert.equal(
          (await gw(`/user/api-keys/${rotated.key_id}/rotate`, { key: b.key, body: {} })).status,
          200,
        )
        const grace = await gw(`/user/api-keys/${graced.key_id}/rotate`, {
          key: b.key,
          body: { grace_seconds: 1 },
        })
        assert.equal(grace.status, 200)
        assert.equal(
          (await gw('/user/balance', { key: graced.api_key })).status,
          200,
          'within its grace',
        )
        const closed = await newAccount(1000, 'authn-closed')
        await db()`select gateway.deactivate_account(${closed.userId})`
        await sleep(Math.max(0, Date.parse(soon) - Date.now()) + 100)

        const dead: [string, string, string][] = [
          ['revoked', revoked.api_key, 'invalid_api_key'],
          ['expired', expired.api_key, 'key_expired'],
          ['deactivated by its owner', inactive.api_key, 'key_inactive'],
          ['suspended by the operator', suspended.api_key, 'key_inactive'],
          ['rotated without grace', rotated.api_key, 'invalid_api_key'],
          ['rotated, after its grace', graced.api_key, 'invalid_api_key'],
          ['of a deactivated account', closed.key, 'key_inactive'],
          ['unknown', unknownKey(), 'invalid_api_key'],
        ]
        const routes = await authenticatedRoutes(fn.url, b)
        const before = chats()
        for (const [what, key, code] of dead) {
          for (const r of routes) {
            const res = await gw(r.path, { method: r.method, key, body: r.body })
            assert.equal(res.status, 401, `${what} key, ${r.method} ${r.path}: ${res.text}`)
            assert.equal(res.json.error.code, code, `${what} key, ${r.method} ${r.path}`)
          }
        }
        assert.equal(chats(), before, 'no refused chat reached upstream')
        console.log(
          `${dead.length} dead keys × ${routes.length} authenticated routes = ` +
            `${dead.length * routes.length} requests, all 401 with the reason`,
        )
      },
    )

    await t.step(
      'lookup is by SHA-256 through a unique index; near misses cost the same (timings printed only)',
      async () => {
        const sql = db()
        // The only thing the database ever sees of a key is its SHA-256, matched by equality…
        const [{ id }] = await sql`select gateway.find_key(${await hashKey(a.key)}, now()) as id`
        assert.equal(Number(id), a.keyId)
        const [{ stored }] = await sql`
        select count(*)::int as stored from gateway.api_keys
         where key_prefix = gateway.key_prefix(${a.key}) and key_hash = sha256(convert_to(${a.key}, 'UTF8'))`
        assert.equal(stored, 1)
        // …through unique indexes, for the current secret and the one kept during a rotation grace.
        const indexes = await sql`
        select a.attname as col, i.indisunique as uniq, am.amname as am
          from pg_index i
          join pg_class c on c.oid = i.indexrelid
          join pg_am am on am.oid = c.relam
          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
         where i.indrelid = 'gateway.api_keys'::regclass and i.indnatts = 1
           and a.attname in ('key_hash', 'previous_key_hash')`
        assert.deepEqual(
          indexes.map((r) => `${r.col} ${r.uniq ? 'unique' : ''} ${r.am}`).sort(),
          ['key_hash unique btree', 'previous_key_hash unique btree'],
        )
        // The plan of the lookup find_key makes (seq scans off: the planner would scan a small
        // table, but the production table is not small; what matters is that the index serves it).
        const plan = await sql.begin(async (tx) => {
          await tx`set local enable_seqscan = off`
          const [row] = await tx`
          explain (format json) select k.id from gateway.api_keys k
           where k.key_hash = ${await hashKey(nearMiss(a.key))}`
          return JSON.stringify(row['QUERY PLAN'])
        })
        assert.match(plan, /"Index Name":"api_keys_key_hash_key"/)
        const near = nearMiss(a.key)
        const [h1, h2] = [await hashKey(a.key), await hashKey(near)]
        let differing = 0
        for (let i = 0; i < h1.length; i++) {
          for (let x = h1[i] ^ h2[i]; x; x >>= 1) differing += x & 1
        }
        console.log(
          `a near miss (21 of 22 body characters right, with its own valid checksum) hashes to a value ` +
            `differing in ${differing}/256 bits: the index probe learns nothing from the right part`,
        )

        const samples = async (key: string, n = 60) => {
          const ms: number[] = []
          for (let i = 0; i < n; i++) {
            const t0 = performance.now()
            await gw('/user/balance', { key })
            ms.push(performance.now() - t0)
          }
          ms.sort((x, y) => x - y)
          return `median ${ms[n >> 1].toFixed(2)} ms, p90 ${ms[Math.floor(n * 0.9)].toFixed(2)} ms`
        }
        console.log(
          `timings (information only, not asserted): valid key ${await samples(a.key)}; ` +
            `near miss ${await samples(near)}; random valid-checksum ${await samples(
              unknownKey(),
            )}; ` +
            `checksum broken ${await samples(`${a.key.slice(0, -1)}x`)}`,
        )
      },
    )

    await t.step('an admin key of a deactivated account is refused', async () => {
      const admin: Account = await newAdmin()
      assert.equal((await gw('/admin/monitor', { key: admin.key })).status, 200)
      await db()`select gateway.deactivate_account(${admin.userId})`
      const res = await gw('/admin/monitor', { key: admin.key })
      assert.equal(res.status, 401, res.text)
      assert.equal(res.json.error.code, 'key_inactive')
    })
  } finally {
    await fn.stop()
    await noDb.stop()
    await sim.close()
  }
})

interface Route {
  method: string
  path: string
  body?: unknown
}

/** Every route of the OpenAPI document that needs a key, with a body it would accept. */
export async function authenticatedRoutes(base: string, target: Account): Promise<Route[]> {
  const valid: Record<string, unknown> = {
    'PUT /user/profile': { company: 'x' },
    'POST /user/api-keys': { key_name: 'never made' },
    'PUT /user/api-keys/{key_id}': { key_name: 'never renamed' },
    'POST /user/api-keys/{key_id}/rotate': {},
    'POST /admin/add_credits': { user_id: target.userId, credits: 1 },
    'POST /admin/limit': { user_id: target.userId, rate_limits: { requests_per_minute: 100 } },
    'POST /admin/reconcile': { limit: 1 },
    'POST /v1/chat/completions': CHAT,
  }
  const doc = (await client(base)('/openapi.json')).json
  const routes: Route[] = []
  for (const [full, methods] of Object.entries(doc.paths as Record<string, object>)) {
    type Op = { security?: unknown; requestBody?: unknown }
    for (const [method, op] of Object.entries(methods as Record<string, Op>)) {
      if (!op.security) continue
      const path = full.replace(/^\/gateway/, '')
      const name = `${method.toUpperCase()} ${path}`
      if (op.requestBody) assert.ok(name in valid, `no valid body known for ${name}: add one`)
      routes.push({
        method: method.toUpperCase(),
        path: path.replace('{key_id}', String(target.keyId)),
        body: valid[name],
      })
    }
  }
  return routes
}
