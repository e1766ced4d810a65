-- The charge and settle batches: begin_request returns what the charge is computed from (the
-- function reports it before settling), credits_for is settle_request's one definition of the
-- charge, and settle_requests settles a batch with settle_request's semantics.
begin;
\ir _helpers.sql
select plan(22);

select tests.new_account(100000) as a \gset
select tests.new_account(100000) as b \gset
select from gateway.set_model_pricing('test/priced', 0.1, 2.675);

-- begin_request: the multipliers, exact -------------------------------------------------------------
select tests.begin(:'a'::jsonb ->> 'api_key', 10, 3, now(), null, null, 'test/priced') as h1 \gset
select is(array[:'h1'::jsonb #>> '{pricing,dearest,prompt_multiplier}',
                :'h1'::jsonb #>> '{pricing,dearest,completion_multiplier}'],
          array['0.1', '2.675'], 'begin_request returns the hold''s multipliers as exact decimal text');
select is((:'h1'::jsonb ->> 'balance')::bigint, 100000::bigint, 'and the balance it admitted on');

-- credits_for ---------------------------------------------------------------------------------------
select is(gateway.credits_for(3, 7, 0.1, 0.1), 1::bigint, 'credits_for is exact: 3 × 0.1 + 7 × 0.1 = 1');
select is(gateway.credits_for(1, 1, 0.1, 2.675), 3::bigint, 'and rounds up: 0.1 + 2.675 → 3');
select is(gateway.credits_for(0, 0, 0, 1), 0::bigint, 'no tokens, no credits');
select ok(
  (select bool_and(gateway.credits_for(p, c, pm, cm) = ceil(p * pm + c * cm))
     from (select (random() * 1e6)::bigint p, (random() * 1e6)::bigint c,
                  round((random() * 20)::numeric, 6) pm, round((random() * 20)::numeric, 6) cm
             from generate_series(1, 2000)) r),
  'credits_for = ceil(prompt × pm + completion × cm) over 2000 random inputs');
select is((tests.settle(:'h1', 3, 7) ->> 'credits_charged')::bigint,
          gateway.credits_for(3, 7, 0.1, 2.675),
          'settle_request charges credits_for of the hold''s multipliers');
select ok(not has_function_privilege('gateway_api', 'gateway.credits_for(bigint, bigint, numeric, numeric)',
                                     'execute'), 'credits_for is internal (not for gateway_api)');

-- settle_requests ------------------------------------------------------------------------------------
select tests.begin(:'a'::jsonb ->> 'api_key', 50, 0) as a1 \gset
select tests.begin(:'b'::jsonb ->> 'api_key', 50, 0) as b1 \gset
select tests.begin(:'a'::jsonb ->> 'api_key', 50, 0) as a2 \gset
select tests.balance(:'a') as a_before \gset
select tests.balance(:'b') as b_before \gset

select gateway.settle_requests(jsonb_build_array(
  jsonb_build_object('hold_id', (:'b1'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 5,
                     'completion_tokens', 6, 'status', 'success', 'settled_by', 'usage',
                     'generation_id', 'gen-b1', 'latency_ms', 12, 'cost', 0.5),
  jsonb_build_object('hold_id', (:'a1'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 1,
                     'completion_tokens', 2, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', (:'a1'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 1,
                     'completion_tokens', 2, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', -1, 'prompt_tokens', 1, 'completion_tokens', 1, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', (:'a2'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 100,
                     'completion_tokens', 0, 'model', 'openai/other', 'settled_by', 'generation')
)) as r \gset

select is(jsonb_array_length(:'r'::jsonb), 5, 'one result per element, in the order given');
select is(array(select e ->> 'credits_charged' from jsonb_array_elements(:'r'::jsonb) e),
          array['11', '3', null, null, '100'], 'each element charged as settle_request would');
select is(array(select coalesce(e ->> 'reason', 'settled') from jsonb_array_elements(:'r'::jsonb) e),
          array['settled', 'settled', 'already_settled', 'unknown_hold', 'settled'],
          'a repeat in the same batch is already_settled, an unknown hold unknown_hold');
select is(tests.balance(:'a'), (:a_before - 103)::bigint, 'account a charged 3 + 100, once');
select is(tests.balance(:'b'), (:b_before - 11)::bigint, 'account b charged 11');
select is(tests.held(:'a') + tests.held(:'b'), 0::bigint, 'nothing left held');
select is(
  (select row(model, prompt_tokens, completion_tokens, credits_charged, status, settled_by, latency_ms,
              generation_id, upstream_cost)::text
     from gateway.usage_records where hold_id = (:'b1'::jsonb ->> 'hold_id')::bigint),
  row('test/model', 5, 6, 11::bigint, 'success', 'usage', 12, 'gen-b1', 0.5)::text,
  'the usage record has every field of the element');
select is(tests.error_of($$select gateway.settle_requests(jsonb_build_array(
            jsonb_build_object('hold_id', $$ || (:'b1'::jsonb ->> 'hold_id') || $$, 'settled_by', 'usage'),
            jsonb_build_object('hold_id', 1, 'settled_by', 'guess')))$$),
          '22023:invalid_request', 'an invalid element aborts the whole batch (the caller retries alone)');

-- Lock order: within an account, the settles that count tokens go first (their counter row is
-- locked before the balance row, as admission locks them), the zero-token ones after.
select tests.begin(:'b'::jsonb ->> 'api_key', 50, 0) as z1 \gset
select tests.begin(:'b'::jsonb ->> 'api_key', 50, 0) as z2 \gset
select tests.balance(:'b') as b_before \gset
select gateway.settle_requests(jsonb_build_array(
  jsonb_build_object('hold_id', (:'z1'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 0,
                     'completion_tokens', 0, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', (:'z2'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 2,
                     'completion_tokens', 3, 'settled_by', 'usage'))) as z \gset
select is(array(select (e ->> 'balance_after')::bigint from jsonb_array_elements(:'z'::jsonb) e),
          array[:b_before - 5, :b_before - 5]::bigint[],
          'a zero-token settle is made after the account''s settles with tokens (answered as given)');

-- Lock order: a reserved admission the server released while a request had it (its worker could
-- not note it in time) settles late from its copy (released_reservations), in its account's place:
-- taken first (the order of an unknown hold) it locked its account's rows before those of a lower
-- account, and deadlocked with admissions and batches that take them in account order.
select tests.new_account(100000) as lo \gset
select tests.new_account(100000) as hi \gset
select gateway.reserve_admissions(
  tests.h(:'hi'::jsonb ->> 'api_key'), null, null,
  '{"models": ["test/model"], "prompt_bound": 0, "max_tokens": 10}', 1) -> 0 as rh \gset
select gateway.release_reserved_admissions(5, now() + interval '10 seconds') as released \gset
select ok(exists (select from gateway.released_reservations r
                   where r.id = (:'rh'::jsonb ->> 'hold_id')::bigint),
          'the higher account''s reserved admission is released by the server');
select tests.begin(:'lo'::jsonb ->> 'api_key', 10, 0) as lh \gset
select gateway.settle_requests(jsonb_build_array(
  jsonb_build_object('hold_id', (:'rh'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 2,
                     'completion_tokens', 3, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', (:'lh'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 2,
                     'completion_tokens', 3, 'settled_by', 'usage'))) as rl \gset
select is(
  array(select l.account_id from gateway.ledger l
         where l.hold_id in ((:'rh'::jsonb ->> 'hold_id')::bigint, (:'lh'::jsonb ->> 'hold_id')::bigint)
         order by l.id),
  array[(:'lo'::jsonb ->> 'user_id')::bigint, (:'hi'::jsonb ->> 'user_id')::bigint],
  'a released reservation settles in its account''s order, not before every account');
select ok(tests.ledger_ok(), 'every ledger still sums to its balance');

-- Lock order: a released reservation's late settle counts its request again, so it takes its
-- account's counter row even without tokens. Among an account's zero-token settles (made last, as
-- they take only the balance row) it must come first: after another's balance lock, its counter
-- lock waited on an admission holding the counter and waiting for the balance (40P01).
select tests.new_account(100000) as zr \gset
select tests.begin(:'zr'::jsonb ->> 'api_key', 10, 0) as zn \gset
select gateway.reserve_admissions(
  tests.h(:'zr'::jsonb ->> 'api_key'), null, null,
  '{"models": ["test/model"], "prompt_bound": 0, "max_tokens": 10}', 1) -> 0 as zrr \gset
select gateway.release_reserved_admissions(5, now() + interval '10 seconds') as released \gset
select ok(exists (select from gateway.released_reservations r
                   where r.id = (:'zrr'::jsonb ->> 'hold_id')::bigint),
          'the reserved admission is released by the server');
select gateway.settle_requests(jsonb_build_array(
  jsonb_build_object('hold_id', (:'zn'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 0,
                     'completion_tokens', 0, 'web_search_requests', 1, 'settled_by', 'usage'),
  jsonb_build_object('hold_id', (:'zrr'::jsonb ->> 'hold_id')::bigint, 'prompt_tokens', 0,
                     'completion_tokens', 0, 'web_search_requests', 1, 'settled_by', 'usage'))) as zz \gset
select is(
  array(select l.hold_id from gateway.ledger l
         where l.hold_id in ((:'zn'::jsonb ->> 'hold_id')::bigint, (:'zrr'::jsonb ->> 'hold_id')::bigint)
         order by l.id),
  array[(:'zrr'::jsonb ->> 'hold_id')::bigint, (:'zn'::jsonb ->> 'hold_id')::bigint],
  'a released reservation''s zero-token settle (it takes the counter row) before the account''s other zero-token settles');

select * from finish();
rollback;
