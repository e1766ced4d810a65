-- Credits: settle exactly once, void, overrun, model pricing, and ledger = balance throughout.
begin;
\ir _helpers.sql
select plan(33);

select tests.new_account(1000) as a \gset
select :'a'::jsonb ->> 'api_key' as key \gset

-- Settle exactly once -----------------------------------------------------------------------------
select tests.begin(:'key', 100, 10) as b \gset
select tests.settle(:'b', 12, 30) as s \gset
select is(:'s'::jsonb ->> 'settled', 'true', 'a hold settles');
select is((:'s'::jsonb ->> 'credits_charged')::bigint, 42::bigint,
          'the charge is the usage upstream reported (12 + 30 tokens, 1 credit each)');
select is((:'s'::jsonb ->> 'balance_after')::bigint, 958::bigint, 'balance_after = 1000 - 42');
select is(tests.held(:'a'), 0::bigint, 'the rest of the hold is released');
select is(tests.settle(:'b', 12, 30), '{"settled": false, "reason": "already_settled"}'::jsonb,
          'a second settle changes nothing and says already_settled');
select is(tests.balance(:'a'), 958::bigint, 'the second settle charged nothing');
select is(gateway.settle_request(-1, '{"prompt_tokens":1,"completion_tokens":1,"settled_by":"usage"}') ->> 'reason', 'unknown_hold',
          'settling a hold that never existed says unknown_hold');
select is(
  (select row(model, prompt_tokens, completion_tokens, total_tokens, credits_charged, credits_held, status,
              settled_by, latency_ms, generation_id, upstream_cost)::text
     from gateway.usage_records where hold_id = (:'b'::jsonb ->> 'hold_id')::bigint),
  row('test/model', 12, 30, 42, 42::bigint, 110::bigint, 'success', 'usage', 100, 'gen-test', 0.0001)::text,
  'the usage record keeps model, tokens, charge, hold, status, latency, generation id, upstream cost');
select is(
  (select row(kind, amount, balance_after)::text from gateway.ledger
    where hold_id = (:'b'::jsonb ->> 'hold_id')::bigint),
  row('charge', -42::bigint, 958::bigint)::text, 'the charge is one ledger row with the balance after');

-- Void ----------------------------------------------------------------------------------------------
select tests.begin(:'key', 50) as v \gset
select is(tests.held(:'a'), 50::bigint, 'a second request holds 50');
select is(gateway.void_request((:'v'::jsonb ->> 'hold_id')::bigint, 'upstream refused'),
          jsonb_build_object('voided', true, 'hold_id', (:'v'::jsonb ->> 'hold_id')::bigint,
                             'released_credits', 50),
          'void releases the hold');
select is(tests.held(:'a'), 0::bigint, 'nothing is held after the void');
select is(tests.balance(:'a'), 958::bigint, 'nothing is charged by a void');
select is(tests.settle(:'v', 10, 10) ->> 'reason', 'already_settled', 'a voided hold cannot be settled');
select is(gateway.void_request((:'v'::jsonb ->> 'hold_id')::bigint, 'again') ->> 'reason', 'already_settled',
          'nor voided twice');
select is((select row(status, note, credits_charged)::text from gateway.usage_records
            where hold_id = (:'v'::jsonb ->> 'hold_id')::bigint),
          row('voided', 'upstream refused', 0::bigint)::text, 'the void is recorded with its reason');

-- Overrun -------------------------------------------------------------------------------------------
select tests.new_account(100) as o \gset
select tests.begin(:'o'::jsonb ->> 'api_key', 50, 0) as ob \gset
select tests.settle(:'ob', 30, 120) as os \gset
select is((:'os'::jsonb ->> 'credits_charged')::bigint, 150::bigint,
          'usage beyond the hold is charged in full (nothing unbilled)');
select is(:'os'::jsonb ->> 'overrun', 'true', 'and flagged as an overrun');
select is(tests.balance(:'o'), -50::bigint, 'the balance goes negative only by an overrun');
select is(tests.begin(:'o'::jsonb ->> 'api_key', 1, 0) ->> 'reason', 'insufficient_credits',
          'a negative account is refused');
select gateway.add_credits((:'o'::jsonb ->> 'user_id')::bigint, 50, 'top up to zero');
select is(tests.begin(:'o'::jsonb ->> 'api_key', 1, 0) ->> 'reason', 'insufficient_credits',
          'an account at exactly zero is still refused');
select gateway.add_credits((:'o'::jsonb ->> 'user_id')::bigint, 20, 'top up');
select is(tests.begin(:'o'::jsonb ->> 'api_key', 100, 0) ->> 'max_tokens', '20',
          'once positive again it is admitted, capped to its balance');

-- Model pricing ------------------------------------------------------------------------------------
select gateway.set_model_pricing('pricey/model', 2, 3);
select tests.new_account(1000) as p \gset
select tests.begin(:'p'::jsonb ->> 'api_key', 100, 10, p_model => 'pricey/model') as pb \gset
select is((:'pb'::jsonb ->> 'held_credits')::bigint, 320::bigint,
          'the hold prices prompt and completion with the model''s multipliers (10*2 + 100*3)');
select gateway.set_model_pricing('pricey/model', 100, 100);
select is((tests.settle(:'pb', 10, 33) ->> 'credits_charged')::bigint, 119::bigint,
          'settle charges at the price of admission: ceil(10*2 + 33*3)');
select gateway.set_model_pricing('half/model', 0.5, 0.5);
select tests.begin(:'p'::jsonb ->> 'api_key', 10, 0, p_model => 'half/model') as hb \gset
select is((tests.settle(:'hb', 1, 2) ->> 'credits_charged')::bigint, 2::bigint,
          'fractional prices round up: ceil(1*0.5 + 2*0.5) = 2');
select tests.begin(:'p'::jsonb ->> 'api_key', 10, 0, p_model => 'half/model') as hz \gset
select is((tests.settle(:'hz', 0, 0) ->> 'credits_charged')::bigint, 0::bigint, 'zero usage charges nothing');
select is((select count(*) from gateway.ledger where hold_id = (:'hz'::jsonb ->> 'hold_id')::bigint),
          0::bigint, 'and writes no zero ledger row');
select is(
  (select count(*) from gateway.usage_records where hold_id = (:'hz'::jsonb ->> 'hold_id')::bigint),
  1::bigint, 'but still records the request');

-- Grants and adjustments ------------------------------------------------------------------------------
select is((select balance from gateway.add_credits((:'a'::jsonb ->> 'user_id')::bigint, -958, 'refund')),
          0::bigint, 'a negative grant is an adjustment');
select is(tests.error_of(format('select gateway.add_credits(%s, -1)', :'a'::jsonb ->> 'user_id')),
          '22023:invalid_request', 'an adjustment cannot make a balance negative');
select is(tests.error_of(format('select gateway.add_credits(%s, 0)', :'a'::jsonb ->> 'user_id')),
          '22023:invalid_request', 'a zero grant is refused');

-- The money rule ---------------------------------------------------------------------------------------
select ok(tests.ledger_ok(), 'for every account the ledger sums to the balance');
select is(
  (select count(*) from gateway.credit_balances b
    where b.held <> coalesce((select sum(h.amount) from gateway.holds h where h.account_id = b.account_id), 0)),
  0::bigint, 'for every account held = the sum of its open holds');

select * from finish();
rollback;
