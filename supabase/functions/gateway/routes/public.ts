// Public routes (no key): /health and the model catalog (/models, /models/providers, and /v1/models
// for OpenAI clients' `models.list()`).

import { createRoute } from '@hono/zod-openapi'
import { config } from '../config.ts'
import { databaseRole, queryRow } from '../db.ts'
import {
  type CacheMeta,
  catalog,
  describeCache,
  modelsBody,
  providersBody,
} from '../models-cache.ts'
import * as s from '../schemas.ts'
import { errors, handle, json, jsonText, ok, router } from './common.ts'

export const publicRoutes = router()

const upstream = {
  simulated: config.upstreamSimulated,
  // The base URL without credentials or query, to tell which upstream this instance talks to.
  base_url: config.openRouterBaseUrl.replace(/\/\/[^@/]*@/, '//').replace(/\?.*$/, ''),
}

handle(
  publicRoutes,
  createRoute({
    method: 'get',
    path: '/health',
    tags: ['public'],
    summary: 'Health of the gateway, its database and the model catalog cache',
    responses: {
      ...ok('Healthy or degraded', s.Health),
      ...errors(),
      503: {
        description: 'Unhealthy: the database cannot be reached',
        content: { 'application/json': { schema: s.Health } },
      },
    },
  }),
  async () => {
    const timestamp = new Date().toISOString()
    try {
      const row = await queryRow<{ health: { database: string }; models: CacheMeta }>(
        `select gateway.health() as health, gateway.models_cache() - 'data' as models`,
      )
      const models = describeCache(row.models)
      // Degraded = serving the catalog from a copy because upstream refuses to refresh it.
      const status = models.upstream_ok ? 'ok' : 'degraded'
      return json({
        status,
        timestamp,
        database: row.health.database,
        database_role: databaseRole()?.role ?? null,
        upstream,
        models_cache: models,
      })
    } catch {
      return json(
        { status: 'unhealthy', timestamp, database: 'unavailable', upstream, models_cache: null },
        503,
      )
    }
  },
)

const modelsRoute = (path: string, summary: string) =>
  createRoute({
    method: 'get',
    path,
    tags: ['public'],
    summary,
    responses: { ...ok('The catalog', s.ModelList), ...errors(503) },
  })

async function serveModels(): Promise<Response> {
  const { catalog: c, status } = await catalog()
  return jsonText(modelsBody(c), 200, { 'x-models-cache': status })
}

handle(publicRoutes, modelsRoute('/models', "OpenRouter's model catalog (cached)"), serveModels)
handle(
  publicRoutes,
  modelsRoute('/v1/models', 'The model catalog, where OpenAI clients look for it'),
  serveModels,
)

handle(
  publicRoutes,
  createRoute({
    method: 'get',
    path: '/models/providers',
    tags: ['public'],
    summary: 'Models grouped by provider, with counts and price ranges',
    responses: { ...ok('Providers', s.Providers), ...errors(503) },
  }),
  async () => {
    const { catalog: c, status } = await catalog()
    return jsonText(providersBody(c), 200, { 'x-models-cache': status })
  },
)
