// Postgres stopped (`pg_ctl stop -m fast`) under load and started again once the outage was seen: while it is down the gateway answers 503
// database_unavailable with Retry-After (never a 500, never a hang), it recovers by itself when Postgres is back (the
// postgres.js pool reconnects; no restart of the function), and no admitted request is lost from the
// books: settles that met the outage retry until they land.
//
// This stops the SHARED local Postgres for a second or so: every other client sees its
// connections dropped once. The load runs on our own functions server and simulator.

import assert from 'node:assert/strict'
import {
  booksLine,
  checkBooks,
  newPool,
  type PoolAccount,
  sweepOpenHolds,
  waitSettled,
} from '../lib/books.ts'
import { startFunctions, startOwnSimulator } from '../lib/procs.ts'
import { DB_URL, GATEWAY_URL, sleep, test } from '../lib/stack.ts'
import { cannotRestart, postgresOutage } from './_postgres.ts'

interface Sample {
  at: number
  status: number
  code?: string
  retryAfter?: string | null
}

/** One chat request (stream or not), its status and error code; never throws. */
async function chatOnce(url: string, key: string, stream: boolean): Promise<Sample> {
  const at = performance.now()
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: `openai/gpt-4o-mini~len-12${stream ? '~delay-15' : ''}`,
        stream,
        max_tokens: 20,
        messages: [{ role: 'user', content: 'still there?' }],
      }),
      signal: AbortSignal.timeout(20_000),
    })
    const text = await res.text()
    const code = res.status === 200 ? undefined : JSON.parse(text).error?.code
    return { at, status: res.status, code, retryAfter: res.headers.get('retry-after') }
  } catch (err) {
    return { at, status: 0, code: (err as Error).name }
  }
}

/** Chat traffic from `workers` clients until `stop` aborts. */
async function traffic(
  url: string,
  pool: PoolAccount[],
  workers: number,
  stop: AbortSignal,
  samples: Sample[],
) {
  await Promise.all(Array.from({ length: workers }, async (_, w) => {
    for (let i = 0; !stop.aborted; i++) {
      const account = pool[(w + i) % pool.length]
      const key = account.keys[i % account.keys.length].key
      samples.push(await chatOnce(url, key, (w + i) % 3 === 0))
    }
  }))
}

async function health(url: string): Promise<number> {
  return await fetch(`${url}/health`, { signal: AbortSignal.timeout(10_000) })
    .then(async (r) => (await r.body?.cancel(), r.status), () => 0)
}

test('Postgres restarted under load: 503 while down, recovers by itself, no admitted request lost', async () => {
  const why = await cannotRestart(DB_URL)
  if (why) return console.warn(`skipped: ${why}`)
  const sim = startOwnSimulator()
  const fn = await startFunctions({
    upstream: sim.baseUrl,
    captureLogs: true,
    env: { GATEWAY_LOG_REQUESTS: '0' },
  })
  try {
    const pool = await newPool(8, 4, 100_000, 'pgrestart')
    const ids = pool.map((a) => a.userId)
    const stop = new AbortController()
    const samples: Sample[] = []
    const load = traffic(fn.url, pool, 16, stop.signal, samples)
    const probes: Sample[] = []
    const prober = (async () => {
      while (!stop.signal.aborted) {
        probes.push({ at: performance.now(), status: await health(fn.url) })
        await sleep(25)
      }
    })()
    await sleep(1_000)
    // Down until a client saw it (a 503 to a chat or to /health), then back.
    const restart = await postgresOutage(() =>
      probes.some((p) => p.status === 503) || samples.some((s) => s.status === 503)
    )
    await sleep(4_000)
    stop.abort()
    await load
    await prober

    const during = samples.filter((s) => s.at >= restart.startedAt && s.at <= restart.endedAt)
    // Recovered within 2.5 s: PgBouncer retries a failed server login after server_login_retry (1
    // s, scripts/stack.sh) and the function's pool reconnects within 1 s (db.ts's backoff).
    const after = samples.filter((s) => s.at > restart.endedAt + 2_500)
    const byStatus: Record<string, number> = {}
    for (const s of samples) {
      const k = `${s.status}${s.code ? ` ${s.code}` : ''}`
      byStatus[k] = (byStatus[k] ?? 0) + 1
    }
    const unhealthy = probes.filter((p) => p.status === 503).length
    console.log(
      `restart: Postgres down and back in ${restart.ms} ms; ${samples.length} chat requests ` +
        `(${during.length} while it ran): ${JSON.stringify(byStatus)}; /health probes ` +
        `${probes.length}, ${unhealthy} answered 503`,
    )
    // Only success, or 503 database_unavailable: never a 500, a hang or a dropped connection.
    // What the function logged about anything but the outage itself, to say why if one was not.
    const why = () =>
      fn.logs().filter((l) => /"level":"error"/.test(l) && !/database unavailable/.test(l))
        .slice(0, 5).join('\n')
    for (const s of samples) {
      assert.ok(
        s.status === 200 || (s.status === 503 && s.code === 'database_unavailable'),
        `unexpected answer during the restart: ${s.status} ${s.code}\n${why()}`,
      )
      if (s.status === 503) assert.equal(s.retryAfter, '1', 'a 503 says when to retry')
    }
    assert.ok(
      samples.some((s) => s.status === 503) || unhealthy > 0,
      'nothing saw the database down',
    )
    // Recovered by itself: everything started 2.5 s after Postgres is back succeeds.
    assert.ok(after.length > 0)
    assert.deepEqual(after.filter((s) => s.status !== 200), [])
    assert.equal(await health(fn.url), 200)

    // The books: every admitted request settled once, to the token of what was generated.
    let open = await waitSettled(ids, 60_000)
    let swept = 0
    if (open) {
      // A begin_request that committed as its connection died is a hold the gateway never saw:
      // the sweeper must close and record it (expired), never leave it silently.
      swept = await sweepOpenHolds(ids)
      open = await waitSettled(ids, 1_000)
    }
    const books = await checkBooks(ids, sim.stats())
    const retried = fn.logs().filter((l) => /(settle|void)_requests?: retrying/.test(l)).length
    console.log(
      `${booksLine(books)}; ${retried} settle/void attempts retried after meeting the outage; ` +
        `${swept} holds closed by the sweeper`,
    )
    assert.equal(open, 0)
    assert.deepEqual(books.problems, [])
    assert.equal(books.usageRecords, books.admitted)
    assert.equal(
      books.admitted,
      samples.filter((s) => s.status === 200).length + (books.byStatus.expired ?? 0),
      'admitted requests = answered ones (+ any the sweeper closed)',
    )
    console.log(`shared gateway /health after the restart: ${await health(GATEWAY_URL)}`)
  } finally {
    await fn.stop()
    await sim.close()
  }
})
