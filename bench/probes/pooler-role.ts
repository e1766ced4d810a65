// Least privilege through a transaction pooler, two ways, measured (docs/PERFORMANCE.md, "The
// pooler and the function's role"):
//
//   login       the function logs in as gateway_api: one statement per call
//   set-local   it logs in as postgres and assumes gateway_api in each transaction:
//               BEGIN; SET LOCAL ROLE gateway_api; the call; COMMIT (postgres.js sql.begin)
//   set-local-1 the same in one round trip: a simple-protocol multi-statement with the values inlined
//
// Each runs a gateway API call (gateway.user_balance of one account's key) through the stack's
// PgBouncer (54329, transaction mode) at concurrency 1 and 16, and reports the latency per call and
// the CPU time Postgres (every `postgres` process) and PgBouncer spent per call, from /proc.
//
//   bash scripts/stack.sh start
//   deno run -A bench/probes/pooler-role.ts [--calls N] [--rounds N]

import postgres from 'postgres'
import { hashKey, toHex } from '../../supabase/functions/_shared/keys.ts'

const arg = (name: string, fallback: number) => {
  const i = Deno.args.indexOf(`--${name}`)
  return i >= 0 ? Number(Deno.args[i + 1]) : fallback
}
const CALLS = arg('calls', 3000)
const ROUNDS = arg('rounds', 3)
const DB_URL = Deno.env.get('DB_URL') ?? 'postgresql://postgres:postgres@127.0.0.1:54322/postgres'
const FUNCTION_DB_URL = Deno.env.get('FUNCTION_DB_URL') ??
  'postgresql://gateway_api:gateway-api-local@127.0.0.1:54329/postgres'
const POOLED_POSTGRES = Object.assign(new URL(FUNCTION_DB_URL), {
  username: 'postgres',
  password: new URL(DB_URL).password,
}).href
const TICK_MS = 1000 / 100 // USER_HZ

/** CPU ms of every process whose command name is `comm` (utime + stime from /proc). */
async function cpuOf(comm: string): Promise<number> {
  let ticks = 0
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`)
      const close = stat.lastIndexOf(')')
      if (stat.slice(stat.indexOf('(') + 1, close) !== comm) continue
      const f = stat.slice(close + 2).split(' ')
      ticks += Number(f[11]) + Number(f[12])
    } catch {
      // gone meanwhile
    }
  }
  return ticks * TICK_MS
}

const admin = postgres(DB_URL, { max: 1, onnotice: () => {} })
const email = `pooler-bench-${crypto.randomUUID().slice(0, 8)}@example.com`
const [reg] = await admin`select gateway.register(${email}, null, 'live', null) as r`
const key = (reg.r as { api_key: string }).api_key
const keyHash = hashKey(key)
const QUERY = 'select gateway.user_balance($1, $2, $3)::text as r'
const INLINE = `begin; set local role gateway_api; ` +
  `select gateway.user_balance('\\x${toHex(keyHash)}'::bytea, null, null)::text as r; commit;`

type Mode = 'login' | 'set-local' | 'set-local-1'

function client(mode: Mode, max: number) {
  return postgres(mode === 'login' ? FUNCTION_DB_URL : POOLED_POSTGRES, {
    max,
    prepare: false,
    fetch_types: false,
    idle_timeout: 5,
    onnotice: () => {},
  })
}

async function once(sql: postgres.Sql, mode: Mode): Promise<void> {
  if (mode === 'login') {
    // deno-lint-ignore no-explicit-any -- postgres.js types parameters loosely
    await sql.unsafe(QUERY, [keyHash, null, null] as any[])
  } else if (mode === 'set-local') {
    await sql.begin(async (tx) => {
      await tx.unsafe('set local role gateway_api')
      // deno-lint-ignore no-explicit-any -- as above
      await tx.unsafe(QUERY, [keyHash, null, null] as any[])
    })
  } else {
    await sql.unsafe(INLINE).simple()
  }
}

async function run(mode: Mode, concurrency: number) {
  // postgres.js sends a multi-statement transaction only on a connection of its own (max 1).
  const sqls = mode === 'set-local-1'
    ? Array.from({ length: concurrency }, () => client(mode, 1))
    : [client(mode, concurrency)]
  const sqlOf = (i: number) => sqls[i % sqls.length]
  // Warm: connections open, plans cached.
  await Promise.all(Array.from({ length: concurrency * 4 }, (_, i) => once(sqlOf(i), mode)))
  const latencies: number[] = []
  const pg0 = await cpuOf('postgres')
  const pgb0 = await cpuOf('pgbouncer')
  const t0 = performance.now()
  let left = CALLS
  await Promise.all(Array.from({ length: concurrency }, async (_, i) => {
    while (left-- > 0) {
      const s = performance.now()
      await once(sqlOf(i), mode)
      latencies.push(performance.now() - s)
    }
  }))
  const wall = performance.now() - t0
  const pg = (await cpuOf('postgres')) - pg0
  const pgb = (await cpuOf('pgbouncer')) - pgb0
  await Promise.all(sqls.map((sql) => sql.end()))
  latencies.sort((a, b) => a - b)
  const q = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
  return {
    mode,
    concurrency,
    calls: latencies.length,
    p50_ms: q(0.5),
    p99_ms: q(0.99),
    calls_per_s: latencies.length / wall * 1000,
    postgres_cpu_us_per_call: pg * 1000 / latencies.length,
    pgbouncer_cpu_us_per_call: pgb * 1000 / latencies.length,
  }
}

const results: Awaited<ReturnType<typeof run>>[] = []
try {
  // Who each mode really is, through the pooler.
  for (const mode of ['login', 'set-local'] as Mode[]) {
    const sql = client(mode, 1)
    const [me] = mode === 'login'
      ? await sql`select current_user::text as u`
      : await sql.begin(async (tx) => {
        await tx`set local role gateway_api`
        return await tx`select current_user::text as u`
      })
    console.log(`${mode}: current_user in the call = ${me.u}`)
    await sql.end()
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const concurrency of [1, 16]) {
      for (const mode of ['login', 'set-local', 'set-local-1'] as Mode[]) {
        results.push(await run(mode, concurrency))
      }
    }
  }
} finally {
  await admin`select gateway.erase_account(${(reg.r as { user_id: number }).user_id})`.catch(
    () => {},
  )
  await admin.end()
}

// Median of the rounds per mode and concurrency.
const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]
console.log(
  `\n${CALLS} calls of gateway.user_balance per run, ${ROUNDS} rounds, medians; through PgBouncer ` +
    '(transaction mode)\n',
)
console.log(
  'mode         c   p50 ms  p99 ms   calls/s  postgres CPU µs/call  pgbouncer CPU µs/call',
)
for (const concurrency of [1, 16]) {
  for (const mode of ['login', 'set-local', 'set-local-1'] as Mode[]) {
    const rs = results.filter((r) => r.mode === mode && r.concurrency === concurrency)
    const f = (k: keyof typeof rs[0], d = 2) => med(rs.map((r) => r[k] as number)).toFixed(d)
    console.log(
      `${mode.padEnd(12)} ${String(concurrency).padStart(2)}  ${f('p50_ms').padStart(7)} ${
        f('p99_ms').padStart(7)
      } ${f('calls_per_s', 0).padStart(9)}  ${f('postgres_cpu_us_per_call', 0).padStart(20)}  ${
        f('pgbouncer_cpu_us_per_call', 0).padStart(21)
      }`,
    )
  }
}
