// Processes of our own, next to the shared stack and without touching it, for the tests that kill,
// restart or flood the function, the soak and the benchmark: an OpenRouter simulator (in this
// process, or as a process of its own when its CPU and memory are measured) and a functions server
// (scripts/serve-functions.ts, exactly as scripts/stack.sh runs it) on a free port, pointed at that
// simulator. The shared Postgres is the only thing in common. Every process started here is stopped
// by `stopAll` (a benchmark's last step, also on Ctrl-C).
//
// The in-process simulator is wrapped with one fault of our own that the simulator's grammar lacks:
// a model suffix `~hold-done-N` holds `data: [DONE]` back for N ms after the usage chunk, so a client
// can leave after upstream reported usage but before the stream ended.

import { createSimulator, type Simulator } from '../../../tools/openrouter-sim/server.ts'
import type { SimGeneration, SimStats } from './sim.ts'
import { DB_URL, FUNCTION_DB_URL, sleep } from './stack.ts'

const ROOT = new URL('../../../', import.meta.url).pathname

/**
 * `preferred` if nothing listens on it, else a port the kernel picks: a second run at the same time
 * (or anything else on the port) must not make this one fail. Without `preferred`, any free port.
 */
export function freePort(preferred = 0): number {
  for (const port of [preferred, 0]) {
    try {
      const listener = Deno.listen({ hostname: '127.0.0.1', port })
      const chosen = (listener.addr as Deno.NetAddr).port
      listener.close()
      return chosen
    } catch (err) {
      if (!(err instanceof Deno.errors.AddrInUse)) throw err
    }
  }
  throw new Error('no free port')
}

// ---- the simulator, in this process ---------------------------------------------------------

export interface OwnSimulator {
  sim: Simulator
  /** OpenRouter base URL (…/api/v1) for OPENROUTER_BASE_URL. */
  baseUrl: string
  /** The simulator's GET /__sim/stats document (what books.ts checks the books against). */
  stats(): SimStats
  generations(): SimGeneration[]
  generation(id: string): SimGeneration | undefined
  /** Chat requests the simulator received. */
  chats(): number
  close(): Promise<void>
}

const HOLD_DONE = /~hold-done-(\d+)/

/** `data: [DONE]` is forwarded `ms` after everything before it. */
function holdDone(body: ReadableStream<Uint8Array>, ms: number): ReadableStream<Uint8Array> {
  const decoder = new TextDecoder()
  const encoder = new TextEncoder()
  let pending = ''
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      async transform(chunk, c) {
        pending += decoder.decode(chunk, { stream: true })
        const at = pending.indexOf('data: [DONE]')
        if (at < 0) {
          c.enqueue(encoder.encode(pending))
          pending = ''
          return
        }
        c.enqueue(encoder.encode(pending.slice(0, at)))
        await sleep(ms)
        c.enqueue(encoder.encode(pending.slice(at)))
        pending = ''
      },
    }),
  )
}

/**
 * A simulator in this process on a free loopback port (so /__sim/reset, its generation list and
 * injected faults concern our requests only), with quick /generation stats (50 ms) unless told.
 */
export function startOwnSimulator(opts: { generationDelayMs?: number } = {}): OwnSimulator {
  const sim = createSimulator({ generationDelayMs: opts.generationDelayMs ?? 50 })
  const handler = async (req: Request): Promise<Response> => {
    if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) return sim.handler(req)
    const text = await req.text()
    const hold = HOLD_DONE.exec(text)
    const forwarded = new Request(req.url, {
      method: 'POST',
      headers: req.headers,
      body: hold ? text.replace(HOLD_DONE, '') : text,
      signal: req.signal,
    })
    const res = await sim.handler(forwarded)
    if (!hold || !res.body) return res
    return new Response(holdDone(res.body, Number(hold[1])), {
      status: res.status,
      headers: res.headers,
    })
  }
  // Deno.serve binds before it returns; onListen is only silenced.
  const server = Deno.serve({
    hostname: '127.0.0.1',
    port: 0,
    onListen: () => {},
    // A cut stream (the stream-cut fault) is an error by design.
    onError: () => new Response(null, { status: 500 }),
  }, handler)
  const baseUrl = `http://127.0.0.1:${server.addr.port}/api/v1`
  const generations = () => (sim.stats().generations as SimGeneration[])
  return {
    sim,
    baseUrl,
    stats: () => sim.stats() as SimStats,
    generations,
    generation: (id) => generations().find((g) => g.id === id),
    chats: () => (sim.stats(true) as { requests: { chat: number } }).requests.chat,
    close: () => server.shutdown(),
  }
}

