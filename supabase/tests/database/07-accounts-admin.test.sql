-- Accounts (register, profile, deletion), the admin API, the operator cookbook, settings, idempotency.
begin;
\ir _helpers.sql
select plan(55);

-- Registration ----------------------------------------------------------------------------------------
select gateway.register('Alice@Example.com', 'alice', 'test', '198.51.100.7') as r \gset
select ok(:'r'::jsonb ?& array['user_id', 'email', 'username', 'api_key', 'key_id', 'key_prefix', 'environment',
                                'credits'], 'register returns the account and its primary key');
select is((:'r'::jsonb ->> 'credits')::bigint, 1000::bigint, 'signup credits default to 1000');
select matches(:'r'::jsonb ->> 'api_key', '^gw_test_', 'the primary key has the requested environment');
select is(
  (select row(is_primary, permissions, name)::text from gateway.api_keys where id = (:'r'::jsonb ->> 'key_id')::bigint),
  row(true, array['read', 'write'], 'Primary Key')::text, 'the primary key reads and writes');
select is(
  (select row(kind, amount, balance_after)::text from gateway.ledger where account_id = (:'r'::jsonb ->> 'user_id')::bigint),
  row('grant', 1000::bigint, 1000::bigint)::text, 'signup credits are a grant in the ledger');
select is(tests.error_of($$select gateway.register('alice@EXAMPLE.com', null, 'live', null)$$),
          '23505:email_taken', 'emails are unique case-insensitively');
select is(tests.error_of($$select gateway.register('other@example.com', 'ALICE', 'live', null)$$),
          '23505:username_taken', 'usernames are unique case-insensitively');
select is(tests.error_of($$select gateway.register('not-an-email', null, 'live', null)$$),
          '22023:invalid_request', 'an invalid email is refused');
select is(tests.error_of($$select gateway.register('env@example.com', null, 'prod', null)$$),
          '22023:invalid_request', 'an unknown environment is refused');
select gateway.set_setting('registrations_per_ip_per_hour', '2');
select gateway.register('second@example.com', null, 'live', '198.51.100.7');
select is(tests.error_of($$select gateway.register('third@example.com', null, 'live', '198.51.100.7')$$),
          '53400:rate_limited', 'registrations per IP per hour are limited');
select is(tests.error_of($$select gateway.register('third@example.com', null, 'live', '2001:db8::7')$$),
          'ok', 'another IP may still register');
select is(
  tests.error_of($$select gateway.register('later@example.com', null, 'live', '198.51.100.7', now() + interval '61 minutes')$$),
  'ok', 'the IP may register again an hour later');
select gateway.set_setting('signup_credits', '250');
select is((gateway.register('fourth@example.com', null, 'live', null) ->> 'credits')::bigint, 250::bigint,
          'signup credits come from the settings');

-- Profile and balance -------------------------------------------------------------------------------
select tests.h(:'r'::jsonb ->> 'api_key') as rh \gset
select is(gateway.user_balance(:'rh', null, null) - 'api_key',
          jsonb_build_object('user_id', (:'r'::jsonb ->> 'user_id')::bigint, 'credits', 1000, 'held_credits', 0,
                             'available_credits', 1000),
          'user_balance: credits, held, available');
select is(gateway.update_profile(:'rh', null, null, '{"full_name":"Alice A","company":"ACME","settings":{"theme":"dark"}}')
            - array['created_at', 'updated_at', 'user_id'],
          '{"email":"Alice@Example.com","username":"alice","full_name":"Alice A","company":"ACME",
            "settings":{"theme":"dark"},"credits":1000,"is_active":true}'::jsonb,
          'update_profile changes the given fields and returns the profile');
select is(tests.error_of(format($$select gateway.update_profile(%L, null, null, '{"credits":1000000}')$$, :'rh')),
          '22023:invalid_request', 'credits are not a profile field');
