-- A refusal for a request window that reserved admissions alone have filled says to retry in a
-- second, not when the window resets. Reserved admissions count from the moment they are
-- reserved; a worker retired by the edge runtime keeps its reservations until it gives them back
-- (within a second or two), so a client at 70 of a 90-a-day limit was told to come back tomorrow
-- (supabase/tests/http/reservations.test.ts).

create or replace function gateway.admit(
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
  p_now timestamptz
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
  pc record;
  hf record;
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
  v_affordable boolean;
  v_refused integer;
  v_refused_kind text;
  v_retry integer;
  v_reset integer;
  v_web integer;
  v_prompt bigint;
  v_want bigint;
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
  v_dearest jsonb;
  v_candidates jsonb;
  r1 bigint; r2 bigint; r3 bigint; t1 bigint; t2 bigint; t3 bigint;
  r4 bigint; r5 bigint; r6 bigint; t4 bigint; t5 bigint; t6 bigint;
  v_reserved_a bigint;
  v_reserved_k bigint;
  v_soon boolean;
begin
  -- 1. The key, its account, balance, limits and the settings: one statement of unique-index
  --    probes, no locks, by the hash of the key's current secret. If no key has this one, it may be
  --    the previous secret of a key within its grace: then the same statement again, with that
  --    key's current hash (an unknown key pays the second probe; a known one no longer pays for
  --    the previous-secret probe).
  loop
    select k.id as key_id, k.account_id, k.key_prefix, k.is_active,
           k.deleted_at is not null as deleted, k.expires_at, k.permissions, k.allowed_ips,
           k.allowed_referrers, k.max_requests,
           c.requests_used, a.is_active as account_active, b.balance, b.held, s.default_max_tokens,
           s.pricing_mode, s.markup_percent, s.usd_per_credit, s.web_result_usd,
           s.refuse_unprofitable_models, s.image_part_tokens, s.audio_part_tokens,
           s.file_part_tokens, s.web_result_tokens, s.hold_lease_seconds,
           coalesce(r.requests_per_minute, s.requests_per_minute) as a_rpm,
           coalesce(r.requests_per_hour, s.requests_per_hour) as a_rph,
           coalesce(r.requests_per_day, s.requests_per_day) as a_rpd,
           coalesce(r.tokens_per_minute, s.tokens_per_minute) as a_tpm,
           coalesce(r.tokens_per_hour, s.tokens_per_hour) as a_tph,
           coalesce(r.tokens_per_day, s.tokens_per_day) as a_tpd,
           kl.key_id is not null as key_limited,
           kl.requests_per_minute as k_rpm, kl.requests_per_hour as k_rph,
           kl.requests_per_day as k_rpd, kl.tokens_per_minute as k_tpm,
           kl.tokens_per_hour as k_tph, kl.tokens_per_day as k_tpd
      into v
      from gateway.api_keys k
      join gateway.key_counters c on c.key_id = k.id
      join gateway.accounts a on a.id = k.account_id
      join gateway.credit_balances b on b.account_id = k.account_id
      join gateway.system_settings s on s.id
      left join gateway.rate_limits r on r.account_id = k.account_id
      left join gateway.key_rate_limits kl on kl.key_id = k.id
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

  -- The prices of the candidates: a model that cannot be priced is refused before anything counts.
  pc := gateway.price_candidates(
    p_models, v.pricing_mode, v.markup_percent, v.web_result_usd, v.usd_per_credit,
    v.refuse_unprofitable_models, false);
  if pc.refusal is not null then
    return jsonb_build_object(
      'ok', false, 'reason', pc.refusal, 'model', pc.refused_model,
      'message', case pc.refusal
        when 'model_not_found' then format(
          'Model %s is not in the model catalog (a :free variant only if the catalog lists it)',
          pc.refused_model)
        when 'pricing_unavailable' then
          'The model catalog has not been loaded yet, so no request can be priced; retry shortly'
        else format('Model %s is not available on this gateway', pc.refused_model) end);
  end if;
  -- The worst prompt: the bound of its text, an allowance per part whose bytes it does not see and
  -- per web result (:online searches as the web plugin's default, 5 results).
  v_web := greatest(p_web_results,
                    case when array_to_string(p_models, chr(1)) || chr(1) like '%:online' || chr(1) || '%'
                         then 5 else 0 end);
  v_prompt := p_prompt_bound + p_images::bigint * v.image_part_tokens
              + p_audio::bigint * v.audio_part_tokens + p_files::bigint * v.file_part_tokens
              + v_web::bigint * v.web_result_tokens;
  if v_prompt > 2147483647 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the request is too large to be priced (its prompt bound exceeds 2^31 tokens)';
  end if;
  v_want := coalesce(p_max_tokens, v.default_max_tokens);
  -- On the unlocked balance: whether one completion token is affordable at all (else it is refused
  -- below, rate_limited or insufficient_credits, without writing anything).
  hf := gateway.hold_for(
    pc.dearest, v.usd_per_credit, v_prompt, v_web, p_images, v_want, v.balance - v.held);
  v_affordable := v.balance > 0 and hf.max_tokens >= 1;

  v_n := case when v.key_limited then 6 else 3 end;
  v_req_limit := array[v.a_rpm, v.a_rph, v.a_rpd, v.k_rpm, v.k_rph, v.k_rpd];
  v_tok_limit := array[v.a_tpm, v.a_tph, v.a_tpd, v.k_tpm, v.k_tph, v.k_tpd];

  -- 2. Count the request, if affordable. Per subject, an UPDATE whose WHERE checks every limit
  --    (re-checked on the row under its lock when a concurrent count changed it); when it counts
  --    nothing (no row yet, or a limit refuses), the upsert, whose DO UPDATE … WHERE makes the same
  --    check and, refused, leaves the row locked for the refusal's read below. A zero limit refuses
  --    even an empty window: then nothing is inserted either. The account's row is locked before
  --    the key's. The window-rollover case is written out: as a function it would cost ~23 µs more
  --    per UPDATE (bench/probes/rollover-helper.sql).
  if v_affordable then
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
        -- Reserved admissions are counted from the moment they are reserved, and those a worker
        -- does not use go back within a second or two (given back, or released by the server):
        -- another worker's, for one (a retired worker keeps its reservations until it gives them
        -- back). When they alone make the windows full, the refusal says to retry in a second,
        -- not when the window resets — hours away for a day window.
        select count(*), count(*) filter (where h.key_id = v.key_id and h.count_key_windows)
          into v_reserved_a, v_reserved_k
          from gateway.holds h
         where h.account_id = v.account_id and h.reserved;
        if v_reserved_a > 0 then
          v_soon := true;
          for i in 1 .. v_n loop
            if (v_tok_limit[i] is not null and v_tok_used[i] >= v_tok_limit[i])
               or (v_req_limit[i] is not null
                   and v_req_used[i] - case when i <= 3 then v_reserved_a else v_reserved_k end
                       >= v_req_limit[i]) then
              v_soon := false;
            end if;
          end loop;
          if v_soon then
            v_retry := 1;
          end if;
        end if;
        v_answer := jsonb_build_object(
          'ok', false, 'reason', 'rate_limited', 'message', gateway.refusal_message('rate_limited'),
          'retry_after_seconds', v_retry,
          'window', v_refused_kind || '_per_' || c_names[v_refused],
          'scope', case when v_refused <= 3 then 'account' else 'key' end);
        exit decided;
      end if;
      if v_affordable then
        -- Not counted, yet no window is exhausted: cannot be (the refusing row is locked).
        raise exception 'rate counters of account % changed under their lock', v.account_id;
      end if;
      v_balance := v.balance;
      v_held := v.held;
    else
      v_req_used := array[r1, r2, r3, r4, r5, r6];
      v_tok_used := array[t1, t2, t3, t4, t5, t6];

      -- 3. Credits, decided on the locked balance row: the largest max_tokens the available
      --    credits afford (capped by the request or the default), and its worst case as the hold.
      select b.balance, b.held into v_balance, v_held
        from gateway.credit_balances b where b.account_id = v.account_id
         for update;
      if v_balance is distinct from v.balance or v_held is distinct from v.held then
        hf := gateway.hold_for(
          pc.dearest, v.usd_per_credit, v_prompt, v_web, p_images, v_want, v_balance - v_held);
      end if;
      v_max_tokens := hf.max_tokens;
      if v_max_tokens < 1 or v_balance <= 0 then
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
        if v_reason <> 'insufficient_credits' then
          return jsonb_build_object(
            'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
        end if;
        v_req_used := array[r1 - 1, r2 - 1, r3 - 1, r4 - 1, r5 - 1, r6 - 1];
      end if;
    end if;
    if not v_counted or v_reason is not null then
      -- Refused for credits: say by how much the worst case of one completion token exceeds
      -- what the account can spend.
      v_answer := jsonb_build_object(
        'ok', false, 'reason', 'insufficient_credits',
        'message', case
          when v_balance <= 0 then format(
            'Insufficient credits: the balance is %s; add credits to continue', v_balance)
          else format(
            'Insufficient credits: this request''s worst case with one completion token is %s '
            'credits (its prompt of up to %s tokens at the prices of %s), %s more than the %s '
            'available; shorten the prompt or add credits',
            hf.needed, v_prompt, array_to_string(p_models, ', '),
            hf.needed - (v_balance - v_held), v_balance - v_held) end,
        'balance', v_balance, 'available_credits', v_balance - v_held,
        'needed_credits', hf.needed);
      exit decided;
    end if;
    v_hold := hf.amount;

    -- 5. Place the hold (the balance row is already locked by this transaction).
    with b as (
      update gateway.credit_balances set held = held + v_hold where account_id = v.account_id
    )
    insert into gateway.holds (
      account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
      completion_multiplier, count_key_windows, created_at, prices, dearest, pricing_mode,
      usd_per_credit, facts, expires_at
    ) values (
      v.account_id, v.key_id, p_models[1], v_hold, v_max_tokens, v_prompt,
      (pc.dearest).prompt_multiplier, (pc.dearest).completion_multiplier, v.key_limited, p_now,
      case when cardinality(pc.prices) > 1 then pc.prices end, pc.dearest, v.pricing_mode,
      v.usd_per_credit,
      jsonb_build_object('prompt_bound', p_prompt_bound, 'images', p_images, 'audio', p_audio,
                         'files', p_files, 'web_results', v_web,
                         'lifetime_seconds', p_lifetime_seconds),
      p_now + make_interval(secs => v.hold_lease_seconds)
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

  v_dearest := gateway.price_json(pc.dearest);
  if cardinality(pc.prices) = 1 then
    v_candidates := jsonb_build_array(v_dearest);
  else
    select jsonb_agg(gateway.price_json(x)) into v_candidates from unnest(pc.prices) x;
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
    'expires_at', p_now + make_interval(secs => v.hold_lease_seconds),
    -- What the settle will charge by (gateway.charge at the served candidate's prices), so that
    -- the function can report it without waiting: every number as exact decimal text.
    'pricing', jsonb_build_object(
      'mode', v.pricing_mode,
      'usd_per_credit', v.usd_per_credit::text,
      'candidates', v_candidates,
      'dearest', v_dearest),
    'limits', v_limits
  );
end
$$;

revoke execute on function gateway.admit(bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, timestamptz) from public;
