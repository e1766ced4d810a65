// The holds this worker admitted and has not settled or voided yet: they keep the worker alive, and
// the worker keeps them alive in the database (docs/SQL-API.md, "Holds across worker lifecycles").
//
// - The worker. The edge runtime drops a worker as soon as it has no request in flight and nothing
//   under `EdgeRuntime.waitUntil` (background.ts); a client that hangs up leaves the request's settle
//   to work registered a moment later. An open hold is such work.
// - The database. A hold is leased: admission gives it hold_lease_seconds (6 s), and the sweeper
//   (every 2 s) voids a hold whose lease lapsed. While a hold is open, this worker renews its lease
//   every RENEW_MS through gateway.note_holds, one call for all of them. A worker killed mid-request
//   (at its wall clock, for memory, a crash) stops renewing, so its holds lapse within seconds; the
//   server needs no word from it. A lapsed hold upstream never answered for is released; one with a
//   generation id stays held until the reconcile settles it (released, its credits could be spent
//   before that charge).
//
// The same call says what the database must know about the hold meanwhile:
// - `taken`: a reserved admission (reservations.ts) is now a request's. The server releases reserved
//   admissions older than 5 s (gateway.release_reserved_admissions), so the one in use says so first.
// - its generation id, once upstream answered: if the worker dies before the settle, the scheduled
//   reconcile settles the lapsed hold from OpenRouter's /generation by it (reconcile.ts); only a
//   hold that never got one stays uncharged (counted by the monitor).
//
// A hold is first noted when it has been open NOTE_AFTER_MS, or its generation id known for
// GENERATION_NOTE_AFTER_MS, which few requests last (the settle records the generation id and closes
// the hold): measured, a note per request doubled the calls per request and, behind PgBouncer
// during a Postgres restart, left requests waiting for connections; a tick sends all that are due
// in one call. The price: a worker killed within about half a second of upstream's answer leaves a
// hold without a generation id. A failed note is logged; the next tick sends it again.

import { describe, inBackground, keepWorker } from './background.ts'
import { call } from './db.ts'
import type { Hold } from './hold.ts'
import { log } from './log.ts'

/** How long a hold is open before it is first noted (its lease renewed). */
const NOTE_AFTER_MS = 1_000
/** How long a generation id is known before it is noted, however young its hold. */
const GENERATION_NOTE_AFTER_MS = 250
/** How often a noted hold's lease is renewed: three renewals fit in the default 6 s lease. */
const RENEW_MS = 2_000
/** How often the worker looks at its open holds while it has any. */
const TICK_MS = 500

interface Open {
  /** When its lease began (epoch ms): its admission, for a reservation when it was reserved. */
  since: number
  generationId: string | null
  /** When the generation id became known (epoch ms; 0: not yet). */
  generationAt: number
  /** When it was last noted (0: never), and the generation id that note carried. */
  notedAt: number
  notedGeneration: string | null
}

const open = new Map<number, Open>()
let ticker: ReturnType<typeof setInterval> | undefined
/** When the note_holds call in flight was sent (0: none). */
let notingSince = 0

/**
 * `hold` was admitted here (`since`: when its lease began, if earlier than now): the worker stays,
 * and the hold's lease is renewed, until it is closed. Idempotent: the first `since` stays.
 */
export function opened(hold: Hold, since = Date.now()): Hold {
  if (!open.has(hold.hold_id)) {
    open.set(hold.hold_id, {
      since,
      generationId: null,
      generationAt: 0,
      notedAt: 0,
      notedGeneration: null,
    })
  }
  keepWorker('holds', true)
  ticker ??= setInterval(tick, TICK_MS)
  return hold
}

/** `hold` was settled or voided (or given up on): idempotent. */
export function closed(hold: Hold): void {
  if (open.delete(hold.hold_id) && open.size === 0) {
    keepWorker('holds', false)
    clearInterval(ticker)
    ticker = undefined
  }
}

/** Whether `holdId` is still open in this worker (admitted here, neither settled nor voided). */
export function isOpen(holdId: number): boolean {
  return open.has(holdId)
}

/**
 * A reserved admission (reserved at `reservedAt`, epoch ms) was taken by a request: it is open from
 * then, so that it is noted (no longer reserved) well before the server's 5 s.
 */
export function taken(hold: Hold, reservedAt: number): void {
  opened(hold, reservedAt)
}

/** Upstream answered for `hold` with this generation id (null or empty: nothing to note). */
export function generation(hold: Hold, generationId: string | null): void {
  const o = open.get(hold.hold_id)
  // OpenRouter's ids are `gen-…`; anything else is not worth a note (nor quoting in an array).
  if (o && generationId && /^[\w.:-]{1,256}$/.test(generationId)) {
    o.generationId = generationId
    o.generationAt = Date.now()
  }
}

/**
 * The holds to note now: a generation id known long enough and not noted yet; or open long enough,
 * and never noted or due for renewal.
 */
function due(now: number): [number, Open][] {
  const out: [number, Open][] = []
  for (const [id, o] of open) {
    const news = o.generationId !== o.notedGeneration &&
      now - o.generationAt >= GENERATION_NOTE_AFTER_MS
    const renew = now - o.since >= NOTE_AFTER_MS &&
      (o.notedAt === 0 || now - o.notedAt >= RENEW_MS || o.generationId !== o.notedGeneration)
    if (news || renew) {
      out.push([id, o])
      if (out.length === 500) break // one call's worth; the rest on the next tick
    }
  }
  return out
}

/**
 * One note_holds call at a time: a tick while one is in flight waits for the next — unless that call
 * has been out longer than RENEW_MS. A call stuck on a dead connection (postgres.js has no query
 * timeout) must not stop the renewals: the next one goes out on another of the pool's connections.
 */
function tick(): void {
  const now = Date.now()
  if (notingSince !== 0 && now - notingSince < RENEW_MS) return
  const batch = due(now)
  if (batch.length === 0) return
  notingSince = now
  // Postgres array literals: a JS array would go as jsonb (db.ts). Generation ids are quoted.
  const sent = batch.map(([id, o]) => ({ o, id, generationId: o.generationId }))
  const ids = `{${sent.map((n) => n.id).join(',')}}`
  const gens = `{${
    sent.map((n) => n.generationId === null ? 'NULL' : JSON.stringify(n.generationId)).join(',')
  }}`
  inBackground(
    call('note_holds', [ids, gens])
      .then(() => {
        for (const n of sent) {
          n.o.notedAt = now
          n.o.notedGeneration = n.generationId
        }
      })
      .catch((err) =>
        log('warn', 'note_holds failed', { holds: batch.length, error: describe(err) })
      )
      .finally(() => {
        if (notingSince === now) notingSince = 0
      }),
    'note_holds',
  )
}
