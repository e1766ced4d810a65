-- The request path, leaner: begin_request and settle_request cost less Postgres CPU per call, with
-- the same results, refusal reasons, locks and lock order as in
-- 20261125144653_rate_counters_one_row_per_subject. Under load the gateway is CPU-bound and these
-- two calls are the whole database cost of a request. What each change saves was measured alone,
-- begin and settle timed inside the backend over interleaved runs (see the commit message):
--
-- - gateway.credits_for in plpgsql. As a SQL function with SET clauses it was parsed and planned
--   afresh on every settle (its cache lives in the calling expression's state, which plpgsql
--   rebuilds in each transaction); plpgsql compiles a function once per session. Same formula,
--   still the one definition of a charge. (The same reason made window_reset_seconds plpgsql.)
-- - Rate counters: an UPDATE first, the upsert only when it counts nothing. The upsert pays a
--   conflict check in the index, a lock of the row (WAL-logged), then the update; the row is there
--   on every count but a subject's first of the day. begin_request's UPDATE … WHERE checks the
--   limits as the upsert's DO UPDATE … WHERE does (a concurrent change is re-checked on the locked
--   row); when it counts nothing, the unchanged upsert runs, counting or refusing with the row
--   locked, as before. In settle_request, for the account's row alone (no key windows); the key
--   case keeps the upsert, which orders its two rows.
-- - The key by the hash of its current secret, joined directly, instead of through two subqueries
--   (the previous-secret one was set up on every call and almost never run): the previous secret
--   within its grace is looked for only when no key has this one, then the same statement runs with
--   that key's current hash.
-- - The x-ratelimit-* limits computed inline, once, for the admission and the refusals that report
--   them, instead of gateway.limits_headers and two gateway.window_reset_seconds calls: every call
--   of a function with SET search_path switches the setting in and out. limits_headers had no other
--   caller and is dropped.
-- - settle_request also turns bitmap scans off: holds is a table of a few live rows on many pages,
--   where the planner prefers a bitmap heap scan to the index scan for the hold's delete (and, with
--   seq scans on, a seq scan: why enable_seqscan is off in both functions).
--
-- Tried and not kept, for no measurable gain or a loss: folding the balance row's
-- SELECT … FOR UPDATE into the hold's UPDATE, or the key cap's UPDATE into the hold's statement
-- (one statement instead of three or two: the larger plan costs what the statements saved); settle
-- in one statement (hold delete, counters, charge, ledger, usage chained by data-modifying CTEs:
-- some 12% slower than separate statements); dropping enable_seqscan (the hold's delete becomes a
-- seq scan: settle 30% slower).

-- Credits for a request's tokens, priced with the multipliers its hold stored at admission. An
-- overrun is charged in full (no cap at the hold). plpgsql rather than SQL: a SQL function with SET
-- clauses is planned afresh on every call, once per settle.
create or replace function gateway.credits_for(
  p_prompt_tokens bigint,
  p_completion_tokens bigint,
  p_prompt_multiplier numeric,
  p_completion_multiplier numeric
)
returns bigint
language plpgsql
immutable
security definer
set search_path = ''
as $$
begin
  return ceil(p_prompt_tokens * p_prompt_multiplier
              + p_completion_tokens * p_completion_multiplier)::bigint;
end
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
  v_hash bytea := p_key_hash;
  v_reason text;
  v_answer jsonb;
  v_limits jsonb;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
  v_n integer;
  v_req_limit bigint[];
  v_tok_limit bigint[];
  v_req_used bigint[];
  v_tok_used bigint[];
  v_counted boolean := false;
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
  v_rem bigint;
  v_req_at integer;
  v_req_rem bigint;
  v_tok_at integer;
  v_tok_rem bigint;
  r1 bigint; r2 bigint; r3 bigint; t1 bigint; t2 bigint; t3 bigint;
  r4 bigint; r5 bigint; r6 bigint; t4 bigint; t5 bigint; t6 bigint;
