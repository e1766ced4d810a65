// The load of the concurrency runs (the suite's light one and scripts/soak.sh's 10,000): chat
// requests spread over many keys of accounts with small balances, mixed JSON and SSE, some with
// upstream faults, some whose client hangs up (before upstream answers, mid-stream, after the usage
// chunk but before [DONE]), and admin credit grants (with Idempotency-Key, some retried) landing on
// the same accounts meanwhile. Every answer is checked as it comes (status expected for what was
// asked, OpenAI-shaped errors, no leak); the books are checked afterwards (books.ts).
//
// Deterministic for a seed: which request is what does not depend on timing.

import type { PoolAccount, PoolKey } from './books.ts'

export type Kind =
  | 'json'
  | 'json-uncapped'
  | 'stream'
  | 'abort-before-upstream'
  | 'abort-mid-stream'
  | 'abort-after-usage'
  | 'fault'
  | 'long-stream'

export interface Fault {
  suffix: string
  stream: boolean
  /** The status the client must get (before any stream starts). */
  status: number
  /** A 200 stream that must end with an error event. */
  errorEvent?: boolean
  headers?: Record<string, string>
}

/** Every upstream fault of the simulator, both ways where both exist, and what the client sees. */
export const FAULTS: Fault[] = [
  { suffix: '~fault-502', stream: false, status: 502 },
  { suffix: '~fault-502', stream: true, status: 502 },
  { suffix: '~fault-503', stream: false, status: 503 },
  { suffix: '~fault-503', stream: true, status: 503 },
  { suffix: '~fault-429-3', stream: false, status: 429 },
  { suffix: '~fault-429-3', stream: true, status: 429 },
  { suffix: '~fault-402', stream: false, status: 503 },
  { suffix: '~fault-401', stream: true, status: 503 },
  { suffix: '~fault-malformed', stream: false, status: 502 },
  { suffix: '~fault-malformed', stream: true, status: 200, errorEvent: true },
  { suffix: '~fault-stream-cut', stream: false, status: 502 },
  { suffix: '~fault-stream-cut', stream: true, status: 200, errorEvent: true },
  { suffix: '~fault-stream-error', stream: false, status: 502 },
  { suffix: '~fault-stream-error', stream: true, status: 200, errorEvent: true },
  // Slow first byte beyond the (shortened) upstream timeout.
  {
    suffix: '~slow-1500',
    stream: false,
    status: 503,
    headers: { 'x-gateway-upstream-timeout-ms': '150' },
  },
  {
    suffix: '~slow-1500',
    stream: true,
    status: 503,
    headers: { 'x-gateway-upstream-timeout-ms': '150' },
  },
]

export const MIX: [Kind, number][] = [
  ['json', 38],
  ['json-uncapped', 3],
  ['stream', 34],
  ['abort-before-upstream', 3],
  ['abort-mid-stream', 8],
  ['abort-after-usage', 4],
  ['fault', 10],
]

/** The churn soak's mix: the standard one plus streams longer than GATEWAY_STREAM_MAX_SECONDS. */
export const CHURN_MIX: [Kind, number][] = [...MIX, ['long-stream', 6]]

export interface LoadOptions {
  gatewayUrl: string
  pool: PoolAccount[]
  requests: number
  concurrency: number
  seed?: number
  /** An admin key: one credit grant per this many requests (0 = none). */
  admin?: { key: string; every: number; credits: number }
  /** The kinds and their weights (default MIX). */
  mix?: [Kind, number][]
  /**
   * Another planner (the adversarial and cost soaks): what to send and what answers are right.
   * Default: `plan` over `mix`.
   */
  planner?: (r: () => number, pool: PoolAccount[]) => Planned
  /**
   * Workers are killed during the run (the churn soak): an answer cut by a worker's death (the
   * stand-in's WORKER_LIMIT 502/546, a body or stream that ends without its end) is counted in
   * `cutByKills`, not a problem. The caller bounds that count by the requests the kills met.
   */
  kills?: boolean
}

export interface LoadReport {
  sent: number
  byKind: Record<string, number>
  byStatus: Record<string, number>
  faultsInjected: number
  clientAborts: number
  grants: number
  grantReplays: number
  creditsGranted: number
  /** Streams the gateway cut itself (finish_reason length, gateway_max_duration / client_stall). */
  streamsCut: number
  /** Answers cut by a worker's death (only with `kills`). */
  cutByKills: number
  problems: string[]
  durationMs: number
}

