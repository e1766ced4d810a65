-- What a hostile client could get beyond its due (issue 11, findings 4, 5, 6, 7, 8): a key's own
-- limits multiplied through keys it manages, sign-ups from one subscriber's network, oversized
-- stored fields, an adjustment that takes held credits, a done idempotency entry without a response.
begin;
\ir _helpers.sql
select plan(45);

-- 4. A key with a limit of its own is a spending key ---------------------------------------------------
select tests.new_account(100000) as a \gset
select tests.h(:'a'::jsonb ->> 'api_key') as owner \gset
select gateway.create_key(:'owner', null, null, '{"name":"capped","max_requests":3}') as capped \gset
select tests.h(:'capped'::jsonb ->> 'api_key') as ch \gset
select gateway.create_key(:'owner', null, null, '{"name":"sibling","max_requests":1}') as sib \gset

select is(tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"c1","max_requests":3}')$$, :'ch')),
          '42501:permission_denied', 'a capped key cannot create a key, even one capped within what it has left');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"c2","max_requests":1}')$$, :'ch')),
          '42501:permission_denied', 'nor one capped at 1');
select is(tests.error_of(format($$select gateway.update_key(%L, null, null, %s, '{"max_requests":3}')$$,
                                :'ch', :'sib'::jsonb ->> 'key_id')),
          '42501:permission_denied', 'a capped key cannot raise a sibling''s cap');
select is(tests.error_of(format($$select gateway.update_key(%L, null, null, %s, '{"key_name":"mine"}')$$,
                                :'ch', :'sib'::jsonb ->> 'key_id')),
          '42501:permission_denied', 'nor change a sibling in any way');
select is(tests.error_of(format($$select gateway.rotate_key(%L, null, null, %s, 0)$$,
                                :'ch', :'sib'::jsonb ->> 'key_id')),
          '42501:permission_denied', 'nor rotate a sibling (and so receive its secret)');
select is(tests.error_of(format($$select gateway.delete_key(%L, null, null, %s)$$,
                                :'ch', :'sib'::jsonb ->> 'key_id')),
          '42501:permission_denied', 'nor delete a sibling');
select is(tests.error_of(format($$select gateway.update_key(%L, null, null, %s, '{"max_requests":4}')$$,
                                :'ch', :'capped'::jsonb ->> 'key_id')),
          '42501:permission_denied', 'nor raise its own cap');
select tests.begin(:'capped'::jsonb ->> 'api_key') as cb \gset
select tests.settle(:'cb', 1, 1);
select is(gateway.update_key(:'ch', null, null, (:'capped'::jsonb ->> 'key_id')::bigint,
                             '{"key_name":"capped, renamed","max_requests":2}') ->> 'max_requests',
          '2', 'it may rename itself and lower its cap');
select gateway.rotate_key(:'ch', null, null, (:'capped'::jsonb ->> 'key_id')::bigint, 0) as rot \gset
select is((:'rot'::jsonb ->> 'requests_used')::int, 1, 'and rotate itself: its count goes with it');

