-- Issue 12.3: what the window-rollover `case` would cost as a function. One UPDATE of one
-- rate_counters row as admission writes it (9 SET expressions, 6 limit checks), inline or with the
-- rollover as a helper (security definer, search_path '' as every gateway function must be, so never
-- inlined), interleaved, each on fresh rows, all rolled back. Prints µs per UPDATE.
--   psql "$DB_URL" -f bench/probes/rollover-helper.sql
-- 2026-12-02 on the 2-core VM: inline 13.5–22.2 µs, plpgsql helper 35.7–45.2, SQL helper 128–157
-- (two runs): the helper would add ~23 µs to each counter UPDATE (two per admission with key
-- limits, one per settle), so the case stays written out where it is used.
begin;
create function gateway.rolled(p_start timestamptz, p_window timestamptz, p_value bigint)
returns bigint language sql immutable security definer set search_path = ''
as $$ select case when p_start >= p_window then p_value else 0 end $$;
create function gateway.rolled_pl(p_start timestamptz, p_window timestamptz, p_value bigint)
returns bigint language plpgsql immutable security definer set search_path = ''
as $$ begin return case when p_start >= p_window then p_value else 0 end; end $$;
insert into gateway.rate_counters select 'account', -i, date_trunc('minute', now()), 0, 0, date_trunc('hour', now()), 0, 0, date_trunc('day', now()), 0, 0 from generate_series(1, 30000) i;
do $$
declare t timestamptz; n int := 3000; vm timestamptz := date_trunc('minute', now()); vh timestamptz := date_trunc('hour', now()); vd timestamptz := date_trunc('day', now());
  lim bigint := 1000000000; r1 bigint; base int := 0;
  a numeric := 0; b numeric := 0; c numeric := 0;
begin
 for round in 1..3 loop
  t := clock_timestamp();
  for i in 1..n loop
    update gateway.rate_counters c set
      minute_start = greatest(c.minute_start, vm),
      minute_requests = case when c.minute_start >= vm then c.minute_requests + 1 else 1 end,
      minute_tokens = case when c.minute_start >= vm then c.minute_tokens else 0 end,
      hour_start = greatest(c.hour_start, vh),
      hour_requests = case when c.hour_start >= vh then c.hour_requests + 1 else 1 end,
      hour_tokens = case when c.hour_start >= vh then c.hour_tokens else 0 end,
      day_start = greatest(c.day_start, vd),
      day_requests = case when c.day_start >= vd then c.day_requests + 1 else 1 end,
      day_tokens = case when c.day_start >= vd then c.day_tokens else 0 end
    where c.subject_kind = 'account' and c.subject_id = -(base + i)
      and case when c.minute_start >= vm then c.minute_requests else 0 end < lim
      and case when c.hour_start >= vh then c.hour_requests else 0 end < lim
      and case when c.day_start >= vd then c.day_requests else 0 end < lim
      and case when c.minute_start >= vm then c.minute_tokens else 0 end < lim
      and case when c.hour_start >= vh then c.hour_tokens else 0 end < lim
      and case when c.day_start >= vd then c.day_tokens else 0 end < lim
    returning c.minute_requests into r1;
  end loop;
  a := a + extract(epoch from clock_timestamp()-t)*1e6/n; base := base + n;
  t := clock_timestamp();
  for i in 1..n loop
    update gateway.rate_counters c set
      minute_start = greatest(c.minute_start, vm),
      minute_requests = gateway.rolled(c.minute_start, vm, c.minute_requests) + 1,
      minute_tokens = gateway.rolled(c.minute_start, vm, c.minute_tokens),
      hour_start = greatest(c.hour_start, vh),
      hour_requests = gateway.rolled(c.hour_start, vh, c.hour_requests) + 1,
      hour_tokens = gateway.rolled(c.hour_start, vh, c.hour_tokens),
      day_start = greatest(c.day_start, vd),
      day_requests = gateway.rolled(c.day_start, vd, c.day_requests) + 1,
      day_tokens = gateway.rolled(c.day_start, vd, c.day_tokens)
    where c.subject_kind = 'account' and c.subject_id = -(base + i)
      and gateway.rolled(c.minute_start, vm, c.minute_requests) < lim
      and gateway.rolled(c.hour_start, vh, c.hour_requests) < lim
      and gateway.rolled(c.day_start, vd, c.day_requests) < lim
      and gateway.rolled(c.minute_start, vm, c.minute_tokens) < lim
      and gateway.rolled(c.hour_start, vh, c.hour_tokens) < lim
      and gateway.rolled(c.day_start, vd, c.day_tokens) < lim
    returning c.minute_requests into r1;
  end loop;
  b := b + extract(epoch from clock_timestamp()-t)*1e6/n; base := base + n;
  t := clock_timestamp();
  for i in 1..n loop
    update gateway.rate_counters c set
      minute_start = greatest(c.minute_start, vm),
      minute_requests = gateway.rolled_pl(c.minute_start, vm, c.minute_requests) + 1,
      minute_tokens = gateway.rolled_pl(c.minute_start, vm, c.minute_tokens),
      hour_start = greatest(c.hour_start, vh),
      hour_requests = gateway.rolled_pl(c.hour_start, vh, c.hour_requests) + 1,
      hour_tokens = gateway.rolled_pl(c.hour_start, vh, c.hour_tokens),
      day_start = greatest(c.day_start, vd),
      day_requests = gateway.rolled_pl(c.day_start, vd, c.day_requests) + 1,
      day_tokens = gateway.rolled_pl(c.day_start, vd, c.day_tokens)
    where c.subject_kind = 'account' and c.subject_id = -(base + i)
      and gateway.rolled_pl(c.minute_start, vm, c.minute_requests) < lim
      and gateway.rolled_pl(c.hour_start, vh, c.hour_requests) < lim
      and gateway.rolled_pl(c.day_start, vd, c.day_requests) < lim
      and gateway.rolled_pl(c.minute_start, vm, c.minute_tokens) < lim
      and gateway.rolled_pl(c.hour_start, vh, c.hour_tokens) < lim
      and gateway.rolled_pl(c.day_start, vd, c.day_tokens) < lim
    returning c.minute_requests into r1;
  end loop;
  c := c + extract(epoch from clock_timestamp()-t)*1e6/n; base := base + n;
 end loop;
 raise notice 'per UPDATE of one counter row, mean of 3 interleaved rounds of % rows: inline case % us, SQL helper % us, plpgsql helper % us', n, round(a/3, 1), round(b/3, 1), round(c/3, 1);
end $$;
rollback;
