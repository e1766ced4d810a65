// Work that must outlive the response (settling a hold, refreshing the models cache). On Supabase,
// `EdgeRuntime.waitUntil` keeps the isolate alive until the promise settles; scripts/serve-functions.ts
// provides the same locally and awaits these promises before it shuts down. Where neither exists
// (a bare `deno run`), the promise simply runs on.

import { log } from './log.ts'

declare const EdgeRuntime: { waitUntil(promise: Promise<unknown>): void } | undefined

/** Runs `task` to completion even if the isolate would otherwise be recycled; never rejects. */
export function inBackground<T>(task: Promise<T>, what: string): Promise<T | undefined> {
  const guarded = task.catch((err) => {
    log('error', `${what} failed`, { error: describe(err) })
    return undefined
  })
  if (typeof EdgeRuntime !== 'undefined' && typeof EdgeRuntime?.waitUntil === 'function') {
    EdgeRuntime.waitUntil(guarded)
  }
  return guarded
}

/** A log-safe description of an error: its class and code, never its message's payload. */
export function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code
    return `${err.name}${typeof code === 'string' ? ` ${code}` : ''}`
  }
  return typeof err
}
