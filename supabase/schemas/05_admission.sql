-- Admission: a chat request is admitted (key, fences, rate windows, credits, request cap) and its
-- worst-case cost held, one at a time (begin_request), in batches (begin_requests), or ahead of the
-- requests of a busy caller (reserve_admissions, given back by cancel_admissions). Every rule is in
-- begin_request; the others call it or replay it exactly. Lock order and proofs: docs/SQL-NOTES.md.

-- Open holds only: closing a hold (settle, void, expiry, cancel) deletes its row, so only one
-- caller can close it. No CHECKs, no foreign keys: docs/SQL-NOTES.md, "The request path".
create table gateway.holds (
  id bigint generated always as identity primary key,
  account_id bigint not null,
  key_id bigint not null,
  model text not null,
  amount bigint not null,
  max_tokens integer not null,
  prompt_estimate integer not null,
  prompt_multiplier numeric not null,
  completion_multiplier numeric not null,
  count_key_windows boolean not null,
  created_at timestamptz not null,
  reserved boolean not null default false
) with (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
comment on table gateway.holds is
  'Open holds only: credits reserved for a request in flight (worst case: prompt estimate + '
  'max_tokens, priced at admission). settle/void/the sweeper delete the row and write its usage record.';
comment on column gateway.holds.reserved is
  'Admitted ahead of its request by gateway.reserve_admissions. Only such holds can be cancelled '
  '(gateway.cancel_admissions); settle, void and the sweeper close them like any other.';
alter table gateway.holds enable row level security;
create policy no_api_access on gateway.holds
  for all to anon, authenticated using (false) with check (false);

-- Admits one request (key and fences, rate windows, credits, request cap) and holds its worst
-- case, or refuses with nothing counted or held. Available credits never go below zero.
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

-- Many admissions in one transaction, each by begin_request, made in account order (no deadlock
-- with another batch) and answered in the order given. An element that raises aborts the batch.
create or replace function gateway.begin_requests(p_batch jsonb, p_now timestamptz default now())
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
      message = 'p_batch must be a JSON array of begin_request arguments';
  end if;
  -- The hash is the one argument begin_request cannot check (any bytea is a possible hash), and
  -- decode() would quote a bad value in its error: checked here, with a message of our own.
  if exists (select from jsonb_array_elements(p_batch) b (v)
              where jsonb_typeof(b.v -> 'key_hash') is distinct from 'string'
                 or (b.v ->> 'key_hash') !~ '^[0-9a-f]{64}$') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'every element needs key_hash: the SHA-256 of the key as 64 lower-case hex digits';
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
    v_results[e.ord] := gateway.begin_request(
      e.h,
      (e.v ->> 'client_ip')::inet,
      e.v ->> 'referrer',
      e.v ->> 'model',
      (e.v ->> 'max_tokens')::integer,
      (e.v ->> 'prompt_tokens')::integer,
      p_now
    );
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.begin_requests(jsonb, timestamptz) from public;
grant execute on function gateway.begin_requests(jsonb, timestamptz) to gateway_api;

-- Admits up to p_count requests of one context ahead of them, exactly those (and with the same
-- holds and answers) that p_count begin_request calls would admit, and marks their holds reserved.
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

-- Gives back reserved admissions never used, as if never made (no usage record, no ledger row); ids
-- that are not open reserved holds are skipped. Returns how many it cancelled.
create or replace function gateway.cancel_admissions(p_hold_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
  v_account bigint;
  v_holds gateway.holds[];
  v_count integer := 0;
begin
  for v_account in
    select distinct h.account_id
      from gateway.holds h
     where h.id = any(p_hold_ids) and h.reserved
     order by h.account_id
  loop
    -- The exactly-once gate, as in settle_request: only one caller can delete a hold. One closed
    -- meanwhile (settled, voided, expired, cancelled) is no longer found.
    with d as (
      delete from gateway.holds h
       where h.id = any(p_hold_ids) and h.reserved and h.account_id = v_account
      returning h as hold
    )
    select array_agg(d.hold) into v_holds from d;
    continue when v_holds is null;
    v_count := v_count + cardinality(v_holds);

    if exists (select from unnest(v_holds) h where h.count_key_windows) then
      perform
        from gateway.rate_counters c
        join (select 'account'::gateway.rate_subject as kind, v_account as sid
              union
              select 'key', h.key_id from unnest(v_holds) h where h.count_key_windows) s
          on c.subject_kind = s.kind and c.subject_id = s.sid
       order by c.subject_kind, c.subject_id
         for update of c;
    end if;
    -- Compared with the row's window starts as updated (a concurrent admission may have rolled a
    -- window over before this locked the row), not as read before.
    update gateway.rate_counters c set
      minute_requests = greatest(c.minute_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('minute', t.at, 'UTC') = c.minute_start), 0),
      hour_requests = greatest(c.hour_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('hour', t.at, 'UTC') = c.hour_start), 0),
      day_requests = greatest(c.day_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('day', t.at, 'UTC') = c.day_start), 0)
      from (select 'account'::gateway.rate_subject as kind, v_account as sid,
                   array_agg(h.created_at) as created
              from unnest(v_holds) h
            union all
            select 'key', h.key_id, array_agg(h.created_at)
              from unnest(v_holds) h
             where h.count_key_windows
             group by h.key_id) s
     where c.subject_kind = s.kind and c.subject_id = s.sid;

    update gateway.credit_balances b
       set held = b.held - (select sum(h.amount) from unnest(v_holds) h)
     where b.account_id = v_account;

    update gateway.key_counters c
       set requests_used = greatest(c.requests_used - s.n, 0)
      from (select h.key_id, count(*) as n from unnest(v_holds) h group by h.key_id) s
     where c.key_id = s.key_id;
  end loop;
  return v_count;
end
$$;
revoke execute on function gateway.cancel_admissions(bigint[]) from public;
grant execute on function gateway.cancel_admissions(bigint[]) to gateway_api;
