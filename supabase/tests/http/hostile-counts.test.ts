// A hostile (or broken) upstream's token counts beyond what settle_request takes (usage_facts:
// integers from 0 to 2147483647), in a completion's usage and in /generation's stats. Sent to SQL,
// such a count failed the settle (the hold then expired uncharged: the request escaped its charge)
// and stopped the reconcile run at it (400, the other holds of the run left for the next one). The
// settles batched with it are retried one by one (batcher.ts); they must stay settled.
// The upstream is a test's own server; everything it does not craft goes to the stack's simulator.

import assert from 'node:assert/strict'
import { newAccount, settled } from '../lib/accounts.ts'
import { checkBooks } from '../lib/books.ts'
import { craftedUpstream, lastContent, streamChat } from '../lib/crafted-upstream.ts'
import { client } from '../lib/http.ts'
import { startFunctions } from '../lib/procs.ts'
import { db, test, waitFor } from '../lib/stack.ts'

const HUGE = '3000000000'
const MODEL = 'openai/gpt-4o-mini'

const completion = (id: string, usage: string) =>
  `{"id":"${id}","model":"${MODEL}","choices":[{"index":0,"message":{"role":"assistant",` +
  `"content":"hi"},"finish_reason":"stop"}],"usage":${usage}}`

test('a usage count beyond settle_request’s range, or none: billed from /generation or our count, and the settles batched with it are not lost', async () => {
  // Request 0's usage counts 3e9 completion tokens and its generation has no stats: billed by our
  // count of what came back. Request 1's usage leaves the count out: billed from /generation.
  const up = craftedUpstream({
    chat: (body) => {
      const kind = lastContent(body)
      const usage = kind === 'hostile'
        ? `{"prompt_tokens":5,"completion_tokens":${HUGE},"prompt_tokens_details":{"cached_tokens":${HUGE}}}`
        : kind === 'missing'
        ? '{"prompt_tokens":5}'
        : '{"prompt_tokens":5,"completion_tokens":3}'
      const id = kind === 'missing'
        ? `gen-stats-${crypto.randomUUID()}`
        : `gen-${crypto.randomUUID()}`
      return new Response(completion(id, usage), {
        headers: { 'content-type': 'application/json' },
      })
    },
    generation: (id) =>
      id.startsWith('gen-stats-')
        ? new Response(
          `{"data":{"id":"${id}","model":"${MODEL}","native_tokens_prompt":5,` +
            `"native_tokens_completion":7,"total_cost":0.00001}}`,
          { headers: { 'content-type': 'application/json' } },
        )
        : undefined,
  })
  // A linger long enough that the concurrent settles go in one settle_requests batch.
  const fn = await startFunctions({
    upstream: up.baseUrl,
    env: {
      GATEWAY_LOG_REQUESTS: '0',
      GATEWAY_SETTLE_LINGER_MS: '300',
      GATEWAY_GENERATION_LOOKUP_DELAYS_MS: '100,200',
    },
  })
  try {
    const gw = client(fn.url)
    assert.equal((await gw('/v1/models')).status, 200)
    const accounts = await Promise.all(
      Array.from({ length: 9 }, () => newAccount(1_000_000, 'hostile-count')),
    )
    const kinds = accounts.map((_, i) => i === 0 ? 'hostile' : i === 1 ? 'missing' : 'hi')
    const responses = await Promise.all(accounts.map((a, i) =>
      gw('/v1/chat/completions', {
        key: a.key,
        body: { model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: kinds[i] }] },
      })
    ))
    for (const r of responses) assert.equal(r.status, 200, r.text)
    const records = await Promise.all(accounts.map((a) => settled(a.userId, 1, 15_000)))
    assert.deepEqual(
      records.map((r) => `${r.status} by ${r.settled_by}: ${r.completion_tokens}`),
      // "hi" came back: one token by our count (a quarter of its bytes, rounded up).
      kinds.map((k) =>
        k === 'hostile'
          ? 'success by stream_count: 1'
          : k === 'missing'
          ? 'success by generation: 7'
          : 'success by usage: 3'
      ),
    )
    for (const [i, rec] of records.entries()) {
      // Billed after the response, for the two whose usage could not be: the charge is unknown then.
      assert.equal(
        JSON.parse(responses[i].text).gateway_usage.credits_charged,
        i < 2 ? null : rec.credits_charged,
        `request ${i}: the charge reported`,
      )
      assert.ok(rec.credits_charged > 0, `request ${i} is charged`)
    }
    const books = await checkBooks(accounts.map((a) => a.userId))
    assert.deepEqual(books.problems, [])
  } finally {
    await fn.stop()
    await up.server.shutdown()
  }
})

