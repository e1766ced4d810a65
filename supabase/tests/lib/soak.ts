// The concurrency run: many chat requests from many keys of accounts with small balances, mixed
// stream / non-stream, upstream faults, clients that hang up, credit grants meanwhile — then the
// books. The suite runs light ones (http/concurrency.test.ts, reliability/churn.test.ts);
// `bash scripts/soak.sh` the full ones:
//
//   deno run -A --unstable-no-legacy-abort supabase/tests/lib/soak.ts [--mode standard|churn|
//     hostile|cost] [--requests 10000] [--concurrency 64] [--accounts 20] [--keys 10]
//     [--credits 300] [--seed N] [--wall-clock-ms 6000] [--kill-every-ms 4000] [--markup 25]
//
// Modes (SoakMode): churn adds short wall clocks, early drops, SIGKILLs of workers mid-stream and
// the scheduler's reconcile/release afterwards; hostile sends the adversarial requests of
// hostile.ts; cost runs in pricing_mode cost and reconciles upstream cost, markup and charges.
//
// It runs its own simulator and functions server (free ports) against the shared Postgres, so the
// simulator's generations are exactly this run's, and prints what it tried and what it found.
// Exit status 1 when any invariant is broken or any answer was wrong.

import { newAdmin } from './accounts.ts'
import {
  type Books,
  booksLine,
  checkBooks,
  newPool,
  sweepOpenHolds,
  waitSettled,
  watchBalances,
} from './books.ts'
import { planCost, planHostile } from './hostile.ts'
import { type Functions, startFunctions, startOwnSimulator, stopOnSignals } from './procs.ts'
import { db, sleep } from './stack.ts'
import { CHURN_MIX, loadLine, type LoadReport, runLoad } from './load.ts'

/**
 * standard: the concurrency soak. churn: the same with short wall clocks, early drops and worker
 * kills mid-stream (issue 13). hostile: the adversarial requests of issue 11. cost: pricing_mode
 * `cost` over a mix of models, upstream cost, markup and charges reconciled (issue 14).
 */
export type SoakMode = 'standard' | 'churn' | 'hostile' | 'cost'

export interface SoakOptions {
  requests: number
  concurrency: number
  accounts: number
  keysPerAccount: number
  /** Starting balance of each account; grants top them up as the run goes. */
  credits: number
  seed?: number
  mode?: SoakMode
  /** churn: the workers' wall clock (FUNCTIONS_WALL_CLOCK_MS), ms. */
  wallClockMs?: number
  /** churn: SIGKILL a worker with requests in flight this often, ms (0: none). */
  killEveryMs?: number
  /** cost: markup_percent for the run (restored afterwards). */
  markupPercent?: number
}

/** What the churn soak did to the workers and how the holds they left were closed. */
export interface Churn {
  /** The stand-in's lifecycle counts (GET /_edge/lifecycle). */
  events: Record<string, number>
  /**
   * Workers this run SIGKILLed, and the requests they had in flight when they died (the stand-in's
   * "crashed" log lines).
   */
  sigkills: number
  inFlightKilled: number
  /** Holds settled by the reconcile from /generation (POST /internal/reconcile), credits. */
  reconciled: number
  reconciledCredits: number
  /** Reserved admissions released by release_reserved_admissions. */
  released: number
  /** Holds whose lease lapsed (their worker died), expired by the sweeper while the scheduler ran. */
  lapsed: number
  /** 10 s after the last answer: holds still open (with / without a generation id), credits. */
  openAfter10s: number
  openWithGenerationAfter10s: number
  heldAfter10s: number
  /** Holds the sweeper then expired (their leases brought forward). */
  swept: number
}

/** cost mode: the money, in exact decimal strings (USD). */
export interface CostFigures {
  markupPercent: number
  usdPerCredit: string
  requests: number
  upstreamSim: string
  upstreamRecorded: string
  markup: string
  rounding: string
  charged: string
  chargedCredits: number
  problems: string[]
}

export interface SoakResult {
  load: LoadReport
  books: Books
  minBalance: number
  minAvailable: number
  balanceSamples: number
  settleWaitMs: number
  /** grants + adjustments in the ledger = set-up + the run's grants. */
  grantsInLedger: number
  grantsExpected: number
  durationMs: number
  seed: number
  concurrency: number
  mode: SoakMode
  churn?: Churn
  cost?: CostFigures
}

