// The local edge runtime (scripts/serve-functions.ts) holds its workers to the rules of Supabase's
// (supabase/edge-runtime, strategy_per_worker.rs): retired at half the wall clock, a new worker for
// new requests; dropped early once idle, where a plain timer keeps nothing alive and a waitUntil
// promise does; beforeunload before the end, and nothing its listeners start runs after an early
// drop; killed at the wall clock with its stream cut; killed over the memory limit; dropped when
// idle with its isolate at half the limit; CPU time logged per request; a 504 with no response; a
// response's body passed through as the function made it (its length kept, not re-chunked).
//
// Each test runs the stand-in on a free port over a probe function (fixtures/functions/probe) that
// logs what happened to the work it was given.

import assert from 'node:assert/strict'
import { type Functions, startFunctions } from '../lib/procs.ts'
import { sleep, waitFor } from '../lib/stack.ts'

const PROBES = new URL('./fixtures/functions/', import.meta.url).pathname

interface Runtime {
  fn: Functions
  base: string
  get(path: string): Promise<{ status: number; pid?: number }>
  events(): Promise<Record<string, number>>
  /** The probe's own log lines (JSON). */
  probe(): Record<string, unknown>[]
  /** The stand-in's lifecycle lines. */
  lifecycle(): Record<string, unknown>[]
}

async function runtime(env: Record<string, string>): Promise<Runtime> {
  const fn = await startFunctions({ captureLogs: true, env: { FUNCTIONS_DIR: PROBES, ...env } })
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  const lines = () =>
    fn.logs().flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>]
      } catch {
        return []
      }
    })
  return {
    fn,
    base,
    async get(path) {
      const res = await fetch(`${base}/functions/v1/probe/${path}`)
      const text = await res.text()
      try {
        return { status: res.status, ...JSON.parse(text) }
      } catch {
        return { status: res.status }
      }
    },
    async events() {
      return (await (await fetch(`${base}/_edge/lifecycle`)).json()).events
    },
    probe: () => lines().filter((l) => String(l.msg).startsWith('probe ')),
    lifecycle: () => lines().filter((l) => String(l.msg).startsWith('edge runtime: ')),
  }
}

const until = (rt: Runtime, what: string, event: string, n = 1, timeoutMs = 20_000) =>
  waitFor(`${what} (${event} >= ${n})`, async () => (await rt.events())[event] >= n, timeoutMs)

Deno.test({
  name: 'early drop: a timer does not keep an idle retired worker, a waitUntil promise does',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // Retired 2 s after it starts.
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '4000' })
    try {
      const first = await rt.get('timer?ms=3000&tag=timer')
      assert.equal(first.status, 200)
      await until(rt, 'the worker with only a timer pending to be dropped', 'dropped_early')
      // Past the moment the timer would have fired.
      await sleep(1_500)
      const mine = rt.probe().filter((l) => l.pid === first.pid)
      assert.deepEqual(
        mine.map((l) => [l.msg, l.reason ?? l.tag]),
        [['probe beforeunload', 'early_drop']],
        'the timer never fired; the beforeunload listener ran, what it started did not',
      )

      const second = await rt.get('wait?ms=3000&tag=waited')
      assert.notEqual(second.pid, first.pid, 'a dropped worker is replaced')
      await until(rt, 'the second worker to be retired', 'retired', 2)
      // Retired but kept by its waitUntil promise: a new request goes to a new worker.
      const third = await rt.get('timer?ms=10&tag=third')
      assert.equal(third.status, 200)
      assert.notEqual(third.pid, second.pid, 'a retired worker takes no new request')
      await until(
        rt,
        'the second worker to be dropped once its promise settled',
        'dropped_early',
        2,
      )
      const secondLog = rt.probe().filter((l) => l.pid === second.pid).map((l) => l.msg)
      assert.deepEqual(secondLog, ['probe waitUntil done', 'probe beforeunload'])
      const drops = rt.lifecycle().filter((l) => l.event === 'dropped_early')
      assert.equal(drops.length, 2)
    } finally {
      await rt.fn.stop()
    }
  },
})

Deno.test({
  name: 'wall clock: beforeunload near the end, then the worker is killed and its stream cut',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '3000' })
    try {
      const res = await fetch(`${rt.base}/functions/v1/probe/stream`)
      assert.equal(res.status, 200)
      const reader = res.body!.getReader()
      let chunks = 0
      const end = await (async () => {
        for (;;) {
          try {
            const { done } = await reader.read()
            if (done) return 'clean end'
            chunks++
          } catch (err) {
            return (err as Error).name
          }
        }
      })()
      assert.notEqual(end, 'clean end', 'the stream is cut, not ended')
      assert.ok(chunks > 0)
      const events = await rt.events()
      assert.equal(events.killed_wall_clock, 1)
      assert.equal(events.beforeunload_wall_clock, 1)
      assert.equal(events.streams_cut, 1)
      const unload = rt.probe().find((l) => l.msg === 'probe beforeunload')
      assert.equal(unload?.reason, 'wall_clock')
    } finally {
      await rt.fn.stop()
    }
  },
})

