// What a cell costs, measured: each process's CPU per request and peak memory (from /proc), how much
// of the machine something else used meanwhile (this is a shared 2-core box: other people's tests
// and benchmarks make a cell noisy, and the table says so instead of hiding it), and what the
// database did for our gateway (pg_stat_statements, WAL). The processes themselves are started by
// supabase/tests/lib/procs.ts, the books checked by supabase/tests/lib/books.ts.

import postgres from 'postgres'
import { loadAccount } from '../supabase/tests/lib/books.ts'
import { FUNCTION_DB_URL } from '../supabase/tests/lib/stack.ts'
import { MODEL } from './scenarios.ts'

/**
 * Something whose CPU and memory a cell measures: one process (the simulator, Portkey, PgBouncer,
 * the functions supervisor) or a group of them (the function's worker processes).
 */
export interface Measured {
  name: string
  /** CPU time (user + system) in ms, cumulative; processes that exited count too. */
  cpuMs(): number
  /** Peak resident memory since the last resetPeak, KiB: of a group, its largest process. */
  peakKiB(): number | null
  resetPeak(): void
  /** How many processes it is now (a group's workers come and go). */
  count(): number
}

export function processOf(name: string, pid: number): Measured {
  return {
    name,
    cpuMs: () => cpuMs(pid),
    peakKiB: () => peakRssKiB(pid),
    resetPeak: () => resetPeak(pid),
    count: () => (peakRssKiB(pid) === null ? 0 : 1),
  }
}

/**
 * The worker processes of the functions supervisor (scripts/serve-functions.ts spawns one Deno
 * process per worker): CPU summed over them, including workers that exited (the supervisor reaps
 * them: its cutime/cstime), and the peak of the largest, since the memory limit is per worker.
 */
export function workersOf(name: string, supervisorPid: number): Measured & { sample(): void } {
  const pids = () => childPids(supervisorPid)
  // A worker may be replaced during a cell (retired, dropped early, killed): its peak is kept from
  // the samples taken while it lived.
  const peaks = new Map<number, number>()
  const sample = () => {
    for (const pid of pids()) {
      const kib = peakRssKiB(pid)
      if (kib !== null) peaks.set(pid, Math.max(peaks.get(pid) ?? 0, kib))
    }
  }
  return {
    name,
    cpuMs: () =>
      pids().reduce((sum, pid) => sum + cpuMs(pid), 0) +
      cpuMs(supervisorPid, true) - cpuMs(supervisorPid),
    peakKiB: () => {
      sample()
      return peaks.size ? Math.max(...peaks.values()) : null
    },
    resetPeak: () => {
      pids().forEach(resetPeak)
      peaks.clear()
    },
    count: () => pids().length,
    sample,
  }
}

export interface CpuSample {
  at: number
  procs: Record<string, number>
  /** Postgres backends serving our functions server, by pid. */
  backends: Map<number, number>
  /** wrk runs that have ended (waited-for children of this process). */
  wrk: number
  self: number
  machine: number
}

export function sampleCpu(measured: Measured[], backendPids: number[]): CpuSample {
  return {
    at: performance.now(),
    procs: Object.fromEntries(measured.map((m) => [m.name, m.cpuMs()])),
    backends: new Map(backendPids.map((pid) => [pid, cpuMs(pid)])),
    wrk: reapedChildrenMs(),
    self: cpuMs(Deno.pid),
    machine: machineBusyMs(),
  }
}

export interface CpuUse {
  /** µs of CPU per completed request: each process, `postgres` (our backends) and `wrk`. */
  perRequest: Record<string, number>
  /** Share of the machine's capacity used by anything else during the cell, %. */
  otherPercent: number
}

export function cpuUse(before: CpuSample, after: CpuSample, requests: number): CpuUse {
  const n = Math.max(1, requests)
  const used: Record<string, number> = {}
  for (const name of Object.keys(before.procs)) used[name] = after.procs[name] - before.procs[name]
  // A backend that appeared during the cell (a new pooled connection) counts from zero.
  let pg = 0
  for (const [pid, ms] of after.backends) pg += ms - (before.backends.get(pid) ?? 0)
  if (after.backends.size) used.postgres = pg
  used.wrk = after.wrk - before.wrk
  const ours = Object.values(used).reduce((a, b) => a + b, 0) + (after.self - before.self)
  const capacity = (after.at - before.at) * navigator.hardwareConcurrency
  const other = Math.max(0, after.machine - before.machine - ours)
  return {
    perRequest: Object.fromEntries(
      Object.entries(used).map(([k, ms]) => [k, Math.round((ms * 1000) / n)]),
    ),
    otherPercent: Math.round((other / capacity) * 100),
  }
}

const SAMPLE = {
  id: 'gen-1795611546-315f3aa6377b00000000',
  choices: [{ index: 0, message: { role: 'assistant', content: 'lorem ipsum dolor sit ' } }],
  usage: { prompt_tokens: 8, completion_tokens: 4, total_tokens: 12, cost: 0.0000036 },
}

