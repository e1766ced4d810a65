-- System settings (one typed row), per-model prices, the shared models-catalog cache, health, and
-- the operator functions that change them. A limit's default lives here and nowhere else.

-- One row of typed, checked columns: a typo in a name or a negative limit fails at write time, and
-- the request path reads it with one primary-key probe.
create table gateway.system_settings (
  id boolean primary key default true check (id),
  signup_credits bigint not null default 1000 check (signup_credits >= 0),
  default_max_tokens integer not null default 4096 check (default_max_tokens > 0),
  hold_timeout_seconds integer not null default 900 check (hold_timeout_seconds >= 60),
  requests_per_minute integer not null default 60 check (requests_per_minute >= 0),
  requests_per_hour integer not null default 1000 check (requests_per_hour >= 0),
  requests_per_day integer not null default 10000 check (requests_per_day >= 0),
  tokens_per_minute bigint not null default 10000 check (tokens_per_minute >= 0),
  tokens_per_hour bigint not null default 100000 check (tokens_per_hour >= 0),
  tokens_per_day bigint not null default 1000000 check (tokens_per_day >= 0),
  registrations_per_ip_per_hour integer not null default 5 check (registrations_per_ip_per_hour >= 0),
  max_keys_per_account integer not null default 25 check (max_keys_per_account >= 1),
  max_rotation_grace_seconds integer not null default 604800
    check (max_rotation_grace_seconds >= 0),
  models_cache_ttl_seconds integer not null default 3600 check (models_cache_ttl_seconds >= 0),
  idempotency_ttl_seconds integer not null default 86400 check (idempotency_ttl_seconds >= 60),
  usd_per_credit numeric not null default 0.00002 check (usd_per_credit >= 0),
  updated_at timestamptz not null default now()
);
comment on table gateway.system_settings is
  'The one row of system settings. Change with gateway.set_setting(name, value).';
comment on column gateway.system_settings.signup_credits is 'Credits granted at registration.';
comment on column gateway.system_settings.default_max_tokens is
  'max_tokens sent upstream when the request gives none (then capped by what the balance affords).';
comment on column gateway.system_settings.hold_timeout_seconds is
  'An open hold older than this is voided by the sweeper and recorded with status expired.';
comment on column gateway.system_settings.usd_per_credit is
  'Display price of one credit in USD (monitor "cost" fields). Spec: 1 token = 1 credit = $0.00002.';
alter table gateway.system_settings enable row level security;
create policy no_api_access on gateway.system_settings
  for all to anon, authenticated using (false) with check (false);

-- The row, with every default. It always exists: the request path joins it, so losing it would
-- refuse every key.
insert into gateway.system_settings default values;

create or replace function gateway.keep_settings_row()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  raise exception using
    errcode = '42501',
    message = 'gateway.system_settings always has exactly one row: update it, do not delete it',
    hint = 'invalid_request';
end
$$;
revoke execute on function gateway.keep_settings_row() from public;
create trigger system_settings_keep_row
  before delete on gateway.system_settings
  for each row execute function gateway.keep_settings_row();
create trigger system_settings_no_truncate
  before truncate on gateway.system_settings
  for each statement execute function gateway.keep_settings_row();

