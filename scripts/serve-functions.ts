// Local stand-in for Supabase's edge runtime, with its worker lifecycle (scripts/stack.sh runs it).
//
// Each function in supabase/functions/* (not `_shared`) runs in WORKER PROCESSES
// (scripts/edge-worker.ts, one Deno process per worker, so each worker's memory is its own and
// measurable). This supervisor listens on 127.0.0.1:54321 and routes each new request for
// `/functions/v1/<name>/rest` to the current worker of <name> over loopback, which sees the path
// `/<name>/rest` exactly as on Supabase; bodies stream both ways (SSE is not buffered) and the
// client's address is appended to X-Forwarded-For. `EdgeRuntime.waitUntil` exists in the worker.
//
// The lifecycle is the one of supabase/edge-runtime's per-worker supervisor
// (crates/base/src/worker/supervisor/strategy_per_worker.rs), each limit an environment variable:
//
//   FUNCTIONS_WALL_CLOCK_MS                400000  a worker's wall clock (0: no limit). At half of it the
//                                                  worker is RETIRED: it takes no new request (a new
//                                                  worker does) and finishes what it has.
//   FUNCTIONS_BEFOREUNLOAD_WALL_CLOCK_PCT      90  `beforeunload` (reason wall_clock) at this share.
//                                                  At 100% the worker is KILLED, open streams cut.
//   FUNCTIONS_MEMORY_LIMIT_MB                 256  a worker's resident memory (RSS, polled from /proc;
//                                                  0: no limit). Over it the worker is KILLED. It is
//                                                  also the worker's V8 heap limit, as the edge
//                                                  runtime creates a user worker's isolate with
//                                                  heap_limits(0, memory limit): V8 sizes its young
//                                                  generation from it (a few MiB, not Deno's default
//                                                  48), which is most of a busy worker's memory.
//   FUNCTIONS_BEFOREUNLOAD_MEMORY_PCT          90  `beforeunload` (reason memory) at this share of it.
//   FUNCTIONS_RESPONSE_TIMEOUT_MS          150000  no response headers by then: 504.
//   FUNCTIONS_CPU_LIMIT_MS                   2000  CPU time per request: logged (flagged above it).
//   FUNCTIONS_LOG_CPU                           1  one log line per request with its CPU time.
//   FUNCTIONS_WORKER_DENO_ARGS                     extra `deno run` flags for workers (profiling).
//   FUNCTIONS_DIR                                  where the functions are (supabase/functions).
//
// EARLY DROP, as the edge runtime decides it (`can_early_drop`): a worker with a "resource alert"
// (retired at half its wall clock; or its isolate memory, heap + external, at half the limit) is
// dropped as soon as it has no request in flight and no unsettled `EdgeRuntime.waitUntil` promise —
// timers do not count. It gets `beforeunload` (reason early_drop) and is gone at once: async work
// its listeners start does not run.
//
// Lifecycle events (worker started, retired, dropped early, killed at wall clock, killed for memory,
// crashed, …) are logged (one JSON line each, msg "edge runtime: …") and counted; GET
// /_edge/lifecycle answers the counts and the workers (with their peak RSS).
//
// On SIGTERM/SIGINT it stops taking requests and asks every worker to terminate: a worker finishes
// its requests and its waitUntil promises, gets `beforeunload` (reason termination) and exits (or
// is killed at its wall clock). SIGKILL of this process takes its workers with it: they exit as
// soon as their stdin closes, with nothing pending run (a crash).

/**
 * Lines of a worker's stderr that are messages to this supervisor (edge-worker.ts writes them). A
 * worker's stdout is this process's own (inherited): its log lines, one or two per request, are not
 * read and re-printed here, which cost this process about as much CPU as a request's routing. Each
 * line is one write, so lines of several processes do not mix (into a pipe, up to 4 KiB a line).
 */
const CONTROL_PREFIX = '\u001eedge-worker '

