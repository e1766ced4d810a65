-- Idempotency-Key for chat completions and admin credit grants: a retry with the same key and body
-- within the TTL gets the first response and is not charged again; another body is a mismatch
-- (422); a retry while the first runs is in_progress (409). Keys are per account and operation.

create table gateway.idempotency_keys (
  account_id bigint not null,
  scope text not null check (scope in ('chat', 'admin_add_credits')),
  idem_key text not null check (length(idem_key) between 1 and 255),
  fingerprint text not null,
  state text not null check (state in ('running', 'done')),
  status integer,
  response jsonb,
  created_at timestamptz not null,
  completed_at timestamptz,
  expires_at timestamptz not null,
  primary key (account_id, scope, idem_key),
  -- A done entry always carries what to replay (idempotency_store writes both at once).
  constraint idempotency_keys_done_has_response
    check (state <> 'done' or (status is not null and response is not null))
);
comment on table gateway.idempotency_keys is
  'Idempotency-Key entries: the first request''s fingerprint and, once done, its response. Expired '
  'rows are deleted by the gateway-purge-idempotency-keys cron job.';
create index idempotency_keys_expires_at_idx on gateway.idempotency_keys (expires_at);
alter table gateway.idempotency_keys enable row level security;
create policy no_api_access on gateway.idempotency_keys
  for all to anon, authenticated using (false) with check (false);

-- Claims (account, scope, key) for this fingerprint: started | replay (+ status, response) |
-- in_progress | mismatch. A running entry older than the hold timeout may be claimed again; a row
-- deleted between the insert and its lock is claimed again, never replayed without a response.
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

-- Stores the response of a claimed key; p_response null releases the claim (a retry runs anew).
create or replace function gateway.idempotency_store(
  p_account_id bigint,
  p_scope text,
  p_idem_key text,
  p_status integer,
  p_response jsonb,
  p_now timestamptz
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_response is null then
    delete from gateway.idempotency_keys i
     where i.account_id = p_account_id and i.scope = p_scope and i.idem_key = p_idem_key
       and i.state = 'running';
  else
    update gateway.idempotency_keys i
       set state = 'done', status = p_status, response = p_response, completed_at = p_now
     where i.account_id = p_account_id and i.scope = p_scope and i.idem_key = p_idem_key
       and i.state = 'running';
  end if;
  return found;
end
$$;
revoke execute on function gateway.idempotency_store(bigint, text, text, integer, jsonb, timestamptz)
  from public;

-- Chat, before begin_request: authenticates like a chat call (write) and claims the key.
-- p_fingerprint: any stable digest of the request body.
create or replace function gateway.idempotency_begin(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_idem_key text,
  p_fingerprint text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'write', p_now);
  return gateway.idempotency_claim(k.account_id, 'chat', p_idem_key, p_fingerprint, p_now);
end
$$;
revoke execute on function gateway.idempotency_begin(bytea, inet, text, text, text, timestamptz)
  from public;
grant execute on function gateway.idempotency_begin(bytea, inet, text, text, text, timestamptz)
  to gateway_api;

-- Chat, once the response is known; p_response null (e.g. upstream 5xx) releases the key.
create or replace function gateway.idempotency_complete(
  p_key_hash bytea,
  p_idem_key text,
  p_status integer,
  p_response jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
begin
  select k.account_id into v_account_id
    from gateway.api_keys k where k.id = gateway.find_key(p_key_hash, p_now);
  return jsonb_build_object(
    'stored',
    v_account_id is not null
      and gateway.idempotency_store(v_account_id, 'chat', p_idem_key, p_status, p_response, p_now));
end
$$;
revoke execute on function gateway.idempotency_complete(bytea, text, integer, jsonb, timestamptz)
  from public;
grant execute on function gateway.idempotency_complete(bytea, text, integer, jsonb, timestamptz)
  to gateway_api;
