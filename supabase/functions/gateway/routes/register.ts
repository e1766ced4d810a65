// POST /auth/register: self-service signup. Returns the account and its primary key (shown once),
// with the signup credits of the system settings. Rate limited per client address in SQL
// (setting registrations_per_ip_per_hour); a repeated email is a 400.

import { createRoute } from '@hono/zod-openapi'
import { clientIp } from '../identity.ts'
import { callText } from '../db.ts'
import * as s from '../schemas.ts'
import { errors, handle, jsonText, ok, router } from './common.ts'

export const registerRoutes = router()

handle(
  registerRoutes,
  createRoute({
    method: 'post',
    path: '/auth/register',
    tags: ['auth'],
    summary: 'Create an account and its primary API key',
    request: {
      body: { required: true, content: { 'application/json': { schema: s.RegisterRequest } } },
    },
    responses: {
      ...ok('The account and its primary key (shown once)', s.Registered),
      ...errors(400, 429),
    },
  }),
  async (c) => {
    const b = c.req.valid('json')
    return jsonText(
      await callText('register', [b.email, b.username ?? null, b.environment, clientIp(c)]),
    )
  },
)
