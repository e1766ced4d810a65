// One request to a gateway at any base URL (ours or the shared one), the body read whole — the
// reliability tests' counterpart of _helpers.ts's api(), which is bound to GATEWAY_URL.

import type { ApiOptions, ApiResponse } from '../gateway/_helpers.ts'

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
    // not JSON
  }
  return { status: res.status, headers: res.headers, text, json }
}

/** `call` bound to one base URL. */
export const client = (base: string) => (path: string, opts?: ApiOptions) => call(base, path, opts)

export const CHAT = {
  model: 'openai/gpt-4o-mini~len-3',
  messages: [{ role: 'user', content: 'hi' }],
  max_tokens: 10,
}
