-- Rate windows: minute/hour/day rollover driven by p_now, token windows at settle, headers, purge.
-- The windows of a subject are the columns of its one gateway.rate_counters row, rolled in place.
begin;
\ir _helpers.sql
select plan(31);

-- A fixed instant, 10:00:05 UTC today, so that no test straddles a real boundary.
select date_trunc('day', now(), 'UTC') + interval '10 hours 5 seconds' as t0 \gset
select tests.new_account(1000000) as a \gset
select :'a'::jsonb ->> 'api_key' as key, (:'a'::jsonb ->> 'user_id')::bigint as uid \gset
select gateway.set_rate_limits(:uid, '{"requests_per_minute":2,"requests_per_hour":3,"requests_per_day":4}');

select is(tests.begin(:'key', p_now => :'t0') -> 'limits' -> 'requests',
          '{"limit":2,"remaining":1,"reset_seconds":55}'::jsonb,
          'headers show the tightest window: 1 of 2 left this minute, 55 s to go');
select is(tests.begin(:'key', p_now => :'t0'::timestamptz + interval '30 seconds') ->> 'ok', 'true',
          'second request in the minute passes');
select tests.begin(:'key', p_now => :'t0'::timestamptz + interval '40 seconds') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window', :'r'::jsonb ->> 'retry_after_seconds')::text,
          row('rate_limited', 'requests_per_minute', '15')::text,
          'third in the minute: refused by the minute window, retry in 15 s');

select is(tests.begin(:'key', p_now => :'t0'::timestamptz + interval '60 seconds') ->> 'ok', 'true',
          'the next minute admits again (window rollover)');
select is(
  (select row(minute_start - :'t0'::timestamptz, minute_requests, hour_start - :'t0'::timestamptz,
              hour_requests, day_requests)::text
     from gateway.rate_counters where subject_kind = 'account' and subject_id = :uid),
  row(interval '55 seconds', 1, interval '-5 seconds', 3, 3)::text,
  'the minute rolled over in place in the one counter row; hour and day kept counting');
select tests.begin(:'key', p_now => :'t0'::timestamptz + interval '2 minutes') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window', :'r'::jsonb ->> 'retry_after_seconds')::text,
          row('rate_limited', 'requests_per_hour', '3475')::text,
          'the fourth in the hour is refused by the hour window, retry at the hour''s end');

select is(tests.begin(:'key', p_now => :'t0'::timestamptz + interval '1 hour') ->> 'ok', 'true',
          'the next hour admits again');
select is(
  (select row(minute_start - :'t0'::timestamptz, minute_requests, hour_start - :'t0'::timestamptz,
              hour_requests, day_requests)::text
     from gateway.rate_counters where subject_kind = 'account' and subject_id = :uid),
  row(interval '59 minutes 55 seconds', 1, interval '59 minutes 55 seconds', 1, 4)::text,
  'the hour (and minute) rolled over in place; the day kept counting');
select tests.begin(:'key', p_now => :'t0'::timestamptz + interval '1 hour 5 minutes') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window', :'r'::jsonb ->> 'retry_after_seconds')::text,
          row('rate_limited', 'requests_per_day', (13 * 3600 - 5 * 60 - 5)::text)::text,
          'the fifth in the day is refused by the day window, retry at midnight UTC');
select is(
  gateway.window_usage('account', :uid, :'t0'::timestamptz + interval '1 hour 5 minutes'),
  '{"requests_this_minute":0,"requests_this_hour":1,"requests_this_day":4,
    "tokens_this_minute":0,"tokens_this_hour":0,"tokens_this_day":0}'::jsonb,
  'refused requests were never counted: 4 admitted today');
select is(tests.begin(:'key', p_now => :'t0'::timestamptz + interval '1 day') ->> 'ok', 'true',
          'the next day admits again');
select is(
  (select row(day_start - :'t0'::timestamptz, minute_requests, hour_requests, day_requests)::text
     from gateway.rate_counters where subject_kind = 'account' and subject_id = :uid),
  row(interval '13 hours 59 minutes 55 seconds', 1, 1, 1)::text,
  'the day rolled over in place: every window counts the one request of the new day');

-- When several windows are exhausted, the retry is the latest reset.
select tests.new_account(1000000) as m \gset
select gateway.set_rate_limits((:'m'::jsonb ->> 'user_id')::bigint,
                               '{"requests_per_minute":1,"requests_per_day":1}');
select tests.begin(:'m'::jsonb ->> 'api_key', p_now => :'t0');
select tests.begin(:'m'::jsonb ->> 'api_key', p_now => :'t0') as r \gset
select is(:'r'::jsonb ->> 'window', 'requests_per_day',
          'with minute and day both exhausted the refusal names the day (the later reset)');

-- Tokens: counted at settle, checked at admission ----------------------------------------------------
select tests.new_account(1000000) as t \gset
select :'t'::jsonb ->> 'api_key' as tkey, (:'t'::jsonb ->> 'user_id')::bigint as tid \gset
select gateway.set_rate_limits(:tid, '{"tokens_per_minute":100,"tokens_per_hour":150}');
select tests.begin(:'tkey', 500, p_now => :'t0') as b1 \gset
select tests.begin(:'tkey', 500, p_now => :'t0') as b2 \gset
select is((:'b2'::jsonb -> 'limits' -> 'tokens' ->> 'remaining')::bigint, 100::bigint,
          'open requests do not use tokens yet: 100 remaining');
