// The latency floor at concurrency 1 (docs/PERFORMANCE.md, "Latency at concurrency 1"): what each
// layer of a metered proxy costs in this runtime, built up one layer at a time and measured like
// the benchmark measures the gateway (wrk, one connection, the same request and simulator):
//
//   direct      wrk → simulator
//   proxy       + a Deno.serve that forwards the body with fetch (no key, no database)
//   + query     + one postgres.js round trip (`select $1`) before forwarding
//   + admission + `gateway.begin_request` instead of that query (the real SQL admission, as the
//               gateway's role), the settle afterwards in background: a gateway with nothing else
//   (both database layers connect as the function does: PgBouncer on 54329 in transaction mode,
//   logged in as gateway_api, unprepared, one query at a time per connection)
//   gw, no rsv  the function itself, served as the benchmark serves it (supabase/tests/lib/
//               procs.ts), with reserved admissions off (GATEWAY_RESERVE_ADMISSIONS=0): every
//               request waits for its admission, as before they existed
//   gateway     the function as it runs by default
//
// plus the median sequential round trips of `select 1`, `begin_request` and `settle_request` from
// this process (bench/measure.ts). Needs the local stack (bench/floor.sh starts it).
//
//   deno run -A bench/floor.ts [--seconds N]
//   deno run -A bench/floor.ts --serve <proxy|query|admission> <port> <upstream>   (internal)

import postgres from 'postgres'
import { createHash } from 'node:crypto'
import { newPool } from '../supabase/tests/lib/books.ts'
import {
  freePort,
  start,
  startFunctions,
  startSimulator,
  stopAll,
  stopOnSignals,
} from '../supabase/tests/lib/procs.ts'
import { chatBody } from './scenarios.ts'
import { functionDbUrl, roundTrips } from './measure.ts'
import { wrk } from './wrk.ts'

const ROOT = new URL('../', import.meta.url).pathname
const DENO = `${ROOT}node_modules/.bin/deno`
const DB_URL = Deno.env.get('BENCH_DB_URL') ??
  'postgresql://postgres:postgres@127.0.0.1:54322/postgres'

type Layer = 'proxy' | 'query' | 'admission'

