// Local stand-in for Supabase's edge runtime, for machines without Docker (scripts/stack.sh runs it).
//
// It gives each function in supabase/functions/* (not `_shared`) what the hosted runtime gives it:
// requests for `/functions/v1/<name>/rest` arrive at the function as `/<name>/rest`, the client's
// address is appended to X-Forwarded-For, and `EdgeRuntime.waitUntil(promise)` keeps work alive
// after the response. All functions run in this one process: each module's `Deno.serve(handler)`
// is captured rather than bound, so a request costs no extra network hop.
//
// On SIGTERM/SIGINT it stops accepting requests, dispatches `beforeunload` (as the edge runtime does
// before it shuts a worker down) and awaits every promise handed to waitUntil, so a settle queued
// after a response is not lost when the stack stops.

type Handler = (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>

const root = new URL('../supabase/functions/', import.meta.url)
const port = Number(Deno.env.get('FUNCTIONS_PORT') ?? 54321)
const pending = new Set<Promise<unknown>>()

Object.defineProperty(globalThis, 'EdgeRuntime', {
  value: {
    waitUntil(promise: Promise<unknown>) {
      const tracked = promise.catch((err) => console.error('waitUntil task failed:', err))
        .finally(() => pending.delete(tracked))
      pending.add(tracked)
    },
  },
})

async function loadFunctions(): Promise<Map<string, Handler>> {
  const handlers = new Map<string, Handler>()
  const realServe = Deno.serve
  for await (const entry of Deno.readDir(root)) {
    if (!entry.isDirectory || entry.name.startsWith('_') || entry.name.startsWith('.')) continue
    const index = new URL(`${entry.name}/index.ts`, root)
    try {
      await Deno.stat(index)
    } catch {
      continue
    }
    let captured: Handler | undefined
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
    if (!captured) {
      throw new Error(`supabase/functions/${entry.name}/index.ts never called Deno.serve`)
    }
    handlers.set(entry.name, captured)
  }
  return handlers
}

const handlers = await loadFunctions()

function notFound(message: string) {
  return Response.json({ error: { message, type: 'invalid_request_error', code: 'not_found' } }, {
    status: 404,
  })
}

const server = Deno.serve({
  hostname: '127.0.0.1',
  port,
  onListen: () =>
    console.log(
      `functions: ${[...handlers.keys()].join(', ')} on http://127.0.0.1:${port}/functions/v1/`,
    ),
}, (req, info) => {
  const url = new URL(req.url)
  const match = /^\/functions\/v1\/([^/]+)(\/.*)?$/.exec(url.pathname)
  if (!match) return notFound('Not found: functions are served under /functions/v1/<name>/')
  const handler = handlers.get(match[1])
  if (!handler) return notFound(`Function not found: ${match[1]}`)
  url.pathname = `/${match[1]}${match[2] ?? ''}`
  const headers = new Headers(req.headers)
  const remote = (info.remoteAddr as Deno.NetAddr).hostname
  const forwarded = headers.get('x-forwarded-for')
  headers.set('x-forwarded-for', forwarded ? `${forwarded}, ${remote}` : remote)
  return handler(
    new Request(url, {
      method: req.method,
      headers,
      body: req.body,
      signal: req.signal,
      // @ts-ignore: Deno needs this to forward a streaming request body
      duplex: 'half',
    }),
    info,
  )
})

async function shutdown() {
  await server.shutdown()
  globalThis.dispatchEvent(new Event('beforeunload'))
  await Promise.allSettled([...pending])
  Deno.exit(0)
}
Deno.addSignalListener('SIGTERM', shutdown)
Deno.addSignalListener('SIGINT', shutdown)
