-- The user API: registration (signup credits, the primary key, per-IP limit), profile, balance,
-- monitor and key usage, and deleting an account (keys revoked, personal data erased, books kept).
begin;
\ir _helpers.sql
select plan(25);

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
select gateway.set_setting('registrations_per_network_per_hour', '2');
select gateway.register('second@example.com', null, 'live', '198.51.100.7');
select is(tests.error_of($$select gateway.register('third@example.com', null, 'live', '198.51.100.7')$$),
          '53400:rate_limited', 'registrations per network per hour are limited');
select is(tests.error_of($$select gateway.register('third@example.com', null, 'live', '2001:db8::7')$$),
          'ok', 'another network may still register');
select is(
  tests.error_of($$select gateway.register('later@example.com', null, 'live', '198.51.100.7', now() + interval '61 minutes')$$),
  'ok', 'the network may register again an hour later');
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
    "requests_remaining":null,"usage_percentage":null,"environment_tag":"test","tokens_used":750,
    "credits_used":750}'::jsonb,
  'key_usage has the spec''s shape, and the tokens and credits each key used');
select is(gateway.user_profile(:'rh', null, null) ->> 'email', 'Alice@Example.com',
          'user_profile returns the caller''s profile');

-- Deleting an account ----------------------------------------------------------------------------------
select gateway.create_key(:'rh', null, null, '{"name":"second"}') ->> 'api_key' as second \gset
select count(*) as ledger_rows from gateway.ledger where account_id = (:'r'::jsonb ->> 'user_id')::bigint \gset
select is(gateway.delete_account(:'rh', '198.51.100.7', null),
          jsonb_build_object('status', 'deleted', 'user_id', (:'r'::jsonb ->> 'user_id')::bigint, 'keys_revoked', 2),
          'delete_account revokes every key');
select is(
  (select row(email, username, full_name, company, is_active, deleted_at is not null)::text
     from gateway.accounts where id = (:'r'::jsonb ->> 'user_id')::bigint),
  row(null::text, null::text, null::text, null::text, false, true)::text,
  'personal data is erased, a tombstone stays');
select is(tests.begin(:'second') ->> 'reason', 'invalid_api_key', 'the revoked keys no longer work');
select is((select count(*) from gateway.ledger where account_id = (:'r'::jsonb ->> 'user_id')::bigint),
          :ledger_rows::bigint, 'the ledger is kept');
select is(tests.error_of($$select gateway.register('alice@example.com', 'alice', 'live', null)$$), 'ok',
          'the email and username are free again');

select * from finish();
rollback;
