-- gateway_setup: owns the private `gateway` schema, the `gateway_api` role the edge function assumes,
-- the privilege baseline every later migration builds on, and the pg_cron extension.
--
-- Nothing in `gateway` is reachable through PostgREST (the schema is not exposed) and nothing is
-- granted to public/anon/authenticated. Each API function is opened to `gateway_api` by an explicit
-- grant written next to it; operator functions are opened to `service_role` the same way.

create schema if not exists gateway;
comment on schema gateway is
  'Credit-metered gateway core: accounts, hashed keys, credit ledger and holds, rate windows. Private: '
  'reach it only through the functions granted to gateway_api (edge function) or as an operator.';

revoke all on schema gateway from public;
do $$
begin
  -- anon/authenticated exist on Supabase (and locally via supabase/local/bootstrap.sql).
  if exists (select from pg_roles where rolname = 'anon') then
    execute 'revoke all on schema gateway from anon, authenticated';
  end if;
end
$$;

-- Per-schema default privileges can only ADD to the global defaults (PostgreSQL docs, ALTER DEFAULT
-- PRIVILEGES), so `alter default privileges in schema gateway revoke execute on functions from
-- public` would be a no-op: every function therefore revokes PUBLIC explicitly, and the last
-- migration re-asserts it for the whole schema. Tables and sequences get no default grants here.
alter default privileges in schema gateway revoke all on tables from public;
alter default privileges in schema gateway revoke all on sequences from public;

-- The role the edge function assumes (`options=-c role=gateway_api`). NOLOGIN: it is only ever
-- reached through a login role that is a member (postgres). It owns nothing and has no table rights.
do $$
begin
  if not exists (select from pg_roles where rolname = 'gateway_api') then
    create role gateway_api nologin noinherit;
  end if;
end
$$;
comment on role gateway_api is 'Edge function role: may execute the gateway API functions, nothing else.';
grant gateway_api to postgres;
grant usage on schema gateway to gateway_api;

do $$
begin
  if exists (select from pg_roles where rolname = 'service_role') then
    execute 'grant usage on schema gateway to service_role';
  end if;
end
$$;

-- Hosted Supabase installs pg_cron into pg_catalog (its docs: `create extension pg_cron with schema
-- pg_catalog`); the jobs themselves are scheduled in the gateway_cron migration.
create extension if not exists pg_cron with schema pg_catalog;

-- Shared trigger function: append-only tables (ledger, key audit log) refuse UPDATE/DELETE/TRUNCATE
-- for every role, the owner included.
create or replace function gateway.forbid_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  raise exception using
    errcode = '42501',
    message = format('%s is append-only: %s is not allowed', tg_table_name, tg_op),
    hint = 'append_only';
end
$$;
revoke execute on function gateway.forbid_change() from public;
