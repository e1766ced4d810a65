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
  settled_at timestamptz not null
);
comment on table gateway.usage_records is
  'One row per admitted request, written when its hold closes: settled (usage/generation/'
  'stream_count), voided (status voided), or expired by the sweeper (status expired). created_at = '
  'admission time.';
create index usage_records_account_id_idx on gateway.usage_records (account_id, created_at);
create index usage_records_created_at_brin on gateway.usage_records using brin (created_at);
alter table gateway.usage_records enable row level security;
create policy no_api_access on gateway.usage_records
  for all to anon, authenticated using (false) with check (false);

-- Closes a hold once: adds its tokens to the rate windows, charges credits_for(tokens) (ledger row
-- and balance together), releases the hold and writes the usage record. A repeat says why not.
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

-- Many settles in one transaction, each by settle_request, in account order and an account's
-- zero-token settles last (no deadlock). An element that raises aborts the batch.
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
    settled_by, note, created_at, settled_at
  ) values (
    h.id, h.account_id, h.key_id, h.model, 0, h.amount, h.max_tokens, 'voided', 'void', p_reason,
    h.created_at, p_now
  );
  return jsonb_build_object('voided', true, 'hold_id', h.id, 'released_credits', h.amount);
end
$$;
revoke execute on function gateway.void_request(bigint, text, timestamptz) from public;
grant execute on function gateway.void_request(bigint, text, timestamptz) to gateway_api;

-- Voids every hold open longer than hold_timeout_seconds, without charge, each recorded as status
-- expired, settled_by sweeper: an expired hold means the gateway lost track of a request.
create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    delete from gateway.holds h
     using gateway.system_settings s
     where s.id and h.created_at <= p_now - make_interval(secs => s.hold_timeout_seconds)
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           'hold timed out: released without charge', x.created_at, p_now
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;
revoke execute on function gateway.expire_stale_holds(timestamptz) from public;
grant execute on function gateway.expire_stale_holds(timestamptz) to service_role;
