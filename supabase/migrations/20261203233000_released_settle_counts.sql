-- A released reservation's late settle counts its request again: the release took it out of the
-- request windows and the key's requests_used (as cancel_admissions does), and the request had run,
-- so it escaped the key's cap and the windows by one (the attack on batched reservations saw
-- requests_used 42 against 43 usage records).

create or replace function gateway.settle_hold(
  p_hold_id bigint,
  p_model text,
  p_prompt bigint,
  p_completion bigint,
  p_cached bigint,
  p_cache_write bigint,
  p_reasoning bigint,
  p_web_searches bigint,
  p_images bigint,
  p_cost numeric,
  p_status text,
  p_latency_ms integer,
  p_generation_id text,
  p_settled_by text,
  p_now timestamptz
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
  u gateway.usage_records;
  rr gateway.released_reservations;
  v_late boolean := false;
  v_account bigint;
  v_key bigint;
  v_key_windows boolean;
  v_prices gateway.model_price[];
  v_dearest gateway.model_price;
  v_mode text;
  v_usd_per_credit numeric;
  v_held bigint;
  v_price gateway.model_price;
  ch record;
  v_credits bigint;
  v_usd numeric;
  v_tokens bigint;
  v_balance bigint;
  v_overrun bigint;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
begin
  if least(p_prompt, p_completion, p_cached, p_cache_write, p_reasoning, p_web_searches, p_images) < 0
     or greatest(p_prompt, p_completion, p_cached, p_cache_write, p_reasoning, p_web_searches,
                 p_images) > 2147483647 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'token counts must be from 0 to 2147483647';
  end if;
  if p_cost < 0 or p_cost >= 1000000 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'cost must be a non-negative number of USD below 1000000';
  end if;
  if p_settled_by is null or p_settled_by not in ('usage', 'generation', 'stream_count', 'sweeper') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'settled_by must be usage, generation, stream_count or sweeper';
  end if;

  -- Closing the hold is the exactly-once gate: only one caller can delete the row.
  delete from gateway.holds where id = p_hold_id returning * into h;
  if found then
    v_account := h.account_id;
    v_key := h.key_id;
    v_key_windows := h.count_key_windows;
    v_prices := h.prices;
    v_dearest := h.dearest;
    v_mode := h.pricing_mode;
    v_usd_per_credit := h.usd_per_credit;
    v_held := h.amount;
  else
    -- Expired by the sweeper while its request still ran: the money is still owed. Its record is
    -- the gate now (locked; a second late settle finds it settled).
    select * into u from gateway.usage_records r where r.hold_id = p_hold_id for update;
    if not found then
      -- A reserved admission the server released as unused while a request had it (its worker
      -- could not say so in time): recorded as the sweeper records an expired hold, then charged
      -- late like one, and counted again below (the release uncounted it).
      delete from gateway.released_reservations r where r.id = p_hold_id returning r.* into rr;
      if not found then
        return jsonb_build_object('settled', false, 'reason', 'unknown_hold');
      end if;
      insert into gateway.usage_records (
        hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
        settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, candidates,
        facts, generation_id
      ) values (
        rr.id, rr.account_id, rr.key_id, rr.model, 0, rr.amount, rr.max_tokens, 'expired',
        'sweeper', 'reserved admission released by the server while in use', rr.created_at,
        p_now, rr.pricing_mode, rr.usd_per_credit, rr.dearest, rr.prices, rr.facts, rr.generation_id
      )
      returning * into u;
    end if;
    if u.status <> 'expired' or u.price is null then
      return jsonb_build_object('settled', false, 'reason', 'already_settled');
    end if;
    v_late := true;
    v_account := u.account_id;
    v_key := u.key_id;
    v_key_windows := exists (select from gateway.key_rate_limits kl where kl.key_id = u.key_id);
    v_prices := u.candidates;
    v_dearest := u.price;
    v_mode := u.pricing_mode;
    v_usd_per_credit := u.usd_per_credit;
    v_held := u.credits_held;
  end if;

  -- Tokens into the subjects' windows first (one upsert: the account's row, then the key's when it
  -- has its own limits), then the charge: counter rows before the balance row, as in admission.
  v_tokens := p_prompt + p_completion;
  if v_tokens > 0 then
    -- The account's row alone (no key windows) is there but on a subject's first count of the day
    -- after the purge: an UPDATE, cheaper than the upsert's speculative insertion, lock and update.
    if not v_key_windows then
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
       where c.subject_kind = 'account' and c.subject_id = v_account;
    end if;
    if v_key_windows or not found then
      insert into gateway.rate_counters as c (
        subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
        hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
      select g.kind, g.sid, v_minute, 0, v_tokens, v_hour, 0, v_tokens, v_day, 0, v_tokens
        from (values (1, 'account'::gateway.rate_subject, v_account),
                     (2, 'key', v_key)) g (i, kind, sid)
       where g.i = 1 or v_key_windows
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

  -- A released reservation's request ran: the release took it out of the request windows it was
  -- counted in (those of its admission time still current) and out of the key's requests_used, as
  -- cancel_admissions does; it goes back in, without a check (it has run). Counter rows before the
  -- balance row; the key's counter after it, as in admission. The account's row before the key's.
  for i in 1 .. case when rr.id is null then 0 when rr.count_key_windows then 2 else 1 end loop
    update gateway.rate_counters c set
      minute_requests = c.minute_requests
        + (date_trunc('minute', rr.created_at, 'UTC') = c.minute_start)::integer,
      hour_requests = c.hour_requests
        + (date_trunc('hour', rr.created_at, 'UTC') = c.hour_start)::integer,
      day_requests = c.day_requests
        + (date_trunc('day', rr.created_at, 'UTC') = c.day_start)::integer
     where (i = 1 and c.subject_kind = 'account' and c.subject_id = rr.account_id)
        or (i = 2 and c.subject_kind = 'key' and c.subject_id = rr.key_id);
  end loop;

  -- Priced as admitted; an overrun is charged in full (the operator paid upstream for it).
  v_price := case when v_prices is null and v_dearest.model <> 'openrouter/auto' then v_dearest
                  else gateway.served_price(v_prices, v_dearest, p_model, v_mode) end;
  ch := gateway.charge(
    v_price, v_usd_per_credit, p_prompt, p_completion, p_cached, p_cache_write, p_reasoning,
    p_web_searches, p_images, p_cost);
  -- Plain variables from here: the statements below are planned once, not per record shape.
  v_credits := ch.credits;
  v_usd := ch.upstream_usd;
  v_overrun := greatest(v_credits - v_held, 0);
  if v_late then
    -- Its credits were released at expiry: what the charge takes beyond the credits available now
    -- (balance - held) is an overrun, recorded as such and refusing the account until positive.
    with b as (
      update gateway.credit_balances
         set balance = balance - v_credits
       where account_id = v_account
      returning balance, held
    ), l as (
      insert into gateway.ledger (account_id, kind, amount, balance_after, hold_id, reason, created_at)
      select v_account, 'charge', -v_credits, b.balance, p_hold_id, coalesce(p_model, u.model), p_now
        from b
       where v_credits > 0
    ), r as (
      update gateway.usage_records x set
        model = coalesce(p_model, u.model), prompt_tokens = p_prompt,
        completion_tokens = p_completion, total_tokens = p_prompt + p_completion,
        cached_tokens = least(p_cached, p_prompt),
        cache_write_tokens = least(p_cache_write, p_prompt - least(p_cached, p_prompt)),
        reasoning_tokens = least(p_reasoning, p_completion), web_search_requests = p_web_searches,
        images = p_images, upstream_cost = p_cost, upstream_usd = v_usd,
        credits_charged = v_credits, status = coalesce(p_status, 'success'),
        settled_by = p_settled_by, latency_ms = p_latency_ms, generation_id = p_generation_id,
        note = 'settled after its hold expired', price = v_price, candidates = null,
        overrun_credits = greatest(least(v_credits, b.held - b.balance), 0), settled_late = true,
        settled_at = p_now
        from b
       where x.hold_id = p_hold_id
    )
    select b.balance, greatest(least(v_credits, b.held - b.balance), 0) into v_balance, v_overrun
      from b;
    if rr.id is not null then
      update gateway.key_counters c set requests_used = c.requests_used + 1
       where c.key_id = rr.key_id;
    end if;
    raise warning using message = format(
      'hold %s settled after it expired: %s credits charged late', p_hold_id, v_credits);
  else
    with b as (
      update gateway.credit_balances
         set balance = balance - v_credits, held = held - v_held
       where account_id = v_account
      returning balance
    ), l as (
      insert into gateway.ledger (account_id, kind, amount, balance_after, hold_id, reason, created_at)
      select v_account, 'charge', -v_credits, b.balance, p_hold_id, coalesce(p_model, h.model), p_now
        from b
       where v_credits > 0
    ), r as (
      insert into gateway.usage_records (
        hold_id, account_id, key_id, model, prompt_tokens, completion_tokens, total_tokens,
        upstream_cost, credits_charged, credits_held, max_tokens, status, settled_by, latency_ms,
        generation_id, created_at, settled_at, cached_tokens, cache_write_tokens, reasoning_tokens,
        web_search_requests, images, upstream_usd, pricing_mode, usd_per_credit, price, facts,
        overrun_credits
      ) values (
        p_hold_id, v_account, v_key, coalesce(p_model, h.model), p_prompt, p_completion,
        p_prompt + p_completion, p_cost, v_credits, v_held, h.max_tokens,
        coalesce(p_status, 'success'), p_settled_by, p_latency_ms, p_generation_id, h.created_at,
        p_now, least(p_cached, p_prompt), least(p_cache_write, p_prompt - least(p_cached, p_prompt)),
        least(p_reasoning, p_completion), p_web_searches, p_images, v_usd, v_mode,
        v_usd_per_credit, v_price, h.facts, v_overrun
      )
    )
    select b.balance into v_balance from b;
  end if;

  return jsonb_build_object(
    'settled', true,
    'hold_id', p_hold_id,
    'credits_charged', v_credits,
    'held_credits', v_held,
    'overrun', v_overrun > 0,
    'overrun_credits', v_overrun,
    'upstream_usd', v_usd::text,
    'late', v_late,
    'balance_after', v_balance
  );
end
$$;
revoke execute on function gateway.settle_hold(bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric, text, integer, text, text, timestamptz) from public;
