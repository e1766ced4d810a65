// What a parameterized call costs through the pooler with prepared statements off, against the same
// call with its value inlined. postgres.js with `prepare: false` sends [Parse, Describe, Flush],
// waits for the parameter types, then [Bind, Execute, Sync] (connection.js, `describeFirst`): two
// round trips; the simple protocol is one. Sequential calls of `select $1::jsonb` as gateway_api
// through PgBouncer; CPU per call of this process (the client side, as in the function) and of
// PgBouncer, from /proc. (Postgres's side is not read: through the pooler its backend varies.)
//
//   deno run -A bench/probes/round-trips.ts [calls=3000]        (docs/PERFORMANCE.md, 2026-12-03)

import postgres from 'postgres'
import { cpuMs, listenerPid } from '../measure.ts'
import { FUNCTION_DB_URL } from '../../supabase/tests/lib/stack.ts'

const calls = Number(Deno.args[0] ?? 3000)
// As db.ts connects (prepare off, one query at a time per connection).
const sql = postgres(FUNCTION_DB_URL, {
  max: 1,
  prepare: false,
  fetch_types: false,
  onnotice: () => {},
  ...({ max_pipeline: 0 } as object),
})
const pooler = listenerPid(Number(new URL(FUNCTION_DB_URL).port), 'pgbouncer')
const payload = { a: 'x'.repeat(200), n: [1, 2, 3] }

async function run(name: string, call: (i: number) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < 200; i++) await call(i)
  const before = [cpuMs(Deno.pid), pooler ? cpuMs(pooler) : 0]
  const t = performance.now()
  for (let i = 0; i < calls; i++) await call(i)
  const wall = performance.now() - t
  const after = [cpuMs(Deno.pid), pooler ? cpuMs(pooler) : 0]
  const us = (k: number) => Math.round(((after[k] - before[k]) * 1000) / calls)
  console.log(
    `${name}: ${Math.round((wall * 1000) / calls)} µs a call; CPU µs a call: client ${us(0)}` +
      (pooler ? `, pgbouncer ${us(1)}` : ''),
  )
}

try {
  for (let round = 0; round < 3; round++) {
    await run(
      'parameter (two round trips)',
      (i) => sql.unsafe('select $1::jsonb as r', [sql.json({ ...payload, i })]),
    )
    // A probe's own constant text: nothing here comes from outside.
    await run(
      'inlined   (one round trip) ',
      (i) => sql.unsafe(`select $q$${JSON.stringify({ ...payload, i })}$q$::jsonb as r`),
    )
  }
} finally {
  await sql.end({ timeout: 5 })
}
