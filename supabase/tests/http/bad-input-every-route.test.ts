// Bad input on EVERY route of the OpenAPI document (GET …/gateway/openapi.json), property-based
// (fast-check): bodies generated from each route's schema and outside it, path ids, query strings
// and headers, sent with a user key, an admin key, a junk key or none. Whatever arrives, the answer
// is never a 5xx, never carries a stack trace, SQL or a key, and every refusal is an OpenAI-style
// error {"error":{"message","type","code"}}. Admin calls only ever name accounts of this test
// (the database is shared), and the caller's own keys are restored after every input.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  type Account,
  forgetSignups,
  newAccount,
  newAdmin,
  signupMark,
  unknownKey,
} from '../lib/accounts.ts'
import { booksLine, checkBooks, waitSettled } from '../lib/books.ts'
import { api } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { db, GATEWAY_URL, test } from '../lib/stack.ts'
import {
  deepJson,
  fromSchema,
  hostile,
  HOSTILE_STRINGS,
  type OpenApi,
  type RawBody,
  rawBody,
} from './_fuzz.ts'

const RUNS = Number(Deno.env.get('RELIABILITY_FUZZ_RUNS') ?? 100)
const BASE = new URL(GATEWAY_URL).pathname // /functions/v1/gateway
const LEAK =
  /PostgresError|SQLSTATE|syntax error at|gateway\.\w+\(|\bat \S+\.ts:\d+|\.ts:\d+:\d+|node_modules|simulated-upstream-key/
const ANY_KEY = /gw_(live|test|staging|dev)_[0-9A-Za-z]{28}/

interface Operation {
  method: string
  /** Path as documented, e.g. /user/api-keys/{key_id} (without the function's base path). */
  path: string
  // deno-lint-ignore no-explicit-any
  op: any
}

async function operations(): Promise<{ doc: OpenApi; ops: Operation[] }> {
  const doc = (await api('/openapi.json')).json as OpenApi
  const ops: Operation[] = []
  for (const [full, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      ops.push({ method: method.toUpperCase(), path: full.replace(/^\/gateway/, ''), op })
    }
  }
  return { doc, ops }
}

interface Context {
  caller: Account & { secondaryKeyId: number }
  admin: Account
  victim: Account
}

async function context(): Promise<Context> {
  const caller = await newAccount(1_000_000, 'fuzz')
  await db()`select gateway.set_rate_limits(${caller.userId}, ${
    db().json({ requests_per_minute: 1_000_000, requests_per_hour: 1_000_000 })
  })`
  const second = await api('/user/api-keys', { key: caller.key, body: { key_name: 'fuzz target' } })
  assert.equal(second.status, 200, second.text)
  return {
    caller: { ...caller, secondaryKeyId: second.json.key_id },
    admin: await newAdmin(),
    victim: await newAccount(1000, 'fuzz-victim'),
  }
}

/** Puts the caller's keys back as they were (an input may have rotated, capped or fenced them). */
async function restore(ctx: Context): Promise<void> {
  const c = ctx.caller
  await db()`
    update gateway.api_keys k
       set key_hash = case when k.id = ${c.keyId} then gateway.hash_key(${c.key}) else k.key_hash end,
           key_prefix = case when k.id = ${c.keyId} then gateway.key_prefix(${c.key})
                             else k.key_prefix end,
           previous_key_hash = null, previous_valid_until = null,
           permissions = '{read,write}', is_active = true, suspended = false, expires_at = null,
           max_requests = null, allowed_ips = '{}', allowed_referrers = '{}',
           deleted_at = case when k.id in (${c.keyId}, ${c.secondaryKeyId}) then null
                             else coalesce(k.deleted_at, now()) end
     where k.account_id = ${c.userId}`
}

const headerSafe = (v: string) => /^[\t\x20-\x7e\x80-\xff]{0,2000}$/.test(v)
const headerString = fc.oneof(
  fc.constantFrom(...HOSTILE_STRINGS.filter(headerSafe)),
  fc.string({ maxLength: 60 }).filter(headerSafe),
)

/** Extra headers a client might send: spoofed addresses, odd origins, odd content types. */
const extraHeaders = fc.record({
  'x-forwarded-for': fc.oneof(
    fc.constantFrom('203.0.113.9', '::1', '2001:db8::7', '[2001:db8::7]:443', 'unknown', ', ,'),
    headerString,
  ),
  origin: fc.oneof(fc.constantFrom('null', 'https://app.example.com', 'http://[::1'), headerString),
  referer: fc.oneof(fc.constantFrom('javascript:alert(1)', 'https://x.example/p?q'), headerString),
  'content-type': fc.oneof(
    { weight: 8, arbitrary: fc.constant('application/json') },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        'application/json; charset=latin1',
        'APPLICATION/JSON',
        'text/plain',
        'application/x-www-form-urlencoded',
        'multipart/form-data; boundary=x',
      ),
    },
  ),
}, { requiredKeys: [] })

