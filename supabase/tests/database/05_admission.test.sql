-- gateway.begin_request: every refusal reason, nothing counted or held when refused, and what an
-- admitted request gets back.
begin;
\ir _helpers.sql
select plan(46);

select tests.new_account(1000) as a \gset
select :'a'::jsonb ->> 'api_key' as key, (:'a'::jsonb ->> 'user_id')::bigint as uid \gset

-- Admitted --------------------------------------------------------------------------------------
select tests.begin(:'key', 100, 10) as b \gset
select is(:'b'::jsonb ->> 'ok', 'true', 'a valid write key with credits is admitted');
select ok(:'b'::jsonb ?& array['hold_id', 'user_id', 'key_id', 'key_prefix', 'held_credits', 'max_tokens',
                                'balance', 'limits'],
          'the admission carries hold, account, key, hold amount, max_tokens, balance, limits');
select is((:'b'::jsonb ->> 'held_credits')::bigint, 110::bigint,
          'the hold is the worst case: prompt estimate + max_tokens');
select is(:'b'::jsonb -> 'limits' -> 'requests', '{"limit":60,"remaining":59}'::jsonb
          || jsonb_build_object('reset_seconds', gateway.window_reset_seconds('minute', now())),
          'request limit headers: the default 60/min, 59 left, seconds to the minute''s end');
select is((:'b'::jsonb -> 'limits' -> 'tokens' ->> 'limit')::bigint, 10000::bigint,
          'token limit headers: the default 10000/min');
select is(tests.held(:'a'), 110::bigint, 'the hold is reflected in held credits');
select is(tests.balance(:'a'), 1000::bigint, 'admission moves no money');
select is((select requests_used from gateway.key_counters where key_id = (:'a'::jsonb ->> 'key_id')::bigint),
          1::bigint, 'the key counts the request');

-- Refusals -------------------------------------------------------------------------------------
select is(gateway.begin_request(sha256('nope'::bytea), null, null, '{"models":["m"],"prompt_bound":0}') ->> 'reason',
          'invalid_api_key', 'an unknown key is refused: invalid_api_key');

select gateway.create_key(tests.h(:'key'), null, null, '{"name":"deact"}') ->> 'api_key' as deact \gset
select gateway.deactivate_key((select id from gateway.api_keys where key_prefix = left(:'deact', 12) || '…'));
select is(tests.begin(:'deact') ->> 'reason', 'key_inactive', 'a deactivated key is refused: key_inactive');
select is(
  tests.error_of(format('select gateway.update_key(%L, null, null, %s, %L)', tests.h(:'key'),
                        (select id from gateway.api_keys where key_prefix = left(:'deact', 12) || '…'),
                        '{"is_active":true}')),
  '42501:permission_denied', 'a key deactivated by an operator cannot be reactivated by the user');

select gateway.create_key(tests.h(:'key'), null, null, '{"name":"exp","expires_in_days":1}') ->> 'api_key' as exp \gset
select is(tests.begin(:'exp') ->> 'ok', 'true', 'a key before its expiry is admitted');
select is(tests.begin(:'exp', p_now => now() + interval '25 hours') ->> 'reason', 'key_expired',
          'a key past its expiry is refused: key_expired');

select gateway.create_key(tests.h(:'key'), null, null, '{"name":"ro","permissions":["read"]}') ->> 'api_key' as ro \gset
select is(tests.begin(:'ro') ->> 'reason', 'permission_denied',
          'a key without write cannot chat: permission_denied');

select gateway.create_key(tests.h(:'key'), null, null,
  '{"name":"ips","allowed_ips":["10.0.0.0/8","2001:db8::/32"]}') ->> 'api_key' as ips \gset
select is(tests.begin(:'ips', p_ip => '10.1.2.3') ->> 'ok', 'true', 'an IPv4 inside the allowlist passes');
select is(tests.begin(:'ips', p_ip => '11.0.0.1') ->> 'reason', 'ip_not_allowed',
          'an IPv4 outside the allowlist is refused: ip_not_allowed');
select is(tests.begin(:'ips', p_ip => '2001:db8::42') ->> 'ok', 'true', 'an IPv6 inside the allowlist passes');
select is(tests.begin(:'ips', p_ip => '2001:db9::1') ->> 'reason', 'ip_not_allowed',
          'an IPv6 outside the allowlist is refused');
select is(tests.begin(:'ips') ->> 'reason', 'ip_not_allowed', 'an unknown client IP is refused');

select gateway.create_key(tests.h(:'key'), null, null,
  '{"name":"refs","allowed_referrers":["app.example.com","*.example.org"]}') ->> 'api_key' as refs \gset
select is(tests.begin(:'refs', p_referrer => 'app.example.com') ->> 'ok', 'true', 'an exact referrer passes');
select is(tests.begin(:'refs', p_referrer => 'APP.Example.com:8443') ->> 'ok', 'true',
          'referrers compare case-insensitively, without port');
select is(tests.begin(:'refs', p_referrer => 'evil.example.com') ->> 'reason', 'referrer_not_allowed',
          'another host is refused: referrer_not_allowed');
