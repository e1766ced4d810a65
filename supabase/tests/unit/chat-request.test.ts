// The upstream body is built from the client's own JSON text (members copied, not re-serialised):
// whatever the client wrote — any values, escapes, unicode, whitespace — what goes upstream must
// parse to the client's body with only the token cap and stream options replaced. A text that names
// a member twice, at any depth, is re-serialised: upstream gets exactly what the gateway counted.
// Property-based (fast-check): pure functions, no stack needed.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  type ChatCompletionRequest,
  estimateCompletionTokens,
  estimatePromptTokens,
  requestFacts,
  upstreamBody,
} from '../../functions/gateway/chat-request.ts'
import { namesOf, topLevelMembers } from '../../functions/gateway/json-text.ts'

const name = fc.string({ unit: 'binary', maxLength: 12 }).filter((k) => k !== '__proto__')
const json = fc.jsonValue({ maxDepth: 4 })

/** JSON text of `value` laid out with random whitespace between tokens. */
function layout(value: unknown, indent: number, pad: string): string {
  const text = JSON.stringify(value, null, indent)
  // Whitespace is only legal between tokens: add it after the colons and commas of the top level.
  return pad + text.replace(/^(\s*"(?:[^"\\]|\\.)*"):/gm, `$1${pad}:${pad}`) + pad
}

Deno.test('topLevelMembers finds each member of any object, in order', () => {
  fc.assert(
    fc.property(
      fc.dictionary(name, json, { maxKeys: 8 }),
      fc.integer({ min: 0, max: 3 }),
      fc.constantFrom('', ' ', '\n\t ', '\r\n'),
      (obj, indent, pad) => {
        const text = layout(obj, indent, pad)
        const members = topLevelMembers(text)
        const parsed = JSON.parse(text) // (not obj: JSON has no -0)
        assert.deepEqual(members.map((m) => m.name), Object.keys(parsed))
        for (const m of members) {
          assert.deepEqual(JSON.parse(`{${text.slice(m.start, m.end)}}`), {
            [m.name]: parsed[m.name],
          })
        }
      },
    ),
    { numRuns: 500 },
  )
})

Deno.test('upstreamBody: the client body, with only the cap and stream options replaced', () => {
  const body = fc.record({
    model: fc.string({ unit: 'binary', maxLength: 20 }),
    messages: fc.array(
      fc.record({
        role: fc.constantFrom('user', 'assistant', 'system'),
        content: fc.string({ unit: 'binary', maxLength: 60 }),
      }),
      { minLength: 1, maxLength: 4 },
    ),
  }, { requiredKeys: ['model', 'messages'] })
  const optional = fc.record({
    stream: fc.boolean(),
    max_tokens: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.constant(null)),
    max_completion_tokens: fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.constant(null)),
    stream_options: fc.oneof(fc.record({ include_usage: fc.boolean() }), fc.constant(null)),
    tools: json,
  }, { requiredKeys: [] })
  fc.assert(
    fc.property(
      body,
      optional,
      fc.dictionary(name, json, { maxKeys: 4 }),
      fc.integer({ min: 1, max: 5000 }),
      fc.integer({ min: 0, max: 2 }),
      (required, opt, extra, cap, indent) => {
        const client = { ...extra, ...required, ...opt } as unknown as ChatCompletionRequest
        const text = JSON.stringify(client, null, indent)
        const sent = JSON.parse(upstreamBody(text, JSON.parse(text), cap))
        // As plain objects (fast-check's records have no prototype).
        const expected: Record<string, unknown> = { ...JSON.parse(text), max_tokens: cap }
        if (client.max_completion_tokens != null) expected.max_completion_tokens = cap
        if (client.stream) {
          expected.stream_options = { ...(client.stream_options ?? {}), include_usage: true }
        }
        assert.deepEqual(sent, expected)
      },
    ),
    { numRuns: 500 },
  )
})

