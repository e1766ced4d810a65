// One worker of the local edge runtime (scripts/serve-functions.ts starts it): a Deno process that
// runs ONE function module, as a worker of Supabase's edge runtime does, and serves it over loopback
// to the supervisor only. What the function sees is what it sees on Supabase:
//
// - `EdgeRuntime.waitUntil(promise)`: the promise is counted until it settles. The supervisor is told
//   whenever this worker goes from idle to pending or back (requests in flight here, waitUntil
//   promises unsettled), because an idle worker may be dropped early; plain timers (setTimeout) keep
//   nothing alive. A request is in flight until its response body ended or was cancelled here.
// - `beforeunload` (a CustomEvent whose `detail.reason` is `wall_clock`, `memory`, `early_drop` or
//   `termination`, the edge runtime's WillTerminateReason names) is dispatched when the supervisor
//   says so. On an early drop the process exits right after the listeners return: async work they
//   start does not finish, exactly as on Supabase.
//
// Control: the supervisor writes one command per line on stdin; this process answers with lines on
// stderr that start with CONTROL_PREFIX (everything else on stderr is the function's log, which the
// supervisor passes on). stdout is the supervisor's own (inherited): the function's log lines and
// this worker's per-request lines go straight to the log, not through the supervisor. If stdin
// closes, the supervisor is gone: the worker exits at once, like a crashed instance.
//
// CPU time per request is measured with process.cpuUsage() (getrusage: user + system of the whole
// process, so V8's GC threads are included). With concurrent requests, the CPU consumed between two
// request events (a start or an end) is split evenly between the requests in flight during it; CPU
// spent while none is in flight (background settles) is the worker's `idle` CPU, reported at exit.
// process.cpuUsage() is one getrusage (RUSAGE_SELF) per start and per end. A profile of a busy worker
// puts 5-8 % of its time there (49 µs of wall clock a call at c=64), but reading it at most once per
// 5 ms under load changed the worker's CPU per request by nothing measurable (docs/PERFORMANCE.md),
// so every start and end reads it and each request's figure stays exact.

import process from 'node:process'

/** Lines of stderr that are messages to the supervisor (serve-functions.ts reads them). */
const CONTROL_PREFIX = '\u001eedge-worker '

