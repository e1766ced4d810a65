// POST /v1/chat/completions, OpenAI-compatible (stream or not). The route is registered by hand
// rather than through openapi()'s validators so the hot path is exactly: check the key's shape,
// parse the body once, validate it, then completions.ts (one SQL call to admit, one to settle).

import { createRoute } from '@hono/zod-openapi'
import type { Context } from 'hono'
import { caller } from '../identity.ts'
import { releasedAtEnd, reserveParsed } from '../body-guard.ts'
import { ChatCompletionRequest } from '../chat-request.ts'
import { containersIn, MAX_CONTAINERS } from '../json-text.ts'
import { chatCompletion } from '../completions.ts'
import { config } from '../config.ts'
import { ApiError } from '../errors.ts'
import * as idempotency from '../idempotency.ts'
import * as s from '../schemas.ts'
import { BEARER, errors, router, validationError } from './common.ts'

export const chatRoutes = router()

const route = createRoute({
  method: 'post',
  path: '/v1/chat/completions',
  tags: ['chat'],
  summary: 'Chat completion via OpenRouter, metered in credits (stream or not)',
  description: "OpenAI's chat completions body; fields OpenRouter accepts beyond it (tools, " +
    'response_format, provider, reasoning, models, transforms, …) pass through. max_tokens is ' +
    'capped to what the credit hold covers. Streams are SSE; the usage chunk before `[DONE]` ' +
    'carries `gateway_usage`. Responses carry x-ratelimit-{limit,remaining,reset}-{requests,tokens}. ' +
    'An Idempotency-Key header (non-streamed only) makes a retry return the first answer uncharged.',
  security: BEARER,
  request: {
    body: { required: true, content: { 'application/json': { schema: ChatCompletionRequest } } },
  },
  responses: {
    200: {
      description: 'The completion (JSON), or an SSE stream of chunks when `stream` is true',
      content: {
        'application/json': { schema: s.ChatCompletion },
        'text/event-stream': { schema: { type: 'string' } },
      },
    },
    ...errors(400, 401, 402, 403, 413, 429, 502, 503),
  },
})
chatRoutes.openAPIRegistry.registerPath(route)

// Tests of upstream timeouts shorten the wait with this header; honoured only when the upstream
// is the simulator, so it is no knob in production.
const TIMEOUT_HEADER = 'x-gateway-upstream-timeout-ms'

chatRoutes.post('/v1/chat/completions', async (c) => {
  const who = await caller(c)
  const text = await c.req.text()
  const containers = containersIn(text)
  if (containers > MAX_CONTAINERS) {
    throw new ApiError(
      413,
      `The request body holds more than ${MAX_CONTAINERS} JSON objects and arrays`,
      { code: 'request_too_large' },
    )
  }
  // The parsed body lives as long as its request: its memory is reserved until the response ends.
  const release = reserveParsed(containers)
  if (!release) return completion(c, who, text)
  try {
    return releasedAtEnd(await completion(c, who, text), release)
  } catch (err) {
    release()
    throw err
  }
})

async function completion(
  c: Context,
  who: Awaited<ReturnType<typeof caller>>,
  text: string,
): Promise<Response> {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw new ApiError(400, 'The request body is not valid JSON', { code: 'invalid_json' })
  }
  const parsed = ChatCompletionRequest.safeParse(raw)
  if (!parsed.success) throw validationError(parsed.error)
  let timeoutMs = config.upstreamTimeoutMs
  const override = config.upstreamSimulated ? Number(c.req.header(TIMEOUT_HEADER)) : NaN
  if (override > 0) timeoutMs = override
  const opts = { timeoutMs, log: c.get('log') }

  const idempotencyKey = c.req.header('idempotency-key')
  if (idempotencyKey === undefined) return chatCompletion(who, parsed.data, text, opts)
  if (parsed.data.stream) {
    throw new ApiError(400, 'Idempotency-Key is supported for non-streamed completions only', {
      code: 'invalid_request',
      param: 'stream',
    })
  }
  const replay = await idempotency.claim(who, idempotencyKey, text)
  if (replay) return replay
  let stored: Promise<unknown> | undefined
  try {
    const res = await chatCompletion(who, parsed.data, text, {
      ...opts,
      onResult: (body) => stored = idempotency.complete(who, idempotencyKey, 200, body),
    })
    // Stored before the answer goes out, so a retry after it is a replay, never a 409.
    await stored
    return res
  } catch (err) {
    // Nothing worth replaying: release the key so that a retry runs again.
    await idempotency.complete(who, idempotencyKey, 0, null)
    throw err
  }
}
