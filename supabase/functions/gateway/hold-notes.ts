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
// arrives meanwhile in the next. A generation note for a hold already closed here is dropped (the settle
// recorded the generation id itself). Failures are logged and not retried: the cost of a lost note
// is a hold the sweeper expires (a reserved one: released 5 s later, an unreconciled one: uncharged).
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

interface Note {
  holdId: number
  generationId: string | null
}

const notes = new Batcher<Note, number>({
  name: 'hold-notes',
  maxCalls: 1,
  maxBatch: 200,
  call: async (batch) => {
    // A taken reservation is noted whatever happens (it is opened just after this is queued).
    const live = batch.filter((n) => n.generationId === null || isOpen(n.holdId))
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
  inBackground(
    notes.submit(note).catch((err) => {
      log('warn', 'note_holds failed', { hold_id: note.holdId, error: describe(err) })
    }),
    'note_holds',
  )
}

/** A reserved admission was taken by a request: never release it as unused. */
export function taken(hold: Hold): void {
  submit({ holdId: hold.hold_id, generationId: null })
}

/** Upstream answered for `hold` with this generation id (null or empty: nothing to note). */
export function generation(hold: Hold, generationId: string | null): void {
  // OpenRouter's ids are `gen-…`; anything else is not worth a note (nor quoting in an array).
  if (generationId && /^[\w.:-]{1,256}$/.test(generationId)) {
    submit({ holdId: hold.hold_id, generationId })
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
