// The simulator's tokenizer and prompt measure, against counts worked out by hand from the README's
// rules ("Token counting"), and the property a gateway's hold relies on: the text of a body never
// costs more tokens than the body has UTF-8 bytes.
// Run: deno test tools/openrouter-sim/tokens.test.ts

import assert from 'node:assert/strict'
import fc from 'fast-check'
import { measurePrompt, promptTokens, textTokens, utf8Length } from './tokens.ts'

Deno.test('textTokens: letter runs ceil(len/4), a space before a word free, every other byte 1', () => {
  const cases: [string, number][] = [
    ['', 0],
    ['abcd', 1],
    ['abcde', 2], // 5 letters
    ['the cat', 2], // the, ' cat'
    ['Hello, world.', 6], // Hello 2, ',' 1, ' world' 2, '.' 1
    ['12345', 5], // digits: a token each
    ['a1b2', 4],
    ['!?.,;', 5],
    ['  a', 2], // the first space is not before a letter
    ['a\nb', 3], // a newline is not a space
    ['é', 2], // 2 UTF-8 bytes
    ['中文', 6], // 3 + 3
    ['😀', 4], // 4 bytes
    ['\ud800', 3], // a lone surrogate is written as U+FFFD
  ]
  for (const [text, tokens] of cases) assert.equal(textTokens(text), tokens, JSON.stringify(text))
  assert.equal(utf8Length('héllo € 😀'), new TextEncoder().encode('héllo € 😀').length)
})

Deno.test('textTokens: ordinary English near 4 bytes a token, adversarial text 1 token a byte', () => {
  const english = 'The quick brown fox jumps over the lazy dog. In the beginning, the project ' +
    'was small, and its authors wrote every line by hand; later, as more people joined, they ' +
    'agreed on a few rules that everyone could follow without thinking about them twice.'
  const ratio = utf8Length(english) / textTokens(english)
  assert.ok(ratio > 3.3 && ratio < 5, `English: ${ratio} bytes a token`)
  for (const hostile of ['0123456789'.repeat(100), '{"a":[1,2]}'.repeat(50), '😀🎉'.repeat(40)]) {
    assert.equal(textTokens(hostile), utf8Length(hostile), hostile.slice(0, 12))
  }
})

// One body with every part of a message and of the request that is billed as prompt.
const BODY = {
  model: 'openai/gpt-4o',
  messages: [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', name: 'ann', content: [{ type: 'text', text: 'Hi 42' }] },
    {
      role: 'assistant',
      content: null,
      tool_calls: [{
        id: 'call_1',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
      }],
    },
    { role: 'tool', tool_call_id: 'call_1', content: 'Sunny' },
  ],
  tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
  response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {} } },
  prediction: { type: 'content', content: 'abc' },
}

Deno.test('measurePrompt: every billed part of a body, counted by hand', () => {
  const m = measurePrompt(BODY)
  // tools: 8 + '{"name":"f","parameters":{"type":"object"}}' = 26 (punctuation 1 each: 18;
  //   name 1, f 1, parameters 3, type 1, object 2);
  // response_format: 8 + '{"name":"x","schema":{}}' = 17 (punctuation 13; name, x, schema 2)
  assert.equal(m.segments[0], 34 + 25)
  assert.equal(m.segments[1], 4 + 4) // Be 1, ' brief' 2, '.' 1
  assert.equal(m.segments[2], 4 + (1 + 1) + 4) // name: 1 + ann; 'Hi 42': Hi, ' ', 4, 2
  // call: 3 + get_weather (get, _, weather 2) + '{"city":"Paris"}' (7 punctuation, city, Paris 2)
  assert.equal(m.segments[3], 4 + 3 + 4 + 10)
  assert.equal(m.segments[4], 4 + 3 + 2) // tool_call_id call_1: call, _, 1; Sunny 2
  assert.equal(m.tail, 3 + 1) // reply priming + prediction 'abc'
  assert.equal(m.tokens, 59 + 8 + 10 + 21 + 9 + 4)
  assert.equal(promptTokens(BODY), 111)
  assert.equal(promptTokens(BODY, 2), 111 + 2000) // two web results
  // Without the extras only the messages and the priming remain.
  assert.equal(promptTokens({ messages: BODY.messages }), 3 + 48)
  // Legacy `functions` and `function_call` count like tools and tool calls.
  assert.equal(
    promptTokens({
      messages: [{ role: 'assistant', function_call: { name: 'f', arguments: '{}' } }],
      functions: [{ name: 'f' }],
    }),
    // 3 + message 4 + call (3 + 1 + 2) + function 8 + '{"name":"f"}' (1+1+1+1+1+1+1+1+1 = 9)
    3 + 4 + 6 + 8 + 9,
  )
})

