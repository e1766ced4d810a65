-- note_holds skips a hold another transaction has locked instead of waiting for it: one locked
-- row (a settle in progress, the sweeper, an operator's session) held up the lease renewal of
-- every other hold in the same call, so that a long lock on one hold let a worker's other holds
-- lapse (supabase/tests/reliability/lease-renewal.test.ts).

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
  -- meanwhile is simply not found. A hold another transaction has locked (its settle, the sweeper,
  -- an operator's session) is skipped, not waited for: one locked row must not hold up the
  -- renewal of every other hold in the call (the worker sends it again at its next renewal).
  with n as (
    select distinct on (t.id) t.id, t.gen
      from unnest(p_hold_ids, p_generation_ids) t (id, gen)
     order by t.id, t.gen nulls last
  ), l as (
    select h.id from gateway.holds h join n on n.id = h.id
     order by h.id for update of h skip locked
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
