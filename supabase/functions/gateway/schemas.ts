// The zod schemas of the API: request bodies and queries (validated) and response shapes (documented
// in /openapi.json). Response bodies come from SQL functions shaped as the HTTP body
// (docs/SQL-API.md), so these describe that contract rather than re-validate it.

import { z } from '@hono/zod-openapi'
import { KEY_ENVIRONMENTS } from '../_shared/keys.ts'

const id = z.number().int().openapi({ example: 123 })
const timestamp = z.string().openapi({ example: '2024-01-15T10:30:00Z' })
const maskedKey = z.string().openapi({ example: 'gw_live_abc1…' })
const gatewayKey = z.string().min(10).max(200).openapi({ example: 'gw_live_…' })

export const Environment = z.enum(KEY_ENVIRONMENTS)
export const Permission = z.enum(['read', 'write', 'admin'])

export const RateLimits = z.object({
  requests_per_minute: z.number().int().min(0).nullable().optional(),
  requests_per_hour: z.number().int().min(0).nullable().optional(),
  requests_per_day: z.number().int().min(0).nullable().optional(),
  tokens_per_minute: z.number().int().min(0).nullable().optional(),
  tokens_per_hour: z.number().int().min(0).nullable().optional(),
  tokens_per_day: z.number().int().min(0).nullable().optional(),
}).strict().openapi('RateLimits', {
  example: {
    requests_per_minute: 60,
    requests_per_hour: 1000,
    requests_per_day: 10000,
    tokens_per_minute: 10000,
    tokens_per_hour: 100000,
    tokens_per_day: 1000000,
  },
})

// ---- public ---------------------------------------------------------------------------------

/** The model catalog cache's state (models-cache.ts `describeCache`). */
const ModelsCache = z.object({
  status: z.enum(['fresh', 'stale', 'empty']),
  fetched_at: timestamp.nullable(),
  age_seconds: z.number().int().nullable(),
  ttl_seconds: z.number().int().nullable(),
  upstream_ok: z.boolean(),
  serving_last_good_copy: z.boolean(),
  last_error: z.string().nullable(),
  last_error_at: timestamp.nullable(),
}).openapi('ModelsCache')

export const Health = z.object({
  status: z.enum(['ok', 'degraded', 'unhealthy', 'refusing']),
  timestamp,
  database: z.string().openapi({ example: 'ok' }),
  database_role: z.string().nullable().optional().openapi({
    description: 'The role the function runs as in Postgres (gateway_api)',
  }),
  reason: z.string().optional().openapi({
    description: 'Why the gateway refuses to serve (status refusing)',
  }),
  upstream: z.object({ simulated: z.boolean(), base_url: z.string() }).optional(),
  models_cache: ModelsCache.nullable().optional(),
}).openapi('Health')

export const ModelList = z.object({
  object: z.literal('list'),
  data: z.array(
    z.looseObject({ id: z.string(), name: z.string().optional() }).openapi({
      description: "OpenRouter's model object, passed on as OpenRouter sends it",
    }),
  ),
}).openapi('ModelList')

const PriceRange = z.object({ min: z.number().nullable(), max: z.number().nullable() })
export const Providers = z.object({
  total_providers: z.number().int(),
  total_models: z.number().int(),
  providers: z.array(z.object({
    provider: z.string().openapi({ example: 'openai' }),
    model_count: z.number().int(),
    pricing: z.object({ prompt: PriceRange, completion: PriceRange }).openapi({
      description: "USD per token, min and max over the provider's models",
    }),
    models: z.array(z.string()),
  })),
}).openapi('Providers')

// ---- registration ---------------------------------------------------------------------------

export const RegisterRequest = z.object({
  email: z.email().max(254).openapi({ example: 'ada@example.com' }),
  username: z.string().trim().min(1).max(64).optional().openapi({ example: 'ada' }),
  environment: Environment.default('live'),
}).openapi('RegisterRequest')

export const Registered = z.object({
  user_id: id,
  email: z.string(),
  username: z.string().nullable(),
  api_key: z.string().openapi({ description: 'The primary key. Shown once: store it now.' }),
  key_id: id,
  key_prefix: maskedKey,
  environment: Environment,
  credits: z.number(),
}).openapi('Registered')

// ---- user -----------------------------------------------------------------------------------

export const Balance = z.object({
  user_id: id,
  credits: z.number().openapi({ description: 'The balance' }),
  held_credits: z.number().openapi({ description: 'Held by requests in flight' }),
  available_credits: z.number(),
  api_key: maskedKey,
}).openapi('Balance')

