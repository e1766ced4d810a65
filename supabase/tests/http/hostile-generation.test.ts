// A hostile (or broken) upstream's /generation and usage counts that are not the request's own:
// stats for another generation (another account's, a much larger one) and negative counts. Taken
// as they came, the first charged account A for B's generation (up to A's whole hold), the second
// settled a completion as 0 tokens whatever the client received. Both must be treated as stats or
// counts not reported: billed from the request's own /generation, else our count, or (the
// reconcile) left pending.
// The upstream is a test's own server; everything it does not craft goes to the stack's simulator.

import assert from 'node:assert/strict'
import { newAccount, settled } from '../lib/accounts.ts'
import { checkBooks } from '../lib/books.ts'
import { craftedUpstream, lastContent, streamChat } from '../lib/crafted-upstream.ts'
import { client } from '../lib/http.ts'
import { startFunctions } from '../lib/procs.ts'
import { db, test, waitFor } from '../lib/stack.ts'

const MODEL = 'openai/gpt-4o-mini'
const JSON_HEADERS = { 'content-type': 'application/json' }

/** /generation's document for `id` (as OpenRouter names it in `data.id`). */
const stats = (id: string, completion: string) =>
  new Response(
    `{"data":{"id":"${id}","model":"${MODEL}","native_tokens_prompt":5,` +
      `"native_tokens_completion":${completion},"total_cost":0.00001}}`,
    { headers: JSON_HEADERS },
  )

test('stats for another generation, or negative counts, are not the request’s: its own /generation or our count', async () => {
  // Each request's kind is its prompt; its generation id carries the kind for /generation.
  //   other     usage without a completion count; /generation answers with another generation's
  //             stats (B's, 900 tokens): our count, never B's
  //   negative  usage counts -5 completion tokens: billed from /generation (7), not as 0
  //   neg-gen   usage without a completion count; /generation counts -5: our count, not 0
  const content = 'x'.repeat(40) // 10 tokens by our count
  const up = craftedUpstream({
    chat: (body) => {
      const kind = lastContent(body)
      const id = `gen-${kind}-${crypto.randomUUID()}`
      const usage = kind === 'negative'
        ? '{"prompt_tokens":5,"completion_tokens":-5}'
        : '{"prompt_tokens":5}'
      return new Response(
        `{"id":"${id}","model":"${MODEL}","choices":[{"index":0,"message":{"role":"assistant",` +
          `"content":"${content}"},"finish_reason":"stop"}],"usage":${usage}}`,
        { headers: { ...JSON_HEADERS, 'x-generation-id': id } },
      )
    },
    generation: (id) =>
      id.startsWith('gen-other-')
        ? stats(`gen-someone-else-${crypto.randomUUID()}`, '900')
        : id.startsWith('gen-neg-gen-')
        ? stats(id, '-5')
        : stats(id, '7'),
  })
  const fn = await startFunctions({
    upstream: up.baseUrl,
    env: { GATEWAY_LOG_REQUESTS: '0', GATEWAY_GENERATION_LOOKUP_DELAYS_MS: '50,100' },
  })
  try {
    const gw = client(fn.url)
    assert.equal((await gw('/v1/models')).status, 200)
    const kinds = ['other', 'negative', 'neg-gen']
    const accounts = await Promise.all(kinds.map(() => newAccount(1_000_000, 'hostile-gen-id')))
    for (const [i, a] of accounts.entries()) {
      const r = await gw('/v1/chat/completions', {
        key: a.key,
        body: { model: MODEL, max_tokens: 1000, messages: [{ role: 'user', content: kinds[i] }] },
      })
      assert.equal(r.status, 200, r.text)
    }
    const records = await Promise.all(accounts.map((a) => settled(a.userId, 1, 15_000)))
    assert.deepEqual(
      records.map((r) => `${r.status} by ${r.settled_by}: ${r.completion_tokens}`),
      [
        'success by stream_count: 10',
        'success by generation: 7',
        'success by stream_count: 10',
      ],
    )
    const books = await checkBooks(accounts.map((a) => a.userId))
    assert.deepEqual(books.problems, [])
  } finally {
    await fn.stop()
    await up.server.shutdown()
  }
})