select is(tests.begin(:'refs', p_referrer => 'a.b.example.org') ->> 'ok', 'true',
          '*.example.org admits any subdomain');
select is(tests.begin(:'refs', p_referrer => 'example.org') ->> 'reason', 'referrer_not_allowed',
          '*.example.org does not admit the apex');
select is(tests.begin(:'refs', p_referrer => 'badexample.org') ->> 'reason', 'referrer_not_allowed',
          '*.example.org does not admit badexample.org');
select is(tests.begin(:'refs') ->> 'reason', 'referrer_not_allowed', 'a missing referrer is refused');

select gateway.create_key(tests.h(:'key'), null, null, '{"name":"cap","max_requests":2}') ->> 'api_key' as cap \gset
select is(tests.begin(:'cap') ->> 'ok', 'true', 'request 1 of a 2-request key passes');
select is(tests.begin(:'cap') ->> 'ok', 'true', 'request 2 of a 2-request key passes');
select is(tests.begin(:'cap') ->> 'reason', 'key_request_cap', 'request 3 is refused: key_request_cap');
select is((select c.requests_used from gateway.key_counters c join gateway.api_keys k on k.id = c.key_id
            where k.key_prefix = left(:'cap', 12) || '…'), 2::bigint,
          'the refused request is not counted on the key');

-- Rate limits (own account so the counts are clean)
select tests.new_account(100000) as r \gset
select gateway.set_rate_limits((:'r'::jsonb ->> 'user_id')::bigint, '{"requests_per_minute":3}');
select ok((select bool_and(tests.begin(:'r'::jsonb ->> 'api_key') ->> 'ok' = 'true') from generate_series(1, 3)),
          'three requests within a 3/min limit pass');
select tests.begin(:'r'::jsonb ->> 'api_key') as rl \gset
select is(:'rl'::jsonb ->> 'reason', 'rate_limited', 'the fourth is refused: rate_limited');
select is(:'rl'::jsonb ->> 'window', 'requests_per_minute', 'the refusal names the window');
select is((:'rl'::jsonb ->> 'retry_after_seconds')::integer, gateway.window_reset_seconds('minute', now()),
          'retry_after_seconds is the time to the end of the minute');
select is((tests.account_requests(:'r') ->> 'requests_this_minute')::integer, 3,
          'the refused request is not counted in the window');
select is((select count(*) from gateway.holds where account_id = (:'r'::jsonb ->> 'user_id')::bigint), 3::bigint,
          'the refused request holds nothing');

select tests.new_account(100000) as t \gset
select gateway.set_rate_limits((:'t'::jsonb ->> 'user_id')::bigint, '{"tokens_per_minute":50}');
select tests.begin(:'t'::jsonb ->> 'api_key') as tb \gset
select tests.settle(:'tb', 20, 40);
select tests.begin(:'t'::jsonb ->> 'api_key') as tr \gset
select is(row(:'tr'::jsonb ->> 'reason', :'tr'::jsonb ->> 'window')::text,
          row('rate_limited', 'tokens_per_minute')::text,
          'tokens used in the window (60 >= 50) refuse the next request: tokens_per_minute');

-- Per-key limits
select tests.new_account(100000) as kl \gset
select gateway.set_key_rate_limits((:'kl'::jsonb ->> 'key_id')::bigint, '{"requests_per_hour":1}');
select is(tests.begin(:'kl'::jsonb ->> 'api_key') ->> 'ok', 'true', 'a key limited to 1/hour passes once');
select tests.begin(:'kl'::jsonb ->> 'api_key') as klr \gset
select is(row(:'klr'::jsonb ->> 'reason', :'klr'::jsonb ->> 'window', :'klr'::jsonb ->> 'scope')::text,
          row('rate_limited', 'requests_per_hour', 'key')::text,
          'then is refused by its own window (scope key)');

-- Credits
select tests.new_account(100) as c \gset
select tests.begin(:'c'::jsonb ->> 'api_key', 1000, 10) as cb \gset
select is((:'cb'::jsonb ->> 'max_tokens')::integer, 90,
          'max_tokens is capped to what the balance affords (100 - 10 prompt)');
select is((:'cb'::jsonb ->> 'held_credits')::bigint, 100::bigint, 'the hold takes exactly the available credits');
select tests.begin(:'c'::jsonb ->> 'api_key', 10, 0) as cr \gset
select is(:'cr'::jsonb ->> 'reason', 'insufficient_credits',
          'with nothing available the next request is refused: insufficient_credits');
select is(tests.held(:'c'), 100::bigint, 'the refused request holds nothing');
select is((tests.account_requests(:'c') ->> 'requests_this_minute')::integer, 1,
          'the refused request is not counted');

select tests.new_account(5000) as d \gset
select is((tests.begin(:'d'::jsonb ->> 'api_key', null, 0) ->> 'max_tokens')::integer, 4096,
          'without max_tokens the default_max_tokens setting applies');

select gateway.deactivate_account((:'d'::jsonb ->> 'user_id')::bigint);
select is(tests.begin(:'d'::jsonb ->> 'api_key') ->> 'reason', 'key_inactive',
          'keys of a deactivated account are refused: key_inactive');

select * from finish();
rollback;
