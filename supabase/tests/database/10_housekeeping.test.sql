-- pg_cron: installed, the housekeeping jobs scheduled (idempotently), stale holds voided and recorded.
begin;
\ir _helpers.sql
select plan(18);

select has_extension('pg_cron', 'pg_cron is installed');
select is((select extnamespace::regnamespace::text from pg_extension where extname = 'pg_cron'), 'pg_catalog',
          'in pg_catalog, as on hosted Supabase');
select set_eq(
  $$select jobname || ' ' || schedule || ' ' || command from cron.job where jobname like 'gateway-%'$$,
  array['gateway-expire-stale-holds * * * * * select gateway.expire_stale_holds()',
        'gateway-purge-rate-windows */5 * * * * select gateway.purge_rate_windows()',
        'gateway-purge-idempotency-keys 17 * * * * select gateway.purge_idempotency_keys()',
        'gateway-release-reserved-admissions '
          || case when (select string_to_array(split_part(extversion, '-', 1), '.')::integer[]
                          from pg_extension where extname = 'pg_cron') >= array[1, 5]
                  then '5 seconds' else '* * * * *' end
          || ' select gateway.release_reserved_admissions()'],
  'the four housekeeping jobs are scheduled (reserved admissions every 5 s on pg_cron 1.5+)');

select jobid as old_jobid from cron.job where jobname = 'gateway-expire-stale-holds' \gset
select cron.schedule('gateway-expire-stale-holds', '* * * * *', $$select gateway.expire_stale_holds()$$)
  as new_jobid \gset
select is(:new_jobid, :old_jobid, 'scheduling a named job again replaces it (same job id)');
select is((select count(*) from cron.job where jobname = 'gateway-expire-stale-holds'), 1::bigint,
          'and does not duplicate it');
select cron.schedule('gateway-test-job', '0 3 * * *', 'select 1') as test_jobid \gset
select ok(exists (select from cron.job where jobid = :test_jobid), 'pg_cron can schedule a new job');
select ok(cron.unschedule('gateway-test-job'), 'and unschedule it');

-- The sweeper ----------------------------------------------------------------------------------------
select tests.new_account(1000) as a \gset
select tests.begin(:'a'::jsonb ->> 'api_key', 100, 0, now() - interval '1 hour') as stale \gset
select tests.begin(:'a'::jsonb ->> 'api_key', 200, 0, now() - interval '3 seconds') as fresh \gset
select is(tests.held(:'a'), 300::bigint, 'two holds are open');
select cmp_ok(gateway.expire_stale_holds(now()), '>=', 1, 'the sweeper expires stale holds');
select is(
  (select row(status, settled_by, credits_charged, credits_held)::text from gateway.usage_records
    where hold_id = (:'stale'::jsonb ->> 'hold_id')::bigint),
  row('expired', 'sweeper', 0::bigint, 100::bigint)::text,
  'an expired hold is recorded as such (never silently), without charge');
select is(tests.held(:'a'), 200::bigint, 'its credits are released');
select ok(exists (select from gateway.holds where id = (:'fresh'::jsonb ->> 'hold_id')::bigint),
          'a hold whose lease (hold_lease_seconds) has not ended stays open');
select is(tests.balance(:'a'), 1000::bigint, 'expiry charges nothing');
select is(tests.settle(:'stale', 10, 10) - 'upstream_usd' - 'balance_after' - 'hold_id',
          '{"settled":true,"late":true,"credits_charged":20,"held_credits":100,"overrun":false,
            "overrun_credits":0}'::jsonb,
          'a settle of an expired hold still posts its charge, and says it came late');
select is(tests.settle(:'stale', 10, 10) ->> 'reason', 'already_settled',
          'a second late settle changes nothing');
select gateway.expire_stale_holds(now()) as again \gset
select is(
  (select count(*) from gateway.usage_records where hold_id = (:'stale'::jsonb ->> 'hold_id')::bigint),
  1::bigint, 'running the sweeper again is harmless');
select gateway.set_setting('hold_lease_seconds', '30');
select tests.begin(:'a'::jsonb ->> 'api_key', 50, 0, now() - interval '20 seconds') as leased \gset
select gateway.expire_stale_holds(now());
select is(tests.held(:'a'), 250::bigint,
          'the lease is the hold_lease_seconds setting in force at admission');
select ok(tests.ledger_ok(), 'the ledger still equals the balance');

select * from finish();
rollback;
