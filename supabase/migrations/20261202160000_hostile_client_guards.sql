-- hostile_client_guards: what a hostile client could get beyond its due, closed (issue 11, findings
-- 4, 5, 6, 7 and 8).
--
-- 4. A key's own limits cannot be multiplied. A key capped at 3 requests could create keys capped
--    at 3 each (each within what it had left, which was never reduced) and so make 18 requests. Now
--    a key with a limit of its own (a request cap, or rate limits set on the key) is a spending key:
--    it cannot create keys, and of the account's keys it may update, rotate or delete only itself
--    (where its fences still stop it from loosening itself). Keys are created and managed by keys
--    without such a limit — the primary key, as with OpenRouter's or LiteLLM's management keys.
-- 5. Sign-up limits per network (IPv4 /24, IPv6 /64, settings) instead of per exact address, and a
--    global sign-ups-per-hour budget; counted in gateway.signups, which erasing an account does not
--    empty (before, a deleted account no longer counted against its address).
-- 6. Size limits on the free-form fields a caller can store: profile settings, key IP and referrer
--    lists, permissions, grant and deactivation reasons (clear 22023 errors, and table checks).
-- 7. A negative adjustment is compared with the available credits (balance - held), under the
--    balance's row lock: it can no longer take credits that requests in flight will be charged.
-- 8. idempotency_claim never answers a replay without a response: a row deleted between its insert
--    and its `select … for update` is claimed again.

-- 4. Keys with limits of their own --------------------------------------------------------------------

-- The limit of p_key's own that makes it a spending key ('request cap', 'rate limits'), or null.
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

-- As before, plus: a key with a limit of its own manages no key but itself.
create or replace function gateway.managed_key(p_caller gateway.api_keys, p_key_id bigint)
returns gateway.api_keys
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key gateway.api_keys;
  v_limit text;
begin
  select x.* into v_key
    from gateway.api_keys x
   where x.id = p_key_id and x.account_id = p_caller.account_id and x.deleted_at is null
     for update;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'API key not found';
  end if;
  if v_key.id <> p_caller.id then
    v_limit := gateway.key_own_limit(p_caller);
    if v_limit is not null then
      raise exception using errcode = '42501', hint = 'permission_denied',
        message = format('a key with its own %s can manage only itself; use a key without one',
                         v_limit);
    end if;
  end if;
  if not (v_key.permissions <@ p_caller.permissions) then
    raise exception using errcode = '42501', hint = 'permission_denied',
      message = 'a key cannot manage a key with permissions it does not have';
  end if;
  perform gateway.raise_fence_escape(gateway.fence_escape(v_key, p_caller));
  return v_key;
end
$$;
revoke execute on function gateway.managed_key(gateway.api_keys, bigint) from public;

