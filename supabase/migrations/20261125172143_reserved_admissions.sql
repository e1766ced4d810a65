-- Reserved admissions: for a hot context (key, client IP, referrer, model, max_tokens) the function
-- admits several requests ahead in one call, keeps them for a moment and hands them to requests as
-- they arrive; those not used in time are given back. gateway.reserve_admissions admits them,
-- gateway.cancel_admissions gives them back. This file owns both, and the holds' reserved flag.
--
-- A reserved admission is a real one: made by gateway.begin_request, counted in the rate windows and
-- the key's request counter, with its own hold. So every rule stays in begin_request alone, and
-- what a reserved admission does not see is only what changes while it waits: a revocation, a
-- limit or a balance change reaches it when it is used or given back, at most the function's
-- reservation lifetime later. Used, it is settled or voided like any other hold. Given back, it is
-- undone as if never made: no usage record and no ledger row (no request was made; the money never
-- moved, only the hold), the hold's credits available again, and the request taken back out of the
-- key's counter and out of the windows it was counted in, while they are still the current ones.

alter table gateway.holds add column reserved boolean not null default false;
comment on column gateway.holds.reserved is
  'Admitted ahead of its request by gateway.reserve_admissions. Only such holds can be cancelled '
  '(gateway.cancel_admissions); settle, void and the sweeper close them like any other.';

-- Admits up to p_count requests of one context, each by gateway.begin_request with the same p_now
-- (so each sees what the ones before it counted and held), and marks their holds reserved. Stops at
-- the first refusal, which ends the answer so that the caller knows why there are not more.
create or replace function gateway.reserve_admissions(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_model text,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_count integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_answer jsonb;
  v_answers jsonb[] := array[]::jsonb[];
  v_hold_ids bigint[] := array[]::bigint[];
begin
  if p_count is null or p_count < 1 or p_count > 64 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'count must be from 1 to 64';
  end if;

  for i in 1 .. p_count loop
    v_answer := gateway.begin_request(
      p_key_hash, p_client_ip, p_referrer, p_model, p_max_tokens, p_prompt_tokens, p_now);
    v_answers := array_append(v_answers, v_answer);
    exit when not (v_answer ->> 'ok')::boolean;
    v_hold_ids := array_append(v_hold_ids, (v_answer ->> 'hold_id')::bigint);
  end loop;

  -- One statement for all: the holds are this transaction's own rows, unseen by anyone until it
  -- commits, so no one can settle or cancel one before it is marked.
  if cardinality(v_hold_ids) > 0 then
    update gateway.holds h set reserved = true where h.id = any(v_hold_ids);
  end if;
  return to_jsonb(v_answers);
end
$$;
revoke execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz
) from public;
grant execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz
) to gateway_api;

-- Gives back reserved admissions never used: of p_hold_ids, the holds that are still open and
-- reserved are deleted (any other id, settled, voided, not reserved, unknown or null, is skipped);
-- returns how many. For each: the account's held credits drop by its amount, the key's
-- requests_used by one (never below zero; last_used_at stays), and each rate window it was counted
-- in by one, if that window is still the row's current one: begin_request counted it at
-- p_now = created_at, so the minute (hour, day) window is the one starting at
-- date_trunc('minute', created_at, 'UTC'). A window that has rolled over since is left alone (the
-- request is out of it already), and so is a count begin_request put in a later window than its own
-- (the rollover rule of 20261125144653): the conservative side. The account's row always, the key's
-- when the hold counted key windows. Nothing here depends on the time of the cancel, so unlike the
-- other calls of the request path it takes no p_now: the windows are those of the holds' created_at.
--
-- Lock order, the same as every writer of an account's rows (20261125144653, 20261125152312):
-- account by account in ascending account_id, as begin_requests and settle_requests go; within an
-- account, its holds first (as settle_request and void_request delete the hold before anything
-- else), then its rate counter row, then its keys' counter rows, then its balance row, then its keys'
-- request counters, as begin_request locks them. A transaction taking a subset of these rows in this
-- order cannot deadlock with another doing the same. In any other order it could: with the balance
-- before the counters, a cancel would hold A's balance and wait for A's counter while an admission
-- of A holds the counter and waits for the balance; across accounts, with all the counters first,
-- a cancel of A and B would hold B's counter and wait for A's balance, which a settle_requests batch
-- holds (a zero-token settle of A locks only A's balance) while it waits for B's counter.
--
-- Within an account one UPDATE per table: its rate counter rows are locked in order by a
-- SELECT … ORDER BY … FOR UPDATE first when there are key rows (one UPDATE locks the rows it joins
-- in no set order); the key_counters rows of the account are otherwise only written by begin_request
-- under the account's balance row, which this holds by then, so their order among themselves does
-- not matter. Only a caller that cancels a hold it also settles in a settle_requests batch could
-- still deadlock (the batch holding the account's counter row and waiting for the hold, the cancel
-- holding the hold and waiting for the counter row): the function hands each reserved hold to one
-- request or gives it back, never both. Seq and bitmap scans off as in settle_request: holds is a
-- queue whose statistics mislead the planner.
create or replace function gateway.cancel_admissions(p_hold_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
  v_account bigint;
  v_holds gateway.holds[];
  v_count integer := 0;
begin
  for v_account in
    select distinct h.account_id
      from gateway.holds h
     where h.id = any(p_hold_ids) and h.reserved
     order by h.account_id
  loop
    -- The exactly-once gate, as in settle_request: only one caller can delete a hold. One closed
    -- meanwhile (settled, voided, expired, cancelled) is no longer found.
    with d as (
      delete from gateway.holds h
       where h.id = any(p_hold_ids) and h.reserved and h.account_id = v_account
      returning h as hold
    )
    select array_agg(d.hold) into v_holds from d;
    continue when v_holds is null;
    v_count := v_count + cardinality(v_holds);

    if exists (select from unnest(v_holds) h where h.count_key_windows) then
      perform
        from gateway.rate_counters c
        join (select 'account'::gateway.rate_subject as kind, v_account as sid
              union
              select 'key', h.key_id from unnest(v_holds) h where h.count_key_windows) s
          on c.subject_kind = s.kind and c.subject_id = s.sid
       order by c.subject_kind, c.subject_id
         for update of c;
    end if;
    -- Compared with the row's window starts as updated (a concurrent admission may have rolled a
    -- window over before this locked the row), not as read before.
    update gateway.rate_counters c set
      minute_requests = greatest(c.minute_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('minute', t.at, 'UTC') = c.minute_start), 0),
      hour_requests = greatest(c.hour_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('hour', t.at, 'UTC') = c.hour_start), 0),
      day_requests = greatest(c.day_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('day', t.at, 'UTC') = c.day_start), 0)
      from (select 'account'::gateway.rate_subject as kind, v_account as sid,
                   array_agg(h.created_at) as created
              from unnest(v_holds) h
            union all
            select 'key', h.key_id, array_agg(h.created_at)
              from unnest(v_holds) h
             where h.count_key_windows
             group by h.key_id) s
     where c.subject_kind = s.kind and c.subject_id = s.sid;

    update gateway.credit_balances b
       set held = b.held - (select sum(h.amount) from unnest(v_holds) h)
     where b.account_id = v_account;

    update gateway.key_counters c
       set requests_used = greatest(c.requests_used - s.n, 0)
      from (select h.key_id, count(*) as n from unnest(v_holds) h group by h.key_id) s
     where c.key_id = s.key_id;
  end loop;
  return v_count;
end
$$;
revoke execute on function gateway.cancel_admissions(bigint[]) from public;
grant execute on function gateway.cancel_admissions(bigint[]) to gateway_api;
