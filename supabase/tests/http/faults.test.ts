// Fault injection, one table: every upstream fault the simulator can inject (slow first byte beyond
// the timeout, 5xx, 429, the operator's 401/402, malformed JSON, a stream cut before usage, an error
// event inside a 200 stream, a stream that stalls) in both modes, and a client that disconnects at
// each stage (before upstream answers, mid-stream, after the usage chunk but before [DONE]). For each:
// what the client gets, how the hold was closed, and — over all of them — the books against the
// simulator's generations (lib/books.ts): voided when nothing was generated, else billed exactly once
// for what was generated.

import assert from 'node:assert/strict'
import { newAccount, usageRecords } from '../lib/accounts.ts'
import { booksLine, checkBooks } from '../lib/books.ts'
import { sseData } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { sleep, test, waitFor } from '../lib/stack.ts'

type Stage = 'before-upstream' | 'mid-stream' | 'after-usage'

interface Case {
  name: string
  model: string
  stream: boolean
  headers?: Record<string, string>
  /** The client hangs up at this stage. */
  leave?: Stage
  /** HTTP status (a stream the client leaves has none to check). */
  status?: number
  /** error.code of a JSON error, or of the error event ending a 200 stream. */
  code?: string
  /** The usage record the hold must end as. */
  record: { status: string; settledBy: string }
}

const TIMEOUT = { 'x-gateway-upstream-timeout-ms': '250' }
const VOIDED = { status: 'voided', settledBy: 'void' }
const BY_GENERATION = { status: 'upstream_error', settledBy: 'generation' }

const CASES: Case[] = [
  ...[false, true].flatMap((stream): Case[] => {
    const mode = stream ? 'stream' : 'json'
    return [
      {
        name: `${mode}: slow first byte beyond the upstream timeout → 503, voided`,
        model: 'openai/gpt-4o-mini~slow-2000',
        stream,
        headers: TIMEOUT,
        status: 503,
        code: 'upstream_timeout',
        record: VOIDED,
      },
      ...([
        ['502', 502, 'upstream_error'],
        ['503', 503, 'upstream_unavailable'],
        ['429-5', 429, 'upstream_rate_limited'],
        ['401', 503, 'upstream_unavailable'],
        ['402', 503, 'upstream_unavailable'],
      ] as const).map(([fault, status, code]): Case => ({
        name: `${mode}: upstream ${fault} → ${status} ${code}, voided`,
        model: `openai/gpt-4o-mini~fault-${fault}`,
        stream,
        status,
        code,
        record: VOIDED,
      })),
      {
        name: `${mode}: malformed JSON from upstream → billed from the generation stats`,
        model: 'openai/gpt-4o-mini~len-9~fault-malformed',
        stream,
        status: stream ? 200 : 502,
        code: stream ? 'upstream_stream_error' : 'upstream_malformed',
        record: BY_GENERATION,
      },
      {
        name: `${mode}: connection cut before usage → billed from the generation stats`,
        model: 'openai/gpt-4o-mini~len-9~fault-stream-cut',
        stream,
        status: stream ? 200 : 502,
        code: stream ? 'upstream_stream_error' : 'upstream_malformed',
        record: BY_GENERATION,
      },
      {
        name: `${mode}: an error inside a 200 → billed from the generation stats`,
        model: 'openai/gpt-4o-mini~len-9~fault-stream-error',
        stream,
        status: stream ? 200 : 502,
        // In a stream, upstream's own error event is forwarded as it came.
        code: stream ? undefined : 'upstream_error',
        record: BY_GENERATION,
      },
      {
        name: `${mode}: the client leaves before upstream answers → still settled`,
        // (Streamed slowly, so the stream cannot finish before the closed connection is noticed.)
        model: `openai/gpt-4o-mini~len-6~slow-700${stream ? '~delay-100' : ''}`,
        stream,
        leave: 'before-upstream',
        // Non-streamed: upstream completes and its usage bills it. Streamed: the stream is
        // cancelled the moment the answer meets the closed connection; the stats bill it.
        record: stream
          ? { status: 'cancelled', settledBy: 'generation' }
          : { status: 'success', settledBy: 'usage' },
      },
    ]
  }),
  {
    name: 'stream: upstream stalls mid-stream beyond the idle timeout → error event, billed',
    model: 'openai/gpt-4o-mini~len-20~delay-1500',
    stream: true,
    status: 200,
    code: 'upstream_timeout',
    record: BY_GENERATION,
  },
  {
    name: 'stream: the client leaves mid-stream → upstream stopped, billed from the stats',
    model: 'openai/gpt-4o-mini~len-300~delay-15',
    stream: true,
    leave: 'mid-stream',
    record: { status: 'cancelled', settledBy: 'generation' },
  },
  {
    name: 'stream: the client leaves after the usage chunk, before [DONE] → billed from usage',
    model: 'openai/gpt-4o-mini~len-7~hold-done-1500',
    stream: true,
    leave: 'after-usage',
    record: { status: 'cancelled', settledBy: 'usage' },
  },
]

