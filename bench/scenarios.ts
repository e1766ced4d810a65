// What the benchmark drives: the same chat request through each path, at each concurrency.
//
// The request is tiny on purpose (4 generated tokens, a short prompt, `max_tokens` 8) so that the
// simulated upstream answers in microseconds and what is measured is the proxy in front of it.

export const MODEL = 'openai/gpt-4o-mini~len-4'

export function chatBody(stream: boolean): string {
  return JSON.stringify({
    model: MODEL,
    messages: [{ role: 'user', content: 'Say hi' }],
    max_tokens: 8,
    ...(stream ? { stream: true } : {}),
  })
}

export type Target = 'sim' | 'portkey' | 'gateway'

export interface Scenario {
  /** Stable id, used by --only and in the results JSON. */
  id: string
  /**
   * The letter: (a) upstream, (b) Portkey, (c) gateway, (d) gateway streaming, (e) hot key;
   * (f) the gateway behind the local edge-runtime stand-in.
   */
  letter: string
  label: string
  target: Target
  stream: boolean
  concurrency: number[]
  /** Metered through our gateway: which keys the load uses. */
  keys?: 'many' | 'hot'
  /** The scenario whose latency at the same concurrency is "the upstream alone". */
  baseline: string
  /** The Portkey scenario its throughput is compared with. */
  versus?: string
  /**
   * Served by the local edge-runtime stand-in (scripts/serve-functions.ts) whatever the run's
   * --plain/--stand-in: its cost next to the function alone.
   */
  standIn?: true
}

export const SCENARIOS: Scenario[] = [
  {
    id: 'direct',
    letter: 'a',
    label: 'simulator directly',
    target: 'sim',
    stream: false,
    concurrency: [1, 16, 64],
    baseline: 'direct',
  },
  {
    id: 'direct-stream',
    letter: 'a',
    label: 'simulator directly, streaming',
    target: 'sim',
    stream: true,
    concurrency: [1, 16, 64],
    baseline: 'direct-stream',
  },
  {
    id: 'portkey',
    letter: 'b',
    label: 'Portkey OSS 1.15.2 → simulator',
    target: 'portkey',
    stream: false,
    concurrency: [1, 16, 64],
    baseline: 'direct',
  },
  {
    id: 'gateway',
    letter: 'c',
    label: 'our gateway → simulator, metered (64 accounts)',
    target: 'gateway',
    stream: false,
    concurrency: [1, 16, 64],
    keys: 'many',
    baseline: 'direct',
    versus: 'portkey',
  },
  {
    id: 'gateway-stream',
    letter: 'd',
    label: 'our gateway, streaming, metered (64 accounts)',
    target: 'gateway',
    stream: true,
    concurrency: [1, 16, 64],
    keys: 'many',
    // No Portkey counterpart: Portkey 1.15.2 on Node answers every streamed request with 500
    // ("TypeError: immutable" when it adds headers to the upstream's response; with
    // @hono/node-server > 1.14.2, Portkey-AI/gateway#1389 and #1550).
    baseline: 'direct-stream',
  },
  {
    id: 'hot-key',
    letter: 'e',
    label: 'our gateway, one hot key (one account)',
    target: 'gateway',
    stream: false,
    concurrency: [64],
    keys: 'hot',
    baseline: 'direct',
    versus: 'portkey',
  },
  {
    // c behind the stand-in: what the local supervisor and worker wrapper cost (on hosted Supabase
    // the edge runtime routes in Rust, outside the function's CPU and memory), and the lifecycle
    // (workers started, retired, dropped) under load.
    id: 'gateway-stand-in',
    letter: 'f',
    label: 'our gateway behind the local edge-runtime stand-in (64 accounts)',
    target: 'gateway',
    stream: false,
    concurrency: [1, 64],
    keys: 'many',
    baseline: 'direct',
    versus: 'portkey',
    standIn: true,
  },
]
