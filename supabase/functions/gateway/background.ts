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

// Work that lives only in this isolate's memory (reserved admissions, settles queued in a batch)
// must keep the worker alive as long as it exists: the edge runtime drops a worker early once it has
// no request in flight and no unsettled waitUntil promise, and timers do not count. One promise,
// unresolved while any owner reports work, is registered with waitUntil for all of them.
const busyOwners = new Set<string>()
let releaseWorker: (() => void) | undefined

/** `owner` has in-memory work (true) or none left (false); cheap to call often. */
export function keepWorker(owner: string, busy: boolean): void {
  if (busy) busyOwners.add(owner)
  else busyOwners.delete(owner)
  if (busyOwners.size > 0 && releaseWorker === undefined) {
    const held = new Promise<void>((resolve) => (releaseWorker = resolve))
    if (typeof EdgeRuntime !== 'undefined' && typeof EdgeRuntime?.waitUntil === 'function') {
      EdgeRuntime.waitUntil(held)
    }
  } else if (busyOwners.size === 0 && releaseWorker !== undefined) {
    releaseWorker()
    releaseWorker = undefined
  }
}

/** A log-safe description of an error: its class and code, never its message's payload. */
export function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code
    return `${err.name}${typeof code === 'string' ? ` ${code}` : ''}`
  }
  return typeof err
}
