// A lapsed lease must not let a client spend the same credits twice (issue 11: "no request may cost
// more than its hold", "balance never below zero except recorded overruns"). A worker killed
// mid-stream (here SIGKILL; a client gets it killed for memory with a few hundred concurrent streams)
// stops renewing its holds and their leases lapse. Upstream billed those generations: were the
// sweeper to release their credits (as it did when leases came in), the client could spend them
// before the reconcile charges the streams from /generation (balance -323, no overrun recorded).
// The lapsed hold of a generation keeps its credits held until the reconcile settles it.

import assert from 'node:assert/strict'
import { balance, newAccount, setCredits } from '../lib/accounts.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, test, waitFor } from '../lib/stack.ts'

function chat(url: string, key: string, body: Record<string, unknown>) {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'a long answer' }], ...body }),
  })
}

test("credits of a killed worker's stream cannot be spent again before the reconcile charges it", async () => {
  const sim = startOwnSimulator()
  const secret = 'test-scheduler-secret'
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_CRON_SECRET: secret, GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const a = await newAccount(4_400, 'lapse-spend')
    const res = await chat(fn.url, a.key, {
      model: 'openai/gpt-4o-mini~len-4000~delay-5',
      max_tokens: 4000,
      stream: true,
    })
    assert.equal(res.status, 200)
    const gen = res.headers.get('x-generation-id')!
    const reader = res.body!.getReader()
    // Some 600 tokens streamed (one SSE event each) before the worker dies.
    let events = 0
    const decoder = new TextDecoder()
    while (events < 600) {
      const { value, done } = await reader.read()
      if (done) break
      events += decoder.decode(value).split('data: ').length - 1
    }
    await waitFor('the generation id to be noted', async () => {
      const [h] = await db()`select generation_id from gateway.holds where account_id = ${a.userId}`
      return h?.generation_id === gen
    })
    const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
    const { workers } = await (await fetch(`${base}/_edge/lifecycle`)).json()
    for (const w of workers) if (w.in_flight > 0) Deno.kill(w.pid, 'SIGKILL')
    await reader.read().then(() => reader.cancel()).catch(() => {})
    await waitFor('the generation to end', () => Promise.resolve(sim.generation(gen)?.ended))
    await waitFor("the dead worker's lease to lapse", async () => {
      const [h] = await db()`select count(*)::int as n from gateway.holds
                              where account_id = ${a.userId} and expires_at <= now()`
      return h.n === 1
    })
    await db()`select gateway.expire_stale_holds()`
    // The client tries to spend what the stream had held: the lapsed hold still holds it.
    const spend = await chat(fn.url, a.key, { model: 'openai/gpt-4o-mini~len-100000' })
    const refused = await spend.json()
    assert.equal(spend.status, 402, JSON.stringify(refused))
    assert.equal(refused.error.code, 'insufficient_credits')
    // The scheduler's reconcile (any age) charges the killed stream from /generation.
    await waitFor('the reconcile to settle the killed stream', async () => {
      const r = await (await fetch(`${fn.url}/internal/reconcile`, {
        method: 'POST',
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        body: JSON.stringify({ min_age_seconds: 0 }),
      })).json()
      return r.settled > 0
    })
    const [u] = await db()`
      select coalesce(sum(overrun_credits), 0)::int as overrun,
             coalesce(sum(credits_charged), 0)::int as charged
        from gateway.usage_records where account_id = ${a.userId}`
    const b = await balance(a.userId)
    console.log(
      `lapse-spend: charged ${u.charged} of 4400, balance ${b.balance}, recorded overrun ${u.overrun}`,
    )
    // Left at zero: a negative balance would fail the database tier's books on this database.
    if (b.balance < 0) await setCredits(a.userId, 0, b.balance)
    assert.ok(b.balance >= 0, `balance ${b.balance}`)
    assert.ok(
      b.balance >= -u.overrun,
      `balance ${b.balance} below zero beyond recorded overruns (${u.overrun})`,
    )
  } finally {
    await fn.stop()
    await sim.close()
  }
})
