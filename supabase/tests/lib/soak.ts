// The concurrency run: many chat requests from many keys of accounts with small balances, mixed
// stream / non-stream, upstream faults, clients that hang up, credit grants meanwhile — then the
// books. The suite runs a light one (concurrency.test.ts); `bash scripts/soak.sh` the full one:
//
//   deno run -A --unstable-no-legacy-abort supabase/tests/lib/soak.ts \
//     [--requests 10000] [--concurrency 64] [--accounts 20] [--keys 10] [--credits 300] [--seed N]
//
// It runs its own simulator and functions server (free ports) against the shared Postgres, so the
// simulator's generations are exactly this run's, and prints what it tried and what it found.
// Exit status 1 when any invariant is broken or any answer was wrong.

import { newAdmin } from './accounts.ts'
import { type Books, booksLine, checkBooks, newPool, waitSettled, watchBalances } from './books.ts'
import { startFunctions, startOwnSimulator } from './procs.ts'
import { db } from './stack.ts'
import { loadLine, type LoadReport, runLoad } from './load.ts'

export interface SoakOptions {
  requests: number
  concurrency: number
  accounts: number
  keysPerAccount: number
  /** Starting balance of each account; grants top them up as the run goes. */
  credits: number
  seed?: number
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
}

export async function soak(opts: SoakOptions): Promise<SoakResult> {
  const started = performance.now()
  const sim = startOwnSimulator()
  // One log line per request is noise at this volume; the logs test looks at them.
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  try {
    const pool = await newPool(opts.accounts, opts.keysPerAccount, opts.credits, 'soak')
    const admin = await newAdmin()
    const ids = pool.map((a) => a.userId)
    const watched = await watchBalances(
      ids,
      runLoad({
        gatewayUrl: fn.url,
        pool,
        requests: opts.requests,
        concurrency: opts.concurrency,
        seed: opts.seed ?? 20261125,
        // About what the requests spend: balances stay small, some requests find them empty.
        admin: { key: admin.key, every: 10, credits: opts.credits },
      }),
    )
    const waitStart = performance.now()
    await waitSettled(ids)
    const settleWaitMs = Math.round(performance.now() - waitStart)
    const books = await checkBooks(ids, sim.stats())
    const [{ granted }] = await db()`
      select coalesce(sum(amount), 0)::bigint as granted from gateway.ledger
       where kind in ('grant', 'adjustment') and account_id = any(${ids}::bigint[])`
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
    }
  } finally {
    await fn.stop()
    await sim.close()
  }
}

/** Every broken invariant of a run, as readable problems (empty = nothing lost, nothing twice). */
export function soakProblems(r: SoakResult): string[] {
  const problems = [...r.load.problems, ...r.books.problems]
  if (r.minBalance < 0) problems.push(`a balance went to ${r.minBalance} during the run`)
  if (r.minAvailable < 0) problems.push(`available credits went to ${r.minAvailable}`)
  if (r.grantsInLedger !== r.grantsExpected) {
    problems.push(`the ledger holds ${r.grantsInLedger} granted credits, ${r.grantsExpected} given`)
  }
  if (r.load.byStatus['500']) problems.push(`${r.load.byStatus['500']} answers were 500`)
  return problems
}

export function soakLines(r: SoakResult): string[] {
  return [
    `seed ${r.seed}: ${loadLine(r.load)}`,
    booksLine(r.books),
    `balances sampled ${r.balanceSamples} times during the run: lowest ${r.minBalance}, lowest ` +
    `available ${r.minAvailable}; credits granted ${r.grantsInLedger} (expected ` +
    `${r.grantsExpected}); last hold closed ${r.settleWaitMs} ms after the last answer; ` +
    `${(r.durationMs / 1000).toFixed(1)} s in all`,
  ]
}

if (import.meta.main) {
  // --name value pairs (no JSR here, so no std/cli).
  const args: Record<string, string> = {}
  for (let i = 0; i < Deno.args.length; i += 2) {
    args[Deno.args[i].replace(/^--/, '')] = Deno.args[i + 1]
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
  }
  console.log(
    `soak: ${opts.requests} chat requests, ${opts.concurrency} in flight, ${opts.accounts} ` +
      `accounts × ${opts.keysPerAccount} keys, ${opts.credits} credits each, seed ${opts.seed}`,
  )
  const result = await soak(opts)
  for (const line of soakLines(result)) console.log(line)
  const problems = soakProblems(result)
  for (const p of problems.slice(0, 40)) console.log(`PROBLEM: ${p}`)
  console.log(problems.length ? `FAILED: ${problems.length} problems` : 'OK: nothing lost')
  await db().end()
  Deno.exit(problems.length ? 1 : 0)
}