select ok(gateway.user_monitor(:'rh', null, null) -> 'usage_metrics' ?& array[
            'total_requests', 'total_tokens', 'total_cost', 'requests_today', 'tokens_today', 'cost_today',
            'requests_this_month', 'tokens_this_month', 'cost_this_month', 'average_tokens_per_request',
            'most_used_model', 'last_request_time'],
          'user_monitor has the spec''s usage_metrics');
select tests.begin(:'r'::jsonb ->> 'api_key', 100, 0) as b \gset
select tests.settle(:'b', 500, 250);
select is(gateway.user_monitor(:'rh', null, null) -> 'usage_metrics' ->> 'total_cost', '0.015000',
          'cost = credits x usd_per_credit ($0.00002, the spec''s 1M tokens = $20)');
select is(
  (gateway.key_usage(:'rh', null, null) -> 'keys' -> 0) - array['created_at', 'last_used_at', 'api_key', 'key_id'],
  '{"key_name":"Primary Key","is_active":true,"is_primary":true,"requests_used":1,"max_requests":null,
    "requests_remaining":null,"usage_percentage":null,"environment_tag":"test"}'::jsonb,
  'key_usage has the spec''s shape');

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

-- Operator cookbook -----------------------------------------------------------------------------------
select is((select count(*) from gateway.monitor), 1::bigint, 'the monitor view has one row');
select is((select balance from gateway.balances where user_id = (:'r'::jsonb ->> 'user_id')::bigint), 855::bigint,
          'the balances view shows each user''s balance');
select is(tests.error_of($$select gateway.set_setting('no_such_setting', '1')$$), '22023:invalid_request',
          'set_setting refuses unknown settings');
select is(tests.error_of($$select gateway.set_setting('hold_timeout_seconds', '5')$$), '23514:',
          'set_setting keeps the column''s checks');
select is(tests.error_of('delete from gateway.system_settings'), '42501:invalid_request',
          'the settings row cannot be deleted');

-- Deleting an account ----------------------------------------------------------------------------------
select gateway.create_key(:'rh', null, null, '{"name":"second"}') ->> 'api_key' as second \gset
select is(gateway.delete_account(:'rh', '198.51.100.7', null),
          jsonb_build_object('status', 'deleted', 'user_id', (:'r'::jsonb ->> 'user_id')::bigint, 'keys_revoked', 2),
          'delete_account revokes every key');
select is(
  (select row(email, username, full_name, company, is_active, deleted_at is not null)::text
     from gateway.accounts where id = (:'r'::jsonb ->> 'user_id')::bigint),
  row(null::text, null::text, null::text, null::text, false, true)::text,
  'personal data is erased, a tombstone stays');
select is(tests.begin(:'second') ->> 'reason', 'invalid_api_key', 'the revoked keys no longer work');
select cmp_ok((select count(*) from gateway.ledger where account_id = (:'r'::jsonb ->> 'user_id')::bigint), '>=', 5::bigint,
              'the ledger is kept');
select is(tests.error_of($$select gateway.register('alice@example.com', 'alice', 'live', null)$$), 'ok',
          'the email and username are free again');

-- Health and models cache -------------------------------------------------------------------------------
select is(gateway.health() ->> 'database', 'ok', 'health says the database is ok');
select is(gateway.user_profile(tests.h(:'adm_api_key'), null, null) ->> 'email', 'ops@example.com',
          'user_profile returns the caller''s profile');
select is(gateway.store_models_cache('{"data":[{"id":"m1"}]}', null, now()) -> 'data',
          '{"data":[{"id":"m1"}]}'::jsonb, 'store_models_cache keeps the catalog');
select is(gateway.store_models_cache(null, 'upstream 503', now()) - array['fetched_at', 'ttl_seconds', 'last_error_at'],
          '{"data":{"data":[{"id":"m1"}]},"last_error":"upstream 503"}'::jsonb,
          'a failed refresh is recorded and the last good copy kept');

select * from finish();
rollback;
