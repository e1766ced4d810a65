// The reconcile: holds whose worker died before settling (killed at its wall clock or memory limit
// mid-stream, crashed) are settled from OpenRouter's /generation by the generation id noted when
// upstream answered (open-holds.ts). SQL lists them (gateway.reconcile_candidates: open holds older
// than any request can live, and expired holds not settled yet); each is settled by
// `settle_request` exactly once, late if the sweeper expired it meanwhile. A generation whose stats
// are not there yet is left for the next run. Called by the scheduler (routes/internal.ts: pg_cron +
// pg_net on hosted, scripts/scheduler.ts locally) and by admins (POST /admin/reconcile).

import { config } from './config.ts'
import { call } from './db.ts'
import { log } from './log.ts'
import { SETTLE_MARGIN_MS, settleArgs } from './settlement.ts'
import { generationStats } from './upstream.ts'

interface Candidate {
  hold_id: number
  generation_id: string
  model: string
  expired: boolean
}

export interface ReconcileReport {
  candidates: number
  settled: number
  credits_charged: number
  /** No stats at /generation yet (or it could not be reached): the next run tries again. */
  pending: number
  /** Closed meanwhile by its own settle (the request was alive after all). */
  already_settled: number
}

/**
 * The default age of an open hold worth reconciling: longer than any request lives (the stream's
 * maximum, or the upstream timeout of a non-streamed one) plus what its settle may take.
 */
export function defaultMinAgeSeconds(): number {
  return Math.ceil(
    (Math.max(config.streamMaxSeconds * 1000, config.upstreamTimeoutMs) + SETTLE_MARGIN_MS) / 1000,
  )
}

export async function reconcile(
  opts: { minAgeSeconds?: number; limit?: number } = {},
): Promise<ReconcileReport> {
  const candidates = await call<Candidate[]>('reconcile_candidates', [
    opts.minAgeSeconds ?? defaultMinAgeSeconds(),
    opts.limit ?? 50,
  ])
  const report: ReconcileReport = {
    candidates: candidates.length,
    settled: 0,
    credits_charged: 0,
    pending: 0,
    already_settled: 0,
  }
  // A few at a time: each waits on OpenRouter, then one settle.
  const queue = [...candidates]
  const worker = async () => {
    for (let c = queue.shift(); c; c = queue.shift()) {
      const stats = await generationStats(c.generation_id).catch(() => null)
      if (!stats) {
        report.pending++
        continue
      }
      // The request's latency is unknown here: recorded as null, not 0.
      const { hold_id, latency_ms: _unknown, ...usage } = settleArgs(c.hold_id, {
        model: stats.model ?? c.model,
        promptTokens: stats.promptTokens,
        completionTokens: stats.completionTokens,
        cachedTokens: stats.cachedTokens,
        reasoningTokens: stats.reasoningTokens,
        webSearchRequests: stats.webSearchRequests,
        // (exact decimal text, as /generation sent it)
        cost: stats.cost,
        generationId: c.generation_id,
        settledBy: 'generation',
        outcome: 'cancelled',
        latencyMs: 0,
      })
      const s = await call<{ settled: boolean; credits_charged?: number; reason?: string }>(
        'settle_request',
        [hold_id, usage],
      )
      if (s.settled) {
        report.settled++
        report.credits_charged += s.credits_charged ?? 0
        log('warn', 'reconciled from /generation', {
          hold_id: c.hold_id,
          expired: c.expired,
          credits_charged: s.credits_charged,
        })
      } else report.already_settled++
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()])
  return report
}
