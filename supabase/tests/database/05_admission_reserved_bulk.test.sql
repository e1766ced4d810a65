-- gateway.reserve_admissions in one pass: the first admission by begin_request, the others decided
-- at once. The outcome must be exactly that of p_count sequential begin_request calls with the same
-- arguments and p_now (stopped at the first refusal): the same admissions, answers, holds and
-- counts; only the trailing refusal after a first admission is not in the answer.
-- Each state is run twice from the same starting point, the reservation and the sequential calls,
-- each in a subtransaction rolled back after its result and the account's rows are read.
begin;
\ir _helpers.sql
select plan(41);

-- A scenario's facts as begin_request and reserve_admissions take them.
create function tests.facts(p_s jsonb) returns jsonb
language sql as $$
  select jsonb_build_object('models', jsonb_build_array(p_s ->> 'model'),
                            'prompt_bound', coalesce((p_s ->> 'prompt')::integer, 0),
                            'max_tokens', (p_s ->> 'max_tokens')::integer)
$$;

select date_trunc('hour', now()) + interval '30 minutes 15 seconds' as t \gset

-- Models with prices: fractional multipliers, and prices that make max_tokens the credits' cap.
select from gateway.set_model_pricing('bulk/frac', 0.37, 1.25);
select from gateway.set_model_pricing('bulk/cheap', 0.001, 0.003);
select from gateway.set_model_pricing('bulk/dear', 2.5, 7.125);

-- What an admission wrote for an account and its key: both counter rows (every column), the
-- balance row, the key's counter, and the account's open holds in id order (all columns but the id
-- and the reserved flag; the multipliers also as text, scale included).
create function tests.snap(p_account bigint, p_key bigint) returns jsonb
language sql as $$
  select jsonb_build_object(
    'counters', (select jsonb_agg(to_jsonb(c) order by c.subject_kind, c.subject_id)
                   from gateway.rate_counters c
                  where (c.subject_kind = 'account' and c.subject_id = p_account)
                     or (c.subject_kind = 'key' and c.subject_id = p_key)),
    'balance', (select to_jsonb(b) from gateway.credit_balances b where b.account_id = p_account),
    'key_counter', (select to_jsonb(c) from gateway.key_counters c where c.key_id = p_key),
    'holds', (select jsonb_agg(to_jsonb(h) - array['id', 'reserved']
                               || jsonb_build_object('pm', h.prompt_multiplier::text,
                                                     'cm', h.completion_multiplier::text)
                               order by h.id)
                from gateway.holds h where h.account_id = p_account))
$$;

-- One run from the current state, rolled back: the reservation (p_bulk) or p_n begin_request calls
-- stopped at the first refusal. Returns the answers without hold ids, how many were admitted, the
-- snapshot, how many of the account's holds are reserved, and whether each admission's hold_id
-- names a hold with its held_credits and max_tokens.
create function tests.run(p_bulk boolean, p_s jsonb) returns jsonb
language plpgsql as $$
declare
  v_hash bytea := decode(p_s ->> 'hash', 'hex');
  v_now timestamptz := (p_s ->> 'now')::timestamptz;
  v_answers jsonb := '[]';
  v jsonb;
  v_out jsonb;