/** mulberry32: a small seeded PRNG. */
export function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'épsilon', 'ζῆτα', '東京', 'x', 'yy', 'zzz']
const LEAK =
  /PostgresError|\bselect\b.*\bfrom\b|gateway\.\w+\(|\bat \S+\.ts:\d+|simulated-upstream-key/i
const KEY = /gw_(live|test|staging|dev)_[0-9A-Za-z]{28}/

export interface Planned {
  kind: string
  key: PoolKey
  body: Record<string, unknown>
  headers: Record<string, string>
  fault?: Fault
  /** abort-mid-stream: content chunks to read before hanging up. */
  chunks: number
  /** Statuses besides 200 and 402 that are right for this request (a hostile one's 400, 413). */
  alsoExpected?: number[]
  /** A reader that pauses this long (ms) after each chunk (slow readers). */
  readPauseMs?: number
}

export function plan(r: () => number, pool: PoolAccount[], mix: [Kind, number][] = MIX): Planned {
  const total = mix.reduce((s, [, w]) => s + w, 0)
  let pick = r() * total
  let kind: Kind = 'json'
  for (const [k, w] of mix) {
    if ((pick -= w) < 0) {
      kind = k
      break
    }
  }
  const account = pool[Math.floor(r() * pool.length)]
  const key = account.keys[Math.floor(r() * account.keys.length)]
  const words = Array.from({ length: 1 + Math.floor(r() * 12) }, () => WORDS[(r() * 10) | 0])
  const len = 1 + Math.floor(r() * 40)
  const body: Record<string, unknown> = {
    model: `openai/gpt-4o-mini~len-${len}`,
    messages: [{ role: 'user', content: words.join(' ') }],
    max_tokens: 8 + Math.floor(r() * 56),
  }
  const headers: Record<string, string> = {}
  let fault: Fault | undefined
  switch (kind) {
    case 'json-uncapped':
      delete body.max_tokens // the hold takes whatever the balance affords
      break
    case 'stream':
      body.stream = true
      break
    case 'abort-before-upstream':
      body.model = `openai/gpt-4o-mini~len-${len}~slow-400`
      body.stream = r() < 0.5
      break
    case 'abort-mid-stream':
      body.model = 'openai/gpt-4o-mini~len-60~delay-3'
      body.max_tokens = 60
      body.stream = true
      break
    case 'abort-after-usage':
      body.model = `openai/gpt-4o-mini~len-${len}~hold-done-800`
      body.stream = true
      break
    case 'long-stream':
      // 40 tokens, one per 150 ms: 6 s, past the churn soak's stream maximum (4 s); some outlive
      // their worker instead (killed at its wall clock) and are settled by the reconcile.
      body.model = 'openai/gpt-4o-mini~len-40~delay-150'
      body.max_tokens = 40
      body.stream = true
      break
    case 'fault':
      fault = FAULTS[Math.floor(r() * FAULTS.length)]
      body.model = `openai/gpt-4o-mini~len-${len}${fault.suffix}`
      if (fault.stream) body.stream = true
      Object.assign(headers, fault.headers)
      break
  }
  return { kind, key, body, headers, fault, chunks: 1 + Math.floor(r() * 5) }
}

interface Outcome {
  status: number | 'aborted' | 'killed'
  problem?: string
  /** The gateway cut the stream itself (its maximum duration, a stalled client). */
  cut?: boolean
}

/** The stand-in's answer for a request whose worker died before answering (Supabase's). */
const WORKER_LIMIT = /"code":"WORKER_LIMIT"/

function checkError(status: number, text: string): string | undefined {
  let e
  try {
    e = JSON.parse(text)?.error
  } catch {
    return `${status} is not JSON: ${text.slice(0, 120)}`
  }
  if (typeof e?.message !== 'string' || typeof e?.type !== 'string' || !('code' in e)) {
    return `${status} is not an OpenAI-style error: ${text.slice(0, 120)}`
  }
}

function checkLeak(text: string): string | undefined {
  if (LEAK.test(text) || KEY.test(text)) return `leak in a response: ${text.slice(0, 160)}`
}

async function readUntil(
  reader: ReadableStreamDefaultReader<string>,
  done: (text: string) => boolean,
  pauseMs = 0,
): Promise<string> {
  let text = ''
  while (!done(text)) {
    const r = await reader.read()
    if (r.done) break
    text += r.value
    if (pauseMs) await new Promise((ok) => setTimeout(ok, pauseMs))
  }
  return text
}

const GATEWAY_CUT = /"native_finish_reason":"gateway_(max_duration|client_stall)"/

async function runOne(url: string, p: Planned, kills: boolean): Promise<Outcome> {
  const controller = new AbortController()
  const aborts = p.kind.startsWith('abort')
  // Any request may find its account's balance spent (small balances, on purpose).
  const expected = new Set<number>([402, ...(p.alsoExpected ?? [])])
  if (p.fault) expected.add(p.fault.status)
  else expected.add(200)
  let timer: ReturnType<typeof setTimeout> | undefined
  if (p.kind === 'abort-before-upstream') timer = setTimeout(() => controller.abort(), 120)
  let headersCame = false
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${p.key.key}`,
        'content-type': 'application/json',
        ...p.headers,
      },
      body: JSON.stringify(p.body),
      signal: controller.signal,
    })
    headersCame = true
    const sse = (res.headers.get('content-type') ?? '').startsWith('text/event-stream')
    if (!sse || !aborts || res.status !== 200) {
      const text = p.readPauseMs && res.body
        ? await readUntil(
          res.body.pipeThrough(new TextDecoderStream()).getReader(),
          () => false,
          p.readPauseMs,
        )
        : await res.text()
      clearTimeout(timer)
      if (kills && (res.status === 502 || res.status === 546) && WORKER_LIMIT.test(text)) {
        return { status: 'killed' }
      }
      if (!expected.has(res.status)) {
        return {
          status: res.status,
          problem: `${p.kind} ${p.body.model}: ${res.status} ${text.slice(0, 160)}`,
        }
      }
      const cut = sse && GATEWAY_CUT.test(text)
      const problem = checkLeak(text) ??
        (res.status !== 200 ? checkError(res.status, text) : checkBody(p, sse, text, cut))
      // A body or stream that just stops, its worker killed under it.
      if (problem && kills && res.status === 200 && !cut && !text.trimEnd().endsWith('[DONE]')) {
        if (sse ? !text.includes('"error":{') : !isJson(text)) return { status: 'killed' }
      }
      return { status: res.status, problem, cut }
    }
    // A stream the client will leave.
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader()
    if (p.kind === 'abort-mid-stream') {
      await readUntil(reader, (t) => (t.match(/"content":"[^"]/g) ?? []).length >= p.chunks)
    } else if (p.kind === 'abort-after-usage') {
      // The finish_reason chunk came; upstream's usage chunk is held by the gateway, [DONE] by
      // upstream: leave in between.
      await readUntil(reader, (t) => t.includes('"finish_reason":"'))
      await new Promise((r) => setTimeout(r, 150))
    }
    controller.abort()
    await reader.cancel().catch(() => {})
    return { status: 'aborted' }
  } catch (err) {
    clearTimeout(timer)
    if (aborts && controller.signal.aborted) return { status: 'aborted' }
    // The connection broke after the headers: the worker died mid-body.
    if (kills && headersCame) return { status: 'killed' }
    return { status: 0, problem: `${p.kind} ${p.body.model}: ${(err as Error).name}` }
  }
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

function checkBody(p: Planned, sse: boolean, text: string, cut = false): string | undefined {
  if (!p.body.stream) {
    const doc = JSON.parse(text)
    if (!doc.gateway_usage || doc.object !== 'chat.completion') {
      return `${p.kind}: 200 without a completion: ${text.slice(0, 120)}`
    }
    return
  }
  if (!sse) return `${p.kind}: a stream was asked, ${text.slice(0, 80)} came`
  const ended = text.trimEnd().endsWith('data: [DONE]')
  const errorEvent = text.split('\n').some((l) =>
    l.startsWith('data: {') && l.includes('"error":{')
  )
  if (p.fault?.errorEvent) {
    if (!errorEvent || ended) return `${p.body.model}: stream without its error event`
  } else if (cut) {
    // Cut by the gateway: its last chunk, then [DONE]; the usage comes with the settle.
    if (!ended || errorEvent) {
      return `${p.kind}: a cut stream did not end cleanly: …${text.slice(-160)}`
    }
  } else if (!ended || errorEvent || !text.includes('"gateway_usage"')) {
    return `${p.kind}: stream did not end with gateway_usage and [DONE]: …${text.slice(-160)}`
  }
}

async function grant(
  url: string,
  admin: { key: string; credits: number },
  userId: number,
  idem: string,
  kills = false,
): Promise<{ ok: boolean; replay: boolean; problem?: string; retriedAfterKill?: boolean }> {
  // A grant whose worker was killed under it may or may not have landed: the client retries it
  // with the same Idempotency-Key, as a client should, until it gets an answer.
  for (let attempt = 0;; attempt++) {
    let res: Response
    let text: string
    try {
      res = await fetch(`${url}/admin/add_credits`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${admin.key}`,
          'content-type': 'application/json',
          'idempotency-key': idem,
        },
        body: JSON.stringify({ user_id: userId, credits: admin.credits, reason: 'soak top-up' }),
      })
      text = await res.text()
    } catch (err) {
      if (kills && attempt < 5) continue
      return { ok: false, replay: false, problem: `grant: ${(err as Error).name}` }
    }
    if (kills && attempt < 5 && WORKER_LIMIT.test(text)) continue
    if (res.status !== 200) {
      return { ok: false, replay: false, problem: `grant: ${res.status} ${text}` }
    }
    const replay = JSON.parse(text).idempotent_replay === true
    // After a kill, a replay says the first attempt landed: granted once, still.
    return { ok: true, replay, retriedAfterKill: attempt > 0 }
  }
}

