-- System settings (one typed row), the shared models-catalog cache, health, and the operator
-- functions that change them. A limit's default lives here and nowhere else.

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
  registrations_per_network_per_hour integer not null default 5
    check (registrations_per_network_per_hour >= 0),
  max_keys_per_account integer not null default 25 check (max_keys_per_account >= 1),
  max_rotation_grace_seconds integer not null default 604800
    check (max_rotation_grace_seconds >= 0),
  models_cache_ttl_seconds integer not null default 3600 check (models_cache_ttl_seconds >= 0),
  idempotency_ttl_seconds integer not null default 86400 check (idempotency_ttl_seconds >= 60),
  usd_per_credit numeric not null default 0.00002
    check (usd_per_credit > 0 and usd_per_credit < 'Infinity'),
  updated_at timestamptz not null default now(),
  pricing_mode text not null default 'flat' check (pricing_mode in ('flat', 'cost')),
  markup_percent numeric not null default 0
    check (markup_percent >= 0 and markup_percent <= 100000),
  image_part_tokens integer not null default 3000 check (image_part_tokens >= 0),
  audio_part_tokens integer not null default 20000 check (audio_part_tokens >= 0),
  file_part_tokens integer not null default 50000 check (file_part_tokens >= 0),
  web_result_tokens integer not null default 2000 check (web_result_tokens >= 0),
  web_result_usd numeric not null default 0.007
    check (web_result_usd >= 0 and web_result_usd < 'Infinity'),
  refuse_unprofitable_models boolean not null default false,
  registrations_per_hour integer not null default 100 check (registrations_per_hour >= 0),
  registration_ipv4_prefix integer not null default 24 check (registration_ipv4_prefix between 8 and 32),
  registration_ipv6_prefix integer not null default 64
    check (registration_ipv6_prefix between 16 and 128),
  hold_lease_seconds integer not null default 6 check (hold_lease_seconds between 4 and 3600)
);
comment on column gateway.system_settings.registrations_per_network_per_hour is
  'Self-service sign-ups per hour from one network (an IPv4 /24, an IPv6 /64: one subscriber).';
comment on column gateway.system_settings.registrations_per_hour is
  'Self-service sign-ups per hour over all networks: caps the free credits given away per hour.';
comment on table gateway.system_settings is
  'The one row of system settings. Change with gateway.set_setting(name, value).';
comment on column gateway.system_settings.signup_credits is 'Credits granted at registration.';
comment on column gateway.system_settings.default_max_tokens is
  'max_tokens sent upstream when the request gives none (then capped by what the balance affords).';
comment on column gateway.system_settings.hold_timeout_seconds is
  'The longest a worker may keep a hold alive (or its request''s lifetime, if longer): an open '
  'hold is voided by the sweeper, recorded with status expired, once its lease lapses and at the '
  'latest this long after admission.';
comment on column gateway.system_settings.hold_lease_seconds is
  'A hold''s lease: admission gives it this long, and its worker renews it every second or two '
  'while the request runs (gateway.note_holds). A worker that vanished (killed, crashed) stops '
  'renewing: its holds upstream never answered for stop holding credits within this plus the '
  'sweeper''s 2 s; those with a generation id stay held until the reconcile settles them.';
comment on column gateway.system_settings.usd_per_credit is
  'USD per credit: what a credit is sold for (monitor costs, usage.cost) and the rate at which USD '
  'prices become credits (fees in flat mode, everything in cost mode).';
comment on column gateway.system_settings.pricing_mode is
  'flat: credits per token (1, or the model''s multipliers) plus pass-through fees; cost: upstream '
  'USD × (1 + markup_percent/100) / usd_per_credit. Applies to requests admitted after the change.';
comment on column gateway.system_settings.markup_percent is
  'Cost mode: the default markup on upstream cost (a model_pricing row can override it).';
comment on column gateway.system_settings.image_part_tokens is
  'Prompt tokens a hold allows per image part whose bytes are not in the prompt bound.';
comment on column gateway.system_settings.audio_part_tokens is
  'Prompt tokens a hold allows per audio part.';
comment on column gateway.system_settings.file_part_tokens is
  'Prompt tokens a hold allows per file part (a file given by URL has no bytes to count).';
comment on column gateway.system_settings.web_result_tokens is
  'Prompt tokens a hold allows per web-search result the request may pull.';
comment on column gateway.system_settings.web_result_usd is
  'USD a hold allows per web-search result, and the price of a web search when the catalog gives '
  'the model none (OpenRouter''s Exa search: $0.007 for up to 10 results).';
comment on column gateway.system_settings.refuse_unprofitable_models is
  'Refuse (403 model_not_available) models whose catalog price is above what their multipliers charge.';
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

-- Stores a refreshed catalog and prices it (gateway.store_model_catalog, 02_pricing.sql); p_data
-- null with p_error records a failed refresh and keeps the last good copy.
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
    perform gateway.store_model_catalog(p_data, p_now);
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