begin
  begin
    if p_bulk then
      v_answers := gateway.reserve_admissions(
        v_hash, (p_s ->> 'ip')::inet, null, tests.facts(p_s), (p_s ->> 'n')::integer, v_now);
    else
      for i in 1 .. (p_s ->> 'n')::integer loop
        v := gateway.begin_request(v_hash, (p_s ->> 'ip')::inet, null, tests.facts(p_s), v_now);
        v_answers := v_answers || jsonb_build_array(v);
        exit when not (v ->> 'ok')::boolean;
      end loop;
    end if;
    v_out := jsonb_build_object(
      'answers', (select coalesce(jsonb_agg(e - 'hold_id' order by o), '[]')
                    from jsonb_array_elements(v_answers) with ordinality x (e, o)),
      'admitted', (select count(*) from jsonb_array_elements(v_answers) e where (e ->> 'ok')::boolean),
      'state', tests.snap((p_s ->> 'account')::bigint, (p_s ->> 'key')::bigint),
      'reserved', (select count(*) from gateway.holds h
                    where h.account_id = (p_s ->> 'account')::bigint and h.reserved),
      'ids_ok', (select coalesce(bool_and(h.amount = (e ->> 'held_credits')::bigint
                                          and h.max_tokens = (e ->> 'max_tokens')::integer), true)
                   from jsonb_array_elements(v_answers) e
                   left join gateway.holds h on h.id = (e ->> 'hold_id')::bigint
                  where (e ->> 'ok')::boolean),
      'ids_ordered', (select coalesce(bool_and(a.id < b.id), true)
                        from (select (e ->> 'hold_id')::bigint as id, o
                                from jsonb_array_elements(v_answers) with ordinality x (e, o)
                               where (e ->> 'ok')::boolean) a
                        join (select (e ->> 'hold_id')::bigint as id, o
                                from jsonb_array_elements(v_answers) with ordinality x (e, o)
                               where (e ->> 'ok')::boolean) b on b.o = a.o + 1));
    raise exception using errcode = 'U0001', message = 'rolled back';
  exception when sqlstate 'U0001' then
    null;
  end;
  return v_out;
end
$$;

-- Both runs of a state, compared: same admitted count, same answers (the sequential ones without
-- the refusal that ended them, unless the first was refused: then both are that refusal), same
-- counters, balance, key counter and holds; the reservation's holds all reserved, and its hold_ids
-- name its holds in order. Also says why the sequential calls stopped and whether a hold was cut
-- down (a later admission with a smaller max_tokens than the first).
create function tests.compare(p_s jsonb) returns jsonb
language plpgsql as $$
declare
  b jsonb := tests.run(true, p_s);
  s jsonb := tests.run(false, p_s);
  v_seq_answers jsonb := s -> 'answers';
  v_last jsonb := s -> 'answers' -> -1;
begin
  if (s ->> 'admitted')::int > 0 and not (v_last ->> 'ok')::boolean then
    v_seq_answers := v_seq_answers - (-1);
  end if;
  return jsonb_build_object(
    'same', coalesce(b -> 'admitted' = s -> 'admitted'
                     and b -> 'answers' = v_seq_answers
                     and b -> 'state' = s -> 'state'
                     and b -> 'reserved' = b -> 'admitted'
                     and (b ->> 'ids_ok')::boolean and (b ->> 'ids_ordered')::boolean, false),
    'n', (p_s ->> 'n')::int,
    'admitted', (b ->> 'admitted')::int,
    'seq_admitted', (s ->> 'admitted')::int,
    'stop', case when not (v_last ->> 'ok')::boolean then v_last ->> 'reason' end,
    'cut_down', (select count(distinct e ->> 'max_tokens') > 1
                   from jsonb_array_elements(s -> 'answers') e where (e ->> 'ok')::boolean),
    'bulk', b, 'seq', s);
end
$$;

-- A state: an account (p_credits), its key's hash, and the call's arguments.
create function tests.state(p_credits bigint, p_n integer, p_max_tokens integer default 10,
                            p_prompt integer default 0, p_model text default 'test/model',
                            p_now timestamptz default now())
returns jsonb
language plpgsql as $$
declare
  a jsonb := tests.new_account(p_credits);
begin
  return jsonb_build_object(
    'account', (a ->> 'user_id')::bigint, 'key', (a ->> 'key_id')::bigint, 'api_key', a ->> 'api_key',
    'hash', encode(tests.h(a ->> 'api_key'), 'hex'), 'n', p_n, 'max_tokens', p_max_tokens,
    'prompt', p_prompt, 'model', p_model, 'now', p_now, 'ip', null);
end
$$;

-- Some traffic before: p_count begin_request calls at p_at, each settled with p_tokens tokens.
create function tests.traffic(p_s jsonb, p_count integer, p_at timestamptz, p_tokens integer default 0)
returns void
language plpgsql as $$
declare
  v jsonb;
