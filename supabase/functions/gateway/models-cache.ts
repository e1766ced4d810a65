// OpenRouter's model catalog, cached twice: in Postgres (`gateway.models_cache`, shared by every
// isolate and surviving restarts; TTL = setting models_cache_ttl_seconds) and in this isolate's
// memory. Stale-while-revalidate: a stale copy is served at once while one background refresh per
// isolate runs. A failed refresh is recorded (last_error) and the last good copy keeps being served;
// /health and /admin/cache-status say so. Served bodies are built once per catalog version.

import { inBackground } from './background.ts'
import { queryRow } from './db.ts'
import { ApiError } from './errors.ts'
import { fetchModelsText } from './upstream.ts'

export interface CacheMeta {
  fetched_at: string | null
  ttl_seconds: number
  last_error: string | null
  last_error_at: string | null
}

export interface Catalog {
  /** The catalog array as JSON text, exactly as stored. */
  data: string
  meta: CacheMeta
  modelsBody?: string
  providersBody?: string
  count?: number
}

export type Freshness = 'fresh' | 'stale' | 'empty'

/** This isolate re-reads the cache's metadata from Postgres at most this often. */
const RECHECK_MS = 5_000
/** After a failed refresh, upstream is not asked again for this long. */
const RETRY_AFTER_FAILURE_MS = 30_000

let memory: Catalog | undefined
let checkedAt = 0
let refreshing: Promise<Catalog> | undefined
let lastFailureAt = 0

function ageSeconds(meta: CacheMeta, now = Date.now()): number | null {
  return meta.fetched_at ? (now - Date.parse(meta.fetched_at)) / 1000 : null
}

export function freshness(meta: CacheMeta | undefined): Freshness {
  if (!meta?.fetched_at) return 'empty'
  return (ageSeconds(meta) ?? Infinity) < meta.ttl_seconds ? 'fresh' : 'stale'
}

/** The cache's state, for /health and /admin/cache-status. */
export function describeCache(meta: CacheMeta | undefined) {
  const status = freshness(meta)
  const failing = !!meta?.last_error_at &&
    (!meta.fetched_at || Date.parse(meta.last_error_at) >= Date.parse(meta.fetched_at))
  const age = meta ? ageSeconds(meta) : null
  return {
    status,
    fetched_at: meta?.fetched_at ?? null,
    age_seconds: age === null ? null : Math.round(age),
    ttl_seconds: meta?.ttl_seconds ?? null,
    upstream_ok: !failing,
    serving_last_good_copy: failing && status !== 'empty',
    last_error: meta?.last_error ?? null,
    last_error_at: meta?.last_error_at ?? null,
  }
}

interface Row {
  data: string | null
  meta: CacheMeta
}

function remember(row: Row): Catalog | undefined {
  checkedAt = Date.now()
  if (row.data && row.data !== 'null') {
    if (!memory || memory.data !== row.data) memory = { data: row.data, meta: row.meta }
    else memory.meta = row.meta
  } else if (memory) {
    memory.meta = row.meta
  }
  return memory
}

/** The cache row in Postgres, catalog and metadata. */
async function load(): Promise<Catalog | undefined> {
  return remember(
    await queryRow<Row>(
      `select (m -> 'data')::text as data, m - 'data' as meta from gateway.models_cache() as m`,
    ),
  )
}

/** Just the metadata (no catalog transfer), for status endpoints. */
export async function cacheMeta(): Promise<CacheMeta> {
  const row = await queryRow<{ meta: CacheMeta }>(`select gateway.models_cache() - 'data' as meta`)
  return row.meta
}

/**
 * Fetches the catalog from upstream and stores it in Postgres. On failure, records the error
 * (keeping the last good copy) and throws a 503. One refresh at a time per isolate.
 */
export function refresh(): Promise<Catalog> {
  refreshing ??= (async () => {
    try {
      let data: unknown[]
      try {
        const doc = JSON.parse(await fetchModelsText())
        if (!Array.isArray(doc?.data)) {
          throw new Error('upstream /models answered without a data array')
        }
        data = doc.data
      } catch (err) {
        lastFailureAt = Date.now()
        const reason = err instanceof Error ? err.message.slice(0, 200) : 'refresh failed'
        remember(
          await queryRow<Row>(
            `select null::text as data, m - 'data' as meta
               from gateway.store_models_cache(null::jsonb, $1::text) as m`,
            [reason],
          ),
        )
        throw new ApiError(503, 'The model catalog could not be fetched from upstream', {
          code: 'upstream_unavailable',
        })
      }
      const catalog = remember(
        await queryRow<Row>(
          `select (m -> 'data')::text as data, m - 'data' as meta
             from gateway.store_models_cache($1::jsonb, null::text) as m`,
          [data],
        ),
      )
      if (!catalog) throw new ApiError(500, 'Internal error', { code: 'internal_error' })
      lastFailureAt = 0
      return catalog
    } finally {
      refreshing = undefined
    }
  })()
  return refreshing
}

