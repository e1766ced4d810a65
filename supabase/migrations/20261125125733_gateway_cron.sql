-- gateway_cron: owns the housekeeping that runs without a request: voiding stale holds (recorded, never
-- silent), deleting past rate windows and expired idempotency keys, and their pg_cron schedules.
-- Jobs are named, so re-running this file (or cron.schedule with the same name) replaces them.
-- Also the final privilege sweep of the schema (see gateway_setup).

-- Voids every hold open longer than setting hold_timeout_seconds (default 900 s): the credits go back
-- to available, nothing is charged, and each hold becomes a usage record with status 'expired' and
-- settled_by 'sweeper'. The gateway settles or voids every hold it opens (settling from OpenRouter's
-- /generation stats after a disconnect), so an expired hold means the gateway lost track of a
-- request; it shows in admin_monitor's expired_holds_today. A settle after expiry says already_settled.
create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    delete from gateway.holds h
     using gateway.system_settings s
     where s.id and h.created_at <= p_now - make_interval(secs => s.hold_timeout_seconds)
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           'hold timed out: released without charge', x.created_at, p_now
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;
revoke execute on function gateway.expire_stale_holds(timestamptz) from public;

-- Deletes windows that have ended (a day window lives until its day ends).
create or replace function gateway.purge_rate_windows(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from gateway.rate_windows w
   where w.window_start + case w.granularity
                            when 'minute' then interval '1 minute'
                            when 'hour' then interval '1 hour'
                            else interval '1 day'
                          end <= p_now;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
revoke execute on function gateway.purge_rate_windows(timestamptz) from public;

select cron.schedule(
  'gateway-expire-stale-holds', '* * * * *', $$select gateway.expire_stale_holds()$$
);
select cron.schedule(
  'gateway-purge-rate-windows', '*/5 * * * *', $$select gateway.purge_rate_windows()$$
);
select cron.schedule(
  'gateway-purge-idempotency-keys', '17 * * * *', $$select gateway.purge_idempotency_keys()$$
);

-- Privilege sweep: nothing in the schema is executable or readable by public, anon or authenticated,
-- whatever a function's own migration did. (gateway_api's grants are per function and stay.)
revoke execute on all functions in schema gateway from public;
revoke all on all tables in schema gateway from public;
do $$
begin
  if exists (select from pg_roles where rolname = 'anon') then
    execute 'revoke execute on all functions in schema gateway from anon, authenticated';
    execute 'revoke all on all tables in schema gateway from anon, authenticated';
    execute 'revoke all on all sequences in schema gateway from anon, authenticated';
  end if;
  if exists (select from pg_roles where rolname = 'service_role') then
    -- The operator views call monitor_at with the caller's function privileges.
    execute 'grant execute on function gateway.monitor_at(timestamptz) to service_role';
    execute $g$grant execute on function gateway.expire_stale_holds(timestamptz),
      gateway.purge_rate_windows(timestamptz), gateway.purge_idempotency_keys(timestamptz)
      to service_role$g$;
  end if;
end
$$;

-- RLS is on for every table and nobody but the definer functions (run as the owner, which RLS does
-- not apply to) touches them. An explicit permissive `using (false)` policy per table says so for the
-- Data API roles — instead of leaving "RLS on, no policy" to look like an oversight — while a later
-- permissive policy (e.g. a link to auth.users) can still grant access (permissive policies are ORed).
do $$
declare
  t record;
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    return;
  end if;
  for t in
    select c.relname from pg_class c
     where c.relnamespace = 'gateway'::regnamespace and c.relkind = 'r'
  loop
    execute format('alter table gateway.%I enable row level security', t.relname);
    execute format(
      'create policy no_api_access on gateway.%I for all to anon, authenticated '
      'using (false) with check (false)', t.relname);
  end loop;
end
$$;