begin
  for i in 1 .. p_count loop
    v := gateway.begin_request(decode(p_s ->> 'hash', 'hex'), null, null,
                               '{"models":["test/model"],"prompt_bound":0,"max_tokens":5}', p_at);
    if (v ->> 'ok')::boolean and p_tokens > 0 then
      perform gateway.settle_request((v ->> 'hold_id')::bigint,
        jsonb_build_object('completion_tokens', p_tokens, 'cost', 0, 'status', 'success',
                           'latency_ms', 1, 'settled_by', 'usage'), p_at);
    end if;
  end loop;
end
$$;

-- Named states --------------------------------------------------------------------------------------
-- An ample account, the default limits (60 a minute) far away.
select tests.state(1000000, 16, p_now => :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'ample account, n = 16: the same as 16 begin_request calls');
select is((:'c'::jsonb ->> 'admitted')::int, 16, '… all 16 admitted');

-- 3 left in the account's minute, n = 8.
select tests.state(1000000, 8, p_now => :'t') as s \gset
select from gateway.set_rate_limits((:'s'::jsonb ->> 'account')::bigint, '{"requests_per_minute":5}');
select from tests.traffic(:'s', 2, :'t');
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, '3 left of 5 a minute, n = 8: the same');
select is(array[(:'c'::jsonb ->> 'admitted')::int, jsonb_array_length(:'c'::jsonb -> 'bulk' -> 'answers')],
          array[3, 3], '… 3 admitted, and no trailing refusal (the sequential calls stopped at one)');
select is(:'c'::jsonb ->> 'stop', 'rate_limited', '… where the sequential calls were rate limited');

-- The key's own limits, tighter than the account's, one of them in the hour.
select tests.state(1000000, 12, p_now => :'t') as s \gset
select from gateway.set_rate_limits((:'s'::jsonb ->> 'account')::bigint, '{"requests_per_minute":10}');
select from gateway.set_key_rate_limits((:'s'::jsonb ->> 'key')::bigint,
                                        '{"requests_per_minute":8,"requests_per_hour":6}');
select from tests.traffic(:'s', 2, :'t'::timestamptz - interval '1 minute');
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'the key''s own limits tighter than the account''s: the same');
select is((:'c'::jsonb ->> 'admitted')::int, 4, '… 4 admitted (6 an hour, 2 used the minute before)');

-- The key's request cap with 2 left.
select tests.state(1000000, 6, p_now => :'t') as s \gset
update gateway.api_keys set max_requests = 5 where id = (:'s'::jsonb ->> 'key')::bigint;
select from tests.traffic(:'s', 3, :'t');
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'the key''s cap with 2 left: the same');
select is(array[(:'c'::jsonb ->> 'admitted')::int, (:'c'::jsonb ->> 'seq_admitted')::int], array[2, 2],
          '… 2 admitted');
select is(:'c'::jsonb ->> 'stop', 'key_request_cap', '… where the sequential calls met the cap');

-- Credits for exactly 5 holds (10 tokens + 3 prompt tokens at 1 and 1: 13 each).
select tests.state(65, 9, 10, 3, p_now => :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'credits for exactly 5 holds: the same');
select is((:'c'::jsonb ->> 'admitted')::int, 5, '… 5 admitted');
select ok(not (:'c'::jsonb ->> 'cut_down')::boolean and :'c'::jsonb ->> 'stop' = 'insufficient_credits',
          '… none cut down; the sequential calls stopped for credits');

-- Credits where max_tokens is cut down after a few holds (at bulk/dear prices: 2.5 and 7.125).
select tests.state(500, 10, 20, 4, 'bulk/dear', :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'max_tokens cut down by the credits after a few holds: the same');
select ok((:'c'::jsonb ->> 'cut_down')::boolean and (:'c'::jsonb ->> 'admitted')::int > 3,
          '… some holds cut down, and they are admitted as begin_request admits them');