/**
 * How fast the machine runs right now: the best of three runs of a fixed task (JSON round trips),
 * in ms. This VM's speed drifts (the same code, a minute apart, has measured 1.7× slower with no
 * other process busy), so comparing runs means comparing their probes too.
 */
export function speedProbeMs(): number {
  let best = Infinity
  let sink = 0
  for (let run = 0; run < 3; run++) {
    const t = performance.now()
    for (let i = 0; i < 5_000; i++) sink += JSON.parse(JSON.stringify(SAMPLE)).usage.total_tokens
    best = Math.min(best, performance.now() - t)
  }
  if (sink < 0) console.log(sink) // keeps the work observable
  return Math.round(best * 100) / 100
}

// ---- /proc ---------------------------------------------------------------------------------

/** Peak resident set size in KiB since start or the last resetPeak (VmHWM), or null if gone. */
export function peakRssKiB(pid: number): number | null {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`)
    const m = /^VmHWM:\s+(\d+) kB/m.exec(status)
    return m ? Number(m[1]) : null
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null
    throw err
  }
}

/** Resets VmHWM to the current RSS (`echo 5 > clear_refs`, Linux ≥ 4.0), so a peak is per cell. */
export function resetPeak(pid: number): void {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, '5')
  } catch {
    // Not permitted or gone: the peak then covers the process's whole life, still an upper bound.
  }
}

const TICKS_PER_SECOND = 100 // USER_HZ, fixed at 100 on Linux x86-64

/**
 * CPU time (user + system) in ms of `pid`, or 0 if it is gone; with `reaped`, plus that of its
 * children that exited and were waited for (Postgres backends that closed during a cell).
 */
export function cpuMs(pid: number, reaped = false): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`)
    // Fields after the command name (which may contain spaces): utime, stime, cutime, cstime are
    // fields 14-17 of proc(5), i.e. 11-14 counted from the state field.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number)
    const ticks = f[11] + f[12] + (reaped ? f[13] + f[14] : 0)
    return ticks * 1000 / TICKS_PER_SECOND
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return 0
    throw err
  }
}

/** Busy CPU time of the whole machine in ms (all cores; /proc/stat minus idle and iowait). */
export function machineBusyMs(): number {
  const [, user, nice, system, , , irq, softirq, steal] = Deno.readTextFileSync('/proc/stat')
    .split('\n')[0].trim().split(/\s+/).map(Number)
  return ((user + nice + system + irq + softirq + steal) * 1000) / TICKS_PER_SECOND
}

/** CPU time of this process's exited, waited-for children (each wrk run, once it has ended). */
export function reapedChildrenMs(): number {
  return cpuMs(Deno.pid, true) - cpuMs(Deno.pid)
}

/** The children of `pid` (/proc/<pid>/task/<tid>/children), or none if it is gone. */
export function childPids(pid: number): number[] {
  const out: number[] = []
  try {
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const text = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/children`).trim()
        if (text) out.push(...text.split(/\s+/).map(Number))
      } catch {
        // The thread ended while we looked.
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err
  }
  return out
}

function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>()
  for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`))
      if (m) inodes.add(m[1])
    } catch {
      // Closed while we looked.
    }
  }
  return inodes
}

/**
 * The process named `comm` that listens on 127.0.0.1:`port` in this network namespace (each
 * engineer's stack runs in its own, with the same ports), or null. Finds the local PgBouncer.
 */
