// Requests to a gateway over real HTTP: the shared stack's (`api`) or any other base URL (a test's
// own functions server: `call`, `client`), the body read whole.

import { GATEWAY_URL } from './stack.ts'

export interface ApiResponse {
  status: number
  headers: Headers
  text: string
  // deno-lint-ignore no-explicit-any
  json: any
}

export interface ApiOptions {
  method?: string
  key?: string
  body?: unknown
  headers?: Record<string, string>
}

/** One request to the gateway; the body is read whole. */
export function api(path: string, opts: ApiOptions = {}): Promise<ApiResponse> {
  return call(GATEWAY_URL, path, opts)
}

/** One request to a gateway at any base URL (a test's own functions server, say). */
export async function call(
  base: string,
  path: string,
  opts: ApiOptions = {},
): Promise<ApiResponse> {
  const headers: Record<string, string> = { ...opts.headers }
  if (opts.key) headers.authorization = `Bearer ${opts.key}`
  let body: string | undefined
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body)
    headers['content-type'] ??= 'application/json'
  }
  const res = await fetch(`${base}${path}`, {
    method: opts.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    body,
  })
  const text = await res.text()
  let json: unknown = undefined
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON (SSE, HTML)
  }
  return { status: res.status, headers: res.headers, text, json }
}

export function chat(key: string, body: Record<string, unknown>, headers?: Record<string, string>) {
  return api('/v1/chat/completions', {
    key,
    body: { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], ...body },
    headers,
  })
}

/** `call` bound to one base URL. */
export const client = (base: string) => (path: string, opts?: ApiOptions) => call(base, path, opts)

/** A small chat request the simulator answers with 3 tokens. */
export const CHAT = {
  model: 'openai/gpt-4o-mini~len-3',
  messages: [{ role: 'user', content: 'hi' }],
  max_tokens: 10,
}

/** The data payloads of an SSE body, in order ('[DONE]' included). */
export function sseData(text: string): string[] {
  return text.split('\n\n').flatMap((event) =>
    event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart())
  ).filter((d) => d !== '')
}
