// The upstream body is built from the client's own JSON text (members copied, not re-serialised):
// whatever the client wrote — any values, escapes, unicode, whitespace, duplicate names — what goes
// upstream must parse to the client's body with only the token cap and stream options replaced.
// Property-based (fast-check): pure functions, no stack needed.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  type ChatCompletionRequest,
  estimatePromptTokens,
  topLevelMembers,
  upstreamBody,
} from '../../functions/gateway/chat-request.ts'

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

Deno.test('upstreamBody: a name the client repeats is forwarded as written, the cap once', () => {
  const text = '{"model":"a","messages":[{"role":"user","content":"x"}],"max_tokens":9,' +
    '"temperature":0.1,"max_tokens":7,"temperature":0.2}'
  const out = upstreamBody(text, JSON.parse(text), 5)
  assert.equal(
    out,
    '{"model":"a","messages":[{"role":"user","content":"x"}],"temperature":0.1,' +
      '"temperature":0.2,"max_tokens":5}',
  )
})

Deno.test('estimatePromptTokens counts UTF-8 bytes: 3 + Σ(4 + ⌈bytes / 4⌉)', () => {
  const messages = [
    { role: 'user', content: 'abcd' }, // 4 bytes: 4 + 1
    { role: 'user', content: 'é中😀' }, // 2 + 3 + 4 = 9 bytes: 4 + 3
    { role: 'user', content: [{ type: 'text', text: 'abcde' }, { type: 'image_url' }] }, // 4 + 2
    { role: 'assistant', content: null }, // 4 + 0
  ] as ChatCompletionRequest['messages']
  assert.equal(estimatePromptTokens(messages), 3 + 5 + 7 + 6 + 4)
})
