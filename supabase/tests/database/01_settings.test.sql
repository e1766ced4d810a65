-- Settings: one typed row, changed by name through set_setting (held to each column's checks) and
-- never deleted; health; the shared models-catalog cache.
begin;
\ir _helpers.sql
select plan(7);

-- The settings row ------------------------------------------------------------------------------------
select is(tests.error_of($$select gateway.set_setting('no_such_setting', '1')$$), '22023:invalid_request',
          'set_setting refuses unknown settings');
select is(tests.error_of($$select gateway.set_setting('hold_timeout_seconds', '5')$$), '23514:',
          'set_setting keeps the column''s checks');
select is(tests.error_of($$select gateway.set_setting('hold_lease_seconds', '3')$$), '23514:',
          'a lease shorter than 4 s is refused: workers renew every 2 s');
select is(tests.error_of('delete from gateway.system_settings'), '42501:invalid_request',
          'the settings row cannot be deleted');

-- Health and models cache -------------------------------------------------------------------------------
select is(gateway.health() ->> 'database', 'ok', 'health says the database is ok');
select is(gateway.store_models_cache('{"data":[{"id":"m1"}]}', null, now()) -> 'data',
          '{"data":[{"id":"m1"}]}'::jsonb, 'store_models_cache keeps the catalog');
select is(gateway.store_models_cache(null, 'upstream 503', now()) - array['fetched_at', 'ttl_seconds', 'last_error_at'],
          '{"data":{"data":[{"id":"m1"}]},"last_error":"upstream 503"}'::jsonb,
          'a failed refresh is recorded and the last good copy kept');

select * from finish();
rollback;