select is(array(select (e ->> 'max_tokens')::int from jsonb_array_elements(:'c'::jsonb -> 'bulk' -> 'answers') e),
          array[20, 20, 20, 4],
          '… holds of 153 (ceil(4 × 2.5 + 20 × 7.125)) thrice, then what is left: 31 affords 4 tokens');

-- No max_tokens: the default (4096), capped by the credits.
select tests.state(20000, 8, null, 100, 'bulk/frac', :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'max_tokens null (the default, capped by the credits): the same');
select is(:'c'::jsonb -> 'bulk' -> 'answers' -> 0 ->> 'max_tokens', '4096', '… the first gets the default');

-- Fractional multipliers, a prompt estimate.
select tests.state(100000, 12, 777, 333, 'bulk/frac', :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'fractional multipliers (0.37, 1.25) and a prompt: the same');
select is(array(select distinct e #>> '{pricing,dearest,completion_multiplier}' from jsonb_array_elements(:'c'::jsonb -> 'bulk' -> 'answers') e),
          array['1.25'], '… each answer reports the multipliers as begin_request does');

-- The previous secret of a key within its rotation grace.
select tests.state(100000, 5, p_now => :'t') as s \gset
select gateway.rotate_key(tests.h(:'s'::jsonb ->> 'api_key'), null, null, (:'s'::jsonb ->> 'key')::bigint, 3600)
  ->> 'api_key' as rotated \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean and (:'c'::jsonb ->> 'admitted')::int = 5,
          'the previous secret within its grace: the same, 5 admitted');

-- A first admission refused: the refusal alone, as before.
select tests.state(0, 5, p_now => :'t') as s \gset
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean, 'no credits: the same');
select is(array(select e ->> 'reason' from jsonb_array_elements(:'c'::jsonb -> 'bulk' -> 'answers') e),
          array['insufficient_credits'], '… the answer is the refusal alone');

-- A key whose windows were counted in a later minute than p_now (begin_request counts into it).
select tests.state(100000, 10, p_now => :'t') as s \gset
select from gateway.set_key_rate_limits((:'s'::jsonb ->> 'key')::bigint, '{"requests_per_minute":6}');
select from tests.traffic(:'s', 2, :'t'::timestamptz + interval '1 minute', 3);
select tests.compare(:'s') as c \gset
select ok((:'c'::jsonb ->> 'same')::boolean and (:'c'::jsonb ->> 'admitted')::int = 4,
          'windows already in a later minute: the same, counted into it (4 admitted)');

-- Random states ------------------------------------------------------------------------------------
-- Credits, account and key limits (requests and tokens), the key's cap, model, max_tokens, prompt,
-- traffic before (the hour before, the minute before, this minute, the next minute; some settled
-- with tokens), a rotated key, a key fence; n from 2 to 24.
create function tests.random_state(p_now timestamptz) returns jsonb
language plpgsql as $$
declare
  s jsonb;
  v_limits jsonb;
  v_rotated text;
  v_at timestamptz;
