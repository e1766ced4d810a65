-- Reserved admissions: gateway.reserve_admissions admits ahead as begin_request would (the first by
-- begin_request itself, the others in one pass, the same as further begin_request calls:
-- 05_admission_reserved_bulk.test.sql) and marks the holds reserved;
-- gateway.cancel_admissions gives back the unused ones as if they had never been made: no hold, no
-- count, no use of the key, no usage record, no ledger row.
begin;
\ir _helpers.sql
select plan(59);

-- Every call of this file in one hour, the first calls in its 10th minute: t + 1 minute is the next
-- minute of the same hour and day.
select date_trunc('hour', now()) + interval '10 minutes 30 seconds' as t,
       date_trunc('hour', now()) + interval '11 minutes 30 seconds' as t2 \gset

-- Requests counted for a key, and the hash of a key (begin_request's argument).
create function tests.used(p_account jsonb) returns integer
language sql as $$
  select requests_used from gateway.key_counters where key_id = (p_account ->> 'key_id')::bigint
$$;
create function tests.reserve(p_key text, p_count integer, p_now timestamptz,
                              p_max_tokens integer default 10)
returns jsonb
language sql as $$
  select gateway.reserve_admissions(gateway.hash_key(p_key), null, null,
    jsonb_build_object('models', jsonb_build_array('test/model'), 'prompt_bound', 0,
                       'max_tokens', p_max_tokens),
    p_count, p_now)
$$;
create function tests.oks(p_answers jsonb) returns text[]
language sql as $$
  select array(select coalesce(e ->> 'reason', 'ok') from jsonb_array_elements(p_answers) e)
$$;
create function tests.ids(p_answers jsonb) returns bigint[]
language sql as $$
  select array(select (e ->> 'hold_id')::bigint from jsonb_array_elements(p_answers) e
                where (e ->> 'ok')::boolean)
$$;

-- Reserved, then some used and the rest given back --------------------------------------------------
select tests.new_account(100000) as a \gset
select :'a'::jsonb ->> 'api_key' as ak \gset
select tests.begin(:'ak', 10, 0, :'t') ->> 'hold_id' as a_plain \gset
select tests.account_requests(:'a', :'t') as a_before, tests.used(:'a') as a_used \gset

select tests.reserve(:'ak', 5, :'t') as r \gset
select tests.ids(:'r') as r_ids \gset
select is(tests.oks(:'r'), array['ok', 'ok', 'ok', 'ok', 'ok'], 'reserve 5 on an ample account: 5 admitted');
select is(
  (select count(*) from gateway.holds h where h.id = any(:'r_ids'::bigint[]) and h.reserved),
  5::bigint, 'each has its own hold, marked reserved');
select ok(not (select h.reserved from gateway.holds h where h.id = :a_plain),
          'a hold of a plain begin_request is not reserved');
select is(
  (select jsonb_agg(e - array['hold_id', 'available_credits', 'limits']) from jsonb_array_elements(:'r'::jsonb) e),
  (select jsonb_agg((:'r'::jsonb -> 0) - array['hold_id', 'available_credits', 'limits']) from generate_series(1, 5)),
  'answers shaped as begin_request''s (same key, hold, max_tokens, prices)');
select is(
  array(select (e -> 'limits' -> 'requests' ->> 'remaining')::int from jsonb_array_elements(:'r'::jsonb) e),
  array(select (:'r'::jsonb -> 0 -> 'limits' -> 'requests' ->> 'remaining')::int - i
          from generate_series(0, 4) i),
  'each sees the ones before it counted (remaining requests fall by one each)');
select is(
  array[(tests.account_requests(:'a', :'t') ->> 'requests_this_minute')::int
          - (:'a_before'::jsonb ->> 'requests_this_minute')::int,
        (tests.account_requests(:'a', :'t') ->> 'requests_this_hour')::int
          - (:'a_before'::jsonb ->> 'requests_this_hour')::int,
        (tests.account_requests(:'a', :'t') ->> 'requests_this_day')::int
          - (:'a_before'::jsonb ->> 'requests_this_day')::int],
  array[5, 5, 5], 'the account''s minute, hour and day windows count them: +5');
select is(tests.used(:'a') - :a_used, 5, 'the key''s requests_used: +5');
select is(tests.held(:'a'),
          10 + (select sum((e ->> 'held_credits')::bigint) from jsonb_array_elements(:'r'::jsonb) e)::bigint,
          'held: the plain hold plus the sum of the reserved ones');

select tests.settle(:'r'::jsonb -> 0, 0, 7, :'t') ->> 'settled' as s0,
       tests.settle(:'r'::jsonb -> 3, 0, 4, :'t') ->> 'settled' as s3,
       gateway.void_request((:'r'::jsonb -> 1 ->> 'hold_id')::bigint, 'upstream refused', :'t') ->> 'voided' as v1
  \gset
select is(array[:'s0', :'s3', :'v1'], array['true', 'true', 'true'],
          'reserved holds are settled and voided like any other');
select tests.balance(:'a') as a_balance \gset
select is(gateway.cancel_admissions(:'r_ids'::bigint[]), 2,
          'cancelling all 5 cancels only the 2 still open');
select is(tests.held(:'a'), 10::bigint, 'held is back to the plain hold alone');
select is(tests.balance(:'a'), :a_balance::bigint, 'the balance does not move');
select is(
  array[(tests.account_requests(:'a', :'t') ->> 'requests_this_minute')::int
          - (:'a_before'::jsonb ->> 'requests_this_minute')::int,
        (tests.account_requests(:'a', :'t') ->> 'requests_this_hour')::int
          - (:'a_before'::jsonb ->> 'requests_this_hour')::int,
        (tests.account_requests(:'a', :'t') ->> 'requests_this_day')::int
          - (:'a_before'::jsonb ->> 'requests_this_day')::int],
  array[3, 3, 3], 'the windows count the 3 used ones only');
select is(tests.used(:'a') - :a_used, 3, 'and so does requests_used');
select is((tests.account_requests(:'a', :'t') ->> 'tokens_this_minute')::int, 11,
          'the tokens of the settled ones stay counted');
select ok(tests.ledger_ok(), 'the ledger sums to the balance');
select is(
  array(select u.hold_id from gateway.usage_records u where u.hold_id = any(:'r_ids'::bigint[]) order by 1),
  array[(:'r'::jsonb -> 0 ->> 'hold_id')::bigint, (:'r'::jsonb -> 1 ->> 'hold_id')::bigint,
        (:'r'::jsonb -> 3 ->> 'hold_id')::bigint],
  'usage records for the settled and the voided, none for the cancelled');
select is((select count(*) from gateway.ledger l where l.hold_id = any(:'r_ids'::bigint[])), 2::bigint,
          'ledger rows only for the two charges');
select is((select count(*) from gateway.holds h where h.id = any(:'r_ids'::bigint[])), 0::bigint,
          'no hold of the reservation is left open');
select is(gateway.cancel_admissions(:'r_ids'::bigint[]), 0, 'cancelling the same ids again: 0');
select is(tests.settle(:'r'::jsonb -> 2, 1, 1, :'t') ->> 'reason', 'unknown_hold',
          'a cancelled admission cannot be settled afterwards (never made)');

-- Only reserved holds ---------------------------------------------------------------------------------
select is(gateway.cancel_admissions(array[:a_plain]::bigint[]), 0,
          'a hold of a plain begin_request is not cancelled');
select tests.ids(tests.reserve(:'ak', 1, :'t')) as r1_ids \gset
select is(gateway.cancel_admissions(array[:a_plain]::bigint[] || :'r1_ids'::bigint[]), 1,
          'nor when given with a reserved hold of its account: only that one');
select ok(exists (select from gateway.holds h where h.id = :a_plain), 'the plain hold stays open');
select is(gateway.cancel_admissions(array[null, -1, :a_plain]::bigint[]), 0,
          'null and unknown ids are skipped');
select is(gateway.cancel_admissions(array[]::bigint[]), 0, 'an empty array cancels nothing');
select is(gateway.cancel_admissions(null), 0, 'nor does null');

-- Stops where begin_request would refuse ---------------------------------------------------------------
select tests.new_account(100000) as l \gset
select :'l'::jsonb ->> 'api_key' as lk \gset
select from gateway.set_rate_limits((:'l'::jsonb ->> 'user_id')::bigint, '{"requests_per_minute":3}');
select tests.reserve(:'lk', 5, :'t') as lr \gset
select is(tests.oks(:'lr'), array['ok', 'ok', 'ok'],
          'a limit of 3 per minute: reserve 5 gives 3 admissions, and no refusal after them');
select is(:'lr'::jsonb -> 2 -> 'limits' -> 'requests' ->> 'remaining', '0',
          'the last of them says why: no request remaining');
select is((select count(*) from gateway.holds h where h.account_id = (:'l'::jsonb ->> 'user_id')::bigint and h.reserved),
          3::bigint, 'three reserved holds');
select is((tests.account_requests(:'l', :'t') ->> 'requests_this_minute')::int, 3,
          'the window is full: 3');
select is(gateway.cancel_admissions(tests.ids(:'lr')), 3, 'all three given back');
select is((tests.account_requests(:'l', :'t') ->> 'requests_this_minute')::int, 0,
          'the window is empty again');
select is(tests.oks(tests.reserve(:'lk', 3, :'t')), array['ok', 'ok', 'ok'],
          'and admits three again');

-- Credits: the last admission takes what is left, the next is refused ----------------------------------
select tests.new_account(25) as c \gset
select :'c'::jsonb ->> 'api_key' as ck \gset
select tests.reserve(:'ck', 5, :'t') as cr \gset
select is(tests.oks(:'cr'), array['ok', 'ok', 'ok'],
          'credits for 2.5 requests: 3 admissions (the third cut down), no refusal after them');
select is(array[tests.balance(:'c'), tests.held(:'c')], array[25, 25]::bigint[], 'all 25 credits held');
select is(gateway.cancel_admissions(tests.ids(:'cr')), 3, 'given back');
select is(array[tests.balance(:'c'), tests.held(:'c')], array[25, 0]::bigint[],
          'all 25 available again, nothing charged');
select is(tests.oks(tests.reserve((tests.new_account(0) ->> 'api_key'), 5, :'t')), array['insufficient_credits'],
          'no credits: only the refusal, nothing reserved');
select is(tests.oks(tests.reserve('gw_live_not_a_key', 5, :'t')), array['invalid_api_key'],
          'an unknown key: only the refusal');

-- A key with its own limits: its windows are given back too --------------------------------------------
select tests.new_account(100000) as k \gset
select :'k'::jsonb ->> 'api_key' as kk, (:'k'::jsonb ->> 'key_id')::bigint as kid \gset
select from gateway.set_key_rate_limits(:kid, '{"requests_per_hour":100}');
select tests.reserve(:'kk', 4, :'t') as kr \gset
select ok((select bool_and(h.count_key_windows) and count(*) = 4 from gateway.holds h
            where h.id = any(tests.ids(:'kr'))), 'four reserved holds that count the key''s windows');
select is(gateway.window_usage('key', :kid, :'t') ->> 'requests_this_hour', '4',
          'the key''s own windows count them');
select is(gateway.cancel_admissions(tests.ids(:'kr')), 4, 'given back');
select is(array[gateway.window_usage('key', :kid, :'t') ->> 'requests_this_minute',
                gateway.window_usage('key', :kid, :'t') ->> 'requests_this_hour',
                gateway.window_usage('key', :kid, :'t') ->> 'requests_this_day',
                tests.account_requests(:'k', :'t') ->> 'requests_this_hour'],
          array['0', '0', '0', '0'], 'the key''s windows and the account''s are back to 0');
select is(tests.used(:'k'), 0, 'and so is requests_used');

-- A window that has rolled over since is left alone -----------------------------------------------------
select tests.new_account(100000) as m \gset
select :'m'::jsonb ->> 'api_key' as mk \gset
select tests.reserve(:'mk', 3, :'t') as mr \gset
select tests.begin(:'mk', 10, 0, :'t2') ->> 'ok' as m_next \gset
select is(tests.account_requests(:'m', :'t2'),
          tests.account_requests(:'m', :'t2') || '{"requests_this_minute": 1, "requests_this_hour": 4, "requests_this_day": 4}',
          'a request in the next minute: 1 this minute, 4 this hour and day');
select is(gateway.cancel_admissions(tests.ids(:'mr')), 3, 'the 3 of the minute before given back');
select is(array[(tests.account_requests(:'m', :'t2') ->> 'requests_this_minute')::int,
                (tests.account_requests(:'m', :'t2') ->> 'requests_this_hour')::int,
                (tests.account_requests(:'m', :'t2') ->> 'requests_this_day')::int],
          array[1, 1, 1], 'the new minute keeps its 1; the hour and the day lose the 3');

-- Invalid counts -----------------------------------------------------------------------------------------
select is(tests.error_of(format('select gateway.reserve_admissions(%L, null, null, %L, 0)', tests.h(:'ak'), '{"models":["m"],"prompt_bound":0,"max_tokens":10}')),
          '22023:invalid_request', 'p_count 0 raises 22023 invalid_request');
select is(tests.error_of(format('select gateway.reserve_admissions(%L, null, null, %L, 65)', tests.h(:'ak'), '{"models":["m"],"prompt_bound":0,"max_tokens":10}')),
          '22023:invalid_request', 'so does 65');
select is(tests.error_of(format('select gateway.reserve_admissions(%L, null, null, %L, 2)', tests.h(:'ak'), '{"models":["m"],"prompt_bound":0,"max_tokens":0}')),
          '22023:invalid_request', 'max_tokens 0 raises as in begin_request');

-- A window full only because of reserved admissions: retry in a second ---------------------------------
-- Reserved admissions count from the moment they are reserved; unused, they go back within a second
-- or two (a retired worker's included). A refusal they alone cause says so, not "tomorrow".
select tests.new_account(100000) as d \gset
select :'d'::jsonb ->> 'api_key' as dk \gset
select from gateway.set_rate_limits((:'d'::jsonb ->> 'user_id')::bigint, '{"requests_per_day":6}');
select tests.begin(:'dk', 10, 0, :'t') ->> 'hold_id' as d_plain \gset
select tests.ids(tests.reserve(:'dk', 5, :'t')) as d_ids \gset
select tests.begin(:'dk', 10, 0, :'t') as d_refused \gset
select is((:'d_refused'::jsonb ->> 'reason', :'d_refused'::jsonb ->> 'window',
           (:'d_refused'::jsonb ->> 'retry_after_seconds')::int),
          ('rate_limited'::text, 'requests_per_day'::text, 1),
          'a day window filled by 5 reserved admissions and 1 request: refused, retry in 1 s');
select is(gateway.cancel_admissions(:'d_ids'::bigint[]), 5, 'the reservations given back');
select is(tests.begin(:'dk', 10, 0, :'t') ->> 'ok', 'true', 'then the retry is admitted');
select tests.begin(:'dk', 10, 0, :'t') as d_plain2 \gset
select tests.begin(:'dk', 10, 0, :'t') as d_plain3 \gset
select tests.begin(:'dk', 10, 0, :'t') as d_plain4 \gset
select tests.begin(:'dk', 10, 0, :'t') as d_plain5 \gset
select tests.begin(:'dk', 10, 0, :'t') as d_full \gset
select ok((:'d_full'::jsonb ->> 'retry_after_seconds')::int > 1,
          'a day window filled by requests: retry when it resets, as before');

-- Who may call --------------------------------------------------------------------------------------------
select ok(has_function_privilege('gateway_api',
            'gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz)', 'execute')
          and has_function_privilege('gateway_api', 'gateway.cancel_admissions(bigint[])', 'execute'),
          'gateway_api can execute both');
select ok(not has_function_privilege('anon',
            'gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz)', 'execute')
          and not has_function_privilege('authenticated',
            'gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz)', 'execute')
          and not has_function_privilege('anon', 'gateway.cancel_admissions(bigint[])', 'execute')
          and not has_function_privilege('authenticated', 'gateway.cancel_admissions(bigint[])', 'execute'),
          'anon and authenticated cannot');
set local role anon;
select is(tests.error_of('select gateway.cancel_admissions(array[1]::bigint[])'), '42501:', 'anon cannot call it');
reset role;

select ok(tests.ledger_ok() and not exists (select from gateway.credit_balances where balance < 0 or held < 0)
          and not exists (select from gateway.rate_counters where minute_requests < 0 or hour_requests < 0
                                                              or day_requests < 0),
          'every ledger sums to its balance; no balance, held or count below zero');

select * from finish();
rollback;
