-- Holds across worker lifecycles: a taken reservation is noted (note_holds) and never released as
-- unused; reserved admissions nobody took are released by the server within seconds
-- (release_reserved_admissions), uncounted and unheld; a hold is leased (hold_lease_seconds), each
-- note renews the lease up to the hold's longest life, and a hold whose worker stopped noting it
-- lapses; an expired hold keeps its generation id and the reconcile lists it (reconcile_candidates)
-- until a settle posts its charge.
begin;
\ir _helpers.sql
select plan(37);

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
select is((select expires_at from gateway.holds where id = :taken), :'t'::timestamptz + interval '6 seconds',
          'admission gives a hold a lease of hold_lease_seconds (6 s)');
select is(gateway.note_holds(array[:taken, :noted, -1]::bigint[], array[null, 'gen-abc', 'gen-x'], :'t'),
          2, 'note_holds: two open holds noted');
select is((select reserved from gateway.holds where id = :taken), false, 'a taken reservation is no longer reserved');
select is((select generation_id from gateway.holds where id = :noted), 'gen-abc', 'the generation id is noted');
select is(gateway.note_holds(array[:noted]::bigint[], array[null]::text[], :'t'), 1, 'a later null note…');
select is((select generation_id from gateway.holds where id = :noted), 'gen-abc', '…keeps the generation id');
select is(tests.error_of($$select gateway.note_holds(array[1, 2]::bigint[], array['x']::text[])$$),
          '22023:invalid_request', 'arrays of different lengths: 22023');

-- release_reserved_admissions: not before its age; then the two untaken, not the taken ones.
select is(gateway.release_reserved_admissions(1, :'t'::timestamptz + interval '4 seconds'), 0,
          'an age below 5 s is taken as 5: a reservation of 4 s may be in use, not noted yet');
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
select is((select count(*)::int from gateway.released_reservations where id = any(:'ids'::bigint[])), 2,
          'a copy of each released reservation is kept');
-- A request had one after all (its worker could not note it in time): its settle charges it late.
select (:'ids'::bigint[])[3] as released \gset
select is(gateway.settle_request(:released, '{"model": "test/model", "prompt_tokens": 3,
            "completion_tokens": 4, "settled_by": "usage"}'::jsonb, :'t'::timestamptz + interval '7 seconds')
            - 'upstream_usd' - 'hold_id' - 'balance_after' - 'held_credits',
          '{"settled": true, "late": true, "credits_charged": 7, "overrun": false, "overrun_credits": 0}'::jsonb,
          'a settle of a released reservation is charged late');
select is((select row(status, settled_late, credits_charged)::text from gateway.usage_records
            where hold_id = :released), row('success', true, 7)::text, 'and recorded');
select is((tests.account_requests(:'a', :'t'::timestamptz + interval '7 seconds')
            ->> 'requests_this_minute')::int, 3,
          'and counted again in the window the release took it out of (2 taken + this one)');
select is((select requests_used::int from gateway.key_counters
            where key_id = (:'a'::jsonb ->> 'key_id')::bigint), 3,
          'and in the key''s requests_used: a request that ran never escapes the key''s cap');
select is(gateway.settle_request(:released, '{"model": "test/model", "prompt_tokens": 3,
            "completion_tokens": 4, "settled_by": "usage"}'::jsonb) ->> 'reason', 'already_settled',
          'once');
select is((select count(*)::int from gateway.released_reservations where id = :released), 0,
          'its copy is gone');

