-- begin_request also returns the hold's multipliers, so that the function can report a request's
-- charge without waiting for settle_request (which then runs after the response, in background).
-- The charge has one SQL definition, gateway.credits_for, used by settle_request; the function's
-- TypeScript copy (metering.ts, `creditsFor`) is checked against settle_request over random inputs
-- by supabase/tests/database/09-credits-for.test.sql.
--
-- begin_request and settle_request are otherwise unchanged from 20261125125725_gateway_request_path.

-- Credits for a request's tokens, priced with the multipliers its hold stored at admission. An
-- overrun is charged in full (no cap at the hold).
create or replace function gateway.credits_for(
  p_prompt_tokens bigint,
  p_completion_tokens bigint,
  p_prompt_multiplier numeric,
  p_completion_multiplier numeric
)
returns bigint
language sql
immutable
security definer
set search_path = ''
as $$
  select ceil(p_prompt_tokens * p_prompt_multiplier + p_completion_tokens * p_completion_multiplier)::bigint
$$;
revoke execute on function gateway.credits_for(bigint, bigint, numeric, numeric) from public;

create or replace function gateway.begin_request(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_model text,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  c_grans constant gateway.rate_granularity[] :=
    array['minute', 'hour', 'day']::gateway.rate_granularity[];
  c_names constant text[] := array['minute', 'hour', 'day', 'minute', 'hour', 'day'];
  v record;
  v_reason text;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
  v_n integer;
  v_req_limit bigint[];
  v_tok_limit bigint[];
  v_req_used bigint[];
  v_tok_used bigint[];
  v_refused integer;
  v_refused_kind text;
  v_retry integer;
  v_reset integer;
  v_prompt integer := coalesce(p_prompt_tokens, 0);
  v_prompt_cost numeric;
  v_balance bigint;
  v_held bigint;
  v_max_tokens bigint;
  v_hold bigint;
  v_hold_id bigint;
begin
  if p_max_tokens < 1 or v_prompt < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'max_tokens must be >= 1 and prompt_tokens >= 0';
  end if;

  -- 1. The key (current secret, or previous within its grace), its account, balance, limits and the
  --    model's price: one statement of unique-index probes, no locks.
  select k.id as key_id, k.account_id, k.key_prefix, k.is_active, k.deleted_at is not null as deleted,
         k.expires_at, k.permissions, k.allowed_ips, k.allowed_referrers, k.max_requests,
         c.requests_used, a.is_active as account_active, b.balance, b.held, s.default_max_tokens,
         coalesce(r.requests_per_minute, s.requests_per_minute) as a_rpm,
         coalesce(r.requests_per_hour, s.requests_per_hour) as a_rph,
         coalesce(r.requests_per_day, s.requests_per_day) as a_rpd,
         coalesce(r.tokens_per_minute, s.tokens_per_minute) as a_tpm,
         coalesce(r.tokens_per_hour, s.tokens_per_hour) as a_tph,
         coalesce(r.tokens_per_day, s.tokens_per_day) as a_tpd,
         kl.key_id is not null as key_limited,
         kl.requests_per_minute as k_rpm, kl.requests_per_hour as k_rph,
         kl.requests_per_day as k_rpd, kl.tokens_per_minute as k_tpm,
         kl.tokens_per_hour as k_tph, kl.tokens_per_day as k_tpd,
         coalesce(mp.prompt_multiplier, 1) as pm, coalesce(mp.completion_multiplier, 1) as cm
    into v
    from gateway.api_keys k
    join gateway.key_counters c on c.key_id = k.id
    join gateway.accounts a on a.id = k.account_id
    join gateway.credit_balances b on b.account_id = k.account_id
    join gateway.system_settings s on s.id
    left join gateway.rate_limits r on r.account_id = k.account_id
    left join gateway.key_rate_limits kl on kl.key_id = k.id
    left join gateway.model_pricing mp on mp.model = p_model
   where k.id = coalesce(
     (select k1.id from gateway.api_keys k1 where k1.key_hash = p_key_hash),
     (select k2.id from gateway.api_keys k2
       where k2.previous_key_hash = p_key_hash and k2.previous_valid_until > p_now)
   );

  v_reason := gateway.key_refusal(
    v.key_id, v.is_active, v.deleted, v.account_active, v.expires_at, v.permissions,
    v.allowed_ips, v.allowed_referrers, p_client_ip, p_referrer, 'write', p_now
  );
  if v_reason is null and v.max_requests is not null and v.requests_used >= v.max_requests then
    v_reason := 'key_request_cap';
  end if;
  if v_reason is not null then
    return jsonb_build_object(
      'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
  end if;

  -- 2. Rate windows: read the counters (no writes, so a flood of refused requests writes nothing).
  v_n := case when v.key_limited then 6 else 3 end;
  v_req_limit := array[v.a_rpm, v.a_rph, v.a_rpd, v.k_rpm, v.k_rph, v.k_rpd];
  v_tok_limit := array[v.a_tpm, v.a_tph, v.a_tpd, v.k_tpm, v.k_tph, v.k_tpd];
  select array_agg(coalesce(w.requests, 0) order by g.i),
         array_agg(coalesce(w.tokens, 0) order by g.i)
    into v_req_used, v_tok_used
    from (values (1, 'account'::gateway.rate_subject, v.account_id, 'minute'::gateway.rate_granularity, v_minute),
                 (2, 'account', v.account_id, 'hour', v_hour),
                 (3, 'account', v.account_id, 'day', v_day),
                 (4, 'key', v.key_id, 'minute', v_minute),
                 (5, 'key', v.key_id, 'hour', v_hour),
                 (6, 'key', v.key_id, 'day', v_day)) g (i, kind, sid, gran, start)
    left join gateway.rate_windows w
      on w.subject_kind = g.kind and w.subject_id = g.sid
     and w.granularity = g.gran and w.window_start = g.start
   where g.i <= v_n;

  for i in 1 .. v_n loop
    if (v_req_limit[i] is not null and v_req_used[i] >= v_req_limit[i])
       or (v_tok_limit[i] is not null and v_tok_used[i] >= v_tok_limit[i]) then
      v_reset := gateway.window_reset_seconds(c_grans[(i - 1) % 3 + 1], p_now);
      if v_retry is null or v_reset > v_retry then
        v_retry := v_reset;
        v_refused := i;
        v_refused_kind := case when v_req_limit[i] is not null and v_req_used[i] >= v_req_limit[i]
                               then 'requests' else 'tokens' end;
      end if;
    end if;
  end loop;
  if v_refused is not null then
    return jsonb_build_object(
      'ok', false, 'reason', 'rate_limited', 'message', gateway.refusal_message('rate_limited'),
      'retry_after_seconds', v_retry,
      'window', v_refused_kind || '_per_' || c_names[v_refused],
      'scope', case when v_refused <= 3 then 'account' else 'key' end,
      'limits', gateway.limits_headers(v_req_limit, v_req_used, v_tok_limit, v_tok_used, v_n, p_now));
  end if;

  -- 3. Credits, decided on the locked balance row: the largest max_tokens the available credits
  --    afford (capped by the request or the default), and its worst-case cost as the hold.
  v_prompt_cost := v_prompt * v.pm;
  if v.balance <= 0 or v.balance - v.held - v_prompt_cost < v.cm then
    -- Cannot afford one completion token even before locking: refuse without taking the lock.
    v_balance := v.balance;
    v_held := v.held;
  else
    select b.balance, b.held into v_balance, v_held
      from gateway.credit_balances b where b.account_id = v.account_id
       for update;
    v_max_tokens := least(coalesce(p_max_tokens, v.default_max_tokens),
                          floor((v_balance - v_held - v_prompt_cost) / v.cm));
  end if;
  if v_max_tokens is null or v_max_tokens < 1 or v_balance <= 0 then
    return jsonb_build_object(
      'ok', false, 'reason', 'insufficient_credits',
      'message', gateway.refusal_message('insufficient_credits'),
      'balance', v_balance, 'available_credits', v_balance - v_held,
      'limits', gateway.limits_headers(v_req_limit, v_req_used, v_tok_limit, v_tok_used, v_n, p_now));
  end if;
  v_hold := ceil(v_prompt_cost + v_max_tokens * v.cm);

  -- 4. Count the request in its windows; re-check on the counts returned under the row locks (a
  --    concurrent request may have passed step 2 too) and undo our increment if refused.
  with up as (
    insert into gateway.rate_windows as w
      (subject_kind, subject_id, granularity, window_start, requests)
    select g.kind, g.sid, g.gran, g.start, 1
      from (values (1, 'account'::gateway.rate_subject, v.account_id, 'minute'::gateway.rate_granularity, v_minute),
                   (2, 'account', v.account_id, 'hour', v_hour),
                   (3, 'account', v.account_id, 'day', v_day),
                   (4, 'key', v.key_id, 'minute', v_minute),
                   (5, 'key', v.key_id, 'hour', v_hour),
                   (6, 'key', v.key_id, 'day', v_day)) g (i, kind, sid, gran, start)
     where g.i <= v_n
     order by g.i
    on conflict (subject_kind, subject_id, granularity, window_start)
      do update set requests = w.requests + 1
    returning w.subject_kind, w.granularity, w.requests, w.tokens
  )
  select array_agg(up.requests::bigint order by up.subject_kind, up.granularity),
         array_agg(up.tokens order by up.subject_kind, up.granularity)
    into v_req_used, v_tok_used
    from up;

  for i in 1 .. v_n loop
    if (v_req_limit[i] is not null and v_req_used[i] > v_req_limit[i])
       or (v_tok_limit[i] is not null and v_tok_used[i] >= v_tok_limit[i]) then
      v_reset := gateway.window_reset_seconds(c_grans[(i - 1) % 3 + 1], p_now);
      if v_retry is null or v_reset > v_retry then
        v_retry := v_reset;
        v_refused := i;
        v_refused_kind := case when v_req_limit[i] is not null and v_req_used[i] > v_req_limit[i]
                               then 'requests' else 'tokens' end;
      end if;
    end if;
  end loop;
  if v_refused is not null then
    v_reason := 'rate_limited';
  else
    -- 5. The key's request cap, atomically (a concurrent request may have taken the last one).
    update gateway.key_counters c
       set requests_used = c.requests_used + 1, last_used_at = p_now
     where c.key_id = v.key_id
       and (v.max_requests is null or c.requests_used < v.max_requests);
    if not found then
      v_reason := 'key_request_cap';
    end if;
  end if;
  if v_reason is not null then
    update gateway.rate_windows w
       set requests = w.requests - 1
      from (values ('account'::gateway.rate_subject, v.account_id, 'minute'::gateway.rate_granularity, v_minute, 1),
                   ('account', v.account_id, 'hour', v_hour, 2),
                   ('account', v.account_id, 'day', v_day, 3),
                   ('key', v.key_id, 'minute', v_minute, 4),
                   ('key', v.key_id, 'hour', v_hour, 5),
                   ('key', v.key_id, 'day', v_day, 6)) g (kind, sid, gran, start, i)
     where g.i <= v_n
       and w.subject_kind = g.kind and w.subject_id = g.sid
       and w.granularity = g.gran and w.window_start = g.start;
    if v_reason = 'rate_limited' then
      return jsonb_build_object(
        'ok', false, 'reason', 'rate_limited', 'message', gateway.refusal_message('rate_limited'),
        'retry_after_seconds', v_retry,
        'window', v_refused_kind || '_per_' || c_names[v_refused],
        'scope', case when v_refused <= 3 then 'account' else 'key' end,
        'limits', gateway.limits_headers(
          v_req_limit, v_req_used, v_tok_limit, v_tok_used, v_n, p_now));
    end if;
    return jsonb_build_object(
      'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
  end if;

  -- 6. Place the hold (the balance row is already locked by this transaction).
  with b as (
    update gateway.credit_balances set held = held + v_hold where account_id = v.account_id
  )
  insert into gateway.holds (
    account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
    completion_multiplier, count_key_windows, created_at
  ) values (
    v.account_id, v.key_id, coalesce(p_model, ''), v_hold, v_max_tokens, v_prompt, v.pm, v.cm,
    v.key_limited, p_now
  )
  returning id into v_hold_id;

  return jsonb_build_object(
    'ok', true,
    'hold_id', v_hold_id,
    'user_id', v.account_id,
    'key_id', v.key_id,
    'key_prefix', v.key_prefix,
    'held_credits', v_hold,
    'max_tokens', v_max_tokens,
    'balance', v_balance,
    'available_credits', v_balance - v_held - v_hold,
    -- What the charge will be computed from (gateway.credits_for), so that the function can report
    -- it without waiting for the settle. As text: numeric is exact, a JSON number is a double.
    'prompt_multiplier', v.pm::text,
    'completion_multiplier', v.cm::text,
    'limits', gateway.limits_headers(v_req_limit, v_req_used, v_tok_limit, v_tok_used, v_n, p_now)
  );
end
$$;
revoke execute on function gateway.begin_request(bytea, inet, text, text, integer, integer, timestamptz)
  from public;
grant execute on function gateway.begin_request(bytea, inet, text, text, integer, integer, timestamptz)
  to gateway_api;

create or replace function gateway.settle_request(
  p_hold_id bigint,
  p_model text,
  p_prompt_tokens integer,
  p_completion_tokens integer,
  p_upstream_cost numeric,
  p_status text,
  p_latency_ms integer,
  p_generation_id text,
  p_settled_by text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  h gateway.holds;
  v_prompt integer := coalesce(p_prompt_tokens, 0);
  v_completion integer := coalesce(p_completion_tokens, 0);
  v_tokens bigint;
  v_charge bigint;
  v_balance bigint;
  v_n integer;
begin
  if v_prompt < 0 or v_completion < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'token counts must be >= 0';
  end if;
  if p_settled_by is null or p_settled_by not in ('usage', 'generation', 'stream_count', 'sweeper') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'settled_by must be usage, generation, stream_count or sweeper';
  end if;

  -- Closing the hold is the exactly-once gate: only one caller can delete the row.
  delete from gateway.holds where id = p_hold_id returning * into h;
  if not found then
    return jsonb_build_object(
      'settled', false,
      'reason', case when exists (select from gateway.usage_records u where u.hold_id = p_hold_id)
                     then 'already_settled' else 'unknown_hold' end);
  end if;

  -- Priced as admitted (multipliers stored in the hold); an overrun is charged in full.
  v_charge := gateway.credits_for(v_prompt, v_completion, h.prompt_multiplier, h.completion_multiplier);
  with b as (
    update gateway.credit_balances
       set balance = balance - v_charge, held = held - h.amount
     where account_id = h.account_id
    returning balance
  ), l as (
    insert into gateway.ledger (account_id, kind, amount, balance_after, hold_id, reason, created_at)
    select h.account_id, 'charge', -v_charge, b.balance, h.id, coalesce(p_model, h.model), p_now
      from b
     where v_charge > 0
  ), u as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, prompt_tokens, completion_tokens, total_tokens,
      upstream_cost, credits_charged, credits_held, max_tokens, status, settled_by, latency_ms,
      generation_id, created_at, settled_at
    ) values (
      h.id, h.account_id, h.key_id, coalesce(p_model, h.model), v_prompt, v_completion,
      v_prompt + v_completion, p_upstream_cost, v_charge, h.amount, h.max_tokens, coalesce(p_status, 'success'),
      p_settled_by, p_latency_ms, p_generation_id, h.created_at, p_now
    )
  )
  select b.balance into v_balance from b;

  v_tokens := v_prompt + v_completion;
  if v_tokens > 0 then
    v_n := case when h.count_key_windows then 6 else 3 end;
    insert into gateway.rate_windows as w
      (subject_kind, subject_id, granularity, window_start, tokens)
    select g.kind, g.sid, g.gran, date_trunc(g.gran::text, p_now, 'UTC'), v_tokens
      from (values (1, 'account'::gateway.rate_subject, h.account_id, 'minute'::gateway.rate_granularity),
                   (2, 'account', h.account_id, 'hour'),
                   (3, 'account', h.account_id, 'day'),
                   (4, 'key', h.key_id, 'minute'),
                   (5, 'key', h.key_id, 'hour'),
                   (6, 'key', h.key_id, 'day')) g (i, kind, sid, gran)
     where g.i <= v_n
     order by g.i
    on conflict (subject_kind, subject_id, granularity, window_start)
      do update set tokens = w.tokens + excluded.tokens;
  end if;

  return jsonb_build_object(
    'settled', true,
    'hold_id', h.id,
    'credits_charged', v_charge,
    'held_credits', h.amount,
    'overrun', v_charge > h.amount,
    'balance_after', v_balance
  );
end
$$;
revoke execute on function gateway.settle_request(
  bigint, text, integer, integer, numeric, text, integer, text, text, timestamptz
) from public;
grant execute on function gateway.settle_request(
  bigint, text, integer, integer, numeric, text, integer, text, text, timestamptz
) to gateway_api;
