// The numbers a run produces, derived (added latency, ratio to Portkey) and printed as a table.

import type { Books } from '../supabase/tests/lib/books.ts'
import type { Statement } from './measure.ts'
import { SCENARIOS } from './scenarios.ts'
import type { WrkResult } from './wrk.ts'

export interface Cell {
  scenario: string
  letter: string
  concurrency: number
  /** `unavailable`: the gateway's chat route did not answer yet; `failed`: the cell broke. */
  status: 'ok' | 'unavailable' | 'failed'
  reason?: string
  seconds?: number
  /** measure.speedProbeMs() just before the measured window: how fast the machine was. */
  probe_ms?: number
  /** How many times the cell ran (more than once when the machine was busy elsewhere). */
  attempts?: number
  requests?: number
  rps?: number
  /** Socket errors plus non-2xx responses (refusals would mean the benchmark measures 4xx). */
  errors?: number
  latency_ms?: { p50: number; p90: number; p99: number; max: number }
  /** Latency above the upstream alone (the baseline scenario at the same concurrency). */
  added_ms?: { p50: number; p99: number }
  /** Requests per second over Portkey's at the same concurrency. */
  vs_portkey?: number
  /**
   * Peak resident memory (VmHWM) of each process during the measured window, MiB; `functions`: the
   * largest of the function's worker processes.
   */
  peak_rss_mib?: Record<string, number>
  /**
   * CPU time per completed request of each process, µs (`functions`: its worker processes summed;
   * postgres: the backends serving our gateway, through PgBouncer).
   */
  cpu_us_per_req?: Record<string, number>
  /** The function's worker processes at the end of the cell. */
  workers?: number
  /** Lifecycle events of the functions server during the cell (workers started, dropped, killed). */
  worker_events?: Record<string, number>
  /** CPU used by processes outside the benchmark during the cell, % of the machine: noise. */
  other_cpu_pct?: number
  /** Top-level SQL statements the gateway ran per completed request (pg_stat_statements). */
  sql_per_req?: number
  sql_top?: Statement[]
  /** WAL written per request (pg_stat_wal, whole server): bytes, records, flushes. */
  wal_per_req?: { bytes: number; records: number; syncs: number }
  books?: Books & { ok: boolean }
}

const ms = (us: number) => Math.round(us) / 1000

export function cellFromWrk(
  r: WrkResult,
): Pick<Cell, 'requests' | 'rps' | 'errors' | 'latency_ms'> {
  const e = r.errors
  return {
    requests: r.requests,
    rps: Math.round(r.requests / (r.duration_us / 1e6)),
    errors: e.connect + e.read + e.write + e.status + e.timeout,
    latency_ms: {
      p50: ms(r.latency_us.p50),
      p90: ms(r.latency_us.p90),
      p99: ms(r.latency_us.p99),
      max: ms(r.latency_us.max),
    },
  }
}

/** Fills added latency and the Portkey ratio, which need the other cells. */
export function derive(cells: Cell[]): void {
  const find = (id: string, c: number) =>
    cells.find((x) => x.scenario === id && x.concurrency === c && x.status === 'ok')
  for (const cell of cells) {
    if (cell.status !== 'ok') continue
    const scenario = SCENARIOS.find((s) => s.id === cell.scenario)!
    const base = scenario.baseline !== scenario.id
      ? find(scenario.baseline, cell.concurrency)
      : undefined
    if (base?.latency_ms && cell.latency_ms) {
      cell.added_ms = {
        p50: round3(cell.latency_ms.p50 - base.latency_ms.p50),
        p99: round3(cell.latency_ms.p99 - base.latency_ms.p99),
      }
    }
    const versus = scenario.versus ? find(scenario.versus, cell.concurrency) : undefined
    if (versus?.rps && cell.rps) cell.vs_portkey = Math.round((cell.rps / versus.rps) * 100) / 100
  }
}

const round3 = (n: number) => Math.round(n * 1000) / 1000

/** The proxy process of a scenario: the one whose memory and CPU the table shows. */
const PROXY: Record<string, string> = { sim: 'sim', portkey: 'portkey', gateway: 'functions' }

/** Marks a row whose third cell spans the rest of the line (a cell that did not run). */
const SPAN = '\u0000span'

export function table(cells: Cell[]): string {
  const head = [
    'scenario',
    'c',
    'req/s',
    'p50 ms',
    'p99 ms',
    '+p50',
    '+p99',
    '×Portkey',
    'RSS MiB',
    'CPU µs/req',
    'PG µs/req',
    'SQL/req',
    'other%',
    'probe',
    'err',
    'books',
  ]
  const rows = cells.map((c) => {
    const scenario = SCENARIOS.find((s) => s.id === c.scenario)!
    const proxy = PROXY[scenario.target]
    const name = `${c.letter} ${c.scenario}`
    if (c.status !== 'ok') {
      return [name, String(c.concurrency), `${c.status}: ${c.reason ?? ''}`, SPAN]
    }
    const f = (n: number | undefined, digits = 2) => (n === undefined ? '–' : n.toFixed(digits))
    return [
      name,
      String(c.concurrency),
      String(c.rps),
      f(c.latency_ms?.p50),
      f(c.latency_ms?.p99),
      f(c.added_ms?.p50),
      f(c.added_ms?.p99),
      c.vs_portkey === undefined ? '–' : `${c.vs_portkey.toFixed(2)}×`,
      f(c.peak_rss_mib?.[proxy], 0),
      f(c.cpu_us_per_req?.[proxy], 0),
      scenario.target === 'gateway' ? f(c.cpu_us_per_req?.postgres, 0) : '–',
      f(c.sql_per_req, 2),
      String(c.other_cpu_pct ?? '–'),
      f(c.probe_ms, 1),
      String(c.errors ?? 0),
      c.books ? (c.books.ok ? 'exact' : 'WRONG') : '–',
    ]
  })
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => (r.length > 2 ? r[i]?.length ?? 0 : 0)))
  )
  const line = (r: string[]) =>
    r.length > 2
      ? r.map((v, i) => (i < 1 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ')
      : `${r[0].padEnd(widths[0])}  ${r[1].padStart(widths[1])}  ${r[2]}`
  return [line(head), ...rows.map(line)].join('\n')
}
