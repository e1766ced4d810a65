-- Server time per call of the request path's SQL when each call is its own transaction, as the
-- function makes them (a plpgsql expression is set up once per transaction, so this is dearer than
-- bench/probes/sql-time.sql's one-transaction loop). A procedure that commits after each call;
-- synchronous_commit off so that the WAL flush, outside the timed calls anyway, does not pace it.
-- Leaves its account behind (committed).
--   psql "$DB_URL" -v calls=400 -v form=legacy|facts -f bench/probes/sql-time-committed.sql
\set ON_ERROR_STOP on
select gateway.register('probe-committed-' || txid_current() || '@bench.invalid', null, 'live', null) ->> 'api_key' as key \gset
select from gateway.add_credits((select id from gateway.accounts order by id desc limit 1), 1000000000000, 'probe');
select from gateway.set_rate_limits((select id from gateway.accounts order by id desc limit 1),
  '{"requests_per_minute":1000000000,"requests_per_hour":1000000000,"requests_per_day":1000000000,
    "tokens_per_minute":1000000000,"tokens_per_hour":1000000000,"tokens_per_day":1000000000}');
create or replace procedure public.txprobe(p_key text, p_calls int, p_form text)
language plpgsql as $$
declare h jsonb; k bytea := gateway.hash_key(p_key); t0 timestamptz; t1 timestamptz; b interval := '0'; s interval := '0';
begin
  for i in 1 .. p_calls loop
    t0 := clock_timestamp();
    if p_form = 'legacy' then
      h := gateway.begin_request(k, '127.0.0.1'::inet, null::text, 'openai/gpt-4o-mini', 8, 9);
    else
      h := gateway.begin_request(k, '127.0.0.1'::inet, null::text,
             jsonb_build_object('models', jsonb_build_array('openai/gpt-4o-mini'), 'prompt_bound', 9, 'max_tokens', 8, 'lifetime_seconds', 600));
    end if;
    t1 := clock_timestamp(); b := b + (t1 - t0);
    commit;
    t0 := clock_timestamp();
    if p_form = 'legacy' then
      perform gateway.settle_request((h ->> 'hold_id')::bigint, 'openai/gpt-4o-mini', 9, 4, 0.0000036, 'success', 2, 'gen-tx-' || i, 'usage');
    else
      perform gateway.settle_request((h ->> 'hold_id')::bigint,
        jsonb_build_object('model', 'openai/gpt-4o-mini', 'prompt_tokens', 9, 'completion_tokens', 4, 'cost', '0.0000036', 'status', 'success', 'latency_ms', 2, 'generation_id', 'gen-tx-' || i, 'settled_by', 'usage'));
    end if;
    s := s + (clock_timestamp() - t0);
    commit;
  end loop;
  raise notice 'form=% calls=% begin_us=% settle_us=%', p_form, p_calls,
    round(extract(epoch from b) * 1e6 / p_calls, 1), round(extract(epoch from s) * 1e6 / p_calls, 1);
end $$;
set synchronous_commit = off;
call public.txprobe(:'key', :calls, :'form');
drop procedure public.txprobe(text, int, text);