// Spawning workers and reading their memory from /proc need every permission (Deno asks --allow-all
// for /proc); the workers themselves get what a function gets (net, env, read).
if (Deno.permissions.querySync({ name: 'run' }).state !== 'granted') {
  console.error('scripts/serve-functions.ts spawns worker processes: run it with `deno run -A`')
  Deno.exit(2)
}

function intEnv(name: string, fallback: number): number {
  const raw = Deno.env.get(name)
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0`)
  return n
}

const limits = {
  wallClockMs: intEnv('FUNCTIONS_WALL_CLOCK_MS', 400_000),
  beforeunloadWallClockPct: intEnv('FUNCTIONS_BEFOREUNLOAD_WALL_CLOCK_PCT', 90),
  memoryLimitMb: intEnv('FUNCTIONS_MEMORY_LIMIT_MB', 256),
  beforeunloadMemoryPct: intEnv('FUNCTIONS_BEFOREUNLOAD_MEMORY_PCT', 90),
  responseTimeoutMs: intEnv('FUNCTIONS_RESPONSE_TIMEOUT_MS', 150_000),
  cpuLimitMs: intEnv('FUNCTIONS_CPU_LIMIT_MS', 2_000),
}
const port = intEnv('FUNCTIONS_PORT', 54321)
const root = new URL(
  Deno.env.get('FUNCTIONS_DIR')
    ? `file://${Deno.realPathSync(Deno.env.get('FUNCTIONS_DIR')!)}/`
    : '../supabase/functions/',
  import.meta.url,
)
const workerScript = new URL('./edge-worker.ts', import.meta.url).pathname
const workerArgs = withHeapLimit(
  (Deno.env.get('FUNCTIONS_WORKER_DENO_ARGS') ?? '').split(/\s+/).filter(Boolean),
  limits.memoryLimitMb,
)

/**
 * `args` with the isolate's heap limited to the memory limit (`--max-heap-size`, what the edge
 * runtime's `heap_limits(0, memory_limit)` sets), merged into a `--v8-flags` the operator gave;
 * one of theirs that sets the heap or a generation's size wins.
 */
function withHeapLimit(args: string[], memoryLimitMb: number): string[] {
  if (memoryLimitMb <= 0) return args
  const i = args.findIndex((a) => a.startsWith('--v8-flags='))
  if (i < 0) return [...args, `--v8-flags=--max-heap-size=${memoryLimitMb}`]
  if (/--max-(heap|old-space|semi-space)-size/.test(args[i])) return args
  return args.map((a, j) => j === i ? `${a},--max-heap-size=${memoryLimitMb}` : a)
}
const MEMORY_POLL_MS = 200
/** How long a worker without a wall clock may take to finish its work when the stand-in stops. */
const TERMINATION_GRACE_MS = 60_000

// --- events -----------------------------------------------------------------------------------------
const EVENTS = [
  'started',
  'retired',
  'beforeunload_wall_clock',
  'beforeunload_memory',
  'dropped_early',
  'killed_wall_clock',
  'killed_memory',
  'terminated',
  'crashed',
  'start_failed',
  'streams_cut',
  'responses_504',
  'responses_worker_limit',
] as const
type EventName = typeof EVENTS[number]
const counts = Object.fromEntries(EVENTS.map((e) => [e, 0])) as Record<EventName, number>
let requests = 0
/** The highest resident memory any worker reached, bytes. */
let peakRss = 0

function log(msg: string, fields: Record<string, unknown> = {}, level = 'info'): void {
  const line = JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields })
  if (level === 'error') console.error(line)
  else console.log(line)
}

function event(name: EventName, w: Worker | null, fields: Record<string, unknown> = {}): void {
  counts[name]++
  log(`edge runtime: ${name.replaceAll('_', ' ')}`, {
    event: name,
    ...(w ? { function: w.fn, worker: w.id, pid: w.pid, age_ms: Math.round(w.age()) } : {}),
    ...fields,
  })
}

// --- workers ----------------------------------------------------------------------------------------
type State = 'starting' | 'serving' | 'retired' | 'terminating' | 'gone'

