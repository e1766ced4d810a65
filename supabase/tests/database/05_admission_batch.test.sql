-- gateway.begin_requests: many admissions in one call, each by begin_request itself, answered in the
-- order given, processed in account order; an element that raises aborts the batch.
begin;
\ir _helpers.sql
select plan(39);

-- One element of a batch, as the edge function sends it (the key's hash as hex).
create function tests.item(
  p_key text,
  p_max_tokens integer default 10,
  p_prompt_tokens integer default 0,
  p_ip text default null,
  p_referrer text default null,
  p_model text default 'test/model'
)
returns jsonb
language sql
as $$
  select jsonb_build_object('key_hash', encode(gateway.hash_key(p_key), 'hex'), 'client_ip', p_ip,
                            'referrer', p_referrer, 'models', jsonb_build_array(p_model),
                            'max_tokens', p_max_tokens, 'prompt_bound', p_prompt_tokens);
$$;

-- Every call of this file at one instant, in the middle of a minute: no window rolls over meanwhile.
select date_trunc('minute', now()) + interval '30 seconds' as t \gset

-- The same as begin_request, in the order given -------------------------------------------------------
-- Twins: x is admitted one request at a time, y by one batch; the answers differ only in ids.
select tests.new_account(1000) as x \gset
select tests.new_account(1000) as y \gset
select :'x'::jsonb ->> 'api_key' as xk, :'y'::jsonb ->> 'api_key' as yk \gset
select jsonb_build_array(tests.begin(:'xk', 100, 10, :'t'), tests.begin(:'xk', 2000, 0, :'t'),
                         tests.begin(:'xk', 500, 0, :'t')) as one_by_one \gset
select gateway.begin_requests(jsonb_build_array(tests.item(:'yk', 100, 10), tests.item(:'yk', 2000, 0),
                                                tests.item(:'yk', 500, 0)), :'t') as batch \gset
select is(
  (select jsonb_agg(e - array['hold_id', 'user_id', 'key_id', 'key_prefix'] order by i)
     from jsonb_array_elements(:'batch'::jsonb) with ordinality b (e, i)),
  (select jsonb_agg(e - array['hold_id', 'user_id', 'key_id', 'key_prefix'] order by i)
     from jsonb_array_elements(:'one_by_one'::jsonb) with ordinality b (e, i)),
  'each element gets what begin_request gives one call after the other (hold, max_tokens, limits …)');
select is(array(select e ->> 'max_tokens' from jsonb_array_elements(:'batch'::jsonb) e),
          array['100', '890', null],
          'a later element sees what the earlier ones held (890 = 1000 - 110 left, then nothing)');
select is(array(select coalesce(e ->> 'user_id', e ->> 'reason') from jsonb_array_elements(:'batch'::jsonb) e),
          array[:'y'::jsonb ->> 'user_id', :'y'::jsonb ->> 'user_id', 'insufficient_credits'],
          'the batch admits for the key''s account, and refuses as begin_request does');
select is(tests.held(:'y'), tests.held(:'x'), 'and holds what the single calls hold');
select is(tests.account_requests(:'y', :'t'), tests.account_requests(:'x', :'t'),
          'and counts what they count');

-- Accounts mixed: answered in the order given, admitted in account order ----------------------------
select tests.new_account(100000) as a \gset
select tests.new_account(100000) as b \gset
select :'a'::jsonb ->> 'api_key' as ak, :'b'::jsonb ->> 'api_key' as bk,
       (:'a'::jsonb ->> 'user_id')::bigint as aid, (:'b'::jsonb ->> 'user_id')::bigint as bid \gset
select gateway.begin_requests(jsonb_build_array(
  tests.item(:'bk', 11), tests.item(:'ak', 12), tests.item(:'bk', 13), tests.item(:'ak', 14)), :'t') as m \gset
select is(array(select (e ->> 'user_id')::bigint from jsonb_array_elements(:'m'::jsonb) e),
          array[:bid, :aid, :bid, :aid]::bigint[], 'results come back in the order given');
select is(array(select (e ->> 'max_tokens')::int from jsonb_array_elements(:'m'::jsonb) e),
          array[11, 12, 13, 14], 'each result belongs to its element');
select ok(:aid < :bid, 'a''s account id is below b''s');
select ok((:'m'::jsonb -> 1 ->> 'hold_id')::bigint < (:'m'::jsonb -> 3 ->> 'hold_id')::bigint
          and (:'m'::jsonb -> 3 ->> 'hold_id')::bigint < (:'m'::jsonb -> 0 ->> 'hold_id')::bigint
          and (:'m'::jsonb -> 0 ->> 'hold_id')::bigint < (:'m'::jsonb -> 2 ->> 'hold_id')::bigint,
          'admitted in account order, then as given (holds numbered a, a, b, b)');
select is(array[tests.held(:'a'), tests.held(:'b')], array[26, 24]::bigint[],
          'each account holds its own elements');

-- Credits for only some of one account's elements ----------------------------------------------------
select tests.new_account(25) as c \gset
select :'c'::jsonb ->> 'api_key' as ck \gset
select gateway.begin_requests(jsonb_build_array(
  tests.item(:'ck'), tests.item(:'ck'), tests.item(:'ck'), tests.item(:'ck')), :'t') as cr \gset
select is(array(select coalesce(e ->> 'reason', 'ok') from jsonb_array_elements(:'cr'::jsonb) e),
          array['ok', 'ok', 'ok', 'insufficient_credits'],
          'credits for 2.5 requests: two admitted in full, one cut down, the last refused');
select is(array(select e ->> 'max_tokens' from jsonb_array_elements(:'cr'::jsonb) e),
          array['10', '10', '5', null], 'the third gets what is left (5 tokens)');
select is(array[tests.balance(:'c'), tests.held(:'c')], array[25, 25]::bigint[],
          'all 25 credits held, available 0, never below');
select is((tests.account_requests(:'c', :'t') ->> 'requests_this_minute')::int, 3,
          'the refused element is not counted');

-- A request limit inside one batch -------------------------------------------------------------------
select tests.new_account(100000) as r \gset
select :'r'::jsonb ->> 'api_key' as rk \gset
select from gateway.set_rate_limits((:'r'::jsonb ->> 'user_id')::bigint, '{"requests_per_minute":2}');
select gateway.begin_requests(jsonb_build_array(tests.item(:'rk'), tests.item(:'ak'), tests.item(:'rk'),
                                                tests.item(:'rk')), :'t') as rr \gset
select is(array(select coalesce(e ->> 'reason', 'ok') from jsonb_array_elements(:'rr'::jsonb) e),
          array['ok', 'ok', 'ok', 'rate_limited'], 'a limit of 2 per minute admits two of three');
select is(:'rr'::jsonb -> 3 ->> 'window', 'requests_per_minute', 'the third names its window');
select is(:'rr'::jsonb -> 3 -> 'limits' -> 'requests' ->> 'remaining', '0', 'and has none remaining');
select is((tests.account_requests(:'r', :'t') ->> 'requests_this_minute')::int, 2,
          'the counter stays at the limit: 2');

-- Unknown, revoked and rotated keys -------------------------------------------------------------------
select gateway.create_key(tests.h(:'ak'), null, null, '{"name":"revoked"}') as rv \gset
select from gateway.deactivate_key((:'rv'::jsonb ->> 'key_id')::bigint);
select (:'b'::jsonb ->> 'key_id')::bigint as b_key \gset
select gateway.rotate_key(tests.h(:'bk'), null, null, :b_key, 3600) ->> 'api_key' as bk2 \gset
select tests.held(:'a') as a_held, tests.held(:'b') as b_held \gset
select gateway.begin_requests(jsonb_build_array(
  tests.item(:'bk', 7), tests.item(:'ak', 8), tests.item('gw_live_not_a_key'),
  tests.item(:'rv'::jsonb ->> 'api_key'), tests.item(:'bk2', 9)), :'t') as k \gset
select is(array(select coalesce(e ->> 'reason', 'ok') from jsonb_array_elements(:'k'::jsonb) e),
          array['ok', 'ok', 'invalid_api_key', 'key_inactive', 'ok'],
          'an unknown and a revoked key refuse only themselves');
select is((:'k'::jsonb -> 0 ->> 'user_id')::bigint, :bid::bigint,
          'a rotated key''s previous secret is admitted within its grace, for its account');
select ok((:'k'::jsonb -> 1 ->> 'hold_id')::bigint < (:'k'::jsonb -> 0 ->> 'hold_id')::bigint,
          'and ordered by that account, like its current secret (a before b)');
select is(array[tests.held(:'a') - :a_held, tests.held(:'b') - :b_held], array[8, 16]::bigint[],
          'refused elements hold nothing');
select is(gateway.begin_requests(jsonb_build_array(tests.item(:'bk', 7)), :'t' ::timestamptz
                                 + interval '2 hours') -> 0 ->> 'reason',
          'invalid_api_key', 'past the grace the previous secret is refused');

-- An element that raises aborts the whole batch -------------------------------------------------------
select tests.held(:'a') as a_held, tests.held(:'b') as b_held,
       tests.account_requests(:'a', :'t') as a_count,
       (select count(*) from gateway.holds) as holds,
       (select requests_used from gateway.key_counters where key_id = (:'a'::jsonb ->> 'key_id')::bigint)
         as a_used \gset
select is(
  tests.error_of(format('select gateway.begin_requests(%L, %L)',
                        jsonb_build_array(tests.item(:'bk2'), tests.item(:'ak'), tests.item(:'bk2', 0)), :'t')),
  '22023:invalid_request', 'an element with max_tokens 0 raises 22023 invalid_request');
select is(array[tests.held(:'a'), tests.held(:'b'), (select count(*) from gateway.holds)],
          array[:a_held, :b_held, :holds]::bigint[],
          'and nothing of the batch is left: no hold, even of the elements admitted before it');
select is(tests.account_requests(:'a', :'t'), :'a_count'::jsonb, 'no count either');
select is((select requests_used from gateway.key_counters where key_id = (:'a'::jsonb ->> 'key_id')::bigint),
          :a_used::bigint, 'nor a use of the key');
select is(
  tests.error_of(format('select gateway.begin_requests(%L)', jsonb_build_array(tests.item(:'ak'),
                        tests.item(:'ak') || jsonb_build_object('prompt_bound', -1)))),
  '22023:invalid_request', 'a negative prompt_bound: the same');
select is(
  tests.error_of(format('select gateway.begin_requests(%L)', jsonb_build_array(
    tests.item(:'ak') || jsonb_build_object('key_hash', upper(encode(tests.h(:'ak'), 'hex')))))),
  '22023:invalid_request', 'a key_hash that is not 64 lower-case hex digits raises');
select is(tests.error_of($$select gateway.begin_requests('[{"model":"m","max_tokens":1}]')$$),
          '22023:invalid_request', 'so does a missing key_hash');

-- Not an array, empty ----------------------------------------------------------------------------------
select is(tests.error_of(format('select gateway.begin_requests(%L)', tests.item(:'ak'))),
          '22023:invalid_request', 'an object instead of an array raises 22023 invalid_request');
select is(tests.error_of('select gateway.begin_requests(null)'), '22023:invalid_request',
          'so does null');
select is(gateway.begin_requests('[]'), '[]'::jsonb, 'an empty batch gives []');

-- Who may call ------------------------------------------------------------------------------------------
select ok(not has_function_privilege('anon', 'gateway.begin_requests(jsonb, timestamptz)', 'execute')
          and not has_function_privilege('authenticated', 'gateway.begin_requests(jsonb, timestamptz)',
                                         'execute'),
          'anon and authenticated cannot execute begin_requests');
set local role anon;
select is(tests.error_of('select gateway.begin_requests(''[]'')'), '42501:', 'anon cannot call it');
reset role;
set local role gateway_api;
select is(tests.error_of('select gateway.begin_requests(''[]'')'), 'ok', 'gateway_api can');
reset role;

-- Settled by settle_requests, the books balance ----------------------------------------------------------
select array(select (v ->> 'user_id')::bigint from unnest(array[:'x', :'y', :'a', :'b', :'c', :'r']::jsonb[]) v)
         as ids \gset
select gateway.settle_requests(
  (select jsonb_agg(jsonb_build_object('hold_id', h.id, 'prompt_tokens', h.prompt_estimate,
                                       'completion_tokens', h.max_tokens - h.id % 3,
                                       'settled_by', 'usage') order by h.id desc)
     from gateway.holds h
    where h.account_id = any(:'ids'::bigint[])),
  :'t') as s \gset
select ok((select bool_and((e ->> 'settled')::boolean) from jsonb_array_elements(:'s'::jsonb) e)
          and jsonb_array_length(:'s'::jsonb) = 17, 'every hold of the batches settles (17)');
select is(
  (select count(*) from gateway.holds h
    where h.account_id = any(:'ids'::bigint[])),
  0::bigint, 'no hold is left');
select ok(tests.ledger_ok() and not exists (select from gateway.credit_balances where balance < 0 or held < 0),
          'every ledger sums to its balance, no balance or held below zero');

select * from finish();
rollback;
