-- key_fences_bind_key_management: a key's fences — its expiry, request cap, IP allowlist and
-- referrer rule — bind every key it creates or manages, as its permissions already did.
--
-- Before: a key fenced to one IP range, one site, one day or ten requests (a CI key, a browser key)
-- could mint an unfenced key, lift its own fences, or rotate the account's primary key and receive
-- its new secret (locking the owner out). Found by supabase/tests/reliability/auth.test.ts
-- ("privilege escalation…").
--
-- Now a key may create, update, rotate or delete only keys at least as restricted as itself, and an
-- update may not leave the key less restricted than its caller (so a key cannot loosen its own
-- fences): permissions a subset; an expiry no later; a request cap no higher than what the caller
-- has left (its own cap, when a key changes itself); IP ranges inside the caller's; referrer
-- patterns covered by the caller's. Deleting the account (which revokes every key) needs a key at
-- least as unrestricted as all of them. An unfenced key (the usual primary) is unaffected.
-- Refusals are 42501 permission_denied (HTTP 403).

-- Which fence of p_caller the key p_target escapes ('permissions', 'expiry', 'request cap',
-- 'IP allowlist', 'referrer rule'), or null when p_target is at least as restricted.
create or replace function gateway.fence_escape(p_target gateway.api_keys, p_caller gateway.api_keys)
returns text
language sql
stable
security definer
set search_path = ''
as $$
  select case
    when not (p_target.permissions <@ p_caller.permissions) then 'permissions'
    when p_caller.expires_at is not null
         and (p_target.expires_at is null or p_target.expires_at > p_caller.expires_at)
      then 'expiry'
    when p_caller.max_requests is not null
         and (p_target.max_requests is null
              or p_target.max_requests > p_caller.max_requests - case
                   -- A key changing itself keeps its count; another key gets at most what is left.
                   when p_target.id is not distinct from p_caller.id then 0
                   else coalesce((select c.requests_used from gateway.key_counters c
                                   where c.key_id = p_caller.id), 0)
                 end)
      then 'request cap'
    when cardinality(p_caller.allowed_ips) > 0
         and (cardinality(p_target.allowed_ips) = 0
              or exists (select from unnest(p_target.allowed_ips) t (ip)
                          where not (t.ip <<= any (p_caller.allowed_ips))))
      then 'IP allowlist'
    when cardinality(p_caller.allowed_referrers) > 0
         and (cardinality(p_target.allowed_referrers) = 0
              or exists (
                select from unnest(p_target.allowed_referrers) t (pattern)
                 where not exists (
                   select from unnest(p_caller.allowed_referrers) c (pattern)
                    where c.pattern = t.pattern
                       -- '*.example.com' covers 'a.example.com' and '*.a.example.com'
                       or (c.pattern like '*.%'
                           and right(t.pattern, length(c.pattern) - 1) = substr(c.pattern, 2)
                           and length(t.pattern) > length(c.pattern) - 1))))
      then 'referrer rule'
  end;
$$;
revoke execute on function gateway.fence_escape(gateway.api_keys, gateway.api_keys) from public;

create or replace function gateway.raise_fence_escape(p_escape text)
returns void
language plpgsql
immutable
security definer
set search_path = ''
as $$
begin
  if p_escape is not null then
    raise exception using errcode = '42501', hint = 'permission_denied',
      message = format('a key can only manage keys at least as restricted as itself (%s)', p_escape);
  end if;
end
$$;
revoke execute on function gateway.raise_fence_escape(text) from public;

-- As in gateway_user_api, plus: the target must be at least as restricted as the caller.
create or replace function gateway.managed_key(p_caller gateway.api_keys, p_key_id bigint)
returns gateway.api_keys
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key gateway.api_keys;
begin
  select x.* into v_key
    from gateway.api_keys x
   where x.id = p_key_id and x.account_id = p_caller.account_id and x.deleted_at is null
     for update;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'API key not found';
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

-- As in gateway_user_api, plus: the new key must be at least as restricted as the caller.
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
  v_bad text;
  v_plain text;
  v_key gateway.api_keys;
  v_new gateway.api_keys;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', v_now);
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

-- As in gateway_user_api, plus: after the change the key must still be at least as restricted as
-- its caller (a key cannot lift its own fences, nor another's beyond its own).
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

-- As in gateway_user_api, plus: revoking every key needs a key at least as unrestricted as each.
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
  v_revoked := gateway.close_account(k.account_id, k.id, 'key', p_client_ip, now());
  return jsonb_build_object('status', 'deleted', 'user_id', k.account_id, 'keys_revoked', v_revoked);
end
$$;
revoke execute on function gateway.delete_account(bytea, inet, text) from public;
grant execute on function gateway.delete_account(bytea, inet, text) to gateway_api;
