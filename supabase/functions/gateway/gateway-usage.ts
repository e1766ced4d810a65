// What a completion reports of its charge, for both response paths (JSON and SSE): upstream's usage
// read exactly (every detail OpenRouter reports, `cost` as the decimal text it sent), the charge its
// settle will make computed from the hold (credits.ts) so that no response waits for the settle
// (which runs after the response, in background: settlement.ts), the usage rewritten with what the
// client pays, and the `gateway_usage` member.

import { topLevelMembers } from './json-text.ts'
import { chargeFor, creditsUsd, decAtLeast } from './credits.ts'
import { chargedCounts, type Hold, tokenCount, tokens, type Usage } from './hold.ts'

/** Upstream's usage object, as far as billing reads it (OpenRouter's ChatUsage). */
export interface UpstreamUsage {
  prompt_tokens?: number
  completion_tokens?: number
  prompt_tokens_details?: { cached_tokens?: number; cache_write_tokens?: number } | null
  completion_tokens_details?: { reasoning_tokens?: number } | null
  server_tool_use_details?: { web_search_requests?: number } | null
  cost?: number | null
  [member: string]: unknown
}

/** The counts of a usage (the rest of Usage is the request's: model, ids, outcome, timing). */
export type UsageCounts = Pick<
  Usage,
  | 'promptTokens'
  | 'completionTokens'
  | 'cachedTokens'
  | 'cacheWriteTokens'
  | 'reasoningTokens'
  | 'webSearchRequests'
  | 'cost'
>

// JSON.parse's reviver gets the source text of a primitive as `context.source` (Deno 2, V8): a
// cost sent as 0.000001234567890123 would lose digits through a double.
type Reviver = (
  this: unknown,
  key: string,
  value: unknown,
  context?: { source?: string },
) => unknown

/**
 * Parses a usage object's JSON text, keeping `cost` as the exact decimal text upstream sent: the
 * text of its last `cost` member (JSON.parse keeps the last), when that is a number. Not a reviver
 * (parseWithSources): a reviver takes V8 off its fast JSON.parse path and calls back for every
 * value, 7 of the 11 µs of reading a completion's usage (docs/PERFORMANCE.md, 2026-12-03).
 */
export function parseUsage(text: string): { usage: UpstreamUsage; costText: string | null } {
  const usage = JSON.parse(text) as UpstreamUsage
  const isObject = usage !== null && typeof usage === 'object' && !Array.isArray(usage)
  return { usage, costText: isObject && typeof usage.cost === 'number' ? costSource(text) : null }
}

/** The source text of the value of the last top-level `cost` member of an object's JSON text. */
function costSource(objectJson: string): string | null {
  const m = memberValue(objectJson, 'cost')
  // After JSON.parse accepted the text, what surrounds a value is JSON whitespace only.
  return m ? objectJson.slice(m.start, m.end).trim() : null
}

/**
 * JSON.parse, remembering the source text of every number named `key`: `sourceOf(o)` is that of
 * `o[key]` (or null).
 */
export function parseWithSources(
  text: string,
  key: string,
): { value: unknown; sourceOf: (o: unknown) => string | null } {
  const sources = new WeakMap<object, string>()
  const reviver: Reviver = function (k, value, context) {
    if (k === key && typeof value === 'number' && context?.source && this) {
      sources.set(this as object, context.source)
    }
    return value
  }
  const value = (JSON.parse as (t: string, r: Reviver) => unknown)(text, reviver)
  return {
    value,
    sourceOf: (o) => (o !== null && typeof o === 'object' ? sources.get(o) ?? null : null),
  }
}

// DUPLICATE of gateway.usage_facts' check of `cost` (supabase/schemas/06_settlement.sql): a cost it
// refuses fails the whole settle (the hold stays open until the sweeper, and the response would
// report a charge nobody made), so such a cost is settled as unknown, priced from the hold.
// supabase/tests/http/hostile-usage.test.ts sends upstream costs on both sides of it.
const COST_TEXT = /^[0-9]{1,7}(\.[0-9]{0,30})?([eE][-+]?[0-9]{1,2})?$/
const COST_LIMIT_USD = '1000000'

/** A cost's source text when it is a non-negative decimal settle_request takes; else null. */
export function costText(text: string | null): string | null {
  return text !== null && COST_TEXT.test(text) && !decAtLeast(text, COST_LIMIT_USD) ? text : null
}

/** The counts upstream's usage reports, every detail OpenRouter gives; undefined where absent. */
export function usageCounts(
  u: UpstreamUsage,
  cost: string | null,
): Partial<UsageCounts> & Pick<UsageCounts, 'cost'> {
  return {
    promptTokens: tokenCount(u.prompt_tokens),
    completionTokens: tokenCount(u.completion_tokens),
    cachedTokens: tokenCount(u.prompt_tokens_details?.cached_tokens),
    cacheWriteTokens: tokenCount(u.prompt_tokens_details?.cache_write_tokens),
    reasoningTokens: tokenCount(u.completion_tokens_details?.reasoning_tokens),
    webSearchRequests: tokenCount(u.server_tool_use_details?.web_search_requests),
    cost: costText(cost),
  }
}

export interface ReportedCharge {
  credits: number
  /** What the client pays, USD: credits × usd_per_credit, exact decimal text. */
  usd: string
  /** The balance after it, as of admission. */
  balanceAfter: number
}