export const UserMonitor = z.object({
  status: z.string().openapi({ example: 'success' }),
  timestamp,
  user_id: id,
  api_key: maskedKey,
  current_credits: z.number(),
  usage_metrics: z.object({
    total_requests: z.number(),
    total_tokens: z.number(),
    total_cost: z.number(),
    requests_today: z.number(),
    tokens_today: z.number(),
    cost_today: z.number(),
    requests_this_month: z.number(),
    tokens_this_month: z.number(),
    cost_this_month: z.number(),
    average_tokens_per_request: z.number(),
    total_credits: z.number().openapi({ description: 'Credits charged, all time' }),
    credits_today: z.number(),
    credits_this_month: z.number(),
    most_used_model: z.string().nullable(),
    last_request_time: timestamp.nullable(),
  }),
  rate_limits: RateLimits,
}).openapi('UserMonitor')

const windowUsage = z.record(z.string(), z.number()).openapi({
  example: { requests_this_minute: 3, tokens_this_minute: 420 },
})

export const UserLimits = z.object({
  user_id: id,
  key_id: id,
  rate_limits: RateLimits,
  // A union rather than RateLimits.nullable(): the latter is published as allOf [RateLimits,
  // object|null], which admits no null.
  key_rate_limits: z.union([RateLimits, z.null()]).openapi({
    description: "This key's own limits, or null when it has none",
  }),
  usage: windowUsage,
  key_usage: windowUsage.nullable(),
  reset_seconds: z.object({ minute: z.number(), hour: z.number(), day: z.number() }),
}).openapi('UserLimits')

export const Profile = z.object({
  user_id: id,
  email: z.string().nullable(),
  username: z.string().nullable(),
  full_name: z.string().nullable(),
  company: z.string().nullable(),
  settings: z.record(z.string(), z.unknown()),
  credits: z.number(),
  is_active: z.boolean(),
  created_at: timestamp,
  updated_at: timestamp,
}).openapi('Profile')

export const ProfileUpdate = z.object({
  email: z.email().max(254).optional(),
  username: z.string().trim().min(1).max(64).optional(),
  full_name: z.string().trim().max(200).nullable().optional(),
  company: z.string().trim().max(200).nullable().optional(),
  settings: z.record(z.string(), z.unknown()).optional(),
}).strict().refine((p) => Object.keys(p).length > 0, { message: 'nothing to update' })
  .openapi('ProfileUpdate')

export const AccountDeleted = z.object({
  status: z.literal('deleted'),
  user_id: id,
  keys_revoked: z.number().int(),
}).openapi('AccountDeleted')

// ---- keys -----------------------------------------------------------------------------------

const keyRules = {
  permissions: z.array(Permission).min(1).max(3).optional().openapi({ example: ['read', 'write'] }),
  max_requests: z.number().int().min(1).nullable().optional(),
  expires_at: z.iso.datetime({ offset: true }).nullable().optional(),
  allowed_ips: z.array(z.string().min(2).max(64)).max(100).nullable().optional().openapi({
    example: ['203.0.113.7', '10.0.0.0/8'],
  }),
  allowed_referrers: z.array(z.string().min(1).max(253)).max(100).nullable().optional().openapi({
    example: ['example.com', '*.example.com'],
  }),
}

export const KeyCreate = z.object({
  key_name: z.string().trim().min(1).max(100).openapi({ example: 'CI runner' }),
  environment: Environment.optional(),
  expires_in_days: z.number().int().min(1).max(3650).optional(),
  ...keyRules,
}).strict().openapi('KeyCreate')

export const KeyUpdate = z.object({
  key_name: z.string().trim().min(1).max(100).optional(),
  is_active: z.boolean().optional(),
  ...keyRules,
}).strict().refine((p) => Object.keys(p).length > 0, { message: 'nothing to update' })
  .openapi('KeyUpdate')

export const KeyRotate = z.object({
  grace_seconds: z.number().int().min(0).max(7 * 24 * 3600).default(0),
}).strict().openapi('KeyRotate')

