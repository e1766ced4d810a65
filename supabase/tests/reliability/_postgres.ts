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

export interface Restart {
  /** From the command's start to pg_ctl's return (the server accepts connections again). */
  ms: number
  startedAt: number
  endedAt: number
}

/** `pg_ctl -D .local/pg -w -t 30 restart -m fast`, as the postgres user. */
export async function restartPostgres(): Promise<Restart> {
  const lock = await Deno.open(LOCK, { create: true, write: true })
  await lock.lock(true)
  try {
    const pgCtl = [
      `${PG_BIN}/pg_ctl`,
      ...['-D', PGDATA, '-w', '-t', '30', 'restart', '-m', 'fast', '-l', `${PGDATA}/server.log`],
    ]
    // Postgres refuses to run as root: as root, become postgres; else we must be the owner already.
    const [cmd, ...args] = Deno.uid() === 0 ? ['runuser', '-u', 'postgres', '--', ...pgCtl] : pgCtl
    const startedAt = performance.now()
    const out = await new Deno.Command(cmd, { args, stdout: 'piped', stderr: 'piped' }).output()
    const endedAt = performance.now()
    if (!out.success) {
      const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout)
      throw new Error(`pg_ctl restart failed: ${text}`)
    }
    return { ms: Math.round(endedAt - startedAt), startedAt, endedAt }
  } finally {
    await lock.unlock()
    lock.close()
  }
}
