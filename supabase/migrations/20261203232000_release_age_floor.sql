-- release_reserved_admissions takes an age below 5 s as 5 (it took 1): an operator calling it with
-- 1 released reservations in use before their note arrived, and their requests escaped the key's
-- cap and the windows (found by an attack on batched reservations, 2026-12-03).

-- The server's bound on reserved admissions a worker never used nor gave back (it vanished): those
-- reserved more than p_older_than_seconds ago are cancelled as gateway.cancel_admissions does
-- (uncounted, unheld, no usage record). A reservation in use is noted within about a second
-- (gateway.note_holds: no longer reserved), so never matches, unless its worker could not reach
-- the database meanwhile: a copy of each is kept (released_reservations), by which its settle, if
-- one comes, still charges it. An age below 5 s is taken as 5: a younger reservation may be in use
-- and not noted yet, and releasing it uncounts a request that runs (its late settle charges it but
-- does not count it again: a way past a key's cap and the windows).
create or replace function gateway.release_reserved_admissions(
  p_older_than_seconds integer default 5,
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_count integer;
begin
  delete from gateway.released_reservations r where r.released_at < p_now - interval '1 day';
  v_ids := array(
    select h.id from gateway.holds h
     where h.reserved
       and h.created_at <= p_now - make_interval(secs => greatest(p_older_than_seconds, 5)));
  if cardinality(v_ids) = 0 then
    return 0;
  end if;
  insert into gateway.released_reservations
  select h.*, p_now from gateway.holds h where h.id = any(v_ids)
  on conflict (id) do nothing;
  v_count := gateway.cancel_admissions(v_ids);
  -- Noted or closed meanwhile (cancel_admissions skips those): not released.
  delete from gateway.released_reservations r
   where r.id = any(v_ids) and exists (select from gateway.holds h where h.id = r.id);
  return v_count;
end
$$;
revoke execute on function gateway.release_reserved_admissions(integer, timestamptz) from public;
grant execute on function gateway.release_reserved_admissions(integer, timestamptz) to service_role;