export const Key = z.object({
  key_id: id,
  user_id: id.optional().openapi({ description: 'In the create answer' }),
  api_key: z.string().openapi({ description: 'Masked, except once in the create/rotate answer' }),
  key_prefix: maskedKey,
  key_name: z.string(),
  permissions: z.array(Permission),
  is_active: z.boolean(),
  is_primary: z.boolean(),
  environment_tag: Environment,
  max_requests: z.number().int().nullable(),
  requests_used: z.number().int(),
  expires_at: timestamp.nullable(),
  allowed_ips: z.array(z.string()),
  allowed_referrers: z.array(z.string()),
  previous_key_valid_until: timestamp.nullable().openapi({
    description: 'Until when the secret before the last rotation still works',
  }),
  created_at: timestamp,
  updated_at: timestamp,
  last_used_at: timestamp.nullable(),
}).openapi('Key')

export const KeyList = z.object({
  user_id: id,
  total_keys: z.number().int(),
  keys: z.array(Key),
}).openapi('KeyList')

export const KeyDeleted = z.object({ status: z.literal('deleted'), key_id: id })
  .openapi('KeyDeleted')

export const KeyUsage = z.object({
  user_id: id,
  total_keys: z.number().int(),
  keys: z.array(z.object({
    key_id: id,
    api_key: maskedKey,
    key_name: z.string(),
    is_active: z.boolean(),
    is_primary: z.boolean(),
    requests_used: z.number(),
    max_requests: z.number().nullable(),
    requests_remaining: z.number().nullable(),
    usage_percentage: z.number().nullable(),
    environment_tag: Environment,
    tokens_used: z.number().openapi({ description: 'Tokens charged to this key' }),
    credits_used: z.number().openapi({ description: 'Credits charged to this key' }),
    created_at: timestamp,
    last_used_at: timestamp.nullable(),
  })),
}).openapi('KeyUsage')

export const KeyIdParam = z.object({
  key_id: z.coerce.number().int().min(1).max(Number.MAX_SAFE_INTEGER).openapi({
    param: { name: 'key_id', in: 'path' },
    example: 42,
  }),
})

// ---- admin ----------------------------------------------------------------------------------

/** An admin names a user by id or by one of their keys. */
const target = {
  user_id: z.number().int().min(1).optional(),
  api_key: gatewayKey.optional(),
}
const oneTarget = (b: { user_id?: number; api_key?: string }) =>
  (b.user_id === undefined) !== (b.api_key === undefined)
const TARGET_MESSAGE = { message: 'give exactly one of user_id or api_key', path: ['user_id'] }

export const AddCredits = z.object({
  ...target,
  credits: z.number().int().min(-1_000_000_000_000).max(1_000_000_000_000).refine((n) => n !== 0, {
    message: 'must not be 0',
  }).openapi({ example: 1000 }),
  reason: z.string().trim().max(500).optional(),
}).strict().refine(oneTarget, TARGET_MESSAGE).openapi('AddCredits')

export const IdempotencyHeader = z.object({
  'idempotency-key': z.string().min(1).max(255).optional().openapi({
    description: 'Makes a retry of the same grant safe (24 h)',
    example: 'grant-2024-01-15-ada',
  }),
})

export const CreditsAdded = z.object({
  user_id: id,
  credits_added: z.number(),
  balance: z.number(),
}).openapi('CreditsAdded')

export const SetLimits = z.object({
  ...target,
  rate_limits: RateLimits,
  scope: z.enum(['user', 'key']).default('user').openapi({
    description: '`key`: the limits of the named key (needs api_key) rather than of its account',
  }),
}).strict().refine(oneTarget, TARGET_MESSAGE)
  .refine((b) => b.scope === 'user' || b.api_key !== undefined, {
    message: 'scope "key" needs api_key',
    path: ['scope'],
  }).openapi('SetLimits')

export const LimitsSet = z.object({
  user_id: id,
  key_id: id.nullable(),
  rate_limits: RateLimits,
}).openapi('LimitsSet')

export const Page = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  offset: z.coerce.number().int().min(0).default(0),
})

export const AdminBalances = z.object({
  total_users: z.number().int(),
  users: z.array(z.object({
    user_id: id,
    email: z.string().nullable(),
    username: z.string().nullable(),
    is_active: z.boolean(),
    credits: z.number(),
    held_credits: z.number(),
    keys: z.array(z.object({
      key_id: id,
      api_key: maskedKey,
      key_name: z.string(),
      permissions: z.array(Permission),
      is_active: z.boolean(),
      is_primary: z.boolean(),
    })),
  })),
}).openapi('AdminBalances')