interface Input {
  auth: 'caller' | 'admin' | 'none' | 'junk'
  junkKey: string
  id: string
  query: [string, unknown][]
  headers: Record<string, string>
  body: RawBody | undefined
}

function inputs(o: Operation, doc: OpenApi, ctx: Context): fc.Arbitrary<Input> {
  const isAdmin = o.path.startsWith('/admin')
  const params = (o.op.parameters ?? []) as { name: string; in: string; schema: object }[]
  const bodySchema = o.op.requestBody?.content?.['application/json']?.schema
  // Admin calls name only this test's accounts (or none that exists): the database is shared.
  const overrides = {
    user_id: fc.oneof(
      fc.constantFrom(ctx.victim.userId, Number.MAX_SAFE_INTEGER),
      hostile,
    ),
    api_key: fc.oneof(fc.constantFrom(ctx.victim.key, unknownKey()), hostile),
  }
  const id = fc.oneof(
    fc.constantFrom(
      String(ctx.caller.secondaryKeyId),
      String(ctx.victim.keyId),
      '0',
      '-1',
      '1e3',
      '0x1',
      ' 7',
      '9007199254740993',
      '1'.repeat(400),
      'raw:%00',
      'raw:%ff%fe',
      'raw:%',
      'raw:..%2F..%2Fadmin%2Fmonitor',
      'raw:1;select 1',
    ),
    fc.nat().map(String),
    fc.string({ minLength: 1, maxLength: 40 }),
    fc.constantFrom(...HOSTILE_STRINGS.filter((s) => s !== '')),
  )
  const query = fc.array(
    fc.tuple(
      fc.oneof(
        fc.constantFrom(...params.filter((p) => p.in === 'query').map((p) => p.name), 'user_id'),
        fc.string({ maxLength: 8 }),
      ),
      fc.oneof(fc.integer({ min: -5, max: 2000 }), hostile),
    ),
    { maxLength: 3 },
  )
  const declaredHeaders = fc.record(
    Object.fromEntries(
      params.filter((p) => p.in === 'header').map((p) => [p.name, headerString]),
    ),
    { requiredKeys: [] },
  )
  return fc.record({
    auth: isAdmin
      ? fc.constantFrom('admin', 'admin', 'admin', 'caller', 'none', 'junk')
      : fc.constantFrom('caller', 'caller', 'caller', 'admin', 'none', 'junk'),
    junkKey: fc.oneof(
      fc.constantFrom(unknownKey(), unknownKey('test'), ctx.caller.key.slice(0, -1)),
      headerString,
    ),
    id: id,
    query,
    headers: fc.tuple(declaredHeaders, extraHeaders).map(([a, b]) => ({ ...b, ...a })),
    body: bodySchema
      ? rawBody(fromSchema(bodySchema, doc, overrides))
      : fc.option(rawBody(hostile), { nil: undefined }),
  }) as fc.Arbitrary<Input>
}

interface Sent {
  status: number
  text: string
  headers: Headers
}

