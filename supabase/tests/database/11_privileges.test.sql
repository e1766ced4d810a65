-- Who can touch what: RLS everywhere, nothing for anon/authenticated, gateway_api executes exactly the
-- contract's functions and reads no table, operators keep their SQL, append-only tables stay so.
begin;
\ir _helpers.sql
select plan(25);

select is(
  (select count(*) from pg_class c
    where c.relnamespace = 'gateway'::regnamespace and c.relkind = 'r' and not c.relrowsecurity),
  0::bigint,
  'every table in gateway has row level security enabled'
);

select is(
  (select count(*) from pg_class c
    where c.relnamespace = 'gateway'::regnamespace and c.relkind in ('r', 'v')
      and (has_table_privilege('anon', c.oid, 'select, insert, update, delete')
           or has_table_privilege('authenticated', c.oid, 'select, insert, update, delete'))),
  0::bigint,
  'anon and authenticated have no privilege on any table or view'
);

select is(
  (select count(*) from pg_class c
    where c.relnamespace = 'gateway'::regnamespace and c.relkind in ('r', 'v')
      and has_table_privilege('gateway_api', c.oid, 'select, insert, update, delete')),
  0::bigint,
  'gateway_api has no privilege on any table or view'
);

select is(
  (select count(*) from pg_proc p
    where p.pronamespace = 'gateway'::regnamespace
      and (has_function_privilege('anon', p.oid, 'execute')
           or has_function_privilege('authenticated', p.oid, 'execute'))),
  0::bigint,
  'anon and authenticated can execute no gateway function'
);

select ok(not has_schema_privilege('anon', 'gateway', 'usage')
          and not has_schema_privilege('authenticated', 'gateway', 'usage'),
          'anon and authenticated cannot even use the schema');

select set_eq(
  $$select p.proname::text from pg_proc p
     where p.pronamespace = 'gateway'::regnamespace
       and has_function_privilege('gateway_api', p.oid, 'execute')$$,
  array['health', 'register', 'user_balance', 'user_monitor', 'user_limits', 'user_profile',
        'update_profile', 'delete_account', 'create_key', 'list_keys', 'update_key', 'rotate_key',
        'delete_key', 'key_usage', 'admin_add_credits', 'admin_balances', 'admin_monitor',
        'admin_set_limits', 'admin_authorize', 'models_cache', 'store_models_cache',
        'begin_request', 'begin_requests', 'settle_request', 'settle_requests', 'void_request',
        'reserve_admissions', 'reserve_admissions_batch', 'cancel_admissions', 'idempotency_begin', 'idempotency_complete',
        'note_holds', 'reconcile_candidates'],
  'gateway_api executes exactly the API functions of docs/SQL-API.md'
);

select is(
  (select count(*) from pg_proc p
    where p.pronamespace = 'gateway'::regnamespace and p.prokind = 'f'
      and not (p.prosecdef and p.proconfig @> array['search_path=""'])),
  0::bigint,
  'every gateway function is security definer with an empty search_path'
);

select ok(
  not has_function_privilege('gateway_api', 'gateway.create_admin_key(text, text)', 'execute')
  and not has_function_privilege('gateway_api', 'gateway.add_credits(bigint, bigint, text)', 'execute')
  and not has_function_privilege('gateway_api', 'gateway.set_setting(text, text)', 'execute')
  and not has_function_privilege('gateway_api', 'gateway.grant_credits(bigint, bigint, text, text, timestamptz)', 'execute'),
  'gateway_api cannot run operator or internal functions'
);

select ok(
  has_function_privilege('service_role', 'gateway.create_admin_key(text, text)', 'execute')
  and has_function_privilege('service_role', 'gateway.add_credits(bigint, bigint, text)', 'execute')
  and has_table_privilege('service_role', 'gateway.monitor', 'select')
  and has_table_privilege('service_role', 'gateway.balances', 'select'),
  'service_role can run the operator cookbook'
);

select ok(pg_has_role('postgres', 'gateway_api', 'member'),
          'postgres may assume gateway_api (options=-c role=gateway_api)');
select ok((select rolcanlogin from pg_roles where rolname = 'gateway_api'),
          'gateway_api logs in (the function connects as it, through the pooler)');
select ok(
  (select not (rolsuper or rolcreaterole or rolcreatedb or rolreplication or rolbypassrls)
     from pg_roles where rolname = 'gateway_api')
  and not exists (select from pg_auth_members m where m.member = 'gateway_api'::regrole)
  and (select nspowner from pg_namespace where nspname = 'gateway') <> 'gateway_api'::regrole,
  'gateway_api has no attribute, no membership and owns nothing it could use past its grants'
);

-- The same, by trying.
select tests.new_account() as acct \gset
select format('select gateway.user_balance(%L, null, null)', tests.h(:'acct'::jsonb ->> 'api_key')) as balance_call \gset
set local role anon;
select is(tests.error_of('select * from gateway.accounts'), '42501:', 'anon cannot read accounts');
select is(tests.error_of('select gateway.health()'), '42501:', 'anon cannot call gateway.health()');
select is(
  tests.error_of(format('select gateway.begin_request(%L::bytea, null, null, %L::jsonb)',
                        '\x00', '{"models":["m"],"prompt_bound":1}')),
  '42501:', 'anon cannot call begin_request');
reset role;
set local role authenticated;
select is(tests.error_of('select * from gateway.ledger'), '42501:',
          'authenticated cannot read the ledger');
select is(tests.error_of('select * from gateway.balances'), '42501:',
          'authenticated cannot read the balances view');
select is(tests.error_of($$select * from gateway.create_admin_key('x@example.com')$$), '42501:',
          'authenticated cannot create an admin key');
reset role;
set local role gateway_api;
select is(tests.error_of('select * from gateway.api_keys'), '42501:',
          'gateway_api cannot read api_keys directly');
select is(tests.error_of('update gateway.credit_balances set balance = 10^9'), '42501:',
          'gateway_api cannot write balances directly');
select is(tests.error_of(:'balance_call'), 'ok', 'gateway_api can call the API functions');
select is(tests.error_of($$select * from gateway.create_admin_key('x@example.com')$$), '42501:',
          'gateway_api cannot create an admin key');
reset role;

-- Append-only, even for the owner.
select is(tests.error_of('update gateway.ledger set amount = amount + 1'), '42501:append_only',
          'the ledger refuses updates');
select is(tests.error_of('delete from gateway.key_audit_log'), '42501:append_only',
          'the key audit log refuses deletes');
select is(tests.error_of('truncate gateway.ledger'), '42501:append_only',
          'the ledger refuses truncate');

select * from finish();
rollback;
