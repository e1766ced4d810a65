-- Reservations answer compactly: gateway.reserve returns {"first": admit's answer, "more": the
-- other admissions' holds, credits and max_tokens by column} instead of one full answer per
-- admission, each a copy of the first's pricing (~1.3 KB of JSON built, sent and parsed per
-- reserved admission; a reservation of 16 cost ~1.0 ms, now ~0.65). reserve_admissions_batch,
-- which the edge function calls, answers in that form; reserve_admissions keeps its full answers
-- through the new gateway.reserved_answers, which spells the compact form out.

-- reserve_admissions' body: the first admission by gateway.admit (every
-- rule), the others in one pass with gateway.hold_for — exactly those that further admissions with
-- the same facts and p_now would make (20261125174446 explains the pass). Answers in the compact
-- form {"first": admit's answer, "more": {"hold_ids", "held_credits", "max_tokens",
-- "available_credits"}: one array each, the i-th element the (i+1)-th admission's}; "more" is
-- absent when only the first was made (or refused). gateway.reserved_answers spells it out.
create or replace function gateway.reserve(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_models text[],
  p_prompt_bound bigint,
  p_images integer,
  p_audio integer,
  p_files integer,
  p_web_results integer,
  p_max_tokens integer,
  p_lifetime_seconds integer,
  p_count integer,
  p_now timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_first jsonb;
  h gateway.holds;
  hf record;
  v_room bigint;
  v_req_remaining bigint;
  v_requests_used bigint;
  v_max_requests bigint;
  v_want bigint;
  v_balance bigint;
  v_held bigint;
  v_held_first bigint;
  v_amounts bigint[] := array[]::bigint[];
  v_tokens bigint[] := array[]::bigint[];
  v_available bigint[] := array[]::bigint[];
  v_ids bigint[];
  v_m integer;
begin
  if p_count is null or p_count < 1 or p_count > 64 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'count must be from 1 to 64';
  end if;

  -- 1. The first, by admit: every rule. Refused, its refusal is the answer.
  v_first := gateway.admit(
    p_key_hash, p_client_ip, p_referrer, p_models, p_prompt_bound, p_images, p_audio, p_files,
    p_web_results, p_max_tokens, p_lifetime_seconds, p_now);
  if not (v_first ->> 'ok')::boolean then
    return jsonb_build_object('first', v_first);
  end if;
  -- The hold is this transaction's own row, unseen by anyone until it commits; the others copy
  -- its prices, facts and expiry.
  update gateway.holds x set reserved = true
   where x.id = (v_first ->> 'hold_id')::bigint
  returning x.* into h;
  if p_count = 1 then
    return jsonb_build_object('first', v_first);
  end if;

  -- 2. How many more the windows and the key cap allow.
  v_req_remaining := (v_first #>> '{limits,requests,remaining}')::bigint;
  v_room := least(p_count - 1, v_req_remaining);
  if v_room < 1 then
    return jsonb_build_object('first', v_first);
  end if;
  select c.requests_used, k.max_requests, coalesce(p_max_tokens, s.default_max_tokens)
    into v_requests_used, v_max_requests, v_want
    from gateway.key_counters c
    join gateway.api_keys k on k.id = c.key_id
    join gateway.system_settings s on s.id
   where c.key_id = h.key_id;
  v_room := least(v_room, v_max_requests - v_requests_used);

  -- 3. The credits of each, as admit decides them, after the holds before it.
  v_balance := (v_first ->> 'balance')::bigint;
  v_held_first := v_balance - (v_first ->> 'available_credits')::bigint;
  v_held := v_held_first;
  for i in 1 .. coalesce(v_room, 0) loop
    exit when v_balance <= 0;
    hf := gateway.hold_for(
      h.dearest, h.usd_per_credit, h.prompt_estimate, (h.facts ->> 'web_results')::integer,
      p_images, v_want, v_balance - v_held);
    exit when hf.max_tokens < 1;
    v_held := v_held + hf.amount;
    v_amounts := v_amounts || hf.amount;
    v_tokens := v_tokens || hf.max_tokens;
    v_available := v_available || (v_balance - v_held);
  end loop;
  v_m := cardinality(v_amounts);
  if v_m = 0 then
    return jsonb_build_object('first', v_first);
  end if;

  -- 4. Apply the m admissions: counters, then balance, then the key's counter, as admit does.
  update gateway.rate_counters c
     set minute_requests = c.minute_requests + v_m, hour_requests = c.hour_requests + v_m,
         day_requests = c.day_requests + v_m
   where (c.subject_kind = 'account' and c.subject_id = h.account_id)
      or (h.count_key_windows and c.subject_kind = 'key' and c.subject_id = h.key_id);
  update gateway.credit_balances b
     set held = b.held + (v_held - v_held_first)
   where b.account_id = h.account_id;
  update gateway.key_counters c
     set requests_used = c.requests_used + v_m, last_used_at = p_now
   where c.key_id = h.key_id;
  -- Identity values are drawn in the order the rows are inserted: the i-th id is the i-th hold's.
  with ins as (
    insert into gateway.holds (
      account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
      completion_multiplier, count_key_windows, created_at, reserved, prices, dearest,
      pricing_mode, usd_per_credit, facts, expires_at
    )
    select h.account_id, h.key_id, h.model, a.amount, a.max_tokens, h.prompt_estimate,
           h.prompt_multiplier, h.completion_multiplier, h.count_key_windows, p_now, true,
           h.prices, h.dearest, h.pricing_mode, h.usd_per_credit, h.facts, h.expires_at
      from unnest(v_amounts, v_tokens) with ordinality a (amount, max_tokens, ord)
     order by a.ord
    returning id
  )
  select array_agg(ins.id order by ins.id) into v_ids from ins;

  -- 5. The answer: admit's for the first; of the others only what differs from it, by column
  --    (gateway.reserved_answers spells them out). Each spelled out in full here was a copy of
  --    the first's pricing: ~1.3 KB of JSON built, sent and parsed per admission, and ~40 % of a
  --    reservation of 16.
  return jsonb_build_object('first', v_first, 'more', jsonb_build_object(
    'hold_ids', to_jsonb(v_ids), 'held_credits', to_jsonb(v_amounts),
    'max_tokens', to_jsonb(v_tokens), 'available_credits', to_jsonb(v_available)));
end
$$;
revoke execute on function gateway.reserve(bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, integer, timestamptz) from public;

-- gateway.reserve's compact answer spelled out: the array of admit answers it stands for. The
-- (i+1)-th is the first's but for its hold, credits held and available, max_tokens and, when the
-- request window has a limit, the requests remaining (i fewer). The edge function does the same to
-- a batch's answers (reservations.ts, `spelledOut`; a test checks they agree).
create or replace function gateway.reserved_answers(p_reserved jsonb)
returns jsonb
language sql
immutable
security definer
set search_path = ''
as $$
  select jsonb_build_array(p_reserved -> 'first') || coalesce((
    select jsonb_agg(
             (p_reserved -> 'first') || jsonb_build_object(
               'hold_id', m.hold_id, 'held_credits', m.held, 'max_tokens', m.max_tokens,
               'available_credits', m.available,
               'limits', case when r.remaining is null then p_reserved #> '{first,limits}'
                              else jsonb_set(p_reserved #> '{first,limits}', '{requests,remaining}',
                                             to_jsonb(r.remaining - m.i)) end)
             order by m.i)
      from rows from (
             jsonb_array_elements(p_reserved #> '{more,hold_ids}'),
             jsonb_array_elements(p_reserved #> '{more,held_credits}'),
             jsonb_array_elements(p_reserved #> '{more,max_tokens}'),
             jsonb_array_elements(p_reserved #> '{more,available_credits}')
           ) with ordinality m (hold_id, held, max_tokens, available, i)
     cross join lateral (
       select (p_reserved #>> '{first,limits,requests,remaining}')::bigint as remaining) r
  ), '[]'::jsonb)
$$;
revoke execute on function gateway.reserved_answers(jsonb) from public;

-- Up to p_count (1–64) admissions of one request's facts made ahead, their holds `reserved`, each
-- the one begin_request would make (docs/SQL-API.md); given back unused by cancel_admissions.
create or replace function gateway.reserve_admissions(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_facts jsonb,
  p_count integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  f record;
begin
  f := gateway.request_facts(p_facts);
  return gateway.reserved_answers(gateway.reserve(
    p_key_hash, p_client_ip, p_referrer, f.models, f.prompt_bound, f.images, f.audio, f.files,
    f.web_results, f.max_tokens, f.lifetime_seconds, p_count, p_now));
end
$$;
revoke execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz) from public;
grant execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz) to gateway_api;

-- Reservations for many contexts in one call, each by reserve_admissions' own code, made in account
-- order (no deadlock with another batch or with begin_requests) and answered in the order given:
-- element i's answer is gateway.reserve's compact form ({"first", "more"}), which
-- gateway.reserved_answers turns into reserve_admissions' array. One transaction: an element that
-- raises aborts the batch (the edge function then sends its elements one by one).
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