-- As before, plus: a key with a limit of its own creates no keys.
create or replace function gateway.create_key(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_spec jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_spec jsonb := coalesce(p_spec, '{}');
  v_now timestamptz := now();
  v_perms text[];
  v_name text;
  v_env text;
  v_expires timestamptz;
  v_max bigint;
  v_count integer;
  v_limit integer;
  v_own_limit text;
  v_bad text;
  v_plain text;
  v_key gateway.api_keys;
  v_new gateway.api_keys;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', v_now);
  v_own_limit := gateway.key_own_limit(k);
  if v_own_limit is not null then
    raise exception using errcode = '42501', hint = 'permission_denied',
      message = format('a key with its own %s cannot create keys; use a key without one',
                       v_own_limit);
  end if;
  if jsonb_typeof(v_spec) <> 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the key specification must be a JSON object';
  end if;
  select string_agg(n, ', ') into v_bad from jsonb_object_keys(v_spec) n
   where n not in ('name', 'key_name', 'permissions', 'environment', 'environment_tag',
                   'expires_at', 'expires_in_days', 'max_requests', 'allowed_ips',
                   'allowed_referrers');
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('unknown key fields: %s', v_bad);
  end if;

  v_perms := case when v_spec -> 'permissions' is null or v_spec -> 'permissions' = 'null'
                  then array(select p from unnest(k.permissions) p where p <> 'admin' order by p)
                  else gateway.parse_permissions(v_spec -> 'permissions') end;
  if cardinality(v_perms) = 0 or not (v_perms <@ k.permissions) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a key can only create keys whose permissions are a subset of its own';
  end if;

  -- One key per account at a time: serializes the count below and the default name.
  perform 1 from gateway.accounts a where a.id = k.account_id for update;
  select count(*) into v_count
    from gateway.api_keys x where x.account_id = k.account_id and x.deleted_at is null;
  select s.max_keys_per_account into v_limit from gateway.system_settings s where s.id;
  if v_count >= v_limit then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('an account may have at most %s keys', v_limit);
  end if;

  v_name := coalesce(nullif(btrim(coalesce(v_spec ->> 'name', v_spec ->> 'key_name')), ''),
                     'API Key ' || (v_count + 1));
  v_env := coalesce(v_spec ->> 'environment', v_spec ->> 'environment_tag', k.environment);
  begin
    v_expires := case
      when v_spec ->> 'expires_at' is not null then (v_spec ->> 'expires_at')::timestamptz
      when v_spec ->> 'expires_in_days' is not null
        then v_now + make_interval(days => (v_spec ->> 'expires_in_days')::integer)
    end;
    v_max := (v_spec ->> 'max_requests')::bigint;
  exception when others then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'expires_at must be a timestamp, expires_in_days and max_requests whole numbers';
  end;
  if v_expires is not null and v_expires <= v_now then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'expiry must be in the future';
  end if;
  if v_max is not null and v_max < 1 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'max_requests must be >= 1';
  end if;

  -- The key as it would be, checked against the caller's fences before it exists.
  v_new.permissions := v_perms;
  v_new.expires_at := v_expires;
  v_new.max_requests := v_max;
  v_new.allowed_ips := gateway.parse_cidrs(v_spec -> 'allowed_ips');
  v_new.allowed_referrers := gateway.parse_referrers(v_spec -> 'allowed_referrers');
  perform gateway.raise_fence_escape(gateway.fence_escape(v_new, k));

  v_plain := gateway.generate_key(v_env);
  v_key := gateway.issue_key(
    v_plain, k.account_id, v_name, v_env, v_perms, false, v_expires, v_max,
    v_new.allowed_ips, v_new.allowed_referrers, k.id, 'key', p_client_ip, v_now);
  return gateway.key_json(v_key) || jsonb_build_object('api_key', v_plain, 'user_id', k.account_id);
end
$$;
revoke execute on function gateway.create_key(bytea, inet, text, jsonb) from public;
grant execute on function gateway.create_key(bytea, inet, text, jsonb) to gateway_api;

-- 5. Sign-ups -------------------------------------------------------------------------------------

alter table gateway.system_settings
  rename column registrations_per_ip_per_hour to registrations_per_network_per_hour;
alter table gateway.system_settings
  rename constraint system_settings_registrations_per_ip_per_hour_check
  to system_settings_registrations_per_network_per_hour_check;
alter table gateway.system_settings
  add column registrations_per_hour integer not null default 100
    check (registrations_per_hour >= 0),
  add column registration_ipv4_prefix integer not null default 24
    check (registration_ipv4_prefix between 8 and 32),
  add column registration_ipv6_prefix integer not null default 64
    check (registration_ipv6_prefix between 16 and 128);
comment on column gateway.system_settings.registrations_per_network_per_hour is
  'Self-service sign-ups per hour from one network (an IPv4 /24, an IPv6 /64: one subscriber).';
comment on column gateway.system_settings.registrations_per_hour is
  'Self-service sign-ups per hour over all networks: caps the free credits given away per hour.';

create table gateway.signups (
  id bigint generated always as identity primary key,
  network cidr not null,
  created_at timestamptz not null
);
comment on table gateway.signups is
  'Self-service sign-ups by network and time, what the sign-up limits count. Not linked to the '
  'account, so erasing an account does not give its sign-up back; register drops rows after a day.';
create index signups_created_at_idx on gateway.signups (created_at);
alter table gateway.signups enable row level security;

-- The network a sign-up from p_ip counts against (settings registration_ipv4/ipv6_prefix).
create or replace function gateway.signup_network(p_ip inet)
returns cidr
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_ip inet := p_ip;
  v_v4 integer;
  v_v6 integer;
begin
  -- An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) is that IPv4 address: all of
  -- IPv4 is inside one IPv6 /64.
  if family(v_ip) = 6 and v_ip <<= '::ffff:0.0.0.0/96'::inet then
    v_ip := substring(host(v_ip) from '[0-9.]+$')::inet;
  end if;
  select s.registration_ipv4_prefix, s.registration_ipv6_prefix into v_v4, v_v6
    from gateway.system_settings s where s.id;
  return network(set_masklen(v_ip, least(masklen(v_ip),
                                          case family(v_ip) when 4 then v_v4 else v_v6 end)));