begin
  s := tests.state(
    (array[floor(random() * 300), floor(random() * 3000), floor(random() * 30000),
           1000000])[1 + floor(random() * 4)::int]::bigint,
    2 + floor(random() * 23)::int,
    case when random() < 0.15 then null else 1 + floor(random() * 120)::int end,
    case when random() < 0.2 then null else floor(random() * 80)::int end,
    (array['test/model', 'bulk/frac', 'bulk/cheap', 'bulk/dear'])[1 + floor(random() * 4)::int],
    p_now);
  if random() < 0.2 then
    v_rotated := gateway.rotate_key(tests.h(s ->> 'api_key'), null, null, (s ->> 'key')::bigint, 3600)
                   ->> 'api_key';
  end if;
  v_limits := '{}';
  if random() < 0.5 then v_limits := v_limits || jsonb_build_object('requests_per_minute', 2 + floor(random() * 20)); end if;
  if random() < 0.3 then v_limits := v_limits || jsonb_build_object('requests_per_hour', 3 + floor(random() * 30)); end if;
  if random() < 0.2 then v_limits := v_limits || jsonb_build_object('requests_per_day', 3 + floor(random() * 40)); end if;
  if random() < 0.1 then v_limits := v_limits || jsonb_build_object('tokens_per_minute', floor(random() * 60)); end if;
  if random() < 0.1 then v_limits := v_limits || jsonb_build_object('tokens_per_hour', floor(random() * 120)); end if;
  perform gateway.set_rate_limits((s ->> 'account')::bigint, v_limits);
  if random() < 0.4 then
    v_limits := '{}';
    if random() < 0.6 then v_limits := v_limits || jsonb_build_object('requests_per_minute', 2 + floor(random() * 20)); end if;
    if random() < 0.4 then v_limits := v_limits || jsonb_build_object('requests_per_hour', 3 + floor(random() * 30)); end if;
    if random() < 0.2 then v_limits := v_limits || jsonb_build_object('requests_per_day', 3 + floor(random() * 40)); end if;
    if random() < 0.1 then v_limits := v_limits || jsonb_build_object('tokens_per_minute', floor(random() * 60)); end if;
    perform gateway.set_key_rate_limits((s ->> 'key')::bigint, v_limits);
  end if;
  if random() < 0.3 then
    update gateway.api_keys set max_requests = 1 + floor(random() * 20) where id = (s ->> 'key')::bigint;
  end if;
  for i in 1 .. floor(random() * 6)::int loop
    v_at := p_now + (array[interval '-61 minutes', interval '-1 minute', interval '0', interval '0',
                           interval '1 minute'])[1 + floor(random() * 5)::int];
    perform tests.traffic(s, 1, v_at, case when random() < 0.5 then floor(random() * 20)::int else 0 end);
  end loop;
  if random() < 0.05 then
    update gateway.api_keys set allowed_ips = array['10.1.0.0/16']::cidr[] where id = (s ->> 'key')::bigint;
    s := s || jsonb_build_object('ip', case when random() < 0.5 then '10.1.2.3' else '10.2.0.1' end);
  end if;
  if v_rotated is not null then
    -- Half the time the new secret, half the previous one (within its grace).
    if random() < 0.5 then
      s := s || jsonb_build_object('hash', encode(tests.h(v_rotated), 'hex'));
    end if;
  end if;
  return s;
end
$$;

create table tests.results (i integer, c jsonb);
select from setseed(0.1713);
-- One statement per state, in order (random() draws in sequence after setseed).
do $$
begin
  for i in 1 .. 100 loop
    insert into tests.results
    select i, tests.compare(tests.random_state(
      date_trunc('hour', now()) + interval '30 minutes 15 seconds'));
  end loop;
end
$$;

select is((select count(*) from tests.results where not (c ->> 'same')::boolean), 0::bigint,
          '100 random states: the reservation is the same as the sequential calls in every one');
select is(
  (select jsonb_agg(jsonb_build_object('i', i, 'n', c -> 'n', 'admitted', c -> 'admitted',
                                       'seq_admitted', c -> 'seq_admitted'))
     from tests.results where (c ->> 'admitted') <> (c ->> 'seq_admitted')),
  null, 'the same number admitted in every one');
select ok((select count(*) >= 3 from tests.results where c ->> 'stop' = 'rate_limited'
                                                  and (c ->> 'admitted')::int > 0),
          'the random states include stops at a rate window after admissions');
select ok((select count(*) >= 2 from tests.results where c ->> 'stop' = 'key_request_cap'
                                                  and (c ->> 'admitted')::int > 0),
          '… at the key''s cap');
select ok((select count(*) >= 3 from tests.results where c ->> 'stop' = 'insufficient_credits'
                                                  and (c ->> 'admitted')::int > 0),
          '… at the credits');
select ok((select count(*) >= 3 from tests.results where (c ->> 'cut_down')::boolean),
          '… holds cut down by the credits');
select ok((select count(*) >= 3 from tests.results where c ->> 'stop' is null),
          '… all n admitted');