-- Operator: sets one setting by name, cast to the column's type and held to its checks.
create or replace function gateway.set_setting(p_name text, p_value text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_type text;
  v_row jsonb;
begin
  select format_type(a.atttypid, a.atttypmod)
    into v_type
    from pg_catalog.pg_attribute a
   where a.attrelid = 'gateway.system_settings'::regclass
     and a.attname = p_name
     and a.attnum > 0
     and not a.attisdropped
     and a.attname not in ('id', 'updated_at');
  if v_type is null then
    raise exception using
      errcode = '22023',
      message = format('unknown setting %L', p_name),
      hint = 'invalid_request';
  end if;
  -- The name is checked against the catalog above and quoted with %I; the value is a parameter.
  execute format(
    'update gateway.system_settings set %I = cast($1 as %s), updated_at = now() where id',
    p_name, v_type
  ) using p_value;
  select to_jsonb(s) - 'id' into v_row from gateway.system_settings s where s.id;
  return v_row;
end
$$;
revoke execute on function gateway.set_setting(text, text) from public;
grant execute on function gateway.set_setting(text, text) to service_role;
comment on function gateway.set_setting(text, text) is
  'Operator: set one system setting, e.g. select gateway.set_setting(''signup_credits'', ''500'').';

-- Per-model price in credits per token; a model without a row costs 1 and 1.
create table gateway.model_pricing (
  model text primary key,
  prompt_multiplier numeric not null default 1 check (prompt_multiplier >= 0),
  completion_multiplier numeric not null default 1 check (completion_multiplier > 0),
  updated_at timestamptz not null default now()
);
comment on table gateway.model_pricing is
  'Credits per token for a model (prompt and completion). Unknown models: 1 and 1. A request is '
  'priced at admission (the hold stores the multipliers); later changes do not affect it.';
alter table gateway.model_pricing enable row level security;
create policy no_api_access on gateway.model_pricing
  for all to anon, authenticated using (false) with check (false);

-- Operator: sets a model's multipliers (insert or update); holds already placed keep theirs.
create or replace function gateway.set_model_pricing(
  p_model text,
  p_prompt_multiplier numeric,
  p_completion_multiplier numeric
)
returns gateway.model_pricing
language sql
security definer
set search_path = ''
as $$
  insert into gateway.model_pricing (model, prompt_multiplier, completion_multiplier)
  values (p_model, p_prompt_multiplier, p_completion_multiplier)
  on conflict (model) do update
    set prompt_multiplier = excluded.prompt_multiplier,
        completion_multiplier = excluded.completion_multiplier,
        updated_at = now()
  returning *;
$$;
revoke execute on function gateway.set_model_pricing(text, numeric, numeric) from public;
grant execute on function gateway.set_model_pricing(text, numeric, numeric) to service_role;

-- The OpenRouter models catalog, shared by every edge isolate and kept across restarts.
create table gateway.models_cache (
  id boolean primary key default true check (id),
  data jsonb,
  fetched_at timestamptz,
  last_error text,
  last_error_at timestamptz
);
comment on table gateway.models_cache is
  'Last good copy of the upstream models catalog (one row) and the last refresh error, if any.';
alter table gateway.models_cache enable row level security;
create policy no_api_access on gateway.models_cache
  for all to anon, authenticated using (false) with check (false);
insert into gateway.models_cache default values;

-- The cached catalog with its age and TTL, for the function to decide whether to refresh.
create or replace function gateway.models_cache()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'data', c.data,
    'fetched_at', c.fetched_at,
    'ttl_seconds', s.models_cache_ttl_seconds,
    'last_error', c.last_error,
    'last_error_at', c.last_error_at
  )
  from gateway.models_cache c
  cross join gateway.system_settings s
  where c.id and s.id;
$$;
revoke execute on function gateway.models_cache() from public;
grant execute on function gateway.models_cache() to gateway_api;

-- Stores a refreshed catalog; p_data null with p_error records a failed refresh and keeps the last
-- good copy.
create or replace function gateway.store_models_cache(
  p_data jsonb,
  p_error text default null,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_data is not null then
    update gateway.models_cache
       set data = p_data, fetched_at = p_now, last_error = p_error,
           last_error_at = case when p_error is null then last_error_at else p_now end
     where id;
  elsif p_error is not null then
    update gateway.models_cache set last_error = p_error, last_error_at = p_now where id;
  else
    raise exception using
      errcode = '22023', message = 'give p_data or p_error', hint = 'invalid_request';
  end if;
  return gateway.models_cache();
end
$$;
revoke execute on function gateway.store_models_cache(jsonb, text, timestamptz) from public;
grant execute on function gateway.store_models_cache(jsonb, text, timestamptz) to gateway_api;

-- The database answers: the function's /health.
create or replace function gateway.health()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('database', 'ok', 'time', now());
$$;
revoke execute on function gateway.health() from public;
grant execute on function gateway.health() to gateway_api;