end
$$;
revoke execute on function gateway.signup_network(inet) from public;

-- The sign-ups of the last hour (the day's rows are kept so a changed limit sees them).
insert into gateway.signups (network, created_at)
select gateway.signup_network(a.registration_ip), a.created_at
  from gateway.accounts a
 where a.registration_ip is not null and a.created_at > now() - interval '1 day'
 order by a.created_at;

-- As before, but limited per network and over all networks (p_client_ip null: an operator's
-- account, not counted).
create or replace function gateway.register(
  p_email text,
  p_username text default null,
  p_environment text default 'live',
  p_client_ip inet default null,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  s gateway.system_settings;
  v_account_id bigint;
  v_network cidr;
  v_from_network integer;
  v_count integer;
  v_freed timestamptz;
  v_constraint text;
  v_plain text := gateway.generate_key(coalesce(p_environment, 'live'));
  v_key gateway.api_keys;
  v_balance bigint := 0;
begin
  select * into s from gateway.system_settings where id;
  if p_email is null or length(p_email) > 254 or p_email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a valid email is required';
  end if;
  if p_username is not null and p_username !~ '^[A-Za-z0-9_.-]{1,50}$' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'username: 1-50 letters, digits, _ . -';
  end if;

  if p_client_ip is not null then
    -- One sign-up at a time (they are rare), so concurrent ones cannot all pass the counts.
    perform pg_advisory_xact_lock(hashtextextended('gateway.register', 0));
    v_network := gateway.signup_network(p_client_ip);
    delete from gateway.signups g where g.created_at < p_now - interval '1 day';
    select count(*) filter (where g.network && v_network), count(*)
      into v_from_network, v_count
      from gateway.signups g
     where g.created_at > p_now - interval '1 hour' and g.created_at <= p_now;
    if v_from_network >= s.registrations_per_network_per_hour then
      -- Retry-After: when enough of them are an hour old for one more.
      select g.created_at into v_freed
        from gateway.signups g
       where g.network && v_network
         and g.created_at > p_now - interval '1 hour' and g.created_at <= p_now
       order by g.created_at
      offset v_from_network - s.registrations_per_network_per_hour limit 1;
      raise exception using errcode = '53400', hint = 'rate_limited',
        message = 'too many sign-ups from this network in the last hour',
        detail = greatest(1, ceil(extract(epoch from
                   coalesce(v_freed, p_now) + interval '1 hour' - p_now)))::text;
    end if;
    if v_count >= s.registrations_per_hour then
      select g.created_at into v_freed
        from gateway.signups g
       where g.created_at > p_now - interval '1 hour' and g.created_at <= p_now
       order by g.created_at
      offset v_count - s.registrations_per_hour limit 1;
      raise exception using errcode = '53400', hint = 'signups_paused',
        message = 'the gateway takes no more sign-ups this hour; please retry later',
        detail = greatest(1, ceil(extract(epoch from
                   coalesce(v_freed, p_now) + interval '1 hour' - p_now)))::text;
    end if;
    insert into gateway.signups (network, created_at) values (v_network, p_now);
  end if;

  begin
    insert into gateway.accounts (email, username, registration_ip, created_at, updated_at)
    values (p_email, p_username, p_client_ip, p_now, p_now)
    returning id into v_account_id;
  exception when unique_violation then
    get stacked diagnostics v_constraint = constraint_name;
    raise exception using errcode = '23505',
      hint = case when v_constraint = 'accounts_username_key' then 'username_taken'
                  else 'email_taken' end,
      message = case when v_constraint = 'accounts_username_key' then 'username is already taken'
                     else 'email is already registered' end;
  end;
  insert into gateway.credit_balances (account_id) values (v_account_id);
  if s.signup_credits > 0 then
    v_balance := gateway.post_ledger(
      v_account_id, 'grant', s.signup_credits, 'signup credits', 'register', p_now);
  end if;

  v_key := gateway.issue_key(
    v_plain, v_account_id, 'Primary Key', coalesce(p_environment, 'live'), array['read', 'write'],
    true, null, null, '{}', '{}', null, 'register', p_client_ip, p_now);

  return jsonb_build_object(
    'user_id', v_account_id,
    'email', p_email,
    'username', p_username,
    'api_key', v_plain,
    'key_id', v_key.id,
    'key_prefix', v_key.key_prefix,
    'environment', v_key.environment,
    'credits', v_balance
  );
end
$$;
revoke execute on function gateway.register(text, text, text, inet, timestamptz) from public;
grant execute on function gateway.register(text, text, text, inet, timestamptz) to gateway_api;

-- 6. Sizes of stored free-form fields -----------------------------------------------------------------

-- Rows written before these limits may exceed them (not valid): they hold for every new write.
alter table gateway.accounts
  add constraint accounts_settings_size check (octet_length(settings::text) <= 16384) not valid;
alter table gateway.api_keys
  add constraint api_keys_allowed_ips_count check (cardinality(allowed_ips) <= 100) not valid,
  add constraint api_keys_allowed_referrers_count check (cardinality(allowed_referrers) <= 100)
    not valid;

create or replace function gateway.parse_permissions(p_value jsonb)
returns text[]
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_perms text[];
begin
  if jsonb_typeof(p_value) is distinct from 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'permissions must be an array of "read", "write", "admin"';
  end if;
  if jsonb_array_length(p_value) > 3 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'permissions: at most 3 entries';
  end if;
  select coalesce(array_agg(distinct p order by p), '{}') into v_perms
    from jsonb_array_elements_text(p_value) p;
  if cardinality(v_perms) = 0 or not (v_perms <@ array['read', 'write', 'admin']) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'permissions must be a non-empty array of "read", "write", "admin"';
  end if;
  return v_perms;
end
$$;
revoke execute on function gateway.parse_permissions(jsonb) from public;

create or replace function gateway.parse_cidrs(p_value jsonb)
returns cidr[]
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_out cidr[] := '{}'::cidr[];
  v_item text;
begin
  if p_value is null or p_value = 'null'::jsonb then
    return v_out;
  end if;
  if jsonb_typeof(p_value) <> 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'allowed_ips must be an array of IP addresses or CIDR ranges';
  end if;
  if jsonb_array_length(p_value) > 100 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'allowed_ips: at most 100 addresses or ranges';
  end if;
  for v_item in select jsonb_array_elements_text(p_value) loop
    begin
      -- '10.1.2.3/8' means the /8: host bits are dropped rather than refused.
      v_out := v_out || network(v_item::inet)::cidr;
    exception when invalid_text_representation then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = format('not an IP address or CIDR range: %s', left(v_item, 64));
    end;
  end loop;
  return v_out;
end
$$;
revoke execute on function gateway.parse_cidrs(jsonb) from public;

create or replace function gateway.parse_referrers(p_value jsonb)
returns text[]
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_out text[] := '{}'::text[];
begin
  if p_value is null or p_value = 'null'::jsonb then
    return v_out;
  end if;
  if jsonb_typeof(p_value) <> 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'allowed_referrers must be an array of domains (example.com or *.example.com)';
  end if;
  if jsonb_array_length(p_value) > 100 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'allowed_referrers: at most 100 domains';
  end if;
  select coalesce(array_agg(distinct lower(d) order by lower(d)), '{}') into v_out
    from jsonb_array_elements_text(p_value) d;
  if exists (
    select from unnest(v_out) d
     where length(d) > 253
        or d !~ '^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'
  ) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'allowed_referrers must be domains of up to 253 characters: example.com or '
                '*.example.com';
  end if;
  return v_out;
end
$$;
revoke execute on function gateway.parse_referrers(jsonb) from public;

-- As before, plus: settings at most 16 KiB of JSON.
create or replace function gateway.update_profile(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_changes jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_bad text;
  v_constraint text;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write');
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'changes must be a JSON object';
  end if;
  select string_agg(n, ', ') into v_bad
    from jsonb_each(p_changes) e (n, v)
   where n not in ('email', 'username', 'full_name', 'company', 'settings')
      or (n = 'settings' and jsonb_typeof(v) <> 'object')
      or (n <> 'settings' and jsonb_typeof(v) not in ('string', 'null'))
      or (n = 'email' and (jsonb_typeof(v) <> 'string'
                           or (v #>> '{}') !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'));
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('invalid profile fields: %s', left(v_bad, 200));
  end if;
  if octet_length((p_changes -> 'settings')::text) > 16384 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'settings: at most 16384 bytes of JSON';
  end if;
  begin
    update gateway.accounts a set
      email = case when p_changes ? 'email' then p_changes ->> 'email' else a.email end,
      username = case when p_changes ? 'username' then p_changes ->> 'username' else a.username end,
      full_name = case when p_changes ? 'full_name' then p_changes ->> 'full_name'
                       else a.full_name end,
      company = case when p_changes ? 'company' then p_changes ->> 'company' else a.company end,
      settings = case when p_changes ? 'settings' then p_changes -> 'settings' else a.settings end,
      updated_at = now()
    where a.id = k.account_id;
  exception
    when unique_violation then
      get stacked diagnostics v_constraint = constraint_name;
      raise exception using errcode = '23505',
        hint = case when v_constraint = 'accounts_username_key' then 'username_taken'
                    else 'email_taken' end,
        message = case when v_constraint = 'accounts_username_key' then 'username is already taken'
                       else 'email is already registered' end;
    when check_violation then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = 'invalid profile value (full_name and company: at most 200 characters)';
  end;
  return gateway.profile_json(k.account_id);
end
$$;
revoke execute on function gateway.update_profile(bytea, inet, text, jsonb) from public;
grant execute on function gateway.update_profile(bytea, inet, text, jsonb) to gateway_api;

-- As before, plus: the reason is at most 500 characters.
create or replace function gateway.set_key_active(p_key_id bigint, p_active boolean, p_reason text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  t gateway.api_keys;
begin
  if length(p_reason) > 500 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'reason: at most 500 characters';
  end if;
  update gateway.api_keys k set is_active = p_active, suspended = not p_active, updated_at = now()
   where k.id = p_key_id and k.deleted_at is null
  returning k.* into t;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'key not found';
  end if;
  perform gateway.audit_key(
    t.account_id, t.id, null, null, case when p_active then 'reactivate' else 'deactivate' end,
    jsonb_build_object('reason', p_reason), null, now());
  return gateway.key_json(t);
end
$$;
revoke execute on function gateway.set_key_active(bigint, boolean, text) from public;

-- 7. Adjustments against available credits ----------------------------------------------------------

-- Grants (p_credits > 0) or adjusts (< 0) an account's balance, one ledger row. An adjustment never
-- takes more than the available credits (balance - held): held credits are owed to requests in
-- flight, whose settles must not take the balance below zero.
create or replace function gateway.grant_credits(
  p_account_id bigint,
  p_credits bigint,
  p_reason text,
  p_actor text,
  p_now timestamptz default now()
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
  v_held bigint;
begin
  if p_credits is null or p_credits = 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'credits must be a non-zero whole number';
  end if;
  if length(p_reason) > 500 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'reason: at most 500 characters';
  end if;
  select b.balance, b.held into v_balance, v_held
    from gateway.credit_balances b where b.account_id = p_account_id for update;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user not found';
  end if;
  if p_credits < 0 and v_balance - v_held + p_credits < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('an adjustment of %s exceeds the available credits: %s (balance %s, of '
                       'which %s held by requests in flight)',
                       p_credits, greatest(v_balance - v_held, 0), v_balance, v_held);
  end if;
  return gateway.post_ledger(
    p_account_id, case when p_credits > 0 then 'grant' else 'adjustment' end, p_credits, p_reason,
    p_actor, p_now);
end
$$;
revoke execute on function gateway.grant_credits(bigint, bigint, text, text, timestamptz)
  from public;

-- 8. Idempotency: no replay without a response -------------------------------------------------------

-- A done entry always carries what to replay (idempotency_store writes both at once).
alter table gateway.idempotency_keys
  add constraint idempotency_keys_done_has_response
  check (state <> 'done' or (status is not null and response is not null));

-- Claims (account, scope, key) for a request with this fingerprint. Returns {state: started |
-- replay (+ status, response) | in_progress | mismatch}.
create or replace function gateway.idempotency_claim(
  p_account_id bigint,
  p_scope text,
  p_idem_key text,
  p_fingerprint text,
  p_now timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ttl integer;
  v_abandon integer;
  r gateway.idempotency_keys;
begin
  if p_idem_key is null or length(p_idem_key) not between 1 and 255 or p_fingerprint is null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'Idempotency-Key must be 1-255 characters';
  end if;
  select s.idempotency_ttl_seconds, s.hold_timeout_seconds into v_ttl, v_abandon
    from gateway.system_settings s where s.id;
  loop
    -- A concurrent claim of the same key waits here until the first transaction ends.
    insert into gateway.idempotency_keys
      (account_id, scope, idem_key, fingerprint, state, created_at, expires_at)
    values (p_account_id, p_scope, p_idem_key, p_fingerprint, 'running', p_now,
            p_now + make_interval(secs => v_ttl))
    on conflict do nothing;
    if found then
      return jsonb_build_object('state', 'started');
    end if;
    select * into r from gateway.idempotency_keys i
     where i.account_id = p_account_id and i.scope = p_scope and i.idem_key = p_idem_key
       for update;
    exit when found;
    -- The row the insert ran into was deleted since (a released claim, the purge): claim anew.
  end loop;
  if r.expires_at <= p_now
     or (r.state = 'running' and r.created_at <= p_now - make_interval(secs => v_abandon)) then
    update gateway.idempotency_keys i
       set fingerprint = p_fingerprint, state = 'running', status = null, response = null,
           created_at = p_now, completed_at = null, expires_at = p_now + make_interval(secs => v_ttl)
     where i.account_id = p_account_id and i.scope = p_scope and i.idem_key = p_idem_key;
    return jsonb_build_object('state', 'started');
  end if;
  if r.fingerprint <> p_fingerprint then
    return jsonb_build_object('state', 'mismatch');
  end if;
  if r.state = 'running' then
    return jsonb_build_object('state', 'in_progress');
  end if;
  return jsonb_build_object('state', 'replay', 'status', r.status, 'response', r.response);
end
$$;
revoke execute on function gateway.idempotency_claim(bigint, text, text, text, timestamptz)
  from public;
