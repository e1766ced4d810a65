-- gateway_rate_limits: owns rate limit configuration (account overrides, per-key limits) and the
-- windowed counters they are checked against.
--
-- Limits: requests and tokens per minute, hour and day (UTC-aligned fixed windows). An account's
-- limit is its override in gateway.rate_limits, else the default in system_settings. A key may have
-- its own, additional limits in gateway.key_rate_limits (null = no key-specific limit: only the
-- account's apply); keys without a key_rate_limits row are not counted in key windows at all, which
-- keeps the request path at three window rows.
-- Requests are counted at admission (gateway.begin_request) and a refused request is never counted;
-- tokens are counted at settlement and checked at admission (used >= limit refuses).

create type gateway.rate_subject as enum ('account', 'key');
create type gateway.rate_granularity as enum ('minute', 'hour', 'day');

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

-- One row per subject, granularity and window; updated in place (HOT) by atomic upserts.
create table gateway.rate_windows (
  subject_kind gateway.rate_subject not null,
  subject_id bigint not null,
  granularity gateway.rate_granularity not null,
  window_start timestamptz not null,
  requests integer not null default 0,
  tokens bigint not null default 0,
  primary key (subject_kind, subject_id, granularity, window_start)
) with (fillfactor = 50);
comment on table gateway.rate_windows is
  'Usage counters per (account|key, minute|hour|day, window start). Past windows are deleted by the '
  'gateway-purge-rate-windows cron job.';
alter table gateway.rate_windows enable row level security;

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

-- Seconds until the window containing p_now ends (at least 1). Windows are aligned to UTC, i.e. to
-- the Unix epoch, so this is arithmetic on the epoch (plpgsql: a SQL function with SET clauses is
-- planned afresh on every call, and this one runs twice per admission).
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

-- Effective account limits (override, else default) as the API shows them.
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
    'requests_this_minute', coalesce(max(w.requests) filter (where w.granularity = 'minute'), 0),
    'requests_this_hour', coalesce(max(w.requests) filter (where w.granularity = 'hour'), 0),
    'requests_this_day', coalesce(max(w.requests) filter (where w.granularity = 'day'), 0),
    'tokens_this_minute', coalesce(max(w.tokens) filter (where w.granularity = 'minute'), 0),
    'tokens_this_hour', coalesce(max(w.tokens) filter (where w.granularity = 'hour'), 0),
    'tokens_this_day', coalesce(max(w.tokens) filter (where w.granularity = 'day'), 0)
  )
  from gateway.rate_windows w
  where w.subject_kind = p_kind
    and w.subject_id = p_subject_id
    and w.window_start = date_trunc(w.granularity::text, p_now, 'UTC');
$$;
revoke execute on function gateway.window_usage(gateway.rate_subject, bigint, timestamptz)
  from public;

-- Sets limits from JSON {requests_per_minute: n | null, …}: a number overrides, null inherits/clears.
-- Names not given keep their current value. p_key_id null = the account's limits.
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
