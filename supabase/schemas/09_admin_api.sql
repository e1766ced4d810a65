-- Administration, two surfaces. The admin HTTP API (caller: a key with `admin`), granted to
-- gateway_api; and operator SQL for Studio/psql as postgres or service_role (the README's
-- cookbook), never granted to gateway_api, anon or authenticated. Settings: 01_settings.sql.

-- Admin HTTP API ----------------------------------------------------------------------------------

-- Resolves {"user_id": n} | {"email": "…"} | {"api_key_hash": "<hex sha256>"} | {"key_id": n}
-- to an account (and key, when the target names one); 404 when nothing matches.
create or replace function gateway.resolve_target(
  p_target jsonb,
  out account_id bigint,
  out key_id bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_hash bytea;
begin
  if jsonb_typeof(p_target) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'target must be {"user_id": n}, {"email": …}, {"api_key_hash": …} or {"key_id": n}';
  end if;
  if p_target ? 'api_key_hash' then
    begin
      v_hash := decode(p_target ->> 'api_key_hash', 'hex');
    exception when others then
      raise exception using errcode = '22023', hint = 'invalid_request',
        message = 'api_key_hash must be the hex sha256 of the key';
    end;
    select k.account_id, k.id into account_id, key_id
      from gateway.api_keys k where k.key_hash = v_hash and k.deleted_at is null;
  elsif p_target ? 'key_id' then
    select k.account_id, k.id into account_id, key_id
      from gateway.api_keys k
     where k.id = (p_target ->> 'key_id')::bigint and k.deleted_at is null;
  elsif p_target ? 'user_id' then
    select a.id into account_id from gateway.accounts a where a.id = (p_target ->> 'user_id')::bigint;
  elsif p_target ? 'email' then
    select a.id into account_id
      from gateway.accounts a where lower(a.email) = lower(p_target ->> 'email');
  else
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'target must be {"user_id": n}, {"email": …}, {"api_key_hash": …} or {"key_id": n}';
  end if;
  if account_id is null then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user or key not found';
  end if;
end
$$;
revoke execute on function gateway.resolve_target(jsonb) from public;

-- Is the caller a key with admin? Its account and key, or raises.
create or replace function gateway.admin_authorize(
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
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin');
  return jsonb_build_object('user_id', k.account_id, 'key_id', k.id);
end
$$;
revoke execute on function gateway.admin_authorize(bytea, inet, text) from public;
grant execute on function gateway.admin_authorize(bytea, inet, text) to gateway_api;

-- Grants (or adjusts) a target's credits. With p_idempotency_key, a retry with the same body
-- returns the first response and grants nothing; another body raises P0422 (HTTP 422).
create or replace function gateway.admin_add_credits(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_target jsonb,
  p_credits bigint,
  p_reason text,
  p_idempotency_key text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_now timestamptz := now();
  v_target record;
  v_claim jsonb;
  v_balance bigint;
  v_out jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin', v_now);
  if p_idempotency_key is not null then
    v_claim := gateway.idempotency_claim(
      k.account_id, 'admin_add_credits', p_idempotency_key,
      encode(sha256(convert_to(
        jsonb_build_array(p_target, p_credits, p_reason)::text, 'UTF8')), 'hex'),
      v_now);
    if v_claim ->> 'state' = 'replay' then
      return (v_claim -> 'response') || jsonb_build_object('idempotent_replay', true);
    elsif v_claim ->> 'state' = 'mismatch' then
      raise exception using errcode = 'P0422', hint = 'idempotency_key_reused',
        message = 'this Idempotency-Key was used with a different request body';
    elsif v_claim ->> 'state' = 'in_progress' then
      raise exception using errcode = 'P0409', hint = 'idempotency_in_progress',
        message = 'a request with this Idempotency-Key is still running';
    end if;
  end if;

  select * into v_target from gateway.resolve_target(p_target);
  v_balance := gateway.grant_credits(
    v_target.account_id, p_credits, coalesce(p_reason, 'admin grant'), 'key:' || k.id, v_now);
  v_out := jsonb_build_object(
    'user_id', v_target.account_id, 'credits_added', p_credits, 'balance', v_balance);
  if p_idempotency_key is not null then
    perform gateway.idempotency_store(
      k.account_id, 'admin_add_credits', p_idempotency_key, 200, v_out, v_now);
  end if;
  return v_out;
end
$$;
revoke execute on function gateway.admin_add_credits(bytea, inet, text, jsonb, bigint, text, text)
  from public;
grant execute on function gateway.admin_add_credits(bytea, inet, text, jsonb, bigint, text, text)
  to gateway_api;

-- A page of accounts with their credits and keys.
create or replace function gateway.admin_balances(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_limit integer default 100,
  p_offset integer default 0
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_total bigint;
  v_users jsonb;
begin
  perform gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin');
  select count(*) into v_total from gateway.accounts a where a.deleted_at is null;
  select coalesce(jsonb_agg(u.j order by u.id), '[]') into v_users
    from (
      select a.id, jsonb_build_object(
               'user_id', a.id,
               'email', a.email,
               'username', a.username,
               'is_active', a.is_active,
               'credits', b.balance,
               'held_credits', b.held,
               'keys', (select coalesce(jsonb_agg(jsonb_build_object(
                                 'key_id', x.id, 'api_key', x.key_prefix, 'key_name', x.name,
                                 'is_active', x.is_active, 'is_primary', x.is_primary,
                                 'permissions', to_jsonb(x.permissions)) order by x.id), '[]')
                          from gateway.api_keys x
                         where x.account_id = a.id and x.deleted_at is null)
             ) as j
        from gateway.accounts a
        join gateway.credit_balances b on b.account_id = a.id
       where a.deleted_at is null
       order by a.id
       limit least(greatest(coalesce(p_limit, 100), 1), 1000)
      offset greatest(coalesce(p_offset, 0), 0)
    ) u;
  return jsonb_build_object('total_users', v_total, 'users', v_users);
end
$$;
revoke execute on function gateway.admin_balances(bytea, inet, text, integer, integer) from public;
grant execute on function gateway.admin_balances(bytea, inet, text, integer, integer)
  to gateway_api;

-- System-wide figures at p_now ("today" = the UTC day). All-time figures scan usage_records.
create or replace function gateway.monitor_at(p_now timestamptz default now())
returns table (
  checked_at timestamptz,
  users_total bigint,
  users_active bigint,
  keys_total bigint,
  keys_active bigint,
  requests_today bigint,
  tokens_today bigint,
  credits_charged_today bigint,
  requests_all_time bigint,
  tokens_all_time bigint,
  credits_charged_all_time bigint,
  open_holds bigint,
  held_credits bigint,
  outstanding_balance bigint,
  expired_holds_today bigint,
  top_models_today jsonb,
  overruns_today bigint,
  overrun_credits_today bigint,
  overruns_all_time bigint,
  overrun_credits_all_time bigint,
  expired_uncharged_all_time bigint,
  charged_usd_today numeric,
  upstream_usd_today numeric,
  charged_usd_all_time numeric,
  upstream_usd_all_time numeric
)
language sql
stable
security definer
set search_path = ''
as $$
  with day as (select date_trunc('day', p_now, 'UTC') as start),
  acc as (
    select count(*) filter (where a.deleted_at is null) as total,
           count(*) filter (where a.deleted_at is null and a.is_active) as active
      from gateway.accounts a
  ),
  keys as (
    select count(*) filter (where k.deleted_at is null) as total,
           count(*) filter (where k.deleted_at is null and k.is_active
                            and (k.expires_at is null or k.expires_at > p_now)) as active
      from gateway.api_keys k
  ),
  usage as (
    select count(*) filter (where u.created_at >= d.start and u.status <> 'voided') as req_today,
           coalesce(sum(u.total_tokens) filter (where u.created_at >= d.start), 0) as tok_today,
           coalesce(sum(u.credits_charged) filter (where u.created_at >= d.start), 0) as cred_today,
           count(*) filter (where u.status <> 'voided') as req_all,
           coalesce(sum(u.total_tokens), 0) as tok_all,
           coalesce(sum(u.credits_charged), 0) as cred_all,
           count(*) filter (where u.created_at >= d.start and u.status = 'expired') as expired_today,
           count(*) filter (where u.status = 'expired') as expired_all,
           count(*) filter (where u.created_at >= d.start and u.overrun_credits > 0) as over_today,
           coalesce(sum(u.overrun_credits) filter (where u.created_at >= d.start), 0)
             as over_cred_today,
           count(*) filter (where u.overrun_credits > 0) as over_all,
           coalesce(sum(u.overrun_credits), 0) as over_cred_all,
           coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit))
                      filter (where u.created_at >= d.start), 0) as charged_usd_today,
           coalesce(sum(coalesce(u.upstream_usd, u.upstream_cost))
                      filter (where u.created_at >= d.start and u.status <> 'voided'), 0)
             as upstream_usd_today,
           coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit)), 0)
             as charged_usd_all,
           coalesce(sum(coalesce(u.upstream_usd, u.upstream_cost))
                      filter (where u.status <> 'voided'), 0) as upstream_usd_all
      from gateway.usage_records u, day d, gateway.system_settings s
     where s.id
  ),
  holds as (
    select count(*) as n from gateway.holds
  ),
  bal as (
    select coalesce(sum(b.held), 0) as held, coalesce(sum(b.balance), 0) as balance
      from gateway.credit_balances b
  ),
  top as (
    select coalesce(jsonb_agg(jsonb_build_object('model', t.model, 'requests', t.requests,
                                                 'tokens', t.tokens, 'credits', t.credits)
                              order by t.requests desc, t.model), '[]') as models
      from (
        select u.model, count(*) as requests, sum(u.total_tokens) as tokens,
               sum(u.credits_charged) as credits
          from gateway.usage_records u, day d
         where u.created_at >= d.start and u.status <> 'voided'
         group by u.model
         order by count(*) desc, u.model
         limit 10
      ) t
  )
  select p_now, acc.total, acc.active, keys.total, keys.active, usage.req_today,
         usage.tok_today::bigint, usage.cred_today::bigint, usage.req_all, usage.tok_all::bigint,
         usage.cred_all::bigint, holds.n, bal.held::bigint, bal.balance::bigint, usage.expired_today,
         top.models, usage.over_today, usage.over_cred_today::bigint, usage.over_all,
         usage.over_cred_all::bigint, usage.expired_all, usage.charged_usd_today,
         usage.upstream_usd_today, usage.charged_usd_all, usage.upstream_usd_all
    from acc, keys, usage, holds, bal, top;
