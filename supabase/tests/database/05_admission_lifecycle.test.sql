-- Holds across worker lifecycles: a taken reservation is noted (note_holds) and never released as
-- unused; reserved admissions nobody took are released by the server within seconds
-- (release_reserved_admissions), uncounted and unheld; extend_holds keeps a living request's hold
-- from the sweeper; an expired hold keeps its generation id and the reconcile lists it
-- (reconcile_candidates) until a settle posts its charge.
begin;
\ir _helpers.sql
select plan(22);

select date_trunc('hour', now()) + interval '10 minutes 30 seconds' as t \gset

-- The sweeper and the reconcile see every hold of the database: in this transaction (rolled back),
-- only this file's.
delete from gateway.holds;
delete from gateway.usage_records where status = 'expired';

select tests.new_account(100000) as a \gset
select :'a'::jsonb ->> 'api_key' as ak \gset
select gateway.reserve_admissions(gateway.hash_key(:'ak'), null, null,
                                  '{"models":["test/model"],"prompt_bound":0,"max_tokens":10}', 4,
                                  :'t'::timestamptz) as r \gset
select array(select (e ->> 'hold_id')::bigint from jsonb_array_elements(:'r'::jsonb) e) as ids \gset
select (:'ids'::bigint[])[1] as taken, (:'ids'::bigint[])[2] as noted \gset
select tests.held(:'a') as held4 \gset

-- note_holds: taken (null generation id) and noted (with one); unknown ids are not counted.
select is(gateway.note_holds(array[:taken, :noted, -1]::bigint[], array[null, 'gen-abc', 'gen-x']),
          2, 'note_holds: two open holds noted');
select is((select reserved from gateway.holds where id = :taken), false, 'a taken reservation is no longer reserved');
select is((select generation_id from gateway.holds where id = :noted), 'gen-abc', 'the generation id is noted');
select is(gateway.note_holds(array[:noted]::bigint[], array[null]::text[]), 1, 'a later null note…');
select is((select generation_id from gateway.holds where id = :noted), 'gen-abc', '…keeps the generation id');
select is(tests.error_of($$select gateway.note_holds(array[1, 2]::bigint[], array['x']::text[])$$),
          '22023:invalid_request', 'arrays of different lengths: 22023');

-- release_reserved_admissions: not before its age; then the two untaken, not the taken ones.
select is(gateway.release_reserved_admissions(5, :'t'::timestamptz + interval '4 seconds'), 0,
          'nothing released younger than 5 s');
select is(gateway.release_reserved_admissions(5, :'t'::timestamptz + interval '6 seconds'), 2,
          'the two reservations nobody took are released at 5 s');
select is((select count(*)::int from gateway.holds where id = any(:'ids'::bigint[])), 2,
          'the taken ones stay open');
select is((select count(*)::int from gateway.usage_records where hold_id = any(:'ids'::bigint[])), 0,
          'released as if never made: no usage record');
select is(tests.held(:'a'), (select sum(amount) from gateway.holds where id = any(:'ids'::bigint[]))::bigint,
          'only the taken ones hold credits');
select is((tests.account_requests(:'a', :'t') ->> 'requests_this_minute')::int, 2,
          'the minute window counts the two taken only');
select is((select requests_used::int from gateway.key_counters
            where key_id = (:'a'::jsonb ->> 'key_id')::bigint), 2, 'the key counter too');

-- extend_holds: never earlier, at most a day ahead.
select expires_at as exp0 from gateway.holds where id = :taken \gset
select is(gateway.extend_holds(array[:taken]::bigint[], :'exp0'::timestamptz - interval '1 minute', :'t'), 1,
          'extend_holds: one open hold');
select is((select expires_at from gateway.holds where id = :taken), :'exp0'::timestamptz,
          'an earlier time never shortens it');
select is(gateway.extend_holds(array[:taken]::bigint[], :'t'::timestamptz + interval '2 days', :'t'), 1,
          'extended…');
select is((select expires_at from gateway.holds where id = :taken), :'t'::timestamptz + interval '1 day',
          '…at most a day ahead');

-- The sweeper keeps the generation id; the reconcile lists it; a late settle posts the charge.
select is(gateway.expire_stale_holds(:'exp0'::timestamptz + interval '1 second'), 1,
          'the noted hold (not extended) expires');
select is((select generation_id from gateway.usage_records where hold_id = :noted), 'gen-abc',
          'its expired record keeps the generation id');
select ok(gateway.reconcile_candidates(0, 50, :'exp0'::timestamptz + interval '2 seconds')
            @> jsonb_build_array(jsonb_build_object('hold_id', :noted, 'expired', true)),
          'the reconcile lists it');
select ok((gateway.settle_request(:noted, '{"model": "test/model", "prompt_tokens": 10,
            "completion_tokens": 5, "settled_by": "generation", "generation_id": "gen-abc"}'::jsonb,
            :'exp0'::timestamptz + interval '3 seconds') ->> 'late')::boolean,
          'settled late from /generation');
select ok(not (gateway.reconcile_candidates(0, 50, :'exp0'::timestamptz + interval '4 seconds')
            @> jsonb_build_array(jsonb_build_object('hold_id', :noted))),
          'then no longer listed');

select * from finish();
rollback;
