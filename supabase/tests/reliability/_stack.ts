// Processes of our own for the reliability tests, next to the shared stack and without touching it:
// an OpenRouter simulator in this process (so /__sim/reset, its generation list and injected faults
// concern our requests only) and a functions server (scripts/serve-functions.ts, exactly as
// scripts/stack.sh runs it) on a free port, pointed at that simulator. Tests that kill, restart or
// flood the function use these; the shared Postgres is the only thing in common.
//
// The simulator is wrapped with one fault of our own that the simulator's grammar lacks: a model
// suffix `~hold-done-N` holds `data: [DONE]` back for N ms after the usage chunk, so a client can
// leave after upstream reported usage but before the stream ended.

import { DB_URL, FUNCTION_DB_URL } from '../gateway/_helpers.ts'
import { createSimulator, type Simulator } from '../../../tools/openrouter-sim/server.ts'

const ROOT = new URL('../../../', import.meta.url).pathname

export function freePort(): number {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 })
  const port = (listener.addr as Deno.NetAddr).port
  listener.close()
  return port
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export interface SimGeneration {
  id: string
  model: string
  stream: boolean
  prompt_tokens: number
  completion_tokens: number
  cancelled: boolean
  fault: string | null
  ended: boolean
  /** How long the simulator held the response headers back (the `slow` fault), ms. */
  held_ms: number
}

export interface OwnSimulator {
  sim: Simulator
  /** OpenRouter base URL (…/api/v1) for OPENROUTER_BASE_URL. */
  baseUrl: string
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

/** A simulator on a free loopback port, with quick /generation stats (50 ms) unless told. */
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
    generations,
    generation: (id) => generations().find((g) => g.id === id),
    chats: () => (sim.stats(true) as { requests: { chat: number } }).requests.chat,
    close: () => server.shutdown(),
  }
}

export interface FunctionsOptions {
  /** OPENROUTER_BASE_URL; default: the shared simulator. */
  upstream?: string
  /** GATEWAY_DB_URL; default: the shared Postgres through the stack's PgBouncer, as gateway_api. */
  dbUrl?: string
  /** '::1' serves on IPv6 loopback (serve-functions.ts itself binds 127.0.0.1). */
  hostname?: string
  /** Keep stdout/stderr lines (the function's JSON logs) in memory. */
  captureLogs?: boolean
  env?: Record<string, string>
}

export interface Functions {
  /** …/functions/v1/gateway on this server. */
  url: string
  pid: number
  logs(): string[]
  /** SIGKILL: the crash of the instance; nothing it had pending runs. */
  crash(): Promise<void>
  /** SIGTERM: a graceful stop (waitUntil work is awaited). */
  stop(): Promise<void>
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

/**
 * scripts/serve-functions.ts on a free port, as scripts/stack.sh starts it (same flags, same
 * environment names), and waits for /health to answer (any status: the database may be a dead one
 * on purpose).
 */
export async function startFunctions(opts: FunctionsOptions = {}): Promise<Functions> {
  const port = freePort()
  const hostname = opts.hostname ?? '127.0.0.1'
  const host = hostname.includes(':') ? `[${hostname}]` : hostname
  const entry = hostname === '127.0.0.1'
    ? 'scripts/serve-functions.ts'
    : 'supabase/tests/reliability/_serve-on-host.ts'
  const child = new Deno.Command(Deno.execPath(), {
    // -A: the stand-in spawns worker processes and reads their memory from /proc.
    args: ['run', '-A', '--unstable-no-legacy-abort', entry],
    cwd: ROOT,
    env: {
      FUNCTIONS_PORT: String(port),
      FUNCTIONS_HOSTNAME: hostname,
      SUPABASE_URL: `http://${host}:${port}`,
      SUPABASE_DB_URL: DB_URL,
      GATEWAY_DB_URL: opts.dbUrl ?? FUNCTION_DB_URL,
      OPENROUTER_BASE_URL: opts.upstream ??
        `${Deno.env.get('SIM_URL') ?? 'http://127.0.0.1:54340'}/api/v1`,
      OPENROUTER_API_KEY: 'simulated-upstream-key',
      GATEWAY_UPSTREAM_SIMULATED: '1',
      // Quick fallbacks: the own simulator's /generation answers after 50 ms.
      GATEWAY_GENERATION_LOOKUP_DELAYS_MS: '100,200,400,800,1600',
      ...opts.env,
    },
    stdout: 'piped',
    stderr: 'piped',
  }).spawn()
  const lines: string[] = []
  const sink = opts.captureLogs ? lines : null
  const drained = Promise.all([drain(child.stdout, sink), drain(child.stderr, sink)])
  const url = `http://${host}:${port}/functions/v1/gateway`
  let up = false
  for (let i = 0; i < 200 && !up; i++) {
    up = await fetch(`${url}/health`).then(async (r) => (await r.body?.cancel(), true), () => false)
    if (!up) await sleep(100)
  }
  const ended = async () => {
    await child.status
    await drained
  }
  if (!up) {
    child.kill('SIGKILL')
    await ended()
    throw new Error(`the functions server did not start:\n${lines.slice(-20).join('\n')}`)
  }
  let done = false
  return {
    url,
    pid: child.pid,
    logs: () => lines,
    async crash() {
      if (!done) child.kill('SIGKILL')
      done = true
      await ended()
    },
    async stop() {
      if (!done) child.kill('SIGTERM')
      done = true
      await ended()
    },
  }
}
