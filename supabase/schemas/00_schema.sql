-- The private schema `gateway`, the role the edge function assumes, pg_cron, and the privilege
-- baseline the other files build on. Nothing in `gateway` is reachable through the Data API: a
-- function is opened to gateway_api (the edge function) or service_role (operators) next to it.

create schema gateway;
comment on schema gateway is
  'Credit-metered gateway core: accounts, hashed keys, credit ledger and holds, rate windows. Private: '
  'reach it only through the functions granted to gateway_api (edge function) or as an operator.';
revoke all on schema gateway from public;
revoke all on schema gateway from anon, authenticated;

-- No default grants on tables and sequences. Functions revoke PUBLIC one by one: a per-schema
-- default can only add to the global ones (docs/SQL-NOTES.md, "Privileges").
alter default privileges in schema gateway revoke all on tables from public;
alter default privileges in schema gateway revoke all on sequences from public;

-- The edge function's role: executes the API functions, owns and reads nothing. It logs in (through
-- the transaction pooler, which forwards no `-c role=…`: least privilege must not depend on it); no
-- password here, the operator sets one (README, "Deploying to hosted Supabase"). Roles are per
-- cluster: the guard, and LOGIN made sure of on a cluster whose role predates it.
do $$
begin
  if not exists (select from pg_roles where rolname = 'gateway_api') then
    create role gateway_api login noinherit;
  end if;
end
$$;
alter role gateway_api login;
comment on role gateway_api is
  'Edge function role (LOGIN through the transaction pooler, password set by the operator): may '
  'execute the gateway API functions, nothing else.';
grant gateway_api to postgres;
grant usage on schema gateway to gateway_api;
grant usage on schema gateway to service_role;

-- The housekeeping jobs (10_housekeeping.sql). Hosted Supabase installs pg_cron into pg_catalog.
create extension if not exists pg_cron with schema pg_catalog;

-- Append-only tables (ledger, key audit log) refuse UPDATE, DELETE and TRUNCATE for every role, the
-- owner included.
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
