// Settles a request whose usage object never arrived (client gone, stream broken, a body that does
// not parse): from OpenRouter's generation stats for its X-Generation-Id once they appear (a few
// seconds after the generation ends), else from our own count. Never unbilled.

import { inBackground } from './background.ts'
import { config } from './config.ts'
import type { Hold, Outcome } from './hold.ts'
import { closed } from './open-holds.ts'
import { settle, type Settlement } from './settlement.ts'
import { generationStats } from './upstream.ts'

export interface LostUsage {
  model: string
  generationId: string | null
  /** Our own count, the last resort: the prompt estimate and the streamed content chunks. */
  countedPromptTokens: number
  countedCompletionTokens: number
  /** Input images sent (billed per image where the catalog prices them). */
  images: number
  outcome: Outcome
  latencyMs: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * Settles a request whose usage object never arrived (client gone, stream broken): from
 * OpenRouter's generation stats once they appear, else from our own count. Never unbilled.
 */
export function settleWithoutUsage(hold: Hold, lost: LostUsage): Promise<Settlement | undefined> {
  return inBackground(
    (async () => {
      if (lost.generationId) {
        for (const delay of config.generationLookupDelaysMs) {
          await sleep(delay)
          const stats = await generationStats(lost.generationId).catch(() => null)
          if (stats) {
            return await settle(hold, {
              model: lost.model,
              promptTokens: stats.promptTokens,
              completionTokens: stats.completionTokens,
              cachedTokens: stats.cachedTokens,
              reasoningTokens: stats.reasoningTokens,
              webSearchRequests: stats.webSearchRequests,
              images: lost.images,
              cost: stats.cost,
              generationId: lost.generationId,
              settledBy: 'generation',
              outcome: lost.outcome,
              latencyMs: lost.latencyMs,
            })
          }
        }
      }
      return await settle(hold, {
        model: lost.model,
        promptTokens: lost.countedPromptTokens,
        completionTokens: lost.countedCompletionTokens,
        images: lost.images,
        cost: null,
        generationId: lost.generationId,
        settledBy: 'stream_count',
        outcome: lost.outcome,
        latencyMs: lost.latencyMs,
      })
    })().finally(() => closed(hold)),
    'settle without usage',
  )
}