const CRON_SECRET = `soak-${crypto.randomUUID()}`

interface Lifecycle {
  events: Record<string, number>
  workers: { pid: number; state: string; in_flight: number }[]
}

async function lifecycle(fn: Functions): Promise<Lifecycle> {
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  return await (await fetch(`${base}/_edge/lifecycle`)).json()
}

async function reconcile(fn: Functions, minAgeSeconds: number) {
  const res = await fetch(`${fn.url}/internal/reconcile`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CRON_SECRET}`, 'content-type': 'application/json' },
    body: JSON.stringify({ min_age_seconds: minAgeSeconds, limit: 500 }),
  })
  if (!res.ok) throw new Error(`reconcile: ${res.status} ${await res.text()}`)
  return await res.json() as { settled: number; credits_charged: number }
}

/** While `work` runs: every `everyMs`, SIGKILL a worker that has requests in flight. */
async function killing<T>(fn: Functions, everyMs: number, work: Promise<T>, churn: Churn) {
  let done = false
  const killer = (async () => {
    while (!done && everyMs > 0) {
      await sleep(everyMs)
      if (done) break
      const w = (await lifecycle(fn).catch(() => null))?.workers
        .find((w) => w.in_flight > 0 && (w.state === 'serving' || w.state === 'retired'))
      if (!w) continue
      try {
        Deno.kill(w.pid, 'SIGKILL')
        churn.sigkills++
      } catch {
        // Gone meanwhile.
      }
    }
  })()
  try {
    return await work
  } finally {
    done = true
    await killer
  }
}

/**
 * After the churn load, what the scheduler does (scripts/scheduler.ts): every 2 s the sweeper
 * (holds whose lease lapsed: their worker died) and the release of reserved admissions, and the
 * reconcile from /generation, for 10 s; then what is still open.
 */
async function afterChurn(fn: Functions, ids: number[], churn: Churn) {
  const until = Date.now() + 10_000
  while (Date.now() < until) {
    // Two statements, two transactions, as the scheduler runs them: in one, the sweeper's balance
    // locks would be held while the release takes counter rows (another lock order: a deadlock).
    const [{ e }] = await db()`select gateway.expire_stale_holds() as e`
    const [{ n }] = await db()`select gateway.release_reserved_admissions() as n`
    churn.lapsed += Number(e)
    churn.released += Number(n)
    // The scheduler's default age is longer than any request can live; the load is over, so any
    // hold older than the settles' lookups (GATEWAY_GENERATION_LOOKUP_DELAYS_MS, 3.1 s) is dead.
    const r = await reconcile(fn, 4)
    churn.reconciled += r.settled
    churn.reconciledCredits += r.credits_charged
    await sleep(Math.min(2_000, Math.max(0, until - Date.now())))
  }
  const [o] = await db()`
    select count(*)::int as open, count(generation_id)::int as with_gen,
           coalesce(sum(amount), 0)::bigint as held
      from gateway.holds where account_id = any(${ids}::bigint[])`
  churn.openAfter10s = o.open
  churn.openWithGenerationAfter10s = o.with_gen
  churn.heldAfter10s = Number(o.held)
  if (o.open > 0) {
    churn.swept = await sweepOpenHolds(ids)
    // An expired hold with a generation id is settled late by the next reconcile.
    const r = await reconcile(fn, 0)
    churn.reconciled += r.settled
    churn.reconciledCredits += r.credits_charged
  }
}

async function setting(name: string, value: string) {
  await db()`select gateway.set_setting(${name}, ${value})`
}

/** cost mode: upstream USD (the simulator's exact usage.cost), markup, rounding and charges. */
async function costFigures(
  ids: number[],
  sim: ReturnType<typeof startOwnSimulator>,
  markup: number,
) {
  const gens = sim.stats().generations ?? []
  const problems: string[] = []
  const [f] = await db()`
    with sim as (
      select g.id, g.cost::numeric as cost
        from unnest(${gens.map((g) => g.id)}::text[], ${
    gens.map((g) => g.cost ?? '0')
  }::text[]) as g(id, cost)
    ), billed as (
      select u.*, s.cost as sim_cost
        from gateway.usage_records u left join sim s on s.id = u.generation_id
       where u.account_id = any(${ids}::bigint[]) and u.status not in ('voided', 'expired')
    )
    select count(*)::int as n,
           coalesce(sum(sim_cost), 0)::text as upstream_sim,
           coalesce(sum(coalesce(upstream_usd, upstream_cost)), 0)::text as upstream_rec,
           coalesce(sum(coalesce(upstream_usd, upstream_cost) * ${markup}::numeric / 100), 0)::text
             as markup,
           coalesce(sum(credits_charged * usd_per_credit), 0)::text as charged,
           coalesce(sum(credits_charged), 0)::bigint as credits,
           coalesce(sum(credits_charged * usd_per_credit
                         - coalesce(upstream_usd, upstream_cost) * (100 + ${markup}::numeric) / 100),
                    0)::text as rounding,
           count(*) filter (where sim_cost is null)::int as without_sim,
           count(*) filter (where sim_cost is distinct from coalesce(upstream_usd, upstream_cost))::int
             as cost_mismatch,
           count(*) filter (where pricing_mode is distinct from 'cost')::int as not_cost,
           -- Each charge rounds up once: less than one credit above upstream × markup.
           count(*) filter (where credits_charged * usd_per_credit
                              - coalesce(upstream_usd, upstream_cost) * (100 + ${markup}::numeric) / 100
                              not between 0 and usd_per_credit - 0.000000000000000001)::int
             as off_by_more,
           max(usd_per_credit)::text as usd_per_credit
      from billed`
  if (f.without_sim) problems.push(`${f.without_sim} charged records match no generation`)
  if (f.cost_mismatch) {
    problems.push(
      `${f.cost_mismatch} records' upstream USD differs from the simulator's usage.cost`,
    )
  }
  if (f.not_cost) problems.push(`${f.not_cost} records were not priced in cost mode`)
  if (f.off_by_more) problems.push(`${f.off_by_more} charges are not ⌈upstream × markup⌉`)
  return {
    markupPercent: markup,
    usdPerCredit: f.usd_per_credit,
    requests: f.n,
    upstreamSim: f.upstream_sim,
    upstreamRecorded: f.upstream_rec,
    markup: f.markup,
    rounding: f.rounding,
    charged: f.charged,
    chargedCredits: Number(f.credits),
    problems,
  }
}

export async function soak(opts: SoakOptions): Promise<SoakResult> {
  const started = performance.now()
  const mode = opts.mode ?? 'standard'
  const sim = startOwnSimulator()
  const env: Record<string, string> = {
    // One log line per request is noise at this volume; the logs test looks at them.
    GATEWAY_LOG_REQUESTS: '0',
    GATEWAY_CRON_SECRET: CRON_SECRET,
  }
  if (mode === 'churn') {
    Object.assign(env, {
      // Retired at half (3 s), killed at 6 s; streams cut by the gateway at 4 s, so the ones a
      // worker takes just before it retires are killed with it and reconciled.
      FUNCTIONS_WALL_CLOCK_MS: String(opts.wallClockMs ?? 6_000),
      GATEWAY_STREAM_MAX_SECONDS: '4',
      FUNCTIONS_LOG_CPU: '0',
    })
  }
  let restore: [string, string][] = []
  if (mode === 'cost') {
    const [s] = await db()`select pricing_mode, markup_percent::text as markup
                             from gateway.system_settings where id`
    restore = [['pricing_mode', s.pricing_mode], ['markup_percent', s.markup]]
    await setting('pricing_mode', 'cost')
    await setting('markup_percent', String(opts.markupPercent ?? 25))
  }
  // churn: the stand-in's log says how many requests each killed worker had in flight.
  const fn = await startFunctions({ upstream: sim.baseUrl, env, captureLogs: mode === 'churn' })
  try {
    const pool = await newPool(opts.accounts, opts.keysPerAccount, opts.credits, `soak-${mode}`)
    const admin = await newAdmin()
    const ids = pool.map((a) => a.userId)
    const churn: Churn | undefined = mode === 'churn'
      ? {
        events: {},
        sigkills: 0,
        inFlightKilled: 0,
        reconciled: 0,
        reconciledCredits: 0,
        released: 0,
        lapsed: 0,
        openAfter10s: 0,
        openWithGenerationAfter10s: 0,
        heldAfter10s: 0,
        swept: 0,
      }
      : undefined
    const load = runLoad({
      gatewayUrl: fn.url,
      pool,
      requests: opts.requests,
      concurrency: opts.concurrency,
      seed: opts.seed ?? 20261125,
      // About what the requests spend: balances stay small, some requests find them empty.
      admin: { key: admin.key, every: 10, credits: opts.credits },
      mix: mode === 'churn' ? CHURN_MIX : undefined,
      planner: mode === 'hostile' ? planHostile : mode === 'cost' ? planCost : undefined,
      kills: mode === 'churn',
    })
    const watched = await watchBalances(
      ids,
      churn ? killing(fn, opts.killEveryMs ?? 4_000, load, churn) : load,
    )
    const waitStart = performance.now()
    if (churn) await afterChurn(fn, ids, churn)
    await waitSettled(ids)
    const settleWaitMs = Math.round(performance.now() - waitStart)
    if (churn) {
      churn.events = (await lifecycle(fn)).events
      for (const line of fn.logs()) {
        if (!line.includes('"event":"crashed"')) continue
        churn.inFlightKilled += Number(JSON.parse(line).in_flight ?? 0)
      }
    }
    const books = await checkBooks(ids, sim.stats())
    const [{ granted }] = await db()`
      select coalesce(sum(amount), 0)::bigint as granted from gateway.ledger
       where kind in ('grant', 'adjustment') and account_id = any(${ids}::bigint[])`
    const cost = mode === 'cost' ? await costFigures(ids, sim, opts.markupPercent ?? 25) : undefined
    return {
      load: watched.result,
      books,
      minBalance: watched.minBalance,
      minAvailable: watched.minAvailable,
      balanceSamples: watched.samples,
      settleWaitMs,
      grantsInLedger: Number(granted),
      grantsExpected: opts.accounts * opts.credits + watched.result.creditsGranted,
      durationMs: Math.round(performance.now() - started),
      seed: opts.seed ?? 20261125,
      concurrency: opts.concurrency,
      mode,
      churn,
      cost,
    }
  } finally {
    await fn.stop()
    await sim.close()
    for (const [name, value] of restore) await setting(name, value)
  }
}

/** Every broken invariant of a run, as readable problems (empty = nothing lost, nothing twice). */
export function soakProblems(r: SoakResult): string[] {
  const problems = [...r.load.problems, ...r.books.problems, ...(r.cost?.problems ?? [])]
  // Only a listed overrun may take a balance below zero (books.ts checks each against its allowance).
  if (r.minBalance < 0 && -r.minBalance > r.books.overrunCredits) {
    problems.push(`a balance went to ${r.minBalance} during the run`)
  }
  if (r.minAvailable < 0 && -r.minAvailable > r.books.overrunCredits) {
    problems.push(`available credits went to ${r.minAvailable}`)
  }
  if (r.grantsInLedger !== r.grantsExpected) {
    problems.push(`the ledger holds ${r.grantsInLedger} granted credits, ${r.grantsExpected} given`)
  }
  if (r.load.byStatus['500']) problems.push(`${r.load.byStatus['500']} answers were 500`)
  const c = r.churn
  if (c) {
    if (c.openWithGenerationAfter10s) {
      problems.push(
        `${c.openWithGenerationAfter10s} holds with a generation id open 10 s after the load`,
      )
    }
    // An answer cut short must be one a kill met: at most every request in flight (≤ concurrency)
    // per SIGKILL, a stream the stand-in cut when it killed a worker at its wall clock, or a
    // WORKER_LIMIT answer the stand-in gave, which includes requests it routed to a SIGKILLed worker
    // before it saw the process exit. (The stand-in's own count of a crashed worker's requests
    // misses those whose body broke first.)
    const bound = c.sigkills * r.concurrency + (c.events.streams_cut ?? 0) +
      (c.events.responses_worker_limit ?? 0)
    if (r.load.cutByKills > bound) {
      problems.push(
        `${r.load.cutByKills} answers cut short, but the kills met only ${bound} requests`,
      )
    }
  }
  return problems
}

export function soakLines(r: SoakResult): string[] {
  const lines = [
    `${r.mode} soak, seed ${r.seed}: ${loadLine(r.load)}`,
    booksLine(r.books),
    `balances sampled ${r.balanceSamples} times during the run: lowest ${r.minBalance}, lowest ` +
    `available ${r.minAvailable}; credits granted ${r.grantsInLedger} (expected ` +
    `${r.grantsExpected}); last hold closed ${r.settleWaitMs} ms after the last answer; ` +
    `${(r.durationMs / 1000).toFixed(1)} s in all`,
  ]
  const c = r.churn
  if (c) {
    const e = c.events
    lines.push(
      `churn: workers started ${e.started}, retired ${e.retired}, dropped early ${e.dropped_early}, ` +
        `killed at wall clock ${e.killed_wall_clock}, SIGKILLed ${c.sigkills} (crashed ${e.crashed}) ` +
        `with ${c.inFlightKilled} requests in flight; streams cut by the gateway ` +
        `${r.load.streamsCut}, by the stand-in ${e.streams_cut}; answers cut by kills ` +
        `${r.load.cutByKills}`,
      `churn: holds reconciled from /generation ${c.reconciled} (${c.reconciledCredits} credits), ` +
        `reserved admissions released ${c.released}, leases lapsed ${c.lapsed}; 10 s after the ` +
        `load ${c.openAfter10s} holds ` +
        `open (${c.openWithGenerationAfter10s} with a generation id), ${c.heldAfter10s} credits ` +
        `held; then swept ${c.swept}; expired uncharged ${r.books.expiredUncharged} (all without ` +
        `a generation id: ${r.books.problems.every((p) => !p.includes('expired uncharged with'))})`,
    )
  }
  const m = r.cost
  if (m) {
    lines.push(
      `cost: ${m.requests} charged requests at markup ${m.markupPercent}%, usd_per_credit ` +
        `${m.usdPerCredit}: upstream (simulator usage.cost) $${m.upstreamSim} = recorded ` +
        `$${m.upstreamRecorded}; + markup $${m.markup} + rounding up $${m.rounding} = charged ` +
        `$${m.charged} (${m.chargedCredits} credits)`,
    )
  }
  return lines
}

if (import.meta.main) {
  // --name value pairs (no JSR here, so no std/cli).
  const args: Record<string, string> = {}
  for (let i = 0; i < Deno.args.length; i += 2) {
    args[Deno.args[i].replace(/^--/, '')] = Deno.args[i + 1]
  }
  const mode = (args.mode ?? 'standard') as SoakMode
  if (!['standard', 'churn', 'hostile', 'cost'].includes(mode)) {
    throw new Error(`--mode standard|churn|hostile|cost, not ${mode}`)
  }
  const num = (v: string | undefined, d: number) => {
    const n = v === undefined ? d : Number(v)
    if (!Number.isInteger(n) || n < 1) throw new Error(`not a positive integer: ${v}`)
    return n
  }
  const opts: SoakOptions = {
    requests: num(args.requests, 10_000),
    concurrency: num(args.concurrency, 64),
    accounts: num(args.accounts, 20),
    keysPerAccount: num(args.keys, 10),
    credits: num(args.credits, 300),
    seed: num(args.seed, 20261125),
    mode,
    wallClockMs: num(args['wall-clock-ms'], 6_000),
    killEveryMs: num(args['kill-every-ms'], 4_000),
    markupPercent: num(args.markup, 25),
  }
  console.log(
    `soak (${mode}): ${opts.requests} chat requests, ${opts.concurrency} in flight, ${opts.accounts} ` +
      `accounts × ${opts.keysPerAccount} keys, ${opts.credits} credits each, seed ${opts.seed}`,
  )
  stopOnSignals()
  const result = await soak(opts)
  for (const line of soakLines(result)) console.log(line)
  const problems = soakProblems(result)
  // Overruns first come in hundreds on a build whose holds do not bound the prompt: a few, then
  // every other kind of problem.
  const overruns = problems.filter((p) => p.startsWith('overrun hold'))
  const others = problems.filter((p) => !p.startsWith('overrun hold'))
  for (const p of [...overruns.slice(0, 5), ...others.slice(0, 40)]) console.log(`PROBLEM: ${p}`)
  if (overruns.length > 5) console.log(`PROBLEM: … and ${overruns.length - 5} more overruns`)
  console.log(problems.length ? `FAILED: ${problems.length} problems` : 'OK: nothing lost')
  await db().end()
  Deno.exit(problems.length ? 1 : 0)
}
