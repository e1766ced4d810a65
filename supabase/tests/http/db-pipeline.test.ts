// The function's SQL calls through the transaction pooler (PgBouncer, as on hosted Supabase) are
// never pipelined: a query written on a connection behind another one's Sync is answered by the
// server after PgBouncer has already given that server back to its pool (the first query's
// ReadyForQuery ends the transaction), so its answer is dropped ("got packet '1' from server when
// not linked", pgbouncer/pgbouncer#759) and the request waits for it forever. postgres.js wrote
// one query behind each parameterless one (/health, the models cache) even with max_pipeline 1;
// the pg-restart reliability test met it as requests killed with their worker (546) after a
// Postgres restart, when queued queries are written to a fresh connection in a burst.
//
// Here the burst is made at will: one pool connection, parameterless /health calls mixed with
// parameterized ones (/user/balance), all at once, many rounds. Each must be answered.

import assert from 'node:assert/strict'
import { newAccount } from '../lib/accounts.ts'
import { call } from '../lib/http.ts'
import { startFunctions } from '../lib/procs.ts'

const opts = { sanitizeOps: false, sanitizeResources: false }
const ROUNDS = 30

Deno.test(
  'SQL calls through the pooler are never pipelined: every request is answered',
  opts,
  async () => {
    const fn = await startFunctions({
      env: { GATEWAY_LOG_REQUESTS: '0', GATEWAY_DB_POOL_MAX: '1' },
    })
    try {
      const account = await newAccount(1000, 'pipeline')
      const one = (path: string, key?: string) =>
        fetch(`${fn.url}${path}`, {
          headers: key ? { authorization: `Bearer ${key}` } : {},
          // Far beyond any answer here (milliseconds); a lost query never answers at all.
          signal: AbortSignal.timeout(10_000),
        }).then(async (r) => (await r.body?.cancel(), r.status), (e: Error) => `${path}: ${e.name}`)
      const counts: Record<string, number> = {}
      for (let round = 0; round < ROUNDS; round++) {
        const statuses = await Promise.all(
          Array.from(
            { length: 8 },
            (_, i) => i % 2 ? one('/user/balance', account.key) : one('/health'),
          ),
        )
        for (const s of statuses) counts[String(s)] = (counts[String(s)] ?? 0) + 1
        if (statuses.some((s) => s !== 200)) break
      }
      console.log(`answers: ${JSON.stringify(counts)}`)
      assert.deepEqual(Object.keys(counts), ['200'])
      // The function still answers afterwards (nothing stuck on its one connection).
      assert.equal((await call(fn.url, '/user/balance', { key: account.key })).status, 200)
    } finally {
      await fn.stop()
    }
  },
)
