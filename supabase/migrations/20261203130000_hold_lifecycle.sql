-- Holds across worker lifecycles (issue 11 "no hold lapses while its request lives", issue 13 item 3):
-- a hold notes its generation id and whether its reserved admission was taken (note_holds), open
-- streams keep their holds (extend_holds), reserved admissions a vanished worker never used are
-- released within seconds (release_reserved_admissions, on pg_cron), expired holds keep their
-- generation id, and the reconcile lists what to settle from /generation (reconcile_candidates).

alter table gateway.holds add column generation_id text;
comment on column gateway.holds.generation_id is
  'OpenRouter''s generation id, noted when upstream answered (gateway.note_holds): a hold whose '
  'worker died is settled from /generation by it (gateway.reconcile_candidates).';

create index usage_records_unreconciled_idx on gateway.usage_records (settled_at)
  where status = 'expired' and generation_id is not null;

-- What the function learns about a hold after admission, noted in one call for many holds: the
-- request took it (reserved = false: a reserved admission in use is never released as unused) and,
-- when upstream answered, its generation id (null keeps the one noted). Returns how many were open.
create or replace function gateway.note_holds(
  p_hold_ids bigint[],
  p_generation_ids text[]
)
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_count integer;
begin
  if cardinality(p_hold_ids) is distinct from cardinality(p_generation_ids) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'hold ids and generation ids must be arrays of the same length';
  end if;
  if exists (select from unnest(p_generation_ids) g (id) where length(g.id) > 256) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a generation id has at most 256 characters';
  end if;
  -- Rows locked in id order (two calls never wait on each other in a cycle); a hold closed
  -- meanwhile is simply not found.
  with n as (
    select distinct on (t.id) t.id, t.gen
      from unnest(p_hold_ids, p_generation_ids) t (id, gen)
     order by t.id, t.gen nulls last
  ), l as (
    select h.id from gateway.holds h join n on n.id = h.id order by h.id for update of h
  ), u as (
    update gateway.holds h
       set reserved = false, generation_id = coalesce(n.gen, h.generation_id)
      from n, l
     where h.id = n.id and l.id = n.id
    returning h.id
  )
  select count(*) into v_count from u;
  return v_count;
end
$$;
revoke execute on function gateway.note_holds(bigint[], text[]) from public;
grant execute on function gateway.note_holds(bigint[], text[]) to gateway_api;

-- Keeps holds whose requests still run from expiring: expires_at moves to p_until (never earlier,
-- at most a day ahead). Returns how many were open.
create or replace function gateway.extend_holds(
  p_hold_ids bigint[],
  p_until timestamptz,
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_count integer;
begin
  with l as (
    select h.id from gateway.holds h where h.id = any(p_hold_ids) order by h.id for update
  ), u as (
    update gateway.holds h
       set expires_at = greatest(h.expires_at, least(p_until, p_now + interval '1 day'))
      from l
     where h.id = l.id
    returning h.id
  )
  select count(*) into v_count from u;
  return v_count;
end
$$;
revoke execute on function gateway.extend_holds(bigint[], timestamptz, timestamptz) from public;
grant execute on function gateway.extend_holds(bigint[], timestamptz, timestamptz) to gateway_api;

-- The server's bound on reserved admissions a worker never used nor gave back (it vanished): those
-- reserved more than p_older_than_seconds ago are cancelled as gateway.cancel_admissions does
-- (uncounted, unheld, no usage record). A reservation still in use 2.5 s after it was made is noted
-- then (gateway.note_holds: no longer reserved), so never matches.
create or replace function gateway.release_reserved_admissions(
  p_older_than_seconds integer default 5,
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
begin
  return gateway.cancel_admissions(array(
    select h.id from gateway.holds h
     where h.reserved
       and h.created_at <= p_now - make_interval(secs => greatest(p_older_than_seconds, 1))));
end
$$;
revoke execute on function gateway.release_reserved_admissions(integer, timestamptz) from public;
grant execute on function gateway.release_reserved_admissions(integer, timestamptz) to service_role;

-- Voids every hold past its expires_at, without charge, each recorded as status expired, settled_by
-- sweeper, with its prices and generation id: a settle that still comes charges it (settle_hold),
-- and one with a generation id is settled from /generation (gateway.reconcile_candidates).
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
     where h.expires_at <= p_now
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, candidates,
      facts, generation_id
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           case when x.generation_id is null then 'hold timed out: released without charge'
                else 'hold timed out: released without charge until settled from /generation' end,
           x.created_at, p_now, x.pricing_mode, x.usd_per_credit, x.dearest, x.prices, x.facts,
           x.generation_id
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;
revoke execute on function gateway.expire_stale_holds(timestamptz) from public;
grant execute on function gateway.expire_stale_holds(timestamptz) to service_role;

-- Holds to settle from OpenRouter's /generation (the scheduled reconcile, POST
-- /gateway/internal/reconcile): open ones with a generation id admitted at least p_min_age_seconds
-- ago (longer than a request can live, so their worker is gone), and expired ones with a generation
-- id not settled yet (within a week). Newest first, at most p_limit: one whose stats never appear
-- does not keep the next from being reconciled.
create or replace function gateway.reconcile_candidates(
  p_min_age_seconds integer,
  p_limit integer default 50,
  p_now timestamptz default now()
)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'hold_id', c.hold_id, 'generation_id', c.generation_id, 'model', c.model,
           'expired', c.expired) order by c.created_at desc, c.hold_id desc), '[]')
    from (
      select h.id as hold_id, h.generation_id, h.model, false as expired, h.created_at
        from gateway.holds h
       where h.generation_id is not null
         and h.created_at <= p_now - make_interval(secs => greatest(p_min_age_seconds, 0))
      union all
      select u.hold_id, u.generation_id, u.model, true, u.created_at
        from gateway.usage_records u
       where u.status = 'expired' and u.generation_id is not null
         and u.settled_at > p_now - interval '7 days'
      order by created_at desc, hold_id desc
      limit greatest(least(p_limit, 500), 1)
    ) c
$$;
revoke execute on function gateway.reconcile_candidates(integer, integer, timestamptz) from public;
grant execute on function gateway.reconcile_candidates(integer, integer, timestamptz) to gateway_api;

-- Reserved admissions a vanished worker never gave back stop holding credits and window counts
-- within seconds: pg_cron 1.5+ (hosted Supabase) runs this every 5 s; an older pg_cron once a
-- minute, and the local stack's scheduler (scripts/scheduler.ts) every 2 s besides.
select cron.schedule(
  'gateway-release-reserved-admissions',
  case when (select string_to_array(split_part(e.extversion, '-', 1), '.')::integer[]
               from pg_catalog.pg_extension e where e.extname = 'pg_cron') >= array[1, 5]
       then '5 seconds' else '* * * * *' end,
  $$select gateway.release_reserved_admissions()$$
);
