// Builds the gateway's Hono app: base path, cross-cutting middleware (request id, CORS, bounded body
// reading), the route modules, /openapi.json and the docs, and the single place where every error
// becomes an OpenAI-shaped response (app.onError) — unknown routes 404, wrong methods 405.

import { HTTPException } from 'hono/http-exception'
import { cors } from 'hono/cors'
import type { Context, MiddlewareHandler } from 'hono'
import { describe } from './background.ts'
import { bodyGuard, type BodyLimits } from './body-guard.ts'
import { config } from './config.ts'
import { checkRole, databaseRole, refusal } from './db.ts'
import { docsRoutes } from './docs.ts'
import { ApiError, errorResponse } from './errors.ts'
import { clientIp, clientNetwork } from './identity.ts'
import { log, type LogFields } from './log.ts'
import { adminRoutes } from './routes/admin.ts'
import { chatRoutes } from './routes/chat.ts'
import { internalRoutes } from './routes/internal.ts'
import { type AppEnv, json, router } from './routes/common.ts'
import { keyRoutes } from './routes/keys.ts'
import { publicRoutes } from './routes/public.ts'
import { registerRoutes } from './routes/register.ts'
import { userRoutes } from './routes/user.ts'

/** Supabase hands the function paths that start with its name. */
export const BASE_PATH = '/gateway'

const EXPOSED = [
  'x-request-id',
  'x-generation-id',
  'retry-after',
  'x-ratelimit-limit-requests',
  'x-ratelimit-remaining-requests',
  'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens',
  'x-ratelimit-remaining-tokens',
  'x-ratelimit-reset-tokens',
  'x-models-cache',
]

function allowedOrigin(origin: string): string | null {
  if (config.corsOrigins.includes('*')) return '*'
  return config.corsOrigins.includes(origin) ? origin : null
}

// A preflight's allowed headers are those it asks for (no allowHeaders): browsers running the
// OpenAI SDK send its own x-stainless-* headers, which no fixed list would keep up with.
const honoCors = cors({
  origin: allowedOrigin,
  allowMethods: ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS'],
  exposeHeaders: EXPOSED,
  maxAge: 86400,
})

/**
 * CORS for browsers (GATEWAY_CORS_ORIGINS, default `*`), by hono/cors. The one rule it lacks: a
 * request without an Origin (SDKs, servers: the hot path) skips it entirely, so it carries no CORS
 * headers and costs nothing. Which sites may USE a key is a separate rule: the key's allowed
 * referrers, enforced in SQL against the Origin/Referer host.
 */
const browserCors: MiddlewareHandler = (c, next) =>
  c.req.header('origin') ? honoCors(c, next) : next()

/**
 * Every answer names its request (x-request-id), so a client's report can be matched to the one
 * log line written per request. The route is logged as its pattern, never the raw path.
 */
const requestLog: MiddlewareHandler<AppEnv> = async (c, next) => {
  const started = performance.now()
  const id = crypto.randomUUID()
  const fields: LogFields = {}
  c.set('log', fields)
  await next()
  c.res.headers.set('x-request-id', id)
  const route = c.req.matchedRoutes.findLast((r) => r.method !== 'ALL')?.path ?? null
  log('info', 'request', {
    request_id: id,
    method: c.req.method,
    route,
    status: c.res.status,
    latency_ms: Math.round((performance.now() - started) * 100) / 100,
    ...fields,
  })
}

/** Completions carry prompts (up to GATEWAY_MAX_BODY_BYTES); every other route a small JSON. */
const COMPLETIONS = `${BASE_PATH}/v1/chat/completions`
const completionBodies: BodyLimits = {
  maxBytes: config.maxBodyBytes,
  timeoutMs: config.bodyReadTimeoutMs,
  maxReaders: config.maxBodyReaders,
  maxBytesInFlight: config.maxBodyBytesInFlight,
  maxReadersPerNetwork: config.maxBodyReadersPerNetwork,
  maxBytesPerNetwork: config.maxBodyBytesPerNetwork,
}
/** Small bodies need no long deadline: a slow one would hold its reader slot for nothing. */
const apiBodies: BodyLimits = {
  ...completionBodies,
  maxBytes: config.maxApiBodyBytes,
  timeoutMs: config.apiBodyReadTimeoutMs,
}
const bodyNetwork = (c: Context) => clientNetwork(clientIp(c))
const bodyLimits = (path: string) =>
  path === COMPLETIONS || path === `${COMPLETIONS}/` ? completionBodies : apiBodies

/**
 * 503 on every route while the function reaches Postgres as a superuser or the owner of schema
 * gateway (db.ts, checkRole): least privilege would be lost without an error. /health says why.
 */
