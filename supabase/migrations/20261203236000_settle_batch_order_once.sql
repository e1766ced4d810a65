-- settle_requests finds where each hold is (open, closed with a usage record, a released
-- reservation's copy) once, by joins, for both keys of its order (the account, and whether the settle
-- takes counter rows); it looked each up in two subqueries per key. Same order, same results.

-- Many settles in one transaction, each by settle_request, in account order and an account's
-- settles that take no counter row (zero tokens) last (no deadlock). An element that raises aborts
-- the batch. A hold closed before (expired, or a reserved admission the server released) is
-- placed by its account too: placed first, it locked its account's rows before a lower account's
-- (40P01 with admissions). A released reservation's settle takes the counter rows even without
-- tokens (it counts its request again): placed after a zero-token settle's balance lock, it
-- waited for an admission that held the counter and waited for the balance (40P01).
create or replace function gateway.settle_requests(
  p_batch jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  e record;
  f record;
  v_results jsonb[];
begin
  if jsonb_typeof(p_batch) is distinct from 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'p_batch must be a JSON array of settle_request arguments';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  -- Where each hold is now: open (h), closed with a usage record (u: an expired one settles late),
  -- or a released reservation's copy (r: settles late and counts its request again, so it takes
  -- the counter rows even without tokens).
  for e in
    select b.ord, b.v
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      cross join lateral (select (b.v ->> 'hold_id')::bigint as id) i
      left join gateway.holds h on h.id = i.id
      left join gateway.usage_records u on h.id is null and u.hold_id = i.id
      left join gateway.released_reservations r on h.id is null and u.hold_id is null and r.id = i.id
     order by coalesce(h.account_id, case when u.status = 'expired' then u.account_id end,
                       r.account_id) nulls first,
              coalesce((b.v ->> 'prompt_tokens')::bigint, 0) = 0
                and coalesce((b.v ->> 'completion_tokens')::bigint, 0) = 0 and r.id is null,
              b.ord
  loop
    f := gateway.usage_facts(e.v);
    v_results[e.ord] := gateway.settle_hold(
      (e.v ->> 'hold_id')::bigint, f.model, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
      f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images, f.cost, f.status,
      f.latency_ms, f.generation_id, f.settled_by, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.settle_requests(jsonb, timestamptz) from public;
grant execute on function gateway.settle_requests(jsonb, timestamptz) to gateway_api;
