// The one Postgres pool of this isolate, and the only way the function talks to the database: one
// call of one `gateway.*` SQL function per request (docs/SQL-API.md). The function logs in as
// `gateway_api` (config.ts, GATEWAY_DB_URL), so a query can do exactly what that role may: execute
// the API functions, touch no table. A startup option (`-c role=…`) would not do: transaction
// poolers drop it silently. So the role is checked instead (checkRole): as a superuser or the owner
// of schema gateway the function refuses to serve.
//
// Functions return jsonb shaped as the HTTP body; routes that only pass it on ask for `::text`, so
// the body goes from the wire to the client without a JSON parse and re-serialisation.

import postgres from 'postgres'
import { config } from './config.ts'
import { ApiError, fromDbError } from './errors.ts'
import { log } from './log.ts'

/**
 * What the gateway must know of an SQL function it calls. `changesAdmission`: a successful call
 * changes what admission decides for later requests (a key's state, fences or limits, an account's),
 * so what this isolate admitted ahead for them is given back (onAdmissionChange, reservations.ts).
 */
interface SqlFunctionSpec {
  changesAdmission?: true
}

const CHANGES_ADMISSION: SqlFunctionSpec = { changesAdmission: true }

/** The SQL functions the gateway may call (all in schema `gateway`). */
const FUNCTIONS = {
  health: {},
  register: {},
  user_balance: {},
  user_monitor: {},
  user_limits: {},
  user_profile: {},
  update_profile: {},
  delete_account: CHANGES_ADMISSION,
  create_key: {},
  list_keys: {},
  update_key: CHANGES_ADMISSION,
  rotate_key: CHANGES_ADMISSION,
  delete_key: CHANGES_ADMISSION,
  key_usage: {},
  admin_add_credits: {},
  admin_balances: {},
  admin_monitor: {},
  admin_set_limits: CHANGES_ADMISSION,
  admin_authorize: {},
  models_cache: {},
  store_models_cache: {},
  begin_request: {},
  begin_requests: {},
  settle_request: {},
  settle_requests: {},
  void_request: {},
  reserve_admissions: {},
  reserve_admissions_batch: {},
  cancel_admissions: {},
  idempotency_begin: {},
  idempotency_complete: {},
  note_holds: {},
  reconcile_candidates: {},
} satisfies Record<string, SqlFunctionSpec>

export type SqlFunction = keyof typeof FUNCTIONS

const admissionListeners: (() => void)[] = []

/** `listener` runs after every successful call of a function that changes admission. */
export function onAdmissionChange(listener: () => void): void {
  admissionListeners.push(listener)
}

/**
 * A parameter: bytea as Uint8Array; jsonb as the value itself (postgres.js serialises it once, by
 * the parameter type the server reports — a pre-stringified JSON would become a JSON string); the
 * rest as text the server casts.
 */
export type SqlArg = string | number | boolean | Uint8Array | null | JsonValue
export type JsonValue = { [key: string]: unknown } | unknown[]

let pool: postgres.Sql | undefined

/** The pool, created on first use (connections themselves open lazily too). */
export function sql(): postgres.Sql {
  if (!pool) {
    if (!config.dbUrl) {
      throw new ApiError(503, 'The database is not configured', { code: 'database_unavailable' })
    }
    pool = postgres(config.dbUrl, {
      max: config.dbPoolMax,
      prepare: config.dbPrepare,
      idle_timeout: 30,
      connect_timeout: 5,
      // No array types are used, so skip the type-catalogue query every new connection would run.
      fetch_types: false,
      // Reconnect within a second, always. postgres.js's default backoff grows with every failed
      // attempt of the whole pool, up to 20 s: behind a pooler, which keeps refusing logins for a
      // moment after Postgres restarts, a pool reached 7 s and the requests and settles queued on
      // it waited that long (pg-restart test).
      backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1),
      // One query at a time per connection: none is ever written behind another's Sync. In
      // transaction mode PgBouncer gives the server back at the first query's ReadyForQuery, and
      // the server's answer to the one behind it is dropped ("got packet from server when not
      // linked", pgbouncer/pgbouncer#759): that call never returns. max_pipeline is how many
      // queries may wait BEHIND the running one, so 1 still let one follow each parameterless
      // query (/health, the models cache; parameterized ones describe first and hold the
      // connection anyway) — after a Postgres restart, when the queued calls are written to a fresh
      // connection at once, requests hung until their worker was killed (pg-restart,
      // tests/http/db-pipeline.test.ts). (An option of postgres.js 3.4 that its types omit.)
      ...({ max_pipeline: 0 } as object),
      onnotice: () => {},
      connection: { application_name: 'gateway-function' },
    })
  }
  return pool
}

const texts = new Map<string, string>()

/** `select gateway.fn($1, …, $n)[::text] as r`, built once per function and arity. */
function statement(fn: SqlFunction, arity: number, asText: boolean): string {
  const key = `${fn}/${arity}/${asText}`
  let text = texts.get(key)
  if (text === undefined) {
    const params = Array.from({ length: arity }, (_, i) => `$${i + 1}`).join(', ')
    text = `select gateway.${fn}(${params})${asText ? '::text' : ''} as r`
    texts.set(key, text)
  }
  return text
}

