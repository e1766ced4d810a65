-- Reserved admissions of many contexts in one call (reservations.ts batches them as admission.ts
-- batches begin_request): one reservation call in flight used to serve one context, and the
-- contexts that found it busy sent their requests to SQL one by one (docs/PERFORMANCE.md,
-- "Reservations batched").

-- Reservations for many contexts in one call, each by reserve_admissions itself, made in account
-- order (no deadlock with another batch or with begin_requests) and answered in the order given:
-- element i's answer is reserve_admissions' array for it. One transaction: an element that raises
-- aborts the batch (the edge function then sends its elements one by one).
create or replace function gateway.reserve_admissions_batch(
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
      message = 'p_batch must be a JSON array of reserve_admissions arguments';
  end if;
  if exists (select from jsonb_array_elements(p_batch) b (v)
              where jsonb_typeof(b.v -> 'key_hash') is distinct from 'string'
                 or (b.v ->> 'key_hash') !~ '^[0-9a-f]{64}$'
                 or jsonb_typeof(b.v -> 'count') is distinct from 'number'
                 or (b.v ->> 'count') !~ '^[0-9]{1,9}$') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'every element needs key_hash (the SHA-256 of the key as 64 lower-case hex '
                'digits) and count (an integer from 1 to 64)';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  for e in
    select b.ord, b.v, d.h
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      cross join lateral (select decode(b.v ->> 'key_hash', 'hex') as h) d
     order by coalesce(
                (select k1.account_id from gateway.api_keys k1 where k1.key_hash = d.h),
                (select k2.account_id from gateway.api_keys k2
                  where k2.previous_key_hash = d.h and k2.previous_valid_until > p_now)
              ) nulls first,
              b.ord
  loop
    f := gateway.request_facts(e.v - array['key_hash', 'client_ip', 'referrer', 'count']);
    v_results[e.ord] := gateway.reserve(
      e.h, (e.v ->> 'client_ip')::inet, e.v ->> 'referrer', f.models, f.prompt_bound, f.images,
      f.audio, f.files, f.web_results, f.max_tokens, f.lifetime_seconds,
      (e.v ->> 'count')::integer, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.reserve_admissions_batch(jsonb, timestamptz) from public;
grant execute on function gateway.reserve_admissions_batch(jsonb, timestamptz) to gateway_api;