async function send(o: Operation, input: Input, ctx: Context, key?: string): Promise<Sent> {
  // `raw:` ids go as written (percent sequences of their own); others are percent-encoded.
  const id = input.id.startsWith('raw:')
    ? input.id.slice(4)
    : encodeURIComponent(input.id.toWellFormed())
  const path = o.path.replace('{key_id}', id)
  const qs = new URLSearchParams()
  for (const [k, v] of input.query) qs.append(k, typeof v === 'string' ? v : JSON.stringify(v))
  const headers: Record<string, string> = { ...input.headers }
  const bearer = key ??
    { caller: ctx.caller.key, admin: ctx.admin.key, none: undefined, junk: input.junkKey }[
      input.auth
    ]
  if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`
  const hasBody = o.method !== 'GET' && input.body !== undefined
  if (!hasBody) delete headers['content-type']
  const res = await fetch(`${GATEWAY_URL}${path}${qs.size ? `?${qs}` : ''}`, {
    method: o.method,
    headers,
    body: hasBody ? input.body : undefined,
  })
  return { status: res.status, text: await res.text(), headers: res.headers }
}

/** The rule every answer obeys. */
function assertSafe(what: string, res: Sent, secrets: string[]): void {
  assert.ok(res.status < 500, `${what}: ${res.status} ${res.text.slice(0, 300)}`)
  for (const s of secrets) {
    assert.ok(!res.text.includes(s), `${what}: a key of the caller came back`)
  }
  assert.ok(!res.text.includes('simulated-upstream-key'), `${what}: the upstream key came back`)
  if (res.status < 400) return
  assert.doesNotMatch(res.text, LEAK, `${what}: ${res.text.slice(0, 300)}`)
  assert.doesNotMatch(res.text, ANY_KEY, `${what}: a key in an error`)
  let e
  try {
    e = JSON.parse(res.text)?.error
  } catch {
    assert.fail(`${what}: ${res.status} is not JSON: ${res.text.slice(0, 200)}`)
  }
  assert.equal(typeof e?.message, 'string', `${what}: ${res.text.slice(0, 200)}`)
  assert.equal(typeof e?.type, 'string', `${what}: ${res.text.slice(0, 200)}`)
  assert.ok('code' in e, `${what}: no code: ${res.text.slice(0, 200)}`)
}

test('the index lists every documented route exactly once', async () => {
  const { ops } = await operations()
  const index = (await api('/')).json.endpoints as string[]
  assert.equal(new Set(index).size, index.length, `duplicates in ${JSON.stringify(index)}`)
  for (const o of ops) {
    assert.ok(index.includes(`${o.method} ${o.path.replace(/\{(\w+)\}/g, ':$1')}`), o.path)
  }
  console.log(`${ops.length} documented operations, ${index.length} routes in the index`)
})

test('every documented route: fuzzed bodies, ids, queries and headers never get a 5xx or a leak', async () => {
  const signups = await signupMark() // fuzzed sign-ups from 127.0.0.1, forgotten at the end
  const { doc, ops } = await operations()
  const ctx = await context()
  const secrets = [ctx.caller.key, ctx.admin.key]
  const tried: Record<string, number> = {}
  const statuses: Record<number, number> = {}
  let total = 0
  for (const o of ops) {
    const name = `${o.method} ${o.path}`
    const destructive = name === 'DELETE /user/account'
    await fc.assert(
      fc.asyncProperty(inputs(o, doc, ctx), async (input) => {
        // Deleting the account is tried with a throwaway account each time.
        const own = destructive && input.auth === 'caller' ? await newAccount(10, 'fuzz-del') : null
        const res = await send(o, input, ctx, own?.key)
        tried[name] = (tried[name] ?? 0) + 1
        statuses[res.status] = (statuses[res.status] ?? 0) + 1
        total++
        if (o.method !== 'GET') await restore(ctx)
        assertSafe(`${name} ${JSON.stringify(input).slice(0, 400)}`, res, secrets)
      }),
      { numRuns: RUNS, endOnFailure: true },
    )
  }
  console.log(`${total} inputs over ${ops.length} operations: ${JSON.stringify(tried)}`)
  console.log(`answers: ${JSON.stringify(statuses)}`)
  await forgetSignups(signups)
})

test('hostile bodies on every route that takes one: NUL, surrogates, invalid UTF-8, deep nesting, oversize', async () => {
  const signups = await signupMark()
  const { ops } = await operations()
  const ctx = await context()
  const enc = new TextEncoder()
  const bodies: [string, RawBody][] = [
    [
      'NUL in every string',
      '{"key_name":"a\\u0000","company":"\\u0000","email":"a\\u0000@x.io",' +
      '"username":"u\\u0000","reason":"\\u0000","credits":5,"user_id":0,"model":"m\\u0000",' +
      '"messages":[{"role":"user","content":"\\u0000"}],"settings":{"\\u0000":"\\u0000"}}',
    ],
    [
      'an unpaired surrogate',
      '{"key_name":"\\ud800","company":"\\udc00","settings":{"a":"\\ud800"}}',
    ],
    [
      'invalid UTF-8',
      Uint8Array.from([...enc.encode('{"key_name":"'), 0xff, 0xfe, ...enc.encode('"}')]),
    ],
    ['100,000-deep nesting', `{"settings":{"a":${deepJson(100_000)}},"x":${deepJson(100_000)}}`],
    ['a number beyond bigint', '{"credits":1e400,"max_tokens":1e400,"grace_seconds":-1e400}'],
    ['5 MB (over the limit)', JSON.stringify({ key_name: 'x'.repeat(5 * 1024 * 1024) })],
  ]
  let tried = 0
  const statuses: Record<number, number> = {}
  for (const o of ops.filter((x) => x.op.requestBody)) {
    for (const [what, body] of bodies) {
      for (const key of [ctx.caller.key, ctx.admin.key]) {
        const path = o.path.replace('{key_id}', String(ctx.caller.secondaryKeyId))
        const res = await fetch(`${GATEWAY_URL}${path}`, {
          method: o.method,
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body,
        })
        const sent = { status: res.status, text: await res.text(), headers: res.headers }
        tried++
        statuses[sent.status] = (statuses[sent.status] ?? 0) + 1
        await restore(ctx)
        assertSafe(`${o.method} ${o.path} with ${what}`, sent, [ctx.caller.key, ctx.admin.key])
        if (what === 'invalid UTF-8' && sent.status === 200) {
          // Decoded the WHATWG way: each invalid sequence becomes U+FFFD, never raw bytes.
          assert.match(sent.text, /\uFFFD/, `${o.method} ${o.path}: ${sent.text.slice(0, 200)}`)
        } else {
          assert.ok(sent.status >= 400, `${o.method} ${o.path} accepted ${what}: ${sent.text}`)
        }
      }
    }
  }
  console.log(`${tried} hostile bodies: ${JSON.stringify(statuses)}`)
  await forgetSignups(signups)
})

test('wrong methods on every path are a 405 or 404 in the OpenAI shape', async () => {
  const { ops } = await operations()
  const paths = [...new Set(ops.map((o) => o.path.replace('{key_id}', '1')))]
  let tried = 0
  for (const path of [...paths, '/', '/docs', '/redoc', '/openapi.json', '/nope', '/v1/nope']) {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH']) {
      const res = await fetch(`${GATEWAY_URL}${path}`, { method })
      const sent = { status: res.status, text: await res.text(), headers: res.headers }
      tried++
      assertSafe(`${method} ${path}`, sent, [])
    }
  }
  console.log(`${tried} method × path combinations under ${BASE}`)
})

test('a valid chat body nested 100,000 deep in a pass-through field is billed once; the simulator still reports', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  try {
    // The nesting is prompt the simulator bills (a byte a token): credits for all of it.
    const a = await newAccount(1_000_000, 'deep')
    const res = await fetch(`${fn.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
      body: `{"model":"openai/gpt-4o-mini~len-3","messages":[{"role":"user","content":"x"}],` +
        `"max_tokens":5,"tools":[{"type":"function","function":{"name":"f","parameters":` +
        `{"type":"object","x":${deepJson(100_000)}}}}]}`,
    })
    assert.equal(res.status, 200, await res.text())
    await waitSettled([a.userId])
    const books = await checkBooks([a.userId], sim.stats())
    assert.deepEqual(books.problems, [])
    // Such a body used to make the simulator's /__sim/stats fail (JSON.stringify's stack) for
    // everyone until 100 more requests had pushed it out of its ring of recorded bodies.
    assert.doesNotThrow(() => JSON.stringify(sim.sim.stats()))
    console.log(`forwarded once, ${booksLine(books)}`)
  } finally {
    await fn.stop()
    await sim.close()
  }
})
