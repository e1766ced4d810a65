// Settling survives the instance being recycled right after it responded: the work is handed to
// EdgeRuntime.waitUntil, which the runtime (here scripts/serve-functions.ts) awaits before it
// stops. The test runs its own function process on a free port, so stopping it disturbs no one.

import assert from 'node:assert/strict'
import { newAccount, settled } from '../lib/accounts.ts'
import { simGeneration } from '../lib/sim.ts'
import { DB_URL, FUNCTION_DB_URL, SIM_URL, test } from '../lib/stack.ts'

const ROOT = new URL('../../../', import.meta.url)

function freePort(): number {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 })
  const port = (listener.addr as Deno.NetAddr).port
  listener.close()
  return port
}

async function startFunctions(port: number): Promise<Deno.ChildProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/serve-functions.ts'],
    cwd: ROOT.pathname,
    env: {
      FUNCTIONS_PORT: String(port),
      SUPABASE_URL: `http://127.0.0.1:${port}`,
      SUPABASE_DB_URL: DB_URL,
      GATEWAY_DB_URL: FUNCTION_DB_URL,
      OPENROUTER_BASE_URL: `${SIM_URL}/api/v1`,
      OPENROUTER_API_KEY: 'simulated-upstream-key',
      GATEWAY_UPSTREAM_SIMULATED: '1',
      GATEWAY_LOG_REQUESTS: '0',
    },
    stdout: 'null',
    stderr: 'null',
  }).spawn()
  for (let i = 0; i < 150; i++) {
    const ok = await fetch(`http://127.0.0.1:${port}/functions/v1/gateway/health`)
      .then(async (r) => (await r.body?.cancel(), r.ok), () => false)
    if (ok) return child
    await new Promise((r) => setTimeout(r, 100))
  }
  child.kill('SIGKILL')
  throw new Error('the function process did not start')
}

test('a disconnect settled after the instance is told to stop is still billed', async () => {
  const port = freePort()
  const child = await startFunctions(port)
  const a = await newAccount(2000)
  const controller = new AbortController()
  const res = await fetch(`http://127.0.0.1:${port}/functions/v1/gateway/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'openai/gpt-4o-mini~len-300~delay-20',
      stream: true,
      messages: [{ role: 'user', content: 'Hello' }],
    }),
    signal: controller.signal,
  })
  assert.equal(res.status, 200)
  const id = res.headers.get('x-generation-id')!
  const reader = res.body!.getReader()
  for (let i = 0; i < 4; i++) await reader.read()
  controller.abort()
  await reader.cancel().catch(() => {})
  // Recycle the instance at once: the settle (which waits for OpenRouter's generation stats) is
  // still pending and must be awaited by the runtime.
  await new Promise((r) => setTimeout(r, 50))
  child.kill('SIGTERM')
  const status = await child.status
  assert.equal(status.code, 0)

  const u = await settled(a.userId, 1, 5_000)
  const g = await simGeneration(id)
  assert.equal(u.settled_by, 'generation')
  assert.equal(u.completion_tokens, g.completion_tokens)
})