/** One layer's server (run in its own process, so nothing else shares its event loop). */
function serve(layer: Layer, port: number, upstream: string): void {
  // The way the function reaches Postgres (db.ts): the pooler as gateway_api, unprepared, one
  // query at a time per connection.
  const sql = layer === 'proxy' ? undefined : postgres(functionDbUrl(DB_URL), {
    max: 4,
    prepare: false,
    fetch_types: false,
    ...({ max_pipeline: 1 } as object),
    connection: { application_name: 'bench-floor' },
  })
  const forward = async (body: string) => {
    const res = await fetch(`${upstream}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer bench' },
      body,
    })
    return await res.text()
  }
  Deno.serve({ hostname: '127.0.0.1', port, onListen() {} }, async (req) => {
    const text = await req.text()
    if (layer === 'proxy') {
      return new Response(await forward(text), { headers: { 'content-type': 'application/json' } })
    }
    if (layer === 'query') {
      await sql!.unsafe('select $1::int as r', [1])
      return new Response(await forward(text), { headers: { 'content-type': 'application/json' } })
    }
    const key = (req.headers.get('authorization') ?? '').replace(/^Bearer\s+/i, '')
    const body = JSON.parse(text)
    const [{ r }] = await sql!.unsafe(
      'select gateway.begin_request($1, $2, $3, $4) as r',
      [
        createHash('sha256').update(key).digest(),
        '127.0.0.1',
        null,
        { models: [body.model], prompt_bound: text.length, max_tokens: body.max_tokens ?? null },
      ],
    )
    if (!r.ok) return Response.json(r, { status: 402 })
    body.max_tokens = r.max_tokens
    const out = await forward(JSON.stringify(body))
    const doc = JSON.parse(out)
    sql!.unsafe(
      'select gateway.settle_request($1, $2)',
      [
        r.hold_id,
        {
          model: doc.model,
          prompt_tokens: doc.usage.prompt_tokens,
          completion_tokens: doc.usage.completion_tokens,
          status: 'success',
          latency_ms: 1,
          generation_id: doc.id,
          settled_by: 'usage',
        },
      ],
    ).catch((err) => console.error('settle failed', err))
    return new Response(out, { headers: { 'content-type': 'application/json' } })
  })
}

async function main(seconds: number): Promise<void> {
  stopOnSignals()
  const tmp = await Deno.makeTempDir({ prefix: 'bench-floor-' })
  const simPort = freePort(54351)
  const sim = `http://127.0.0.1:${simPort}`
  await startSimulator(simPort, `${tmp}/sim.log`)
  // Accounts as the benchmark makes them: a balance that cannot run out, limits that cannot bite.
  const sql = postgres(DB_URL, { max: 2, onnotice: () => {} })
  const run = `bench-floor-${Date.now()}`
  const pool = await newPool(64, 1, 1_000_000_000_000, run, {
    environment: 'live',
    email: (i) => `${run}-${i}@bench.invalid`,
    sql,
  })
  await sql.end()
  const keys = pool.map((a) => a.keys[0].key)
  const keysFile = `${tmp}/keys.txt`
  await Deno.writeTextFile(keysFile, keys.join('\n') + '\n')
  const bodyFile = `${tmp}/body.json`
  await Deno.writeTextFile(bodyFile, chatBody(false))

  const targets: { name: string; url: string }[] = [
    { name: 'direct', url: `${sim}/api/v1/chat/completions` },
  ]
  for (const layer of ['proxy', 'query', 'admission'] as const) {
    const port = freePort(54380 + targets.length)
    await start({
      name: layer,
      cmd: DENO,
      args: ['run', '-A', import.meta.filename!, '--serve', layer, String(port), `${sim}/api/v1`],
      log: `${tmp}/${layer}.log`,
      readyUrl: `http://127.0.0.1:${port}/`,
    })
    targets.push({
      name: layer === 'proxy' ? 'proxy' : `+ ${layer}`,
      url: `http://127.0.0.1:${port}/`,
    })
  }
  // The function twice: without reserved admissions (each request waits for its admission) and as
  // it runs by default (a busy caller's requests take admissions reserved ahead).
  for (const [name, reserve] of [['gw, no rsv', '0'], ['gateway', '']]) {
    const fnPort = freePort(54389 + targets.length)
    await startFunctions({
      port: fnPort,
      upstream: `${sim}/api/v1`,
      log: `${tmp}/functions-${targets.length}.log`,
      env: reserve ? { GATEWAY_RESERVE_ADMISSIONS: reserve } : {},
    })
    targets.push({
      name,
      url: `http://127.0.0.1:${fnPort}/functions/v1/gateway/v1/chat/completions`,
    })
  }

  const rows: string[] = []
  let direct = 0
  for (const t of targets) {
    const opts = { url: t.url, connections: 1, bodyFile, keysFile }
    await wrk({ ...opts, seconds: 2 })
    const r = await wrk({ ...opts, seconds })
    const p50 = r.latency_us.p50 / 1000
    if (t.name === 'direct') direct = p50
    const failed = Object.values(r.errors).reduce((a, b) => a + b, 0)
    rows.push(
      `${t.name.padEnd(12)} ${p50.toFixed(3).padStart(7)} ${
        t.name === 'direct' ? '      –' : (p50 - direct).toFixed(3).padStart(7)
      } ${(r.latency_us.p99 / 1000).toFixed(3).padStart(8)} ${String(failed).padStart(5)}`,
    )
  }
  const rt = await roundTrips(DB_URL, functionDbUrl(DB_URL), 500)
  await stopAll()
  console.log(`\nconcurrency 1, ${seconds} s per layer (after 2 s of warm-up):\n`)
  console.log('layer         p50 ms  +p50 ms   p99 ms  errs')
  console.log(rows.join('\n'))
  console.log(
    `\nsequential round trips from this process (median of ${rt.calls}, each committed): ` +
      `select 1 ${rt.select1_ms} ms, begin_request ${rt.begin_ms} ms, ` +
      `settle_request ${rt.settle_ms} ms`,
  )
}

if (Deno.args[0] === '--serve') {
  serve(Deno.args[1] as Layer, Number(Deno.args[2]), Deno.args[3])
} else {
  const i = Deno.args.indexOf('--seconds')
  await main(i >= 0 ? Number(Deno.args[i + 1]) : 8)
}
