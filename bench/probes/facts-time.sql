-- What checking a request's facts and a settle's usage costs, alone: gateway.request_facts and
-- gateway.usage_facts called 20,000 times each from a DO loop in one transaction (rolled back),
-- against the jsonb build alone and against a function that only returns the same record (the cost
-- of any such call). Mean µs per call, three rounds.
--   psql "$DB_URL" -f bench/probes/facts-time.sql                (docs/PERFORMANCE.md, 2026-12-03)
\set ON_ERROR_STOP on
begin;
create function pg_temp.facts_floor(
  p jsonb, out models text[], out prompt_bound bigint, out images integer, out audio integer,
  out files integer, out web_results integer, out max_tokens integer, out lifetime_seconds integer)
language plpgsql immutable security definer set search_path = '' as $$
begin
  models := array[p -> 'models' ->> 0];
  prompt_bound := (p ->> 'prompt_bound')::bigint;
end
$$;
do $$
declare
  t timestamptz;
  f record;
  n int := 20000;
  v jsonb;
  u jsonb := '{"model":"openai/gpt-4o-mini","prompt_tokens":9,"completion_tokens":4,
               "cost":"0.0000036","status":"success","generation_id":"gen-x","settled_by":"usage"}';
begin
  for r in 1 .. 3 loop
    t := clock_timestamp();
    for i in 1 .. n loop
      v := jsonb_build_object('models', jsonb_build_array('openai/gpt-4o-mini'), 'prompt_bound', i,
                              'max_tokens', 8, 'lifetime_seconds', 600);
    end loop;
    raise notice 'facts jsonb built alone: % µs', round(extract(epoch from clock_timestamp() - t) * 1e6 / n, 2);
    t := clock_timestamp();
    for i in 1 .. n loop
      v := jsonb_build_object('models', jsonb_build_array('openai/gpt-4o-mini'), 'prompt_bound', i,
                              'max_tokens', 8, 'lifetime_seconds', 600);
      f := pg_temp.facts_floor(v);
    end loop;
    raise notice '+ a call returning the record: % µs', round(extract(epoch from clock_timestamp() - t) * 1e6 / n, 2);
    t := clock_timestamp();
    for i in 1 .. n loop
      v := jsonb_build_object('models', jsonb_build_array('openai/gpt-4o-mini'), 'prompt_bound', i,
                              'max_tokens', 8, 'lifetime_seconds', 600);
      f := gateway.request_facts(v);
    end loop;
    raise notice '+ request_facts: % µs', round(extract(epoch from clock_timestamp() - t) * 1e6 / n, 2);
    t := clock_timestamp();
    for i in 1 .. n loop
      v := u || jsonb_build_object('latency_ms', i);
    end loop;
    raise notice 'usage jsonb built alone: % µs', round(extract(epoch from clock_timestamp() - t) * 1e6 / n, 2);
    t := clock_timestamp();
    for i in 1 .. n loop
      v := u || jsonb_build_object('latency_ms', i);
      f := gateway.usage_facts(v);
    end loop;
    raise notice '+ usage_facts: % µs', round(extract(epoch from clock_timestamp() - t) * 1e6 / n, 2);
  end loop;
end
$$;
rollback;
