-- expire_stale_holds takes the balance rows of the accounts it sweeps first, in account order, and
-- then only the lapsed holds nobody else has locked (skip locked): it never waits for a hold while
-- holding a balance row. It used to delete the holds and then update the balances in no particular
-- order, and closed lock cycles with settle_requests batches (which go account by account, hold
-- then balance): 40P01 under load.

create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_timeout integer;
  v_accounts bigint[];
  v_count integer;
begin
  select s.hold_timeout_seconds into v_timeout from gateway.system_settings s where s.id;
  -- Lock order. A settle closes a hold and then takes its account's balance row; batches go account
  -- by account in id order. The sweeper takes the balance rows first, in account order, and then
  -- only the holds nobody else has locked (a hold being settled is that settle's): it never waits
  -- for a hold while holding a balance, so it cannot close a cycle with a settle (it did, with
  -- settle_requests batches: 40P01 under load).
  v_accounts := array(
    select distinct h.account_id from gateway.holds h
     where h.expires_at <= p_now
       and (h.generation_id is null
            or gateway.hold_life_end(h.created_at, h.facts, v_timeout) <= p_now));
  if cardinality(v_accounts) = 0 then
    return 0;
  end if;
  perform from gateway.credit_balances b
    where b.account_id = any(v_accounts)
    order by b.account_id
      for update;
  with expired as (
    delete from gateway.holds h
     where h.id in (
       select x.id from gateway.holds x
        where x.account_id = any(v_accounts) and x.expires_at <= p_now
          and (x.generation_id is null
               or gateway.hold_life_end(x.created_at, x.facts, v_timeout) <= p_now)
          for update skip locked)
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, candidates,
      facts, generation_id
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           case when x.generation_id is null then 'hold timed out: released without charge'
                else 'hold timed out: released without charge until settled from /generation' end,
           x.created_at, p_now, x.pricing_mode, x.usd_per_credit, x.dearest, x.prices, x.facts,
           x.generation_id
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;

revoke execute on function gateway.expire_stale_holds(timestamptz) from public;
grant execute on function gateway.expire_stale_holds(timestamptz) to service_role;
