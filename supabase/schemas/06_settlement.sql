-- Settlement: a hold closes exactly once, charged for the tokens used (settle_request, or many in
-- one transaction: settle_requests), released without charge (void_request), or expired by the
-- sweeper (expire_stale_holds); each closed hold leaves one usage record.

-- The one definition of a charge: tokens priced with the multipliers the hold stored at admission,
-- an overrun charged in full. The function's TypeScript copy is pinned to it by a test.
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

-- One row per admitted request, written when its hold closes; keyed by the hold, so a second close
-- is told "already_settled".
create table gateway.usage_records (
  hold_id bigint primary key,
  account_id bigint not null,
  key_id bigint not null,
  model text not null,
  prompt_tokens integer not null default 0,
  completion_tokens integer not null default 0,
  total_tokens integer not null default 0, -- prompt + completion
  upstream_cost numeric,
  credits_charged bigint not null default 0,
  credits_held bigint not null,
  max_tokens integer,
  status text not null,
  settled_by text not null, -- usage | generation | stream_count | sweeper | void
  latency_ms integer,
  generation_id text,
  note text,
  created_at timestamptz not null,
  settled_at timestamptz not null,
  cached_tokens integer not null default 0,
  cache_write_tokens integer not null default 0,
  reasoning_tokens integer not null default 0,
  web_search_requests integer not null default 0,
  images integer not null default 0,
  upstream_usd numeric,
  pricing_mode text,
  usd_per_credit numeric,
  price gateway.model_price,
  candidates gateway.model_price[],
  facts jsonb,
  overrun_credits bigint not null default 0,
  settled_late boolean not null default false
);
comment on table gateway.usage_records is
  'One row per admitted request, written when its hold closes: settled (usage/generation/'
  'stream_count), voided (status voided), or expired by the sweeper (status expired). created_at = '
  'admission time.';
comment on column gateway.usage_records.upstream_usd is
  'What upstream cost, USD: usage.cost as reported (also in upstream_cost), else computed from price.';
comment on column gateway.usage_records.price is
  'The prices charged (the served candidate''s, or the dearest; for a void or an expiry, the dearest).';
comment on column gateway.usage_records.candidates is
  'Expired records only: the candidates'' prices when more than one, for a settle that arrives late.';
comment on column gateway.usage_records.overrun_credits is
  'Credits charged above the hold (charged in full: the operator paid upstream for them).';
comment on column gateway.usage_records.settled_late is
  'Settled after its hold expired: the expired record became the real one, and the charge was posted.';
create index usage_records_account_id_idx on gateway.usage_records (account_id, created_at);
create index usage_records_created_at_brin on gateway.usage_records using brin (created_at);
create index usage_records_overrun_idx on gateway.usage_records (settled_at)
  where overrun_credits > 0;
create index usage_records_unreconciled_idx on gateway.usage_records (settled_at)
  where status = 'expired' and generation_id is not null;
alter table gateway.usage_records enable row level security;
create policy no_api_access on gateway.usage_records
  for all to anon, authenticated using (false) with check (false);


-- A settle's usage (settle_request's p_usage, settle_requests' elements), checked like the facts.
--   model               the model upstream reported (picks the candidate whose price is charged)
--   prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens (parts of the prompt),
--   reasoning_tokens (part of the completion), web_search_requests, images: counts (default 0)
--   cost                OpenRouter's usage.cost, USD, decimal text (or a number), ≥ 0; absent/null:
--                       computed from the hold's prices.
--   status, latency_ms, generation_id: recorded; settled_by: usage|generation|stream_count|sweeper
create or replace function gateway.usage_facts(
  p jsonb,
  out model text,
  out prompt_tokens bigint,
  out completion_tokens bigint,
  out cached_tokens bigint,
  out cache_write_tokens bigint,
  out reasoning_tokens bigint,
  out web_search_requests bigint,
  out images bigint,
  out cost numeric,
  out status text,
  out latency_ms integer,
  out generation_id text,
  out settled_by text
)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  -- Plain expressions, no queries: this runs for every settle.
  v_cost jsonb := nullif(p -> 'cost', 'null');
  v_counts jsonb;
  v_bad text;
