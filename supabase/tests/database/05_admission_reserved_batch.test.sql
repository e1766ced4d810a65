-- gateway.reserve_admissions_batch: the reservations of many contexts in one call, each by
-- reserve_admissions' own code, answered in the order given in the compact form that
-- gateway.reserved_answers spells out, made in account order; an element that raises aborts the
-- batch.
begin;
\ir _helpers.sql
select plan(28);

-- One element of a batch, as the edge function sends it (the key's hash as hex).
create function tests.item(
  p_key text,
  p_count integer,
  p_max_tokens integer default 10,
  p_prompt_tokens integer default 0
)
returns jsonb
language sql
as $$
  select jsonb_build_object('key_hash', encode(gateway.hash_key(p_key), 'hex'), 'client_ip', null,
                            'referrer', null, 'count', p_count, 'models', jsonb_build_array('test/model'),
                            'max_tokens', p_max_tokens, 'prompt_bound', p_prompt_tokens);
$$;

-- reserve_admissions with the same arguments, one context a call.
create function tests.reserve(
  p_key text,
  p_count integer,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_now timestamptz
)
returns jsonb
language sql
as $$
  select gateway.reserve_admissions(
    gateway.hash_key(p_key), null, null,
    jsonb_build_object('models', jsonb_build_array('test/model'), 'prompt_bound', p_prompt_tokens,
                       'max_tokens', p_max_tokens),
    p_count, p_now);
$$;

-- A batch element's answer spelled out (reserve_admissions' array).
create function tests.full(p_answer jsonb) returns jsonb
language sql as $$ select gateway.reserved_answers(p_answer) $$;

-- An answer without what differs between twin accounts.
create function tests.strip(p_answers jsonb) returns jsonb
language sql as $$
  select coalesce(jsonb_agg(e - array['hold_id', 'user_id', 'key_id', 'key_prefix'] order by i), '[]')
    from jsonb_array_elements(p_answers) with ordinality a (e, i)
$$;

-- Every call of this file at one instant, in the middle of a minute: no window rolls over meanwhile.
select date_trunc('minute', now()) + interval '30 seconds' as t \gset

-- The same as reserve_admissions, context by context ---------------------------------------------------
-- Twins: x1 and x2 reserved one call each, y1 and y2 in one batch. x2/y2 can afford only part.
select tests.new_account(100000) as x1 \gset
select tests.new_account(35) as x2 \gset
select tests.new_account(100000) as y1 \gset
select tests.new_account(35) as y2 \gset
select :'x1'::jsonb ->> 'api_key' as x1k, :'x2'::jsonb ->> 'api_key' as x2k,
       :'y1'::jsonb ->> 'api_key' as y1k, :'y2'::jsonb ->> 'api_key' as y2k \gset
select tests.reserve(:'x1k', 5, 100, 10, :'t') as rx1 \gset
select tests.reserve(:'x2k', 6, 10, 0, :'t') as rx2 \gset
select gateway.reserve_admissions_batch(
  jsonb_build_array(tests.item(:'y1k', 5, 100, 10), tests.item(:'y2k', 6, 10, 0)), :'t') as b \gset
select is(jsonb_array_length(:'b'::jsonb), 2, 'one answer per element');
select is(tests.strip(tests.full(:'b'::jsonb -> 0)), tests.strip(:'rx1'::jsonb),
          'the first element gets what reserve_admissions gives (5 admissions, their limits, pricing)');
select is(tests.strip(tests.full(:'b'::jsonb -> 1)), tests.strip(:'rx2'::jsonb),
          'the second too: as many as its credits afford');
select is(array(select e ->> 'max_tokens' from jsonb_array_elements(tests.full(:'b'::jsonb -> 1)) e),
          array['10', '10', '10', '5'], 'credits for 3.5 requests: three in full, one cut down');
select is(array(select jsonb_object_keys(:'b'::jsonb -> 0) order by 1), array['first', 'more'],
          'an answer is compact: the first admission in full, the others apart');
select is(:'b'::jsonb #> '{0,more,max_tokens}', '[100, 100, 100, 100]'::jsonb,
          'the others by column: four more after the first');
