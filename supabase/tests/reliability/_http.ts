// The reliability tests' requests to a gateway at any base URL (ours or the shared one): the same
// call() the gateway tests use, and a client bound to one base URL.

import { type ApiOptions, call } from '../gateway/_helpers.ts'

export { call }

/** `call` bound to one base URL. */
export const client = (base: string) => (path: string, opts?: ApiOptions) => call(base, path, opts)

export const CHAT = {
  model: 'openai/gpt-4o-mini~len-3',
  messages: [{ role: 'user', content: 'hi' }],
  max_tokens: 10,
}
