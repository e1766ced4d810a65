// Logs: one structured JSON line per request (request id, route, status, latency; for chat also the
// account, key prefix, model and hold), with its tokens and credits either on that line or on one
// settlement line joined by the hold id — every admitted request has them in the log exactly once. Never a full key, the upstream key or a prompt, whatever the
// requests carried: keys in bodies, headers and answers, prompts in good and bad requests.

import assert from 'node:assert/strict'
import { forgettingSignups, newAdmin, uniqueEmail, usageRecords } from '../lib/accounts.ts'
import { CHAT, client } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, sleep, test, waitFor } from '../lib/stack.ts'
import { scanLog } from '../lib/scan-logs.ts'

test('logs: a JSON line per request and per settlement, and no key, upstream key or prompt', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, captureLogs: true })
  const gw = client(fn.url)
  const secrets: string[] = []
  const prompt = () => {
    const p = `prompt-${crypto.randomUUID()}`
    secrets.push(p)
    return [{ role: 'user', content: p }]
  }
  let requests = 0
  const send = async (...args: Parameters<typeof gw>) => (requests++, await gw(...args))
  try {
    // Keys travel in answers (register, create, rotate), bodies (admin targets) and headers.
    const reg = await forgettingSignups(() =>
      send('/auth/register', {
        body: { email: uniqueEmail('logs') },
        headers: { 'x-forwarded-for': '198.51.100.7' },
      })
    )
    assert.ok(reg.status === 200 || reg.status === 429, reg.text)
    const admin = await newAdmin()
    const [{ r }] = await db()`select gateway.register(${
      uniqueEmail('logs')
    }, null, 'live', null) as r`
    const key: string = r.api_key
    secrets.push(key, admin.key, ...(reg.status === 200 ? [reg.json.api_key] : []))
    await db()`select gateway.add_credits(${r.user_id}, 100000, 'logs test')`
    const made = await send('/user/api-keys', { key, body: { key_name: 'logged' } })
    const rotated = await send(`/user/api-keys/${made.json.key_id}/rotate`, { key, body: {} })
    secrets.push(made.json.api_key, rotated.json.api_key)
    await send('/admin/add_credits', { key: admin.key, body: { api_key: key, credits: 5 } })
    await send('/admin/limit', {
      key: admin.key,
      body: { api_key: key, scope: 'key', rate_limits: { requests_per_minute: 1000 } },
    })
    // Chats that succeed, stream, fail upstream, are left by their client, or are refused.
    const chats: [string, Record<string, unknown>][] = [
      ['json', { ...CHAT, messages: prompt() }],
      ['stream', { ...CHAT, stream: true, messages: prompt() }],
      ['upstream 502', { ...CHAT, model: 'openai/gpt-4o-mini~fault-502', messages: prompt() }],
      ['cut stream', {
        ...CHAT,
        model: 'openai/gpt-4o-mini~len-9~fault-stream-cut',
        stream: true,
        messages: prompt(),
      }],
      ['NUL in the model', { ...CHAT, model: 'openai/\u0000', messages: prompt() }],
      // A client's mistake: its key where the model goes (the gateway logs the model asked for).
      ['the key as the model', { ...CHAT, model: key, messages: prompt() }],
      ['the key inside the model', { ...CHAT, model: `openai/${key}~len-2`, messages: prompt() }],
      ['bad body', { model: 7, messages: prompt() }],
    ]
    for (const [, body] of chats) await send('/v1/chat/completions', { key, body })
    const leaving = new AbortController()
    const left = await fetch(`${fn.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        ...CHAT,
        model: 'openai/gpt-4o-mini~len-200~delay-10',
        max_tokens: 200,
        stream: true,
        messages: prompt(),
      }),
      signal: leaving.signal,
    })
    requests++
    await left.body!.getReader().read()
    leaving.abort()
    // Refusals that carry keys: unknown, malformed, a key in the wrong header.
    await send('/v1/chat/completions', {
      key: `${key.slice(0, -1)}x`,
      body: { ...CHAT, messages: prompt() },
    })
    await send('/user/balance', { headers: { authorization: `Bearer ${key}x` } })
    await send('/user/balance', { headers: { 'x-api-key': key } })
    await send('/nope', { key })

    await waitFor('every hold closed', async () => {
      const [{ n }] =
        await db()`select count(*)::int as n from gateway.holds where account_id = ${r.user_id}`
      return n === 0
    })
    await sleep(200)
    await fn.stop()
    const lines = fn.logs().filter((l) => l.trim())

    // 1. Nothing secret.
    const findings = scanLog(lines.join('\n'), { secrets })
    assert.deepEqual(findings.map((f) => `${f.what}: ${f.masked}`), [])

    // 2. Every line but the server's banner is a JSON object with ts, level, msg.
    const docs = lines.filter((l) => !l.startsWith('functions: ')).map((l) => {
      const d = JSON.parse(l)
      assert.ok(d.ts && d.level && d.msg, l)
      return d
    })
    // (startFunctions polled /health until the server answered.)
    const reqs = docs.filter((d) => d.msg === 'request' && d.route !== '/gateway/health')
    assert.equal(reqs.length, requests, 'one line per request')
    for (const d of reqs) {
      for (const f of ['request_id', 'method', 'route', 'status', 'latency_ms']) {
        assert.ok(d[f] !== undefined, `${f} missing: ${JSON.stringify(d)}`)
      }
    }
    // 3. Admitted chats: account, key prefix, model, hold; and their tokens and credits exactly
    //    once — on the request's own line (a settlement known when it answered) or on one
    //    settlement line joined by the hold id — or nowhere when the hold was voided.
    const records = new Map((await usageRecords(r.user_id)).map((u) => [u.hold_id, u]))
    const admitted = reqs.filter((d) => d.hold_id !== undefined)
    assert.equal(admitted.length, records.size)
    for (const d of admitted) {
      assert.equal(d.user_id, r.user_id)
      assert.equal(d.key_prefix, `${key.slice(0, 12)}…`)
      assert.equal(typeof d.model, 'string')
      const u = records.get(d.hold_id)!
      const lines = docs.filter((x) => x.msg === 'settled' && x.hold_id === d.hold_id)
      if (d.credits_charged !== undefined) lines.push(d)
      assert.equal(lines.length, u.status === 'voided' ? 0 : 1, JSON.stringify({ d, u }))
      for (const s of lines) {
        assert.equal(s.credits_charged, u.credits_charged, JSON.stringify({ s, u }))
        assert.equal(s.prompt_tokens + s.completion_tokens, u.prompt_tokens + u.completion_tokens)
        for (const f of ['user_id', 'key_prefix', 'model', 'latency_ms']) {
          assert.ok(s[f] !== undefined, `${f} missing: ${JSON.stringify(s)}`)
        }
      }
    }
    console.log(
      `${requests} requests → ${lines.length} log lines (${reqs.length} request, ` +
        `${docs.filter((d) => d.msg === 'settled').length} settled, ` +
        `${docs.filter((d) => d.level === 'error').length} error); ${admitted.length} admitted ` +
        `chats joined to their settlement; scanned for ${secrets.length} secrets and every key ` +
        `pattern: 0 found`,
    )
  } finally {
    await fn.stop()
    await sim.close()
  }
})
