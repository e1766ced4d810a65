-- gateway.settle_requests: many settles in one call and one transaction (one round trip, one commit,
-- one WAL flush). The function queues the settles that arrive while one is in flight and sends them
-- together (supabase/functions/gateway/metering.ts), so under load a request costs one commit
-- instead of two; at concurrency 1 nothing queues and it calls settle_request as before.
--
-- Each element is settled by gateway.settle_request itself, so exactly-once per hold is unchanged: a
-- repeated or unknown hold answers {settled:false} and changes nothing, as alone. An element that
-- raises (bad settled_by) aborts the whole batch, leaving nothing settled; the caller then settles
-- the elements one by one.
--
-- Holds are settled in account order (then as given): two batches running at once lock balance rows
-- in the same order, and each account's rows in settle_request's own order, so they cannot deadlock.

create or replace function gateway.settle_requests(p_batch jsonb, p_now timestamptz default now())
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  e record;
  v_results jsonb[];
begin
  if jsonb_typeof(p_batch) is distinct from 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'p_batch must be a JSON array of settle_request arguments';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  for e in
    select b.ord, b.v
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      left join gateway.holds h on h.id = (b.v ->> 'hold_id')::bigint
     order by h.account_id nulls first, b.ord
  loop
    v_results[e.ord] := gateway.settle_request(
      (e.v ->> 'hold_id')::bigint,
      e.v ->> 'model',
      (e.v ->> 'prompt_tokens')::integer,
      (e.v ->> 'completion_tokens')::integer,
      (e.v ->> 'upstream_cost')::numeric,
      e.v ->> 'status',
      (e.v ->> 'latency_ms')::integer,
      e.v ->> 'generation_id',
      e.v ->> 'settled_by',
      p_now
    );
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.settle_requests(jsonb, timestamptz) from public;
grant execute on function gateway.settle_requests(jsonb, timestamptz) to gateway_api;
