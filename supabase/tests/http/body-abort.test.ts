// A client that hangs up in the middle of its request body (an unauthenticated one will do) is a
// client gone, not a fault of the gateway: no 500, no "unhandled error" in the log. Each such
// upload once logged an error line and a 500, so anyone could fill the operator's error log (and
// any alert on 5xx) at the cost of a socket.

import assert from 'node:assert/strict'
import { GATEWAY_URL, sleep, test, waitFor } from '../lib/stack.ts'

const FUNCTIONS_LOG = Deno.env.get('FUNCTIONS_LOG') ??
  new URL('../../../.local/functions.log', import.meta.url).pathname

/** Sends a request announcing `length` bytes of body, some of it, and closes the socket. */
async function hangUpMidBody(path: string, length: number): Promise<void> {
  const url = new URL(`${GATEWAY_URL}${path}`)
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port || 80) })
  const head = `POST ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\n` +
    `content-type: application/json\r\ncontent-length: ${length}\r\n\r\n{"email":"`
  await conn.write(new TextEncoder().encode(head))
  // Long enough for the function to be reading the body when the socket goes.
  await sleep(300)
  conn.close()
}

test('a client hanging up mid-body gets no 500 and writes no error to the log', async () => {
  const exists = await Deno.stat(FUNCTIONS_LOG).then(() => true, () => false)
  if (!exists) return console.warn(`skipped: no function log at ${FUNCTIONS_LOG}`)
  const from = (await Deno.readTextFile(FUNCTIONS_LOG)).length
  const paths = ['/auth/register', '/v1/chat/completions', '/user/api-keys']
  await Promise.all(paths.map((p) => hangUpMidBody(p, 1000)))
  const lines = await waitFor('the log lines of the abandoned uploads', async () => {
    const fresh = (await Deno.readTextFile(FUNCTIONS_LOG)).slice(from).split('\n')
    const done = paths.every((p) =>
      fresh.some((l) => l.includes('"msg":"request"') && l.includes(`"route":"/gateway${p}"`))
    )
    return done ? fresh : undefined
  })
  const mine = lines.filter((l) =>
    l.includes('"msg":"request"') && paths.some((p) => l.includes(`"route":"/gateway${p}"`))
  ).map((l) => JSON.parse(l))
  for (const m of mine) assert.ok(m.status < 500, `${m.route} logged ${m.status}`)
  const errors = lines.filter((l) => l.includes('"level":"error"'))
  assert.deepEqual(errors, [], 'error lines for abandoned uploads')
})
