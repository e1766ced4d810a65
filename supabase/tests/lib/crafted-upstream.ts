// An upstream of a test's own making, in front of the stack's simulator: the test crafts the chat
// completion and, if it likes, /generation's answer for an id; everything else (/models, ids it
// does not answer) goes to the simulator as it is. For hostile or broken upstreams: what OpenRouter
// would never send, and the gateway must still bill exactly.

import { SIM_URL } from './stack.ts'

export interface CraftedUpstream {
  server: Deno.HttpServer<Deno.NetAddr>
  /** OPENROUTER_BASE_URL for a functions server (startFunctions' `upstream`). */
  baseUrl: string
}

export function craftedUpstream(handlers: {
  // deno-lint-ignore no-explicit-any -- the request body as the gateway forwarded it
  chat: (body: any) => Response
  /** /generation's answer for `id`; undefined: the simulator's. */
  generation?: (id: string) => Response | undefined
}): CraftedUpstream {
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url)
    if (url.pathname.endsWith('/chat/completions')) return handlers.chat(await req.json())
    if (url.pathname.endsWith('/generation')) {
      const r = handlers.generation?.(url.searchParams.get('id') ?? '')
      if (r) return r
    }
    return await fetch(`${SIM_URL}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
      body: req.body,
    })
  })
  return { server, baseUrl: `http://127.0.0.1:${server.addr.port}/api/v1` }
}

/** The text of a request body's last message (tests mark the hostile request with it). */
// deno-lint-ignore no-explicit-any
export const lastContent = (body: any): string => String(body?.messages?.at(-1)?.content ?? '')

/** A streamed chat completion of `content` through the functions server at `fnUrl`, unread. */
export function streamChat(
  fnUrl: string,
  key: string,
  content: string,
  maxTokens: number,
  model = 'openai/gpt-4o-mini',
): Promise<Response> {
  return fetch(`${fnUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model,
      stream: true,
      max_tokens: maxTokens,
      messages: [{ role: 'user', content }],
    }),
  })
}