Deno.test('upstreamBody: a name the client repeats, at any depth, goes upstream once, as parsed', () => {
  const top = '{"model":"a","messages":[{"role":"user","content":"x"}],"max_tokens":9,' +
    '"temperature":0.1,"max_tokens":7,"temperature":0.2}'
  assert.equal(
    upstreamBody(top, JSON.parse(top), 5),
    '{"model":"a","messages":[{"role":"user","content":"x"}],"max_tokens":5,"temperature":0.2}',
  )
  // Image parts in a message's first `content`, "hi" in its last: a parser upstream that kept the
  // first would see three images the hold did not count. What goes is what was counted.
  const parts = Array.from({ length: 3 }, () => ({
    type: 'image_url',
    image_url: { url: 'https://example.com/cat.png' },
  }))
  for (
    const name of ['"content"', '"\u0063ontent"']
  ) {
    const text = `{"model":"a","messages":[{"role":"user",${name}:${
      JSON.stringify(parts)
    },"content":"hi"}]}`
    const body = JSON.parse(text) as ChatCompletionRequest
    const sent = upstreamBody(text, body, 5)
    assert.doesNotMatch(sent, /image_url/, name)
    assert.deepEqual(JSON.parse(sent), { ...body, max_tokens: 5 })
    assert.equal(requestFacts(body, text, 0).parts.images, 0)
  }
})

/** Non-empty objects in a JSON value. */
function countObjects(v: unknown): number {
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + countObjects(x), 0)
  if (v === null || typeof v !== 'object') return 0
  const values = Object.values(v)
  return (values.length > 0 ? 1 : 0) + values.reduce((n: number, x) => n + countObjects(x), 0)
}

/** `v` as JSON text, its `target`-th non-empty object (in text order) naming its first member twice. */
function withRepeat(v: unknown, target: number, indent: number): string {
  let seen = 0
  const write = (x: unknown): string => {
    if (Array.isArray(x)) return `[${x.map(write).join(',')}]`
    if (x === null || typeof x !== 'object') return JSON.stringify(x)
    const entries = Object.entries(x)
    if (entries.length === 0) return '{}'
    const mine = seen++ === target
    const members = entries.map(([k, y]) => `${JSON.stringify(k)}:${' '.repeat(indent)}${write(y)}`)
    if (mine) members.unshift(`${JSON.stringify(entries[0][0])}:0`)
    return `{${members.join(',')}}`
  }
  return write(v)
}

Deno.test('namesOf: a repeated name in any object at any depth, and the outermost count', () => {
  // Objects whose names are unique (a dictionary's keys), nested in objects and arrays.
  const value = fc.letrec((tie) => ({
    node: fc.oneof(
      { depthSize: 'small' },
      fc.jsonValue({ maxDepth: 0 }),
      fc.array(tie('node'), { maxLength: 4 }),
      fc.dictionary(name, tie('node'), { maxKeys: 4 }),
    ),
  })).node
  fc.assert(
    fc.property(
      fc.dictionary(name, value, { maxKeys: 6 }),
      fc.integer({ min: 0, max: 2 }),
      fc.nat(),
      (obj, indent, pick) => {
        const text = JSON.stringify(obj, null, indent)
        assert.deepEqual(namesOf(text), {
          repeated: false,
          topLevel: Object.keys(obj).length,
          longer: 0,
        })
        // The same value written with one name of one object repeated (the pick-th non-empty
        // object, in text order): then it is seen, at whatever depth.
        const objects = countObjects(obj)
        if (objects === 0) return
        const repeated = withRepeat(obj, pick % objects, indent)
        JSON.parse(repeated) // still JSON
        assert.equal(namesOf(repeated).repeated, true, repeated)
      },
    ),
    { numRuns: 500 },
  )
})

