-- Test helpers, included by every NN_*.test.sql with `\ir _helpers.sql` right after `begin;`, so they
-- live in the test's transaction and vanish with its rollback (nothing is left in the database for
-- the linters or anyone else to see). Not a test file itself (pg_prove runs *.test.sql only).

set local client_min_messages = warning;
-- pgTAP lives in `extensions` (as on hosted Supabase, where postgres has it on its search_path).
set local search_path = public, extensions;
create schema tests;
-- Role-switching tests call tests.error_of as anon/authenticated/gateway_api.
grant usage on schema tests to public;
grant usage on schema extensions to gateway_api; -- for pgTAP itself, in this transaction only

-- A fresh account via the real registration path; returns register's JSON (incl. the plaintext key).
create function tests.new_account(p_credits bigint default 1000, p_environment text default 'live')
returns jsonb
language plpgsql
as $$
declare
  v jsonb;
  v_delta bigint;
begin
  v := gateway.register(
    'u' || replace(gen_random_uuid()::text, '-', '') || '@example.com', null, p_environment, null);
  v_delta := p_credits - (v ->> 'credits')::bigint;
  if v_delta > 0 then
    perform gateway.grant_credits((v ->> 'user_id')::bigint, v_delta, 'test', 'tests');
  elsif v_delta < 0 then
    perform gateway.grant_credits((v ->> 'user_id')::bigint, v_delta, 'test', 'tests');
  end if;
  return v || jsonb_build_object('credits', p_credits);
end
$$;

-- The hash the edge function would pass for a plaintext key.
create function tests.h(p_key text) returns bytea
language sql immutable as $$ select gateway.hash_key(p_key) $$;

-- The tests price against an empty catalog unless they load one (in their transaction): a model
-- outside a loaded catalog is refused, and the stack's catalog is whatever the last refresh stored.
delete from gateway.model_catalog;

-- begin_request with test defaults (model test/model, max_tokens 10, prompt bound 0).
create function tests.begin(
  p_key text,
  p_max_tokens integer default 10,
  p_prompt_tokens integer default 0,
  p_now timestamptz default now(),
  p_ip inet default null,
  p_referrer text default null,
  p_model text default 'test/model'
)
returns jsonb
language sql
as $$
  select gateway.begin_request(
    gateway.hash_key(p_key), p_ip, p_referrer,
    jsonb_build_object('models', jsonb_build_array(p_model), 'prompt_bound', p_prompt_tokens,
                       'max_tokens', p_max_tokens),
    p_now);
$$;

create function tests.settle(
  p_begin jsonb,
  p_prompt integer,
  p_completion integer,
  p_now timestamptz default now(),
  p_model text default null
)
returns jsonb
language sql
as $$
  select gateway.settle_request(
    (p_begin ->> 'hold_id')::bigint,
    jsonb_build_object('model', p_model, 'prompt_tokens', p_prompt, 'completion_tokens', p_completion,
                       'cost', '0.0001', 'status', 'success', 'latency_ms', 100,
                       'generation_id', 'gen-test', 'settled_by', 'usage'),
    p_now);
$$;

-- 'SQLSTATE:hint' of the error a statement raises, or 'ok'.
create function tests.error_of(p_sql text) returns text
language plpgsql
as $$
declare
  v_state text;
  v_hint text;
begin
  execute p_sql;
  return 'ok';
exception when others then
  get stacked diagnostics v_state = returned_sqlstate, v_hint = pg_exception_hint;
  return v_state || ':' || coalesce(v_hint, '');
end
$$;

-- Balance and held of an account.
create function tests.balance(p_account jsonb) returns bigint
language sql as $$
  select balance from gateway.credit_balances where account_id = (p_account ->> 'user_id')::bigint
$$;
create function tests.held(p_account jsonb) returns bigint
language sql as $$
  select held from gateway.credit_balances where account_id = (p_account ->> 'user_id')::bigint
$$;

-- Account request counters in the windows containing p_now.
create function tests.account_requests(p_account jsonb, p_now timestamptz default now())
returns jsonb
language sql as $$
  select gateway.window_usage('account', (p_account ->> 'user_id')::bigint, p_now)
$$;

-- Literal quoting for dynamic SQL in error_of.
create function tests.q(p_value text) returns text
language sql immutable as $$ select quote_literal(p_value) $$;

-- No accounts' ledger differs from its balance.
create function tests.ledger_ok() returns boolean
language sql as $$ select not exists (select from gateway.ledger_discrepancies()) $$;
