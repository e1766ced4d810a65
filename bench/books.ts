// The benchmark's side of the database: accounts for the run, pg_stat_statements, and the books
// check after each metered cell. It connects as `postgres` (the operator), so none of its own
// statements are counted with the gateway's (those run as `gateway_api`).
//
// The books of a cell, all of which must hold or the run fails:
//   - no hold of the run's accounts is left open;
//   - admitted requests (the per-key request counter begin_request increments) = usage records;
//   - settled usage records = the simulator's generations, matched one to one by generation id with
//     the same token counts (so every generation is billed exactly once, for what it produced);
//   - each charge is the tokens priced as admitted, and the ledger's charges equal the records';
//   - every account's ledger sums to its balance, with nothing held.

import postgres from 'postgres'
import { MODEL } from './scenarios.ts'

export interface Statement {
  query: string
  calls: number
  mean_ms: number
  total_ms: number
}

export interface Books {
  ok: boolean
  problems: string[]
  admitted: number
  usage_records: number
  voided: number
  sim_generations: number
  open_holds: number
  credits_charged: number
}

export interface Wal {
  bytes: number
  syncs: number
  records: number
}

export interface Mark {
  holdId: number
  requestsUsed: number
}

interface SimStats {
  requests: { chat: number }
  chat_by_status: Record<string, number>
  generations_count: number
  generations_dropped: number
  generations?: { id: string; prompt_tokens: number; completion_tokens: number }[]
}

const BIG = 2_000_000_000 // limits are int4 in SQL: "unlimited" without overflowing

/**
 * Registers an account the way users do (one key), then makes it a benchmark account: a balance
 * that cannot run out and rate limits that cannot bite. No client address: registrations are rate
 * limited per address, operator ones are not. Works inside a transaction too.
 */
export async function benchAccount(
  sql: postgres.Sql | postgres.TransactionSql,
  name: string,
): Promise<{ userId: number; apiKey: string }> {
  const [{ r }] = await sql<{ r: { user_id: number; api_key: string } }[]>`
    select gateway.register(${`${name}@bench.invalid`}, ${name}, 'live', null, now()) as r`
  await sql`select gateway.add_credits(${r.user_id}, 1000000000000, 'benchmark')`
  const limits = Object.fromEntries(
    ['requests', 'tokens'].flatMap((k) =>
      ['minute', 'hour', 'day'].map((w) => [`${k}_per_${w}`, BIG])
    ),
  )
  await sql`select gateway.set_rate_limits(${r.user_id}, ${sql.json(limits)})`
  return { userId: Number(r.user_id), apiKey: r.api_key }
}

export class BookKeeper {
  /** The run's accounts: the books are checked on these only. */
  readonly accountIds: number[] = []
  private counter: string | null | undefined

  private constructor(private readonly sql: postgres.Sql) {}

  static async connect(url: string): Promise<BookKeeper> {
    const sql = postgres(url, {
      max: 2,
      onnotice: () => {},
      connection: { application_name: 'bench' },
    })
    await sql`select 1`
    return new BookKeeper(sql)
  }

  end(): Promise<void> {
    return this.sql.end({ timeout: 5 })
  }

  /** Null when the SQL API the gateway scenarios need is installed; else what is missing. */
  async unavailable(): Promise<string | null> {
    const needed = ['register', 'add_credits', 'set_rate_limits', 'begin_request', 'settle_request']
    const rows = await this.sql<{ proname: string }[]>`
      select p.proname from pg_proc p where p.pronamespace = 'gateway'::regnamespace::oid
        and p.proname = any(${needed})`.catch(() => [])
    const missing = needed.filter((n) => !rows.some((r) => r.proname === n))
    return missing.length
      ? `SQL API not installed yet (missing gateway.${missing.join(', gateway.')})`
      : null
  }

  /** Creates `n` benchmark accounts (see benchAccount) and returns their plaintext keys. */
  async createAccounts(prefix: string, n: number): Promise<string[]> {
    const keys: string[] = []
    for (let i = 0; i < n; i++) {
      const { userId, apiKey } = await benchAccount(this.sql, `${prefix}-${i}`)
      this.accountIds.push(userId)
      keys.push(apiKey)
    }
    return keys
  }