begin
  if jsonb_typeof(p) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the usage must be a JSON object';
  end if;
  -- The counts, present and not null, as one object: each must be an integer in range.
  v_counts := jsonb_strip_nulls(p - array['hold_id', 'model', 'cost', 'status', 'generation_id',
                                          'settled_by']);
  if v_counts - array['prompt_tokens', 'completion_tokens', 'cached_tokens', 'cache_write_tokens',
                      'reasoning_tokens', 'web_search_requests', 'images', 'latency_ms'] <> '{}' then
    v_bad := format('unknown usage fields: %s', left(array_to_string(array(
      select jsonb_object_keys(v_counts - array['prompt_tokens', 'completion_tokens',
                                                'cached_tokens', 'cache_write_tokens',
                                                'reasoning_tokens', 'web_search_requests',
                                                'images', 'latency_ms'])), ', '), 200));
  elsif jsonb_path_exists(v_counts, '$.* ? (@.type() != "number" || @ < 0 || @ > 2147483647 '
                                    '|| @.floor() != @)') then
    v_bad := 'token counts, web_search_requests, images and latency_ms must be integers from 0 to '
             '2147483647';
  elsif coalesce(jsonb_typeof(p -> 'model'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'status'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'generation_id'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'settled_by'), 'null') not in ('null', 'string')
        or length(p ->> 'model') > 256 or length(p ->> 'status') > 256
        or length(p ->> 'generation_id') > 256 then
    v_bad := 'model, status, generation_id and settled_by must be strings of at most 256 characters';
  elsif v_cost is not null
        and (jsonb_typeof(v_cost) not in ('string', 'number')
             or (v_cost #>> '{}') !~ '^[0-9]{1,7}(\.[0-9]{0,30})?([eE][-+]?[0-9]{1,2})?$'
             or (v_cost #>> '{}')::numeric >= 1000000) then
    v_bad := 'cost must be a non-negative decimal number of USD below 1000000';
  end if;
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request', message = v_bad;
  end if;
  model := p ->> 'model';
  prompt_tokens := coalesce((v_counts ->> 'prompt_tokens')::bigint, 0);
  completion_tokens := coalesce((v_counts ->> 'completion_tokens')::bigint, 0);
  cached_tokens := coalesce((v_counts ->> 'cached_tokens')::bigint, 0);
  cache_write_tokens := coalesce((v_counts ->> 'cache_write_tokens')::bigint, 0);
  reasoning_tokens := coalesce((v_counts ->> 'reasoning_tokens')::bigint, 0);
  web_search_requests := coalesce((v_counts ->> 'web_search_requests')::bigint, 0);
  images := coalesce((v_counts ->> 'images')::bigint, 0);
  cost := (v_cost #>> '{}')::numeric;
  status := p ->> 'status';
  latency_ms := (v_counts ->> 'latency_ms')::integer;
  generation_id := p ->> 'generation_id';
  settled_by := p ->> 'settled_by';
end
$$;
revoke execute on function gateway.usage_facts(jsonb) from public;

-- Settlement --------------------------------------------------------------------------------------
-- settle_request's body, for it and settle_requests. Exactly once per hold: deleting
-- the hold is the gate, or, for a hold the sweeper expired, turning its `expired` record into the
-- real one (under the record's row lock). Charged at the served candidate's prices as admitted
-- (gateway.served_price, gateway.charge); above the hold, in full.
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

-- Charges a hold for its request's usage (gateway.usage_facts), exactly once.
create or replace function gateway.settle_request(
  p_hold_id bigint,
  p_usage jsonb,
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
  f := gateway.usage_facts(p_usage);
  return gateway.settle_hold(
    p_hold_id, f.model, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
    f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images, f.cost, f.status,
    f.latency_ms, f.generation_id, f.settled_by, p_now);
end
$$;
revoke execute on function gateway.settle_request(bigint, jsonb, timestamptz) from public;
grant execute on function gateway.settle_request(bigint, jsonb, timestamptz) to gateway_api;

-- Many settles in one transaction, each by settle_request, in account order and an account's
-- settles that take no counter row (zero tokens) last (no deadlock). An element that raises aborts
-- the batch. A hold closed before (expired, or a reserved admission the server released) is
-- placed by its account too: placed first, it locked its account's rows before a lower account's
-- (40P01 with admissions). A released reservation's settle takes the counter rows even without
-- tokens (it counts its request again): placed after a zero-token settle's balance lock, it
-- waited for an admission that held the counter and waited for the balance (40P01).
create or replace function gateway.settle_requests(
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
      message = 'p_batch must be a JSON array of settle_request arguments';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  -- Where each hold is now: open (h), closed with a usage record (u: an expired one settles late),
  -- or a released reservation's copy (r: settles late and counts its request again, so it takes
  -- the counter rows even without tokens).
  for e in
    select b.ord, b.v
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      cross join lateral (select (b.v ->> 'hold_id')::bigint as id) i
      left join gateway.holds h on h.id = i.id
      left join gateway.usage_records u on h.id is null and u.hold_id = i.id
      left join gateway.released_reservations r on h.id is null and u.hold_id is null and r.id = i.id
     order by coalesce(h.account_id, case when u.status = 'expired' then u.account_id end,
                       r.account_id) nulls first,
              coalesce((b.v ->> 'prompt_tokens')::bigint, 0) = 0
                and coalesce((b.v ->> 'completion_tokens')::bigint, 0) = 0 and r.id is null,
              b.ord
  loop
    f := gateway.usage_facts(e.v);
    v_results[e.ord] := gateway.settle_hold(
      (e.v ->> 'hold_id')::bigint, f.model, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
      f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images, f.cost, f.status,
      f.latency_ms, f.generation_id, f.settled_by, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.settle_requests(jsonb, timestamptz) from public;
grant execute on function gateway.settle_requests(jsonb, timestamptz) to gateway_api;

-- Closes a hold without charge (the request never reached upstream): credits released, usage record
-- with status voided.
create or replace function gateway.void_request(
  p_hold_id bigint,
  p_reason text,
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
begin
  delete from gateway.holds where id = p_hold_id returning * into h;
  if not found then
    return jsonb_build_object(
      'voided', false,
      'reason', case when exists (select from gateway.usage_records u where u.hold_id = p_hold_id)
                     then 'already_settled' else 'unknown_hold' end);
  end if;
  update gateway.credit_balances set held = held - h.amount where account_id = h.account_id;
  insert into gateway.usage_records (
    hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
    settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, facts
  ) values (
    h.id, h.account_id, h.key_id, h.model, 0, h.amount, h.max_tokens, 'voided', 'void', p_reason,
    h.created_at, p_now, h.pricing_mode, h.usd_per_credit, h.dearest, h.facts
  );
  return jsonb_build_object('voided', true, 'hold_id', h.id, 'released_credits', h.amount);
end
$$;
revoke execute on function gateway.void_request(bigint, text, timestamptz) from public;
grant execute on function gateway.void_request(bigint, text, timestamptz) to gateway_api;

-- Voids holds past their expires_at, without charge, each recorded as status expired, settled_by
-- sweeper, with its prices and generation id; a settle that still comes charges it (settle_hold).
-- A lapsed lease (its worker stopped renewing it: killed, crashed) voids a hold only if upstream
-- never answered for it: one with a generation id was billed upstream, so it keeps its credits
-- held until the reconcile settles it from /generation (gateway.reconcile_candidates), within the
-- hold; released, they could be spent again before that charge. Any hold is voided at its longest
-- life (admission + greatest(hold_timeout_seconds, its lifetime)).
create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_timeout integer;
  v_accounts bigint[];
  v_count integer;
begin
  select s.hold_timeout_seconds into v_timeout from gateway.system_settings s where s.id;
  -- Lock order. A settle closes a hold and then takes its account's balance row; batches go account
  -- by account in id order. The sweeper takes the balance rows first, in account order, and then
  -- only the holds nobody else has locked (a hold being settled is that settle's): it never waits
  -- for a hold while holding a balance, so it cannot close a cycle with a settle (it did, with
  -- settle_requests batches: 40P01 under load).
  v_accounts := array(
    select distinct h.account_id from gateway.holds h
     where h.expires_at <= p_now
       and (h.generation_id is null
            or gateway.hold_life_end(h.created_at, h.facts, v_timeout) <= p_now));
  if cardinality(v_accounts) = 0 then
    return 0;
  end if;
  perform from gateway.credit_balances b
    where b.account_id = any(v_accounts)
    order by b.account_id
      for update;
  with expired as (
    delete from gateway.holds h
     where h.id in (
       select x.id from gateway.holds x
        where x.account_id = any(v_accounts) and x.expires_at <= p_now
          and (x.generation_id is null
               or gateway.hold_life_end(x.created_at, x.facts, v_timeout) <= p_now)
          for update skip locked)
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, candidates,
      facts, generation_id
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           case when x.generation_id is null then 'hold timed out: released without charge'
                else 'hold timed out: released without charge until settled from /generation' end,
           x.created_at, p_now, x.pricing_mode, x.usd_per_credit, x.dearest, x.prices, x.facts,
           x.generation_id
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;
revoke execute on function gateway.expire_stale_holds(timestamptz) from public;
grant execute on function gateway.expire_stale_holds(timestamptz) to service_role;

-- Holds to settle from OpenRouter's /generation (the scheduled reconcile, POST
-- /gateway/internal/reconcile): open ones with a generation id whose lease lapsed (their worker is
-- gone) or admitted at least p_min_age_seconds ago, and expired ones with a generation id not
-- settled yet (within a week). Newest first, at most p_limit: one whose stats never appear
-- does not keep the next from being reconciled.
create or replace function gateway.reconcile_candidates(
  p_min_age_seconds integer,
  p_limit integer default 50,
  p_now timestamptz default now()
)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'hold_id', c.hold_id, 'generation_id', c.generation_id, 'model', c.model,
           'expired', c.expired) order by c.created_at desc, c.hold_id desc), '[]')
    from (
      select h.id as hold_id, h.generation_id, h.model, false as expired, h.created_at
        from gateway.holds h
       where h.generation_id is not null
         and (h.expires_at <= p_now
              or h.created_at <= p_now - make_interval(secs => greatest(p_min_age_seconds, 0)))
      union all
      select u.hold_id, u.generation_id, u.model, true, u.created_at
        from gateway.usage_records u
       where u.status = 'expired' and u.generation_id is not null
         and u.settled_at > p_now - interval '7 days'
      order by created_at desc, hold_id desc
      limit greatest(least(p_limit, 500), 1)
    ) c
$$;
revoke execute on function gateway.reconcile_candidates(integer, integer, timestamptz) from public;
grant execute on function gateway.reconcile_candidates(integer, integer, timestamptz) to gateway_api;
