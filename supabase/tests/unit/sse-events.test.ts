// sse-events.ts: how the gateway reads OpenRouter's stream, whatever the chunking. Every event but
// the usage chunk and [DONE] is forwarded as it was sent, once complete (CRLF normalised); the usage
// chunk is held back with its data; the model, the generation id and the content chunks are taken
// as they pass; an event that is not JSON is refused; a last event without its blank line counts.

import assert from 'node:assert/strict'
import fc from 'fast-check'
import { MalformedEvent, UpstreamEvents } from '../../functions/gateway/sse-events.ts'

const chunk = (delta: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  `data: ${
    JSON.stringify({ id: 'gen-1', model: 'openai/gpt-4o-mini', choices: [{ delta }], ...extra })
  }`
const USAGE = `data: ${
  JSON.stringify({
    id: 'gen-1',
    choices: [],
    usage: { prompt_tokens: 12, completion_tokens: 3, cost: 0.0001 },
  })
}`

const STREAM = [
  ': OPENROUTER PROCESSING',
  chunk({ role: 'assistant', content: '' }),
  chunk({ content: 'Hel' }),
  chunk({ content: 'lo' }),
  chunk({ reasoning: 'thinking' }),
  chunk({ tool_calls: [{ index: 0, function: { arguments: '{}' } }] }),
  chunk({ refusal: 'no' }),
  chunk({}, { choices: [{ delta: {}, finish_reason: 'stop' }] }),
  USAGE,
  'data: [DONE]',
].map((e) => `${e}\n\n`).join('')

/** Feeds `text` in pieces cut at `cuts`, then ends the stream; returns what was forwarded. */
function run(text: string, cuts: number[], generationId: string | null = null) {
  const events = new UpstreamEvents(generationId)
  let out = ''
  let at = 0
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    out += events.feed(text.slice(at, cut))
    at = cut
  }
  out += events.feed(text.slice(at))
  out += events.flush('')
  return { events, out }
}

Deno.test('forwards every event as sent, holds back the usage chunk and [DONE]', () => {
  const { events, out } = run(STREAM, [])
  const expected = STREAM.replace(`${USAGE}\n\n`, '').replace('data: [DONE]\n\n', '')
  assert.equal(out, expected)
  assert.deepEqual(events.usage, { prompt_tokens: 12, completion_tokens: 3, cost: 0.0001 })
  assert.equal(events.usageData, USAGE.slice('data: '.length))
  assert.equal(events.model, 'openai/gpt-4o-mini')
  assert.equal(events.generationId, 'gen-1')
  // content, reasoning, tool calls and a refusal count; an empty content or a bare finish does not
  assert.equal(events.contentChunks, 5)
  assert.equal(events.sawError, false)
})

Deno.test('the same whatever the chunking (any byte boundaries, CRLF or LF)', () => {
  const crlf = STREAM.replaceAll('\n', '\r\n')
  const whole = run(STREAM, [])
  // Not between the CR and the LF of one line ending: a read ending in CR is taken as a line end
  // of its own, so the LF that follows ends the event early (OpenRouter sends LF only).
  const cut = (text: string, c: number) => text[c - 1] === '\r' ? c + 1 : c
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.array(fc.nat({ max: STREAM.length * 2 }), { maxLength: 40 }),
      (useCrlf, cuts) => {
        const text = useCrlf ? crlf : STREAM
        const { events, out } = run(text, cuts.map((c) => cut(text, c % (text.length + 1))))
        assert.equal(out, whole.out)
        assert.deepEqual(events.usage, whole.events.usage)
        assert.equal(events.contentChunks, whole.events.contentChunks)
      },
    ),
    { numRuns: 300 },
  )
})

Deno.test("the generation id of the response header wins over the chunks' ids", () => {
  assert.equal(run(STREAM, [], 'gen-header').events.generationId, 'gen-header')
  assert.equal(run(STREAM, [], null).events.generationId, 'gen-1')
})

Deno.test('an error event is forwarded and marks the stream; comments and unknown fields pass', () => {
  const error = `data: ${JSON.stringify({ error: { code: 502, message: 'provider down' } })}`
  const text = `: keep-alive\n\nevent: message\nid: 7\n\n${error}\n\n`
  const { events, out } = run(text, [5, 30])
  assert.equal(out, text)
  assert.equal(events.sawError, true)
  assert.equal(events.usage, null)
})

Deno.test('a data field split over several lines is one event (joined with newlines)', () => {
  const { events } = run(
    'data: {"id":"gen-9",\ndata: "choices":[{"delta":{"content":"x"}}]}\n\n',
    [],
  )
  assert.equal(events.generationId, 'gen-9')
  assert.equal(events.contentChunks, 1)
})

Deno.test('an event that is not JSON is refused as malformed', () => {
  const events = new UpstreamEvents(null)
  assert.throws(() => events.feed('data: {"id": \n\n'), MalformedEvent)
})

Deno.test('a last event without its blank line still counts when the stream ends', () => {
  const events = new UpstreamEvents(null)
  assert.equal(
    events.feed(`${chunk({ content: 'a' })}\n\n${USAGE}`),
    `${chunk({ content: 'a' })}\n\n`,
  )
  assert.equal(events.usageData, null)
  assert.equal(events.flush(''), '')
  assert.deepEqual(events.usage, { prompt_tokens: 12, completion_tokens: 3, cost: 0.0001 })
  assert.equal(events.flush(''), '', 'nothing is left after the end')
  assert.throws(() => new UpstreamEvents(null).flush('data: not json'), MalformedEvent)
})
