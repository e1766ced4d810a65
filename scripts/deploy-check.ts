// Checks a deployed gateway end to end: the function, its database role, the cron jobs, the pooler
// it goes through, and one tiny completion billed exactly. Anyone with the project's URLs can run
// it; the suite runs it against the local stack.
//
//   deno run -A scripts/deploy-check.ts \
//     --gateway https://<ref>.supabase.co/functions/v1/gateway \
//     --db-url 'postgresql://postgres.<ref>:<db password>@<pooler host>:5432/postgres' \
//     --function-db-url "$GATEWAY_DB_URL" [--model openai/gpt-4o-mini] [--max-tokens 5]
//
// (or GATEWAY_URL, DATABASE_URL, GATEWAY_DB_URL in the environment). --db-url is an operator's
// connection (postgres); --function-db-url the one the function was given (GATEWAY_DB_URL: the
// transaction pooler as gateway_api).
//
// 1. health        GET /health answers 200 with the database ok.
// 2. role          the role the function reports is not a superuser, not the owner of schema
//                  gateway (nor a member of it), can log in, and has no privilege on any table.
// 3. cron          every pg_cron job the migrations schedule exists and is active.
// 4. pooler        --function-db-url logs in as that role, and two clients share a server
//                  connection (only a transaction-mode pooler does that).
// 5. billing       a throwaway account with a few credits makes one tiny completion: the charge
//                  recorded is SQL's own price of the tokens the response reported, the response
//                  says the same, and balance = credits − charge with nothing held. The account is
//                  then emptied and erased (its ledger stays, as every ledger does).
//
// Prints one line per check; exit status 1 if any fails. The completion goes to whatever upstream
// the gateway uses: on hosted Supabase that is OpenRouter, at the price of a few tokens.

import postgres from 'postgres'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    gateway: { type: 'string', default: Deno.env.get('GATEWAY_URL') },
    'db-url': { type: 'string', default: Deno.env.get('DATABASE_URL') },
    'function-db-url': { type: 'string', default: Deno.env.get('GATEWAY_DB_URL') },
    model: { type: 'string', default: 'openai/gpt-4o-mini' },
    'max-tokens': { type: 'string', default: '5' },
    credits: { type: 'string', default: '2000' },
  },
})

function usage(problem: string): never {
  console.error(
    `deploy-check: ${problem}\n` +
      'usage: deno run -A scripts/deploy-check.ts --gateway URL --db-url URL --function-db-url URL',
  )
  Deno.exit(2)
}
const gateway = (args.gateway ?? usage('--gateway (or GATEWAY_URL) is required')).replace(
  /\/+$/,
  '',
)
const dbUrl = args['db-url'] ?? usage('--db-url (or DATABASE_URL) is required')
const functionDbUrl = args['function-db-url']

const db = postgres(dbUrl, { max: 2, prepare: false, onnotice: () => {}, connect_timeout: 10 })
let failed = 0

function report(ok: boolean | null, name: string, detail: string): void {
  if (ok === false) failed++
  const mark = ok === null ? 'skip' : ok ? 'ok  ' : 'FAIL'
  console.log(`${mark} ${name.padEnd(8)} ${detail}`)
}

async function check(name: string, fn: () => Promise<[boolean | null, string]>): Promise<void> {
  try {
    const [ok, detail] = await fn()
    report(ok, name, detail)
  } catch (err) {
    report(false, name, err instanceof Error ? err.message : String(err))
  }
}

const ROOT = new URL('../', import.meta.url)

