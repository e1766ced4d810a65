-- Server time per call of the request path's SQL, without client round trips or commits: a fresh
-- account with ample credits and limits, then `calls` begin + settle pairs timed with
-- clock_timestamp() inside one DO block, all rolled back. Prints mean µs per call (wall), and the
-- backend's CPU µs per begin + settle pair (/proc/self/stat: robust when the machine is shared).
--   psql "$DB_URL" -v calls=2000 -v form=legacy -f bench/probes/sql-time.sql
-- form = legacy: begin_request(…, model, max_tokens, prompt) / settle_request(9 args), the calls
--        the function made before the pricing migration (gone since 20261203060000: run it against a
--        database from before, or recreate them in this file's transaction);
-- form = facts:  begin_request(…, facts jsonb) / settle_request(hold_id, usage jsonb).
-- model: the model to price (default openai/gpt-4o-mini).
\set ON_ERROR_STOP on
\if :{?model}
\else
\set model 'openai/gpt-4o-mini'
\endif
begin;
set local client_min_messages = notice;
select gateway.register('probe' || txid_current() || '@bench.invalid', null, 'live', null) ->> 'api_key'
  as key \gset
select gateway.add_credits((select id from gateway.accounts order by id desc limit 1), 1000000000000, 'probe');
select gateway.set_rate_limits((select id from gateway.accounts order by id desc limit 1),
  '{"requests_per_minute":1000000000,"requests_per_hour":1000000000,"requests_per_day":1000000000,
    "tokens_per_minute":1000000000,"tokens_per_hour":1000000000,"tokens_per_day":1000000000}');
create temp table probe_args (form text, calls int, key text, model text);
insert into probe_args values (:'form', :calls, :'key', :'model');
do $$
declare
  a record;
  h jsonb;
  t0 timestamptz;
  t1 timestamptz;
  v_begin interval := '0';
  v_settle interval := '0';
  v_hash bytea;
  v_cpu0 bigint;
  v_cpu1 bigint;
begin
  select * into a from probe_args;
  -- utime + stime of this backend, in clock ticks (100 per second).
  v_cpu0 := (select split_part(t, ' ', 12)::bigint + split_part(t, ' ', 13)::bigint
               from (select split_part(pg_read_file('/proc/self/stat'), ') ', 2) as t) x);
  v_hash := gateway.hash_key(a.key);
  for i in 1 .. a.calls loop
    t0 := clock_timestamp();
    if a.form = 'legacy' then
      h := gateway.begin_request(v_hash, '127.0.0.1', null, a.model, 8, 9);
    else
      h := gateway.begin_request(v_hash, '127.0.0.1'::inet, null::text,
             jsonb_build_object('models', jsonb_build_array(a.model), 'prompt_bound', 9,
                                'max_tokens', 8, 'lifetime_seconds', 600));
    end if;
    t1 := clock_timestamp();
    v_begin := v_begin + (t1 - t0);
    if not (h ->> 'ok')::boolean then raise exception 'refused: %', h; end if;
    if a.form = 'legacy' then
      perform gateway.settle_request((h ->> 'hold_id')::bigint, a.model, 9, 4, 0.0000036,
                                     'success', 2, 'gen-probe-' || i, 'usage');
    else
      perform gateway.settle_request((h ->> 'hold_id')::bigint,
                jsonb_build_object('model', a.model, 'prompt_tokens', 9, 'completion_tokens', 4,
                                   'cost', '0.0000036', 'status', 'success', 'latency_ms', 2,
                                   'generation_id', 'gen-probe-' || i, 'settled_by', 'usage'));
    end if;
    v_settle := v_settle + (clock_timestamp() - t1);
  end loop;
  v_cpu1 := (select split_part(t, ' ', 12)::bigint + split_part(t, ' ', 13)::bigint
               from (select split_part(pg_read_file('/proc/self/stat'), ') ', 2) as t) x);
  raise notice 'form=% calls=% begin_us=% settle_us=% cpu_pair_us=%', a.form, a.calls,
    round(extract(epoch from v_begin) * 1e6 / a.calls, 1),
    round(extract(epoch from v_settle) * 1e6 / a.calls, 1),
    round((v_cpu1 - v_cpu0) * 10000.0 / a.calls, 1);
end
$$;
rollback;
