-- gateway_api_login: the edge function connects AS gateway_api, so that least privilege survives a
-- transaction pooler. Supavisor (and PgBouncer) forward no `-c role=…` startup option: a function
-- connecting as postgres with that option silently ran every query as postgres through the pooler.
--
-- LOGIN, but no password here: a role without one cannot authenticate (scram everywhere on hosted).
-- The operator sets it once (README, "Deploying to hosted Supabase"):
--   alter role gateway_api with password '<generated>';
-- and gives the function GATEWAY_DB_URL = postgresql://gateway_api.<project-ref>:<password>@
-- <pooler host>:6543/postgres. The function refuses to serve as a superuser or the schema's owner.
alter role gateway_api login;
comment on role gateway_api is
  'Edge function role (LOGIN through the transaction pooler, password set by the operator): may '
  'execute the gateway API functions, nothing else.';
