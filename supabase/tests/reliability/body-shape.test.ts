// A body's bytes are bounded (4 MiB), not what JSON.parse makes of them: two bytes `{}` become a V8
// object of some 140 bytes. `"x":[{},{},…]` in 3.9 MB grew a worker by ~180 MiB while the route
// parsed it, past the 256 MiB a worker may use: the runtime killed the worker, and every request in
// flight in it with it (a stream cut mid-way, its hold left to lapse). The route parses the body
// before SQL sees the key, so a key of the right shape that no account has was enough.

import assert from 'node:assert/strict'
import { newAccount, setRateLimits, unknownKey } from '../lib/accounts.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { test } from '../lib/stack.ts'

/** A 3 s stream (300 tokens, 10 ms apart) that is in flight while the heavy bodies arrive. */
function longStream(url: string, key: string): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'openai/gpt-4o-mini~len-300~delay-10',
      messages: [{ role: 'user', content: 'a long answer' }],
      max_tokens: 300,
      stream: true,
    }),
  })
}

test('a body of 1.3 million empty objects is refused without killing the worker, and a stream in flight there ends whole', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  try {
    const a = await newAccount(1_000_000, 'body-shape')
    const stream = await longStream(fn.url, a.key)
    assert.equal(stream.status, 200)
    const reader = stream.body!.getReader()
    const decoder = new TextDecoder()
    let text = decoder.decode((await reader.read()).value)

    const hostile = `{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],` +
      `"x":[${Array(1_300_000).fill('{}').join(',')}]}`
    // Three times from the account (the parse's garbage is collected or not by the next one).
    const answers: string[] = []
    for (const key of [unknownKey(), a.key, a.key, a.key]) {
      const res = await fetch(`${fn.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: hostile,
      })
      const body = await res.text()
      const error = res.status >= 400 && res.status < 500 ? JSON.parse(body).error : undefined
      const refused = key === a.key ? error?.type === 'invalid_request_error' : error !== undefined
      if (!refused) {
        answers.push(`${key === a.key ? 'account' : 'unknown'} key: ${res.status} ${body}`)
      }
    }

    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }))
      if (done) break
      text += decoder.decode(value)
    }
    const whole = /data: \[DONE\]/.test(text)
    const { events } = await (await fetch(`${base}/_edge/lifecycle`)).json()
    assert.deepEqual(
      { answers, killedForMemory: events.killed_memory, streamWhole: whole },
      { answers: [], killedForMemory: 0, streamWhole: true },
      'each hostile body refused with a 4xx, no worker killed, the stream in flight ended whole',
    )
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('16 concurrent bodies of 199,000 empty objects each: some wait (503), none kills the worker', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  const base = fn.url.replace(/\/functions\/v1\/gateway$/, '')
  try {
    const a = await newAccount(100_000_000, 'body-shape-many')
    await setRateLimits(a.userId, { requests_per_minute: 10_000 })
    const stream = await longStream(fn.url, a.key)
    assert.equal(stream.status, 200)
    const streamed = stream.text().catch((err) => `the stream was cut: ${err}`)
    // Each under the per-body cap (200,000), ~0.6 MB; 16 at once were ~450 MB parsed.
    const heavy =
      `{"model":"openai/gpt-4o-mini~len-2","messages":[{"role":"user","content":"hi"}],` +
      `"max_tokens":4,"x":[${Array(199_000).fill('{}').join(',')}]}`
    const statuses = await Promise.all(Array.from({ length: 16 }, async () => {
      const res = await fetch(`${fn.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
        body: heavy,
      })
      const body = await res.text()
      return res.status === 200 ? '200' : `${res.status} ${JSON.parse(body).error?.code}`
    }))
    const { events } = await (await fetch(`${base}/_edge/lifecycle`)).json()
    const byStatus: Record<string, number> = {}
    for (const s of statuses) byStatus[s] = (byStatus[s] ?? 0) + 1
    console.log(
      `heavy bodies: ${JSON.stringify(byStatus)}; killed for memory ${events.killed_memory}`,
    )
    assert.ok(
      statuses.every((s) => s === '200' || s === '503 server_busy'),
      JSON.stringify(byStatus),
    )
    assert.ok(statuses.includes('200'), 'the budget still lets a heavy body through')
    assert.equal(events.killed_memory, 0)
    assert.match(await streamed, /data: \[DONE\]/)
  } finally {
    await fn.stop()
    await sim.close()
  }
})