  /** Where the books of a cell start. */
  async mark(): Promise<Mark> {
    const [m] = await this.sql<{ hold_id: string }[]>`
      select greatest((select max(id) from gateway.holds),
                      (select max(hold_id) from gateway.usage_records), 0) as hold_id`
    return { holdId: Number(m.hold_id), requestsUsed: await this.admitted() }
  }

  /**
   * Requests admitted so far on the run's keys, from the counter begin_request increments for a
   * key's request cap (it moved from api_keys to key_counters once; whichever exists is read).
   */
  async admitted(): Promise<number> {
    if (this.counter === undefined) {
      const rows = await this.sql<{ table_name: string }[]>`
        select table_name from information_schema.columns
         where table_schema = 'gateway' and column_name = 'requests_used'
           and table_name in ('key_counters', 'api_keys')
         order by table_name = 'key_counters' desc`
      this.counter = rows[0]?.table_name ?? null
      if (!this.counter) throw new Error('no per-key request counter (requests_used) found')
    }
    const [r] = this.counter === 'key_counters'
      ? await this.sql`
          select coalesce(sum(c.requests_used), 0) as n from gateway.key_counters c
            join gateway.api_keys k on k.id = c.key_id where k.account_id = any(${this.accountIds})`
      : await this.sql`
          select coalesce(sum(requests_used), 0) as n from gateway.api_keys
           where account_id = any(${this.accountIds})`
    return Number(r.n)
  }

