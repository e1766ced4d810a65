-- release_reserved_admissions took the holds it releases before their accounts' counter rows
-- (cancel_admissions' order: the function never settles a hold it gives back). The server releases
-- holds in use: a settle_requests batch that had settled another hold of the account held its
-- counter row and waited for the hold, the release held the hold and waited for the counter row
-- (40P01). It now goes account by account: the counter row, then only the holds nobody else has
-- locked.

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
  v_account bigint;
  v_mine bigint[];
  v_count integer := 0;
begin
  delete from gateway.released_reservations r where r.released_at < p_now - interval '1 day';
  v_ids := array(
    select h.id from gateway.holds h
     where h.reserved
       and h.created_at <= p_now - make_interval(secs => greatest(p_older_than_seconds, 5)));
  if cardinality(v_ids) = 0 then
    return 0;
  end if;
  -- Account by account in id order; within one, its counter row first, then only its holds nobody
  -- else has locked. A hold being settled is that settle's: taken first (cancel_admissions' order),
  -- the release held it and waited for the counter row a settle_requests batch held since an
  -- earlier settle of the account, while the batch waited for the hold (40P01).
  for v_account in
    select distinct h.account_id from gateway.holds h where h.id = any(v_ids) order by 1
  loop
    perform from gateway.rate_counters c
      where c.subject_kind = 'account' and c.subject_id = v_account
        for update;
    v_mine := array(
      select h.id from gateway.holds h
       where h.id = any(v_ids) and h.account_id = v_account and h.reserved
       order by h.id
         for update skip locked);
    continue when cardinality(v_mine) = 0;
    insert into gateway.released_reservations
    select h.*, p_now from gateway.holds h where h.id = any(v_mine)
    on conflict (id) do nothing;
    v_count := v_count + gateway.cancel_admissions(v_mine);
  end loop;
  -- Noted or closed meanwhile (cancel_admissions skips those): not released.
  delete from gateway.released_reservations r
   where r.id = any(v_ids) and exists (select from gateway.holds h where h.id = r.id);
  return v_count;
end
$$;
revoke execute on function gateway.release_reserved_admissions(integer, timestamptz) from public;
grant execute on function gateway.release_reserved_admissions(integer, timestamptz) to service_role;
