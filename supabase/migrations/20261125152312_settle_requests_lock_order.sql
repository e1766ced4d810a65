-- gateway.settle_requests: within an account, the settles that add tokens to the rate counters go
-- before those that add none. Same results otherwise (20261125135326_settle_requests_batch).
--
-- Why: every writer of an account's rows locks its counter row before its balance row (begin_request,
-- settle_request with tokens), except a settle of zero tokens, which skips the counters and locks
-- only the balance row. Settled as given, a batch [zero-token settle of A, settle of A with tokens]
-- locked A's balance, then A's counter, while a concurrent admission of A (begin_request or
-- begin_requests) held A's counter and waited for A's balance: a deadlock (40P01), reproduced by
-- supabase/tests/sql/concurrency.test.ts. With the zero-token settles last, a batch that takes A's
-- balance without its counter takes nothing of A after it, and so waits for no one who waits for it.

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
     order by h.account_id nulls first,
              coalesce((b.v ->> 'prompt_tokens')::integer, 0) = 0
                and coalesce((b.v ->> 'completion_tokens')::integer, 0) = 0,
              b.ord
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
