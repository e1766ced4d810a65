-- The user API behind /auth/register, /user/* and /user/api-keys/*: registration, balance, monitor,
-- limits, profile, account deletion, and key management. Every call but register authenticates its
-- caller (read for reads, write for changes); a key manages only keys of its own account at least
-- as restricted as itself, and every key operation is audited.

-- Self-service sign-ups, counted by network: what register's limits count.
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

-- Creates an account with the signup credits (a ledger grant) and its primary key (read, write),
-- returned once in plaintext. Sign-ups are limited per network (/24, /64) and over all networks per
-- hour (gateway.signups); p_client_ip null is an operator's account, not counted.
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

-- The caller's credits: balance, held, available.
create or replace function gateway.user_balance(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_out jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read');
  select jsonb_build_object(
    'user_id', k.account_id,
    'credits', b.balance,
    'held_credits', b.held,
    'available_credits', b.balance - b.held,
    'api_key', k.key_prefix
  ) into v_out
    from gateway.credit_balances b where b.account_id = k.account_id;
  return v_out;
end
$$;
revoke execute on function gateway.user_balance(bytea, inet, text) from public;
grant execute on function gateway.user_balance(bytea, inet, text) to gateway_api;

-- The caller's usage figures (requests that reached upstream; voided ones did not) and limits.
create or replace function gateway.user_monitor(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_price numeric;
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
  v_month timestamptz := date_trunc('month', p_now, 'UTC');
  v_metrics jsonb;
  v_balance bigint;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read', p_now);
  select s.usd_per_credit into v_price from gateway.system_settings s where s.id;
  select b.balance into v_balance from gateway.credit_balances b where b.account_id = k.account_id;
  -- Requests = admitted requests that reached upstream (voided ones never did). Cost = credits ×
  -- the usd_per_credit they were charged at (today's for records older than that column).
  select jsonb_build_object(
    'total_requests', count(*),
    'total_tokens', coalesce(sum(u.total_tokens), 0),
    'total_credits', coalesce(sum(u.credits_charged), 0),
    'total_cost', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price)), 0), 6),
    'requests_today', count(*) filter (where u.created_at >= v_day),
    'tokens_today', coalesce(sum(u.total_tokens) filter (where u.created_at >= v_day), 0),
    'credits_today', coalesce(sum(u.credits_charged) filter (where u.created_at >= v_day), 0),
    'cost_today', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price))
                                   filter (where u.created_at >= v_day), 0), 6),
    'requests_this_month', count(*) filter (where u.created_at >= v_month),
    'tokens_this_month', coalesce(sum(u.total_tokens) filter (where u.created_at >= v_month), 0),
    'credits_this_month',
      coalesce(sum(u.credits_charged) filter (where u.created_at >= v_month), 0),
    'cost_this_month', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price))
                                        filter (where u.created_at >= v_month), 0), 6),
    'average_tokens_per_request',
      case when count(*) = 0 then 0.0 else round(sum(u.total_tokens)::numeric / count(*), 1) end,
    'most_used_model', mode() within group (order by u.model),
    'last_request_time', max(u.created_at)
  ) into v_metrics
    from gateway.usage_records u
   where u.account_id = k.account_id and u.status <> 'voided';
  return jsonb_build_object(
    'status', 'success',
    'timestamp', p_now,
    'user_id', k.account_id,
    'api_key', k.key_prefix,
    'current_credits', v_balance,
    'usage_metrics', v_metrics,
    'rate_limits', gateway.account_limits(k.account_id)
  );
end
$$;
revoke execute on function gateway.user_monitor(bytea, inet, text, timestamptz) from public;
grant execute on function gateway.user_monitor(bytea, inet, text, timestamptz) to gateway_api;

-- The caller's account and key limits, usage in the current windows, and when each resets.
create or replace function gateway.user_limits(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_key_limits jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read', p_now);
  v_key_limits := gateway.key_limits(k.id);
  return jsonb_build_object(
    'user_id', k.account_id,
    'key_id', k.id,
    'rate_limits', gateway.account_limits(k.account_id),
    'key_rate_limits', v_key_limits,
    'usage', gateway.window_usage('account', k.account_id, p_now),
    'key_usage', case when v_key_limits is not null
                      then gateway.window_usage('key', k.id, p_now) end,
    'reset_seconds', jsonb_build_object(
      'minute', gateway.window_reset_seconds('minute', p_now),
      'hour', gateway.window_reset_seconds('hour', p_now),
      'day', gateway.window_reset_seconds('day', p_now))
  );
end
$$;
revoke execute on function gateway.user_limits(bytea, inet, text, timestamptz) from public;
grant execute on function gateway.user_limits(bytea, inet, text, timestamptz) to gateway_api;

-- An account's profile as the API shows it.
create or replace function gateway.profile_json(p_account_id bigint)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'user_id', a.id,
    'email', a.email,
    'username', a.username,
    'full_name', a.full_name,
    'company', a.company,
    'settings', a.settings,
    'credits', b.balance,
    'is_active', a.is_active,
    'created_at', a.created_at,
    'updated_at', a.updated_at
  )
  from gateway.accounts a
  join gateway.credit_balances b on b.account_id = a.id
  where a.id = p_account_id;
$$;
revoke execute on function gateway.profile_json(bigint) from public;

create or replace function gateway.user_profile(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read');
  return gateway.profile_json(k.account_id);
end
$$;
revoke execute on function gateway.user_profile(bytea, inet, text) from public;
grant execute on function gateway.user_profile(bytea, inet, text) to gateway_api;

-- Changes any of email, username, full_name, company (string or null) and settings (an object);
-- nothing else, credits least of all. Settings at most 16 KiB of JSON.
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

-- Revokes every key, erases personal data (tombstone), keeps ledger, usage and audit rows.
create or replace function gateway.close_account(
  p_account_id bigint,
  p_actor_key_id bigint,
  p_actor text,
  p_client_ip inet,
  p_now timestamptz
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_revoked integer;
begin
  with revoked as (
    update gateway.api_keys k
       set is_active = false, deleted_at = p_now, updated_at = p_now,
           previous_key_hash = null, previous_valid_until = null
     where k.account_id = p_account_id and k.deleted_at is null
    returning k.id
  ), audit as (
    insert into gateway.key_audit_log
      (account_id, key_id, actor_key_id, actor, action, detail, client_ip, created_at)
    select p_account_id, r.id, p_actor_key_id, p_actor, 'delete',
           jsonb_build_object('reason', 'account deleted'), p_client_ip, p_now
      from revoked r
  )
  select count(*) into v_revoked from revoked;
  update gateway.accounts
     set email = null, username = null, full_name = null, company = null, settings = '{}',
         registration_ip = null, is_active = false, deleted_at = p_now, updated_at = p_now
   where id = p_account_id;
  return v_revoked;
end
$$;
revoke execute on function gateway.close_account(bigint, bigint, text, inet, timestamptz) from public;

-- The caller deletes its account: allowed to a key at least as unrestricted as every key revoked.
create or replace function gateway.delete_account(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_revoked integer;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write');
  perform gateway.raise_fence_escape(min(gateway.fence_escape(x, k)))
     from gateway.api_keys x
    where x.account_id = k.account_id and x.deleted_at is null;
  -- Rate limits of its own are a fence too (fence_escape, in 03_keys, cannot see them): a key with
  -- them deletes the account only if every other key has its own, each at most the caller's.
  if exists (select from gateway.key_rate_limits c where c.key_id = k.id)
     and exists (
       select from gateway.api_keys x
        where x.account_id = k.account_id and x.deleted_at is null and x.id <> k.id
          and not exists (
            select from gateway.key_rate_limits c, gateway.key_rate_limits t
             where c.key_id = k.id and t.key_id = x.id
               and (c.requests_per_minute is null or t.requests_per_minute <= c.requests_per_minute)
               and (c.requests_per_hour is null or t.requests_per_hour <= c.requests_per_hour)
               and (c.requests_per_day is null or t.requests_per_day <= c.requests_per_day)
               and (c.tokens_per_minute is null or t.tokens_per_minute <= c.tokens_per_minute)
               and (c.tokens_per_hour is null or t.tokens_per_hour <= c.tokens_per_hour)
               and (c.tokens_per_day is null or t.tokens_per_day <= c.tokens_per_day)))
  then
    raise exception using errcode = '42501', hint = 'permission_denied',
      message = 'a key can only manage keys at least as restricted as itself (rate limits)';
  end if;
  v_revoked := gateway.close_account(k.account_id, k.id, 'key', p_client_ip, now());
  return jsonb_build_object('status', 'deleted', 'user_id', k.account_id, 'keys_revoked', v_revoked);
end
$$;
revoke execute on function gateway.delete_account(bytea, inet, text) from public;
grant execute on function gateway.delete_account(bytea, inet, text) to gateway_api;

-- A new key of the caller's account, at least as restricted as the caller (permissions, expiry,
-- request cap, IP ranges, referrers); the plaintext is returned once. A key with a limit of its own
-- creates no keys: its limit would multiply.
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

create or replace function gateway.list_keys(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_keys jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read');
  select coalesce(jsonb_agg(gateway.key_json(x) order by x.id), '[]') into v_keys
    from gateway.api_keys x
   where x.account_id = k.account_id and x.deleted_at is null;
  return jsonb_build_object(
    'user_id', k.account_id, 'total_keys', jsonb_array_length(v_keys), 'keys', v_keys);
end
$$;
revoke execute on function gateway.list_keys(bytea, inet, text) from public;
grant execute on function gateway.list_keys(bytea, inet, text) to gateway_api;

-- Changes a managed key; afterwards it must still be at least as restricted as its caller (a key
-- cannot lift its own fences). An operator's deactivation stands.
create or replace function gateway.update_key(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_key_id bigint,
  p_changes jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  t gateway.api_keys;
  v_now timestamptz := now();
  v_bad text;
  v_perms text[];
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', v_now);
  t := gateway.managed_key(k, p_key_id);
  if jsonb_typeof(p_changes) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'changes must be a JSON object';
  end if;
  select string_agg(n, ', ') into v_bad from jsonb_object_keys(p_changes) n
   where n not in ('name', 'key_name', 'permissions', 'is_active', 'expires_at', 'max_requests',
                   'allowed_ips', 'allowed_referrers');
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('unknown or read-only key fields: %s', v_bad);
  end if;
  if p_changes ? 'permissions' then
    v_perms := gateway.parse_permissions(p_changes -> 'permissions');
    if not (v_perms <@ k.permissions) then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = 'permissions must be a subset of the calling key''s';
    end if;
  end if;
  if t.suspended and p_changes ? 'is_active' then
    raise exception using errcode = '42501', hint = 'permission_denied',
      message = 'this key was deactivated by an operator';
  end if;
  if t.is_primary and (p_changes ->> 'is_active') = 'false' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the primary key cannot be deactivated';
  end if;
  begin
    update gateway.api_keys x set
      name = coalesce(nullif(btrim(coalesce(p_changes ->> 'name', p_changes ->> 'key_name')), ''),
                      x.name),
      permissions = coalesce(v_perms, x.permissions),
      is_active = coalesce((p_changes ->> 'is_active')::boolean, x.is_active),
      expires_at = case when p_changes ? 'expires_at'
                        then (p_changes ->> 'expires_at')::timestamptz else x.expires_at end,
      max_requests = case when p_changes ? 'max_requests'
                          then (p_changes ->> 'max_requests')::bigint else x.max_requests end,
      allowed_ips = case when p_changes ? 'allowed_ips'
                         then gateway.parse_cidrs(p_changes -> 'allowed_ips') else x.allowed_ips end,
      allowed_referrers = case when p_changes ? 'allowed_referrers'
                               then gateway.parse_referrers(p_changes -> 'allowed_referrers')
                               else x.allowed_referrers end,
      updated_at = v_now
    where x.id = t.id
    returning x.* into t;
  exception
    when unique_violation then
      raise exception using errcode = '23505', hint = 'duplicate_key_name',
        message = 'a key with this name already exists';
    when invalid_text_representation or invalid_datetime_format or datetime_field_overflow
         or numeric_value_out_of_range or check_violation then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = 'invalid key field value';
  end;
  -- The raise undoes the update above (the whole call fails).
  perform gateway.raise_fence_escape(gateway.fence_escape(t, k));
  perform gateway.audit_key(t.account_id, t.id, k.id, 'key', 'update', p_changes, p_client_ip, v_now);
  return gateway.key_json(t);
end
$$;
revoke execute on function gateway.update_key(bytea, inet, text, bigint, jsonb) from public;
grant execute on function gateway.update_key(bytea, inet, text, bigint, jsonb) to gateway_api;

-- A new secret for a managed key; the old one keeps working for p_grace_seconds (0 = stops now).
create or replace function gateway.rotate_key(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_key_id bigint,
  p_grace_seconds integer default 0
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  t gateway.api_keys;
  v_now timestamptz := now();
  v_grace integer := coalesce(p_grace_seconds, 0);
  v_max integer;
  v_plain text;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', v_now);
  t := gateway.managed_key(k, p_key_id);
  select s.max_rotation_grace_seconds into v_max from gateway.system_settings s where s.id;
  if v_grace < 0 or v_grace > v_max then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('grace_seconds must be between 0 and %s', v_max);
  end if;
  v_plain := gateway.generate_key(t.environment);
  update gateway.api_keys x set
    previous_key_hash = case when v_grace > 0 then x.key_hash end,
    previous_valid_until = case when v_grace > 0 then v_now + make_interval(secs => v_grace) end,
    key_hash = gateway.hash_key(v_plain),
    key_prefix = gateway.key_prefix(v_plain),
    updated_at = v_now
  where x.id = t.id
  returning x.* into t;
  perform gateway.audit_key(
    t.account_id, t.id, k.id, 'key', 'rotate',
    jsonb_build_object('grace_seconds', v_grace, 'previous_valid_until', t.previous_valid_until),
    p_client_ip, v_now);
  return gateway.key_json(t) || jsonb_build_object('api_key', v_plain);
end
$$;
revoke execute on function gateway.rotate_key(bytea, inet, text, bigint, integer) from public;
grant execute on function gateway.rotate_key(bytea, inet, text, bigint, integer) to gateway_api;

-- Deletes a managed key (never the primary); it stays as a tombstone for the audit log.
create or replace function gateway.delete_key(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_key_id bigint
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  t gateway.api_keys;
  v_now timestamptz := now();
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', v_now);
  t := gateway.managed_key(k, p_key_id);
  if t.is_primary then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the primary key cannot be deleted';
  end if;
  update gateway.api_keys x
     set is_active = false, deleted_at = v_now, updated_at = v_now,
         previous_key_hash = null, previous_valid_until = null
   where x.id = t.id;
  perform gateway.audit_key(t.account_id, t.id, k.id, 'key', 'delete', '{}', p_client_ip, v_now);
  return jsonb_build_object('status', 'deleted', 'key_id', t.id);
end
$$;
revoke execute on function gateway.delete_key(bytea, inet, text, bigint) from public;
grant execute on function gateway.delete_key(bytea, inet, text, bigint) to gateway_api;

-- Requests used and left per key of the caller's account.
create or replace function gateway.key_usage(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_keys jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read');
  select coalesce(jsonb_agg(jsonb_build_object(
           'key_id', x.id,
           'api_key', x.key_prefix,
           'key_name', x.name,
           'is_active', x.is_active,
           'is_primary', x.is_primary,
           'requests_used', c.requests_used,
           'max_requests', x.max_requests,
           'requests_remaining',
             case when x.max_requests is not null
                  then greatest(x.max_requests - c.requests_used, 0) end,
           'usage_percentage',
             case when x.max_requests is not null
                  then round(c.requests_used * 100.0 / x.max_requests, 1) end,
           'tokens_used', coalesce(t.tokens, 0),
           'credits_used', coalesce(t.credits, 0),
           'environment_tag', x.environment,
           'created_at', x.created_at,
           'last_used_at', c.last_used_at
         ) order by x.id), '[]')
    into v_keys
    from gateway.api_keys x
    join gateway.key_counters c on c.key_id = x.id
    left join (select u.key_id, sum(u.total_tokens) as tokens, sum(u.credits_charged) as credits
                 from gateway.usage_records u
                where u.account_id = k.account_id and u.status <> 'voided'
                group by u.key_id) t on t.key_id = x.id
   where x.account_id = k.account_id and x.deleted_at is null;
  return jsonb_build_object(
    'user_id', k.account_id, 'total_keys', jsonb_array_length(v_keys), 'keys', v_keys);
end
$$;
revoke execute on function gateway.key_usage(bytea, inet, text) from public;
grant execute on function gateway.key_usage(bytea, inet, text) to gateway_api;
