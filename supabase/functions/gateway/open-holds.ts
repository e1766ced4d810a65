// Holds this worker admitted and has not settled or voided yet keep the worker alive.
//
// The edge runtime drops a worker as soon as it has no request in flight and nothing under
// `EdgeRuntime.waitUntil` (background.ts); a client that hangs up leaves the request's settle to
// work registered a moment later. Dropped in between, the hold would wait for the sweeper: credits
// held for its timeout, then unbilled.

import { keepWorker } from './background.ts'
import type { Hold } from './hold.ts'

const open = new Set<number>()

/** `hold` was admitted here: the worker stays until it is closed. */
export function opened(hold: Hold): Hold {
  open.add(hold.hold_id)
  keepWorker('holds', true)
  return hold
}

/** `hold` was settled or voided (or given up on): idempotent. */
export function closed(hold: Hold): void {
  if (open.delete(hold.hold_id) && open.size === 0) keepWorker('holds', false)
}

/** Whether `holdId` is still open in this worker (admitted here, neither settled nor voided). */
export function isOpen(holdId: number): boolean {
  return open.has(holdId)
}