-- Leases: a note renews to now + hold_lease_seconds, never earlier, never past admission +
-- greatest(hold_timeout_seconds, the request's lifetime); the noted one is not renewed after t.
select is(gateway.note_holds(array[:taken]::bigint[], array[null]::text[], :'t'::timestamptz + interval '4 seconds'),
          1, 'a renewal');
select is((select expires_at from gateway.holds where id = :taken), :'t'::timestamptz + interval '10 seconds',
          'renewed: now + hold_lease_seconds');
select gateway.note_holds(array[:taken]::bigint[], array[null]::text[], :'t'::timestamptz + interval '1 second');
select is((select expires_at from gateway.holds where id = :taken), :'t'::timestamptz + interval '10 seconds',
          'an older note never shortens it');
select gateway.note_holds(array[:taken]::bigint[], array[null]::text[], :'t'::timestamptz + interval '898 seconds');
select is((select expires_at from gateway.holds where id = :taken), :'t'::timestamptz + interval '900 seconds',
          'never past admission + hold_timeout_seconds (900 s; its request''s lifetime is shorter)');
select :'t'::timestamptz + interval '6 seconds' as exp0 \gset
select is(gateway.expire_stale_holds(:'exp0'::timestamptz - interval '1 second'), 0,
          'nothing lapses before its lease ends');

-- A lapsed lease: the hold of a billed generation keeps its credits (the reconcile lists it at any
-- age); one without a generation id is released; at its longest life any hold is expired, keeping
-- its generation id for the reconcile, and a late settle posts the charge.
select tests.new_account(1000) as b \gset
select tests.begin(:'b'::jsonb ->> 'api_key', 10, 0, :'t') as plain \gset
select (:'plain'::jsonb ->> 'hold_id')::bigint as plain_id \gset
select is(gateway.expire_stale_holds(:'exp0'::timestamptz + interval '1 second'), 1,
          'a lapsed lease releases the hold upstream never answered for');
select is((select status from gateway.usage_records where hold_id = :plain_id), 'expired',
          '…recorded as expired');
select ok(exists (select from gateway.holds where id = :noted),
          'the lapsed hold of a billed generation stays, its credits held');
select ok(gateway.reconcile_candidates(100000, 50, :'exp0'::timestamptz + interval '2 seconds')
            @> jsonb_build_array(jsonb_build_object('hold_id', :noted, 'expired', false)),
          'the reconcile lists a lapsed hold whatever its age');
select is(gateway.expire_stale_holds(:'t'::timestamptz + interval '901 seconds'), 2,
          'at their longest life both holds expire (the one with a generation id too)');
select is((select generation_id from gateway.usage_records where hold_id = :noted), 'gen-abc',
          'its expired record keeps the generation id');
select ok(gateway.reconcile_candidates(0, 50, :'t'::timestamptz + interval '902 seconds')
            @> jsonb_build_array(jsonb_build_object('hold_id', :noted, 'expired', true)),
          'the reconcile lists it');
select ok((gateway.settle_request(:noted, '{"model": "test/model", "prompt_tokens": 10,
            "completion_tokens": 5, "settled_by": "generation", "generation_id": "gen-abc"}'::jsonb,
            :'t'::timestamptz + interval '903 seconds') ->> 'late')::boolean,
          'settled late from /generation');
select ok(not (gateway.reconcile_candidates(0, 50, :'t'::timestamptz + interval '904 seconds')
            @> jsonb_build_array(jsonb_build_object('hold_id', :noted))),
          'then no longer listed');

-- A late settle whose charge exceeds the credits available now: the excess is an overrun.
select tests.new_account(100) as c \gset
select tests.begin(:'c'::jsonb ->> 'api_key', 50, 0, :'t') as late \gset
select gateway.expire_stale_holds(:'exp0'::timestamptz + interval '1 second');
-- Meanwhile the account spent 70 of its 100 credits.
select tests.settle(tests.begin(:'c'::jsonb ->> 'api_key', 70, 0, :'t'), 0, 70, :'t');
select is(gateway.settle_request((:'late'::jsonb ->> 'hold_id')::bigint,
            '{"model": "test/model", "prompt_tokens": 10, "completion_tokens": 40,
              "settled_by": "usage"}'::jsonb, :'exp0'::timestamptz + interval '2 seconds')
            - 'upstream_usd' - 'hold_id' - 'held_credits',
          '{"settled": true, "late": true, "credits_charged": 50, "overrun": true,
            "overrun_credits": 20, "balance_after": -20}'::jsonb,
          'a late settle beyond the available credits records the excess as an overrun');

select * from finish();
rollback;
