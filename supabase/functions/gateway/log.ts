// Structured logs: one JSON line per request (and one per settlement, which may come after the
// response). Fields are chosen, never dumped: request id, route, status, latency, account, key
// PREFIX, model, hold, tokens, credits. Never a full key, the upstream key, a prompt or SQL text.

import { config } from './config.ts'

export type LogFields = Record<string, string | number | boolean | null | undefined>

export function log(level: 'info' | 'warn' | 'error', msg: string, fields: LogFields = {}): void {
  if (level === 'info' && !config.logRequests) return
  const line = JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields })
  if (level === 'error') console.error(line)
  else console.log(line)
}
