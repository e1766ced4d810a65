// Restarting the shared local Postgres (`pg_ctl restart -m fast`), for the test that proves the
// gateway answers 503 while the database is gone and recovers by itself. Only one restart runs at a
// time on this machine (a lock file), and pg_ctl's own wait is bounded.

const ROOT = new URL('../../../', import.meta.url).pathname
const PG_BIN = Deno.env.get('PG_BIN') ?? '/usr/lib/postgresql/15/bin'
const PGDATA = Deno.env.get('PGDATA') ?? `${ROOT}.local/pg`
const LOCK = '/tmp/gateway-reliability-pg-restart.lock'

/** Why this machine's Postgres cannot be restarted by the test, or null when it can. */
export async function cannotRestart(dbUrl: string): Promise<string | null> {
  if (!/@(127\.0\.0\.1|localhost):54322\//.test(dbUrl)) return `${dbUrl} is not the local stack`
  const running = await Deno.stat(`${PGDATA}/postmaster.pid`).then(() => true, () => false)
  if (!running) return `no running cluster in ${PGDATA}`
  return null
}

export interface Outage {
  /** From the stop command's start to pg_ctl start's return (the server accepts connections again). */
  ms: number
  startedAt: number
  endedAt: number
}

function pgCtl(args: string[]): Promise<Deno.CommandOutput> {
  const argv = [`${PG_BIN}/pg_ctl`, '-D', PGDATA, '-w', '-t', '30', ...args]
  // Postgres refuses to run as root: as root, become postgres; else we must be the owner already.
  const [cmd, ...rest] = Deno.uid() === 0 ? ['runuser', '-u', 'postgres', '--', ...argv] : argv
  return new Deno.Command(cmd, { args: rest, stdout: 'piped', stderr: 'piped' }).output()
}

async function mustSucceed(what: string, out: Promise<Deno.CommandOutput>) {
  const done = await out
  if (done.success) return
  const text = new TextDecoder().decode(done.stderr) + new TextDecoder().decode(done.stdout)
  throw new Error(`${what} failed: ${text}`)
}

/**
 * An outage: `pg_ctl stop -m fast`, down until `seen()` says the outage was observed (checked every
 * 25 ms, at least `minMs`, at most `maxMs`), then `pg_ctl start`. A bare `pg_ctl restart` can be
 * over in a few hundred ms on a fast machine, quicker than any client notices: the test would then
 * prove nothing about the outage, and fail saying so.
 */
export async function postgresOutage(
  seen: () => boolean,
  { minMs = 1_000, maxMs = 10_000 } = {},
): Promise<Outage> {
  const lock = await Deno.open(LOCK, { create: true, write: true })
  await lock.lock(true)
  try {
    const startedAt = performance.now()
    await mustSucceed('pg_ctl stop', pgCtl(['stop', '-m', 'fast']))
    try {
      while (true) {
        const downFor = performance.now() - startedAt
        if ((downFor >= minMs && seen()) || downFor >= maxMs) break
        await new Promise((r) => setTimeout(r, 25))
      }
    } finally {
      await mustSucceed('pg_ctl start', pgCtl(['start', '-l', `${PGDATA}/server.log`]))
    }
    const endedAt = performance.now()
    return { ms: Math.round(endedAt - startedAt), startedAt, endedAt }
  } finally {
    await lock.unlock()
    lock.close()
  }
}
