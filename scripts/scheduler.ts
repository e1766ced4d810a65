// The local stack's scheduler: what pg_cron (and pg_cron + pg_net) does on hosted Supabase for the
// jobs this machine's pg_cron cannot run (it is 1.4: no schedules in seconds, no pg_net). It runs
// as long as the stack (scripts/stack.sh starts and stops it):
//
//   every SCHEDULER_RELEASE_SECONDS (2)     select gateway.expire_stale_holds(); then
//                                           select gateway.release_reserved_admissions()
//                                           (the lapsed holds and the reserved admissions of a
//                                           vanished worker, within seconds)
//   every SCHEDULER_RECONCILE_SECONDS (5)   POST <gateway>/internal/reconcile with GATEWAY_CRON_SECRET
//                                           (holds whose worker died, settled from /generation)
//
// On hosted both are cron jobs (README, "Scheduled jobs"). One line per run that did something.

import postgres from 'postgres'

const env = (name: string, fallback?: string) => {
  const v = Deno.env.get(name)
  if (v) return v
  if (fallback === undefined) throw new Error(`scheduler: ${name} is not set`)
  return fallback
}
const dbUrl = env('SCHEDULER_DB_URL')
const gatewayUrl = env('SCHEDULER_GATEWAY_URL')
const secret = env('GATEWAY_CRON_SECRET')
const releaseMs = Number(env('SCHEDULER_RELEASE_SECONDS', '2')) * 1000
const reconcileMs = Number(env('SCHEDULER_RECONCILE_SECONDS', '5')) * 1000

const sql = postgres(dbUrl, { max: 1, onnotice: () => {}, connect_timeout: 5 })

function log(msg: string, fields: Record<string, unknown> = {}, level = 'info') {
  console.log(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }))
}

async function release() {
  try {
    // Two transactions, as pg_cron runs them (two jobs): in one, the second function's locks were
    // taken while the first's were held, out of the account order every other caller keeps.
    const [{ expired }] = await sql`select gateway.expire_stale_holds() as expired`
    if (expired > 0) log('scheduler: expired lapsed holds', { expired })
    const [{ n }] = await sql`select gateway.release_reserved_admissions() as n`
    if (n > 0) log('scheduler: released reserved admissions', { released: n })
  } catch (err) {
    log('scheduler: release failed', { error: String((err as Error)?.message) }, 'warn')
  }
}

async function reconcile() {
  try {
    const res = await fetch(`${gatewayUrl}/internal/reconcile`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: '{}',
      signal: AbortSignal.timeout(60_000),
    })
    const body = await res.json().catch(() => null)
    if (!res.ok) log('scheduler: reconcile answered', { status: res.status }, 'warn')
    else if (body?.candidates > 0) log('scheduler: reconciled', body)
  } catch (err) {
    log('scheduler: reconcile failed', { error: String((err as Error)?.name) }, 'warn')
  }
}

/** `task` every `ms`, never two at once. */
function every(ms: number, task: () => Promise<void>) {
  const loop = async () => {
    await task()
    setTimeout(loop, ms)
  }
  setTimeout(loop, ms)
}

every(releaseMs, release)
every(reconcileMs, reconcile)
log('scheduler: running', {
  release_seconds: releaseMs / 1000,
  reconcile_seconds: reconcileMs / 1000,
})
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  Deno.addSignalListener(signal, async () => {
    await sql.end({ timeout: 2 })
    Deno.exit(0)
  })
}