type Handler = (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>

const fnName = Deno.env.get('EDGE_WORKER_FUNCTION') ?? ''
const workerId = Deno.env.get('EDGE_WORKER_ID') ?? '0'
const root = Deno.env.get('EDGE_FUNCTIONS_ROOT') ??
  new URL('../supabase/functions/', import.meta.url).href
const logRequests = !/^(0|false|no|off)$/i.test(Deno.env.get('FUNCTIONS_LOG_CPU') ?? '1')
const cpuLimitMs = Number(Deno.env.get('FUNCTIONS_CPU_LIMIT_MS') ?? 2000)
const encoder = new TextEncoder()

function control(message: Record<string, unknown>): void {
  Deno.stderr.writeSync(encoder.encode(`${CONTROL_PREFIX}${JSON.stringify(message)}\n`))
}

function runtimeLog(msg: string, fields: Record<string, unknown>): void {
  console.log(JSON.stringify({
    ts: new Date().toISOString(),
    level: 'info',
    msg,
    function: fnName,
    worker: Number(workerId),
    ...fields,
  }))
}

// --- waitUntil --------------------------------------------------------------------------------------
let waiting = 0
let wasIdle = true

/** Tells the supervisor when this worker turns idle (nothing in flight, nothing waited for) or not. */
function pending(): void {
  const idle = inFlight.size === 0 && waiting === 0
  if (idle === wasIdle) return
  wasIdle = idle
  control({ t: 'pending', requests: inFlight.size, waiting })
}

function waitUntil<T>(promise: Promise<T>): Promise<T> {
  if (!(promise instanceof Promise)) return promise
  waiting++
  pending()
  const done = () => {
    waiting--
    pending()
  }
  promise.then(done, (err) => {
    done()
    console.error(JSON.stringify({
      ts: new Date().toISOString(),
      level: 'error',
      msg: 'waitUntil promise rejected',
      function: fnName,
      worker: Number(workerId),
      error: err instanceof Error ? err.name : typeof err,
    }))
  })
  return promise
}

Object.defineProperty(globalThis, 'EdgeRuntime', { value: Object.freeze({ waitUntil }) })

function beforeunload(reason: string): void {
  try {
    globalThis.dispatchEvent(new CustomEvent('beforeunload', { detail: { reason } }))
  } catch (err) {
    console.error(`beforeunload listener failed: ${err instanceof Error ? err.name : err}`)
  }
}

// --- CPU per request ------------------------------------------------------------------------------
interface Running {
  /** `sharedUs` when it started: its CPU is what that sum grew by while it was in flight. */
  sharedFrom: number
  started: number
  peak: number
}
const inFlight = new Set<Running>()
let lastCpu = 0
let idleCpuUs = 0
/** The CPU one request in flight all along would have been given: each interval's / in flight. */
let sharedUs = 0
let served = 0

function cpuNow(): number {
  const u = process.cpuUsage()
  return u.user + u.system
}

/** Shares the CPU used since the last event among the requests in flight during it. */
function account(): void {
  const now = cpuNow()
  const delta = now - lastCpu
  lastCpu = now
  if (inFlight.size === 0) idleCpuUs += delta
  else sharedUs += delta / inFlight.size
}

function started(): Running {
  account()
  const r: Running = { sharedFrom: sharedUs, started: performance.now(), peak: 0 }
  inFlight.add(r)
  for (const o of inFlight) o.peak = Math.max(o.peak, inFlight.size)
  pending()
  return r
}

function ended(r: Running, status: number, outcome: string): void {
  if (!inFlight.has(r)) return
  account()
  inFlight.delete(r)
  pending()
  served++
  if (!logRequests) return
  const cpuMs = Math.round((sharedUs - r.sharedFrom) / 10) / 100
  runtimeLog('worker request', {
    status,
    outcome,
    cpu_ms: cpuMs,
    wall_ms: Math.round((performance.now() - r.started) * 100) / 100,
    concurrency: r.peak,
    cpu_over_limit: cpuMs > cpuLimitMs ? true : undefined,
  })
}

/**
 * The request ends when Deno has sent the response's body to its end, or stopped (the client left,
 * the body errored): the response goes out as the function made it, not re-wrapped in a stream of
 * ours (which cost a JS read and enqueue per chunk, and turned every sized body into a chunked one).
 */
function observe(res: Response, r: Running, req: Request, completed: Promise<void>): void {
  completed.then(
    () => ended(r, res.status, req.signal.aborted ? 'client_gone' : 'complete'),
    () => ended(r, res.status, req.signal.aborted ? 'client_gone' : 'body_error'),
  )
}

/**
 * The request as the client sent it: the supervisor asks this worker for identity bytes (so that
 * its fetch passes a gzip body through untouched) and carries the client's accept-encoding as
 * x-edge-accept-encoding.
 */
function asSent(req: Request): Request {
  // One pass into a list the Request takes as it is (not a Headers copy, then deletes and a set).
  const headers: [string, string][] = []
  for (const header of req.headers) {
    if (header[0] === 'x-edge-accept-encoding') headers.push(['accept-encoding', header[1]])
    else if (header[0] !== 'accept-encoding') headers.push(header)
  }
  return new Request(req.url, {
    method: req.method,
    headers,
    body: req.body,
    signal: req.signal,
    // @ts-ignore: Deno needs this to forward a streaming request body
    duplex: 'half',
  })
}

// --- the function ---------------------------------------------------------------------------------
async function load(): Promise<Handler> {
  const index = new URL(`${fnName}/index.ts`, root.endsWith('/') ? root : `${root}/`)
  let captured: Handler | undefined
  const realServe = Deno.serve
  const denoServe = Deno as unknown as { serve: (...args: unknown[]) => unknown }
  denoServe.serve = (...args: unknown[]) => {
    captured = args.find((a): a is Handler => typeof a === 'function') ??
      (args.find((a) => (a as { handler?: Handler })?.handler) as { handler: Handler })?.handler
    return { finished: new Promise(() => {}), shutdown: async () => {}, ref() {}, unref() {} }
  }
  try {
    await import(index.href)
  } finally {
    denoServe.serve = realServe as unknown as typeof denoServe.serve
  }
  if (!captured) throw new Error(`${index.pathname} never called Deno.serve`)
  return captured
}

const handler = await load()
lastCpu = cpuNow()

const server = Deno.serve({
  hostname: '127.0.0.1',
  port: 0,
  onListen: ({ port }) => control({ t: 'ready', port }),
  onError: (err) => {
    console.error(`${fnName}: unhandled error: ${err instanceof Error ? err.name : err}`)
    return new Response('Internal error', { status: 500 })
  },
}, async (req, info) => {
  const r = started()
  // A request whose client (the supervisor) left is over for the lifecycle, answered or not.
  req.signal.addEventListener('abort', () => ended(r, 499, 'client_gone'), { once: true })
  try {
    const sent = asSent(req)
    const res = await handler(sent, info)
    // Answered without reading the body (a 413, a 401): the rest of the upload is read and dropped,
    // or the supervisor's connection breaks before it reads the answer.
    if (sent.body && !sent.bodyUsed && !sent.body.locked) {
      sent.body.pipeTo(new WritableStream()).catch(() => {})
    }
    observe(res, r, req, info.completed)
    return res
  } catch (err) {
    ended(r, 500, 'threw')
    throw err
  }
})

// The isolate's memory, as the edge runtime counts it for its half-limit alert (heap + external).
const memTimer = setInterval(() => {
  const m = Deno.memoryUsage()
  control({ t: 'mem', isolate: m.heapTotal + m.external, heap: m.heapTotal, external: m.external })
}, 500)
Deno.unrefTimer(memTimer)

function exitNow(code: number, reason: string): never {
  account()
  control({ t: 'exit', reason, served, idle_cpu_ms: Math.round(idleCpuUs / 1000) })
  Deno.exit(code)
}

/** Termination requested (the stand-in stops): no new requests; once nothing is pending, go. */
async function terminate(): Promise<void> {
  // Not awaited: Deno's shutdown also waits for handlers whose client has left, which may be never.
  server.shutdown()
  while (inFlight.size > 0 || waiting > 0) await new Promise((r) => setTimeout(r, 20))
  beforeunload('termination')
  exitNow(0, 'termination')
} // Commands from the supervisor, one per line.

;(async () => {
  let rest = ''
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split('\n')
    rest = lines.pop()!
    for (const line of lines) {
      const [cmd, arg] = line.trim().split(/\s+/)
      if (cmd === 'beforeunload') beforeunload(arg ?? 'wall_clock')
      else if (cmd === 'drop') {
        // An early drop: listeners run, then the worker is gone at once.
        beforeunload('early_drop')
        exitNow(0, 'early_drop')
      } else if (cmd === 'terminate') terminate()
    }
  }
  // The supervisor is gone (crashed or killed): so is this worker, with nothing pending run.
  Deno.exit(1)
})()
