// A hostile (or broken) upstream's usage: costs written as odd but valid JSON numbers, costs that
// settle_request refuses, and `usage` named twice. Whatever upstream sends, the client never sees
// upstream's cost, the request is settled, and the charge a response reports is the one SQL made.
// The upstream here is a test's own server that answers chat completions with crafted text (and
// passes everything else to the stack's simulator).

import assert from 'node:assert/strict'
import { newAccount, settled } from '../lib/accounts.ts'
import { checkBooks } from '../lib/books.ts'
import { client } from '../lib/http.ts'
import { startFunctions } from '../lib/procs.ts'
import { SIM_URL, test } from '../lib/stack.ts'

/** An upstream whose chat completion is `reply(stream)`'s text; the rest goes to the simulator. */
function craftedUpstream(reply: (stream: boolean) => string) {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url)
    if (url.pathname.endsWith('/chat/completions')) {
      const body = await req.json()
      const stream = body.stream === true
      return new Response(reply(stream), {
        headers: { 'content-type': stream ? 'text/event-stream' : 'application/json' },
      })
    }
    return await fetch(`${SIM_URL}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
      body: req.body,
    })
  })
  return { server, baseUrl: `http://127.0.0.1:${server.addr.port}/api/v1` }
}

/** The function on `up`, the catalog loaded; `run` with a client of it, then both stopped. */
async function withGateway(
  up: ReturnType<typeof craftedUpstream>,
  run: (gw: ReturnType<typeof client>) => Promise<void>,
): Promise<void> {
  const fn = await startFunctions({ upstream: up.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  try {
    const gw = client(fn.url)
    assert.equal((await gw('/v1/models')).status, 200)
    await run(gw)
  } finally {
    await fn.stop()
    await up.server.shutdown()
  }
}

const completion = (usageJson: string, extra = '') =>
  `{"id":"gen-hostile-${crypto.randomUUID()}","model":"openai/gpt-4o-mini",${extra}"choices":[` +
  `{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],` +
  `"usage":${usageJson}}`

const sse = (...data: string[]) => data.map((d) => `data: ${d}\n\n`).join('') + 'data: [DONE]\n\n'
const DELTA = '{"id":"gen-hostile-s","model":"openai/gpt-4o-mini","choices":[{"index":0,' +
  '"delta":{"content":"hi"}}]}'
const usageChunk = (usageJson: string, extra = '') =>
  `{"id":"gen-hostile-s","model":"openai/gpt-4o-mini",${extra}"choices":[],"usage":${usageJson}}`

const BODY = {
  model: 'openai/gpt-4o-mini',
  messages: [{ role: 'user', content: 'hi' }],
  max_tokens: 10,
}

// deno-lint-ignore no-explicit-any
function finalUsage(stream: boolean, text: string): any {
  if (!stream) return JSON.parse(text)
  // As an SSE client reads it: an event's data lines joined; any other line is no part of it.
  const data = text.split('\n\n').map((e) =>
    e.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, ''))
      .join('\n')
  ).filter((d) => d.startsWith('{'))
  return JSON.parse(data[data.length - 1])
}

// Costs that are valid JSON numbers settle_request does not take (usage_facts: at most 7 digits,
// 30 decimals and a 2-digit exponent, below 1,000,000 USD): the function must not hand them to the
// settle as the cost (the settle would fail, the hold stay open until the sweeper, and the response
// report a charge nobody made), nor fail on them (an exponent of 4 digits, one beyond a double).
test('a cost settle_request does not take: settled all the same, the charge reported is the one SQL made', async () => {
  let reply = ''
  const up = craftedUpstream(() => reply)
  await withGateway(up, async (gw) => {
    const costs = [
      '2000000',
      '1e0001',
      '1e999',
      '1e-1001',
      '1e-100',
      `0.${'0'.repeat(30)}1`,
      '12345678',
    ]
    for (const stream of [false, true]) {
      for (const cost of costs) {
        const usage = `{"prompt_tokens":5,"completion_tokens":3,"cost":${cost}}`
        reply = stream ? sse(DELTA, usageChunk(usage)) : completion(usage)
        const a = await newAccount(1_000_000, 'hostile-cost')
        const r = await gw('/v1/chat/completions', { key: a.key, body: { ...BODY, stream } })
        const what = `cost ${cost}, ${stream ? 'stream' : 'json'}`
        assert.equal(r.status, 200, `${what}: ${r.text}`)
        const rec = await settled(a.userId, 1, 10_000)
        assert.equal(rec.settled_by, 'usage', what)
        const doc = finalUsage(stream, r.text)
        assert.equal(doc.gateway_usage.credits_charged, rec.credits_charged, what)
        assert.ok(!r.text.includes(`"cost":${cost}`), `${what}: upstream's cost shown`)
        const books = await checkBooks([a.userId])
        assert.deepEqual(books.problems, [], what)
      }
    }
  })
})

// JSON.parse keeps the last of a name given twice, and so do the charge and the rewrite: an earlier
// `usage` stayed in the text as upstream sent it, its cost for any client (or reader of the raw
// text, or a parser that keeps the first) to see.
test("usage named twice by upstream: neither shows upstream's cost, the charge is SQL's", async () => {
  let reply = ''
  const up = craftedUpstream(() => reply)
  await withGateway(up, async (gw) => {
    const first = '{"prompt_tokens":900,"completion_tokens":900,"cost":0.123456}'
    const last = '{"prompt_tokens":5,"completion_tokens":3,"cost":0.000777}'
    for (const stream of [false, true]) {
      reply = stream
        ? sse(DELTA, usageChunk(last, `"usage" :\ndata:  ${first}\ndata: ,`))
        : completion(last, `"usage":${first}, `)
      const a = await newAccount(1_000_000, 'hostile-dup')
      const r = await gw('/v1/chat/completions', { key: a.key, body: { ...BODY, stream } })
      assert.equal(r.status, 200, r.text)
      // (As members: a bare 900 may be part of the generation's random id.)
      for (const leak of ['0.123456', '0.000777', ':900']) {
        assert.ok(!r.text.includes(leak), `${stream ? 'stream' : 'json'}: ${leak} in ${r.text}`)
      }
      const rec = await settled(a.userId, 1, 10_000)
      const doc = finalUsage(stream, r.text)
      assert.equal(doc.gateway_usage.credits_charged, rec.credits_charged)
      assert.equal(rec.prompt_tokens, 5)
      assert.equal(doc.usage.prompt_tokens, 5)
    }
  })
})
