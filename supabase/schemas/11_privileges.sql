-- The last word on privileges: nothing in the schema is executable or readable by public, anon or
-- authenticated, whatever a file above did. The grants to gateway_api and service_role are written
-- next to each object and stay.

revoke execute on all functions in schema gateway from public, anon, authenticated;
revoke all on all tables in schema gateway from public, anon, authenticated;
revoke all on all sequences in schema gateway from public, anon, authenticated;
