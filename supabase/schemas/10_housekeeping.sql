-- What runs without a request, on pg_cron: voiding stale holds (expire_stale_holds, in
-- 06_settlement.sql), deleting ended rate windows and expired idempotency keys. Jobs are named, so
-- scheduling one again replaces it.

-- Deletes the counters of subjects whose day window has ended (their minute and hour windows have
-- too; the next count starts every window afresh).
create or replace function gateway.purge_rate_windows(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from gateway.rate_counters c
   where c.day_start + interval '1 day' <= p_now;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
revoke execute on function gateway.purge_rate_windows(timestamptz) from public;
grant execute on function gateway.purge_rate_windows(timestamptz) to service_role;

-- Deletes the Idempotency-Key entries past their TTL.
create or replace function gateway.purge_idempotency_keys(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from gateway.idempotency_keys i where i.expires_at <= p_now;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
revoke execute on function gateway.purge_idempotency_keys(timestamptz) from public;
grant execute on function gateway.purge_idempotency_keys(timestamptz) to service_role;

select cron.schedule(
  'gateway-purge-rate-windows', '*/5 * * * *', $$select gateway.purge_rate_windows()$$
);
select cron.schedule(
  'gateway-purge-idempotency-keys', '17 * * * *', $$select gateway.purge_idempotency_keys()$$
);
-- What a vanished worker leaves behind stops holding credits within seconds: holds whose lease
-- lapsed (expire_stale_holds, every 2 s) and reserved admissions it never used nor gave back
-- (every 5 s). pg_cron 1.5+ (hosted Supabase) runs them so; an older pg_cron once a minute, and
-- the local stack's scheduler (scripts/scheduler.ts) every 2 s besides.
select cron.schedule(
  'gateway-expire-stale-holds',
  case when (select string_to_array(split_part(e.extversion, '-', 1), '.')::integer[]
               from pg_catalog.pg_extension e where e.extname = 'pg_cron') >= array[1, 5]
       then '2 seconds' else '* * * * *' end,
  $$select gateway.expire_stale_holds()$$
);
select cron.schedule(
  'gateway-release-reserved-admissions',
  case when (select string_to_array(split_part(e.extversion, '-', 1), '.')::integer[]
               from pg_catalog.pg_extension e where e.extname = 'pg_cron') >= array[1, 5]
       then '5 seconds' else '* * * * *' end,
  $$select gateway.release_reserved_admissions()$$
);