/** The pg_cron job names the migrations schedule (`cron.schedule('name', …)`). */
async function expectedJobs(): Promise<Set<string>> {
  const names = new Set<string>()
  for (const dir of ['supabase/migrations', 'supabase/schemas']) {
    const path = new URL(`${dir}/`, ROOT)
    const entries = await Array.fromAsync(Deno.readDir(path)).catch(() => [])
    for (const e of entries) {
      if (!e.name.endsWith('.sql')) continue
      const text = await Deno.readTextFile(new URL(e.name, path))
      for (const m of text.matchAll(/cron\.schedule\(\s*'([^']+)'/g)) names.add(m[1])
      for (const m of text.matchAll(/cron\.unschedule\(\s*'([^']+)'/g)) names.delete(m[1])
    }
  }
  return names
}

let role: string | null = null

await check('health', async () => {
  const res = await fetch(`${gateway}/health`, { signal: AbortSignal.timeout(20_000) })
  const body = await res.json().catch(() => null)
  role = body?.database_role ?? null
  if (res.status !== 200) {
    return [false, `HTTP ${res.status}: ${body?.reason ?? JSON.stringify(body)}`]
  }
  const upstream = body.upstream
    ? `${body.upstream.base_url}${body.upstream.simulated ? ' (simulated)' : ''}`
    : 'unknown'
  return [
    body.database === 'ok',
    `status ${body.status}, database ${body.database}, upstream ${upstream}`,
  ]
})

await check('role', async () => {
  if (!role) return [false, 'the function did not report its database role (/health)']
  const [r] = await db`
    select r.rolname, r.rolsuper, r.rolcanlogin, r.rolbypassrls,
           coalesce(pg_has_role(r.oid, n.nspowner, 'member'), false) as owner,
           (select count(*)::int from pg_class c
             where c.relnamespace = n.oid and c.relkind in ('r', 'v', 'm', 'p')
               and has_table_privilege(r.oid, c.oid, 'select, insert, update, delete')) as tables
      from pg_roles r left join pg_namespace n on n.nspname = 'gateway'
     where r.rolname = ${role}`
  if (!r) return [false, `the role ${role} does not exist in this database`]
  const problems = [
    r.rolsuper && 'a superuser',
    r.owner && 'the owner of schema gateway (or a member of its owner)',
    r.rolbypassrls && 'bypasses RLS',
    r.tables > 0 && `has privileges on ${r.tables} tables`,
    !r.rolcanlogin && 'cannot log in',
  ].filter(Boolean)
  return problems.length
    ? [false, `${role}: ${problems.join(', ')}`]
    : [true, `${role}: not a superuser, owns nothing, no table privilege`]
})

await check('cron', async () => {
  const want = await expectedJobs()
  const rows = await db`select jobname, active from cron.job where jobname like 'gateway-%'`
  const have = new Map(rows.map((r) => [r.jobname as string, r.active as boolean]))
  const missing = [...want].filter((j) => !have.has(j))
  const inactive = [...want].filter((j) => have.get(j) === false)
  const [failing] = await db`
    select count(*)::int as n from cron.job_run_details d join cron.job j using (jobid)
     where j.jobname like 'gateway-%' and d.status = 'failed'
       and d.start_time > now() - interval '1 hour'`
  const ok = missing.length === 0 && inactive.length === 0
  return [
    ok,
    ok
      ? `${want.size} jobs scheduled and active (${[...want].join(', ')})` +
        (failing.n ? `; ${failing.n} failed runs in the last hour` : '')
      : `missing: ${missing.join(', ') || 'none'}; inactive: ${inactive.join(', ') || 'none'}`,
  ]
})

await check('pooler', async () => {
  if (!functionDbUrl) return [null, 'no --function-db-url (GATEWAY_DB_URL): not checked']
  const opts = { max: 1, prepare: false, fetch_types: false, onnotice: () => {}, idle_timeout: 2 }
  const a = postgres(functionDbUrl, opts)
  const b = postgres(functionDbUrl, opts)
  try {
    const [me] = await a`select current_user::text as u, pg_backend_pid() as pid`
    if (role && me.u !== role) {
      return [false, `it logs in as ${me.u}, but the function reports ${role}`]
    }
    // Client a stays connected and idle. A direct connection or a session pooler gives client b a
    // server process of its own; a transaction pooler hands it a's, released after its statement.
    for (let i = 0; i < 50; i++) {
      const [other] = await b`select pg_backend_pid() as pid`
      if (other.pid === me.pid) {
        return [true, `${me.u}, transaction mode (two clients shared server process ${me.pid})`]
      }
    }
    return [
      false,
      `${me.u}, but no server connection was shared between two clients in 50 tries: ` +
      'a direct connection or a session-mode pooler, not the transaction pooler (port 6543)',
    ]
  } finally {
    await Promise.all([a.end(), b.end()])
  }
})

await check('billing', async () => {
  const credits = Number(args.credits)
  const email = `deploy-check-${crypto.randomUUID().slice(0, 12)}@example.com`
  const [reg] = await db`select gateway.register(${email}, null, 'live', null) as r`
  const { user_id: userId, api_key: key, credits: signup } = reg.r as {
    user_id: number
    api_key: string
    credits: number
  }
  try {
    if (credits !== signup) {
      await db`select * from gateway.add_credits(${userId}, ${credits - signup}, 'deploy check')`
    }
    const res = await fetch(`${gateway}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: args.model,
        max_tokens: Number(args['max-tokens']),
        messages: [{ role: 'user', content: 'Reply with the single word: ok' }],
      }),
      signal: AbortSignal.timeout(120_000),
    })
    const body = await res.json().catch(() => null)
    if (res.status !== 200) return [false, `HTTP ${res.status}: ${JSON.stringify(body?.error)}`]
    const usage = body.usage as { prompt_tokens: number; completion_tokens: number }
    const reported = body.gateway_usage?.credits_charged as number
    let record: Record<string, unknown> | undefined
    for (let i = 0; i < 300 && !record; i++) {
      ;[record] = await db`
        select u.prompt_tokens, u.completion_tokens, u.credits_charged::int, u.status,
               (gateway.charge(u.price, u.usd_per_credit, u.prompt_tokens, u.completion_tokens,
                               u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens,
                               u.web_search_requests, u.images, u.upstream_cost)).credits::int
                 as price
          from gateway.usage_records u
         where u.account_id = ${userId}`
      if (!record) await new Promise((r) => setTimeout(r, 100))
    }
    if (!record) return [false, 'the request was never settled (no usage record after 30 s)']
    const [b] = await db`
      select balance::int, held::int,
             (select count(*)::int from gateway.ledger_discrepancies() d
               where d.account_id = ${userId}) as discrepancies
        from gateway.credit_balances where account_id = ${userId}`
    const charged = record.credits_charged as number
    const problems = [
      record.status !== 'success' && `status ${record.status}`,
      record.prompt_tokens !== usage.prompt_tokens && 'prompt tokens differ from the response',
      record.completion_tokens !== usage.completion_tokens &&
      'completion tokens differ from the response',
      charged !== record.price && `charged ${charged}, SQL's price is ${record.price}`,
      charged !== reported && `charged ${charged}, the response reported ${reported}`,
      b.balance !== credits - charged && `balance ${b.balance}, expected ${credits - charged}`,
      b.held !== 0 && `${b.held} credits still held`,
      b.discrepancies > 0 && 'ledger and balance disagree',
    ].filter(Boolean)
    return problems.length ? [false, problems.join('; ')] : [
      true,
      `${args.model}: ${usage.prompt_tokens} + ${usage.completion_tokens} tokens, charged ` +
      `${charged} credits = SQL's price = reported; balance ${credits} → ${b.balance}, none held`,
    ]
  } finally {
    // The throwaway account leaves nothing to spend: emptied, then erased (the ledger stays).
    const [left] = await db`select balance::int from gateway.credit_balances
      where account_id = ${userId}`
    if (left?.balance > 0) {
      await db`select * from gateway.add_credits(${userId}, ${-left.balance}, 'deploy check done')`
    }
    await db`select gateway.erase_account(${userId})`
  }
})

await db.end()
console.log(failed ? `deploy check: ${failed} failed` : 'deploy check: all passed')
Deno.exit(failed ? 1 : 0)
