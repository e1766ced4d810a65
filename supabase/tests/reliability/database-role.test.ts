// Least privilege that survives a transaction pooler: the function logs in as gateway_api through
// PgBouncer (the stack's stand-in for Supavisor), and refuses to serve (503 on every route, /health
// saying why, one log line) when it reaches Postgres as a superuser or as the owner of schema
// gateway, unless GATEWAY_ALLOW_PRIVILEGED_ROLE=1. A pooler drops `-c role=…`, so a function that
// connected as postgres would otherwise run every query as postgres without an error.

import assert from 'node:assert/strict'
import postgres from 'postgres'
import { newAccount } from '../lib/accounts.ts'
import { api, call } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, DB_URL, FUNCTION_DB_URL, test } from '../lib/stack.ts'

test('through the pooler, the function is gateway_api, in transaction mode', async () => {
  const health = await api('/health')
  assert.equal(health.status, 200, health.text)
  assert.equal(health.json.database_role, 'gateway_api')

  const asFunction = postgres(FUNCTION_DB_URL, { max: 1, prepare: false, onnotice: () => {} })
  try {
    const [me] = await asFunction`select current_user::text as role`
    assert.equal(me.role, 'gateway_api')
  } finally {
    await asFunction.end()
  }
  // PgBouncer's admin console (simple protocol only) tells its pool mode.
  const pooler = new URL(FUNCTION_DB_URL)
  const console_ = postgres({
    host: pooler.hostname,
    port: Number(pooler.port),
    database: 'pgbouncer',
    username: 'postgres',
    password: new URL(DB_URL).password,
    max: 1,
    prepare: false,
    fetch_types: false,
    onnotice: () => {},
  })
  try {
    const rows = await console_.unsafe('show config').simple()
    const mode = rows.find((r) => r.key === 'pool_mode')
    assert.equal(mode?.value, 'transaction')
  } finally {
    await console_.end()
  }
})

test('as a superuser or the owner of schema gateway, the function refuses to serve', async () => {
  const sim = startOwnSimulator()
  // A login role that is a member of postgres (the owner of schema gateway) without being a superuser.
  const owner = `gateway_owner_probe_${crypto.randomUUID().slice(0, 8)}`
  await db().unsafe(`create role ${owner} login password 'probe' in role postgres`)
  const ownerUrl = Object.assign(new URL(DB_URL), { username: owner, password: 'probe' }).href
  const superuser = await startFunctions({
    upstream: sim.baseUrl,
    dbUrl: DB_URL,
    captureLogs: true,
  })
  const asOwner = await startFunctions({
    upstream: sim.baseUrl,
    dbUrl: ownerUrl,
    captureLogs: true,
  })
  const allowed = await startFunctions({
    upstream: sim.baseUrl,
    dbUrl: DB_URL,
    captureLogs: true,
    env: { GATEWAY_ALLOW_PRIVILEGED_ROLE: '1' },
  })
  try {
    const a = await newAccount(1000, 'privileged')
    for (
      const [fn, role, what] of [
        [superuser, 'postgres', 'a superuser'],
        [asOwner, owner, 'the owner of schema gateway'],
      ] as const
    ) {
      const health = await call(fn.url, '/health')
      assert.equal(health.status, 503, health.text)
      assert.equal(health.json.status, 'refusing')
      assert.equal(health.json.database_role, role)
      assert.match(health.json.reason, new RegExp(what))
      for (const path of ['/v1/models', '/user/balance', '/docs', '/openapi.json']) {
        const res = await call(fn.url, path, { key: a.key })
        assert.equal(res.status, 503, `${path}: ${res.text}`)
        assert.equal(res.json.error.code, 'privileged_database_role')
      }
      const chat = await call(fn.url, '/v1/chat/completions', {
        key: a.key,
        body: { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] },
      })
      assert.equal(chat.status, 503)
      const lines = fn.logs().filter((l) => l.includes('refuses to serve'))
      assert.equal(lines.length, 1, 'one clear log line')
      assert.equal(JSON.parse(lines[0]).level, 'error')
    }
    assert.equal(sim.chats(), 0, 'nothing went upstream')
    assert.equal(
      (await db()`select count(*)::int as n from gateway.holds
      where account_id = ${a.userId}`)[0].n,
      0,
    )

    // The operator's explicit opt-out: served, with a warning.
    const ok = await call(allowed.url, '/user/balance', { key: a.key })
    assert.equal(ok.status, 200, ok.text)
    assert.ok(allowed.logs().some((l) => l.includes('GATEWAY_ALLOW_PRIVILEGED_ROLE')))
  } finally {
    await Promise.all([superuser.stop(), asOwner.stop(), allowed.stop()])
    await sim.close()
    await db().unsafe(`drop role ${owner}`)
  }
})
