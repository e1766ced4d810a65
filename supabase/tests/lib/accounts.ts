// Accounts made for a test, as an operator makes them (SQL, as `postgres`), and what the gateway
// recorded for them. Accounts are created fresh per test (unique emails) through SQL's
// gateway.register with no client IP, so the sign-up limits only apply to the tests of
// /auth/register itself, which forget their sign-ups afterwards (forgettingSignups).

import { base62, crc32 } from '../../functions/_shared/keys.ts'
import { db, waitFor } from './stack.ts'

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
  /** The request's facts the hold was sized from (prompt_bound, images, …, web_results). */
  facts: Record<string, number>
  cached_tokens: number
  cache_write_tokens: number
  reasoning_tokens: number
  web_search_requests: number
  /** USD, decimal text: usage.cost as reported, else computed from the price charged. */
  upstream_usd: string | null
  overrun_credits: number
  pricing_mode: string | null
}

/** The usage records of an account, newest first. */
export async function usageRecords(userId: number): Promise<UsageRecord[]> {
  const rows = await db()`
    select hold_id, model, prompt_tokens, completion_tokens, credits_charged, credits_held, status,
           settled_by, generation_id, note, facts, cached_tokens, cache_write_tokens,
           reasoning_tokens, web_search_requests, upstream_usd::text, overrun_credits, pricing_mode
      from gateway.usage_records where account_id = ${userId} order by hold_id desc`
  return rows.map((r) => ({
    ...r,
    overrun_credits: Number(r.overrun_credits),
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

/**
 * A test's HTTP sign-ups come from this machine (127.0.0.1, ::1) and must not spend the hour's
 * sign-ups of a person trying the stack after the suite: take a mark before them and forget the
 * sign-ups made since (gateway.signups rows; the accounts themselves stay).
 */
export async function signupMark(): Promise<number> {
  const [{ mark }] = await db()`select coalesce(max(id), 0)::bigint as mark from gateway.signups`
  return Number(mark)
}

export async function forgetSignups(mark: number): Promise<void> {
  await db()`delete from gateway.signups where id > ${mark}`
}

/** Runs `fn`, then forgets the sign-ups made meanwhile. */
export async function forgettingSignups<T>(fn: () => Promise<T>): Promise<T> {
  const mark = await signupMark()
  try {
    return await fn()
  } finally {
    await forgetSignups(mark)
  }
}

/**
 * Runs `fn` with room for exactly `room` more sign-ups from this machine's network (127.0.0.0/24)
 * this hour, and room in the hour's sign-ups of everyone: both settings are raised for it, then
 * restored, and the sign-ups made meanwhile are forgotten.
 */
export async function withRegistrationRoom<T>(room: number, fn: () => Promise<T>): Promise<T> {
  const [s] = await db()`
    select registrations_per_network_per_hour as network, registrations_per_hour as hourly
      from gateway.system_settings where id`
  const [{ here, all }] = await db()`
    select count(*) filter (where network && gateway.signup_network('127.0.0.1'))::int as here,
           count(*)::int as all
      from gateway.signups where created_at > now() - interval '1 hour'`
  await db()`select gateway.set_setting('registrations_per_network_per_hour', ${
    String(here + room)
  })`
  await db()`select gateway.set_setting('registrations_per_hour', ${String(all + room + 10)})`
  try {
    return await forgettingSignups(fn)
  } finally {
    await db()`select gateway.set_setting('registrations_per_network_per_hour', ${
      String(s.network)
    })`
    await db()`select gateway.set_setting('registrations_per_hour', ${String(s.hourly)})`
  }
}