interface Answer {
  status: number | null
  text: string
  generationId: string | null
}

async function send(url: string, key: string, c: Case): Promise<Answer> {
  const controller = new AbortController()
  let timer: ReturnType<typeof setTimeout> | undefined
  if (c.leave === 'before-upstream') timer = setTimeout(() => controller.abort(), 200)
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...c.headers },
      body: JSON.stringify({
        model: c.model,
        stream: c.stream,
        messages: [{ role: 'user', content: 'Tell me about faults' }],
        max_tokens: 400,
      }),
      signal: controller.signal,
    })
    const generationId = res.headers.get('x-generation-id')
    if (!c.leave) return { status: res.status, text: await res.text(), generationId }
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    let text = ''
    const until = c.leave === 'mid-stream'
      ? (t: string) => (t.match(/"content":"[^"]/g) ?? []).length >= 3
      : (t: string) => t.includes('"finish_reason":"')
    while (!until(text)) {
      const r = await reader.read()
      if (r.done) throw new Error(`${c.name}: the stream ended before the client left`)
      text += r.value
    }
    if (c.leave === 'after-usage') await sleep(200) // usage is at the gateway, [DONE] is not
    controller.abort()
    await reader.cancel().catch(() => {})
    return { status: null, text, generationId }
  } catch (err) {
    if (controller.signal.aborted) return { status: null, text: '', generationId: null }
    throw err
  } finally {
    clearTimeout(timer)
  }
}

/** error.code of a JSON error, or of the error event that ends a stream. */
function errorCode(a: Answer, stream: boolean): string | undefined {
  if (!stream || a.status !== 200) return JSON.parse(a.text).error?.code
  const last = sseData(a.text).at(-1)
  return last && last !== '[DONE]' ? JSON.parse(last).error?.code : undefined
}

async function runCase(url: string, c: Case) {
  const a = await newAccount(2000, 'fault')
  const answer = await send(url, a.key, c)
  if (c.status !== undefined) assert.equal(answer.status, c.status, `${c.name}: ${answer.text}`)
  if (answer.status !== null && answer.status !== 200) {
    const e = JSON.parse(answer.text).error
    assert.equal(typeof e.message, 'string', c.name)
    assert.equal(typeof e.type, 'string', c.name)
  }
  if (c.code) assert.equal(errorCode(answer, c.stream), c.code, `${c.name}: ${answer.text}`)
  if (c.stream && answer.status === 200) {
    const data = sseData(answer.text)
    // A broken stream never ends as if it had finished.
    assert.notEqual(data.at(-1), '[DONE]', c.name)
    assert.ok(data.some((d) => d !== '[DONE]' && JSON.parse(d).error), `${c.name}: no error event`)
  }
  const [u] = await waitFor(`${c.name}: the hold closed`, async () => {
    const records = await usageRecords(a.userId)
    return records.length ? records : undefined
  }, 30_000)
  assert.equal(u.status, c.record.status, `${c.name}: ${JSON.stringify(u)}`)
  assert.equal(u.settled_by, c.record.settledBy, `${c.name}: ${JSON.stringify(u)}`)
  return { userId: a.userId, record: u }
}

test('every upstream fault and every client disconnect stage ends voided or billed exactly once', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    env: { GATEWAY_STREAM_IDLE_TIMEOUT_MS: '800', GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const users: number[] = []
    const queue = [...CASES]
    const failures: string[] = []
    await Promise.all(Array.from({ length: 6 }, async () => {
      for (let c = queue.shift(); c; c = queue.shift()) {
        try {
          const r = await runCase(fn.url, c)
          users.push(r.userId)
          console.log(
            `  ok: ${c.name} (${r.record.settled_by}, ${r.record.credits_charged} credits)`,
          )
        } catch (err) {
          failures.push(`${c.name}: ${(err as Error).message}`)
        }
      }
    }))
    assert.deepEqual(failures, [])
    const books = await checkBooks(users, sim.stats())
    console.log(`${CASES.length} faults injected; ${booksLine(books)}`)
    assert.deepEqual(books.problems, [])
    // The mid-stream disconnect stopped upstream rather than letting it run on.
    assert.ok(sim.generations().some((g) => g.cancelled && g.completion_tokens < 300))
  } finally {
    await fn.stop()
    await sim.close()
  }
})