/**
 * What settling `usage` will charge the hold (settle_request's own formula, see credits.ts), what
 * that costs the client in USD, and the balance after it as of admission: requests of the same
 * account running concurrently may move the actual balance. Undefined when only the settle can say
 * (openrouter/auto served a model outside the candidates: the response then waits for the settle).
 */
export function charge(hold: Hold, usage: Usage): ReportedCharge | undefined {
  const c = chargeFor(hold.pricing, chargedCounts(usage))
  return c && settled(hold, c.credits)
}

/** A charge as responses report it, from the credits charged. */
export function settled(hold: Hold, credits: number): ReportedCharge {
  return {
    credits,
    usd: creditsUsd(credits, hold.pricing.usd_per_credit),
    balanceAfter: hold.balance - credits,
  }
}

const COST = '"__gateway_cost__"'

/**
 * Upstream's usage object rewritten for the client: `cost` is what the client pays (credits ×
 * usd_per_credit, an exact decimal written as a JSON number), never the operator's upstream cost,
 * and `cost_details` (upstream's cost by part) is null, as OpenRouter's schema allows. Every other
 * member (token counts and their details) as upstream sent it.
 */
export function clientUsageJson(usage: UpstreamUsage, usd: string | null): string {
  const json = JSON.stringify({
    ...usage,
    cost: usd === null ? null : '__gateway_cost__',
    cost_details: null,
  })
  return usd === null ? json : json.replace(COST, usd)
}

/**
 * The `usage` member of a completion's or a chunk's JSON text: where its value is (the last's, as
 * JSON.parse keeps the last), and where the values of the others are when upstream named it twice.
 */
function usageMember(objectJson: string): UsageAt | undefined {
  const all = topLevelMembers(objectJson).filter((x) => x.name === 'usage')
  if (all.length === 0) return undefined
  const values = all.map((m) => valueAt(objectJson, m))
  const last = values.pop()!
  return values.length === 0 ? last : { ...last, earlier: values }
}

/**
 * Where the value of the last top-level member `name` of an object's JSON text is, blanks before it
 * included (JSON.parse keeps the last of duplicate members: so does this).
 */
function memberValue(objectJson: string, name: string): { start: number; end: number } | undefined {
  const m = topLevelMembers(objectJson).findLast((x) => x.name === name)
  return m && valueAt(objectJson, m)
}

/** Where a member's value is in its object's JSON text, blanks before it included. */
function valueAt(
  objectJson: string,
  m: { start: number; end: number },
): { start: number; end: number } {
  const colon = objectJson.indexOf(':', objectJson.indexOf('"', m.start + 1) + 1)
  return { start: colon + 1, end: m.end }
}

/** Where a usage member's value is in its completion's or chunk's JSON text. */
export interface UsageAt {
  start: number
  end: number
  /**
   * The values of the `usage` members before it, when upstream named it more than once: rewritten
   * alike (left as they were, upstream's cost in them was there for the client to read).
   */
  earlier?: { start: number; end: number }[]
}

/**
 * The usage object of a completion's or a chunk's JSON text (JSON.parse has accepted it), with its
 * cost's exact text and where it is (for withClientUsage: the text is scanned once); undefined
 * when it has none.
 */
export function readUsage(
  objectJson: string,
): { usage: UpstreamUsage; costText: string | null; at: UsageAt } | undefined {
  const at = usageMember(objectJson)
  if (!at) return undefined
  const parsed = parseUsage(objectJson.slice(at.start, at.end))
  const u = parsed.usage as unknown
  return u !== null && typeof u === 'object' && !Array.isArray(u) ? { ...parsed, at } : undefined
}

/**
 * The completion's or chunk's JSON text with its `usage` rewritten for the client
 * (clientUsageJson); `at`: where readUsage found the usage in this same text.
 */
export function withClientUsage(
  objectJson: string,
  usage: UpstreamUsage,
  usd: string | null,
  at: UsageAt | undefined = usageMember(objectJson),
): string {
  if (!at) return objectJson
  const client = clientUsageJson(usage, usd)
  let out = ''
  let from = 0
  for (const v of [...(at.earlier ?? []), at]) {
    out += `${objectJson.slice(from, v.start)}${client}`
    from = v.end
  }
  return out + objectJson.slice(from)
}

/** Inserts `"name": valueJson` as the last member of the JSON object text `objectJson`. */
export function appendMember(objectJson: string, name: string, valueJson: string): string {
  const end = objectJson.lastIndexOf('}')
  const head = objectJson.slice(0, end).trimEnd()
  const sep = head.endsWith('{') ? '' : ','
  return `${head}${sep}"${name}":${valueJson}}`
}

/**
 * The `gateway_usage` member's JSON: the credits charged and the tokens they were for (prompt +
 * completion; the spec's clients read `tokens_charged`), the cached and reasoning tokens among
 * them, the balance after the charge, the key it was charged to. Nulls when unknown.
 */
export function gatewayUsageJson(
  charged: ReportedCharge | null | undefined,
  usage: Usage | null | undefined,
  keyPrefix: string,
): string {
  return JSON.stringify({
    credits_charged: charged?.credits ?? null,
    tokens_charged: usage ? tokens(usage.promptTokens) + tokens(usage.completionTokens) : null,
    cached_tokens: usage ? tokens(usage.cachedTokens ?? 0) : null,
    reasoning_tokens: usage ? tokens(usage.reasoningTokens ?? 0) : null,
    user_balance_after: charged?.balanceAfter ?? null,
    user_api_key: keyPrefix,
  })
}