// ---- processes ------------------------------------------------------------------------------

export interface Proc {
  name: string
  pid: number
  /** The file its output goes to, or null when it is read through pipes (see `logs`). */
  log: string | null
  /** SIGTERM: a graceful stop (a functions server awaits its waitUntil work); SIGKILL after 15 s. */
  stop(): Promise<void>
  /** SIGKILL: the crash of the instance; nothing it had pending runs. */
  crash(): Promise<void>
  /** Its output lines, when they are kept in memory (`captureLogs`). */
  logs(): string[]
}

const running = new Set<Proc>()
let signalsHandled = false

/** Stops every process started here that still runs (whatever happened before). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()))
}

/** From now on Ctrl-C (or SIGTERM) of this script stops its processes first (scripts, not tests). */
export function stopOnSignals(): void {
  if (signalsHandled) return
  signalsHandled = true
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    Deno.addSignalListener(signal, () => {
      console.error(`\n${signal}: stopping the processes started for this run`)
      stopAll().finally(() => Deno.exit(130))
    })
  }
}

/** Reads a child's output line by line into `sink` until it closes. */
async function drain(stream: ReadableStream<Uint8Array>, sink: string[] | null): Promise<void> {
  let rest = ''
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    if (!sink) continue
    const lines = (rest + text).split('\n')
    rest = lines.pop()!
    sink.push(...lines)
  }
  if (sink && rest) sink.push(rest)
}

export interface StartOptions {
  name: string
  cmd: string
  args: string[]
  env?: Record<string, string>
  cwd?: string
  /**
   * Where its output goes: a file (nothing in this process reads it, so a measured process is not
   * slowed by our draining it), else pipes read by this process (kept with `captureLogs`).
   */
  log?: string
  captureLogs?: boolean
  /** Started once this answers at all (a health check may well answer 503). */
  readyUrl: string
  readyTimeoutMs?: number
}

/** Starts `cmd args…`, and waits until `readyUrl` answers. */
export async function start(opts: StartOptions): Promise<Proc> {
  // With a log file, the shell only redirects both streams and then becomes the command (exec), so
  // the pid is the command's own and nothing has to drain its pipes.
  const child = opts.log
    ? new Deno.Command('sh', {
      args: ['-c', 'exec "$0" "$@" >"$PROC_LOG" 2>&1', opts.cmd, ...opts.args],
      env: { ...opts.env, PROC_LOG: opts.log },
      cwd: opts.cwd,
      stdin: 'null',
    }).spawn()
    : new Deno.Command(opts.cmd, {
      args: opts.args,
      env: opts.env,
      cwd: opts.cwd,
      stdin: 'null',
      stdout: 'piped',
      stderr: 'piped',
    }).spawn()
  const lines: string[] = []
  const sink = opts.captureLogs ? lines : null
  const drained = opts.log
    ? Promise.resolve()
    : Promise.all([drain(child.stdout, sink), drain(child.stderr, sink)])
  const ended = async () => {
    await child.status
    await drained
  }
  const signal = async (name: Deno.Signal) => {
    if (!running.delete(proc)) return
    try {
      child.kill(name)
    } catch {
      // Already gone.
    }
    // A clean exit lets a functions server drain its background settles (and write a CPU
    // profile); one that hangs is killed.
    const timer = setTimeout(() => {
      try {
        child.kill('SIGKILL')
      } catch {
        // Exited meanwhile.
      }
    }, 15_000)
    await ended()
    clearTimeout(timer)
  }
  const proc: Proc = {
    name: opts.name,
    pid: child.pid,
    log: opts.log ?? null,
    stop: () => signal('SIGTERM'),
    crash: () => signal('SIGKILL'),
    logs: () => lines,
  }
  running.add(proc)
  const exited = child.status.then(() => false)
  const ready = await Promise.race([waitHttp(opts.readyUrl, opts.readyTimeoutMs ?? 30_000), exited])
  if (!ready) {
    await proc.crash()
    const tail = opts.log ? (await Deno.readTextFile(opts.log)).split('\n') : lines
    throw new Error(
      `${opts.name} did not start (${opts.readyUrl})${opts.log ? `; log ${opts.log}` : ''}:\n` +
        tail.slice(-20).join('\n'),
    )
  }
  return proc
}