select ok((select count(*) >= 3 from tests.results where (c ->> 'admitted')::int = 0),
          '… the first refused');
select is((select sum((c ->> 'admitted')::int) from tests.results) > 200, true,
          'and many admissions in all');

-- Answer shape, reserved flags, cancel ------------------------------------------------------------
select tests.state(5000, 10, 50, 20, 'bulk/frac', :'t') as s \gset
select from gateway.set_key_rate_limits((:'s'::jsonb ->> 'key')::bigint, '{"requests_per_hour":40,"tokens_per_day":9000}');
select from tests.traffic(:'s', 1, :'t', 7);
select gateway.begin_request(decode(:'s'::jsonb ->> 'hash', 'hex'), null, null, '{"models":["bulk/frac"],"prompt_bound":20,"max_tokens":50}', :'t') as plain \gset
select from gateway.void_request((:'plain'::jsonb ->> 'hold_id')::bigint, 'test', :'t');
select tests.snap((:'s'::jsonb ->> 'account')::bigint, (:'s'::jsonb ->> 'key')::bigint) as before \gset
select gateway.reserve_admissions(decode(:'s'::jsonb ->> 'hash', 'hex'), null, null, '{"models":["bulk/frac"],"prompt_bound":20,"max_tokens":50}', 10, :'t') as r \gset
create function tests.shape(p jsonb) returns text[]
language sql as $$
  select array(select k || ':' || jsonb_typeof(p -> k) from jsonb_object_keys(p) k order by k)
      || array(select 'limits.' || l.k || '.' || k2 || ':' || jsonb_typeof(p -> 'limits' -> l.k -> k2)
                 from jsonb_object_keys(p -> 'limits') l (k),
                      jsonb_object_keys(case jsonb_typeof(p -> 'limits' -> l.k) when 'object'
                                             then p -> 'limits' -> l.k else '{}' end) k2
                order by 1)
$$;
select is((select count(*) from jsonb_array_elements(:'r'::jsonb) e where (e ->> 'ok')::boolean), 10::bigint,
          'a reservation of 10 on a key with its own limits: 10 admitted');
select is((select count(*) from jsonb_array_elements(:'r'::jsonb) e
            where tests.shape(e) = tests.shape(:'plain'::jsonb)), 10::bigint,
          'every element has the keys of begin_request''s admission answer, with the same JSON types');
select is(array(select (e -> 'limits' -> 'requests' ->> 'remaining')::int from jsonb_array_elements(:'r'::jsonb) e),
          array(select 37 - i from generate_series(0, 9) i),
          'limits.requests.remaining falls by one each (40 an hour, 2 used before)');
select is(array(select (e ->> 'available_credits')::bigint from jsonb_array_elements(:'r'::jsonb) e),
          array(select tests.balance(:'s'::jsonb || jsonb_build_object('user_id', :'s'::jsonb -> 'account'))
                       - (:'before'::jsonb #>> '{balance,held}')::bigint - 70 * i
                  from generate_series(1, 10) i),
          'available_credits falls by each hold (70: ceil(20 × 0.37 + 50 × 1.25))');
select is((select count(*) from gateway.holds h
            where h.id in (select (e ->> 'hold_id')::bigint from jsonb_array_elements(:'r'::jsonb) e)
              and h.reserved and h.count_key_windows),
          10::bigint, 'all 10 holds reserved, counting the key''s windows');
select is(gateway.cancel_admissions(array(select (e ->> 'hold_id')::bigint from jsonb_array_elements(:'r'::jsonb) e)),
          10, 'cancel_admissions gives back all 10');
select is(tests.snap((:'s'::jsonb ->> 'account')::bigint, (:'s'::jsonb ->> 'key')::bigint), :'before'::jsonb,
          '… counters (both rows, every window), balance, held, requests_used and holds as before them');
select ok(tests.ledger_ok() and not exists (select from gateway.ledger_discrepancies()),
          'ledger_discrepancies() is empty');

select * from finish();
rollback;
