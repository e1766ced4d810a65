// Money across the edge runtime's worker lifecycle (scripts/serve-functions.ts mirrors Supabase's):
// a worker is retired at half its wall clock and dropped as soon as it has no request in flight and
// no unsettled EdgeRuntime.waitUntil promise; timers keep nothing alive. What the function holds in
// memory only (reserved admissions, settles waiting in a batch) must be under waitUntil while it
// exists, or a drop strands it: credits held and windows counted until the 15-minute hold sweeper.
//
// Each test runs its own functions server with a short wall clock, and reads its lifecycle counts.

import assert from 'node:assert/strict'
import { balance, newAccount, setRateLimits } from '../lib/accounts.ts'
import { call } from '../lib/http.ts'
import { type Functions, startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep, test, waitFor } from '../lib/stack.ts'

interface Lifecycle {
  events: Record<string, number>
  workers: { id: number; state: string }[]
}

async function lifecycle(fn: Functions): Promise<Lifecycle> {
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  return await (await fetch(`${base}/_edge/lifecycle`)).json()
}

async function openHolds(userId: number) {
  const [r] = await db()`
    select (select count(*) from gateway.holds where account_id = ${userId})::int as open,
           (select held from gateway.credit_balances where account_id = ${userId})::int as held`
  return r as { open: number; held: number }
}

test('a worker dropped after its busy caller went quiet leaves no admission reserved', async () => {
  const sim = startOwnSimulator()
  // Retired 3 s after it starts; reservations kept 5 s, so the caller's last reservation is still
  // unused when the worker is retired with no request in flight.
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: {
      FUNCTIONS_WALL_CLOCK_MS: '6000',
      GATEWAY_RESERVE_ADMISSIONS: '32',
      GATEWAY_RESERVE_AFTER: '8',
      GATEWAY_RESERVE_MS: '5000',
      GATEWAY_LOG_REQUESTS: '0',
    },
  })
  try {
    const a = await newAccount(1_000_000, 'lifecycle')
    await setRateLimits(a.userId, { requests_per_minute: 10_000, requests_per_hour: 10_000 })
    let statuses = ''
    for (let i = 0; i < 16; i++) {
      const r = await call(fn.url, '/v1/chat/completions', {
        key: a.key,
        body: {
          model: 'openai/gpt-4o-mini',
          max_tokens: 8,
          messages: [{ role: 'user', content: 'hi' }],
        },
      })
      statuses += `${r.status} `
    }
    assert.equal(statuses.trim(), Array(16).fill(200).join(' '))
    const reserved = await openHolds(a.userId)
    assert.ok(reserved.open > 1, 'the burst reserved admissions ahead (else this proves nothing)')
    // The worker goes away: retired at 3 s, then dropped once nothing keeps it.
    const gone = await waitFor('the first worker to be dropped or killed', async () => {
      const l = await lifecycle(fn)
      return l.events.dropped_early + l.events.killed_wall_clock > 0 ? l : undefined
    }, 30_000)
    await sleep(500)
    const after = await openHolds(a.userId)
    console.log(
      `lifecycle: ${reserved.open} holds open after the burst (reserved ahead); after the worker ` +
        `went (${JSON.stringify(gone.events)}): ${after.open} open, ${after.held} credits held`,
    )
    assert.equal(after.open, 0, 'admissions reserved by a worker that went away stay open')
    assert.equal(after.held, 0)
    assert.equal((await balance(a.userId)).held, 0)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('a client that hangs up on a retired worker is still billed: its hold keeps the worker', async () => {
  const sim = startOwnSimulator()
  // Retired 2 s after it starts, killed at 8 s: the stream below outlives the retirement.
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { FUNCTIONS_WALL_CLOCK_MS: '8000', GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const a = await newAccount(10_000, 'lifecycle-abort')
    const controller = new AbortController()
    const res = await fetch(`${fn.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'openai/gpt-4o-mini~len-400~delay-15',
        stream: true,
        messages: [{ role: 'user', content: 'a long answer' }],
      }),
      signal: controller.signal,
    })
    assert.equal(res.status, 200)
    const reader = res.body!.getReader()
    await reader.read()
    await waitFor('the worker to be retired', async () => (await lifecycle(fn)).events.retired > 0)
    // The client leaves; the worker has nothing else in flight.
    controller.abort()
    await reader.read().catch(() => {})
    const records = await waitFor('the request to be settled', async () => {
      const [r] = await db()`select count(*)::int as n from gateway.usage_records
        where account_id = ${a.userId}`
      return r.n > 0 ? r.n : undefined
    }, 20_000)
    assert.equal(records, 1)
    assert.deepEqual(await openHolds(a.userId), { open: 0, held: 0 })
    const l = await lifecycle(fn)
    console.log(`lifecycle: hung up on a retired worker: ${JSON.stringify(l.events)}`)
  } finally {
    await fn.stop()
    await sim.close()
  }
})