function revalidate(): void {
  if (refreshing || Date.now() - lastFailureAt < RETRY_AFTER_FAILURE_MS) return
  inBackground(refresh(), 'models refresh')
}

/**
 * Brings this isolate's copy in line with Postgres: the metadata first (small), the catalog only
 * when another isolate (or an admin) stored a newer one. Picks up TTL changes too.
 */
async function sync(): Promise<void> {
  const { meta } = await queryRow<{ meta: CacheMeta }>(
    `select gateway.models_cache() - 'data' as meta`,
  )
  checkedAt = Date.now()
  if (!meta.fetched_at || meta.fetched_at === memory?.meta.fetched_at) {
    if (memory) memory.meta = meta
    return
  }
  await load()
}

/**
 * Refreshes the catalog from upstream if the stored copy is older than `seconds` (or there is
 * none); true when it did, false when the copy is recent or the refresh failed. For admission: a
 * model added upstream since the last refresh is priced within a minute of its first request.
 */
export async function refreshIfOlderThan(seconds: number): Promise<boolean> {
  if (Date.now() - lastFailureAt < RETRY_AFTER_FAILURE_MS) return false
  try {
    const meta = await cacheMeta()
    const age = ageSeconds(meta)
    if (age !== null && age < seconds) return false
    await refresh()
    return true
  } catch {
    return false
  }
}

/** The catalog to serve now, and whether it is fresh. 503 when there has never been one. */
export async function catalog(): Promise<{ catalog: Catalog; status: Freshness }> {
  if (Date.now() - checkedAt >= RECHECK_MS) {
    try {
      await sync()
    } catch (err) {
      // With a copy in hand, a database hiccup does not take /models down.
      if (!memory) throw err
    }
  }
  const current = memory
  const status = freshness(current?.meta)
  if (current && status === 'fresh') return { catalog: current, status }
  if (current) {
    revalidate()
    return { catalog: current, status: 'stale' }
  }
  if (Date.now() - lastFailureAt < RETRY_AFTER_FAILURE_MS && !refreshing) {
    throw new ApiError(503, 'The model catalog is unavailable', { code: 'upstream_unavailable' })
  }
  return { catalog: await refresh(), status: 'fresh' }
}

/** GET /models: OpenRouter's document, with OpenAI's `object: "list"`. */
export function modelsBody(c: Catalog): string {
  return c.modelsBody ??= `{"object":"list","data":${c.data}}`
}

interface Price {
  min: number | null
  max: number | null
}

function widen(range: Price, value: unknown): void {
  const n = Number(value)
  if (value === undefined || value === null || value === '' || !Number.isFinite(n) || n < 0) return
  range.min = range.min === null ? n : Math.min(range.min, n)
  range.max = range.max === null ? n : Math.max(range.max, n)
}

/** GET /models/providers: models grouped by provider (the id's author prefix), counts and prices. */
export function providersBody(c: Catalog): string {
  if (c.providersBody) return c.providersBody
  const models = JSON.parse(c.data) as { id?: string; pricing?: Record<string, unknown> }[]
  const groups = new Map<string, { models: string[]; prompt: Price; completion: Price }>()
  for (const m of models) {
    if (typeof m?.id !== 'string') continue
    const slash = m.id.indexOf('/')
    const provider = slash > 0 ? m.id.slice(0, slash) : 'other'
    let g = groups.get(provider)
    if (!g) {
      g = { models: [], prompt: { min: null, max: null }, completion: { min: null, max: null } }
      groups.set(provider, g)
    }
    g.models.push(m.id)
    widen(g.prompt, m.pricing?.prompt)
    widen(g.completion, m.pricing?.completion)
  }
  const providers = [...groups.entries()]
    .sort((a, b) => b[1].models.length - a[1].models.length || a[0].localeCompare(b[0]))
    .map(([provider, g]) => ({
      provider,
      model_count: g.models.length,
      // USD per token, as OpenRouter prices them.
      pricing: { prompt: g.prompt, completion: g.completion },
      models: g.models,
    }))
  c.providersBody = JSON.stringify({
    total_providers: providers.length,
    total_models: models.length,
    providers,
  })
  return c.providersBody
}

/** Number of models in a catalog. */
export function modelCount(c: Catalog): number {
  return c.count ??= (JSON.parse(c.data) as unknown[]).length
}

/** The copy this isolate holds, if any (no I/O). */
export function heldCatalog(): Catalog | undefined {
  return memory
}
