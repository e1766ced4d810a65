// The processes a benchmark run starts and measures: each one's lifetime (stopped on exit, also on
// Ctrl-C), and what /proc says about it — peak resident memory and CPU time.

export interface Proc {
  name: string
  pid: number
  log: string
  stop(): Promise<void>
}

const running = new Set<Proc>()

const ROOT = new URL('../', import.meta.url).pathname
const DENO = `${ROOT}node_modules/.bin/deno`

/** The OpenRouter simulator on `port`, logging to `log`. */
export function startSimulator(port: number, log: string): Promise<Proc> {
  return start({
    name: 'sim',
    cmd: DENO,
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

/**
 * The functions server on `port`, served as scripts/stack.sh serves it (same runtime flags), with
 * `upstream` (an OpenRouter base URL) and `dbUrl`. `denoArgs` go before the script: profiling, and
 * BENCH_V8_FLAGS (experiments only, docs/PERFORMANCE.md: e.g. --max-semi-space-size=2).
 */
export function startFunctionsServer(opts: {
  port: number
  upstream: string
  dbUrl: string
  log: string
  denoArgs?: string[]
  /** More environment for the function (GATEWAY_* settings). */
  env?: Record<string, string>
}): Promise<Proc> {
  const v8 = Deno.env.get('BENCH_V8_FLAGS')
  return start({
    name: 'functions',
    cmd: DENO,
    args: [
      'run',
      '-A',
      '--unstable-no-legacy-abort',
      `${ROOT}scripts/serve-functions.ts`,
    ],
    env: {
      FUNCTIONS_PORT: String(opts.port),
      SUPABASE_URL: `http://127.0.0.1:${opts.port}`,
      SUPABASE_DB_URL: opts.dbUrl,
      GATEWAY_DB_URL: functionDbUrl(opts.dbUrl),
      OPENROUTER_BASE_URL: opts.upstream,
      OPENROUTER_API_KEY: 'bench',
      GATEWAY_UPSTREAM_SIMULATED: '1',
      // The function runs in worker processes (scripts/edge-worker.ts): profiling and V8 flags are theirs.
      FUNCTIONS_WORKER_DENO_ARGS: [...(opts.denoArgs ?? []), ...(v8 ? [`--v8-flags=${v8}`] : [])]
        .join(' '),
      ...opts.env,
    },
    log: opts.log,
    readyUrl: `http://127.0.0.1:${opts.port}/functions/v1/gateway/health`,
  })
}

/**
 * The function's own connection to the database of `dbUrl`, as the stack gives it: gateway_api
 * through PgBouncer (scripts/stack.sh; the function refuses to serve as postgres).
 */
export function functionDbUrl(dbUrl: string): string {
  const u = new URL(dbUrl)
  u.username = 'gateway_api'
  u.password = Deno.env.get('GATEWAY_API_PASSWORD') ?? 'gateway-api-local'
  u.port = '54329'
  return u.href
}

/** Starts `cmd args…` with its output in `log`, and waits until `readyUrl` answers at all. */
export async function start(opts: {
  name: string
  cmd: string
  args: string[]
  env?: Record<string, string>
  log: string
  readyUrl: string
}): Promise<Proc> {
  // The shell only redirects both streams to the log and then becomes the command (exec), so the
  // pid is the command's own and nothing has to drain its pipes.
  const child = new Deno.Command('sh', {
    args: ['-c', 'exec "$0" "$@" >"$BENCH_LOG" 2>&1', opts.cmd, ...opts.args],
    env: { ...opts.env, BENCH_LOG: opts.log },
    stdin: 'null',
  }).spawn()
  const proc: Proc = {
    name: opts.name,
    pid: child.pid,
    log: opts.log,
    async stop() {
      if (!running.delete(proc)) return
      try {
        child.kill('SIGTERM')
      } catch {
        // Already gone.
      }
      // A clean exit lets the functions server drain its background settles (and write a CPU
      // profile); one that hangs is killed.
      const timer = setTimeout(() => {
        try {
          child.kill('SIGKILL')
        } catch {
          // Exited meanwhile.
        }
      }, 15_000)
      await child.status
      clearTimeout(timer)
    },
  }
  running.add(proc)
  const exited = child.status.then(() => false)
  const ready = await Promise.race([waitHttp(opts.readyUrl, 30_000), exited])
  if (!ready) {
    await proc.stop()
    const tail = (await Deno.readTextFile(opts.log)).split('\n').slice(-20).join('\n')
    throw new Error(`${opts.name} did not start (${opts.readyUrl}); log ${opts.log}:\n${tail}`)
  }
  return proc
}

/** Stops everything still running (the last thing a run does, whatever happened). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()))
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  Deno.addSignalListener(signal, () => {
    console.error(`\n${signal}: stopping the benchmark's processes`)
    stopAll().finally(() => Deno.exit(130))
  })
}

/**
 * `preferred` if nothing listens on it, else a port the kernel picks: a second run at the same time
 * (or anything else on the port) must not make this one fail.
 */
export function freePort(preferred: number): number {
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

export async function waitHttp(url: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) })
      await res.body?.cancel()
      return true // any answer means it listens (a health check may well answer 503)
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  return false
}

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

/**
 * Local ports of `pid`'s established TCP connections to `remotePort` on loopback: with
 * pg_stat_activity.client_port they name the Postgres backends serving that process, so the
 * database's CPU is counted for our gateway only (not for the shared stack or anyone's tests).
 */
export function connectionPorts(pid: number, remotePort: number): number[] {
  const inodes = new Set<string>()
  for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`))
      if (m) inodes.add(m[1])
    } catch {
      // Closed while we looked.
    }
  }
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