Deno.test({
  name: 'memory: a worker over the limit is killed; one at half the limit is dropped when idle',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '0', FUNCTIONS_MEMORY_LIMIT_MB: '256' })
    try {
      // Isolate memory (an ArrayBuffer is external memory) over half of 256 MB, resident memory
      // under 90% of it: no beforeunload, no kill, but dropped as soon as it is idle.
      const half = await rt.get('alloc?mb=140')
      assert.equal(half.status, 200)
      await until(rt, 'the worker at half its memory to be dropped', 'dropped_early')
      const events = await rt.events()
      assert.equal(events.killed_memory, 0)

      // Well over the limit, with the request still in flight (not dropped for being idle): killed.
      const over = await rt.get('alloc?mb=400&hold=30000')
      assert.equal(over.status, 546, 'the request is cut: WORKER_LIMIT')
      await until(rt, 'the worker over its memory limit to be killed', 'killed_memory')
      const after = await rt.get('timer?ms=1')
      assert.equal(after.status, 200, 'a new worker serves the next request')
      const killed = rt.lifecycle().find((l) => l.event === 'killed_memory')
      assert.ok(Number(killed?.rss_mib) > 256, JSON.stringify(killed))
    } finally {
      await rt.fn.stop()
    }
  },
})

Deno.test({
  name: 'CPU time per request is logged with the worker, shared between concurrent requests',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '0', FUNCTIONS_CPU_LIMIT_MS: '250' })
    try {
      assert.equal((await rt.get('spin?ms=300')).status, 200)
      const both = await Promise.all([
        rt.get('spin?ms=200&after=100'),
        rt.get('spin?ms=200&after=100'),
      ])
      assert.deepEqual(both.map((r) => r.status), [200, 200])
      await sleep(200)
      const lines = rt.fn.logs().map((l) => JSON.parse(l)).filter((l) => l.msg === 'worker request')
      assert.equal(lines.length, 3)
      for (const l of lines) assert.equal(typeof l.worker, 'number')
      assert.ok(lines[0].cpu_ms >= 300, JSON.stringify(lines[0]))
      assert.equal(lines[0].cpu_over_limit, true)
      // The pair spun 400 ms of CPU between them, whichever ran when.
      assert.ok(lines[1].cpu_ms + lines[2].cpu_ms >= 400, JSON.stringify(lines.slice(1)))
      assert.ok(lines[1].concurrency === 2 && lines[2].concurrency === 2)
    } finally {
      await rt.fn.stop()
    }
  },
})

Deno.test({
  name: 'no response headers within the response timeout: 504',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '0', FUNCTIONS_RESPONSE_TIMEOUT_MS: '500' })
    try {
      const res = await rt.get('hang')
      assert.equal(res.status, 504)
      assert.equal((await rt.events()).responses_504, 1)
    } finally {
      await rt.fn.stop()
    }
  },
})

Deno.test({
  name: 'a response passes through as the function made it: a sized body keeps its length',
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const rt = await runtime({ FUNCTIONS_WALL_CLOCK_MS: '0' })
    try {
      const res = await fetch(`${rt.base}/functions/v1/probe/timer?ms=0`)
      const body = new Uint8Array(await res.arrayBuffer())
      assert.equal(res.status, 200)
      // Not re-wrapped into a chunked stream on its way (by the worker or the supervisor).
      assert.equal(res.headers.get('content-length'), String(body.length))
      assert.equal(res.headers.get('transfer-encoding'), null)
      await sleep(200)
      const line = rt.fn.logs().map((l) => JSON.parse(l)).find((l) => l.msg === 'worker request')
      assert.equal(line?.outcome, 'complete', JSON.stringify(line))
      // Short requests one after the other, each alone in its worker: each has its own CPU, however
      // soon it ends after the reading at its start.
      for (let i = 0; i < 5; i++) assert.equal((await rt.get('timer?ms=0')).status, 200)
      await sleep(200)
      const lines = rt.fn.logs().map((l) => JSON.parse(l)).filter((l) => l.msg === 'worker request')
      assert.equal(lines.length, 6)
      for (const l of lines) assert.ok(l.cpu_ms > 0, JSON.stringify(lines))
    } finally {
      await rt.fn.stop()
    }
  },
})