Deno.test('requestFacts: the byte bound of the body as it goes upstream, parts, candidates, web results', () => {
  const image = `data:image/png;base64,${'A'.repeat(4000)}`
  const audio = 'B'.repeat(2000)
  const body = {
    model: 'openai/gpt-4o~len-3',
    models: ['openai/gpt-4o', 'anthropic/claude-opus-4:online~fault-502'],
    messages: [
      { role: 'user', content: 'é中😀' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'see' },
          { type: 'image_url', image_url: { url: image } },
          { type: 'image_url', image_url: { url: 'https://example.com/x.png' } },
          { type: 'input_audio', input_audio: { data: audio, format: 'wav' } },
          { type: 'file', file: { filename: 'a.txt', file_data: 'data:text/plain;base64,QUJD' } },
        ],
      },
    ],
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    plugins: [{ id: 'web', max_results: 7 }],
    max_completion_tokens: 50,
    max_tokens: 9,
    stream: true,
  } as unknown as ChatCompletionRequest
  const text = JSON.stringify(body)
  const f = requestFacts(body, text, 700)
  assert.deepEqual(f.models, ['openai/gpt-4o', 'anthropic/claude-opus-4:online'])
  assert.deepEqual(f.parts, { images: 2, audio: 1, files: 1 })
  assert.equal(f.web_results, 7)
  assert.equal(f.max_tokens, 50)
  assert.equal(f.lifetime_seconds, 700)
  // Every byte that goes upstream is in the bound but the inline image and audio data.
  const upstream = new TextEncoder().encode(upstreamBody(text, body, 2 ** 31 - 1)).length
  assert.ok(f.prompt_bound >= upstream - image.length - audio.length, `${f.prompt_bound}`)
  assert.ok(f.prompt_bound <= upstream - image.length - audio.length + 110, `${f.prompt_bound}`)
  // `:online` alone pulls the web plugin's default; a number written with an exponent widens.
  const online = {
    model: 'x/y:online',
    messages: [{ role: 'user', content: 'hi' }],
    temperature: 1e0,
  }
  // Duplicate members and numbers with exponents go upstream as written: the bound is their bytes.
  const t2 = `{"model":"x/y","messages":[{"role":"user","content":"hi"}],"a":1,"a":[${
    Array(20).fill('1e20').join(',')
  }]}`
  assert.equal(
    requestFacts(online as ChatCompletionRequest, JSON.stringify(online), 1).web_results,
    5,
  )
  const wide = JSON.parse(t2)
  assert.ok(
    requestFacts(wide, t2, 1).prompt_bound >=
      new TextEncoder().encode(upstreamBody(t2, wide, 2 ** 31 - 1)).length,
  )
})

Deno.test('requestFacts: numbers written with an exponent count as upstream prints them again', () => {
  // Forwarded as written (no duplicate), re-rendered upstream from the parsed value (a tool's
  // schema, a part it does not know): the bound covers the compact JSON of the parsed body.
  for (const n of ['1e20', '-1E20', '1.5e+20', '9e-7', '1e400', '0.1e21', '12e1']) {
    const list = `[${Array(50).fill(n).join(' , ')}]`
    const text =
      `{"model":"x/y","messages":[{"role":"user","content":[{"type":"x","v":${list}}]}],` +
      `"tools":[{"type":"function","function":{"name":"f","parameters":{"enum":${list}}}}]}`
    const body = JSON.parse(text) as ChatCompletionRequest
    assert.equal(namesOf(text).repeated, false)
    const printed = new TextEncoder().encode(JSON.stringify(body)).length
    assert.ok(requestFacts(body, text, 1).prompt_bound >= printed, n)
  }
  // Digits inside strings are text, not numbers: nothing added.
  const quoted = `{"model":"x/y","messages":[{"role":"user","content":"1e20 1e20"}],"a":"9e20"}`
  assert.equal(namesOf(quoted).longer, 0)
})

Deno.test('estimatePromptTokens (the last-resort count) counts UTF-8 bytes: 3 + Σ(4 + ⌈bytes / 4⌉)', () => {
  const messages = [
    { role: 'user', content: 'abcd' }, // 4 bytes: 4 + 1
    { role: 'user', content: 'é中😀' }, // 2 + 3 + 4 = 9 bytes: 4 + 3
    { role: 'user', content: [{ type: 'text', text: 'abcde' }, { type: 'image_url' }] }, // 4 + 2
    { role: 'assistant', content: null }, // 4 + 0
  ] as ChatCompletionRequest['messages']
  assert.equal(estimatePromptTokens(messages), 3 + 5 + 7 + 6 + 4)
})

Deno.test('estimateCompletionTokens: a quarter of the text bytes of each choice, nothing for what is not one', () => {
  assert.equal(estimateCompletionTokens([{ message: { role: 'assistant', content: 'hi' } }]), 1)
  assert.equal(
    estimateCompletionTokens([
      { message: { content: 'x'.repeat(9) } },
      { message: { content: [{ type: 'text', text: 'héllo' }, { type: 'image_url' }] } },
    ]),
    3 + 2,
  )
  // Upstream's shapes are unchecked: none of these may throw or count.
  for (const odd of [null, 'hi', {}, [null], [1], [{ message: null }], [{ message: [] }], [{}]]) {
    assert.equal(estimateCompletionTokens(odd), 0, JSON.stringify(odd))
  }
})
