-- Rate limits: their configuration (account overrides, a key's own limits) and the counters they
-- are checked against. Requests and tokens per minute, hour and day, in fixed UTC-aligned windows.
-- A request counts at admission (a refused one never does); tokens count at settlement and are
-- checked at admission (used >= limit refuses). Rollover rules: docs/SQL-NOTES.md, "Rate limits".

create type gateway.rate_subject as enum ('account', 'key');
create type gateway.rate_granularity as enum ('minute', 'hour', 'day');

-- An account's limit is its override here, else the system_settings default.
create table gateway.rate_limits (
  account_id bigint primary key references gateway.accounts (id),
  requests_per_minute integer check (requests_per_minute >= 0),
  requests_per_hour integer check (requests_per_hour >= 0),
  requests_per_day integer check (requests_per_day >= 0),
  tokens_per_minute bigint check (tokens_per_minute >= 0),
  tokens_per_hour bigint check (tokens_per_hour >= 0),
  tokens_per_day bigint check (tokens_per_day >= 0),
  updated_at timestamptz not null default now()
);
comment on table gateway.rate_limits is
  'Admin overrides of an account''s limits; a null column inherits the system_settings default.';
alter table gateway.rate_limits enable row level security;
create policy no_api_access on gateway.rate_limits
  for all to anon, authenticated using (false) with check (false);

-- A key's own limits, on top of its account's. A key without a row is not counted in key windows
-- at all, which keeps the usual request at one counter row.
create table gateway.key_rate_limits (
  key_id bigint primary key references gateway.api_keys (id),
  requests_per_minute integer check (requests_per_minute >= 0),
  requests_per_hour integer check (requests_per_hour >= 0),
  requests_per_day integer check (requests_per_day >= 0),
  tokens_per_minute bigint check (tokens_per_minute >= 0),
  tokens_per_hour bigint check (tokens_per_hour >= 0),
  tokens_per_day bigint check (tokens_per_day >= 0),
  updated_at timestamptz not null default now()
);
comment on table gateway.key_rate_limits is
  'Limits of one key, on top of its account''s; a null column means no key-specific limit.';
alter table gateway.key_rate_limits enable row level security;
create policy no_api_access on gateway.key_rate_limits
  for all to anon, authenticated using (false) with check (false);

-- One row per subject (an account, or a key with its own limits): its minute, hour and day windows
-- as columns, rolled over in place. A window whose start is not p_now's counts as 0.
create table gateway.rate_counters (
  subject_kind gateway.rate_subject not null,
  subject_id bigint not null,
  minute_start timestamptz not null,
  minute_requests integer not null default 0,
  minute_tokens bigint not null default 0,
  hour_start timestamptz not null,
  hour_requests integer not null default 0,
  hour_tokens bigint not null default 0,
  day_start timestamptz not null,
  day_requests integer not null default 0,
  day_tokens bigint not null default 0,
  primary key (subject_kind, subject_id)
) with (fillfactor = 50);
comment on table gateway.rate_counters is
  'Usage counters of one account or key: the minute, hour and day windows containing its latest '
  'count, rolled over in place. Rows whose day has ended are deleted by the '
  'gateway-purge-rate-windows cron job.';
alter table gateway.rate_counters enable row level security;
create policy no_api_access on gateway.rate_counters
  for all to anon, authenticated using (false) with check (false);

-- The length of a window.
create or replace function gateway.window_length(p_granularity gateway.rate_granularity)
returns interval
language sql
immutable
security definer
set search_path = ''
as $$
  select case p_granularity
    when 'minute' then interval '1 minute'
    when 'hour' then interval '1 hour'
    else interval '1 day'
  end;
$$;
revoke execute on function gateway.window_length(gateway.rate_granularity) from public;

-- Seconds until the window containing p_now ends, at least 1 (epoch arithmetic: windows are aligned
-- to UTC).
create or replace function gateway.window_reset_seconds(
  p_granularity gateway.rate_granularity,
  p_now timestamptz
)
returns integer
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_length integer := case p_granularity when 'minute' then 60 when 'hour' then 3600 else 86400 end;
begin
  return greatest(1, ceil(v_length - mod(extract(epoch from p_now), v_length)))::integer;
end
$$;
revoke execute on function gateway.window_reset_seconds(gateway.rate_granularity, timestamptz)
  from public;

-- An account's effective limits (override, else default), as the API shows them.
create or replace function gateway.account_limits(p_account_id bigint)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'requests_per_minute', coalesce(r.requests_per_minute, s.requests_per_minute),
    'requests_per_hour', coalesce(r.requests_per_hour, s.requests_per_hour),
    'requests_per_day', coalesce(r.requests_per_day, s.requests_per_day),
    'tokens_per_minute', coalesce(r.tokens_per_minute, s.tokens_per_minute),
    'tokens_per_hour', coalesce(r.tokens_per_hour, s.tokens_per_hour),
    'tokens_per_day', coalesce(r.tokens_per_day, s.tokens_per_day)
  )
  from gateway.system_settings s
  left join gateway.rate_limits r on r.account_id = p_account_id
  where s.id;
