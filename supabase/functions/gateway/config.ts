// The function's configuration, read from the environment once per isolate. Business limits
// (signup credits, default max_tokens, rate windows, the models TTL) are NOT here: they live in
// Postgres system settings, so there is one place to change them.

function env(name: string): string | undefined {
  const value = Deno.env.get(name)
  return value === undefined || value === '' ? undefined : value
}

function intEnv(name: string, fallback: number): number {
  const raw = env(name)
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be an integer >= 0`)
  return n
}

function boolEnv(name: string, fallback: boolean): boolean {
  const raw = env(name)
  return raw === undefined ? fallback : /^(1|true|yes|on)$/i.test(raw)
}

export const config = {
  /**
   * Postgres: GATEWAY_DB_URL, the transaction pooler as the function's own LOGIN role (gateway_api;
   * on hosted Supabase `gateway_api.<project-ref>` on port 6543). Else SUPABASE_DB_URL, the direct
   * connection as postgres that the runtime hands every function: the function then refuses to
   * serve (db.ts, checkRole) unless GATEWAY_ALLOW_PRIVILEGED_ROLE=1.
   */
  dbUrl: env('GATEWAY_DB_URL') ?? env('SUPABASE_DB_URL') ?? '',
  /**
   * Named prepared statements save a parse per call, but a transaction pooler (Supavisor,
   * PgBouncer) cannot keep them: off unless GATEWAY_DB_PREPARE=1 (a direct or session connection).
   */
  dbPrepare: boolEnv('GATEWAY_DB_PREPARE', false),
  /** Serve even as a superuser or the owner of schema gateway (least privilege given up). */
  allowPrivilegedRole: boolEnv('GATEWAY_ALLOW_PRIVILEGED_ROLE', false),
  dbPoolMax: intEnv('GATEWAY_DB_POOL_MAX', 4),
  /** Public URL of the project, used for the OpenAPI `servers` entry. */
  supabaseUrl: env('SUPABASE_URL'),

  openRouterBaseUrl: (env('OPENROUTER_BASE_URL') ?? 'https://openrouter.ai/api/v1').replace(
    /\/+$/,
    '',
  ),
  openRouterKey: env('OPENROUTER_API_KEY'),
  /** Sent as HTTP-Referer / X-Title: OpenRouter's app attribution. */
  siteUrl: env('OPENROUTER_SITE_URL'),
  siteName: env('OPENROUTER_SITE_NAME'),
  /** The upstream is tools/openrouter-sim (local stack and tests only). */
  upstreamSimulated: boolEnv('GATEWAY_UPSTREAM_SIMULATED', false),

  /** How long to wait for upstream response headers (and for a whole non-streamed body). */
  upstreamTimeoutMs: intEnv('GATEWAY_UPSTREAM_TIMEOUT_MS', 120_000),
  /** A stream that sends nothing (not even a keep-alive comment) for this long is cut. */
  streamIdleTimeoutMs: intEnv('GATEWAY_STREAM_IDLE_TIMEOUT_MS', 120_000),
  /**
   * The longest a streamed completion may run, from its admission (sse.ts): then upstream is
   * aborted, the client gets a last chunk with finish_reason "length" and [DONE], and the request
   * is billed for what was generated. Keep it below what a worker can guarantee: a worker takes
   * new requests until half its wall clock (hosted: 150 s Free, 400 s paid), so a stream begun just
   * before that has half the wall clock left (75 s / 200 s) before the worker is killed — a stream
   * cut by the kill is settled by the reconcile from /generation instead (open-holds.ts).
   */
  streamMaxSeconds: Math.max(intEnv('GATEWAY_STREAM_MAX_SECONDS', 300), 1),
  /**
   * A client that reads nothing of its stream for this long (its buffers full) is cut like a stream
   * past its maximum: upstream stops generating for it and the worker's memory is freed. Well under
   * the hold timeout (hold_timeout_seconds, 900 s by default).
   */
  clientStallSeconds: Math.max(intEnv('GATEWAY_CLIENT_STALL_SECONDS', 30), 1),
  /**
   * The scheduler's secret for POST /gateway/internal/reconcile (pg_cron + pg_net on hosted, the
   * stack's scheduler locally). Unset: the route answers 404; admins use /gateway/admin/reconcile.
   */
  cronSecret: env('GATEWAY_CRON_SECRET'),
  /**
   * After a client disconnect, OpenRouter's /generation stats appear a few seconds later; these are
   * the waits (ms) between lookups before falling back to counting what was streamed.
   */
  generationLookupDelaysMs:
    (env('GATEWAY_GENERATION_LOOKUP_DELAYS_MS') ?? '600,1000,1500,2500,4000')
      .split(',').map(Number).filter((n) => Number.isFinite(n) && n >= 0),

  /**
   * How long a settle that would go alone waits for others to share its call (no response waits
   * for a settle): at low concurrency, one commit for a few requests instead of one each.
   */
  settleLingerMs: intEnv('GATEWAY_SETTLE_LINGER_MS', 10),
  /**
   * Reserved admissions (reservations.ts): how many requests a busy caller's context is admitted
   * ahead at most, 0 to turn it off; how long an unused one is kept before it is given back (also
   * how late a revocation or limit change can reach it); and how many admissions within four times
   * that make a context busy.
   */
  reserveCount: Math.min(intEnv('GATEWAY_RESERVE_ADMISSIONS', 64), 64),
  // At most 2 s: the server releases reserved admissions not taken within 5 s
  // (gateway.release_reserved_admissions), and a taken one is noted as soon as it is taken.
  reserveMs: Math.min(Math.max(intEnv('GATEWAY_RESERVE_MS', 1000), 1), 2000),
  reserveAfter: intEnv('GATEWAY_RESERVE_AFTER', 8),

  /** Chat completion bodies larger than this are refused with 413 (prompts can be large). */
  maxBodyBytes: intEnv('GATEWAY_MAX_BODY_BYTES', 4 * 1024 * 1024),
  /** Every other route's body (keys, profile, sign-up, admin) is small: larger ones are a 413. */
  maxApiBodyBytes: intEnv('GATEWAY_MAX_API_BODY_BYTES', 64 * 1024),
  /** A chat completion body that has not arrived in full after this long is cut with 408. */
  bodyReadTimeoutMs: Math.max(intEnv('GATEWAY_BODY_READ_TIMEOUT_MS', 10_000), 1),
  /**
   * The same for every other route's body (at most 64 KiB: 3 s is ~170 kbit/s), so that a stalled
   * one gives its reader slot back soon.
   */
  apiBodyReadTimeoutMs: Math.max(intEnv('GATEWAY_API_BODY_READ_TIMEOUT_MS', 3_000), 1),
  /**
   * Bodies being read at once over the isolate, and the bytes reserved by those over 64 KiB (four
   * maximal prompts): beyond either a request is refused with 503 rather than buffered
   * (body-guard.ts), so uploads can hold at most 128 × 64 KiB + 16 MiB, well inside a hosted
   * worker's 256 MB.
   */
  maxBodyReaders: Math.max(intEnv('GATEWAY_BODY_READERS_MAX', 128), 1),
  maxBodyBytesInFlight: intEnv('GATEWAY_BODY_BYTES_IN_FLIGHT_MAX', 16 * 1024 * 1024),
  /**
   * One client network's share of those (IPv4 /24, IPv6 /64): 16 readers (it takes 8 networks to
   * fill the isolate's 128) and 4 MiB (one largest prompt at a time; a quarter of the isolate's).
   */
  maxBodyReadersPerNetwork: Math.max(intEnv('GATEWAY_BODY_READERS_PER_NETWORK', 16), 1),
  maxBodyBytesPerNetwork: intEnv('GATEWAY_BODY_BYTES_PER_NETWORK', 4 * 1024 * 1024),
  /** One JSON log line per request and per settlement (errors are always logged). */
  logRequests: boolEnv('GATEWAY_LOG_REQUESTS', true),
  /** Comma-separated allowed origins for CORS, or `*` (the default). */
  corsOrigins: (env('GATEWAY_CORS_ORIGINS') ?? '*').split(',').map((s) => s.trim()).filter(Boolean),
} as const