const roleGate: MiddlewareHandler<AppEnv> = async (c, next) => {
  const r = databaseRole() ?? await checkRole()
  const why = r && refusal(r)
  if (!why) return next()
  if (c.req.path === `${BASE_PATH}/health`) {
    return json({
      status: 'refusing',
      timestamp: new Date().toISOString(),
      database: 'ok',
      database_role: r.role,
      reason: why,
    }, 503)
  }
  throw new ApiError(503, why, { code: 'privileged_database_role' })
}

function onError(err: Error): Response {
  if (err instanceof ApiError) return err.getResponse()
  if (err instanceof HTTPException) {
    // Hono's own (415 from the media-type gate, 400 for unreadable JSON): same shape as ours.
    const status = err.status
    const message = status === 400
      ? 'The request body is not valid JSON'
      : err.message || 'Request refused'
    return errorResponse(
      status,
      message,
      status === 415 ? 'unsupported_media_type' : 'invalid_request',
    )
  }
  log('error', 'unhandled error', { error: describe(err) })
  return errorResponse(500, 'Internal error', 'internal_error')
}

/** Path patterns of every route, to tell a wrong method (405) from an unknown path (404). */
function methodMatcher(routes: { method: string; path: string }[]) {
  const patterns = new Map<string, { re: RegExp; methods: Set<string> }>()
  for (const r of routes) {
    if (r.method === 'ALL' || r.path.includes('*')) continue
    let p = patterns.get(r.path)
    if (!p) {
      const re = new RegExp(
        `^${r.path.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/:[^/]+/g, '[^/]+')}$`,
      )
      p = { re, methods: new Set() }
      patterns.set(r.path, p)
    }
    p.methods.add(r.method)
  }
  return (path: string): string[] => {
    const allowed = new Set<string>()
    for (const p of patterns.values()) if (p.re.test(path)) p.methods.forEach((m) => allowed.add(m))
    return [...allowed]
  }
}

export function buildApp() {
  // Not strict: `/gateway/` (the index, as a browser writes it) is `/gateway`.
  const app = router({ strict: false }).basePath(BASE_PATH)

  app.use('*', requestLog, browserCors, bodyGuard(bodyLimits, bodyNetwork))
  app.use('*', roleGate)

  app.route('/', publicRoutes)
  app.route('/', registerRoutes)
  app.route('/', userRoutes)
  app.route('/', keyRoutes)
  app.route('/', adminRoutes)
  app.route('/', chatRoutes)
  app.route('/', internalRoutes)

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    description: 'A gateway key (gw_live_…), as issued by /auth/register or /user/api-keys',
  })
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: {
      title: 'OpenRouter gateway',
      version: '1.0.0',
      description: 'A credit-metered, OpenAI-compatible gateway to OpenRouter. Point an OpenAI ' +
        'client at `<this server>/gateway/v1` with a gateway key. Errors are OpenAI-shaped: ' +
        '`{"error":{"message","type","code","param"}}`.',
    },
    servers: [{ url: config.supabaseUrl ? `${config.supabaseUrl}/functions/v1` : '/functions/v1' }],
  })
  app.route('/', docsRoutes)

  // The index is built from the routes themselves, so it never lists a route that does not exist.
  // Each validator of a documented route is a route entry of its own: list each route once.
  const index = [
    ...new Set(
      app.routes
        .filter((r) => r.method !== 'ALL')
        .map((r) => `${r.method} ${r.path.slice(BASE_PATH.length) || '/'}`),
    ),
  ]
  app.get('/', () =>
    json({
      name: 'OpenRouter gateway',
      description: 'Credit-metered, OpenAI-compatible API gateway for OpenRouter',
      openai_base_path: `${BASE_PATH}/v1`,
      docs: {
        swagger_ui: `${BASE_PATH}/docs`,
        redoc: `${BASE_PATH}/redoc`,
        openapi: `${BASE_PATH}/openapi.json`,
      },
      endpoints: [...index, 'GET /'],
    }))

  const allowedMethods = methodMatcher(app.routes)
  app.notFound((c) => {
    const allowed = allowedMethods(c.req.path)
    // A route that exists for this method but found nothing (an unknown asset) is still a 404.
    if (allowed.length && !allowed.includes(c.req.method)) {
      return errorResponse(
        405,
        `Method ${c.req.method} is not allowed here`,
        'method_not_allowed',
        null,
        {
          allow: allowed.join(', '),
        },
      )
    }
    // The path is not echoed: it is client text and could hold anything, a key included.
    return errorResponse(404, 'Unknown route', 'not_found')
  })
  app.onError(onError)
  return app
}
