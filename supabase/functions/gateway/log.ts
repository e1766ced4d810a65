// Structured logs: one JSON line per request; a non-streamed completion's line carries its tokens
// and charge. A settlement that line could not report (streams, whose line is written with the
// headers; settles from generation stats or our own count; repeats) gets a line of its own. Fields
// are chosen, never dumped: request id, route, status, latency, account, key PREFIX, model, hold,
// tokens, credits. Never a full key, the upstream key, a prompt or SQL text.

import { maskKeysIn } from '../_shared/keys.ts'
import { config } from './config.ts'

export type LogFields = Record<string, string | number | boolean | null | undefined>

// Some fields carry client text (the model a client asked for). A client that pastes its key there by
// mistake must not get it logged: anything key-shaped in a string field is cut to its display prefix.
// (Found by supabase/tests/http/bad-input-every-route.test.ts: a fuzzed model name shaped like a key
// reached the log.)
function scrubbed(fields: LogFields): LogFields {
  let out = fields
  for (const name in fields) {
    const value = fields[name]
    if (typeof value !== 'string') continue
    const safe = maskKeysIn(value)
    if (safe === value) continue
    if (out === fields) out = { ...fields }
    out[name] = safe
  }
  return out
}

export function log(level: 'info' | 'warn' | 'error', msg: string, fields: LogFields = {}): void {
  if (level === 'info' && !config.logRequests) return
  const line = JSON.stringify({ ts: new Date().toISOString(), level, msg, ...scrubbed(fields) })
  if (level === 'error') console.error(line)
  else console.log(line)
}