select is(array(select jsonb_array_length(:'b'::jsonb #> array['0', 'more', c])
                  from unnest(array['hold_ids', 'held_credits', 'available_credits']) c),
          array[4, 4, 4], 'every column has one element per admission after the first');
select ok(length((:'b'::jsonb -> 0)::text) * 3 < length(:'rx1'::text),
          'and it is a fraction of the full answers (no pricing repeated)');
select is(array[tests.held(:'y1'), tests.held(:'y2')], array[tests.held(:'x1'), tests.held(:'x2')],
          'the batch holds what the single calls hold');
select is(array[tests.account_requests(:'y1', :'t'), tests.account_requests(:'y2', :'t')],
          array[tests.account_requests(:'x1', :'t'), tests.account_requests(:'x2', :'t')],
          'and counts what they count');
select is((select count(*) from gateway.holds h
            where h.account_id in ((:'y1'::jsonb ->> 'user_id')::bigint,
                                   (:'y2'::jsonb ->> 'user_id')::bigint) and h.reserved),
          9::bigint, 'every hold it makes is a reserved one (5 + 4)');

-- Accounts mixed: answered in the order given, reserved in account order -----------------------------
select tests.new_account(100000) as a \gset
select tests.new_account(100000) as c \gset
select :'a'::jsonb ->> 'api_key' as ak, :'c'::jsonb ->> 'api_key' as ck,
       (:'a'::jsonb ->> 'user_id')::bigint as aid, (:'c'::jsonb ->> 'user_id')::bigint as cid \gset
select gateway.reserve_admissions_batch(
  jsonb_build_array(tests.item(:'ck', 2, 21), tests.item(:'ak', 3, 22)), :'t') as m \gset
select ok(:aid < :cid, 'a''s account id is below c''s');
select is(array(select (e #>> '{first,user_id}')::bigint from jsonb_array_elements(:'m'::jsonb) e),
          array[:cid, :aid]::bigint[], 'answers come back in the order given');
select is(array(select e #>> '{first,max_tokens}' from jsonb_array_elements(:'m'::jsonb) e),
          array['21', '22'], 'each answer belongs to its element');
select ok((select max((e ->> 'hold_id')::bigint) from jsonb_array_elements(tests.full(:'m'::jsonb -> 1)) e)
          < (select min((e ->> 'hold_id')::bigint) from jsonb_array_elements(tests.full(:'m'::jsonb -> 0)) e),
          'a''s holds were made before c''s: account order');

-- A refusal refuses only its element ------------------------------------------------------------------
select tests.new_account(100000) as r \gset
select :'r'::jsonb ->> 'api_key' as rk \gset
select from gateway.set_rate_limits((:'r'::jsonb ->> 'user_id')::bigint, '{"requests_per_minute":2}');
select tests.held(:'a') as a_held \gset
select gateway.reserve_admissions_batch(jsonb_build_array(
  tests.item('gw_live_not_a_key', 4), tests.item(:'rk', 5), tests.item(:'ak', 4, 7)), :'t') as k \gset
select is(:'k'::jsonb -> 0, jsonb_build_object('first', jsonb_build_object(
            'ok', false, 'reason', 'invalid_api_key',
            'message', gateway.refusal_message('invalid_api_key'))),
          'an unknown key is refused, alone (a refusal has nothing more)');
select is(array(select coalesce(e ->> 'reason', 'ok') from jsonb_array_elements(tests.full(:'k'::jsonb -> 1)) e),
          array['ok', 'ok'], 'a limit of 2 a minute: two of the five reserved');
select is((tests.account_requests(:'r', :'t') ->> 'requests_this_minute')::int, 2,
          'and counted: the window is at its limit');
select is(tests.held(:'a') - :a_held, 28::bigint, 'the element after them is reserved in full (4 × 7)');

-- An element that raises aborts the whole batch ---------------------------------------------------------
select tests.held(:'a') as a_held, tests.held(:'c') as c_held,
       tests.account_requests(:'a', :'t') as a_count,
       (select count(*) from gateway.holds) as holds \gset
select is(
  tests.error_of(format('select gateway.reserve_admissions_batch(%L, %L)',
                        jsonb_build_array(tests.item(:'ak', 3), tests.item(:'ck', 65)), :'t')),
  '22023:invalid_request', 'a count above 64 raises 22023 invalid_request');
select is(array[tests.held(:'a'), tests.held(:'c'), (select count(*) from gateway.holds)],
          array[:a_held, :c_held, :holds]::bigint[],
          'and nothing of the batch is left: no hold, even of the element reserved before it');
select is(tests.account_requests(:'a', :'t'), :'a_count'::jsonb, 'no count either');
select is(
  tests.error_of(format('select gateway.reserve_admissions_batch(%L)', jsonb_build_array(
    tests.item(:'ak', 3) || jsonb_build_object('count', 1.5)))),
  '22023:invalid_request', 'a count that is not an integer raises');
select is(
  tests.error_of(format('select gateway.reserve_admissions_batch(%L)', jsonb_build_array(
    tests.item(:'ak', 3) - 'count'))),
  '22023:invalid_request', 'so does a missing count');
select is(
  tests.error_of(format('select gateway.reserve_admissions_batch(%L)', jsonb_build_array(
    tests.item(:'ak', 3) || jsonb_build_object('key_hash', upper(encode(tests.h(:'ak'), 'hex')))))),
  '22023:invalid_request', 'and a key_hash that is not 64 lower-case hex digits');
select is(tests.error_of(format('select gateway.reserve_admissions_batch(%L)', tests.item(:'ak', 3))),
          '22023:invalid_request', 'an object instead of an array raises');
select is(gateway.reserve_admissions_batch('[]'), '[]'::jsonb, 'an empty batch gives []');

-- Who may call ------------------------------------------------------------------------------------------
set local role anon;
select is(tests.error_of('select gateway.reserve_admissions_batch(''[]'')'), '42501:',
          'anon cannot call it');
reset role;

select * from finish();
rollback;
