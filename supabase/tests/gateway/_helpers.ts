// Shared helpers of the gateway's Deno tests. They drive the function over real HTTP against the
// running local stack (scripts/stack.sh start; the test command starts it with the simulator):
//
//   GATEWAY_URL  the function          (default http://127.0.0.1:54321/functions/v1/gateway)
//   DB_URL       Postgres as postgres  (default postgresql://postgres:postgres@127.0.0.1:54322/postgres)
//   SIM_URL      the OpenRouter sim    (default http://127.0.0.1:54340)
//   FUNCTION_DB_URL  the function's own connection: PgBouncer as gateway_api (scripts/stack.sh)
//
// Accounts are created fresh per test (unique emails) through SQL's gateway.register with no client
// IP, so the per-IP registration limit only applies to the tests of /auth/register itself.

import postgres from 'postgres'
import { base62, crc32 } from '../../functions/_shared/keys.ts'

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

export function uniqueEmail(tag = 'test'): string {
  return `${tag}-${crypto.randomUUID().slice(0, 12)}@example.com`
}

export interface Account {
  userId: number
  keyId: number
  key: string
  email: string
}

/** A new account with its primary key (read + write) and `credits` credits. */
export async function newAccount(credits = 1000, tag = 'acct'): Promise<Account> {
  const email = uniqueEmail(tag)
  const [row] = await db()`select gateway.register(${email}, null, 'live', null) as r`
  const r = row.r as { user_id: number; key_id: number; api_key: string; credits: number }
  if (credits !== r.credits) await setCredits(r.user_id, credits, r.credits)
  return { userId: r.user_id, keyId: r.key_id, key: r.api_key, email }
}

/** Moves an account's balance to `credits` with one ledger adjustment (operator SQL). */
export async function setCredits(userId: number, credits: number, current?: number): Promise<void> {
  if (current === undefined) {
    const [b] = await db()`select balance from gateway.credit_balances where account_id = ${userId}`
    current = Number(b.balance)
  }
  const delta = credits - current
  if (delta !== 0) await db()`select * from gateway.add_credits(${userId}, ${delta}, 'test set-up')`
}

/** A fresh admin key, as an operator makes one (gateway.create_admin_key). */
export async function newAdmin(): Promise<Account> {
  const email = uniqueEmail('admin')
  const [r] = await db()`select * from gateway.create_admin_key(${email})`
  return { userId: Number(r.user_id), keyId: Number(r.key_id), key: r.api_key, email }
}

/** A key with a valid shape and checksum that no account has. */
export function unknownKey(env = 'live'): string {
  const chars = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
  let body = ''
  const bytes = crypto.getRandomValues(new Uint8Array(22))
  for (const b of bytes) body += chars[b % 62]
  const head = `gw_${env}_${body}`
  return head + base62(crc32(head), 6)
}

export interface ApiResponse {
  status: number
  headers: Headers
  text: string
  // deno-lint-ignore no-explicit-any
  json: any
}

export interface ApiOptions {
  method?: string
  key?: string
  body?: unknown
  headers?: Record<string, string>
}

/** One request to the gateway; the body is read whole. */
export function api(path: string, opts: ApiOptions = {}): Promise<ApiResponse> {
  return call(GATEWAY_URL, path, opts)
}

/** One request to a gateway at any base URL (a test's own functions server, say). */
export async function call(
  base: string,
  path: string,
  opts: ApiOptions = {},
): Promise<ApiResponse> {
  const headers: Record<string, string> = { ...opts.headers }
  if (opts.key) headers.authorization = `Bearer ${opts.key}`
  let body: string | undefined
  if (opts.body !== undefined) {
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body)
    headers['content-type'] ??= 'application/json'
  }
  const res = await fetch(`${base}${path}`, {
    method: opts.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    body,
  })
  const text = await res.text()
  let json: unknown = undefined
  try {
    json = JSON.parse(text)
  } catch {
    // not JSON (SSE, HTML)
  }
  return { status: res.status, headers: res.headers, text, json }
}

export function chat(key: string, body: Record<string, unknown>, headers?: Record<string, string>) {
  return api('/v1/chat/completions', {
    key,
    body: { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], ...body },
    headers,
  })
}

/** Operator SQL: sets an account's rate limits ({requests_per_minute: n, …}; null clears). */
export async function setRateLimits(userId: number, limits: Record<string, number | null>) {
  await db()`select gateway.set_rate_limits(${userId}, ${db().json(limits)})`
}

/** The account's balance row (Postgres). */
export async function balance(userId: number): Promise<{ balance: number; held: number }> {
  const [b] =
    await db()`select balance, held from gateway.credit_balances where account_id = ${userId}`
  return { balance: Number(b.balance), held: Number(b.held) }
}

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

export interface UsageRecord {
  hold_id: number
  model: string
  prompt_tokens: number
  completion_tokens: number
  credits_charged: number
  credits_held: number
  status: string
  settled_by: string
  generation_id: string | null
  note: string | null
}

/** The usage records of an account, newest first. */
export async function usageRecords(userId: number): Promise<UsageRecord[]> {
  const rows = await db()`
    select hold_id, model, prompt_tokens, completion_tokens, credits_charged, credits_held, status,
           settled_by, generation_id, note
      from gateway.usage_records where account_id = ${userId} order by hold_id desc`
  return rows.map((r) => ({
    ...r,
    hold_id: Number(r.hold_id),
    credits_charged: Number(r.credits_charged),
    credits_held: Number(r.credits_held),
  })) as unknown as UsageRecord[]
}

/** Waits until the account has `count` usage records and no open hold; returns the newest. */
export async function settled(userId: number, count = 1, timeoutMs = 20_000): Promise<UsageRecord> {
  return await waitFor(`${count} settled request(s) of account ${userId}`, async () => {
    const records = await usageRecords(userId)
    const { held } = await balance(userId)
    return records.length >= count && held === 0 ? records[0] : undefined
  }, timeoutMs)
}

// ---- the simulator ----------------------------------------------------------------------------

export interface SimGeneration {
  id: string
  model: string
  stream: boolean
  prompt_tokens: number
  completion_tokens: number
  cancelled: boolean
  fault: string | null
  ended: boolean
}

// deno-lint-ignore no-explicit-any
export async function simStats(summary = false): Promise<any> {
  const res = await fetch(`${SIM_URL}/__sim/stats${summary ? '?summary=1' : ''}`)
  return await res.json()
}

export async function simGeneration(id: string): Promise<SimGeneration> {
  const stats = await simStats()
  const g = (stats.generations as SimGeneration[]).find((x) => x.id === id)
  if (!g) throw new Error(`the simulator has no generation ${id}`)
  return g
}

/** Number of chat requests the simulator has received. */
export async function simChatCount(): Promise<number> {
  return (await simStats(true)).requests.chat
}

/** The last chat request the simulator received (body and recorded headers). */
// deno-lint-ignore no-explicit-any
export async function simLastReceived(): Promise<{ body: any; headers: Record<string, string> }> {
  const received = (await simStats()).received
  return received[received.length - 1]
}

/** Reads the simulator's config, or patches it (returning the config after the patch). */
export async function simConfig(patch?: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await fetch(`${SIM_URL}/__sim/config`, {
    method: patch ? 'POST' : 'GET',
    headers: { 'content-type': 'application/json' },
    body: patch ? JSON.stringify(patch) : undefined,
  })
  return await res.json()
}

/** The data payloads of an SSE body, in order ('[DONE]' included). */
export function sseData(text: string): string[] {
  return text.split('\n\n').flatMap((event) =>
    event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart())
  ).filter((d) => d !== '')
}
