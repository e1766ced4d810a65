// In-process: what the gateway sends OpenRouter with each chat completion — the operator's key and
// the app attribution headers from OPENROUTER_SITE_URL / OPENROUTER_SITE_NAME, and nothing of the
// client's. (The HTTP tests cannot set the running function's environment; this drives upstream.ts
// directly against a capturing server.)

import assert from 'node:assert/strict'
import { test } from '../lib/stack.ts'

test('chat requests go upstream with the operator key, HTTP-Referer and X-Title', async () => {
  const seen: Headers[] = []
  const bodies: string[] = []
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    seen.push(req.headers)
    bodies.push(await req.text())
    return Response.json({ id: 'gen-1', choices: [], usage: {} }, {
      headers: { 'x-generation-id': 'gen-1' },
    })
  })
  try {
    Deno.env.set('OPENROUTER_BASE_URL', `http://127.0.0.1:${server.addr.port}/api/v1/`)
    Deno.env.set('OPENROUTER_API_KEY', 'sk-or-v1-operator')
    Deno.env.set('OPENROUTER_SITE_URL', 'https://gateway.example')
    Deno.env.set('OPENROUTER_SITE_NAME', 'Example Gateway')
    const { postChat } = await import('../../functions/gateway/upstream.ts')
    const call = postChat('{"model":"m","messages":[]}', 5_000)
    const res = await call.response
    await res.body?.cancel()
    call.done()
    assert.equal(res.status, 200)
    const h = seen[0]
    assert.equal(h.get('authorization'), 'Bearer sk-or-v1-operator')
    assert.equal(h.get('http-referer'), 'https://gateway.example')
    assert.equal(h.get('x-title'), 'Example Gateway')
    assert.equal(h.get('content-type'), 'application/json')
    assert.equal(bodies[0], '{"model":"m","messages":[]}')
  } finally {
    await server.shutdown()
  }
})
