// Routes for the operator's scheduler, not for clients: POST /internal/reconcile settles holds
// whose worker died from OpenRouter's /generation (reconcile.ts). Authenticated by the secret
// GATEWAY_CRON_SECRET (Authorization: Bearer …), which pg_cron + pg_net send from the vault on hosted
// Supabase (README, "Scheduled jobs") and scripts/scheduler.ts locally; without it set, 404.

import { config } from '../config.ts'
import { ApiError } from '../errors.ts'
import { reconcile } from '../reconcile.ts'
import * as s from '../schemas.ts'
import { json, router, validationError } from './common.ts'

export const internalRoutes = router()

const encoder = new TextEncoder()

/** Equal secrets, compared by their SHA-256 (no early exit on the secret's own bytes). */
async function sameSecret(given: string, secret: string): Promise<boolean> {
  const [a, b] = await Promise.all([
    crypto.subtle.digest('SHA-256', encoder.encode(given)),
    crypto.subtle.digest('SHA-256', encoder.encode(secret)),
  ])
  const x = new Uint8Array(a)
  const y = new Uint8Array(b)
  let diff = 0
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i]
  return diff === 0
}

// Authorization before validation, as on /admin/*.
internalRoutes.use('/internal/*', async (c, next) => {
  if (!config.cronSecret) throw new ApiError(404, 'Not found', { code: 'not_found' })
  const given = /^Bearer (.+)$/.exec(c.req.header('authorization') ?? '')?.[1] ?? ''
  if (!given || !(await sameSecret(given, config.cronSecret))) {
    throw new ApiError(401, 'The scheduler secret is missing or wrong', {
      code: 'invalid_scheduler_secret',
    })
  }
  await next()
})

// Not in /openapi.json: no client calls it.
internalRoutes.post('/internal/reconcile', async (c) => {
  const text = await c.req.text()
  let body: unknown = {}
  try {
    if (text.trim()) body = JSON.parse(text)
  } catch {
    throw new ApiError(400, 'The request body is not valid JSON', { code: 'invalid_request' })
  }
  const parsed = s.ReconcileRequest.safeParse(body)
  if (!parsed.success) throw validationError(parsed.error)
  const b = parsed.data
  return json(await reconcile({ minAgeSeconds: b.min_age_seconds, limit: b.limit }))
})