/** True once `url` answers at all (any status), false if it did not within `timeoutMs`. */
export async function waitHttp(url: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) })
      await res.body?.cancel()
      return true
    } catch {
      // Not listening yet.
    }
    await sleep(100)
  }
  return false
}

/** The OpenRouter simulator as a process of its own on `port` (its CPU and memory are measured). */
export function startSimulator(port: number, log: string): Promise<Proc> {
  return start({
    name: 'sim',
    cmd: Deno.execPath(),
    args: [
      'run',
      '--allow-net',
      '--allow-env',
      '--unstable-no-legacy-abort',
      `${ROOT}tools/openrouter-sim/main.ts`,
    ],
    env: { SIM_PORT: String(port) },
    log,
    readyUrl: `http://127.0.0.1:${port}/api/v1/models`,
  })
}

export interface FunctionsOptions {
  /** Default: a free port. */
  port?: number
  /** OPENROUTER_BASE_URL; default: the shared simulator. */
  upstream?: string
  /** GATEWAY_DB_URL; default: the shared Postgres through the stack's PgBouncer, as gateway_api. */
  dbUrl?: string
  /** '::1' serves on IPv6 loopback (serve-functions.ts itself binds 127.0.0.1). */
  hostname?: string
  /** Its output (the function's JSON logs) to this file; else read, and kept with `captureLogs`. */
  log?: string
  captureLogs?: boolean
  /** Deno flags of the worker processes that run the function (a CPU profile, say). */
  denoArgs?: string[]
  /** Deno flags of the supervisor itself (scripts/serve-functions.ts: a CPU profile, say). */
  supervisorDenoArgs?: string[]
  /** More environment for the function (GATEWAY_* settings). */
  env?: Record<string, string>
}

export interface Functions extends Proc {
  /** …/functions/v1/gateway on this server. */
  url: string
}

/** The function's environment on a test server at `origin`, before `opts.env`. */
function functionEnv(origin: string, opts: FunctionsOptions): Record<string, string> {
  return {
    SUPABASE_URL: origin,
    SUPABASE_DB_URL: DB_URL,
    GATEWAY_DB_URL: opts.dbUrl ?? FUNCTION_DB_URL,
    OPENROUTER_BASE_URL: opts.upstream ??
      `${Deno.env.get('SIM_URL') ?? 'http://127.0.0.1:54340'}/api/v1`,
    OPENROUTER_API_KEY: 'simulated-upstream-key',
    GATEWAY_UPSTREAM_SIMULATED: '1',
    // Quick fallbacks: an own simulator's /generation answers after 50 ms.
    GATEWAY_GENERATION_LOOKUP_DELAYS_MS: '100,200,400,800,1600',
  }
}

