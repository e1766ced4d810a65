// Runs wrk (Debian's, /usr/bin/wrk) with bench/chat.lua and returns what its done() printed.

export interface WrkResult {
  requests: number
  duration_us: number
  bytes: number
  errors: { connect: number; read: number; write: number; status: number; timeout: number }
  latency_us: {
    min: number
    mean: number
    p50: number
    p90: number
    p99: number
    p999: number
    max: number
  }
}

export interface WrkOptions {
  url: string
  connections: number
  seconds: number
  bodyFile: string
  /** Extra request headers. */
  headers?: Record<string, string>
  /** One bearer key per line; requests rotate over them. */
  keysFile?: string
}

const script = new URL('./chat.lua', import.meta.url).pathname

export async function wrk(opts: WrkOptions): Promise<WrkResult> {
  const headers = Object.entries(opts.headers ?? {}).map(([k, v]) => `${k}: ${v}`).join('\n')
  const out = await new Deno.Command('wrk', {
    args: [
      // One thread: on two cores the load generator must leave the other core to what it measures.
      '-t1',
      `-c${opts.connections}`,
      `-d${opts.seconds}s`,
      '--timeout',
      '10s',
      '-s',
      script,
      opts.url,
    ],
    env: {
      BENCH_BODY_FILE: opts.bodyFile,
      BENCH_HEADERS: headers,
      BENCH_KEYS_FILE: opts.keysFile ?? '',
    },
    stdout: 'piped',
    stderr: 'piped',
  }).output()
  const stdout = new TextDecoder().decode(out.stdout)
  const line = stdout.split('\n').find((l) => l.startsWith('BENCH_JSON '))
  if (!out.success || !line) {
    throw new Error(`wrk failed: ${stdout}\n${new TextDecoder().decode(out.stderr)}`)
  }
  return JSON.parse(line.slice('BENCH_JSON '.length))
}

/** Socket errors and non-2xx/3xx responses together. */
export function errorCount(r: WrkResult): number {
  const e = r.errors
  return e.connect + e.read + e.write + e.status + e.timeout
}
