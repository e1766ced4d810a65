// What a completion reports of its charge, for both response paths (JSON and SSE): `gateway_usage`,
// the charge its settle will make, computed from the hold so that no response waits for the settle
// (which runs after the response, in background: settlement.ts).

import { creditsFor } from './credits.ts'
import { type Hold, tokens, type Usage } from './hold.ts'

/**
 * What settling `usage` will charge the hold (settle_request's own formula, see credits.ts), and the
 * balance after it as of admission: requests of the same account running concurrently may move the
 * actual balance. Lets a response report the charge without waiting for the settle.
 */
export function charge(hold: Hold, usage: Usage): { credits: number; balanceAfter: number } {
  const credits = creditsFor(
    tokens(usage.promptTokens),
    tokens(usage.completionTokens),
    hold.prompt_multiplier,
    hold.completion_multiplier,
  )
  return { credits, balanceAfter: hold.balance - credits }
}

/** Inserts `"name": valueJson` as the last member of the JSON object text `objectJson`. */
export function appendMember(objectJson: string, name: string, valueJson: string): string {
  const end = objectJson.lastIndexOf('}')
  const head = objectJson.slice(0, end).trimEnd()
  const sep = head.endsWith('{') ? '' : ','
  return `${head}${sep}"${name}":${valueJson}}`
}

/** The `gateway_usage` member's JSON: the charge, the balance after it, the key it was charged to. */
export function gatewayUsageJson(
  charged: number | null | undefined,
  balanceAfter: number | null | undefined,
  keyPrefix: string,
): string {
  return JSON.stringify({
    tokens_charged: charged ?? null,
    user_balance_after: balanceAfter ?? null,
    user_api_key: keyPrefix,
  })
}
