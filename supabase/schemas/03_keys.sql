-- API keys: format, checksum, generation and hashing; storage (hash and display prefix only), the
-- append-only key audit log; authentication of every API call; and the fences that bind the keys a
-- key may create or manage. Key format and checksum: docs/SQL-API.md, "Keys".

-- Key format --------------------------------------------------------------------------------------

-- p_value in base62 (0-9A-Za-z), most significant digit first, left-padded with '0' to p_width.
create or replace function gateway.base62(p_value bigint, p_width integer default 1)
returns text
language plpgsql
immutable
strict
security definer
set search_path = ''
as $$
declare
  c_alphabet constant text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
  v_value bigint := p_value;
  v_out text := '';
begin
  if v_value < 0 then
    raise exception using errcode = '22023', message = 'base62 of a negative number';
  end if;
  loop
    v_out := substr(c_alphabet, (v_value % 62)::integer + 1, 1) || v_out;
    v_value := v_value / 62;
    exit when v_value = 0;
  end loop;
  return lpad(v_out, p_width, '0');
end
$$;
revoke execute on function gateway.base62(bigint, integer) from public;

-- CRC-32/ISO-HDLC (zlib's crc32): crc32('123456789') = 3421780262 (0xCBF43926).
create or replace function gateway.crc32(p_data bytea)
returns bigint
language plpgsql
immutable
strict
security definer
set search_path = ''
as $$
declare
  v_crc bigint := 4294967295;
begin
  for i in 0 .. length(p_data) - 1 loop
    v_crc := v_crc # get_byte(p_data, i);
    for j in 1 .. 8 loop
      if (v_crc & 1) = 1 then
        v_crc := (v_crc >> 1) # 3988292384; -- 0xEDB88320
      else
        v_crc := v_crc >> 1;
      end if;
    end loop;
  end loop;
  return v_crc # 4294967295;
end
$$;
revoke execute on function gateway.crc32(bytea) from public;

-- The checksum of a key's text before it: key_checksum('gw_live_<22 chars>') = the last 6 chars.
create or replace function gateway.key_checksum(p_text text)
returns text
language sql
immutable
strict
security definer
set search_path = ''
as $$
  select gateway.base62(gateway.crc32(convert_to(p_text, 'UTF8')), 6);
$$;
revoke execute on function gateway.key_checksum(text) from public;

-- True only for gw_<env>_<22 base62><6-char checksum> with a matching checksum; never null.
create or replace function gateway.key_is_well_formed(p_key text)
returns boolean
language sql
immutable
security definer
set search_path = ''
as $$
  select coalesce(
    p_key ~ '^gw_(live|test|staging|dev)_[0-9A-Za-z]{28}$'
      and right(p_key, 6) = gateway.key_checksum(left(p_key, length(p_key) - 6)),
    false
  );
$$;
revoke execute on function gateway.key_is_well_formed(text) from public;

-- sha256 of the key's UTF-8 text: what is stored, and what the function passes as p_key_hash.
create or replace function gateway.hash_key(p_key text)
returns bytea
language sql
immutable
strict
security definer
set search_path = ''
as $$
  select sha256(convert_to(p_key, 'UTF8'));
$$;
revoke execute on function gateway.hash_key(text) from public;

-- A new key: 22 uniform base62 characters from random bytes (about 131 bits), then its checksum.
create or replace function gateway.generate_key(p_environment text)
returns text
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  c_alphabet constant text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
  v_body text := '';
  v_bytes bytea;
  v_byte integer;
begin
  if p_environment is null or p_environment not in ('live', 'test', 'staging', 'dev') then
    raise exception using
      errcode = '22023',
      message = 'environment must be one of live, test, staging, dev',
      hint = 'invalid_request';
  end if;
  -- Rejection sampling: bytes >= 248 (= 4·62) are skipped so every character is uniform.
  while length(v_body) < 22 loop
    v_bytes := extensions.gen_random_bytes(32);
    for i in 0 .. 31 loop
      v_byte := get_byte(v_bytes, i);
      if v_byte < 248 and length(v_body) < 22 then
        v_body := v_body || substr(c_alphabet, v_byte % 62 + 1, 1);
      end if;
    end loop;
  end loop;
  v_body := 'gw_' || p_environment || '_' || v_body;
  return v_body || gateway.key_checksum(v_body);
end
$$;
revoke execute on function gateway.generate_key(text) from public;

-- What a key shows of itself: its first 12 characters and an ellipsis.
create or replace function gateway.key_prefix(p_key text)
returns text
language sql
immutable
strict
security definer
set search_path = ''
as $$
  select left(p_key, 12) || '…';
$$;
revoke execute on function gateway.key_prefix(text) from public;

-- Keys, their counters and their audit log --------------------------------------------------------

create table gateway.api_keys (
  id bigint generated always as identity primary key,
  account_id bigint not null references gateway.accounts (id),
  name text not null check (length(name) between 1 and 100),
  key_hash bytea not null check (length(key_hash) = 32),
  key_prefix text not null,
  environment text not null check (environment in ('live', 'test', 'staging', 'dev')),
  permissions text[] not null
    check (permissions <@ array['read', 'write', 'admin'] and cardinality(permissions) > 0),
  is_active boolean not null default true,
  -- Deactivated by an operator (gateway.deactivate_key): only an operator can reactivate it.
  suspended boolean not null default false,
  is_primary boolean not null default false,
  expires_at timestamptz,
  max_requests bigint check (max_requests > 0),
  allowed_ips cidr[] not null default '{}',
  allowed_referrers text[] not null default '{}',
  -- The secret before the last rotation, valid until previous_valid_until (the caller's grace).
  previous_key_hash bytea check (length(previous_key_hash) = 32),
  previous_valid_until timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  constraint api_keys_key_hash_key unique (key_hash),
  constraint api_keys_previous_key_hash_key unique (previous_key_hash)
) with (fillfactor = 80);
comment on table gateway.api_keys is
  'API keys: sha256 of the secret + display prefix only. Deleted keys stay (deleted_at) for the '
  'audit log and usage records. Per-request counters live in gateway.key_counters.';
comment on column gateway.api_keys.allowed_referrers is
  'Lower-case hosts: exact (example.com) or wildcard (*.example.com = any subdomain, not the apex).';
create index api_keys_account_id_idx on gateway.api_keys (account_id);
create unique index api_keys_account_name_key on gateway.api_keys (account_id, lower(name))
  where deleted_at is null;
create unique index api_keys_one_primary_key on gateway.api_keys (account_id)
  where is_primary and deleted_at is null;
alter table gateway.api_keys enable row level security;
create policy no_api_access on gateway.api_keys
  for all to anon, authenticated using (false) with check (false);

-- What changes at every admission, apart from the key: a narrow, HOT-updatable row without CHECK
-- constraints (docs/SQL-NOTES.md, "Keys").
create table gateway.key_counters (
  key_id bigint primary key references gateway.api_keys (id),
  requests_used bigint not null default 0,
  last_used_at timestamptz
) with (fillfactor = 50);
comment on table gateway.key_counters is
  'Requests admitted per key (checked against api_keys.max_requests) and when it was last used.';
alter table gateway.key_counters enable row level security;
create policy no_api_access on gateway.key_counters
  for all to anon, authenticated using (false) with check (false);

create table gateway.key_audit_log (
  id bigint generated always as identity primary key,
  account_id bigint not null,
  key_id bigint,
  actor_key_id bigint,
  actor text not null,
  action text not null,
  detail jsonb not null default '{}',
  client_ip inet,
  created_at timestamptz not null default now()
);
-- Rows written before these limits may exceed them (not valid): they hold for every new write.
alter table gateway.api_keys
  add constraint api_keys_allowed_ips_count check (cardinality(allowed_ips) <= 100) not valid,
  add constraint api_keys_allowed_referrers_count check (cardinality(allowed_referrers) <= 100)
    not valid;
comment on table gateway.key_audit_log is
  'Append-only: every key operation (create, rotate, update, delete, deactivate, …): who (actor key '
  'or operator role), what, when, from which IP. No API and no role can update or delete it.';
create index key_audit_log_account_id_idx on gateway.key_audit_log (account_id, id);
create index key_audit_log_key_id_idx on gateway.key_audit_log (key_id, id);
alter table gateway.key_audit_log enable row level security;
create policy no_api_access on gateway.key_audit_log
  for all to anon, authenticated using (false) with check (false);
create trigger key_audit_log_append_only
  before update or delete on gateway.key_audit_log
  for each row execute function gateway.forbid_change();
create trigger key_audit_log_no_truncate
  before truncate on gateway.key_audit_log
  for each statement execute function gateway.forbid_change();

-- Appends one audit row; the actor is the acting key, else 'operator:<session user>'.
create or replace function gateway.audit_key(
  p_account_id bigint,
  p_key_id bigint,
  p_actor_key_id bigint,
  p_actor text,
  p_action text,
  p_detail jsonb,
  p_client_ip inet,
  p_now timestamptz
)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into gateway.key_audit_log
    (account_id, key_id, actor_key_id, actor, action, detail, client_ip, created_at)
  values (
    p_account_id, p_key_id, p_actor_key_id,
    coalesce(p_actor, case when p_actor_key_id is null then 'operator:' || session_user else 'key' end),
    p_action, coalesce(p_detail, '{}'), p_client_ip, p_now
  );
$$;
revoke execute on function gateway.audit_key(
  bigint, bigint, bigint, text, text, jsonb, inet, timestamptz
) from public;

-- Authentication ----------------------------------------------------------------------------------

-- Does this referrer host pass the key's allowlist? Hosts compare lower-case, without port.
create or replace function gateway.referrer_allowed(p_allowed text[], p_referrer text)
returns boolean
language sql
immutable
security definer
set search_path = ''
as $$
  select cardinality(p_allowed) = 0
    or exists (
      select
        from unnest(p_allowed) as a (pattern),
             (select rtrim(regexp_replace(lower(p_referrer), ':[0-9]+$', ''), '.') as host) r
       where r.host is not null
         and (r.host = a.pattern
              or (a.pattern like '*.%' and right(r.host, length(a.pattern) - 1) = substr(a.pattern, 2)
                  and length(r.host) > length(a.pattern) - 1))
    );
$$;
revoke execute on function gateway.referrer_allowed(text[], text) from public;

-- Why a presented key may not do p_permission now, or null if it may: the one rule, shared by
-- begin_request (which returns the reason) and authenticate (which raises it).
create or replace function gateway.key_refusal(
  p_key_id bigint,
  p_key_active boolean,
  p_key_deleted boolean,
  p_account_active boolean,
  p_expires_at timestamptz,
  p_permissions text[],
  p_allowed_ips cidr[],
  p_allowed_referrers text[],
  p_client_ip inet,
  p_referrer text,
  p_permission text,
  p_now timestamptz
)
returns text
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if p_key_id is null or p_key_deleted then
    return 'invalid_api_key';
  elsif not p_key_active or not p_account_active then
    return 'key_inactive';
  elsif p_expires_at is not null and p_expires_at <= p_now then
    return 'key_expired';
  elsif p_permission is not null and not (p_permission = any (p_permissions)) then
    return 'permission_denied';
  elsif cardinality(p_allowed_ips) > 0
        and (p_client_ip is null or not (p_client_ip <<= any (p_allowed_ips))) then
    return 'ip_not_allowed';
  elsif cardinality(p_allowed_referrers) > 0
        and not gateway.referrer_allowed(p_allowed_referrers, p_referrer) then
    return 'referrer_not_allowed';
  end if;
  return null;
end
$$;
revoke execute on function gateway.key_refusal(
  bigint, boolean, boolean, boolean, timestamptz, text[], cidr[], text[], inet, text, text, timestamptz
) from public;

-- The client-facing message of a refusal reason.
create or replace function gateway.refusal_message(p_reason text)
returns text
language sql
immutable
security definer
set search_path = ''
as $$
  select case p_reason
    when 'invalid_api_key' then 'Invalid API key'
    when 'key_inactive' then 'API key is inactive'
    when 'key_expired' then 'API key has expired'
    when 'permission_denied' then 'API key lacks the permission for this operation'
    when 'ip_not_allowed' then 'Client IP is not in the API key''s allowlist'
    when 'referrer_not_allowed' then 'Referrer is not allowed for this API key'
    when 'key_request_cap' then 'API key has reached its request cap'
    when 'rate_limited' then 'Rate limit exceeded'
    when 'insufficient_credits' then 'Insufficient credits'
    else p_reason
  end;
$$;
revoke execute on function gateway.refusal_message(text) from public;

-- The key with this hash: its current secret, or the previous one within its rotation grace.
create or replace function gateway.find_key(p_key_hash bytea, p_now timestamptz)
returns bigint
language sql
stable
security definer
set search_path = ''
as $$
  select coalesce(
    (select k.id from gateway.api_keys k where k.key_hash = p_key_hash),
    (select k.id from gateway.api_keys k
      where k.previous_key_hash = p_key_hash and k.previous_valid_until > p_now)
  );
$$;
revoke execute on function gateway.find_key(bytea, timestamptz) from public;

-- Authenticates the caller of a non-hot API call, or raises (SQLSTATE and hint: docs/SQL-API.md).
create or replace function gateway.authenticate(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_permission text,
  p_now timestamptz default now()
)
returns gateway.api_keys
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_key gateway.api_keys;
  v_account_active boolean;
  v_reason text;
begin
  select k.* into v_key
    from gateway.api_keys k
   where k.id = gateway.find_key(p_key_hash, p_now);
  select a.is_active into v_account_active from gateway.accounts a where a.id = v_key.account_id;
  v_reason := gateway.key_refusal(
    v_key.id, v_key.is_active, v_key.deleted_at is not null, coalesce(v_account_active, false),
    v_key.expires_at, v_key.permissions, v_key.allowed_ips, v_key.allowed_referrers,
    p_client_ip, p_referrer, p_permission, p_now
  );
  if v_reason is not null then
    raise exception using
      errcode = case when v_reason in ('invalid_api_key', 'key_inactive', 'key_expired')
                     then '28000' else '42501' end,
      message = gateway.refusal_message(v_reason),
      hint = v_reason;
  end if;
  return v_key;
end
$$;
revoke execute on function gateway.authenticate(bytea, inet, text, text, timestamptz) from public;

-- Key specs and issuing ---------------------------------------------------------------------------

-- The key as the API shows it: never the secret (api_key is the display prefix).
create or replace function gateway.key_json(p_key gateway.api_keys)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'key_id', p_key.id,
    'api_key', p_key.key_prefix,
    'key_prefix', p_key.key_prefix,
    'key_name', p_key.name,
    'permissions', to_jsonb(p_key.permissions),
    'environment_tag', p_key.environment,
    'is_active', p_key.is_active,
    'is_primary', p_key.is_primary,
    'expires_at', p_key.expires_at,
    'max_requests', p_key.max_requests,
    'requests_used', coalesce(c.requests_used, 0),
    'allowed_ips', (select coalesce(jsonb_agg(c::text), '[]') from unnest(p_key.allowed_ips) c),
    'allowed_referrers', to_jsonb(p_key.allowed_referrers),
    'previous_key_valid_until', p_key.previous_valid_until,
    'created_at', p_key.created_at,
    'updated_at', p_key.updated_at,
    'last_used_at', c.last_used_at
  )
  from (select) one
  left join gateway.key_counters c on c.key_id = p_key.id;
$$;
revoke execute on function gateway.key_json(gateway.api_keys) from public;

-- Input parsing for key specs: values from JSON, errors as 22023 invalid_request.
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

-- Stores a new key (p_api_key from generate_key; only its hash is kept), its counter, and the audit
-- row.
create or replace function gateway.issue_key(
  p_api_key text,
  p_account_id bigint,
  p_name text,
  p_environment text,
  p_permissions text[],
  p_is_primary boolean,
  p_expires_at timestamptz,
  p_max_requests bigint,
  p_allowed_ips cidr[],
  p_allowed_referrers text[],
  p_actor_key_id bigint,
  p_actor text,
  p_client_ip inet,
  p_now timestamptz
)
returns gateway.api_keys
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key gateway.api_keys;
begin
  begin
    insert into gateway.api_keys (
      account_id, name, key_hash, key_prefix, environment, permissions, is_primary, expires_at,
      max_requests, allowed_ips, allowed_referrers, created_at, updated_at
    ) values (
      p_account_id, p_name, gateway.hash_key(p_api_key), gateway.key_prefix(p_api_key), p_environment,
      p_permissions, p_is_primary, p_expires_at, p_max_requests, coalesce(p_allowed_ips, '{}'),
      coalesce(p_allowed_referrers, '{}'), p_now, p_now
    )
    returning * into v_key;
    insert into gateway.key_counters (key_id) values (v_key.id);
  exception
    when unique_violation then
      raise exception using errcode = '23505', hint = 'duplicate_key_name',
        message = format('a key named %L already exists', p_name);
    when check_violation then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = 'invalid key specification';
  end;
  perform gateway.audit_key(
    p_account_id, v_key.id, p_actor_key_id, p_actor, 'create',
    jsonb_build_object('name', p_name, 'permissions', p_permissions, 'environment', p_environment,
                       'is_primary', p_is_primary, 'expires_at', p_expires_at,
                       'max_requests', p_max_requests),
    p_client_ip, p_now
  );
  return v_key;
end
$$;
revoke execute on function gateway.issue_key(
  text, bigint, text, text, text[], boolean, timestamptz, bigint, cidr[], text[], bigint, text, inet,
  timestamptz
) from public;

-- Fences: a key manages only keys at least as restricted as itself --------------------------------

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

-- Raises 42501 permission_denied naming the fence, when there is one.
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

-- The caller's key p_key_id, locked, if the caller may manage it: same account and not deleted
-- (else 404), permissions and every fence within the caller's, and a caller with a limit of its own
-- (gateway.key_own_limit) manages only itself (else 403).
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