export function listenerPid(port: number, comm: string): number | null {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`
  const listening = new Set<string>()
  for (const line of Deno.readTextFileSync('/proc/net/tcp').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    // st 0A = LISTEN
    if (f.length > 9 && f[1].endsWith(hex) && f[3] === '0A') listening.add(f[9])
  }
  if (!listening.size) return null
  for (const entry of Deno.readDirSync('/proc')) {
    const pid = Number(entry.name)
    if (!Number.isInteger(pid)) continue
    try {
      if (Deno.readTextFileSync(`/proc/${pid}/comm`).trim() !== comm) continue
      for (const inode of socketInodes(pid)) if (listening.has(inode)) return pid
    } catch {
      // Gone, or not ours to read.
    }
  }
  return null
}

/**
 * Local ports of `pid`'s established TCP connections to `remotePort` on loopback: with
 * pg_stat_activity.client_port they name the Postgres backends serving that process, so the
 * database's CPU is counted for our gateway only (not for the shared stack or anyone's tests).
 */
export function connectionPorts(pid: number, remotePort: number): number[] {
  const inodes = socketInodes(pid)
  const ports: number[] = []
  const remote = `:${remotePort.toString(16).toUpperCase().padStart(4, '0')}`
  for (const line of Deno.readTextFileSync('/proc/net/tcp').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    // local_address rem_address st … inode; st 01 = ESTABLISHED
    if (f.length > 9 && f[2].endsWith(remote) && f[3] === '01' && inodes.has(f[9])) {
      ports.push(parseInt(f[1].split(':')[1], 16))
    }
  }
  return ports
}

// ---- the database, as the operator sees it ----------------------------------------------------

export interface Statement {
  query: string
  calls: number
  mean_ms: number
  total_ms: number
}

export interface Wal {
  bytes: number
  syncs: number
  records: number
}

export async function resetStatements(sql: postgres.Sql): Promise<void> {
  await sql`select extensions.pg_stat_statements_reset()`
}

/** Top-level statements the gateway (role gateway_api) ran since the reset, and the top few. */
export async function statements(sql: postgres.Sql): Promise<{ calls: number; top: Statement[] }> {
  const rows = await sql<{ query: string; calls: string; mean: number; total: number }[]>`
    select query, calls, mean_exec_time as mean, total_exec_time as total
      from extensions.pg_stat_statements
     where userid = 'gateway_api'::regrole
       and dbid = (select oid from pg_database where datname = current_database())
     order by total_exec_time desc`
  return {
    calls: rows.reduce((s, r) => s + Number(r.calls), 0),
    top: rows.slice(0, 4).map((r) => ({
      query: r.query.replace(/\s+/g, ' ').slice(0, 100),
      calls: Number(r.calls),
      mean_ms: Math.round(r.mean * 1000) / 1000,
      total_ms: Math.round(r.total),
    })),
  }
}

/**
 * The server's WAL counters (pg_stat_wal; the whole server, so others' work adds noise): bytes
 * and flushes are what a hosted disk's throughput and IOPS budgets are spent on.
 */
export async function wal(sql: postgres.Sql): Promise<Wal> {
  const [w] = await sql<{ bytes: string; syncs: string; records: string }[]>`
    select wal_bytes as bytes, wal_sync as syncs, wal_records as records from pg_stat_wal`
  return { bytes: Number(w.bytes), syncs: Number(w.syncs), records: Number(w.records) }
}

/** The backends serving the connections from these client ports (see connectionPorts). */
export async function backendPids(sql: postgres.Sql, clientPorts: number[]): Promise<number[]> {
  if (!clientPorts.length) return []
  const rows = await sql<{ pid: number }[]>`
    select pid from pg_stat_activity
     where client_addr = '127.0.0.1' and client_port = any(${clientPorts})`
  return rows.map((r) => r.pid)
}

/**
 * The function's own way into the database of `dbUrl` (the operator's URL of the benchmark's
 * database): the pooler as gateway_api (FUNCTION_DB_URL), that database. PgBouncer's `*` entry
 * serves any database of the cluster under its own name.
 */
export function functionDbUrl(dbUrl: string): string {
  const url = new URL(FUNCTION_DB_URL)
  url.pathname = new URL(dbUrl).pathname
  return url.href
}

export interface RoundTrips {
  calls: number
  /** Median round trip from this client, ms: `select 1`, then each call committed on its own. */
  select1_ms: number
  begin_ms: number
  settle_ms: number
}

/**
 * What the database adds to one request's latency at concurrency 1: median round trips of the two
 * calls as the gateway makes them: through the pooler `apiUrl` (the function's GATEWAY_DB_URL,
 * PgBouncer in transaction mode, logged in as gateway_api), unprepared, one query at a time per
 * connection (db.ts), each call its own transaction, so each waits for its WAL flush. `adminUrl`
 * (postgres, direct) makes an account of its own, which stays (like the run's accounts).
 */
export async function roundTrips(
  adminUrl: string,
  apiUrl: string,
  calls = 500,
): Promise<RoundTrips> {
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} })
  const api = postgres(apiUrl, {
    max: 1,
    prepare: false,
    fetch_types: false,
    ...({ max_pipeline: 0 } as object),
    connection: { application_name: 'bench-round-trips' },
  })
  try {
    const account = await loadAccount(`rtt-${Date.now()}@bench.invalid`, 1e12, {
      environment: 'live',
      sql: admin,
    })
    const hash = (await admin`select gateway.hash_key(${account.key}) as h`)[0].h
    const times = { select1: [] as number[], begin: [] as number[], settle: [] as number[] }
    for (let i = 0; i < calls; i++) {
      let t = performance.now()
      await api.unsafe('select 1')
      times.select1.push(performance.now() - t)
      t = performance.now()
      const [{ h }] = await api.unsafe(
        'select gateway.begin_request($1, $2, $3, $4) as h',
        [hash, '127.0.0.1', null, { models: [MODEL], prompt_bound: 9, max_tokens: 8 }],
      )
      times.begin.push(performance.now() - t)
      t = performance.now()
      await api.unsafe(
        'select gateway.settle_request($1, $2)',
        [h.hold_id, {
          model: 'openai/gpt-4o-mini',
          prompt_tokens: 9,
          completion_tokens: 4,
          cost: '0.0000036',
          status: 'completed',
          latency_ms: 2,
          generation_id: `gen-rtt-${i}`,
          settled_by: 'usage',
        }],
      )
      times.settle.push(performance.now() - t)
    }
    const median = (xs: number[]) =>
      Math.round(xs.sort((a, b) => a - b)[xs.length >> 1] * 1000) / 1000
    return {
      calls,
      select1_ms: median(times.select1),
      begin_ms: median(times.begin),
      settle_ms: median(times.settle),
    }
  } finally {
    await api.end({ timeout: 5 })
    await admin.end({ timeout: 5 })
  }
}