/**
 * scripts/serve-functions.ts on a free port, as scripts/stack.sh starts it (same flags, same
 * environment names), once /health answers (any status: the database may be a dead one on
 * purpose). BENCH_V8_FLAGS adds V8 flags (experiments only, docs/PERFORMANCE.md).
 */
export async function startFunctions(opts: FunctionsOptions = {}): Promise<Functions> {
  const port = opts.port ?? freePort()
  const hostname = opts.hostname ?? '127.0.0.1'
  const host = hostname.includes(':') ? `[${hostname}]` : hostname
  const entry = hostname === '127.0.0.1'
    ? 'scripts/serve-functions.ts'
    : 'supabase/tests/lib/serve-on-host.ts'
  const v8 = Deno.env.get('BENCH_V8_FLAGS')
  const url = `http://${host}:${port}/functions/v1/gateway`
  const proc = await start({
    name: 'functions',
    cmd: Deno.execPath(),
    // -A: the stand-in spawns worker processes and reads their memory from /proc.
    args: [
      'run',
      '-A',
      '--unstable-no-legacy-abort',
      ...(opts.supervisorDenoArgs ?? []),
      `${ROOT}${entry}`,
    ],
    env: {
      FUNCTIONS_PORT: String(port),
      FUNCTIONS_HOSTNAME: hostname,
      ...functionEnv(`http://${host}:${port}`, opts),
      // The function runs in worker processes (scripts/edge-worker.ts): profiling and V8 flags are theirs.
      FUNCTIONS_WORKER_DENO_ARGS: [...(opts.denoArgs ?? []), ...(v8 ? [`--v8-flags=${v8}`] : [])]
        .join(' '),
      ...opts.env,
    },
    cwd: ROOT,
    log: opts.log,
    captureLogs: opts.captureLogs,
    readyUrl: `${url}/health`,
  })
  return { ...proc, url }
}

/**
 * The gateway function in ONE plain Deno process: its own `index.ts` (`Deno.serve(app.fetch)`) with
 * no supervisor and no worker wrapper, which is what a hosted worker's CPU pays for (hosted
 * Supabase routes requests in its Rust edge runtime, off the function's budget). The same
 * environment as `startFunctions`, the same permissions and V8 heap limit as a worker
 * (`--max-heap-size` = 256 MB, unless BENCH_V8_FLAGS sets a heap or generation size), still through
 * PgBouncer as `gateway_api`. No `EdgeRuntime`: background work simply runs on (background.ts).
 * The function sees the path `/gateway/…` as on Supabase, so `url` has no `/functions/v1`.
 * For the benchmark (`bench/run.sh --plain`), not for the tests: no lifecycle at all.
 */
export async function startPlainFunction(opts: FunctionsOptions = {}): Promise<Functions> {
  const port = opts.port ?? freePort()
  const v8 = Deno.env.get('BENCH_V8_FLAGS')
  const heap = v8 && /--max-(heap|old-space|semi-space)-size/.test(v8)
    ? `--v8-flags=${v8}`
    : `--v8-flags=${v8 ? `${v8},` : ''}--max-heap-size=256`
  const url = `http://127.0.0.1:${port}/gateway`
  const proc = await start({
    name: 'functions',
    cmd: Deno.execPath(),
    args: [
      'run',
      '--allow-net',
      '--allow-env',
      '--allow-read',
      '--unstable-no-legacy-abort',
      heap,
      ...(opts.denoArgs ?? []),
      `${ROOT}supabase/functions/gateway/index.ts`,
    ],
    env: {
      // Where Deno.serve() without options listens (Deno ≥ 2.1).
      DENO_SERVE_ADDRESS: `tcp:127.0.0.1:${port}`,
      ...functionEnv(`http://127.0.0.1:${port}`, opts),
      ...opts.env,
    },
    cwd: ROOT,
    log: opts.log,
    captureLogs: opts.captureLogs,
    readyUrl: `${url}/health`,
  })
  return { ...proc, url }
}