/** jsonb values go as typed JSON parameters (a bare JS array would be sent as a Postgres array). */
function params(args: SqlArg[]): unknown[] {
  return args.map((a) =>
    a !== null && typeof a === 'object' && !(a instanceof Uint8Array)
      ? sql().json(a as postgres.JSONValue)
      : a
  )
}

// A transaction Postgres rolled back to break a deadlock (40P01) or a serialization conflict (40001)
// changed nothing, and every call here is one statement in its own transaction: running it again is
// always safe. Batches lock accounts in one order, so this is for the rare cycle with a transaction
// that does not (the hold sweeper, an operator's psql session).
const ROLLED_BACK = new Set(['40P01', '40001'])
const ATTEMPTS = 3

async function run(fn: SqlFunction, args: SqlArg[], asText: boolean): Promise<unknown> {
  const text = statement(fn, args.length, asText)
  const values = params(args)
  for (let attempt = 1;; attempt++) {
    try {
      // deno-lint-ignore no-explicit-any -- postgres.js types parameters loosely
      const rows = await sql().unsafe(text, values as any[])
      if ((FUNCTIONS[fn] as SqlFunctionSpec).changesAdmission) {
        for (const listener of admissionListeners) listener()
      }
      return rows[0]?.r ?? null
    } catch (err) {
      const code = (err as { code?: unknown })?.code
      if (attempt < ATTEMPTS && typeof code === 'string' && ROLLED_BACK.has(code)) continue
      throw fromDbError(err)
    }
  }
}

/** Calls `gateway.fn(args…)` and returns its jsonb result, parsed. */
export function call<T>(fn: SqlFunction, args: SqlArg[]): Promise<T> {
  return run(fn, args, false) as Promise<T>
}

/** Calls `gateway.fn(args…)` and returns its jsonb result as JSON text, ready to be a body. */
export function callText(fn: SqlFunction, args: SqlArg[]): Promise<string> {
  return run(fn, args, true) as Promise<string>
}

/**
 * The first row of a fixed statement that combines API functions in one round trip (health, the
 * models cache). `text` is always a constant of this codebase; values go in `args`.
 */
export async function queryRow<T>(text: string, args: SqlArg[] = []): Promise<T> {
  try {
    // deno-lint-ignore no-explicit-any -- postgres.js types parameters loosely
    const rows = await sql().unsafe(text, params(args) as any[])
    return rows[0] as T
  } catch (err) {
    throw fromDbError(err)
  }
}

/** Who the function is in Postgres, and whether that gives it more than the API functions. */
export interface DatabaseRole {
  role: string
  superuser: boolean
  /** The owner of schema gateway, or a member of its owner: every table is its own. */
  owner: boolean
}

let role: DatabaseRole | undefined
let checking: Promise<DatabaseRole | undefined> | undefined
let lastCheck = -Infinity

/** The role as last checked; undefined until the database has answered once. */
export function databaseRole(): DatabaseRole | undefined {
  return role
}

/** Why the function must not serve as `r`, or null when it may (or the operator allowed it). */
export function refusal(r: DatabaseRole): string | null {
  if ((!r.superuser && !r.owner) || config.allowPrivilegedRole) return null
  return `The gateway refuses to serve: it reaches Postgres as "${r.role}", ` +
    `${r.superuser ? 'a superuser' : 'the owner of schema gateway'}. Set GATEWAY_DB_URL to the ` +
    'transaction pooler as gateway_api (README, "Deploying to hosted Supabase"), or ' +
    'GATEWAY_ALLOW_PRIVILEGED_ROLE=1 to serve anyway'
}

/**
 * Asks Postgres who the function is (once; retried at most once a second while it cannot answer,
 * meanwhile undefined: a request then meets the database's own error). Logs the verdict once.
 */
export function checkRole(): Promise<DatabaseRole | undefined> {
  if (role) return Promise.resolve(role)
  if (checking) return checking
  if (performance.now() - lastCheck < 1_000) return Promise.resolve(undefined)
  lastCheck = performance.now()
  checking = (async () => {
    try {
      const [r] = await sql().unsafe(
        `select current_user::text as role, r.rolsuper as superuser,
                coalesce(pg_has_role(current_user, n.nspowner, 'member'), false) as owner
           from pg_roles r left join pg_namespace n on n.nspname = 'gateway'
          where r.rolname = current_user`,
      )
      role = { role: r.role, superuser: r.superuser, owner: r.owner }
      const why = refusal(role)
      if (why) log('error', why, { database_role: role.role })
      else if (role.superuser || role.owner) {
        log('warn', 'serving as a privileged database role (GATEWAY_ALLOW_PRIVILEGED_ROLE)', {
          database_role: role.role,
        })
      }
      return role
    } catch {
      return undefined
    } finally {
      checking = undefined
    }
  })()
  return checking
}