begin
  if p_max_tokens < 1 or v_prompt < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'max_tokens must be >= 1 and prompt_tokens >= 0';
  end if;

  -- 1. The key, its account, balance, limits and the model's price: one statement of unique-index
  --    probes, no locks, by the hash of the key's current secret. If no key has this one, it may be
  --    the previous secret of a key within its grace: then the same statement again, with that
  --    key's current hash (an unknown key pays the second probe; a known one no longer pays for
  --    the previous-secret probe).
  loop
    select k.id as key_id, k.account_id, k.key_prefix, k.is_active,
           k.deleted_at is not null as deleted, k.expires_at, k.permissions, k.allowed_ips,
           k.allowed_referrers, k.max_requests,
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
     where k.key_hash = v_hash;
    exit when found or v_hash is distinct from p_key_hash;
    select k2.key_hash into v_hash
      from gateway.api_keys k2
     where k2.previous_key_hash = p_key_hash and k2.previous_valid_until > p_now
       and not exists (select from gateway.api_keys k1 where k1.key_hash = p_key_hash);
    exit when not found;
  end loop;

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

  v_n := case when v.key_limited then 6 else 3 end;
  v_req_limit := array[v.a_rpm, v.a_rph, v.a_rpd, v.k_rpm, v.k_rph, v.k_rpd];
  v_tok_limit := array[v.a_tpm, v.a_tph, v.a_tpd, v.k_tpm, v.k_tph, v.k_tpd];
  v_prompt_cost := v_prompt * v.pm;

  -- 2. Count the request, if the unlocked balance can afford one completion token at all (else it
  --    is refused below, rate_limited or insufficient_credits, without writing anything). Per
  --    subject, an UPDATE whose WHERE checks every limit (re-checked on the row under its lock when
  --    a concurrent count changed it); when it counts nothing (no row yet, or a limit refuses), the
  --    upsert, whose DO UPDATE … WHERE makes the same check and, refused, leaves the row locked for
  --    the refusal's read below. A zero limit refuses even an empty window: then nothing is
  --    inserted either. The account's row is locked before the key's.
  if v.balance > 0 and v.balance - v.held - v_prompt_cost >= v.cm then
    update gateway.rate_counters c set
      minute_start = greatest(c.minute_start, v_minute),
      minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
      minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
      hour_start = greatest(c.hour_start, v_hour),
      hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
      hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
      day_start = greatest(c.day_start, v_day),
      day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
      day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
    where c.subject_kind = 'account' and c.subject_id = v.account_id
      and (v.a_rpm is null
           or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.a_rpm)
      and (v.a_rph is null
           or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.a_rph)
      and (v.a_rpd is null
           or case when c.day_start >= v_day then c.day_requests else 0 end < v.a_rpd)
      and (v.a_tpm is null
           or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.a_tpm)
      and (v.a_tph is null
           or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.a_tph)
      and (v.a_tpd is null
           or case when c.day_start >= v_day then c.day_tokens else 0 end < v.a_tpd)
    returning c.minute_requests, c.hour_requests, c.day_requests,
              c.minute_tokens, c.hour_tokens, c.day_tokens
      into r1, r2, r3, t1, t2, t3;
    v_counted := found;
    if not v_counted then
      insert into gateway.rate_counters as c (
        subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
        hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
      select 'account', v.account_id, v_minute, 1, 0, v_hour, 1, 0, v_day, 1, 0
       where coalesce(least(v.a_rpm, v.a_rph, v.a_rpd, v.a_tpm, v.a_tph, v.a_tpd), 1) > 0
      on conflict (subject_kind, subject_id) do update set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
      where (v.a_rpm is null
             or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.a_rpm)
        and (v.a_rph is null
             or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.a_rph)
        and (v.a_rpd is null
             or case when c.day_start >= v_day then c.day_requests else 0 end < v.a_rpd)
        and (v.a_tpm is null
             or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.a_tpm)
        and (v.a_tph is null
             or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.a_tph)
        and (v.a_tpd is null
             or case when c.day_start >= v_day then c.day_tokens else 0 end < v.a_tpd)
      returning c.minute_requests, c.hour_requests, c.day_requests,
                c.minute_tokens, c.hour_tokens, c.day_tokens
        into r1, r2, r3, t1, t2, t3;
      v_counted := found;
    end if;

    if v_counted and v.key_limited then
      update gateway.rate_counters c set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
      where c.subject_kind = 'key' and c.subject_id = v.key_id
        and (v.k_rpm is null
             or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.k_rpm)
        and (v.k_rph is null
             or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.k_rph)
        and (v.k_rpd is null
             or case when c.day_start >= v_day then c.day_requests else 0 end < v.k_rpd)
        and (v.k_tpm is null
             or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.k_tpm)
        and (v.k_tph is null
             or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.k_tph)
        and (v.k_tpd is null
             or case when c.day_start >= v_day then c.day_tokens else 0 end < v.k_tpd)
      returning c.minute_requests, c.hour_requests, c.day_requests,
                c.minute_tokens, c.hour_tokens, c.day_tokens
        into r4, r5, r6, t4, t5, t6;
      v_counted := found;
      if not v_counted then
        insert into gateway.rate_counters as c (
          subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
          hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
        select 'key', v.key_id, v_minute, 1, 0, v_hour, 1, 0, v_day, 1, 0
         where coalesce(least(v.k_rpm, v.k_rph, v.k_rpd, v.k_tpm, v.k_tph, v.k_tpd), 1) > 0
        on conflict (subject_kind, subject_id) do update set
          minute_start = greatest(c.minute_start, v_minute),
          minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
          minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
          hour_start = greatest(c.hour_start, v_hour),
          hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
          hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
          day_start = greatest(c.day_start, v_day),
          day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
          day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
        where (v.k_rpm is null
               or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.k_rpm)
          and (v.k_rph is null
               or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.k_rph)
          and (v.k_rpd is null
               or case when c.day_start >= v_day then c.day_requests else 0 end < v.k_rpd)
          and (v.k_tpm is null
               or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.k_tpm)
          and (v.k_tph is null
               or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.k_tph)
          and (v.k_tpd is null
               or case when c.day_start >= v_day then c.day_tokens else 0 end < v.k_tpd)
        returning c.minute_requests, c.hour_requests, c.day_requests,
                  c.minute_tokens, c.hour_tokens, c.day_tokens
          into r4, r5, r6, t4, t5, t6;
        v_counted := found;
      end if;
      if not v_counted then
        -- Refused by the key's limits: take back the account's count (its row is still locked).
        update gateway.rate_counters c
           set minute_requests = c.minute_requests - 1, hour_requests = c.hour_requests - 1,
               day_requests = c.day_requests - 1
         where c.subject_kind = 'account' and c.subject_id = v.account_id;
      end if;
    end if;
  end if;

  -- Steps 2 to 5 decide; a refusal that reports the windows leaves with its answer in v_answer.
  <<decided>>
  begin
    if not v_counted then
      -- Refused by a limit, or by the credits: read the counts (those of the refusing subject are
      -- locked) to say which, as the old pre-read did: a window is exhausted when used >= limit,
      -- and the refusal names the one that resets last.
      select case when c.minute_start >= v_minute then c.minute_requests else 0 end,
             case when c.hour_start >= v_hour then c.hour_requests else 0 end,
             case when c.day_start >= v_day then c.day_requests else 0 end,
             case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
             case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
             case when c.day_start >= v_day then c.day_tokens else 0 end
        into r1, r2, r3, t1, t2, t3
        from gateway.rate_counters c
       where c.subject_kind = 'account' and c.subject_id = v.account_id;
      if v.key_limited then
        select case when c.minute_start >= v_minute then c.minute_requests else 0 end,
               case when c.hour_start >= v_hour then c.hour_requests else 0 end,
               case when c.day_start >= v_day then c.day_requests else 0 end,
               case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
               case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
               case when c.day_start >= v_day then c.day_tokens else 0 end
          into r4, r5, r6, t4, t5, t6
          from gateway.rate_counters c
         where c.subject_kind = 'key' and c.subject_id = v.key_id;
      end if;
      v_req_used := array[coalesce(r1, 0), coalesce(r2, 0), coalesce(r3, 0),
                          coalesce(r4, 0), coalesce(r5, 0), coalesce(r6, 0)];
      v_tok_used := array[coalesce(t1, 0), coalesce(t2, 0), coalesce(t3, 0),
                          coalesce(t4, 0), coalesce(t5, 0), coalesce(t6, 0)];
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
        v_answer := jsonb_build_object(
          'ok', false, 'reason', 'rate_limited', 'message', gateway.refusal_message('rate_limited'),
          'retry_after_seconds', v_retry,
          'window', v_refused_kind || '_per_' || c_names[v_refused],
          'scope', case when v_refused <= 3 then 'account' else 'key' end);
        exit decided;
      end if;
      if v.balance > 0 and v.balance - v.held - v_prompt_cost >= v.cm then
        -- Not counted, yet no window is exhausted: cannot be (the refusing row is locked).
        raise exception 'rate counters of account % changed under their lock', v.account_id;
      end if;
      v_answer := jsonb_build_object(
        'ok', false, 'reason', 'insufficient_credits',
        'message', gateway.refusal_message('insufficient_credits'),
        'balance', v.balance, 'available_credits', v.balance - v.held);
      exit decided;
    end if;

    v_req_used := array[r1, r2, r3, r4, r5, r6];
    v_tok_used := array[t1, t2, t3, t4, t5, t6];

    -- 3. Credits, decided on the locked balance row: the largest max_tokens the available credits
    --    afford (capped by the request or the default), and its worst-case cost as the hold.
    select b.balance, b.held into v_balance, v_held
      from gateway.credit_balances b where b.account_id = v.account_id
       for update;
    v_max_tokens := least(coalesce(p_max_tokens, v.default_max_tokens),
                          floor((v_balance - v_held - v_prompt_cost) / v.cm));
    if v_max_tokens is null or v_max_tokens < 1 or v_balance <= 0 then
      v_reason := 'insufficient_credits';
    else
      -- 4. The key's request cap, atomically (a concurrent request may have taken the last one).
      update gateway.key_counters c
         set requests_used = c.requests_used + 1, last_used_at = p_now
       where c.key_id = v.key_id
         and (v.max_requests is null or c.requests_used < v.max_requests);
      if not found then
        v_reason := 'key_request_cap';
      end if;
    end if;
    if v_reason is not null then
      -- Refused after counting: take the count back (both rows are still locked by this
      -- transaction).
      update gateway.rate_counters c
         set minute_requests = c.minute_requests - 1, hour_requests = c.hour_requests - 1,
             day_requests = c.day_requests - 1
       where (c.subject_kind = 'account' and c.subject_id = v.account_id)
          or (v.key_limited and c.subject_kind = 'key' and c.subject_id = v.key_id);
      if v_reason = 'insufficient_credits' then
        v_req_used := array[r1 - 1, r2 - 1, r3 - 1, r4 - 1, r5 - 1, r6 - 1];
        v_answer := jsonb_build_object(
          'ok', false, 'reason', 'insufficient_credits',
          'message', gateway.refusal_message('insufficient_credits'),
          'balance', v_balance, 'available_credits', v_balance - v_held);
        exit decided;
      end if;
      return jsonb_build_object(
        'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
    end if;
    v_hold := ceil(v_prompt_cost + v_max_tokens * v.cm);

    -- 5. Place the hold (the balance row is already locked by this transaction).
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
  end decided;

  -- The x-ratelimit-* view of the windows counted (admitted) or read (refused): for requests and
  -- for tokens, the window with the least remaining, the first of them on a tie, and the seconds
  -- until it resets, computed as gateway.window_reset_seconds does (windows are aligned to the
  -- epoch). Inline rather than a function per window: a call costs a search_path switch.
  for i in 1 .. v_n loop
    if v_req_limit[i] is not null then
      v_rem := greatest(v_req_limit[i] - v_req_used[i], 0);
      if v_req_rem is null or v_rem < v_req_rem then
        v_req_rem := v_rem;
        v_req_at := i;
      end if;
    end if;
    if v_tok_limit[i] is not null then
      v_rem := greatest(v_tok_limit[i] - v_tok_used[i], 0);
      if v_tok_rem is null or v_rem < v_tok_rem then
        v_tok_rem := v_rem;
        v_tok_at := i;
      end if;
    end if;
  end loop;
  v_limits := jsonb_build_object(
    'requests', case when v_req_at is not null then jsonb_build_object(
      'limit', v_req_limit[v_req_at], 'remaining', v_req_rem,
      'reset_seconds', greatest(1, ceil(
        case (v_req_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end
        - mod(extract(epoch from p_now),
              case (v_req_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end)))::integer)
    end,
    'tokens', case when v_tok_at is not null then jsonb_build_object(
      'limit', v_tok_limit[v_tok_at], 'remaining', v_tok_rem,
      'reset_seconds', greatest(1, ceil(
        case (v_tok_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end
        - mod(extract(epoch from p_now),
              case (v_tok_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end)))::integer)
    end);
  if v_answer is not null then
    return v_answer || jsonb_build_object('limits', v_limits);
  end if;

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
    'limits', v_limits
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
set enable_bitmapscan = off
as $$
declare
  h gateway.holds;
  v_prompt integer := coalesce(p_prompt_tokens, 0);
  v_completion integer := coalesce(p_completion_tokens, 0);
  v_tokens bigint;
  v_charge bigint;
  v_balance bigint;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
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

  -- Tokens into the subjects' windows first (one upsert: the account's row, then the key's when it
  -- has its own limits), then the charge: counter rows before the balance row, as in begin_request.
  v_tokens := v_prompt + v_completion;
  if v_tokens > 0 then
    -- The account's row alone (no key windows) is there but on a subject's first count of the day
    -- after the purge: an UPDATE, cheaper than the upsert's speculative insertion, lock and update.
    if not h.count_key_windows then
      update gateway.rate_counters c set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests else 0 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens + v_tokens
                             else v_tokens end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests else 0 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens + v_tokens else v_tokens end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests else 0 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens + v_tokens else v_tokens end
       where c.subject_kind = 'account' and c.subject_id = h.account_id;
    end if;
    if h.count_key_windows or not found then
      insert into gateway.rate_counters as c (
        subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
        hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
      select g.kind, g.sid, v_minute, 0, v_tokens, v_hour, 0, v_tokens, v_day, 0, v_tokens
        from (values (1, 'account'::gateway.rate_subject, h.account_id),
                     (2, 'key', h.key_id)) g (i, kind, sid)
       where g.i = 1 or h.count_key_windows
       order by g.i
      on conflict (subject_kind, subject_id) do update set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests else 0 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens + v_tokens
                             else v_tokens end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests else 0 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens + v_tokens else v_tokens end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests else 0 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens + v_tokens else v_tokens end;
    end if;
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

-- begin_request computes the x-ratelimit-* view itself; nothing else called this.
drop function gateway.limits_headers(bigint[], bigint[], bigint[], bigint[], integer, timestamptz);
