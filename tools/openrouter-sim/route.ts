// Which models may serve a request (`model`, the `models` fallback list, `openrouter/auto`), and
// what each would do with it: web search (`:online`, the web plugin, web_search_options) and
// reasoning. The choice among candidates is made in chat.ts, where their costs are known.

import { AUTO_CANDIDATES, AUTO_ID, type ResolvedModel, resolveModel } from './catalog.ts'
import { parseModel, type Spec } from './spec.ts'

export interface Candidate {
  /** The id as echoed in responses: as requested, without `~` suffixes (variants kept). */
  id: string
  /** The catalog row it resolved to (prompt caches are per catalog model). */
  catalogId: string
  spec: Spec
  resolved: ResolvedModel
}

export interface Routing {
  /** In OpenRouter's order: `model`, then `models`; `openrouter/auto` expands to its choices. */
  candidates: Candidate[]
  /** `openrouter/auto` when the auto router picks, else null (as /generation's `router`). */
  router: string | null
  /** The first requested id's spec: its `~len`, `~reason`, `~delay`, `~slow`, `~route` knobs. */
  primary: Spec
}

// deno-lint-ignore no-explicit-any -- an arbitrary client body, checked field by field
type Json = any

function candidate(raw: string): Candidate | Candidate[] | undefined {
  const spec = parseModel(raw)
  if (!spec) return undefined
  if (spec.id === AUTO_ID) {
    return AUTO_CANDIDATES.map((id) => ({
      id,
      catalogId: id,
      spec: { ...spec, id },
      resolved: resolveModel(id)!,
    }))
  }
  const resolved = resolveModel(spec.id)
  if (!resolved) return undefined
  return { id: spec.id, catalogId: resolved.model.id, spec, resolved }
}

/** The candidates of a chat body, or the 400 message OpenRouter answers with. */
export function route(body: Json): Routing | string {
  const requested: string[] = []
  if (typeof body.model === 'string' && body.model !== '') requested.push(body.model)
  if (body.models !== undefined) {
    if (!Array.isArray(body.models) || !body.models.every((m: unknown) => typeof m === 'string')) {
      return 'models must be an array of model IDs'
    }
    requested.push(...body.models)
  }
  if (requested.length === 0) return 'No model provided'
  const candidates: Candidate[] = []
  let router: string | null = null
  for (const raw of requested) {
    const c = candidate(raw)
    if (!c) return `${raw} is not a valid model ID`
    if (Array.isArray(c)) router = AUTO_ID
    for (const one of Array.isArray(c) ? c : [c]) {
      if (!candidates.some((x) => x.id === one.id)) candidates.push(one)
    }
  }
  return { candidates, router, primary: parseModel(requested[0])! }
}

export interface WebSearch {
  results: number
  /** The model's own engine, priced at its pricing.web_search; else Exa. */
  native: boolean
}

export const DEFAULT_WEB_RESULTS = 5

/** The web plugin entry, if any, and whether its max_results is usable. */
function webPlugin(body: Json): Json | undefined {
  return Array.isArray(body.plugins) ? body.plugins.find((p: Json) => p?.id === 'web') : undefined
}

/** A 400 message when the web plugin's max_results is not a positive integer. */
export function checkWebPlugin(body: Json): string | undefined {
  const results = webPlugin(body)?.max_results
  if (results !== undefined && !(Number.isInteger(results) && results >= 1)) {
    return 'plugins: web max_results must be an integer >= 1'
  }
}

/**
 * The web search a candidate runs: with `:online`, a `plugins: [{id: "web", max_results?}]`
 * entry or `web_search_options`; `max_results` results (default 5). Native when the model lists a
 * web_search price (and the plugin does not ask for `engine: "exa"`), else Exa.
 */
export function webSearch(body: Json, c: Candidate): WebSearch | undefined {
  const plugin = webPlugin(body)
  const options = typeof body.web_search_options === 'object' && body.web_search_options !== null
  if (!plugin && !options && !c.resolved.variants.includes('online')) return undefined
  const engine = plugin?.engine
  return {
    results: plugin?.max_results ?? DEFAULT_WEB_RESULTS,
    native: engine === 'native' || (engine !== 'exa' && c.resolved.price.webSearch > 0n),
  }
}

/**
 * Whether the candidate reasons: always when its reasoning is mandatory or hidden; for optional
 * reasoning, when `:thinking`, a `reasoning` object (not `enabled: false` nor `effort: "none"`) or
 * `include_reasoning: true` asks for it.
 */
export function reasons(body: Json, r: ResolvedModel): boolean {
  if (r.reasoning === 'none') return false
  if (r.reasoning !== 'optional' || r.variants.includes('thinking')) return true
  const cfg = body.reasoning
  if (typeof cfg === 'object' && cfg !== null) return cfg.enabled !== false && cfg.effort !== 'none'
  return body.include_reasoning === true
}

/** Whether reasoning text is returned: not for hidden reasoning, nor with `reasoning.exclude`. */
export function showsReasoning(body: Json, r: ResolvedModel): boolean {
  return r.reasoning !== 'hidden' && body.reasoning?.exclude !== true &&
    body.include_reasoning !== false
}

/** `reasoning.max_tokens` when a positive integer: the budget a client gave for reasoning. */
export function reasoningBudget(body: Json): number | undefined {
  const budget = body.reasoning?.max_tokens
  return Number.isInteger(budget) && budget > 0 ? budget : undefined
}
