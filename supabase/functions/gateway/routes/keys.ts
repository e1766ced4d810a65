// The caller's API keys: create (permissions at most the caller's own), list, usage, update,
// rotate, delete. SQL scopes every key_id to the caller's account: another account's key is a 404.

import { createRoute } from '@hono/zod-openapi'
import { caller, callerArgs } from '../identity.ts'
import { callText } from '../db.ts'
import * as s from '../schemas.ts'
import { BEARER, errors, handle, jsonText, ok, router } from './common.ts'

export const keyRoutes = router()

const body = <T extends Parameters<typeof ok>[1]>(schema: T) => ({
  body: { required: true, content: { 'application/json': { schema } } },
})

handle(
  keyRoutes,
  createRoute({
    method: 'post',
    path: '/user/api-keys',
    tags: ['keys'],
    summary: 'Create a key (its plaintext is in this answer only)',
    security: BEARER,
    request: body(s.KeyCreate),
    responses: {
      ...ok('The new key, with its plaintext api_key', s.Key),
      ...errors(400, 401, 403, 429),
    },
  }),
  async (c) => {
    const spec = c.req.valid('json')
    const who = await caller(c)
    return jsonText(await callText('create_key', [...callerArgs(who), spec]))
  },
)

handle(
  keyRoutes,
  createRoute({
    method: 'get',
    path: '/user/api-keys',
    tags: ['keys'],
    summary: "List the account's keys (masked)",
    security: BEARER,
    responses: { ...ok('The keys', s.KeyList), ...errors(401, 403, 429) },
  }),
  async (c) => jsonText(await callText('list_keys', callerArgs(await caller(c)))),
)

// Registered before /user/api-keys/{key_id} so "usage" is never taken for a key id.
handle(
  keyRoutes,
  createRoute({
    method: 'get',
    path: '/user/api-keys/usage',
    tags: ['keys'],
    summary: 'Usage of each key against its request cap',
    security: BEARER,
    responses: { ...ok('Per-key usage', s.KeyUsage), ...errors(401, 403, 429) },
  }),
  async (c) => jsonText(await callText('key_usage', callerArgs(await caller(c)))),
)

handle(
  keyRoutes,
  createRoute({
    method: 'put',
    path: '/user/api-keys/{key_id}',
    tags: ['keys'],
    summary: 'Update a key (name, active, permissions, cap, expiry, IP / referrer rules, limits)',
    security: BEARER,
    request: { params: s.KeyIdParam, ...body(s.KeyUpdate) },
    responses: { ...ok('The key', s.Key), ...errors(400, 401, 403, 404, 429) },
  }),
  async (c) => {
    const { key_id } = c.req.valid('param')
    const changes = c.req.valid('json')
    const who = await caller(c)
    return jsonText(
      await callText('update_key', [...callerArgs(who), key_id, changes]),
    )
  },
)

handle(
  keyRoutes,
  createRoute({
    method: 'post',
    path: '/user/api-keys/{key_id}/rotate',
    tags: ['keys'],
    summary: 'Issue a new secret for a key; the old one stays valid for grace_seconds',
    security: BEARER,
    request: { params: s.KeyIdParam, ...body(s.KeyRotate) },
    responses: {
      ...ok('The key with its new plaintext api_key', s.Key),
      ...errors(400, 401, 403, 404, 429),
    },
  }),
  async (c) => {
    const { key_id } = c.req.valid('param')
    const { grace_seconds } = c.req.valid('json')
    const who = await caller(c)
    return jsonText(
      await callText('rotate_key', [...callerArgs(who), key_id, grace_seconds]),
    )
  },
)

handle(
  keyRoutes,
  createRoute({
    method: 'delete',
    path: '/user/api-keys/{key_id}',
    tags: ['keys'],
    summary: 'Delete a key (not the primary key)',
    security: BEARER,
    request: { params: s.KeyIdParam },
    responses: { ...ok('Deleted', s.KeyDeleted), ...errors(400, 401, 403, 404, 429) },
  }),
  async (c) => {
    const { key_id } = c.req.valid('param')
    const who = await caller(c)
    return jsonText(await callText('delete_key', [...callerArgs(who), key_id]))
  },
)