$$;
revoke execute on function gateway.monitor_at(timestamptz) from public;
-- The operator view gateway.monitor calls it with the caller's function privileges.
grant execute on function gateway.monitor_at(timestamptz) to service_role;

create or replace function gateway.admin_monitor(
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
  m record;
begin
  perform gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin', p_now);
  select * into m from gateway.monitor_at(p_now);
  return jsonb_build_object(
    'status', 'success',
    'timestamp', p_now,
    'users', jsonb_build_object('total', m.users_total, 'active', m.users_active),
    'keys', jsonb_build_object('total', m.keys_total, 'active', m.keys_active),
    'requests', jsonb_build_object('today', m.requests_today, 'all_time', m.requests_all_time),
    'tokens', jsonb_build_object('today', m.tokens_today, 'all_time', m.tokens_all_time),
    'credits', jsonb_build_object(
      'charged_today', m.credits_charged_today, 'charged_all_time', m.credits_charged_all_time,
      'outstanding_balance', m.outstanding_balance, 'held', m.held_credits),
    'open_holds', m.open_holds,
    'expired_holds_today', m.expired_holds_today,
    'expired_uncharged', jsonb_build_object(
      'today', m.expired_holds_today, 'all_time', m.expired_uncharged_all_time),
    'overruns', jsonb_build_object(
      'today', m.overruns_today, 'credits_today', m.overrun_credits_today,
      'all_time', m.overruns_all_time, 'credits_all_time', m.overrun_credits_all_time),
    -- USD as decimal text: exact (a JSON number is a double).
    'margin', jsonb_build_object(
      'today', jsonb_build_object(
        'charged_usd', m.charged_usd_today::text, 'upstream_usd', m.upstream_usd_today::text,
        'margin_usd', (m.charged_usd_today - m.upstream_usd_today)::text),
      'all_time', jsonb_build_object(
        'charged_usd', m.charged_usd_all_time::text, 'upstream_usd', m.upstream_usd_all_time::text,
        'margin_usd', (m.charged_usd_all_time - m.upstream_usd_all_time)::text)),
    'top_models_today', m.top_models_today
  );
end
$$;
revoke execute on function gateway.admin_monitor(bytea, inet, text, timestamptz) from public;
grant execute on function gateway.admin_monitor(bytea, inet, text, timestamptz) to gateway_api;

-- Sets an account's limits, or with "scope": "key" in the target that key's own limits.
create or replace function gateway.admin_set_limits(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_target jsonb,
  p_limits jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_target record;
  v_key_scope boolean := coalesce(p_target ->> 'scope', 'account') = 'key';
  v_limits jsonb;
begin
  perform gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin');
  select * into v_target from gateway.resolve_target(p_target - 'scope');
  if v_key_scope and v_target.key_id is null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'scope "key" needs a key target (api_key_hash or key_id)';
  end if;
  v_limits := gateway.apply_rate_limits(
    v_target.account_id, case when v_key_scope then v_target.key_id end, p_limits);
  return jsonb_build_object(
    'user_id', v_target.account_id,
    'key_id', case when v_key_scope then v_target.key_id end,
    'rate_limits', v_limits);
end
$$;
revoke execute on function gateway.admin_set_limits(bytea, inet, text, jsonb, jsonb) from public;
grant execute on function gateway.admin_set_limits(bytea, inet, text, jsonb, jsonb) to gateway_api;

-- Operator SQL ------------------------------------------------------------------------------------

-- Bootstrap: an admin key (read, write, admin) for the account of p_email, created with 0 credits
-- if new. The plaintext key is in the result, once.
create or replace function gateway.create_admin_key(
  p_email text,
  p_environment text default 'live'
)
returns table (user_id bigint, key_id bigint, email text, api_key text, key_prefix text,
               permissions text[])
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_name text := 'admin';
  v_n integer := 1;
  v_plain text := gateway.generate_key(coalesce(p_environment, 'live'));
  v_key gateway.api_keys;
begin
  if p_email is null or p_email !~ '^[^@\s]+@[^@\s]+$' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a valid email is required';
  end if;
  select a.id into v_account_id from gateway.accounts a where lower(a.email) = lower(p_email);
  if v_account_id is null then
    insert into gateway.accounts (email) values (p_email) returning id into v_account_id;
    insert into gateway.credit_balances (account_id) values (v_account_id);
  end if;
  while exists (select from gateway.api_keys k
                 where k.account_id = v_account_id and lower(k.name) = v_name
                   and k.deleted_at is null) loop
    v_n := v_n + 1;
    v_name := 'admin ' || v_n;
  end loop;
  v_key := gateway.issue_key(
    v_plain, v_account_id, v_name, coalesce(p_environment, 'live'), array['admin', 'read', 'write'],
    not exists (select from gateway.api_keys k
                 where k.account_id = v_account_id and k.is_primary and k.deleted_at is null),
    null, null, '{}', '{}', null, null, null, now());
  return query select v_account_id, v_key.id, p_email, v_plain, v_key.key_prefix, v_key.permissions;
end
$$;
revoke execute on function gateway.create_admin_key(text, text) from public;
grant execute on function gateway.create_admin_key(text, text) to service_role;

create or replace function gateway.add_credits(
  p_user_id bigint,
  p_credits bigint,
  p_reason text default 'operator grant'
)
returns table (user_id bigint, credits_added bigint, balance bigint)
language plpgsql
security definer
set search_path = ''
as $$
begin
  return query select p_user_id, p_credits,
    gateway.grant_credits(p_user_id, p_credits, p_reason, 'operator:' || session_user, now());
end
$$;
revoke execute on function gateway.add_credits(bigint, bigint, text) from public;
grant execute on function gateway.add_credits(bigint, bigint, text) to service_role;

create or replace function gateway.set_rate_limits(p_user_id bigint, p_limits jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not exists (select from gateway.accounts a where a.id = p_user_id) then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user not found';
  end if;
  return gateway.apply_rate_limits(p_user_id, null, p_limits);
end
$$;
revoke execute on function gateway.set_rate_limits(bigint, jsonb) from public;
grant execute on function gateway.set_rate_limits(bigint, jsonb) to service_role;

create or replace function gateway.set_key_rate_limits(p_key_id bigint, p_limits jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
begin
  select k.account_id into v_account_id from gateway.api_keys k where k.id = p_key_id;
  if v_account_id is null then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'key not found';
  end if;
  return gateway.apply_rate_limits(v_account_id, p_key_id, p_limits);
end
$$;
revoke execute on function gateway.set_key_rate_limits(bigint, jsonb) from public;
grant execute on function gateway.set_key_rate_limits(bigint, jsonb) to service_role;

-- An operator's deactivation suspends the key: only an operator can reactivate it. Audited.
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

create or replace function gateway.deactivate_key(p_key_id bigint, p_reason text default null)
returns jsonb
language sql
security definer
set search_path = ''
as $$
  select gateway.set_key_active(p_key_id, false, p_reason);
$$;
revoke execute on function gateway.deactivate_key(bigint, text) from public;
grant execute on function gateway.deactivate_key(bigint, text) to service_role;

create or replace function gateway.reactivate_key(p_key_id bigint, p_reason text default null)
returns jsonb
language sql
security definer
set search_path = ''
as $$
  select gateway.set_key_active(p_key_id, true, p_reason);
$$;
revoke execute on function gateway.reactivate_key(bigint, text) from public;
grant execute on function gateway.reactivate_key(bigint, text) to service_role;

-- An inactive account's keys are all refused (key_inactive); its data stays.
create or replace function gateway.set_account_active(p_user_id bigint, p_active boolean)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  update gateway.accounts a set is_active = p_active, updated_at = now()
   where a.id = p_user_id and a.deleted_at is null;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user not found';
  end if;
  insert into gateway.key_audit_log (account_id, actor, action, detail)
  values (p_user_id, 'operator:' || session_user,
          case when p_active then 'reactivate_account' else 'deactivate_account' end, '{}');
  return gateway.profile_json(p_user_id);
end
$$;
revoke execute on function gateway.set_account_active(bigint, boolean) from public;

create or replace function gateway.deactivate_account(p_user_id bigint)
returns jsonb
language sql
security definer
set search_path = ''
as $$
  select gateway.set_account_active(p_user_id, false);
$$;
revoke execute on function gateway.deactivate_account(bigint) from public;
grant execute on function gateway.deactivate_account(bigint) to service_role;

create or replace function gateway.reactivate_account(p_user_id bigint)
returns jsonb
language sql
security definer
set search_path = ''
as $$
  select gateway.set_account_active(p_user_id, true);
$$;
revoke execute on function gateway.reactivate_account(bigint) from public;
grant execute on function gateway.reactivate_account(bigint) to service_role;

-- Erasure on request, as the user's DELETE /user/account: keys revoked, personal data erased.
create or replace function gateway.erase_account(p_user_id bigint)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_revoked integer;
begin
  if not exists (select from gateway.accounts a where a.id = p_user_id) then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user not found';
  end if;
  v_revoked := gateway.close_account(p_user_id, null, 'operator:' || session_user, null, now());
  return jsonb_build_object('status', 'deleted', 'user_id', p_user_id, 'keys_revoked', v_revoked);
end
$$;
revoke execute on function gateway.erase_account(bigint) from public;
grant execute on function gateway.erase_account(bigint) to service_role;

-- Operator views: they run with the owner's rights, so service_role needs no table grants.
create or replace view gateway.balances as
  select a.id as user_id, a.email, a.username, a.is_active, b.balance, b.held,
         b.balance - b.held as available,
         (select count(*) from gateway.api_keys k
           where k.account_id = a.id and k.deleted_at is null and k.is_active) as active_keys,
         a.created_at
    from gateway.accounts a
    join gateway.credit_balances b on b.account_id = a.id
   where a.deleted_at is null;
comment on view gateway.balances is 'Operator: credits per user (balance, held, available).';
grant select on gateway.balances to service_role;

create or replace view gateway.monitor as
  select * from gateway.monitor_at(now());
comment on view gateway.monitor is 'Operator: system-wide figures now (today = the UTC day).';
grant select on gateway.monitor to service_role;

-- Pricing: overruns, margin, models sold at a loss (docs/SQL-API.md, "Operator SQL").
create or replace view gateway.overruns as
  select u.hold_id, u.account_id as user_id, u.key_id, u.model, u.created_at, u.settled_at,
         u.credits_held, u.credits_charged, u.overrun_credits, u.prompt_tokens,
         (u.facts ->> 'prompt_bound')::bigint as prompt_bound,
         (u.facts ->> 'images')::integer as images, (u.facts ->> 'audio')::integer as audio,
         (u.facts ->> 'files')::integer as files,
         (u.facts ->> 'web_results')::integer as web_results, u.completion_tokens, u.max_tokens,
         u.web_search_requests, u.upstream_usd, u.settled_by, u.settled_late
    from gateway.usage_records u
   where u.overrun_credits > 0;
comment on view gateway.overruns is
  'Operator: settles charged above their hold (charged in full), with the facts the hold was sized '
  'from. Only what a byte bound cannot see (parts larger than their allowance) should appear here.';

-- Margin: what clients paid (credits × usd_per_credit at admission) against what upstream cost.
create or replace view gateway.margin as
  select (u.created_at at time zone 'UTC')::date as day, u.model,
         count(*) as requests,
         sum(u.credits_charged) as credits_charged,
         sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit)) as charged_usd,
         sum(coalesce(u.upstream_usd, u.upstream_cost)) as upstream_usd,
         sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit))
           - sum(coalesce(u.upstream_usd, u.upstream_cost)) as margin_usd,
         count(*) filter (where coalesce(u.upstream_usd, u.upstream_cost) is null)
           as requests_without_cost
    from gateway.usage_records u
    cross join gateway.system_settings s
   where s.id and u.status not in ('voided', 'expired')
   group by 1, 2;
