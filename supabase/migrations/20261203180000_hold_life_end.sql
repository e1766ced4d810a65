-- One definition of a hold's longest life (admission + greatest(hold_timeout_seconds, its
-- request's lifetime)): note_holds caps a renewal at it and expire_stale_holds voids any hold past
-- it; each wrote it out.

-- The longest a hold may live: admission + greatest(hold_timeout_seconds, its request's lifetime).
-- Its worker renews its lease up to then (note_holds); the sweeper voids any hold past it
-- (expire_stale_holds), with a generation id or not.
create or replace function gateway.hold_life_end(
  p_created_at timestamptz,
  p_facts jsonb,
  p_timeout_seconds integer
)
returns timestamptz
language sql
immutable
security definer
set search_path = ''
as $$
  select p_created_at + make_interval(secs => greatest(
    p_timeout_seconds, coalesce((p_facts ->> 'lifetime_seconds')::integer, 0)))
$$;
revoke execute on function gateway.hold_life_end(timestamptz, jsonb, integer) from public;

-- What the function says about its open holds, for many in one call, every second or two while
-- they are open (open-holds.ts): they are alive, so their leases are renewed (expires_at moves to
-- now + hold_lease_seconds, never earlier, never past admission + greatest(hold_timeout_seconds,
-- the request's lifetime)); a request took each (reserved = false: a reserved admission in use is
-- never released as unused); and, when upstream answered, its generation id (null keeps the one
-- noted). Returns how many were open.
create or replace function gateway.note_holds(
  p_hold_ids bigint[],
  p_generation_ids text[],
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_lease integer;
  v_timeout integer;
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
  select s.hold_lease_seconds, s.hold_timeout_seconds into v_lease, v_timeout
    from gateway.system_settings s where s.id;
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
       set reserved = false, generation_id = coalesce(n.gen, h.generation_id),
           expires_at = greatest(h.expires_at, least(
             p_now + make_interval(secs => v_lease),
             gateway.hold_life_end(h.created_at, h.facts, v_timeout)))
      from n, l
     where h.id = n.id and l.id = n.id
    returning h.id
  )
  select count(*) into v_count from u;
  return v_count;
end
$$;
revoke execute on function gateway.note_holds(bigint[], text[], timestamptz) from public;
grant execute on function gateway.note_holds(bigint[], text[], timestamptz) to gateway_api;

-- Voids holds past their expires_at, without charge, each recorded as status expired, settled_by
-- sweeper, with its prices and generation id; a settle that still comes charges it (settle_hold).
-- A lapsed lease (its worker stopped renewing it: killed, crashed) voids a hold only if upstream
-- never answered for it: one with a generation id was billed upstream, so it keeps its credits
-- held until the reconcile settles it from /generation (gateway.reconcile_candidates), within the
-- hold; released, they could be spent again before that charge. Any hold is voided at its longest
-- life (admission + greatest(hold_timeout_seconds, its lifetime)).
create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_timeout integer;
  v_count integer;
begin
  select s.hold_timeout_seconds into v_timeout from gateway.system_settings s where s.id;
  with expired as (
    delete from gateway.holds h
     where h.expires_at <= p_now
       and (h.generation_id is null
            or gateway.hold_life_end(h.created_at, h.facts, v_timeout) <= p_now)
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
