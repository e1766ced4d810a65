// The one Postgres pool of this isolate, and the only way the function talks to the database: one
// call of one `gateway.*` SQL function per request (docs/SQL-API.md). Every connection assumes the
// `gateway_api` role at startup (`options=-c role=gateway_api`), so a query can do exactly what that
// role may: execute the API functions, touch no table.
//
// Functions return jsonb shaped as the HTTP body; routes that only pass it on ask for `::text`, so
// the body goes from the wire to the client without a JSON parse and re-serialisation.

import postgres from 'postgres'
import { config } from './config.ts'
import { ApiError, fromDbError } from './errors.ts'

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
  cancel_admissions: {},
  idempotency_begin: {},
  idempotency_complete: {},
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
      onnotice: () => {},
      connection: { application_name: 'gateway-function', options: '-c role=gateway_api' },
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
