// scripts/deploy-check.ts, the check an operator runs against a deployed gateway, passes against the
// local stack (the same shape: the function as gateway_api through a transaction pooler, the cron
// jobs, exact billing) and fails, naming what is wrong, against a function that runs as postgres
// and against a direct connection given as the function's.

import assert from 'node:assert/strict'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { DB_URL, FUNCTION_DB_URL, GATEWAY_URL, test } from '../lib/stack.ts'

const ROOT = new URL('../../../', import.meta.url).pathname

async function deployCheck(gateway: string, functionDbUrl: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      'run',
      '-A',
      'scripts/deploy-check.ts',
      '--gateway',
      gateway,
      '--db-url',
      DB_URL,
      '--function-db-url',
      functionDbUrl,
    ],
    cwd: ROOT,
    stdout: 'piped',
    stderr: 'piped',
  }).output()
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr)
  const lines = Object.fromEntries(
    text.split('\n').filter((l) => /^(ok {2}|FAIL|skip) /.test(l))
      .map((l) => [l.slice(5).split(/\s+/)[0], l.slice(0, 4).trim()]),
  )
  return { code: out.code, text, lines }
}

test('the deploy check passes against the local stack', async () => {
  const r = await deployCheck(GATEWAY_URL, FUNCTION_DB_URL)
  console.log(r.text.trim())
  assert.equal(r.code, 0, r.text)
  assert.deepEqual(r.lines, {
    health: 'ok',
    role: 'ok',
    cron: 'ok',
    pooler: 'ok',
    billing: 'ok',
  })
})

test('the deploy check fails a function that runs as postgres', async () => {
  const sim = startOwnSimulator()
  const fn = await startFunctions({ upstream: sim.baseUrl, dbUrl: DB_URL })
  try {
    const r = await deployCheck(fn.url, FUNCTION_DB_URL)
    assert.equal(r.code, 1, r.text)
    assert.deepEqual(r.lines, {
      health: 'FAIL',
      role: 'FAIL',
      cron: 'ok',
      pooler: 'FAIL',
      billing: 'FAIL',
    }, r.text)
    assert.match(r.text, /postgres: a superuser/)
    assert.match(r.text, /logs in as gateway_api, but the function reports postgres/)
  } finally {
    await fn.stop()
    await sim.close()
  }
})

test('the deploy check tells a direct connection from the transaction pooler', async () => {
  const direct = Object.assign(new URL(FUNCTION_DB_URL), { port: new URL(DB_URL).port }).href
  const r = await deployCheck(GATEWAY_URL, direct)
  assert.equal(r.code, 1, r.text)
  assert.equal(r.lines.pooler, 'FAIL')
  assert.match(r.text, /not the transaction pooler/)
})
