// Where the running local stack is (scripts/stack.sh start; the test command starts it with the
// simulator), and the operator's connection to its Postgres. Tests that need the stack use `test`:
//
//   GATEWAY_URL  the function          (default http://127.0.0.1:54321/functions/v1/gateway)
//   DB_URL       Postgres as postgres  (default postgresql://postgres:postgres@127.0.0.1:54322/postgres)
//   SIM_URL      the OpenRouter sim    (default http://127.0.0.1:54340)

import postgres from 'postgres'

export const GATEWAY_URL = (Deno.env.get('GATEWAY_URL') ??
  'http://127.0.0.1:54321/functions/v1/gateway').replace(/\/+$/, '')
export const SIM_URL = (Deno.env.get('SIM_URL') ?? 'http://127.0.0.1:54340').replace(/\/+$/, '')
export const DB_URL = Deno.env.get('DB_URL') ??
  'postgresql://postgres:postgres@127.0.0.1:54322/postgres'
export const SUPABASE_URL = GATEWAY_URL.replace(/\/functions\/v1\/gateway$/, '')
/** What the function connects with (GATEWAY_DB_URL): the transaction pooler, as its own role. */
export const FUNCTION_DB_URL = Deno.env.get('FUNCTION_DB_URL') ??
  'postgresql://gateway_api:gateway-api-local@127.0.0.1:54329/postgres'

let pool: postgres.Sql | undefined

/** Postgres as `postgres` (the operator), for set-up and for reading what the gateway recorded. */
export function db(): postgres.Sql {
  // A short idle timeout lets the test process exit without an explicit close.
  pool ??= postgres(DB_URL, { max: 2, idle_timeout: 1, onnotice: () => {} })
  return pool
}

/** Deno.test for tests that talk to the stack (pooled sockets outlive single tests). */
export function test(name: string, fn: () => Promise<void> | void): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false })
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false>,
  timeoutMs = 20_000,
): Promise<T> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value) return value
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}
