// The start banner says where the gateway really points: with OPENROUTER_BASE_URL set it names that
// URL, never the local simulator it is not using. It asks the running gateway (/health), so it
// cannot drift from what the function was started with.

import assert from 'node:assert/strict'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { test } from '../lib/stack.ts'

const ROOT = new URL('../../../', import.meta.url).pathname

async function banner(functionsUrl: string): Promise<string> {
  const out = await new Deno.Command('bash', {
    args: ['scripts/stack.sh', 'banner', functionsUrl],
    cwd: ROOT,
    stdout: 'piped',
    stderr: 'piped',
  }).output()
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr))
  return new TextDecoder().decode(out.stdout)
}

test('with OPENROUTER_BASE_URL set, the banner names it, not the simulator on 54340', async () => {
  const sim = startOwnSimulator()
  // As stack.sh starts it without a key but with OPENROUTER_BASE_URL: simulated, pointed elsewhere.
  const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
  try {
    const text = await banner(fn.url.replace(/\/functions\/v1\/gateway$/, ''))
    const upstream = text.split('\n').filter((l) => /Upstream|^\s{13}\S/.test(l)).join('\n')
    assert.ok(upstream.includes(sim.baseUrl), text)
    assert.ok(!text.includes('54340'), text)
    assert.match(upstream, /OPENROUTER_BASE_URL/)
  } finally {
    await fn.stop()
    await sim.close()
  }
})