  /**
   * Waits for what the load left in flight to finish: settles run after the response (and after a
   * disconnect, only once OpenRouter's /generation stats appear). Done when no hold is open and
   * nothing was admitted or closed for half a second.
   */
  async drain(mark: Mark, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let last = ''
    let stableSince = Date.now()
    while (Date.now() < deadline) {
      const [s] = await this.sql<{ open: string; closed: string }[]>`
        select (select count(*) from gateway.holds where account_id = any(${this.accountIds})) as open,
               (select count(*) from gateway.usage_records
                 where hold_id > ${mark.holdId} and account_id = any(${this.accountIds})) as closed`
      const now = `${s.open}/${s.closed}/${await this.admitted()}`
      if (now !== last) {
        last = now
        stableSince = Date.now()
      } else if (s.open === '0' && Date.now() - stableSince >= 500) {
        return
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  async check(mark: Mark, sim: SimStats): Promise<Books> {
    const ids = this.accountIds
    const problems: string[] = []
    const [u] = await this.sql<Record<string, string>[]>`
      select count(*) as records,
             count(*) filter (where settled_by = 'void') as voided,
             coalesce(sum(credits_charged), 0) as charged,
             (select count(*) from gateway.holds where account_id = any(${ids})) as open_holds,
             (select coalesce(-sum(amount), 0) from gateway.ledger
               where kind = 'charge' and hold_id > ${mark.holdId} and account_id = any(${ids})) as ledger_charged,
             count(*) filter (where settled_by <> 'void' and credits_charged <> ceil(
               prompt_tokens * coalesce(mp.prompt_multiplier, 1)
               + completion_tokens * coalesce(mp.completion_multiplier, 1))) as mispriced
        from gateway.usage_records
        left join gateway.model_pricing mp on mp.model = ${MODEL}
       where hold_id > ${mark.holdId} and account_id = any(${ids})`
    const n = (k: string) => Number(u[k])
    const books: Books = {
      ok: false,
      problems,
      admitted: (await this.admitted()) - mark.requestsUsed,
      usage_records: n('records'),
      voided: n('voided'),
      sim_generations: sim.generations_count,
      open_holds: n('open_holds'),
      credits_charged: n('charged'),
    }
    if (books.open_holds) problems.push(`${books.open_holds} holds left open`)
    if (books.admitted !== books.usage_records) {
      problems.push(`admitted ${books.admitted} ≠ usage records ${books.usage_records}`)
    }
    if (books.usage_records - books.voided !== sim.generations_count) {
      problems.push(
        `settled ${
          books.usage_records - books.voided
        } ≠ simulator generations ${sim.generations_count}`,
      )
    }
    if (n('mispriced')) problems.push(`${n('mispriced')} charges ≠ tokens × price`)
    if (n('ledger_charged') !== books.credits_charged) {
      problems.push(
        `ledger charges ${n('ledger_charged')} ≠ usage charges ${books.credits_charged}`,
      )
    }
    const bad = Object.keys(sim.chat_by_status).filter((s) => s !== '200')
    if (bad.length) problems.push(`simulator answered ${JSON.stringify(sim.chat_by_status)}`)

    // One usage record per generation, same tokens: joined on the generation id.
    if (sim.generations_dropped) {
      problems.push(
        `simulator dropped ${sim.generations_dropped} generations: cannot match them all`,
      )
    }
    const [g] = await this.sql<Record<string, string>[]>`
      with s as (
        select * from jsonb_to_recordset(${this.sql.json(sim.generations ?? [])}::jsonb)
          as s (id text, prompt_tokens int, completion_tokens int)
      ), r as (
        select generation_id, prompt_tokens, completion_tokens from gateway.usage_records
         where hold_id > ${mark.holdId} and account_id = any(${ids}) and settled_by <> 'void'
      )
      select count(*) filter (where r.generation_id is null) as unbilled,
             count(*) filter (where s.id is null) as unmatched,
             count(*) filter (where s.id is not null and r.generation_id is not null
               and (s.prompt_tokens, s.completion_tokens) <> (r.prompt_tokens, r.completion_tokens)) as wrong
        from s full join r on r.generation_id = s.id`
    if (Number(g.unbilled)) problems.push(`${g.unbilled} generations without a usage record`)
    if (Number(g.unmatched)) problems.push(`${g.unmatched} usage records match no generation`)
    if (Number(g.wrong)) {
      problems.push(`${g.wrong} usage records with other token counts than generated`)
    }

    const [l] = await this.sql<{ off: string; held: string }[]>`
      select count(*) filter (where b.balance <> coalesce(l.total, 0)) as off,
             count(*) filter (where b.held <> 0) as held
        from gateway.credit_balances b
        left join (select account_id, sum(amount) as total from gateway.ledger
                    where account_id = any(${ids}) group by account_id) l using (account_id)
       where b.account_id = any(${ids})`
    if (Number(l.off)) problems.push(`${l.off} accounts whose ledger does not sum to their balance`)
    if (Number(l.held)) problems.push(`${l.held} accounts with credits still held`)
    books.ok = problems.length === 0
    return books
  }

  async resetStatements(): Promise<void> {
    await this.sql`select extensions.pg_stat_statements_reset()`
  }

  /** Top-level statements the gateway (role gateway_api) ran since the reset, and the top few. */
  async statements(): Promise<{ calls: number; top: Statement[] }> {
    const rows = await this.sql<{ query: string; calls: string; mean: number; total: number }[]>`
      select query, calls, mean_exec_time as mean, total_exec_time as total
        from extensions.pg_stat_statements
       where userid = 'gateway_api'::regrole
         and dbid = (select oid from pg_database where datname = current_database())
       order by total_exec_time desc`
    return {
      calls: rows.reduce((s, r) => s + Number(r.calls), 0),
      top: rows.slice(0, 4).map((r) => ({
        query: r.query.replace(/\s+/g, ' ').slice(0, 100),
        calls: Number(r.calls),
        mean_ms: Math.round(r.mean * 1000) / 1000,
        total_ms: Math.round(r.total),
      })),
    }
  }

  /**
   * The server's WAL counters (pg_stat_wal; the whole server, so others' work adds noise): bytes
   * and flushes are what a hosted disk's throughput and IOPS budgets are spent on.
   */
  async wal(): Promise<Wal> {
    const [w] = await this.sql<{ bytes: string; syncs: string; records: string }[]>`
      select wal_bytes as bytes, wal_sync as syncs, wal_records as records from pg_stat_wal`
    return { bytes: Number(w.bytes), syncs: Number(w.syncs), records: Number(w.records) }
  }

  /** The backends serving the connections from these client ports (see procs.connectionPorts). */
  async backendPids(clientPorts: number[]): Promise<number[]> {
    if (!clientPorts.length) return []
    const rows = await this.sql<{ pid: number }[]>`
      select pid from pg_stat_activity
       where client_addr = '127.0.0.1' and client_port = any(${clientPorts})`
    return rows.map((r) => r.pid)
  }
}