Deno.test('measurePrompt: images, audio and files by their rules', () => {
  const user = (...content: unknown[]) => ({ messages: [{ role: 'user', content }] })
  const base = 3 + 4
  const image = (url: string, detail?: string) => ({
    type: 'image_url',
    image_url: { url, detail },
  })
  assert.equal(promptTokens(user(image('https://x/a.png', 'low'))), base + 85)
  assert.equal(promptTokens(user(image('https://x/a.png'))), base + 1105)
  assert.equal(
    promptTokens(user(image('data:image/png;base64,' + 'A'.repeat(99_999)))),
    base + 1105,
  )
  assert.equal(promptTokens(user(image('https://x/a.png#sim-tokens=5000'))), base + 5000)

  // 2,000 base64 characters decode to 1,500 bytes: 3 tokens at 500 bytes a token.
  const audio = { type: 'input_audio', input_audio: { data: 'A'.repeat(2000), format: 'wav' } }
  const a = measurePrompt(user(audio))
  assert.deepEqual([a.tokens, a.audioTokens, a.audioParts], [base + 3, 3, 1])
  const padded = { type: 'input_audio', input_audio: { data: 'A'.repeat(1998) + '==' } }
  assert.equal(promptTokens(user(padded)), base + 3) // 1,498 bytes

  const file = (file: unknown) => ({ type: 'file', file })
  // Inline data is decoded and tokenized: "hello world" = hello 2, ' world' 2.
  const inline = 'data:text/plain;base64,' + btoa('hello world')
  assert.equal(promptTokens(user(file({ filename: 'a.txt', file_data: inline }))), base + 4)
  assert.equal(promptTokens(user(file({ file_data: 'data:text/plain,1%202' }))), base + 3)
  assert.equal(promptTokens(user(file({ file_data: 'https://x/a.pdf' }))), base + 3000)
  assert.equal(promptTokens(user(file({ file_id: 'file-123' }))), base + 3000)
  assert.equal(
    promptTokens(user(file({ file_data: 'https://x/a.pdf#sim-tokens=90000' }))),
    base + 90000,
  )

  const all = measurePrompt(user(image('https://x/a'), audio, file({ file_id: 'f' })))
  assert.deepEqual([all.images, all.audioParts, all.files], [1, 1, 1])
  // Other parts are billed as the JSON text they are sent as: '{"type":"x"}' = 7 punctuation,
  // type, x.
  assert.equal(promptTokens(user({ type: 'x' })), base + 9)
})

// Random bodies of text: messages of every role with names, string and array content, tool calls
// and ids; tools, legacy functions, response_format and prediction. Strings mix letters, digits,
// punctuation, whitespace and non-ASCII (including astral characters).
const text = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ unit: fc.constantFrom('a', 'b', ' ', '1', '{', '"', '\n'), maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
)
const schema = fc.jsonValue({ maxDepth: 3 })
const message = fc.record(
  {
    role: fc.constantFrom('system', 'developer', 'user', 'assistant', 'tool', 'function'),
    content: fc.oneof(
      text,
      fc.constant(null),
      fc.array(fc.record({ type: fc.constant('text'), text }), { maxLength: 3 }),
    ),
    name: text,
    tool_call_id: text,
    tool_calls: fc.array(
      fc.record({
        id: text,
        type: fc.constant('function'),
        function: fc.record({ name: text, arguments: text }),
      }),
      { maxLength: 2 },
    ),
  },
  { requiredKeys: ['role'] },
)
const body = fc.record(
  {
    model: fc.constant('openai/gpt-4o-mini'),
    messages: fc.array(message, { minLength: 1, maxLength: 6 }),
    tools: fc.array(
      fc.record({
        type: fc.constant('function'),
        function: fc.record({ name: text, parameters: schema }),
      }),
      { maxLength: 3 },
    ),
    functions: fc.array(fc.record({ name: text, parameters: schema }), { maxLength: 2 }),
    response_format: fc.record({
      type: fc.constant('json_schema'),
      json_schema: fc.record({ name: text, schema }),
    }),
    prediction: fc.record({ type: fc.constant('content'), content: text }),
  },
  { requiredKeys: ['model', 'messages'] },
)

Deno.test('property: the text of a body never costs more tokens than its UTF-8 bytes', () => {
  fc.assert(
    fc.property(body, (b) => {
      const bytes = utf8Length(JSON.stringify(b))
      const tokens = promptTokens(b)
      return tokens <= bytes
    }),
    { numRuns: 2000 },
  )
  // …and comes close: digits are a token a byte.
  const digits = '7'.repeat(10_000)
  const b = { model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: digits }] }
  assert.ok(promptTokens(b) / utf8Length(JSON.stringify(b)) > 0.99)
})