$$;
revoke execute on function gateway.account_limits(bigint) from public;

-- A key's own limits, or null when it has none.
create or replace function gateway.key_limits(p_key_id bigint)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'requests_per_minute', l.requests_per_minute,
    'requests_per_hour', l.requests_per_hour,
    'requests_per_day', l.requests_per_day,
    'tokens_per_minute', l.tokens_per_minute,
    'tokens_per_hour', l.tokens_per_hour,
    'tokens_per_day', l.tokens_per_day
  )
  from gateway.key_rate_limits l
  where l.key_id = p_key_id;
$$;
revoke execute on function gateway.key_limits(bigint) from public;

-- Usage in the windows containing p_now, as {requests_this_minute, …, tokens_this_day}.
create or replace function gateway.window_usage(
  p_kind gateway.rate_subject,
  p_subject_id bigint,
  p_now timestamptz
)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'requests_this_minute', coalesce(max(case when c.minute_start = date_trunc('minute', p_now, 'UTC')
                                              then c.minute_requests end), 0),
    'requests_this_hour', coalesce(max(case when c.hour_start = date_trunc('hour', p_now, 'UTC')
                                            then c.hour_requests end), 0),
    'requests_this_day', coalesce(max(case when c.day_start = date_trunc('day', p_now, 'UTC')
                                           then c.day_requests end), 0),
    'tokens_this_minute', coalesce(max(case when c.minute_start = date_trunc('minute', p_now, 'UTC')
                                            then c.minute_tokens end), 0),
    'tokens_this_hour', coalesce(max(case when c.hour_start = date_trunc('hour', p_now, 'UTC')
                                          then c.hour_tokens end), 0),
    'tokens_this_day', coalesce(max(case when c.day_start = date_trunc('day', p_now, 'UTC')
                                         then c.day_tokens end), 0)
  )
  from gateway.rate_counters c
  where c.subject_kind = p_kind
    and c.subject_id = p_subject_id;
$$;
revoke execute on function gateway.window_usage(gateway.rate_subject, bigint, timestamptz)
  from public;