select tests.settle(:'b1', 40, 60, :'t0'::timestamptz + interval '10 seconds');
select is(
  (gateway.window_usage('account', :tid, :'t0'::timestamptz + interval '10 seconds') ->> 'tokens_this_minute')::bigint,
  100::bigint, 'settle adds prompt + completion tokens to the windows');
select tests.begin(:'tkey', 10, p_now => :'t0'::timestamptz + interval '20 seconds') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window')::text,
          row('rate_limited', 'tokens_per_minute')::text,
          'a full token window refuses the next request');
select tests.settle(:'b2', 30, 30, :'t0'::timestamptz + interval '30 seconds') ->> 'settled' as s2 \gset
select is(:'s2'::text, 'true', 'a request admitted before the window filled still settles (and is charged)');
select tests.begin(:'tkey', 10, p_now => :'t0'::timestamptz + interval '65 seconds') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window')::text,
          row('rate_limited', 'tokens_per_hour')::text,
          'next minute: the minute window is fresh but 160 tokens exceed the hour''s 150');
select tests.begin(:'tkey', 10, p_now => :'t0'::timestamptz + interval '1 hour') as b3 \gset
select is(:'b3'::jsonb ->> 'ok', 'true', 'next hour: admitted');
select is(
  (select row(minute_tokens, hour_tokens, day_tokens)::text
     from gateway.rate_counters where subject_kind = 'account' and subject_id = :tid),
  row(0, 0, 160)::text, 'the new hour starts its minute and hour token windows at 0; the day keeps 160');
select tests.settle(:'b3', 2, 3, :'t0'::timestamptz + interval '1 hour 2 minutes');
select is(
  gateway.window_usage('account', :tid, :'t0'::timestamptz + interval '1 hour 2 minutes'),
  '{"requests_this_minute":0,"requests_this_hour":1,"requests_this_day":3,
    "tokens_this_minute":5,"tokens_this_hour":5,"tokens_this_day":165}'::jsonb,
  'a settle in a later minute rolls the minute over and adds its tokens to hour and day');

-- Key windows are counted only for keys with their own limits --------------------------------------
select is(
  (select count(*) from gateway.rate_counters where subject_kind = 'key' and subject_id = (:'a'::jsonb ->> 'key_id')::bigint),
  0::bigint, 'a key without key limits has no key counters (one row per request, not two)');

-- A request refused by its key's limits is not counted in the account's windows either.
select tests.new_account(1000000) as kl \gset
select (:'kl'::jsonb ->> 'user_id')::bigint as klid \gset
select gateway.set_key_rate_limits((:'kl'::jsonb ->> 'key_id')::bigint, '{"requests_per_minute":1}');
select tests.begin(:'kl'::jsonb ->> 'api_key', p_now => :'t0');
select tests.begin(:'kl'::jsonb ->> 'api_key', p_now => :'t0') as r \gset
select is(row(:'r'::jsonb ->> 'scope', :'r'::jsonb ->> 'window',
              gateway.window_usage('account', :klid, :'t0') ->> 'requests_this_minute')::text,
          row('key', 'requests_per_minute', '1')::text,
          'refused by the key''s window: the account still counts only the admitted request');

-- A zero limit refuses even an empty window, and counts nothing.
select tests.new_account(1000000) as z \gset
select gateway.set_rate_limits((:'z'::jsonb ->> 'user_id')::bigint, '{"tokens_per_day":0}');
select tests.begin(:'z'::jsonb ->> 'api_key', p_now => :'t0') as r \gset
select is(row(:'r'::jsonb ->> 'reason', :'r'::jsonb ->> 'window',
              (select count(*) from gateway.rate_counters
                where subject_kind = 'account' and subject_id = (:'z'::jsonb ->> 'user_id')::bigint))::text,
          row('rate_limited', 'tokens_per_day', 0)::text,
          'a zero limit refuses the first request and writes no counter');

-- Admin overrides and defaults ------------------------------------------------------------------------
select is(gateway.set_rate_limits(:uid, '{"requests_per_minute":null}') ->> 'requests_per_minute', '60',
          'null clears an override: back to the system default');
select is(tests.error_of(format($$select gateway.set_rate_limits(%s, '{"requests_per_fortnight":1}')$$, :uid)),
          '22023:invalid_request', 'unknown limit names are refused');
select is(tests.error_of(format($$select gateway.set_rate_limits(%s, '{"tokens_per_day":-1}')$$, :uid)),
          '22023:invalid_request', 'negative limits are refused');
select gateway.set_setting('requests_per_minute', '7');
select is(gateway.user_limits(tests.h(:'key'), null, null, :'t0') -> 'rate_limits' ->> 'requests_per_minute', '7',
          'defaults come from system_settings');

-- Purge ----------------------------------------------------------------------------------------------
select gateway.purge_rate_windows(:'t0'::timestamptz + interval '1 day 10 minutes') as purged \gset
select cmp_ok(:purged, '>', 0, 'purge deletes ended windows');
select is(
  (select count(*) from gateway.rate_counters
    where day_start + interval '1 day' <= :'t0'::timestamptz + interval '1 day 10 minutes'),
  0::bigint, 'no counter whose day has ended is left');
select is(
  (select count(*) from gateway.rate_counters
    where subject_kind = 'account' and subject_id = :uid
      and day_start = date_trunc('day', :'t0'::timestamptz + interval '1 day', 'UTC')),
  1::bigint, 'the current day''s window is kept until the day ends');

select * from finish();
rollback;
