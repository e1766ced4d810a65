// Admin routes (a key with `admin` permission). An admin names a user by `user_id` or by one of
// their keys (`api_key`, sent to SQL only as its SHA-256). Credit grants, balances, monitoring and
// limits are one SQL call each; the models-cache routes act here once the key is authorized.

import { createRoute } from '@hono/zod-openapi'
import { hashKey, isWellFormedKey, toHex } from '../../_shared/keys.ts'
import { caller, callerArgs } from '../identity.ts'
import { call, callText } from '../db.ts'
import { ApiError } from '../errors.ts'
import { cacheMeta, describeCache, heldCatalog, modelCount, refresh } from '../models-cache.ts'
import { reconcile } from '../reconcile.ts'
import * as s from '../schemas.ts'
import { BEARER, errors, handle, json, jsonText, ok, router } from './common.ts'

export const adminRoutes = router()

// Authorization before validation: a key without `admin` gets its 401/403 whatever it sent, so a
// body's errors tell nothing to someone who may not use the route. Registered before the routes,
// so it runs before their validators; each route's SQL function checks the key again itself.
adminRoutes.use('/admin/*', async (c, next) => {
  await call('admin_authorize', callerArgs(caller(c)))
  await next()
})

/** `p_target` of the admin SQL functions: {"user_id": n} or {"api_key_hash": "<hex>"}. */
async function target(b: { user_id?: number; api_key?: string }, scope?: 'user' | 'key') {
  if (b.user_id !== undefined) return { user_id: b.user_id }
  if (!isWellFormedKey(b.api_key!)) {
    throw new ApiError(400, 'api_key: not a gateway key', {
      code: 'invalid_request',
      param: 'api_key',
    })
  }
  const t: Record<string, unknown> = { api_key_hash: toHex(await hashKey(b.api_key!)) }
  if (scope === 'key') t.scope = 'key'
  return t
}

const body = <T extends Parameters<typeof ok>[1]>(schema: T) => ({
  body: { required: true, content: { 'application/json': { schema } } },
})

handle(
  adminRoutes,
  createRoute({
    method: 'post',
    path: '/admin/add_credits',
    tags: ['admin'],
    summary: 'Grant (or, negative, take back) credits; returns the new balance',
    description: 'With an Idempotency-Key header, a retry of the same grant within 24 h returns ' +
      'the first answer (idempotent_replay: true) and grants nothing; the same key with another ' +
      'body is a 422.',
    security: BEARER,
    request: { headers: s.IdempotencyHeader, ...body(s.AddCredits) },
    responses: {
      ...ok('The new balance', s.CreditsAdded),
      ...errors(400, 401, 403, 404, 409, 422, 429),
    },
  }),
  async (c) => {
    const b = c.req.valid('json')
    const { 'idempotency-key': idempotencyKey } = c.req.valid('header')
    const who = await caller(c)
    const t = await target(b)
    return jsonText(
      await callText('admin_add_credits', [
        ...callerArgs(who),
        t,
        b.credits,
        b.reason ?? null,
        idempotencyKey ?? null,
      ]),
    )
  },
)

handle(
  adminRoutes,
  createRoute({
    method: 'get',
    path: '/admin/balance',
    tags: ['admin'],
    summary: 'Balances and keys of all users (paged)',
    security: BEARER,
    request: { query: s.Page },
    responses: { ...ok('Users', s.AdminBalances), ...errors(400, 401, 403, 429) },
  }),
  async (c) => {
    const { limit, offset } = c.req.valid('query')
    const who = await caller(c)
    return jsonText(await callText('admin_balances', [...callerArgs(who), limit, offset]))
  },
)

handle(
  adminRoutes,
  createRoute({
    method: 'get',
    path: '/admin/monitor',
    tags: ['admin'],
    summary: 'System-wide monitoring',
    security: BEARER,
    responses: { ...ok('Totals', s.AdminMonitor), ...errors(401, 403, 429) },
  }),
  async (c) => jsonText(await callText('admin_monitor', callerArgs(await caller(c)))),
)

handle(
  adminRoutes,
  createRoute({
    method: 'post',
    path: '/admin/limit',
    tags: ['admin'],
    summary: 'Set the rate limits of a user (or, scope "key", of one key)',
    security: BEARER,
    request: body(s.SetLimits),
    responses: {
      ...ok('The limits now in force', s.LimitsSet),
      ...errors(400, 401, 403, 404, 429),
    },
  }),
  async (c) => {
    const b = c.req.valid('json')
    const who = await caller(c)
    const t = await target(b, b.scope)
    return jsonText(
      await callText('admin_set_limits', [...callerArgs(who), t, b.rate_limits]),
    )
  },
)

handle(
  adminRoutes,
  createRoute({
    method: 'post',
    path: '/admin/refresh-models',
    tags: ['admin'],
    summary: 'Refresh the model catalog from upstream now',
    security: BEARER,
    responses: { ...ok('Refreshed', s.ModelsRefreshed), ...errors(401, 403, 429, 503) },
  }),
  async () => {
    const fresh = await refresh()
    return json({
      status: 'refreshed',
      models: modelCount(fresh),
      models_cache: describeCache(fresh.meta),
    })
  },
)

handle(
  adminRoutes,
  createRoute({
    method: 'get',
    path: '/admin/cache-status',
    tags: ['admin'],
    summary: 'State of the model catalog cache',
    security: BEARER,
    responses: { ...ok('Cache state', s.CacheStatus), ...errors(401, 403, 429) },
  }),
  async () => {
    const meta = await cacheMeta()
    const held = heldCatalog()
    return json({
      models_cache: describeCache(meta),
      // What this isolate serves; other isolates load the same row from Postgres.
      models: held ? modelCount(held) : null,
    })
  },
)

handle(
  adminRoutes,
  createRoute({
    method: 'post',
    path: '/admin/reconcile',
    tags: ['admin'],
    summary: 'Settle holds whose worker died from OpenRouter /generation (as the scheduler does)',
    security: BEARER,
    request: {
      body: { required: false, content: { 'application/json': { schema: s.ReconcileRequest } } },
    },
    responses: { ...ok('What was reconciled', s.ReconcileReport), ...errors(400, 401, 403, 429) },
  }),
  async (c) => {
    const b = c.req.valid('json') ?? {}
    return json(await reconcile({ minAgeSeconds: b.min_age_seconds, limit: b.limit }))
  },
)
