// The caller's own account: balance, usage, limits, profile, deletion. Each route is one SQL call
// that authenticates the key (read for GETs, write for changes) and returns the body.

import { createRoute } from '@hono/zod-openapi'
import { caller, callerArgs } from '../identity.ts'
import { callText, type SqlFunction } from '../db.ts'
import { settlesCommitted } from '../settlement.ts'
import * as s from '../schemas.ts'
import { BEARER, errors, handle, jsonText, ok, router } from './common.ts'

export const userRoutes = router()

const READ_ERRORS = errors(401, 403, 429)

/**
 * A GET that is exactly one read function of the caller. `ownWrites`: the figures include the
 * settles this isolate has submitted (a balance read right after a response shows its charge), at
 * the price of waiting for them (one settle call at most, usually nothing).
 */
function read(
  path: string,
  fn: SqlFunction,
  summary: string,
  schema: Parameters<typeof ok>[1],
  ownWrites = false,
) {
  handle(
    userRoutes,
    createRoute({
      method: 'get',
      path,
      tags: ['user'],
      summary,
      security: BEARER,
      responses: { ...ok(summary, schema), ...READ_ERRORS },
    }),
    async (c) => {
      const who = await caller(c)
      if (ownWrites) await settlesCommitted()
      return jsonText(await callText(fn, callerArgs(who)))
    },
  )
}

read(
  '/user/balance',
  'user_balance',
  'Credits: balance, held by requests in flight, available',
  s.Balance,
  true,
)
read(
  '/user/monitor',
  'user_monitor',
  'Usage metrics and rate limits of the account',
  s.UserMonitor,
  true,
)
read(
  '/user/limit',
  'user_limits',
  'Rate limits of the account and this key, and current usage',
  s.UserLimits,
)
read('/user/profile', 'user_profile', 'The account profile', s.Profile)

handle(
  userRoutes,
  createRoute({
    method: 'put',
    path: '/user/profile',
    tags: ['user'],
    summary: 'Update the profile (username, full_name, company, settings)',
    security: BEARER,
    request: {
      body: { required: true, content: { 'application/json': { schema: s.ProfileUpdate } } },
    },
    responses: { ...ok('The updated profile', s.Profile), ...errors(400, 401, 403, 429) },
  }),
  async (c) => {
    const changes = c.req.valid('json')
    const who = await caller(c)
    return jsonText(await callText('update_profile', [...callerArgs(who), changes]))
  },
)

handle(
  userRoutes,
  createRoute({
    method: 'delete',
    path: '/user/account',
    tags: ['user'],
    summary: 'Delete the account: revokes every key, removes personal data, keeps the ledger',
    security: BEARER,
    responses: { ...ok('Deleted', s.AccountDeleted), ...errors(401, 403, 429) },
  }),
  async (c) => jsonText(await callText('delete_account', callerArgs(await caller(c)))),
)
