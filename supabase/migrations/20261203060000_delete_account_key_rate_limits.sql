-- delete_account_key_rate_limits: a key with rate limits of its own (a spending key, like one with
-- a request cap) could delete its account, revoking the primary key and every sibling: fence_escape
-- sees request caps but not a key's rate limits. Now such a key deletes the account only if every
-- other key has rate limits of its own, each at most the caller's.
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