test('a /generation count beyond settle_request’s range does not stop the reconcile of other holds', async () => {
  const secret = 'test-scheduler-secret'
  const streams: ReadableStreamDefaultController<Uint8Array>[] = []
  const enc = new TextEncoder()
  const up = craftedUpstream({
    chat: (body) => {
      const id = lastContent(body) === 'hostile'
        ? `gen-huge-${crypto.randomUUID()}`
        : `gen-ok-${crypto.randomUUID()}`
      // One delta, then silence until the test ends: the hold stays open with its generation id.
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          streams.push(c)
          c.enqueue(enc.encode(
            `data: {"id":"${id}","model":"${MODEL}","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n`,
          ))
        },
      })
      return new Response(stream, {
        headers: { 'content-type': 'text/event-stream', 'x-generation-id': id },
      })
    },
    generation: (id) => {
      const huge = id.startsWith('gen-huge-')
      const tokens = huge ? HUGE : '3'
      return new Response(
        `{"data":{"id":"${id}","model":"${MODEL}","native_tokens_prompt":5,` +
          `"native_tokens_completion":${tokens},"native_tokens_cached":${tokens},` +
          `"native_tokens_reasoning":${tokens},"total_cost":0.00001}}`,
        { headers: { 'content-type': 'application/json' } },
      )
    },
  })
  const fn = await startFunctions({
    upstream: up.baseUrl,
    env: { GATEWAY_CRON_SECRET: secret, GATEWAY_LOG_REQUESTS: '0' },
  })
  const readers: ReadableStreamDefaultReader<Uint8Array>[] = []
  try {
    const gw = client(fn.url)
    assert.equal((await gw('/v1/models')).status, 200)
    // The hostile one first: the reconcile takes the newest first, so the others come before it and
    // after it in its four lanes.
    const accounts = await Promise.all(
      Array.from({ length: 9 }, () => newAccount(1_000_000, 'hostile-gen')),
    )
    for (const [i, a] of accounts.entries()) {
      const res = await streamChat(fn.url, a.key, i % 2 === 0 ? 'hostile' : 'hi', 10, MODEL)
      assert.equal(res.status, 200)
      const reader = res.body!.getReader()
      readers.push(reader)
      await reader.read()
    }
    const ids = accounts.map((a) => a.userId)
    await waitFor('every generation id to be noted', async () => {
      const [h] = await db()`select count(*)::int as n from gateway.holds
                              where account_id = any(${ids}::bigint[]) and generation_id is not null`
      return h.n === accounts.length
    })
    const r = await fetch(`${fn.url}/internal/reconcile`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ min_age_seconds: 0 }),
    })
    const text = await r.text()
    assert.equal(r.status, 200, text)
    const report = JSON.parse(text)
    // (Holds of other tests may be candidates too: the reconcile is the whole database's.)
    assert.ok(report.settled >= 4 && report.pending >= 5, text)
    for (const [i, a] of accounts.entries()) {
      if (i % 2 === 1) {
        const rec = await settled(a.userId, 1, 10_000)
        assert.equal(rec.settled_by, 'generation', `request ${i}`)
        assert.equal(rec.completion_tokens, 3, `request ${i}`)
      }
    }
    // The streams end without a usage chunk: the hostile ones are billed from our own count.
    for (const c of streams.splice(0)) c.close()
    for (const [i, a] of accounts.entries()) {
      if (i % 2 === 1) continue
      const rec = await settled(a.userId, 1, 30_000)
      assert.equal(`${rec.status} by ${rec.settled_by}`, 'success by stream_count', `request ${i}`)
    }
    const books = await checkBooks(ids)
    assert.deepEqual(books.problems, [])
  } finally {
    for (const c of streams) {
      try {
        c.close()
      } catch { /* already closed */ }
    }
    await Promise.all(readers.map((r) => r.cancel().catch(() => {})))
    await fn.stop()
    await up.server.shutdown()
  }
})