-- A key with rate limits of its own is a spending key too: deleting the account would revoke the
-- primary key and every sibling (the account's keys, profile and the use of its credits).
select tests.new_account(1000) as rl \gset
select tests.h(:'rl'::jsonb ->> 'api_key') as rl_owner \gset
select gateway.create_key(:'rl_owner', null, null, '{"name":"contractor"}') as rl_key \gset
select gateway.set_key_rate_limits((:'rl_key'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":2}');
select is(tests.error_of(format($$select gateway.delete_account(%L, null, null)$$,
                                tests.h(:'rl_key'::jsonb ->> 'api_key'))),
          '42501:permission_denied',
          'a key with rate limits of its own cannot delete its account while a key without them exists');
select is(gateway.user_balance(:'rl_owner', null, null) ->> 'credits', '1000',
          'the primary key still works and the account keeps its credits');
-- Once every other key is at least as limited, the account may go (nothing is less restricted).
select gateway.set_key_rate_limits((:'rl'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":3}');
select is(tests.error_of(format($$select gateway.delete_account(%L, null, null)$$,
                                tests.h(:'rl_key'::jsonb ->> 'api_key'))),
          '42501:permission_denied', 'nor while another key''s own limits are looser than its own');
select gateway.set_key_rate_limits((:'rl'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":2,"tokens_per_day":10}');
select is(gateway.delete_account(tests.h(:'rl_key'::jsonb ->> 'api_key'), null, null) ->> 'keys_revoked',
          '2', 'it may when every other key is at least as limited');
select is(tests.begin(:'rot'::jsonb ->> 'api_key') ->> 'ok', 'true', 'the rotated secret has 1 request left');
select is(tests.begin(:'rot'::jsonb ->> 'api_key') ->> 'reason', 'key_request_cap', 'and then none');

select gateway.create_key(:'owner', null, null, '{"name":"throttled"}') as thr \gset
select gateway.set_key_rate_limits((:'thr'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":2}');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"t1"}')$$,
                                tests.h(:'thr'::jsonb ->> 'api_key'))),
          '42501:permission_denied', 'a key with rate limits of its own cannot create keys either');
select gateway.set_key_rate_limits((:'thr'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":null}');
select gateway.create_key(tests.h(:'thr'::jsonb ->> 'api_key'), null, null, '{"name":"minted","max_requests":3}') as minted \gset
select is(:'minted'::jsonb ->> 'max_requests', '3', 'once they are cleared it can: it creates a capped key');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"m2","max_requests":1}')$$,
                                tests.h(:'minted'::jsonb ->> 'api_key'))),
          '42501:permission_denied', 'a capped key minted by a minted key creates none');
select is(gateway.update_key(:'owner', null, null, (:'sib'::jsonb ->> 'key_id')::bigint, '{"max_requests":50}') ->> 'max_requests',
          '50', 'a key without a limit of its own (the owner''s) still manages every key');

-- 5. Sign-ups per network, and per hour over all --------------------------------------------------------
select gateway.set_setting('registrations_per_network_per_hour', '5');
select gateway.set_setting('registrations_per_hour',
  ((select count(*) from gateway.signups where created_at > now() - interval '1 hour') + 100)::text);
select is(
  (select string_agg(tests.error_of(format($$select gateway.register(%L, null, 'live', %L)$$,
                                           'v6-' || i || '@example.com', '2001:db8:1:2::' || i)), ',' order by i)
     from generate_series(1, 12) i),
  'ok,ok,ok,ok,ok,53400:rate_limited,53400:rate_limited,53400:rate_limited,53400:rate_limited,'
  '53400:rate_limited,53400:rate_limited,53400:rate_limited',
  '12 sign-ups from one IPv6 /64: 5 accounts (5,000 free credits), then 429');
select is(tests.error_of($$select gateway.register('v6-next@example.com', null, 'live', '2001:db8:1:3::1')$$),
          'ok', 'the next /64 is another subscriber');
select is(
  (select string_agg(tests.error_of(format($$select gateway.register(%L, null, 'live', %L)$$,
                                           'v4-' || i || '@example.com', '198.51.100.' || (i * 40))), ',' order by i)
     from generate_series(1, 6) i),
  'ok,ok,ok,ok,ok,53400:rate_limited', 'IPv4: 5 per /24, whatever the last byte');
select is(tests.error_of($$select gateway.register('v4-mapped@example.com', null, 'live', '::ffff:198.51.100.9')$$),
          '53400:rate_limited', 'an IPv4 client seen as ::ffff:a.b.c.d counts against its /24');
select is(tests.error_of($$select gateway.register('v4-next@example.com', null, 'live', '198.51.101.1')$$),
          'ok', 'the next /24 may sign up');
create function tests.retry_after(p_sql text) returns integer language plpgsql as $$
declare
  v_detail text;
begin
  execute p_sql;
  return null;
exception when others then
  get stacked diagnostics v_detail = pg_exception_detail;
  return v_detail::integer;
end
$$;
select ok(tests.retry_after($$select gateway.register('v4-wait@example.com', null, 'live', '198.51.100.1')$$)
            between 3500 and 3600, 'the refusal says when a sign-up frees (detail → Retry-After)');
select is(tests.error_of($$select gateway.register('v4-later@example.com', null, 'live', '198.51.100.1', now() + interval '61 minutes')$$),
          'ok', 'an hour later the network may sign up again');

select gateway.set_setting('registrations_per_network_per_hour', '1');
select gateway.register('erased@example.com', null, 'live', '203.0.113.5') as erased \gset
select gateway.erase_account((:'erased'::jsonb ->> 'user_id')::bigint);
select is(tests.error_of($$select gateway.register('erased-again@example.com', null, 'live', '203.0.113.6')$$),
          '53400:rate_limited', 'erasing an account does not give its sign-up back');

select gateway.set_setting('registrations_per_network_per_hour', '5');
select gateway.set_setting('registrations_per_hour',
  (select count(*) from gateway.signups where created_at > now() - interval '1 hour' and created_at <= now())::text);
select is(tests.error_of($$select gateway.register('budget@example.com', null, 'live', '192.0.2.1')$$),
          '53400:signups_paused', 'past the hourly budget no network signs up');
select is(tests.error_of($$select gateway.register('operator-made@example.com', null, 'live', null)$$),
          'ok', 'an operator''s account (no client address) is not a sign-up');

-- 6. Stored free-form fields have sizes -----------------------------------------------------------------
select is(tests.error_of(format($$select gateway.update_profile(%L, null, null, %L)$$, :'owner',
                                jsonb_build_object('settings', jsonb_build_object('blob', repeat('x', 16400))))),
          '22023:invalid_request', 'profile settings: at most 16 KiB');
select is(gateway.update_profile(:'owner', null, null,
                                 jsonb_build_object('settings', jsonb_build_object('blob', repeat('x', 16000))))
            -> 'settings' ->> 'blob', repeat('x', 16000), 'within 16 KiB they are stored');
select is(tests.error_of(format($$update gateway.accounts set settings = %L where id = %s$$,
                                jsonb_build_object('blob', repeat('x', 20000)), :'a'::jsonb ->> 'user_id')),
          '23514:', 'the table refuses larger settings from any writer');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, %L)$$, :'owner',
                                jsonb_build_object('allowed_ips', (select jsonb_agg('10.0.' || i || '.0/24')
                                                                     from generate_series(0, 100) i)))),
          '22023:invalid_request', 'allowed_ips: at most 100 entries');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, %L)$$, :'owner',
                                jsonb_build_object('allowed_referrers', (select jsonb_agg('s' || i || '.example.com')
                                                                           from generate_series(0, 100) i)))),
          '22023:invalid_request', 'allowed_referrers: at most 100 entries');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, %L)$$, :'owner',
                                jsonb_build_object('allowed_referrers', jsonb_build_array(repeat('a', 250) || '.com')))),
          '22023:invalid_request', 'a referrer: at most 253 characters');