/** Runs the load; resolves when every request has been answered (or abandoned by its client). */
export async function runLoad(opts: LoadOptions): Promise<LoadReport> {
  const started = performance.now()
  const r = rng(opts.seed ?? 20261125)
  const planner = opts.planner ?? ((r, pool) => plan(r, pool, opts.mix))
  const planned = Array.from({ length: opts.requests }, () => planner(r, opts.pool))
  const report: LoadReport = {
    sent: 0,
    byKind: {},
    byStatus: {},
    faultsInjected: 0,
    clientAborts: 0,
    grants: 0,
    grantReplays: 0,
    creditsGranted: 0,
    streamsCut: 0,
    cutByKills: 0,
    problems: [],
    durationMs: 0,
  }
  let next = 0
  const worker = async () => {
    while (next < planned.length) {
      const i = next++
      const p = planned[i]
      report.sent++
      report.byKind[p.kind] = (report.byKind[p.kind] ?? 0) + 1
      if (p.fault) report.faultsInjected++
      const o = await runOne(opts.gatewayUrl, p, opts.kills ?? false)
      report.byStatus[o.status] = (report.byStatus[o.status] ?? 0) + 1
      if (o.status === 'aborted') report.clientAborts++
      if (o.status === 'killed') report.cutByKills++
      if (o.cut) report.streamsCut++
      if (o.problem && report.problems.length < 50) report.problems.push(o.problem)
      if (opts.admin?.every && i % opts.admin.every === 0) {
        const target = opts.pool[(i / opts.admin.every) % opts.pool.length].userId
        const idem = `soak-${opts.seed ?? 0}-${i}`
        const kills = opts.kills ?? false
        const g = await grant(opts.gatewayUrl, opts.admin, target, idem, kills)
        // Every fourth grant is retried with the same key and body: replayed, never granted twice.
        const retried = (i / opts.admin.every) % 4 === 0
        const again = retried ? await grant(opts.gatewayUrl, opts.admin, target, idem, kills) : null
        for (const x of [g, again]) {
          if (x?.problem && report.problems.length < 50) report.problems.push(x.problem)
        }
        // A replay after a killed attempt: that attempt landed, once.
        if (g.ok && (!g.replay || g.retriedAfterKill)) {
          report.grants++
          report.creditsGranted += opts.admin.credits
        }
        if (again?.ok && again.replay) report.grantReplays++
        else if (again) report.problems.push(`grant ${idem} retried was not a replay`)
      }
    }
  }
  await Promise.all(Array.from({ length: opts.concurrency }, worker))
  report.durationMs = Math.round(performance.now() - started)
  return report
}

/** One line of figures for a test's output. */
export function loadLine(r: LoadReport): string {
  return `load: ${r.sent} requests in ${(r.durationMs / 1000).toFixed(1)} s ` +
    `(${Math.round(r.sent / (r.durationMs / 1000))}/s), ${r.faultsInjected} faults injected, ` +
    `${r.clientAborts} client aborts, ${r.streamsCut} streams cut by the gateway, ` +
    (r.cutByKills ? `${r.cutByKills} answers cut by worker kills, ` : '') +
    `${r.grants} grants (+${r.grantReplays} replayed retries); ` +
    `kinds ${JSON.stringify(r.byKind)}; statuses ${JSON.stringify(r.byStatus)}`
}