let nextId = 1

class Worker {
  readonly id = nextId++
  readonly startedAt = performance.now()
  readonly child: Deno.ChildProcess
  readonly pid: number
  readonly ready: Promise<void>
  readonly exited: Promise<Deno.CommandStatus>
  state: State = 'starting'
  client: Deno.HttpClient | undefined
  inFlight = 0
  served = 0
  /** As the worker last told: requests in flight there, waitUntil promises unsettled. */
  workerRequests = 0
  waiting = 0
  isolateBytes = 0
  heapBytes = 0
  externalBytes = 0
  rss = 0
  peakRss = 0
  /** Set when the supervisor ends the worker, so its exit is not mistaken for a crash. */
  ending: EventName | null = null
  #stdin: WritableStreamDefaultWriter<Uint8Array>
  #timers: ReturnType<typeof setTimeout>[] = []
  #poll: ReturnType<typeof setInterval> | undefined

  constructor(readonly fn: string) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: [
        'run',
        '--allow-net',
        '--allow-env',
        '--allow-read',
        '--unstable-no-legacy-abort',
        ...workerArgs,
        workerScript,
      ],
      env: {
        EDGE_WORKER_FUNCTION: fn,
        EDGE_WORKER_ID: String(this.id),
        EDGE_FUNCTIONS_ROOT: root.href,
        FUNCTIONS_CPU_LIMIT_MS: String(limits.cpuLimitMs),
      },
      stdin: 'piped',
      stdout: 'inherit',
      stderr: 'piped',
    }).spawn()
    this.pid = this.child.pid
    this.#stdin = this.child.stdin.getWriter()
    let onReady: () => void
    let onFail: (err: Error) => void
    this.ready = new Promise<void>((resolve, reject) => {
      onReady = resolve
      onFail = reject
    })
    this.ready.catch(() => {})
    pipeLines(this.child.stderr, (line) => {
      if (!line.startsWith(CONTROL_PREFIX)) return console.error(line)
      const m = JSON.parse(line.slice(CONTROL_PREFIX.length))
      if (m.t === 'ready') {
        this.client = Deno.createHttpClient({
          proxy: { transport: 'tcp', hostname: '127.0.0.1', port: m.port },
        })
        this.state = 'serving'
        onReady()
      } else if (m.t === 'pending') {
        this.workerRequests = m.requests
        this.waiting = m.waiting
        this.check()
      } else if (m.t === 'mem') {
        this.isolateBytes = m.isolate
        this.heapBytes = m.heap ?? 0
        this.externalBytes = m.external ?? 0
        this.check()
      } else if (m.t === 'exit') {
        this.served = m.served
      }
    })
    this.exited = this.child.status.then((status) => {
      const was = this.state
      this.state = 'gone'
      this.#clear()
      this.client?.close()
      if (current.get(this.fn) === this) current.delete(this.fn)
      if (was === 'starting') {
        onFail(new Error(`worker ${this.id} of ${this.fn} exited before serving`))
        event('start_failed', this, { code: status.code })
      } else if (this.ending === null) {
        event('crashed', this, {
          code: status.code,
          signal: status.signal,
          in_flight: this.inFlight,
        })
      } else if (this.ending === 'terminated') {
        event('terminated', this, { served: this.served })
      }
      return status
    })
    event('started', this)
    if (limits.wallClockMs > 0) {
      const w = limits.wallClockMs
      this.#at(w / 2, () => this.retire('wall_clock'))
      this.#at(w * limits.beforeunloadWallClockPct / 100, () => {
        this.send('beforeunload wall_clock')
        event('beforeunload_wall_clock', this, { in_flight: this.inFlight, waiting: this.waiting })
      })
      this.#at(w, () => this.kill('killed_wall_clock'))
    }
    if (limits.memoryLimitMb > 0) {
      this.#poll = setInterval(() => this.#pollMemory(), MEMORY_POLL_MS)
    }
  }

  age(): number {
    return performance.now() - this.startedAt
  }

  #at(ms: number, fn: () => void): void {
    this.#timers.push(setTimeout(fn, ms))
  }

  #clear(): void {
    for (const t of this.#timers) clearTimeout(t)
    clearInterval(this.#poll)
  }

  send(command: string): void {
    if (this.state === 'gone') return
    this.#stdin.write(new TextEncoder().encode(`${command}\n`)).catch(() => {})
  }

  /** No new requests from now on; what it has, it finishes. */
  retire(why: string, recheck = true): void {
    if (this.state !== 'serving' && this.state !== 'starting') return
    this.state = 'retired'
    if (current.get(this.fn) === this) current.delete(this.fn)
    event('retired', this, { why, in_flight: this.inFlight, waiting: this.waiting })
    if (recheck) this.check()
  }

  /** The edge runtime's resource alert: retired, or the isolate's memory at half the limit. */
  #alert(): boolean {
    return this.state === 'retired' ||
      (limits.memoryLimitMb > 0 && this.isolateBytes >= limits.memoryLimitMb * 1024 * 1024 / 2)
  }

  /**
   * Early drop: a resource alert, no request in flight (neither on its way here nor in the worker)
   * and no unsettled waitUntil promise.
   */
  check(): void {
    if (this.ending !== null || (this.state !== 'serving' && this.state !== 'retired')) return
    if (!this.#alert() || this.inFlight > 0 || this.workerRequests > 0 || this.waiting > 0) return
    this.ending = 'dropped_early'
    if (this.state === 'serving') this.retire('memory', false)
    event('dropped_early', this)
    this.send('drop')
    // The worker exits as soon as its listeners return; a stuck one is killed.
    setTimeout(() => this.state !== 'gone' && this.child.kill('SIGKILL'), 2_000)
  }

  kill(why: 'killed_wall_clock' | 'killed_memory'): void {
    if (this.state === 'gone' || (this.ending !== null && this.ending !== 'terminated')) return
    this.ending = why
    if (current.get(this.fn) === this) current.delete(this.fn)
    event(why, this, {
      in_flight: this.inFlight,
      waiting: this.waiting,
      rss_mib: mib(this.rss),
    })
    if (this.inFlight > 0) counts.streams_cut += this.inFlight
    this.child.kill('SIGKILL')
  }

  #memoryWarned = false

  async #pollMemory(): Promise<void> {
    if (this.state === 'gone') return
    const rss = await rssOf(this.pid)
    if (rss === null) return
    this.rss = rss
    this.peakRss = Math.max(this.peakRss, rss)
    peakRss = Math.max(peakRss, rss)
    const limit = limits.memoryLimitMb * 1024 * 1024
    if (rss > limit) return this.kill('killed_memory')
    if (!this.#memoryWarned && rss >= limit * limits.beforeunloadMemoryPct / 100) {
      this.#memoryWarned = true
      this.send('beforeunload memory')
      event('beforeunload_memory', this, { rss_mib: mib(rss) })
      this.retire('memory')
    }
  }

  terminate(): void {
    if (this.state === 'gone') return
    this.state = 'terminating'
    this.ending = 'terminated'
    if (current.get(this.fn) === this) current.delete(this.fn)
    this.send('terminate')
    // Its wall clock ends it anyway; without one, a request that never ends would keep it forever.
    if (limits.wallClockMs === 0) this.#at(TERMINATION_GRACE_MS, () => this.child.kill('SIGKILL'))
  }

  describe() {
    return {
      id: this.id,
      function: this.fn,
      pid: this.pid,
      state: this.state,
      age_ms: Math.round(this.age()),
      in_flight: this.inFlight,
      waiting: this.waiting,
      rss_mib: mib(this.rss),
      peak_rss_mib: mib(this.peakRss),
      isolate_mib: mib(this.isolateBytes),
      heap_mib: mib(this.heapBytes),
      external_mib: mib(this.externalBytes),
    }
  }
}

