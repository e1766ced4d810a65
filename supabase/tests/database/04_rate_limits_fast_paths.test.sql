-- Rate counters' fast paths and their fallbacks: a subject's counters are counted by an UPDATE when
-- their row is there, and by the upsert when it is not (a first count, or one after the purge) or
-- when a limit refuses; the x-ratelimit-* view is computed by begin_request itself, for an admission
-- and for the refusals that report it.
begin;
\ir _helpers.sql
select plan(9);

-- A fixed instant, 10:00:05 UTC today, so that no test straddles a real boundary.
select date_trunc('day', now(), 'UTC') + interval '10 hours 5 seconds' as t0 \gset
select tests.new_account(1000000) as a \gset
select :'a'::jsonb ->> 'api_key' as key, (:'a'::jsonb ->> 'user_id')::bigint as uid \gset

-- Settled after the purge ---------------------------------------------------------------------------
select tests.begin(:'key', 10, 5, :'t0') as h \gset
select from gateway.purge_rate_windows(:'t0'::timestamptz + interval '1 day 10 minutes');
select is((select count(*) from gateway.rate_counters where subject_kind = 'account' and subject_id = :uid),
          0::bigint, 'the purge deleted the account''s counters while its hold was open');
select tests.settle(:'h', 5, 20, :'t0'::timestamptz + interval '1 day 10 minutes') as s \gset
select is(row(:'s'::jsonb ->> 'settled', :'s'::jsonb ->> 'credits_charged')::text, row('true', '25')::text,
          'a hold settled after the purge is charged');
select is(
  (select row(day_start = date_trunc('day', :'t0'::timestamptz + interval '1 day', 'UTC'),
              minute_requests, minute_tokens, day_requests, day_tokens)::text
     from gateway.rate_counters where subject_kind = 'account' and subject_id = :uid),
  row(true, 0, 25, 0, 25)::text,
  'and its tokens start the account''s counters afresh, in the settle''s windows');

-- Refused by a limit on a counter row that is there ------------------------------------------------
select tests.new_account(1000000) as z \gset
select (:'z'::jsonb ->> 'user_id')::bigint as zid \gset
select is(tests.begin(:'z'::jsonb ->> 'api_key', p_now => :'t0') ->> 'ok', 'true', 'a first request is admitted');
select from gateway.set_rate_limits(:zid, '{"tokens_per_minute":0}');
select tests.begin(:'z'::jsonb ->> 'api_key', p_now => :'t0'::timestamptz + interval '1 second') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window', :'r'::jsonb ->> 'retry_after_seconds')::text,
          row('rate_limited', 'tokens_per_minute', '54')::text,
          'a limit lowered to zero refuses the next request, with the window and its reset');
select is(:'r'::jsonb -> 'limits',
          '{"requests":{"limit":60,"remaining":59,"reset_seconds":54},"tokens":{"limit":0,"remaining":0,"reset_seconds":54}}'::jsonb,
          'the refusal reports the windows it read: 1 of 60 requests used, no tokens allowed');
select is(gateway.window_usage('account', :zid, :'t0') ->> 'requests_this_minute', '1',
          'and counts nothing');

-- Refused for credits before counting ---------------------------------------------------------------
select tests.new_account(5) as p \gset
select tests.begin(:'p'::jsonb ->> 'api_key', 10, 10, :'t0') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'balance', :'r'::jsonb ->> 'available_credits')::text,
          row('insufficient_credits', '5', '5')::text,
          'a prompt the balance cannot cover is refused for credits');
select is(:'r'::jsonb -> 'limits',
          '{"requests":{"limit":60,"remaining":60,"reset_seconds":55},"tokens":{"limit":10000,"remaining":10000,"reset_seconds":55}}'::jsonb,
          'with the windows as they are: nothing counted');

select * from finish();
rollback;