const todayAllTime = z.object({ today: z.number(), all_time: z.number() })
const usdText = z.string().openapi({ example: '0.0125' })
const usdMargin = z.object({ charged_usd: usdText, upstream_usd: usdText, margin_usd: usdText })
export const AdminMonitor = z.object({
  status: z.string().openapi({ example: 'success' }),
  timestamp,
  users: z.object({ total: z.number(), active: z.number() }),
  keys: z.object({ total: z.number(), active: z.number() }),
  requests: todayAllTime,
  tokens: todayAllTime,
  credits: z.object({
    charged_today: z.number(),
    charged_all_time: z.number(),
    outstanding_balance: z.number(),
    held: z.number(),
  }),
  open_holds: z.number(),
  expired_holds_today: z.number(),
  expired_uncharged: z.object({ today: z.number(), all_time: z.number() }).openapi({
    description: 'Holds that expired without a settle: credits never taken',
  }),
  overruns: z.object({
    today: z.number(),
    credits_today: z.number(),
    all_time: z.number(),
    credits_all_time: z.number(),
  }).openapi({ description: 'Requests charged above their hold (gateway.overruns lists them)' }),
  margin: z.object({ today: usdMargin, all_time: usdMargin }).openapi({
    description: 'What clients were charged against what upstream cost, in USD (exact decimals)',
  }),
  top_models_today: z.array(
    z.object({
      model: z.string(),
      requests: z.number(),
      tokens: z.number(),
      credits: z.number(),
    }),
  ),
}).openapi('AdminMonitor')

export const CacheStatus = z.object({
  models_cache: ModelsCache,
  models: z.number().int().nullable(),
}).openapi('CacheStatus')

export const ModelsRefreshed = z.object({
  status: z.literal('refreshed'),
  models: z.number().int(),
  models_cache: ModelsCache,
}).openapi('ModelsRefreshed')

// ---- chat -----------------------------------------------------------------------------------

export const GatewayUsage = z.object({
  credits_charged: z.number().int().nullable().openapi({
    description: 'Credits charged for this request (null when the usage is not known yet)',
  }),
  tokens_charged: z.number().int().nullable().openapi({
    description: 'Tokens the charge is for: prompt + completion',
  }),
  cached_tokens: z.number().int().nullable().openapi({
    description: "Prompt tokens read from the provider's cache (part of the prompt)",
  }),
  reasoning_tokens: z.number().int().nullable().openapi({
    description: 'Reasoning tokens (part of the completion)',
  }),
  user_balance_after: z.number().int().nullable().openapi({
    description: 'The balance after this charge, as of admission',
  }),
  user_api_key: maskedKey,
}).openapi('GatewayUsage')

// OpenRouter's completion passed on as it came (whatever members it has), with `gateway_usage` added.
export const ChatCompletion = z.looseObject({
  id: z.string(),
  object: z.literal('chat.completion'),
  created: z.number().int(),
  model: z.string(),
  provider: z.string().optional(),
  choices: z.array(z.looseObject({
    index: z.number().int(),
    message: z.looseObject({ role: z.string(), content: z.string().nullable() }),
    finish_reason: z.string().nullable(),
  })),
  usage: z.looseObject({
    prompt_tokens: z.number(),
    completion_tokens: z.number(),
    total_tokens: z.number(),
    cost: z.number().nullable().openapi({
      description: 'What this request costs the client, USD: credits charged × USD per credit ' +
        '(not the upstream cost)',
    }),
    cost_details: z.null().openapi({ description: 'Always null: upstream costs are not shown' }),
    prompt_tokens_details: z.looseObject({
      cached_tokens: z.number().int().optional(),
      cache_write_tokens: z.number().int().optional(),
    }).nullable().optional(),
    completion_tokens_details: z.looseObject({
      reasoning_tokens: z.number().int().nullable().optional(),
    }).nullable().optional(),
  }),
  gateway_usage: GatewayUsage,
}).openapi('ChatCompletion', {
  description: "OpenRouter's completion as it came, with the gateway's `gateway_usage` added",
})

export const ReconcileRequest = z.object({
  min_age_seconds: z.number().int().min(0).max(86_400).optional().openapi({
    description:
      'Open holds admitted at least this long ago (default: longer than a request lives)',
  }),
  limit: z.number().int().min(1).max(500).optional(),
}).strict().openapi('ReconcileRequest')

export const ReconcileReport = z.object({
  candidates: z.number(),
  settled: z.number(),
  credits_charged: z.number(),
  pending: z.number(),
  already_settled: z.number(),
}).openapi('ReconcileReport')
