// POST /auth/register: self-service signup. Returns the account and its primary key (shown once),
// with the signup credits of the system settings. Rate limited in SQL per client network (settings
// registrations_per_network_per_hour, an IPv4 /24 or IPv6 /64) and over all networks
// (registrations_per_hour); a repeated email is a 400.

import { createRoute } from '@hono/zod-openapi'
import { clientIp } from '../identity.ts'
import { callText } from '../db.ts'
import { ApiError } from '../errors.ts'
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
    // SQL counts a sign-up only with its address (null is an operator's account): never unknown here.
    const ip = clientIp(c)
    if (!ip) {
      throw new ApiError(400, 'The client address is unknown; sign-ups need one', {
        code: 'client_address_unknown',
      })
    }
    return jsonText(await callText('register', [b.email, b.username ?? null, b.environment, ip]))
  },
)
