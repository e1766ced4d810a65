// Request bodies are read within shares per client network (issue 11, resource bounds): one
// unauthenticated client that opens many sockets, each announcing a small body and sending a few
// bytes of it, must not make everyone else's requests 503. The attack, as found: 130 sockets to
// POST /auth/register, each announcing 1000 bytes and sending 9, held all 128 body readers of the
// worker for the 10 s deadline; a paying client's chat completion got 503 server_busy meanwhile.
//
// The attacker connects from 127.0.9.x, the paying client from 127.0.0.1: on Linux all of 127/8 is
// local (no address to add), and the two are different /24s. The stand-in (scripts/serve-functions.ts,
// like Supabase's edge) appends the connection's address to X-Forwarded-For, which is the client
// address the function goes by.

import assert from 'node:assert/strict'
import net from 'node:net'
import { newAccount } from '../lib/accounts.ts'
import { call, CHAT } from '../lib/http.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { sleep, waitFor } from '../lib/stack.ts'

const opts = { sanitizeOps: false, sanitizeResources: false }

const SOCKETS = 130

interface Stalled {
  /** The status the function answered with, or null (the socket closed without one). */
  status: Promise<number | null>
  close(): void
}

/** A request from `from` announcing `announced` bytes of body, of which it sends 9, then nothing. */
function stalledUpload(port: number, from: string, path: string, announced = 1000): Stalled {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress: from })
  socket.on('error', () => {})
  const status = new Promise<number | null>((resolve) => {
    let head = ''
    socket.on('data', (chunk: Uint8Array) => {
      head += new TextDecoder().decode(chunk)
      const m = /^HTTP\/1\.1 (\d{3})/.exec(head)
      if (m) resolve(Number(m[1]))
    })
    socket.on('close', () => resolve(null))
  })
  socket.on('connect', () => {
    socket.write(
      `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\ncontent-type: application/json\r\n` +
        `content-length: ${announced}\r\n\r\n{"email":"`,
    )
  })
  return { status, close: () => socket.destroy() }
}

/** One whole request from `from` (a 127/8 address), its status and body. */
function requestFrom(
  port: number,
  from: string,
  path: string,
  body: unknown,
  key?: string,
): Promise<{ status: number; text: string }> {
  const payload = new TextEncoder().encode(JSON.stringify(body))
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: from }, () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: close\r\n` +
          (key ? `authorization: Bearer ${key}\r\n` : '') +
          `content-type: application/json\r\ncontent-length: ${payload.length}\r\n\r\n`,
      )
      socket.write(payload)
    })
    let text = ''
    socket.on('data', (chunk: Uint8Array) => text += new TextDecoder().decode(chunk))
    socket.on('error', reject)
    socket.on('close', () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text)
      if (!m) reject(new Error(`no answer: ${JSON.stringify(text.slice(0, 200))}`))
      else resolve({ status: Number(m[1]), text: text.slice(text.indexOf('\r\n\r\n') + 4) })
    })
  })
}

Deno.test(
  `body fairness: ${SOCKETS} stalled uploads from one network leave other networks served`,
  opts,
  async () => {
    const sim = startOwnSimulator()
    const fn = await startFunctions({ upstream: sim.baseUrl, env: { GATEWAY_LOG_REQUESTS: '0' } })
    const port = Number(new URL(fn.url).port)
    const path = '/functions/v1/gateway'
    const stalled: Stalled[] = []
    try {
      const payer = await newAccount(100_000, 'fairness')
      // Warm: the chat route's modules and a pool connection, so only the attack is measured.
      const warm = await call(fn.url, '/v1/chat/completions', { key: payer.key, body: CHAT })
      assert.equal(warm.status, 200, warm.text)

      // The attack, from one /24: each socket from its own address in it.
      for (let i = 0; i < SOCKETS; i++) {
        stalled.push(stalledUpload(port, `127.0.9.${1 + i}`, `${path}/auth/register`))
      }
      // Beyond what the function reads at once from that network (before: from everyone), sockets
      // are refused at once: two answers mean the attack holds every slot it can.
      let answered = 0
      for (const s of stalled) s.status.then((st) => st !== null && answered++)
      await waitFor(
        'the attack to fill what it may',
        () => Promise.resolve(answered >= 2 || undefined),
      )

      // Another address of the same /24 is the same network: its share is spent.
      const neighbour = await requestFrom(port, '127.0.9.250', `${path}/auth/register`, {
        email: 'x@example.com',
      })
      assert.equal(neighbour.status, 503, neighbour.text)
      assert.match(neighbour.text, /server_busy/)

      // A paying client on another network is served meanwhile, over IPv4 from 127.0.0.1 and
      // from 127.0.10.1 (the chat route, and a small API route).
      const paid = await call(fn.url, '/v1/chat/completions', { key: payer.key, body: CHAT })
      assert.equal(paid.status, 200, `chat completion during the attack: ${paid.text}`)
      const other = await requestFrom(
        port,
        '127.0.10.1',
        `${path}/user/api-keys`,
        { key_name: 'during the attack' },
        payer.key,
      )
      assert.equal(other.status, 200, `key creation during the attack: ${other.text}`)

      // Every stalled upload ends: 503 beyond its network's share, 408 at the (short) deadline
      // of an API body. Never a 500.
      const statuses = await Promise.race([
        Promise.all(stalled.map((s) => s.status)),
        sleep(30_000).then(() => null),
      ])
      assert.ok(statuses, 'every stalled upload is answered')
      const counts: Record<string, number> = {}
      for (const s of statuses) counts[String(s)] = (counts[String(s)] ?? 0) + 1
      console.log(`answers to ${SOCKETS} stalled uploads from one /24: ${JSON.stringify(counts)}`)
      assert.deepEqual(Object.keys(counts).sort(), ['408', '503'])
    } finally {
      for (const s of stalled) s.close()
      await fn.stop()
      await sim.close()
    }
  },
)
