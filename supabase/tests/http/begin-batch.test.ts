// Concurrent admissions: requests that arrive while admission calls are in flight are admitted
// together by one `begin_requests` call (admission.ts). Whatever the batching, each request gets
// exactly the decision it would get alone: limits and credits admit exactly as many as they allow,
// the refused ones never reach upstream, and an element the database rejects fails alone.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits, settled } from '../lib/accounts.ts'
import { chat } from '../lib/http.ts'
import { simChatCount } from '../lib/sim.ts'
import { db, FUNCTION_DB_URL, test } from '../lib/stack.ts'

/** Calls of gateway.begin_requests so far (pg_stat_statements; the stack preloads it). */
async function batchCalls(): Promise<number> {
  const [r] = await db()`
    select coalesce(sum(calls), 0)::int as n from extensions.pg_stat_statements
     where query like '%gateway.begin_requests(%'`
  return r.n
}

test('concurrent admissions go in batches and each request gets its own exact decision', async () => {
  const perAccount = 8
  // Each account its own limit and its own completion length, so a decision or a charge handed to
  // the wrong request would show.
  const limits = [5, 4, 6]
  const models = limits.map((_, a) => `openai/gpt-4o-mini~len-${a + 2}`)
  const accounts = await Promise.all(limits.map(() => newAccount(100_000, 'beginbatch')))
  for (let a = 0; a < accounts.length; a++) {
    await setRateLimits(accounts[a].userId, { requests_per_minute: limits[a] })
  }
  const batchesBefore = await batchCalls()
  const upstreamBefore = await simChatCount()

  // Interleaved, so every batch mixes the three accounts.
  const responses = await Promise.all(
    Array.from({ length: perAccount * accounts.length }, (_, i) => {
      const a = i % accounts.length
      return chat(accounts[a].key, { model: models[a] }).then((r) => ({ a, r }))
    }),
  )

  for (let a = 0; a < accounts.length; a++) {
    const mine = responses.filter((x) => x.a === a).map((x) => x.r)
    const ok = mine.filter((r) => r.status === 200)
    assert.equal(ok.length, limits[a], `account ${a}: admitted exactly its per-minute limit`)
    for (const r of ok) {
      assert.equal(r.headers.get('x-ratelimit-limit-requests'), String(limits[a]), 'its own limit')
      assert.equal(r.json.usage.completion_tokens, a + 2)
    }
    for (const r of mine.filter((r) => r.status !== 200)) {
      assert.equal(r.status, 429, r.text)
      assert.equal(r.json.error.code, 'rate_limited')
      assert.ok(Number(r.headers.get('retry-after')) >= 1)
      assert.equal(r.headers.get('x-ratelimit-limit-requests'), String(limits[a]))
      assert.equal(r.headers.get('x-ratelimit-remaining-requests'), '0')
    }
  }
  const admitted = limits.reduce((x, y) => x + y)
  assert.equal(await simChatCount() - upstreamBefore, admitted, 'the refused never reach upstream')
  assert.ok(await batchCalls() > batchesBefore, 'some admissions went together in begin_requests')

  for (let a = 0; a < accounts.length; a++) {
    await settled(accounts[a].userId, limits[a])
    const charged = responses.filter((x) => x.a === a && x.r.status === 200)
      .reduce((sum, x) => sum + x.r.json.gateway_usage.credits_charged, 0)
    assert.deepEqual(await balance(accounts[a].userId), { balance: 100_000 - charged, held: 0 })
  }
})

test('an element the database rejects fails alone: the rest of its batch is admitted', async () => {
  // admission.ts directly (its own pool, as the function's: the pooler, as gateway_api).
  Deno.env.set('GATEWAY_DB_URL', FUNCTION_DB_URL)
  // Eight admissions of one caller would make it busy enough for reserved admissions
  // (reservations.ts), which are not what this test is about.
  Deno.env.set('GATEWAY_RESERVE_ADMISSIONS', '0')
  const { begin } = await import('../../functions/gateway/admission.ts')
  const { voidHold } = await import('../../functions/gateway/settlement.ts')
  // Read once at import (config.ts). Not left set: the functions servers later tests of this
  // process start inherit its environment.
  Deno.env.delete('GATEWAY_RESERVE_ADMISSIONS')
  Deno.env.delete('GATEWAY_DB_URL')
  const { hashKey } = await import('../../functions/_shared/keys.ts')
  const a = await newAccount(100_000, 'beginbatch')
  const who = { keyHash: hashKey(a.key), ip: '127.0.0.1', referrer: null }

  // max_tokens 0 makes begin_request raise (the HTTP route refuses it before SQL): in a batch it
  // aborts the whole call, and batcher.ts then admits each element alone.
  const attempts = await Promise.allSettled(
    [8, 8, 8, 0, 8, 8, 8, 8].map((max) =>
      begin(who, {
        models: ['openai/gpt-4o-mini'],
        prompt_bound: 10,
        parts: { images: 0, audio: 0, files: 0 },
        web_results: 0,
        max_tokens: max,
        lifetime_seconds: 0,
      })
    ),
  )
  const failed = attempts.filter((x) => x.status === 'rejected')
  assert.equal(failed.length, 1, 'only the invalid element fails')
  const err = (failed[0] as PromiseRejectedResult).reason
  assert.equal(err.status, 400)
  assert.equal(err.code, 'invalid_request')
  const holds = attempts.flatMap((x) => x.status === 'fulfilled' ? [x.value] : [])
  assert.equal(holds.length, 7)
  assert.equal(new Set(holds.map((h) => h.hold_id)).size, 7, 'seven distinct holds')

  await Promise.all(holds.map((h) => voidHold(h, 'test')))
  assert.deepEqual(await balance(a.userId), { balance: 100_000, held: 0 })
  const { sql } = await import('../../functions/gateway/db.ts')
  await sql().end()
})
