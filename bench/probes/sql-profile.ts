// Where the time goes inside the request path's SQL: runs begin_request + settle_request in a loop
// on one connection and reports (1) the statements nested inside them (pg_stat_statements with
// track = all for this session only) and (2) the time per line of the two plpgsql functions
// (plpgsql_check's profiler). Everything happens in one transaction that is rolled back, so the
// shared database keeps no account, no extension and no setting from it.
//
//   deno run -A bench/probes/sql-profile.ts [calls=2000]        (bench/run.sh --profile runs it too)
//
// Inside one transaction there is no commit per call (no WAL flush): the absolute numbers are
// those of the function bodies alone, which is what this is for.

import postgres from 'postgres'
import { loadAccount } from '../../supabase/tests/lib/books.ts'
import { functionDbUrl, roundTrips } from '../measure.ts'
import { pricedModel } from '../../supabase/functions/gateway/chat-request.ts'
import { MODEL } from '../scenarios.ts'

export interface SqlProfile {
  calls: number
  /** Mean execution time of each call, ms. */
  begin_ms: number
  settle_ms: number
  nested: { query: string; calls: number; total_ms: number; mean_ms: number }[]
  lines: { fn: string; line: number; total_ms: number; per_call_us: number; source: string }[]
}

const BEGIN = 'gateway.begin_request(bytea,inet,text,jsonb,timestamp with time zone)'
const SETTLE = 'gateway.settle_request(bigint,jsonb,timestamp with time zone)'

/** Thrown to end the transaction with a rollback, carrying what was measured out of it. */
class Rollback {
  constructor(readonly profile: SqlProfile) {}
}

export async function profileSql(url: string, calls = 2000): Promise<SqlProfile> {
  const sql = postgres(url, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: 'bench-sql-profile' },
  })
  try {
    await sql.begin(async (tx) => {
      await tx`select extensions.pg_stat_statements_reset()`
      await tx`set local pg_stat_statements.track = 'all'`
      const [{ present }] =
        await tx`select exists (select from pg_extension where extname = 'plpgsql_check') as present`
      if (!present) await tx`create extension plpgsql_check`
      await tx`set local plpgsql_check.profiler = on`

      const account = await loadAccount(`sql-profile-${Date.now()}@bench.invalid`, 1e12, {
        environment: 'live',
        sql: tx,
      })
      const hash = (await tx`select gateway.hash_key(${account.key}) as h`)[0].h

      let beginMs = 0
      let settleMs = 0
      for (let i = 0; i < calls; i++) {
        let t = performance.now()
        const [{ h }] = await tx.unsafe(
          'select gateway.begin_request($1, $2, $3, $4) as h',
          [hash, '127.0.0.1', null, {
            models: [pricedModel(MODEL)],
            prompt_bound: 9,
            max_tokens: 8,
          }],
          { prepare: true },
        )
        beginMs += performance.now() - t
        if (!h.ok) throw new Error(`begin_request refused: ${JSON.stringify(h)}`)
        t = performance.now()
        await tx.unsafe(
          'select gateway.settle_request($1, $2) as s',
          [h.hold_id, {
            model: 'openai/gpt-4o-mini',
            prompt_tokens: 9,
            completion_tokens: 4,
            cost: '0.0000036',
            status: 'completed',
            latency_ms: 2,
            generation_id: `gen-profile-${i}`,
            settled_by: 'usage',
          }],
          { prepare: true },
        )
        settleMs += performance.now() - t
      }

      const nested = await tx`
        select query, calls, total_exec_time as total, mean_exec_time as mean
          from extensions.pg_stat_statements
         where not toplevel and dbid = (select oid from pg_database where datname = current_database())
           -- Foreign-key checks run here only because the account was created in this same
           -- transaction (Postgres skips them for rows whose key did not change otherwise).
           and query not like '%FOR KEY SHARE OF x%'
           and calls >= ${calls}
         order by total_exec_time desc limit 12`
      const lines = []
      // SQL_PROFILE_FUNCTIONS: more plpgsql functions (regprocedure text, `;`-separated) whose
      // lines to list, e.g. gateway.admit(…) or gateway.settle_hold(…).
      const more = (Deno.env.get('SQL_PROFILE_FUNCTIONS') ?? '').split(';').filter(Boolean)
      for (const fn of [BEGIN, SETTLE, ...more]) {
        const rows = await tx`
          select lineno, total_time, exec_stmts, source
            from plpgsql_profiler_function_tb(${fn}::regprocedure)
           where total_time is not null and exec_stmts > 0
           order by total_time desc limit ${more.length ? 14 : 8}`
        for (const row of rows) {
          lines.push({
            fn: fn.slice(8, fn.indexOf('(')),
            line: row.lineno,
            total_ms: Math.round(row.total_time),
            per_call_us: Math.round((row.total_time * 1000) / calls),
            source: String(row.source).trim().replace(/\s+/g, ' ').slice(0, 90),
          })
        }
      }
      throw new Rollback({
        calls,
        begin_ms: Math.round((beginMs / calls) * 1000) / 1000,
        settle_ms: Math.round((settleMs / calls) * 1000) / 1000,
        nested: nested.map((n) => ({
          query: String(n.query).replace(/\s+/g, ' ').slice(0, 110),
          calls: Number(n.calls),
          total_ms: Math.round(n.total),
          mean_ms: Math.round(n.mean * 1000) / 1000,
        })),
        lines,
      })
    })
    throw new Error('unreachable: the profile transaction must roll back')
  } catch (err) {
    if (err instanceof Rollback) return err.profile
    throw err
  } finally {
    await sql.end({ timeout: 5 })
  }
}

export function formatSqlProfile(p: SqlProfile): string {
  return [
    `${p.calls} × begin_request (${p.begin_ms} ms each, round trip) + settle_request (${p.settle_ms} ms), no commits:`,
    'statements nested inside them (pg_stat_statements, track = all):',
    ...p.nested.map((n) =>
      `  ${String(n.total_ms).padStart(6)} ms  ${String(n.calls).padStart(6)} ×  ${n.query}`
    ),
    'plpgsql lines (plpgsql_check profiler), µs per call:',
    ...p.lines.map((l) =>
      `  ${String(l.per_call_us).padStart(5)} µs  ${l.fn}:${l.line}  ${l.source}`
    ),
  ].join('\n')
}

if (import.meta.main) {
  const url = Deno.env.get('BENCH_DB_URL') ??
    'postgresql://postgres:postgres@127.0.0.1:54322/postgres'
  const rt = await roundTrips(url, functionDbUrl(url))
  console.log(
    `median round trips (each call committed): select 1 ${rt.select1_ms} ms, begin_request ${rt.begin_ms} ms, settle_request ${rt.settle_ms} ms`,
  )
  console.log(formatSqlProfile(await profileSql(url, Number(Deno.args[0] ?? 2000))))
}
