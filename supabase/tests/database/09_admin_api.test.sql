-- The admin API (admin keys, credits by target, idempotent grants, limits, balances, monitor) and
-- the operator's views.
begin;
\ir _helpers.sql
select plan(24);

-- A user with 250 credits and its primary key, for the admin to act on.
select tests.new_account(250) as r \gset
select tests.h(:'r'::jsonb ->> 'api_key') as rh \gset

-- The admin API -----------------------------------------------------------------------------------------
select * from gateway.create_admin_key('ops@example.com') \gset adm_
select ok(gateway.key_is_well_formed(:'adm_api_key'), 'create_admin_key returns the plaintext key once');
select is(:'adm_permissions'::text, '{admin,read,write}', 'an admin key has read, write and admin');
select tests.h(:'adm_api_key') as ah \gset
select is(gateway.admin_authorize(:'ah', null, null),
          jsonb_build_object('user_id', :adm_user_id, 'key_id', :adm_key_id), 'admin_authorize accepts it');
select is(tests.error_of(format('select gateway.admin_authorize(%L, null, null)', :'rh')),
          '42501:permission_denied', 'a key without admin is refused by admin calls');
-- (ops@example.com may exist already: the README's quickstart makes it on the same database.)
select count(*) as adm_keys_before from gateway.api_keys
 where account_id = :adm_user_id and 'admin' = any(permissions) \gset
select is((select user_id from gateway.create_admin_key('OPS@example.com')), :adm_user_id::bigint,
          'create_admin_key reuses the account of an existing email');
select is((select count(*) from gateway.api_keys where account_id = :adm_user_id and 'admin' = any(permissions)),
          :adm_keys_before::bigint + 1, 'and adds a second admin key');

select is(
  gateway.admin_add_credits(:'ah', null, null, jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint),
                            500, 'promo'),
  jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint, 'credits_added', 500, 'balance', 750),
  'admin_add_credits by user_id');
select is(
  (gateway.admin_add_credits(:'ah', null, null,
                             jsonb_build_object('api_key_hash', encode(:'rh'::bytea, 'hex')), 5, 'by key')
   ->> 'balance')::bigint, 755::bigint, 'admin_add_credits by api_key_hash');
select is(tests.error_of(format($$select gateway.admin_add_credits(%L, null, null, '{"user_id": -5}', 5, 'x')$$, :'ah')),
          'P0002:not_found', 'an unknown user is not found');
select is(tests.error_of(format($$select gateway.admin_add_credits(%L, null, null, '{"user_id": 1}', 5, 'x')$$, :'rh')),
          '42501:permission_denied', 'a non-admin key cannot add credits');

-- Idempotent grants
select format('select gateway.admin_add_credits(%L, null, null, %L, 100, %L, %L)', :'ah',
              jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint), 'invoice 1', 'idem-1') as grant1 \gset
select is(tests.error_of(:'grant1'), 'ok', 'an admin grant with an Idempotency-Key runs');
select is(tests.balance(:'r'), 855::bigint, 'an idempotent grant is applied once');
select is(tests.error_of(:'grant1'), 'ok', 'a retry with the same key and body succeeds');
select is(tests.balance(:'r'), 855::bigint, 'a retry with the same key and body grants nothing more');
select is(
  (select response ->> 'balance' from gateway.idempotency_keys where idem_key = 'idem-1'), '855',
  'the first response is stored');
select is(
  tests.error_of(format('select gateway.admin_add_credits(%L, null, null, %L, 999, %L, %L)', :'ah',
                 jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint), 'invoice 1', 'idem-1')),
  'P0422:idempotency_key_reused', 'the same key with another body is refused (422)');
select is(
  (select (x ->> 'idempotent_replay')::boolean and (x ->> 'balance')::bigint = 855
     from (select gateway.admin_add_credits(:'ah', null, null,
             jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint), 100, 'invoice 1', 'idem-1') x) t),
  true, 'a replay returns the first response, marked idempotent_replay');

select is(
  gateway.admin_set_limits(:'ah', null, null, jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint),
                           '{"requests_per_minute": 5}') -> 'rate_limits' ->> 'requests_per_minute',
  '5', 'admin_set_limits sets an account''s limits');
select is(
  gateway.admin_set_limits(:'ah', null, null,
                           jsonb_build_object('api_key_hash', encode(:'rh'::bytea, 'hex'), 'scope', 'key'),
                           '{"tokens_per_day": 777}') -> 'rate_limits' ->> 'tokens_per_day',
  '777', 'with scope key it sets that key''s own limits');
select is(gateway.user_limits(:'rh', null, null) -> 'key_rate_limits' ->> 'tokens_per_day', '777',
          'user_limits shows the key''s limits');

select ok(
  (select bool_or(u ->> 'user_id' = :'r'::jsonb ->> 'user_id' and jsonb_array_length(u -> 'keys') = 1)
     from jsonb_array_elements(gateway.admin_balances(:'ah', null, null, 1,
            (select count(*)::integer from gateway.accounts
              where id < (:'r'::jsonb ->> 'user_id')::bigint and deleted_at is null)) -> 'users') u),
  'admin_balances lists users with credits and keys');
select ok(gateway.admin_monitor(:'ah', null, null) ?& array['users', 'keys', 'requests', 'tokens', 'credits',
                                                            'open_holds', 'top_models_today'],
          'admin_monitor gives system-wide figures');

-- Operator views --------------------------------------------------------------------------------------
select is((select count(*) from gateway.monitor), 1::bigint, 'the monitor view has one row');
select is((select balance from gateway.balances where user_id = (:'r'::jsonb ->> 'user_id')::bigint), 855::bigint,
          'the balances view shows each user''s balance');

select * from finish();
rollback;