test('the reconcile leaves a hold pending when /generation answers with another generation’s stats', async () => {
  const secret = 'test-scheduler-secret'
  const streams: ReadableStreamDefaultController<Uint8Array>[] = []
  const enc = new TextEncoder()
  const up = craftedUpstream({
    chat: () => {
      const id = `gen-mine-${crypto.randomUUID()}`
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
    // Always another generation's stats, 900 completion tokens.
    generation: () => stats(`gen-theirs-${crypto.randomUUID()}`, '900'),
  })
  const fn = await startFunctions({
    upstream: up.baseUrl,
    env: { GATEWAY_CRON_SECRET: secret, GATEWAY_LOG_REQUESTS: '0' },
  })
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined
  try {
    const gw = client(fn.url)
    assert.equal((await gw('/v1/models')).status, 200)
    const a = await newAccount(1_000_000, 'hostile-gen-reconcile')
    const res = await streamChat(fn.url, a.key, 'hi', 1000, MODEL)
    assert.equal(res.status, 200)
    reader = res.body!.getReader()
    await reader.read()
    await waitFor('the generation id to be noted', async () => {
      const [h] = await db()`select count(*)::int as n from gateway.holds
                              where account_id = ${a.userId} and generation_id is not null`
      return h.n === 1
    })
    const r = await fetch(`${fn.url}/internal/reconcile`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ min_age_seconds: 0 }),
    })
    assert.equal(r.status, 200, await r.text())
    const [u] = await db()`select count(*)::int as n from gateway.usage_records
                            where account_id = ${a.userId}`
    assert.equal(u.n, 0, 'the hold is not settled from another generation’s stats')
    // The stream ends without a usage chunk: billed from our own count, once.
    for (const c of streams.splice(0)) c.close()
    const rec = await settled(a.userId, 1, 30_000)
    assert.equal(`${rec.status} by ${rec.settled_by}`, 'success by stream_count')
    const books = await checkBooks([a.userId])
    assert.deepEqual(books.problems, [])
  } finally {
    for (const c of streams) {
      try {
        c.close()
      } catch { /* already closed */ }
    }
    await reader?.cancel().catch(() => {})
    await fn.stop()
    await up.server.shutdown()
  }
})

test('a stream whose usage comes before more content: that usage is not the generation’s, billed for all that was received', async () => {
  // The usage chunk counts 1 completion token, then 20 more content chunks come: the client
  // received 21 chunks. OpenRouter sends the usage last; one followed by content is not final.
  const enc = new TextEncoder()
  const chunk = (id: string, text: string) =>
    `data: {"id":"${id}","model":"${MODEL}","choices":[{"index":0,"delta":{"content":"${text}"}}]}\n\n`
  const up = craftedUpstream({
    chat: () => {
      const id = `gen-early-usage-${crypto.randomUUID()}`
      let body = chunk(id, 'a')
      body += `data: {"id":"${id}","model":"${MODEL}","choices":[],` +
        `"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n`
      for (let i = 0; i < 20; i++) body += chunk(id, `w${i} `)
      body += 'data: [DONE]\n\n'
      return new Response(enc.encode(body), {
        headers: { 'content-type': 'text/event-stream', 'x-generation-id': id },
      })
    },
    // No stats for it (the simulator does not know the id): our count.
  })
  const fn = await startFunctions({
    upstream: up.baseUrl,
    env: { GATEWAY_LOG_REQUESTS: '0', GATEWAY_GENERATION_LOOKUP_DELAYS_MS: '50' },
  })
  try {
    const a = await newAccount(1_000_000, 'hostile-early-usage')
    const res = await streamChat(fn.url, a.key, 'hi', 1000, MODEL)
    assert.equal(res.status, 200)
    const text = await res.text()
    const received = text.split('\n\n').filter((e) => e.includes('"delta":{"content"')).length
    assert.equal(received, 21, text)
    assert.ok(text.trimEnd().endsWith('data: [DONE]'), text)
    const rec = await settled(a.userId, 1, 15_000)
    assert.ok(
      rec.completion_tokens >= received,
      `billed ${rec.completion_tokens} completion tokens by ${rec.settled_by}, received ${received}`,
    )
    const books = await checkBooks([a.userId])
    assert.deepEqual(books.problems, [])
  } finally {
    await fn.stop()
    await up.server.shutdown()
  }
})