select is(tests.error_of(format($$select gateway.create_key(%L, null, null, %L)$$, :'owner',
                                jsonb_build_object('permissions', (select jsonb_agg('read'::text) from generate_series(1, 10000))))),
          '22023:invalid_request', 'permissions: at most 3 entries (not 10,000 copies of "read" in the audit log)');
select is(tests.error_of(format($$select gateway.add_credits(%s, 5, %L)$$, :'a'::jsonb ->> 'user_id', repeat('r', 501))),
          '22023:invalid_request', 'a grant''s reason: at most 500 characters');
select is(tests.error_of(format($$select gateway.deactivate_key(%s, %L)$$, :'sib'::jsonb ->> 'key_id', repeat('r', 501))),
          '22023:invalid_request', 'a deactivation''s reason too');
select is(tests.error_of(format($$update gateway.api_keys set allowed_ips = array(select ('10.0.' || i || '.0/24')::cidr from generate_series(0, 100) i) where id = %s$$,
                                :'sib'::jsonb ->> 'key_id')),
          '23514:', 'the table refuses more than 100 IP ranges from any writer');

-- 7. An adjustment takes only available credits --------------------------------------------------------
select tests.new_account(1000) as j \gset
select tests.begin(:'j'::jsonb ->> 'api_key', 58, 0) as jb \gset
select is(tests.held(:'j'), 58::bigint, 'a request in flight holds 58 of 1,000 credits');
select is(tests.error_of(format($$select gateway.add_credits(%s, -1000, 'refund')$$, :'j'::jsonb ->> 'user_id')),
          '22023:invalid_request', 'an adjustment of -1,000 is refused: only 942 are available');
select is(tests.balance(:'j'), 1000::bigint, 'and changes nothing');
select is((select balance from gateway.add_credits((:'j'::jsonb ->> 'user_id')::bigint, -942, 'refund')),
          58::bigint, 'an adjustment of -942 (all that is available) is taken');
select tests.settle(:'jb', 0, 58);
select is(tests.balance(:'j'), 0::bigint, 'the request in flight is then charged in full, and the balance is 0, not -58');

-- 8. A done idempotency entry always has its response ---------------------------------------------------
select is(tests.error_of(format($$insert into gateway.idempotency_keys (account_id, scope, idem_key, fingerprint, state,
                                    created_at, expires_at) values (%s, 'chat', 'k', 'f', 'done', now(), now() + interval '1 day')$$,
                                :'a'::jsonb ->> 'user_id')),
          '23514:', 'an entry cannot be done without the response a replay answers with');

select * from finish();
rollback;
