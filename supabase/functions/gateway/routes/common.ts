// What every route module shares: the Hono env type, a router whose validation failures become our
// 400s, the documented error responses, and the JSON-text response used to pass an SQL function's
// jsonb through as the body without re-serialising it.

import { OpenAPIHono, type RouteConfig, type RouteHandler, z } from '@hono/zod-openapi'
import type { ZodError } from 'zod'
import { ApiError } from '../errors.ts'
import type { LogFields } from '../log.ts'

export type AppEnv = {
  Bindings: Deno.ServeHandlerInfo
  /** `log`: fields a handler adds to its request's log line (see log.ts). */
  Variables: { log: LogFields }
}

/** First failing field → a 400 naming it, the OpenAI way (`param`). */
export function validationError(error: ZodError): ApiError {
  const issue = error.issues[0]
  const param = issue?.path?.length ? issue.path.join('.') : null
  const message = issue ? (param ? `${param}: ${issue.message}` : issue.message) : 'Invalid request'
  return new ApiError(400, message, { code: 'invalid_request', param })
}

/** The context a handler of route `R` receives (validated input typed). */
export type RouteContext<R extends RouteConfig> = Parameters<RouteHandler<R, AppEnv>>[0]

/**
 * Registers a documented route whose handler returns a ready Response. zod-openapi would insist on
 * c.json() (a typed response), which would parse and re-serialise bodies that SQL already returns
 * as JSON text; the cast is confined here.
 */
export function handle<R extends RouteConfig>(
  app: OpenAPIHono<AppEnv>,
  route: R,
  handler: (c: RouteContext<R>) => Response | Promise<Response>,
): void {
  app.openapi(route, handler as never)
}

export function router(opts: { strict?: boolean } = {}): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({
    ...opts,
    defaultHook: (result) => {
      if (!result.success) throw validationError(result.error)
    },
  })
}

export const ErrorSchema = z.object({
  error: z.object({
    message: z.string(),
    type: z.string().openapi({ example: 'invalid_request_error' }),
    code: z.string().nullable().openapi({ example: 'invalid_api_key' }),
    param: z.string().nullable(),
  }),
}).openapi('Error')

const ERROR_TEXT: Record<number, string> = {
  400: 'Invalid request (bad or missing field, duplicate)',
  401: 'Missing, malformed, unknown, inactive or expired API key',
  402: 'Insufficient credits',
  403: 'The key lacks the permission, or its IP / referrer rule refuses the request',
  404: 'Not found (or not yours)',
  409: 'A request with this Idempotency-Key is still running',
  413: 'Request body too large',
  422: 'This Idempotency-Key was used with a different body',
  429: 'Rate limited (see Retry-After)',
  500: 'Internal error',
  502: 'The upstream provider failed',
  503: 'The database or the upstream provider is unavailable',
}

export function errors(...statuses: number[]) {
  return Object.fromEntries(
    [...statuses, 500].map((s) => [
      s,
      {
        description: ERROR_TEXT[s] ?? 'Error',
        content: { 'application/json': { schema: ErrorSchema } },
      },
    ]),
  )
}

export const BEARER = [{ bearerAuth: [] }]

const JSON_TYPE = 'application/json; charset=utf-8'

/** A JSON body that is already text (an SQL function's jsonb::text). */
export function jsonText(
  text: string,
  status = 200,
  headers: Record<string, string> = {},
): Response {
  return new Response(text, { status, headers: { 'content-type': JSON_TYPE, ...headers } })
}

/** A JSON body from a value. */
export function json(value: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return jsonText(JSON.stringify(value), status, headers)
}

/** Documents a JSON response. */
export function ok(description: string, schema: z.ZodType) {
  return { 200: { description, content: { 'application/json': { schema } } } }
}