-- Sets limits from {requests_per_minute: n | null, …}: a number overrides, null inherits (account)
-- or clears (key); names not given keep their value. p_key_id null = the account's limits.
create or replace function gateway.apply_rate_limits(
  p_account_id bigint,
  p_key_id bigint,
  p_limits jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  c_names constant text[] := array['requests_per_minute', 'requests_per_hour', 'requests_per_day',
                                   'tokens_per_minute', 'tokens_per_hour', 'tokens_per_day'];
  v_bad text;
begin
  if jsonb_typeof(p_limits) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'limits must be a JSON object';
  end if;
  select string_agg(n, ', ') into v_bad
    from jsonb_each(p_limits) e (n, v)
   where n <> all (c_names)
      or (jsonb_typeof(v) <> 'null'
          and (jsonb_typeof(v) <> 'number' or (v #>> '{}')::numeric < 0
               or (v #>> '{}')::numeric <> trunc((v #>> '{}')::numeric)
               or (v #>> '{}')::numeric > 2147483647));
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('invalid limits: %s (names: %s; values: whole numbers >= 0 or null)',
                       v_bad, array_to_string(c_names, ', '));
  end if;

  if p_key_id is null then
    insert into gateway.rate_limits as r (account_id) values (p_account_id)
    on conflict (account_id) do nothing;
    update gateway.rate_limits r set
      requests_per_minute = case when p_limits ? 'requests_per_minute'
        then (p_limits ->> 'requests_per_minute')::integer else r.requests_per_minute end,
      requests_per_hour = case when p_limits ? 'requests_per_hour'
        then (p_limits ->> 'requests_per_hour')::integer else r.requests_per_hour end,
      requests_per_day = case when p_limits ? 'requests_per_day'
        then (p_limits ->> 'requests_per_day')::integer else r.requests_per_day end,
      tokens_per_minute = case when p_limits ? 'tokens_per_minute'
        then (p_limits ->> 'tokens_per_minute')::bigint else r.tokens_per_minute end,
      tokens_per_hour = case when p_limits ? 'tokens_per_hour'
        then (p_limits ->> 'tokens_per_hour')::bigint else r.tokens_per_hour end,
      tokens_per_day = case when p_limits ? 'tokens_per_day'
        then (p_limits ->> 'tokens_per_day')::bigint else r.tokens_per_day end,
      updated_at = now()
    where r.account_id = p_account_id;
    return gateway.account_limits(p_account_id);
  end if;

  insert into gateway.key_rate_limits as r (key_id) values (p_key_id)
  on conflict (key_id) do nothing;
  update gateway.key_rate_limits r set
    requests_per_minute = case when p_limits ? 'requests_per_minute'
      then (p_limits ->> 'requests_per_minute')::integer else r.requests_per_minute end,
    requests_per_hour = case when p_limits ? 'requests_per_hour'
      then (p_limits ->> 'requests_per_hour')::integer else r.requests_per_hour end,
    requests_per_day = case when p_limits ? 'requests_per_day'
      then (p_limits ->> 'requests_per_day')::integer else r.requests_per_day end,
    tokens_per_minute = case when p_limits ? 'tokens_per_minute'
      then (p_limits ->> 'tokens_per_minute')::bigint else r.tokens_per_minute end,
    tokens_per_hour = case when p_limits ? 'tokens_per_hour'
      then (p_limits ->> 'tokens_per_hour')::bigint else r.tokens_per_hour end,
    tokens_per_day = case when p_limits ? 'tokens_per_day'
      then (p_limits ->> 'tokens_per_day')::bigint else r.tokens_per_day end,
    updated_at = now()
  where r.key_id = p_key_id;
  -- A key whose limits are all null again has no key limits: drop the row so it is not counted.
  delete from gateway.key_rate_limits r
   where r.key_id = p_key_id
     and num_nulls(r.requests_per_minute, r.requests_per_hour, r.requests_per_day,
                   r.tokens_per_minute, r.tokens_per_hour, r.tokens_per_day) = 6;
  return gateway.key_limits(p_key_id);
end
$$;
revoke execute on function gateway.apply_rate_limits(bigint, bigint, jsonb) from public;

-- The limit of p_key's own that makes it a spending key ('request cap', 'rate limits'), or null
-- (here, not in 03_keys: it reads key_rate_limits).
-- Every limit a key can carry belongs here: a key that could mint, raise or rotate keys would
-- spend outside it.
create or replace function gateway.key_own_limit(p_key gateway.api_keys)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select case
    when p_key.max_requests is not null then 'request cap'
    -- A row exists only while one of its limits is set (apply_rate_limits drops an all-null row).
    when exists (select from gateway.key_rate_limits l where l.key_id = p_key.id) then 'rate limits'
  end;
$$;
revoke execute on function gateway.key_own_limit(gateway.api_keys) from public;
