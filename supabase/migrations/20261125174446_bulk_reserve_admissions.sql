-- gateway.reserve_admissions in one pass: a reservation of n costs Postgres about one admission and
-- a few statements, not n admissions. In 20261125172143_reserved_admissions it called
-- gateway.begin_request n times, and each call repeated the key, account, settings and price lookup,
-- the counter UPDATE, the balance SELECT … FOR UPDATE and UPDATE, the key cap's UPDATE and the hold's
-- INSERT: the function reserves up to 16 at a time for a busy context, so reserving cost it about
-- as much Postgres CPU as the requests' own admissions had.
--
-- Now the first admission is still made by begin_request itself, with every rule (key, fences, key
-- cap, rate windows, credits), and a refusal of it is the whole answer, as before. The others are
-- then decided at once, from the first's answer and the rows the first has locked (the account's
-- and the key's rate counter rows, the balance row, the key's request counter): exactly those that
-- p_count - 1 further begin_request calls with the same arguments and p_now would admit, with the
-- same holds (the same max_tokens and amount each, a cut-down last one included), counts and
-- answers. Why each rule gives the same result here as in begin_request:
--
-- - Key, fences, account, prices, limits: what begin_request read for the first. Nothing the
--   admissions write changes them (the fences see neither the counters nor the balance). A change
--   committed concurrently meanwhile, which the loop's later calls might have seen, is seen by these
--   admissions when they are used or given back, as for any reserved admission.
-- - Request windows: after the first count every window of the counted rows (the account's, and the
--   key's when it has its own limits) is the row's current one (begin_request rolled it to p_now's,
--   or left a later one), so a further call refuses exactly when some window's count reaches its
--   limit: i more are admitted iff i <= min over the limited windows of (limit - count), which is
--   the first answer's limits.requests.remaining (no limit: no bound).
-- - Token windows: begin_request refuses when tokens >= limit; admissions add no tokens, and the
--   first found every token window under its limit.
-- - Key cap: a further call refuses when requests_used >= max_requests; the row is locked, and each
--   admission adds one.
-- - Credits: each further call is replayed in arithmetic, with begin_request's formulas, types and
--   order of checks, on the locked balance (which admissions do not change) and the held credits
--   after the holds before it: counted only if balance > 0 and balance - held - prompt cost >= cm;
--   max_tokens = least(requested or default, floor((balance - held - prompt cost) / cm)), refused
--   below 1; hold = ceil(prompt cost + max_tokens × cm). The multipliers come from the first answer,
--   as text, so the same numeric values with the same scale.
--
-- They are then applied with one statement per table, in begin_request's lock order (the rows are
-- this transaction's already): + m requests in each window of the counter rows, held + the m holds,
-- requests_used + m (last_used_at = p_now), and the m holds inserted as begin_request inserts them,
-- marked reserved. Each answer is begin_request's admission answer for that hold: its hold_id,
-- held_credits, max_tokens and available_credits, limits.requests.remaining one less than the one
-- before (every counted window loses one, so the least remaining stays the same window's), the
-- rest as the first's.
--
-- One change to the answer: a trailing refusal only when the first admission was refused (then the
-- answer is [refusal], as before). When fewer than p_count are admitted after a first admission, the
-- answer is the admissions alone, without the refusal that would have come next: the next
-- begin_request reports it, and building it here would repeat begin_request's refusal logic.
--
-- Measured in the backend (warm session, interleaved runs, each reservation given back by
-- cancel_admissions and committed): see the commit message.

create or replace function gateway.reserve_admissions(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_model text,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_count integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_first jsonb;
  v_answers jsonb[];
  v_account bigint;
  v_key bigint;
  v_key_limited boolean;
  v_room bigint;
  v_req_remaining bigint;
  v_requests_used bigint;
  v_max_requests bigint;
  v_want integer;
  -- begin_request's variables of the same names, with its types.
  v_prompt integer := coalesce(p_prompt_tokens, 0);
  v_pm numeric;
  v_cm numeric;
  v_prompt_cost numeric;
  v_balance bigint;
  v_held bigint;
  v_held_first bigint;
  v_max_tokens bigint;
  v_hold bigint;
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

  -- 1. The first, by begin_request: every rule. Refused, its refusal is the answer.
  v_first := gateway.begin_request(
    p_key_hash, p_client_ip, p_referrer, p_model, p_max_tokens, p_prompt_tokens, p_now);
  if not (v_first ->> 'ok')::boolean then
    return jsonb_build_array(v_first);
  end if;
  -- The hold is this transaction's own row, unseen by anyone until it commits.
  update gateway.holds h set reserved = true
   where h.id = (v_first ->> 'hold_id')::bigint
  returning h.count_key_windows into v_key_limited;
  if p_count = 1 then
    return jsonb_build_array(v_first);
  end if;

  -- 2. How many more the windows and the key cap allow (see above).
  v_req_remaining := (v_first #>> '{limits,requests,remaining}')::bigint;
  v_room := least(p_count - 1, v_req_remaining);
  if v_room < 1 then
    return jsonb_build_array(v_first);
  end if;
  v_account := (v_first ->> 'user_id')::bigint;
  v_key := (v_first ->> 'key_id')::bigint;
  select c.requests_used, k.max_requests, coalesce(p_max_tokens, s.default_max_tokens)
    into v_requests_used, v_max_requests, v_want
    from gateway.key_counters c
    join gateway.api_keys k on k.id = c.key_id
    join gateway.system_settings s on s.id
   where c.key_id = v_key;
  v_room := least(v_room, v_max_requests - v_requests_used);

  -- 3. The credits of each, as begin_request computes them, after the holds before it.
  v_balance := (v_first ->> 'balance')::bigint;
  v_held_first := v_balance - (v_first ->> 'available_credits')::bigint;
  v_held := v_held_first;
  v_pm := (v_first ->> 'prompt_multiplier')::numeric;
  v_cm := (v_first ->> 'completion_multiplier')::numeric;
  v_prompt_cost := v_prompt * v_pm;
  for i in 1 .. coalesce(v_room, 0) loop
    exit when not (v_balance > 0 and v_balance - v_held - v_prompt_cost >= v_cm);
    v_max_tokens := least(v_want, floor((v_balance - v_held - v_prompt_cost) / v_cm));
    exit when v_max_tokens is null or v_max_tokens < 1;
    v_hold := ceil(v_prompt_cost + v_max_tokens * v_cm);
    v_held := v_held + v_hold;
    v_amounts := v_amounts || v_hold;
    v_tokens := v_tokens || v_max_tokens;
    v_available := v_available || (v_balance - v_held);
  end loop;
  v_m := cardinality(v_amounts);
  if v_m = 0 then
    return jsonb_build_array(v_first);
  end if;

  -- 4. Apply the m admissions: counters, then balance, then the key's counter, as begin_request.
  update gateway.rate_counters c
     set minute_requests = c.minute_requests + v_m, hour_requests = c.hour_requests + v_m,
         day_requests = c.day_requests + v_m
   where (c.subject_kind = 'account' and c.subject_id = v_account)
      or (v_key_limited and c.subject_kind = 'key' and c.subject_id = v_key);
  update gateway.credit_balances b
     set held = b.held + (v_held - v_held_first)
   where b.account_id = v_account;
  update gateway.key_counters c
     set requests_used = c.requests_used + v_m, last_used_at = p_now
   where c.key_id = v_key;
  -- Identity values are drawn in the order the rows are inserted: the i-th id is the i-th hold's.
  with h as (
    insert into gateway.holds (
      account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
      completion_multiplier, count_key_windows, created_at, reserved
    )
    select v_account, v_key, coalesce(p_model, ''), a.amount, a.max_tokens, v_prompt, v_pm, v_cm,
           v_key_limited, p_now, true
      from unnest(v_amounts, v_tokens) with ordinality a (amount, max_tokens, ord)
     order by a.ord
    returning id
  )
  select array_agg(h.id order by h.id) into v_ids from h;

  -- 5. The answers, begin_request's for each.
  v_answers := array[v_first];
  for i in 1 .. v_m loop
    v_answers := v_answers || (v_first || jsonb_build_object(
      'hold_id', v_ids[i],
      'held_credits', v_amounts[i],
      'max_tokens', v_tokens[i],
      'available_credits', v_available[i],
      'limits', case when v_req_remaining is null then v_first -> 'limits'
                     else jsonb_set(v_first -> 'limits', '{requests,remaining}',
                                    to_jsonb(v_req_remaining - i)) end));
  end loop;
  return to_jsonb(v_answers);
end
$$;
revoke execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz
) from public;
grant execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz
) to gateway_api;
