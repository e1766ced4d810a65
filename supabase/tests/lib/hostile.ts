// The adversarial soak's requests (issue 11): what a hostile client sends to make a request cost
// more than its hold or escape its price — oversized prompts (non-ASCII text, ~1 token a byte),
// 100 tools of 4 KB, image / audio / file parts, model variants (:nitro :floor :free :online),
// `models` fallback lists, openrouter/auto, slow readers and clients that hang up — and the cost
// soak's mix of models (issue 14). Every answer must be right for what was sent (200, 402 for an
// account that cannot afford it, 400 for a model or body refused, 413 for a body over the limit),
// never a 500; the books and gateway.overruns are checked afterwards (books.ts).

import type { PoolAccount } from './books.ts'
import type { Planned } from './load.ts'

const pick = <T>(r: () => number, xs: T[]): T => xs[Math.floor(r() * xs.length)]

/** Models of the simulator's catalog over three orders of magnitude of price (and a free one). */
export const COST_MODELS = [
  'openai/gpt-4o-mini',
  'openai/gpt-4o',
  'anthropic/claude-sonnet-4',
  'anthropic/claude-3.5-haiku',
  'google/gemini-2.5-flash',
  'meta-llama/llama-3.1-8b-instruct',
  'deepseek/deepseek-chat-v3-0324',
  'perplexity/sonar',
  'mistralai/mistral-nemo',
]

const VARIANTS = [':nitro', ':floor', ':online', ':free', '']
const HEAVY = '東京ζῆτα€🙂'

function tool(i: number) {
  return {
    type: 'function',
    function: {
      name: `tool_${i}`,
      description: 'x'.repeat(3900),
      parameters: { type: 'object', properties: { q: { type: 'string' } } },
    },
  }
}
const TOOLS = Array.from({ length: 100 }, (_, i) => tool(i))

const PNG = 'data:image/png;base64,' + 'iVBORw0KGgo'.repeat(40)

type Hostile =
  | 'oversized'
  | 'tools'
  | 'image'
  | 'audio'
  | 'file'
  | 'variant'
  | 'fallbacks'
  | 'auto'
  | 'slow-reader'
  | 'abort-mid-stream'
  | 'over-limit'

const MIX: [Hostile, number][] = [
  ['oversized', 12],
  ['tools', 8],
  ['image', 10],
  ['audio', 6],
  ['file', 6],
  ['variant', 16],
  ['fallbacks', 10],
  ['auto', 8],
  ['slow-reader', 10],
  ['abort-mid-stream', 10],
  ['over-limit', 4],
]

export function planHostile(r: () => number, pool: PoolAccount[]): Planned {
  const total = MIX.reduce((s, [, w]) => s + w, 0)
  let x = r() * total
  let kind: Hostile = 'oversized'
  for (const [k, w] of MIX) {
    if ((x -= w) < 0) {
      kind = k
      break
    }
  }
  const account = pick(r, pool.filter(() => true))
  const key = pick(r, account.keys)
  const base = pick(r, ['openai/gpt-4o-mini', 'openai/gpt-4o', 'anthropic/claude-3.5-haiku'])
  const stream = r() < 0.5
  const body: Record<string, unknown> = {
    model: base,
    stream,
    max_tokens: 4 + Math.floor(r() * 40),
    messages: [{ role: 'user', content: 'hi' }],
  }
  const p: Planned = { kind: `hostile-${kind}`, key, body, headers: {}, chunks: 2 }
  // A refused model or body is a 400; too dear for the balance a 402.
  p.alsoExpected = [400]
  switch (kind) {
    case 'oversized':
      // Non-ASCII: up to a token a byte, 4× what bytes/4 assumes.
      body.messages = [{ role: 'user', content: HEAVY.repeat(200 + Math.floor(r() * 3000)) }]
      break
    case 'tools':
      body.tools = TOOLS
      break
    case 'image':
      body.messages = [{
        role: 'user',
        content: [
          { type: 'text', text: 'what is it' },
          ...Array.from(
            { length: 1 + Math.floor(r() * 3) },
            () => ({
              type: 'image_url',
              image_url: { url: PNG, detail: r() < 0.5 ? 'high' : 'low' },
            }),
          ),
        ],
      }]
      break
    case 'audio':
      body.messages = [{
        role: 'user',
        content: [{
          type: 'input_audio',
          input_audio: { data: 'QUJD'.repeat(500 + Math.floor(r() * 20000)), format: 'wav' },
        }],
      }]
      break
    case 'file':
      body.messages = [{
        role: 'user',
        content: [{ type: 'text', text: 'summarise' }, {
          type: 'file',
          file: { filename: 'a.pdf', file_data: 'https://example.com/a.pdf' },
        }],
      }]
      break
    case 'variant':
      body.model = base + pick(r, VARIANTS)
      break
    case 'fallbacks':
      body.models = [base, pick(r, ['openai/gpt-4o', 'anthropic/claude-opus-4', 'x-ai/grok-3'])]
      break
    case 'auto':
      body.model = 'openrouter/auto'
      break
    case 'slow-reader':
      body.stream = true
      body.model = `${base}~len-40`
      p.readPauseMs = 20
      break
    case 'abort-mid-stream':
      p.kind = 'abort-mid-stream'
      body.stream = true
      body.model = `${base}~len-60~delay-3`
      break
    case 'over-limit':
      // Past the 4 MiB body limit.
      body.messages = [{ role: 'user', content: 'a'.repeat(4 * 1024 * 1024 + 10) }]
      p.alsoExpected = [413]
      break
  }
  return p
}

/** The cost soak: plain requests, stream or not, over COST_MODELS. */
export function planCost(r: () => number, pool: PoolAccount[]): Planned {
  const account = pick(r, pool)
  const model = pick(r, COST_MODELS)
  const words = Array.from({ length: 1 + Math.floor(r() * 30) }, () => pick(r, ['alpha', 'β', '7']))
  return {
    kind: `cost-${model.split('/')[0]}`,
    key: pick(r, account.keys),
    body: {
      model,
      stream: r() < 0.5,
      max_tokens: 8 + Math.floor(r() * 80),
      messages: [{ role: 'user', content: words.join(' ') }],
    },
    headers: {},
    chunks: 1,
  }
}