comment on view gateway.margin is
  'Operator: per UTC day and model, what clients were charged (USD) against upstream cost (USD).';

create or replace view gateway.margin_daily as
  select m.day, sum(m.requests) as requests, sum(m.credits_charged) as credits_charged,
         sum(m.charged_usd) as charged_usd, sum(m.upstream_usd) as upstream_usd,
         sum(m.margin_usd) as margin_usd, sum(m.requests_without_cost) as requests_without_cost
    from gateway.margin m
   group by m.day;
comment on view gateway.margin_daily is 'Operator: gateway.margin per UTC day.';

-- Sold at a loss: catalog models whose multipliers (flat mode, or a fixed-price override in cost
-- mode) charge less per token than upstream's price. refuse_unprofitable_models refuses them.
create or replace view gateway.unprofitable_models as
  select c.model, s.pricing_mode,
         (p.dearest).prompt * 1000000 as prompt_usd_per_million,
         (p.dearest).completion * 1000000 as completion_usd_per_million,
         (p.dearest).prompt_multiplier * s.usd_per_credit * 1000000 as sold_prompt_usd_per_million,
         (p.dearest).completion_multiplier * s.usd_per_credit * 1000000
           as sold_completion_usd_per_million
    from gateway.model_catalog c
    cross join gateway.system_settings s
    cross join lateral gateway.price_candidates(
      array[c.model], s.pricing_mode, s.markup_percent, s.web_result_usd, s.usd_per_credit, false,
      false) p
   where s.id and (p.dearest).fixed and not (p.dearest).free
     and (greatest((p.dearest).prompt, (p.dearest).input_cache_write)
            > (p.dearest).prompt_multiplier * s.usd_per_credit
          or greatest((p.dearest).completion, (p.dearest).internal_reasoning)
            > (p.dearest).completion_multiplier * s.usd_per_credit);
comment on view gateway.unprofitable_models is
  'Operator: models whose catalog price is above what their multipliers charge (sold at a loss).';
grant select on gateway.overruns, gateway.margin, gateway.margin_daily, gateway.unprofitable_models
  to service_role;
