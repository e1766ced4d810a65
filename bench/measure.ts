// CPU accounting of a cell: what each process of the benchmark used, per request, and how much of
// the machine something else used meanwhile (this is a shared 2-core box: other people's tests
// and benchmarks make a cell noisy, and the table says so instead of hiding it).

import { cpuMs, machineBusyMs, type Proc, reapedChildrenMs } from './procs.ts'

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

export function sampleCpu(procs: Proc[], backendPids: number[]): CpuSample {
  return {
    at: performance.now(),
    procs: Object.fromEntries(procs.map((p) => [p.name, cpuMs(p.pid)])),
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
