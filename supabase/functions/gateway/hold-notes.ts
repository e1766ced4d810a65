// What the database must know about an open hold between its admission and its settle, so that no
// hold lapses while its request lives and none is lost when its worker dies (docs/SQL-API.md,
// "Holds across worker lifecycles"):
//
// - `taken`: a reserved admission (reservations.ts) is now a request's. The server releases reserved
//   admissions older than 5 s (gateway.release_reserved_admissions, on pg_cron) — the bound on what a
//   vanished worker leaves reserved — so the one in use must say so first.
// - `generation`: upstream answered with this generation id. If the worker dies before the settle
//   (killed at its wall clock or memory limit mid-stream), the scheduled reconcile settles the hold
//   from OpenRouter's /generation by it (reconcile.ts); only a hold that never got one may expire
//   uncharged.
//
// Both go through gateway.note_holds, batched: one call while none is in flight, everything that
// arrives meanwhile in the next. Neither is sent for a request that ends soon, which is almost all of
// them (its settle records the generation id and closes the hold): a note waits until the hold has
// been open for NOTE_AFTER_MS (a taken reservation: until 2.5 s after it was reserved, half the
// server's 5 s) and is dropped if the hold closed meanwhile. Measured: a note per request doubled the
// calls per request and, behind PgBouncer during a Postgres restart, left requests waiting for
// connections. The price: a worker killed within a second of upstream's answer leaves a hold without
// a generation id, which expires uncharged (counted by the monitor). Failures are logged, not
// retried: a lost note costs the same.
//
// - `keepAlive`: a stream that could outlive its hold's expiry (hold_timeout_seconds below the
//   stream's maximum duration plus the settle's margin) extends it once, in time
//   (gateway.extend_holds). With the defaults (900 s ≥ 300 s + 180 s) no call is ever made.

import { describe, inBackground } from './background.ts'
import { Batcher } from './batcher.ts'
import { call } from './db.ts'
import type { Hold } from './hold.ts'
import { log } from './log.ts'
import { isOpen } from './open-holds.ts'

/** How long a hold is open before its generation id is noted. */
const NOTE_AFTER_MS = 1_000
/** A taken reservation is noted this long after it was reserved (the server releases at 5 s). */
const TAKEN_NOTE_AT_MS = 2_500

interface Note {
  holdId: number
  generationId: string | null
}

const notes = new Batcher<Note, number>({
  name: 'hold-notes',
  maxCalls: 1,
  maxBatch: 200,
  call: async (batch) => {
    const live = batch.filter((n) => isOpen(n.holdId))
    if (live.length > 0) {
      // Postgres array literals: a JS array would go as jsonb (db.ts). Generation ids are quoted.
      const ids = `{${live.map((n) => n.holdId).join(',')}}`
      const gens = `{${
        live.map((n) => n.generationId === null ? 'NULL' : JSON.stringify(n.generationId)).join(',')
      }}`
      await call('note_holds', [ids, gens])
    }
    return batch.map(() => 0)
  },
})

function submit(note: Note): void {
  if (!isOpen(note.holdId)) return
  inBackground(
    notes.submit(note).catch((err) => {
      log('warn', 'note_holds failed', { hold_id: note.holdId, error: describe(err) })
    }),
    'note_holds',
  )
}

/** The hold is noted after `ms` if it is still open (its request still runs) by then. */
function later(note: Note, ms: number): void {
  if (ms <= 0) return submit(note)
  // The open hold keeps the worker alive meanwhile (open-holds.ts).
  setTimeout(() => submit(note), ms)
}

/**
 * A reserved admission (reserved at `reservedAt`, epoch ms) was taken by a request: never release
 * it as unused while that request runs.
 */
export function taken(hold: Hold, reservedAt: number): void {
  later({ holdId: hold.hold_id, generationId: null }, reservedAt + TAKEN_NOTE_AT_MS - Date.now())
}

/** Upstream answered for `hold` with this generation id (null or empty: nothing to note). */
export function generation(hold: Hold, generationId: string | null): void {
  // OpenRouter's ids are `gen-…`; anything else is not worth a note (nor quoting in an array).
  if (generationId && /^[\w.:-]{1,256}$/.test(generationId)) {
    later({ holdId: hold.hold_id, generationId }, NOTE_AFTER_MS)
  }
}

/**
 * What a settle may take after its stream ended: the /generation lookups (about 10 s), and the
 * retries while the database is unreachable (about 2 minutes, settlement.ts).
 */
export const SETTLE_MARGIN_MS = 180_000

/**
 * The stream of `hold` may run until `deadline` (epoch ms): if its hold would expire before that
 * plus the settle margin, it is extended in time, a minute before it would expire. Returns a
 * cancel function (the stream ended).
 */
export function keepAlive(hold: Hold, deadline: number): () => void {
  const expires = hold.expires_at ? Date.parse(hold.expires_at) : NaN
  const until = deadline + SETTLE_MARGIN_MS
  if (!Number.isFinite(expires) || expires >= until) return () => {}
  const at = Math.max(0, expires - Date.now() - 60_000)
  const extend = () =>
    inBackground(
      call('extend_holds', [`{${hold.hold_id}}`, new Date(until).toISOString()]),
      'extend_holds',
    )
  if (at === 0) {
    extend()
    return () => {}
  }
  const timer = setTimeout(extend, at)
  return () => clearTimeout(timer)
}