const mib = (bytes: number) => Math.round(bytes / 1024 / 1024 * 10) / 10

async function rssOf(pid: number): Promise<number | null> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`)
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]
    return kb ? Number(kb) * 1024 : null
  } catch {
    return null
  }
}

async function pipeLines(stream: ReadableStream<Uint8Array>, each: (line: string) => void) {
  let rest = ''
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + text).split('\n')
    rest = lines.pop()!
    for (const line of lines) each(line)
  }
  if (rest) each(rest)
}

const workers = new Set<Worker>()
/** The worker of each function that takes new requests. */
const current = new Map<string, Worker>()
/** A function whose worker failed to start is not retried for a moment (no spawn storm). */
const failedUntil = new Map<string, number>()
let stopping = false

function spawn(fn: string): Worker {
  const w = new Worker(fn)
  workers.add(w)
  w.exited.then(() => workers.delete(w))
  current.set(fn, w)
  return w
}

async function workerFor(fn: string): Promise<Worker> {
  for (let attempt = 0; attempt < 3; attempt++) {
    let w = current.get(fn)
    if (!w || w.state === 'gone' || w.state === 'retired' || w.state === 'terminating') {
      if ((failedUntil.get(fn) ?? 0) > performance.now()) throw new Error('start failed recently')
      w = spawn(fn)
    }
    try {
      await w.ready
    } catch (err) {
      failedUntil.set(fn, performance.now() + 1_000)
      throw err
    }
    // Retired or gone while it started: the next one takes the request.
    if (w.state === 'serving') return w
  }
  throw new Error('no worker could take the request')
}

async function functionNames(): Promise<string[]> {
  const names: string[] = []
  for await (const entry of Deno.readDir(root)) {
    if (!entry.isDirectory || entry.name.startsWith('_') || entry.name.startsWith('.')) continue
    const ok = await Deno.stat(new URL(`${entry.name}/index.ts`, root)).then(
      () => true,
      () => false,
    )
    if (ok) names.push(entry.name)
  }
  return names.sort()
}

const names = new Set(await functionNames())

// --- requests ---------------------------------------------------------------------------------------
function errorResponse(status: number, message: string, code: string): Response {
  return Response.json({ error: { message, type: 'invalid_request_error', code } }, { status })
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
])

/** `url`: the request's, parsed once by the caller; `rest`: its path after the function's name. */
async function dispatch(
  fn: string,
  rest: string,
  url: URL,
  req: Request,
  info: Deno.ServeHandlerInfo,
): Promise<Response> {
  if (stopping) return errorResponse(503, 'The functions server is shutting down', 'shutting_down')
  let w: Worker
  try {
    w = await workerFor(fn)
  } catch {
    return errorResponse(503, `The function ${fn} could not start (see the log)`, 'boot_error')
  }
  requests++
  w.inFlight++
  let done = false
  const finished = () => {
    if (done) return
    done = true
    w.inFlight--
    w.check()
  }

  url.pathname = `/${fn}${rest}`
  // One pass over the client's headers into a list fetch() takes as it is (a Headers copy, then
  // deletes and sets on it, then fetch's own copy of it, cost two passes and a dozen scans).
  const headers: [string, string][] = []
  let forwarded: string | null = null
  let acceptEncoding: string | null = null
  for (const [name, value] of req.headers) {
    if (HOP_BY_HOP.has(name) || name === 'x-edge-accept-encoding') continue
    if (name === 'x-forwarded-for') forwarded = value
    else if (name === 'accept-encoding') acceptEncoding = value
    else headers.push([name, value])
  }
  const remote = (info.remoteAddr as Deno.NetAddr).hostname
  headers.push(['x-forwarded-for', forwarded ? `${forwarded}, ${remote}` : remote])
  // fetch() would decompress a gzip body and keep its content-encoding: the worker gets the
  // client's accept-encoding under another name (edge-worker.ts restores it), and bytes pass as is.
  if (acceptEncoding !== null) headers.push(['x-edge-accept-encoding', acceptEncoding])
  headers.push(['accept-encoding', 'identity'])

  const abort = new AbortController()
  const onClientGone = () => abort.abort(req.signal.reason)
  req.signal.addEventListener('abort', onClientGone, { once: true })
  let timedOut = false
  const timer = limits.responseTimeoutMs > 0
    ? setTimeout(() => {
      timedOut = true
      abort.abort(new DOMException('no response in time', 'TimeoutError'))
    }, limits.responseTimeoutMs)
    : undefined

  let res: Response
  try {
    const init: RequestInit & { client?: Deno.HttpClient; duplex: 'half' } = {
      method: req.method,
      headers,
      body: req.body,
      signal: abort.signal,
      client: w.client,
      redirect: 'manual',
      // Deno needs this to forward a streaming request body.
      duplex: 'half',
    }
    res = await fetch(url, init)
  } catch {
    clearTimeout(timer)
    req.signal.removeEventListener('abort', onClientGone)
    finished()
    if (timedOut) {
      counts.responses_504++
      return errorResponse(504, 'The function did not answer in time', 'gateway_timeout')
    }
    // The worker was killed (or crashed) before it answered: Supabase's WORKER_LIMIT. Counted, as a
    // crash is seen only when the process's exit is: requests routed to it until then end here too.
    counts.responses_worker_limit++
    return Response.json({
      code: 'WORKER_LIMIT',
      message: 'Function failed due to not having enough compute resources (please check logs)',
    }, { status: w.ending === 'killed_wall_clock' || w.ending === 'killed_memory' ? 546 : 502 })
  }
  clearTimeout(timer)

  const out: [string, string][] = []
  for (const header of res.headers) if (!HOP_BY_HOP.has(header[0])) out.push(header)
  // The worker's body goes to the client as it is (Deno copies a fetch body into the response
  // natively, no JS per chunk, and keeps its length). The request is over when Deno has sent it
  // all, or stopped: the client left (the worker's connection is closed, so it sees that too), or
  // the worker went away mid-body (killed at its wall clock: the client's stream is cut).
  const over = () => {
    req.signal.removeEventListener('abort', onClientGone)
    finished()
  }
  info.completed.then(over, over)
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers: out })
}

function lifecycle(): Response {
  return Response.json({
    limits: {
      wall_clock_ms: limits.wallClockMs,
      beforeunload_wall_clock_pct: limits.beforeunloadWallClockPct,
      memory_limit_mb: limits.memoryLimitMb,
      beforeunload_memory_pct: limits.beforeunloadMemoryPct,
      response_timeout_ms: limits.responseTimeoutMs,
      cpu_limit_ms: limits.cpuLimitMs,
    },
    requests,
    events: counts,
    peak_worker_rss_mib: mib(peakRss),
    workers: [...workers].map((w) => w.describe()),
  })
}

const server = Deno.serve({
  hostname: '127.0.0.1',
  port,
  onListen: () =>
    log(`functions: ${[...names].join(', ')} on http://127.0.0.1:${port}/functions/v1/`, {
      limits,
    }),
}, (req, info) => {
  const url = new URL(req.url)
  if (url.pathname === '/_edge/lifecycle') return lifecycle()
  const match = /^\/functions\/v1\/([^/]+)(\/.*)?$/.exec(url.pathname)
  if (!match) {
    return errorResponse(
      404,
      'Not found: functions are served under /functions/v1/<name>/',
      'not_found',
    )
  }
  if (!names.has(match[1])) {
    return errorResponse(404, `Function not found: ${match[1]}`, 'not_found')
  }
  return dispatch(match[1], match[2] ?? '', url, req, info)
})

async function shutdown() {
  if (stopping) return
  stopping = true
  const all = [...workers]
  for (const w of all) w.terminate()
  await Promise.allSettled(all.map((w) => w.exited))
  await server.shutdown()
  log('edge runtime: stopped', { requests, events: counts })
  Deno.exit(0)
}
Deno.addSignalListener('SIGTERM', shutdown)
Deno.addSignalListener('SIGINT', shutdown)
