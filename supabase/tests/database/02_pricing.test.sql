-- Pricing (20261202120000_cost_exact_pricing): what a request is held and charged, in both modes, by
-- every price category, with exact expected credits; the hold is an upper bound of the charge for
-- any usage its facts allow; overruns are charged and listed; a settle after expiry still charges.
-- Prices are per token in USD; usd_per_credit is 0.00002 (1 credit = $0.00002).
begin;
\ir _helpers.sql
select plan(110);
-- A late settle raises a WARNING for the server log; not for this output.
set local client_min_messages = error;

select '2026-12-02 10:00:00+00'::timestamptz as t \gset

-- A catalog of our own (OpenRouter's /models shape), replacing whatever the stack loaded.
select gateway.store_models_cache($$[
  {"id": "test/plain", "canonical_slug": "test/plain-2026", "pricing": {"prompt": "0.000002", "completion": "0.00001"}},
  {"id": "test/cache", "pricing": {"prompt": "0.000003", "completion": "0.000015", "input_cache_read": "0.0000003",
                                   "input_cache_write": "0.00000375", "internal_reasoning": "0"}},
  {"id": "test/reason", "pricing": {"prompt": "0.000001", "completion": "0.000004", "internal_reasoning": "0.000008"}},
  {"id": "test/fees", "pricing": {"prompt": "0.000001", "completion": "0.000002", "request": "0.005",
                                  "web_search": "0.01", "image": "0.001"}},
  {"id": "test/free", "pricing": {"prompt": "0.000001", "completion": "0.000001"}},
  {"id": "test/free:free", "pricing": {"prompt": "0", "completion": "0"}},
  {"id": "test/long", "pricing": {"prompt": 0.000001, "completion": "0.000002",
                                  "overrides": [{"min_prompt_tokens": 200000, "prompt": "0.000002", "completion": "0.000004"}]}},
  {"id": "test/w1h", "pricing": {"prompt": "0.000001", "completion": "0.000001", "input_cache_write": "0.00000375",
                                 "input_cache_write_1h": "0.000006"}},
  {"id": "test/dear", "pricing": {"prompt": "0.00001", "completion": "0.00005"}},
  {"id": "test/unpriced", "pricing": {"prompt": "-1", "completion": "-1"}},
  {"id": "test/noprice"},
  {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}}
]$$::jsonb, null, :'t') is not null as stored \gset

-- The catalog ---------------------------------------------------------------------------------------
select is((select array_agg(model order by model) from gateway.model_catalog),
          array['test/cache', 'test/dear', 'test/fees', 'test/free', 'test/free:free', 'test/long',
                'test/plain', 'test/reason', 'test/w1h'],
          'store_models_cache prices the catalog: the rest of it is gone, unpriceable models (-1, none) are left out');
select is((select row(prompt, completion)::text from gateway.model_catalog where model = 'test/long'),
          row(0.000002, 0.000004)::text, 'a long-context override: the dearest price of each category is kept');
select is((select input_cache_write from gateway.model_catalog where model = 'test/w1h'), 0.000006,
          'input_cache_write_1h: the dearer cache write is kept');
select is((select prompt::text from gateway.model_catalog where model = 'test/long'), '0.000002',
          'prices given as JSON numbers are read exactly');
select gateway.store_models_cache('[]', null, :'t') is not null as again \gset
select is((select count(*) from gateway.model_catalog), 9::bigint,
          'an answer without a priceable model leaves the catalog as it was');

-- Accounts with ample limits, so only credits decide.
create function tests.acct(p_credits bigint) returns jsonb
language plpgsql as $$
declare
  v jsonb := tests.new_account(p_credits);
begin
  perform gateway.set_rate_limits((v ->> 'user_id')::bigint,
    '{"requests_per_minute":1000000,"requests_per_hour":1000000,"requests_per_day":1000000,
      "tokens_per_minute":1000000000,"tokens_per_hour":1000000000,"tokens_per_day":1000000000}');
  return v;
end
$$;
create function tests.b(p_account jsonb, p_facts jsonb, p_now timestamptz) returns jsonb
language sql as $$
  select gateway.begin_request(gateway.hash_key(p_account ->> 'api_key'), null, null, p_facts, p_now)
$$;
create function tests.s(p_begin jsonb, p_usage jsonb, p_now timestamptz) returns jsonb
language sql as $$
  select gateway.settle_request((p_begin ->> 'hold_id')::bigint,
                                '{"settled_by":"usage","status":"success"}'::jsonb || p_usage, p_now)
$$;
-- Admit, then settle with a usage: {hold, charge, record} for exact assertions.
create function tests.run(p_account jsonb, p_facts jsonb, p_usage jsonb, p_now timestamptz)
returns jsonb
language plpgsql as $$
declare
  v_b jsonb := tests.b(p_account, p_facts, p_now);
  v_s jsonb;
begin
  if not (v_b ->> 'ok')::boolean then
    return jsonb_build_object('refused', v_b ->> 'reason');
  end if;
  v_s := tests.s(v_b, p_usage, p_now);
  return jsonb_build_object('hold', (v_b ->> 'held_credits')::bigint,
                            'max_tokens', (v_b ->> 'max_tokens')::bigint,
                            'charge', (v_s ->> 'credits_charged')::bigint,
                            'usd', v_s ->> 'upstream_usd', 'begin', v_b, 'settle', v_s);
end
$$;

select tests.acct(1000000) as a \gset

-- Flat mode (the default): credits per token × multipliers + fees at usd_per_credit ----------------
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['150', '150'],
          'flat: 100 + 50 tokens at 1 credit each, held and charged');
select tests.run(:'a', '{"models":["test/fees"],"prompt_bound":10,"parts":{"images":1},"web_results":2,"max_tokens":10}',
                 '{"model":"test/fees","prompt_tokens":10,"completion_tokens":10,"web_search_requests":2,"images":1}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'hold', '8320',
          'flat hold: (10 + 3000 per image + 2000 per web result) + 10 tokens, and the request, search and image fees (1300)');
select is(:'r'::jsonb ->> 'charge', '1320',
          'flat charge: 20 tokens + (0.005 request + 2 × 0.01 searches + 0.001 image) / 0.00002');
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":10}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":10,"cached_tokens":80,"cache_write_tokens":20,"reasoning_tokens":5}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '110', 'flat: cached, cache-write and reasoning tokens are tokens like the rest');
select tests.run(:'a', '{"models":["test/free:free"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/free:free","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['0', '0'],
          'flat: a free variant the catalog lists holds and costs nothing');
select is(:'r'::jsonb #>> '{begin,pricing,dearest,free}', 'true', '… and its pricing says it is free');
select tests.run(:'a', '{"models":["test/free:free"],"prompt_bound":100,"web_results":1,"max_tokens":50}',
                 '{"model":"test/free:free","prompt_tokens":2100,"completion_tokens":50,"web_search_requests":1}',
                 :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['350', '350'],
          'flat: a free model''s web search is still a fee (0.007 USD per search, 350 credits)');
select tests.run(:'a', '{"models":["test/free"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/free","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '150', 'flat: its paid base model is not free');
select is(tests.b(:'a', '{"models":["test/plain:free"],"prompt_bound":1,"max_tokens":1}', :'t') - 'limits',
          '{"ok":false,"reason":"model_not_found","model":"test/plain:free",
            "message":"Model test/plain:free is not in the model catalog (a :free variant only if the catalog lists it)"}'::jsonb,
          'a :free variant the catalog does not list is an unknown model, never priced at zero');
select is(tests.b(:'a', '{"models":["test/nope"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'reason', 'model_not_found',
          'flat: a model absent from the loaded catalog is refused');
select is(tests.b(:'a', '{"models":["test/plain","test/nope"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'model', 'test/nope',
          '… also as a fallback, and the refusal names it');
select is((select count(*) from gateway.holds h where h.account_id = (:'a'::jsonb ->> 'user_id')::bigint), 0::bigint,
          'refused for pricing: nothing held');
select is(gateway.window_usage('account', (:'a'::jsonb ->> 'user_id')::bigint, :'t') ->> 'requests_this_minute', '6',
          '… and nothing counted (only the 6 admitted requests)');

-- Overrides: exact id, the catalog id a variant resolves to, the longest prefix ---------------------
select gateway.set_model_pricing('test/plain', 2, 3) is not null as o1 \gset
select gateway.set_model_pricing('test/*', 0.5, 0.5) is not null as o2 \gset
select gateway.set_model_pricing('t*', 7, 7) is not null as o3 \gset
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['350', '350'],
          'flat: an exact override (2, 3) beats the patterns');
select tests.run(:'a', '{"models":["test/plain:nitro"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['350', '350'],
          'a :nitro variant resolves to its base model''s row and override');
select tests.run(:'a', '{"models":["test/plain:floor"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain:floor","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '350', '… and so does :floor');
select tests.run(:'a', '{"models":["test/cache"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/cache","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '75', 'a pattern override (test/* at 0.5, 0.5) beats a shorter one (t* at 7)');
select tests.run(:'a', '{"models":["test/free:free"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/free:free","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '0', 'flat: a free model stays free under a pattern override');
delete from gateway.model_pricing where model in ('test/*', 't*');

-- Cost mode: upstream USD × (1 + markup/100) / usd_per_credit -------------------------------------
select gateway.set_setting('pricing_mode', 'cost') is not null as m1 \gset
select gateway.set_setting('markup_percent', '25') is not null as m2 \gset
delete from gateway.model_pricing where model = 'test/plain';
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50,"cost":"0.0004"}', :'t') as r \gset
select is(:'r'::jsonb ->> 'hold', '44', 'cost hold: (100 × 0.000002 + 50 × 0.00001) × 1.25 / 0.00002 = 43.75 → 44');
select is(:'r'::jsonb ->> 'charge', '25', 'cost charge: OpenRouter''s usage.cost 0.0004 × 1.25 / 0.00002 = 25');
select is(:'r'::jsonb ->> 'usd', '0.0004', '… and that cost is the upstream USD recorded');
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select ok(:'r'::jsonb ->> 'charge' = '44' and (:'r'::jsonb ->> 'usd')::numeric = 0.0007,
          'cost, no usage.cost: computed from the held prices, 0.0007 USD → 44');
select tests.run(:'a', '{"models":["test/cache"],"prompt_bound":1000,"max_tokens":100}',
                 '{"model":"test/cache","prompt_tokens":1000,"completion_tokens":100,"cached_tokens":600,"cache_write_tokens":300}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '195',
          'cost: 100 plain + 600 cache-read + 300 cache-write prompt tokens and 100 completion = 0.003105 USD → 195');
select is(:'r'::jsonb ->> 'hold', '329',
          'cost hold: the whole prompt bound at the dearer cache-write price, 0.00525 USD → 329');
select ok((select cached_tokens = 600 and cache_write_tokens = 300 and reasoning_tokens = 0
                   and upstream_usd = 0.003105 and credits_charged = 195 and credits_held = 329
                   and pricing_mode = 'cost' and usd_per_credit = 0.00002
                   and (price).input_cache_write = 0.00000375 and (price).markup_percent = 25
              from gateway.usage_records where hold_id = (:'r'::jsonb #>> '{begin,hold_id}')::bigint),
          'the usage record keeps the tokens by kind, the upstream USD, the mode, markup and prices used');
select tests.run(:'a', '{"models":["test/reason"],"prompt_bound":100,"max_tokens":200}',
                 '{"model":"test/reason","prompt_tokens":100,"completion_tokens":200,"reasoning_tokens":150}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '94', 'cost: 150 reasoning tokens at their own price, 50 at completion: 0.0015 USD → 94');
select is(:'r'::jsonb ->> 'hold', '107', 'cost hold: max_tokens at the dearer reasoning price: 0.0017 USD → 107');
select tests.run(:'a', '{"models":["test/fees"],"prompt_bound":10,"parts":{"images":1},"web_results":2,"max_tokens":10}',
                 '{"model":"test/fees","prompt_tokens":10,"completion_tokens":10,"web_search_requests":2,"images":1}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '1627', 'cost: request, web search and image fees: 0.02603 USD → 1627');
select is(:'r'::jsonb ->> 'hold', '2065',
          'cost hold: 7010 prompt + 10 completion tokens and every fee: 0.03303 USD → 2065');
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":0,"web_results":3,"max_tokens":1}',
                 '{"model":"test/plain","prompt_tokens":0,"completion_tokens":0,"web_search_requests":3}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '1313', 'cost: a model without a web_search price pays web_result_usd (0.007) per search');
select tests.run(:'a', '{"models":["test/free:free"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/free:free","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['0', '0'], 'cost: a free variant costs nothing');
select is(tests.b(:'a', '{"models":["test/nope"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'reason', 'model_not_found',
          'cost: an unknown model is refused');
select gateway.set_model_markup('test/plain', 100) is not null as o4 \gset
select tests.run(:'a', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '70', 'cost: a markup override (100 %) beats the setting: 0.0007 × 2 / 0.00002');
select gateway.set_model_markup('test/*', 50) is not null as o5 \gset
select tests.run(:'a', '{"models":["test/reason"],"prompt_bound":100,"max_tokens":200}',
                 '{"model":"test/reason","prompt_tokens":100,"completion_tokens":200,"reasoning_tokens":150}',
                 :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '113', 'cost: a pattern''s markup (50 %): 0.0015 × 1.5 / 0.00002 = 112.5 → 113');
delete from gateway.model_pricing where model = 'test/*';
select gateway.set_model_pricing('test/dear', 2, 3) is not null as o6 \gset
select tests.run(:'a', '{"models":["test/dear"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/dear","prompt_tokens":100,"completion_tokens":50,"cost":"0.0035"}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge', :'r'::jsonb ->> 'usd'], array['350', '350', '0.0035'],
          'cost: a fixed-price override charges its multipliers, and records the upstream USD for the margin');
delete from gateway.model_pricing where model = 'test/dear';

-- Candidates: the hold at the dearest of them, the charge at the one that served -----------------
select tests.run(:'a', '{"models":["test/reason","test/dear"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/reason","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'hold', '219', 'a models list is held at the dearest candidate: 0.0035 USD → 219');
select is(:'r'::jsonb ->> 'charge', '19', '… and charged at the one that served (test/reason: 0.0003 USD → 18.75 → 19)');
select tests.run(:'a', '{"models":["test/reason","test/dear"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"someone/else","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'charge', '219', 'a served model that is not a candidate is charged at the dearest prices');
select tests.run(:'a', '{"models":["test/plain","test/dear"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain-2026","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(array[:'r'::jsonb ->> 'hold', :'r'::jsonb ->> 'charge'], array['350', '70'],
          'the served model may be named by its canonical slug (held at the dearest markup, 100 %)');
select tests.run(:'a', '{"models":["openrouter/auto"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/reason","prompt_tokens":100,"completion_tokens":50}', :'t') as r \gset
select is(:'r'::jsonb ->> 'hold', '850',
          'openrouter/auto is held at the dearest of the whole catalog, category by category, and the dearest markup: 0.0085 USD × 2 → 850');
select is(:'r'::jsonb ->> 'charge', '19', '… and charged at the served model''s price');
select is(:'r'::jsonb #>> '{begin,pricing,dearest,request}', '0.005', 'its dearest request fee is the catalog''s');

-- The answer carries the prices as exact text, and charge_for reproduces the settle ----------------
select tests.b(:'a', '{"models":["test/cache","test/reason"],"prompt_bound":1000,"max_tokens":100}', :'t') as b \gset
select is((:'b'::jsonb -> 'pricing') - 'candidates' - 'dearest', '{"mode":"cost","usd_per_credit":"0.00002"}'::jsonb,
          'the answer gives the mode and usd_per_credit');
select is(:'b'::jsonb #> '{pricing,candidates,0}',
          '{"model":"test/cache","catalog_id":"test/cache","canonical_slug":null,"prompt":"0.000003",
            "completion":"0.000015","input_cache_read":"0.0000003","input_cache_write":"0.00000375",
            "internal_reasoning":"0.000015","request":"0","web_search":"0.007","image":"0",
            "prompt_multiplier":"1","completion_multiplier":"1","markup_percent":"25","fixed":false,
            "by_cost":true,"free":false}'::jsonb,
          'each candidate''s prices as decimal text, fallbacks applied (reasoning at the completion price, web at web_result_usd)');
select gateway.charge_for(:'b'::jsonb -> 'pricing',
         '{"model":"test/cache","prompt_tokens":900,"completion_tokens":77,"cached_tokens":500,"cache_write_tokens":100,"reasoning_tokens":30}')
       as cf \gset
select ok(:'cf'::jsonb ->> 'credits' = '162' and (:'cf'::jsonb ->> 'upstream_usd')::numeric = 0.00258
          and :'cf'::jsonb ->> 'model' = 'test/cache',
          'charge_for(pricing, usage) is the charge without a hold: 0.00258 USD → 162');
select is(tests.s(:'b', '{"model":"test/cache","prompt_tokens":900,"completion_tokens":77,"cached_tokens":500,"cache_write_tokens":100,"reasoning_tokens":30}', :'t') ->> 'credits_charged',
          '162', '… the settle charges exactly that');

-- A catalog change during a request changes neither its hold nor its charge ----------------------
select tests.b(:'a', '{"models":["test/reason"],"prompt_bound":100,"max_tokens":200}', :'t') as b \gset
select gateway.store_models_cache($$[
  {"id": "test/reason", "pricing": {"prompt": "0.00001", "completion": "0.00004", "internal_reasoning": "0.00008"}},
  {"id": "test/plain", "pricing": {"prompt": "0.000002", "completion": "0.00001"}}
]$$::jsonb, null, :'t') is not null as changed \gset
select is(tests.s(:'b', '{"model":"test/reason","prompt_tokens":100,"completion_tokens":200,"reasoning_tokens":150}', :'t') ->> 'credits_charged',
          '94', 'a request admitted before a price change is charged at the prices it was admitted at');
select is(tests.b(:'a', '{"models":["test/reason"],"prompt_bound":100,"max_tokens":200}', :'t') ->> 'held_credits', '1063',
          'the next request is held at the new prices (0.0170 USD → 1063)');
select is(tests.b(:'a', '{"models":["test/cache"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'reason', 'model_not_found',
          'a model the new catalog no longer lists is unknown');
select gateway.set_setting('pricing_mode', 'flat') is not null as m3 \gset

-- An empty catalog: flat serves at the multipliers, cost refuses -----------------------------------
savepoint empty_catalog;
delete from gateway.model_catalog;
select is(tests.b(:'a', '{"models":["any/model"],"prompt_bound":10,"max_tokens":10}', :'t') ->> 'held_credits', '20',
          'flat, catalog never loaded: served at 1 credit per token');
select gateway.set_setting('pricing_mode', 'cost') is not null as m4 \gset
select is(tests.b(:'a', '{"models":["any/model"],"prompt_bound":10,"max_tokens":10}', :'t') ->> 'reason', 'pricing_unavailable',
          'cost, catalog never loaded: 503 pricing_unavailable');
rollback to savepoint empty_catalog;

-- The transitional signatures are gone: every admission is by facts, every settle by usage ---------
select ok(not exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                       where n.nspname = 'gateway'
                         and p.proname in ('begin_request', 'reserve_admissions', 'settle_request')
                         and not (p.proargtypes::regtype[] && array['jsonb'::regtype])),
          'begin_request, reserve_admissions and settle_request exist only in their jsonb forms');

-- Credits decide max_tokens, and a clear 402 ----------------------------------------------------------
select tests.acct(500) as p \gset
select tests.b(:'p', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":1000}', :'t') as b \gset
select is(array[:'b'::jsonb ->> 'max_tokens', :'b'::jsonb ->> 'held_credits'], array['400', '500'],
          'max_tokens is capped to what the available credits afford after the prompt');
select tests.acct(100) as p \gset
select tests.b(:'p', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":1000}', :'t') as b \gset
select is(array[:'b'::jsonb ->> 'reason', :'b'::jsonb ->> 'needed_credits', :'b'::jsonb ->> 'available_credits'],
          array['insufficient_credits', '101', '100'], 'not even one completion token affordable: 402, with what one would cost');
select ok(:'b'::jsonb ->> 'message' like '%101 credits%1 more than the 100 available%',
          'the message says the worst case and by how much it exceeds what the account can spend');
select is(tests.b(:'p', '{"models":["test/plain"],"prompt_bound":99,"max_tokens":1000}', :'t') ->> 'max_tokens', '1',
          'exactly affordable: one token');

-- :online searches the web: its results are held for ----------------------------------------------
select tests.b(:'a', '{"models":["test/plain:online"],"prompt_bound":0,"max_tokens":1}', :'t') as b \gset
select is(:'b'::jsonb ->> 'held_credits', '11751',
          ':online holds 5 web results: 5 × 2000 prompt tokens + 1 + 5 searches at 0.007 USD (1750 credits)');

-- Overruns: charged in full, recorded, listed, and the account refused until positive --------------
select tests.acct(500) as o \gset
select tests.b(:'o', '{"models":["test/plain"],"prompt_bound":10,"max_tokens":10}', :'t') as b \gset
select is(tests.s(:'b', '{"model":"test/plain","prompt_tokens":1000,"completion_tokens":10}', :'t')
            - 'upstream_usd' - 'hold_id',
          '{"settled":true,"credits_charged":1010,"held_credits":20,"overrun":true,"overrun_credits":990,
            "late":false,"balance_after":-510}'::jsonb,
          'a usage above the hold is charged in full (the operator paid for it)');
select is((select row(overrun_credits, prompt_bound, prompt_tokens)::text from gateway.overruns
            where hold_id = (:'b'::jsonb ->> 'hold_id')::bigint),
          row(990, 10, 1000)::text, 'gateway.overruns lists it, with the bound it was held for');
select is(tests.b(:'o', '{"models":["test/plain"],"prompt_bound":0,"max_tokens":1}', :'t') ->> 'reason', 'insufficient_credits',
          'the account is refused until its balance is positive again');
select ok((select overruns_today >= 1 and overrun_credits_today >= 990 from gateway.monitor_at(:'t')),
          'the monitor counts overruns');

-- Expiry by expires_at, and a late settle charges once ----------------------------------------------
select tests.acct(100000) as e \gset
select tests.b(:'e', '{"models":["test/plain"],"prompt_bound":10,"max_tokens":10,"lifetime_seconds":3600}', :'t') as long \gset
select tests.b(:'e', '{"models":["test/plain"],"prompt_bound":10,"max_tokens":10,"lifetime_seconds":60}', :'t') as short \gset
select ok((:'long'::jsonb ->> 'expires_at')::timestamptz = :'t'::timestamptz + interval '6 seconds'
          and (:'short'::jsonb ->> 'expires_at')::timestamptz = :'t'::timestamptz + interval '6 seconds',
          'a hold''s first lease is hold_lease_seconds, whatever its lifetime');
select gateway.note_holds(array[(:'long'::jsonb ->> 'hold_id')::bigint, (:'short'::jsonb ->> 'hold_id')::bigint],
                          array[null, null]::text[], :'t'::timestamptz + interval '1000 seconds');
select ok((select expires_at from gateway.holds where id = (:'long'::jsonb ->> 'hold_id')::bigint)
            = :'t'::timestamptz + interval '1006 seconds'
          and (select expires_at from gateway.holds where id = (:'short'::jsonb ->> 'hold_id')::bigint)
            = :'t'::timestamptz + interval '900 seconds',
          'renewed leases end at most at admission + the greater of hold_timeout_seconds and the lifetime');
select gateway.expire_stale_holds(:'t'::timestamptz + interval '901 seconds') as swept \gset
select ok(exists (select from gateway.holds where id = (:'long'::jsonb ->> 'hold_id')::bigint)
          and not exists (select from gateway.holds where id = (:'short'::jsonb ->> 'hold_id')::bigint),
          'the sweeper expires by expires_at: the short one after 900 s, not the long-lived one');
select tests.balance(:'e') as before_late \gset
select tests.s(:'short', '{"model":"test/plain","prompt_tokens":10,"completion_tokens":7}',
               :'t'::timestamptz + interval '1000 seconds') as late \gset
select is(:'late'::jsonb - 'upstream_usd' - 'hold_id' - 'balance_after',
          '{"settled":true,"credits_charged":17,"held_credits":20,"overrun":false,"overrun_credits":0,"late":true}'::jsonb,
          'a settle after its hold expired posts the charge and says it is late');
select is(tests.balance(:'e'), (:before_late - 17)::bigint, '… the balance is charged');
select is((select row(status, credits_charged, settled_late, settled_by)::text from gateway.usage_records
            where hold_id = (:'short'::jsonb ->> 'hold_id')::bigint),
          row('success', 17, true, 'usage')::text, '… the expired usage record became the real one');
select is((select count(*) from gateway.ledger where hold_id = (:'short'::jsonb ->> 'hold_id')::bigint and kind = 'charge'),
          1::bigint, '… with one ledger charge');
select is(tests.s(:'short', '{"model":"test/plain","prompt_tokens":10,"completion_tokens":7}',
                  :'t'::timestamptz + interval '1001 seconds'),
          '{"settled":false,"reason":"already_settled"}'::jsonb, 'a second settle changes nothing');
select is(tests.balance(:'e'), (:before_late - 17)::bigint, '… the charge was taken exactly once');
select is(tests.held(:'e'), 20::bigint, 'the long-lived hold is still held');
select ok(tests.ledger_ok(), 'every ledger equals its balance');
select gateway.expire_stale_holds(:'t'::timestamptz + interval '3601 seconds') as swept2 \gset
select is(tests.held(:'e'), 0::bigint, 'the long-lived hold expires at its own expires_at');

-- Flat mode: models sold at a loss are listed, and refused when the operator says so ----------------
select gateway.store_models_cache($$[
  {"id": "test/plain", "pricing": {"prompt": "0.000002", "completion": "0.00001"}},
  {"id": "test/dear", "pricing": {"prompt": "0.00001", "completion": "0.00005"}},
  {"id": "test/writes", "pricing": {"prompt": "0.00001", "completion": "0.00001", "input_cache_write": "0.00003"}}
]$$::jsonb, null, :'t') is not null as again2 \gset
select is(array(select model from gateway.unprofitable_models order by model), array['test/dear', 'test/writes'],
          'flat: models whose catalog price is above 1 credit ($0.00002) per token are listed');
select gateway.set_model_pricing('test/dear', 1, 3) is not null as o7 \gset
select is(array(select model from gateway.unprofitable_models order by model), array['test/writes'],
          '… not once their multipliers cover the price');
select is(tests.b(:'a', '{"models":["test/writes"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'ok', 'true',
          'sold at a loss, still served while refuse_unprofitable_models is off');
select gateway.set_setting('refuse_unprofitable_models', 'true') is not null as m5 \gset
select is(tests.b(:'a', '{"models":["test/plain","test/writes"],"prompt_bound":1,"max_tokens":1}', :'t') - 'limits' - 'message',
          '{"ok":false,"reason":"model_not_available","model":"test/writes"}'::jsonb,
          'refused (403 model_not_available) when it is on');
select is(tests.b(:'a', '{"models":["test/plain"],"prompt_bound":1,"max_tokens":1}', :'t') ->> 'ok', 'true',
          'a profitable model is still served');
select gateway.set_setting('refuse_unprofitable_models', 'false') is not null as m6 \gset

-- The operator's margin ----------------------------------------------------------------------------
select tests.acct(100000) as g \gset
select gateway.set_setting('pricing_mode', 'cost') is not null as m7 \gset
delete from gateway.model_pricing where model = 'test/plain';
select tests.run(:'g', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":50}',
                 '{"model":"test/plain","prompt_tokens":100,"completion_tokens":50,"cost":"0.0004"}',
                 '2001-01-01 10:00:00+00') as r \gset
select ok((select requests = 1 and credits_charged = 25 and charged_usd = 0.0005 and upstream_usd = 0.0004
                  and margin_usd = 0.0001
             from gateway.margin where day = '2001-01-01' and model = 'test/plain'),
          'gateway.margin: 25 credits sold at $0.00002 against 0.0004 USD upstream, per day and model');
select is((select margin_usd from gateway.margin_daily where day = '2001-01-01'), 0.0001,
          'gateway.margin_daily sums the day');
select is((gateway.user_monitor(gateway.hash_key(:'g'::jsonb ->> 'api_key'), null, null, :'t') -> 'usage_metrics')
            - array['last_request_time', 'average_tokens_per_request', 'most_used_model'],
          '{"total_requests":1,"total_tokens":150,"total_credits":25,"total_cost":0.000500,"requests_today":0,
            "tokens_today":0,"credits_today":0,"cost_today":0,"requests_this_month":0,"tokens_this_month":0,
            "credits_this_month":0,"cost_this_month":0}'::jsonb,
          'user_monitor shows credits beside tokens, and cost = credits × usd_per_credit');
select (gateway.key_usage(gateway.hash_key(:'g'::jsonb ->> 'api_key'), null, null) -> 'keys' -> 0) as ku \gset
select is(array[:'ku'::jsonb ->> 'tokens_used', :'ku'::jsonb ->> 'credits_used'], array['150', '25'],
          'key_usage shows each key''s tokens and credits');
select * from gateway.create_admin_key('ops-pricing@example.com') \gset adm_
select gateway.admin_monitor(gateway.hash_key(:'adm_api_key'), null, null, :'t') as mon \gset
select ok(:'mon'::jsonb ?& array['overruns', 'margin', 'expired_uncharged']
          and (:'mon'::jsonb #>> '{overruns,today}')::int >= 1
          and (:'mon'::jsonb #>> '{overruns,credits_today}')::int >= 990
          and (:'mon'::jsonb #>> '{expired_uncharged,today}')::int >= 1
          and jsonb_typeof(:'mon'::jsonb #> '{margin,all_time,margin_usd}') = 'string',
          'admin_monitor counts overruns and expired holds, and gives the margin (USD as decimal text)');
select gateway.set_setting('pricing_mode', 'flat') is not null as m8 \gset

-- Bad input is 22023, never a 500 --------------------------------------------------------------------
create function tests.bad_begin(p_facts text) returns text
language sql as $$
  select tests.error_of(format('select gateway.begin_request(%L, null, null, %L::jsonb)',
                               gateway.hash_key('gw_live_x'), p_facts))
$$;
select is(array[
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":-1}'),
  tests.bad_begin('{"models":["test/plain"]}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1.5}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":"10"}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":3000000000}'),
  tests.bad_begin('{"models":[],"prompt_bound":1}'),
  tests.bad_begin('{"models":"test/plain","prompt_bound":1}'),
  tests.bad_begin('{"models":[1],"prompt_bound":1}'),
  tests.bad_begin('{"models":[""],"prompt_bound":1}'),
  tests.bad_begin('{"models":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"],"prompt_bound":1}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"max_tokens":0}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"web_results":101}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"lifetime_seconds":86401}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"parts":{"images":1001}}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"parts":{"videos":1}}'),
  tests.bad_begin('{"models":["test/plain"],"prompt_bound":1,"prompt_tokens":1}'),
  tests.bad_begin('[1]')],
  array_fill('22023:invalid_request'::text, array[17]),
  'negative, fractional, absurd, missing or unknown facts are refused with 22023');
select is(tests.error_of(format('select gateway.begin_request(%L, null, null, %L::jsonb)', gateway.hash_key(:'a'::jsonb ->> 'api_key'),
            '{"models":["test/plain"],"prompt_bound":2147483647,"parts":{"files":1000}}')),
          '22023:invalid_request', 'a prompt bound that overflows with its allowances is refused');
create function tests.bad_settle(p_usage text) returns text
language sql as $$
  select tests.error_of(format('select gateway.settle_request(-1, %L::jsonb)', p_usage))
$$;
select is(array[
  tests.bad_settle('{"settled_by":"usage","prompt_tokens":-1}'),
  tests.bad_settle('{"settled_by":"usage","completion_tokens":1.5}'),
  tests.bad_settle('{"settled_by":"usage","cached_tokens":"5"}'),
  tests.bad_settle('{"settled_by":"usage","reasoning_tokens":3000000000}'),
  tests.bad_settle('{"settled_by":"usage","cost":"-0.1"}'),
  tests.bad_settle('{"settled_by":"usage","cost":-0.1}'),
  tests.bad_settle('{"settled_by":"usage","cost":"abc"}'),
  tests.bad_settle('{"settled_by":"usage","cost":"1000000"}'),
  tests.bad_settle('{"settled_by":"usage","tokens":1}'),
  tests.bad_settle('{"settled_by":"magic"}'),
  tests.bad_settle('{"prompt_tokens":1}'),
  tests.bad_settle('{"settled_by":"usage","model":7}')],
  array_fill('22023:invalid_request'::text, array[12]),
  'a usage with negative, fractional, absurd or unknown fields is refused with 22023');
select is(tests.error_of($$select gateway.settle_request(-1, '{"settled_by":"usage","cost":"1e-7","prompt_tokens":0}')$$), 'ok',
          'cost may be in exponent notation (an unknown hold is an answer, not an error)');
select is(tests.error_of($$select gateway.set_setting('pricing_mode', 'free')$$), '23514:', 'pricing_mode is flat or cost');
select is(tests.error_of($$select gateway.set_setting('usd_per_credit', '0')$$), '23514:', 'usd_per_credit must be positive');
select is(tests.error_of($$select gateway.set_model_pricing('a*b', 1, 1)$$), '23514:', 'a pattern has its * at the end only');
-- numeric takes NaN and Infinity, and NaN sorts above every number: `>= 0` alone let them in.
select is(tests.error_of($$select gateway.set_setting('usd_per_credit', 'NaN')$$), '23514:',
          'usd_per_credit is not NaN');
select is(tests.error_of($$select gateway.set_setting('usd_per_credit', 'Infinity')$$), '23514:',
          'nor Infinity (every request would cost 0 credits)');
select is(tests.error_of($$select gateway.set_model_pricing('nan/model', 'NaN', 1)$$), '23514:',
          'a multiplier is not NaN');
select is(tests.error_of($$select gateway.set_model_pricing('inf/model', 1, 'Infinity')$$), '23514:',
          'nor Infinity');
select is(tests.error_of($$update gateway.model_catalog set completion = 'NaN'$$), '23514:',
          'an operator cannot write a NaN price into the catalog');
select is(tests.error_of($$update gateway.model_catalog set image = 'Infinity'$$), '23514:',
          'nor an infinite one');

-- Admissions ahead (reserve_admissions) make the holds begin_request would ------------------------
select tests.acct(1000) as r0 \gset
savepoint ahead;
select gateway.reserve_admissions(gateway.hash_key(:'r0'::jsonb ->> 'api_key'), null, null,
         '{"models":["test/plain"],"prompt_bound":100,"max_tokens":200}', 5, :'t') as rs \gset
rollback to savepoint ahead;
select jsonb_agg(x.r) as seq from (
  select tests.b(:'r0', '{"models":["test/plain"],"prompt_bound":100,"max_tokens":200}', :'t') as r
    from generate_series(1, 3)) x \gset
select is(array(select e - 'hold_id' - 'limits' from jsonb_array_elements(:'rs'::jsonb) e),
          array(select e - 'hold_id' - 'limits' from jsonb_array_elements(:'seq'::jsonb) e),
          'reserve_admissions with facts: the admissions three begin_request calls make (300, 300, 300, then 100 left)');

-- The batch forms take the same facts and usage ------------------------------------------------------
select tests.acct(100000) as bt \gset
select gateway.begin_requests(jsonb_build_array(
  jsonb_build_object('key_hash', encode(gateway.hash_key(:'bt'::jsonb ->> 'api_key'), 'hex'),
                     'models', jsonb_build_array('test/plain'), 'prompt_bound', 100, 'max_tokens', 50),
  jsonb_build_object('key_hash', encode(gateway.hash_key(:'bt'::jsonb ->> 'api_key'), 'hex'),
                     'models', jsonb_build_array('test/nope'), 'prompt_bound', 1),
  jsonb_build_object('key_hash', encode(gateway.hash_key(:'bt'::jsonb ->> 'api_key'), 'hex'),
                     'models', jsonb_build_array('test/plain'), 'prompt_bound', 10, 'max_tokens', 10)), :'t') as bb \gset
select is(array(select coalesce(e ->> 'held_credits', e ->> 'reason') from jsonb_array_elements(:'bb'::jsonb) e),
          array['150', 'model_not_found', '20'],
          'begin_requests: elements with facts, refused one by one');
select gateway.settle_requests(jsonb_build_array(
  jsonb_build_object('hold_id', :'bb'::jsonb #> '{0,hold_id}', 'settled_by', 'usage', 'model', 'test/plain',
                     'prompt_tokens', 100, 'completion_tokens', 50, 'cached_tokens', 40, 'reasoning_tokens', 9),
  jsonb_build_object('hold_id', :'bb'::jsonb #> '{2,hold_id}', 'settled_by', 'usage', 'model', 'test/plain',
                     'prompt_tokens', 10, 'completion_tokens', 10, 'cost', 0.00001)), :'t') as sb \gset
select is(array(select e ->> 'credits_charged' from jsonb_array_elements(:'sb'::jsonb) e), array['150', '20'],
          'settle_requests: the usage with its details, and a cost as a JSON number');
select ok((select cached_tokens = 40 and reasoning_tokens = 9 from gateway.usage_records
            where hold_id = (:'bb'::jsonb #>> '{0,hold_id}')::bigint)
          and (select upstream_cost = 0.00001 from gateway.usage_records
                where hold_id = (:'bb'::jsonb #>> '{2,hold_id}')::bigint),
          '… recorded');
select is(tests.error_of(format('select gateway.settle_requests(%L)', jsonb_build_array(
            jsonb_build_object('hold_id', 1, 'settled_by', 'usage', 'prompt_tokens', -5)))),
          '22023:invalid_request', 'an element with a bad usage aborts the batch with 22023');

-- Property: the hold bounds the charge of every usage its facts allow -------------------------------
-- A random catalog of 24 models (prices with up to 12 decimals, some categories 0, cache writes and
-- reasoning dearer or cheaper), random overrides (multipliers, markups, patterns), then random
-- requests: 1–3 candidates (or openrouter/auto), either mode, any markup and usd_per_credit, random
-- facts, and random usages within them, served by a candidate or by another model.
select setseed(0.20261202);
select gateway.store_models_cache((
  select jsonb_agg(jsonb_build_object('id', format('prop/m%s', lpad(i::text, 2, '0')), 'pricing',
    jsonb_strip_nulls(jsonb_build_object(
      'prompt', round((random() * 0.00002)::numeric, 12)::text,
      'completion', round((random() * 0.00008)::numeric, 12)::text,
      'input_cache_read', case when random() < 0.5 then round((random() * 0.00001)::numeric, 12)::text end,
      'input_cache_write', case when random() < 0.5 then round((random() * 0.00004)::numeric, 12)::text end,
      'internal_reasoning', case when random() < 0.5 then round((random() * 0.0001)::numeric, 12)::text end,
      'request', case when random() < 0.3 then round((random() * 0.01)::numeric, 9)::text end,
      'web_search', case when random() < 0.3 then round((random() * 0.02)::numeric, 9)::text end,
      'image', case when random() < 0.3 then round((random() * 0.005)::numeric, 9)::text end))))
    from generate_series(1, 24) i), null, :'t') is not null as prop_catalog \gset
insert into gateway.model_pricing (model, prompt_multiplier, completion_multiplier, markup_percent)
select format('prop/m%s', lpad(i::text, 2, '0')),
       case when i % 3 = 0 then round((random() * 5)::numeric, 4) end,
       case when i % 3 = 0 then round((random() * 5)::numeric, 4) end,
       case when i % 4 = 0 then round((random() * 300)::numeric, 3) end
  from generate_series(1, 24) i
 where i % 3 = 0 or i % 4 = 0;
insert into gateway.model_pricing (model, markup_percent) values ('prop/m1*', 42.5);

create function tests.property(p_cases integer) returns jsonb
language plpgsql as $$
declare
  v_models text[] := array(select model from gateway.model_catalog where model like 'prop/%' order by model);
  s gateway.system_settings;
  v_mode text;
  v_markup numeric;
  v_upc numeric;
  v_cands text[];
  pc record;
  v_prompt bigint;
  v_images integer;
  v_web integer;
  v_want bigint;
  hf record;
  hf2 record;
  v_avail bigint;
  v_needed bigint;
  u record;
  v_served text;
  v_price gateway.model_price;
  c record;
  v_fails jsonb := '[]';
  v_maxed integer := 0;
begin
  select * into s from gateway.system_settings where id;
  for i in 1 .. p_cases loop
    v_mode := case when random() < 0.5 then 'flat' else 'cost' end;
    v_markup := round((random() * 200)::numeric, 3);
    v_upc := (array[0.00002, 0.0000137, 0.001, 0.000001])[1 + floor(random() * 4)::int];
    v_cands := case when random() < 0.1 then array['openrouter/auto']
                    else array(select distinct v_models[1 + floor(random() * 24)::int]
                                 from generate_series(1, 1 + floor(random() * 3)::int)) end;
    pc := gateway.price_candidates(v_cands, v_mode, v_markup, s.web_result_usd, v_upc, false, false);
    v_images := floor(random() * 3)::int;
    v_web := floor(random() * 6)::int;
    v_prompt := floor(random() * 20000)::bigint + v_images * s.image_part_tokens
                + floor(random() * 2)::int * s.audio_part_tokens + v_web * s.web_result_tokens;
    v_want := 1 + floor(random() * 4000)::bigint;
    hf := gateway.hold_for(pc.dearest, v_upc, v_prompt, v_web, v_images, v_want, 1000000000000000);
    -- A usage within the facts.
    select p, cr, least(cw, p - cr) as cw, q, least(r, q) as r, w, im into u
      from (select floor(random() * (v_prompt + 1))::bigint as p,
                   floor(random() * (v_prompt + 1) * random())::bigint as cr0,
                   floor(random() * (v_prompt + 1) * random())::bigint as cw,
                   floor(random() * (hf.max_tokens + 1))::bigint as q,
                   floor(random() * (hf.max_tokens + 1))::bigint as r,
                   floor(random() * (v_web + 1))::bigint as w,
                   floor(random() * (v_images + 1))::bigint as im) x
      cross join lateral (select least(x.cr0, x.p) as cr) y;
    v_served := case when random() < 0.7 then v_cands[1 + floor(random() * cardinality(v_cands))::int]
                     when random() < 0.5 then v_models[1 + floor(random() * 24)::int]
                     else 'someone/else' end;
    v_price := gateway.served_price(case when cardinality(pc.prices) > 1 then pc.prices end, pc.dearest,
                                    v_served, v_mode);
    c := gateway.charge(v_price, v_upc, u.p, u.q, u.cr, u.cw, u.r, u.w, u.im, null);
    if c.credits > hf.amount then
      v_fails := v_fails || jsonb_build_object('case', i, 'hold', hf.amount, 'charge', c.credits,
                                               'models', v_cands, 'served', v_served, 'mode', v_mode);
    end if;
    -- max_tokens is the largest the available credits afford: a random budget between one token's
    -- worst case and the whole hold.
    v_needed := coalesce((gateway.hold_for(pc.dearest, v_upc, v_prompt, v_web, v_images, v_want, 0)).needed, 0);
    v_avail := v_needed + floor(random() * (hf.amount - v_needed + 1))::bigint;
    hf2 := gateway.hold_for(pc.dearest, v_upc, v_prompt, v_web, v_images, v_want, v_avail);
    if hf2.amount > v_avail or hf2.max_tokens < 1 then
      v_fails := v_fails || jsonb_build_object('case', i, 'budget', v_avail, 'hold', hf2.amount);
    elsif hf2.max_tokens < v_want then
      v_maxed := v_maxed + 1;
      if (gateway.hold_for(pc.dearest, v_upc, v_prompt, v_web, v_images, hf2.max_tokens + 1,
                           1000000000000000)).amount <= v_avail then
        v_fails := v_fails || jsonb_build_object('case', i, 'budget', v_avail, 'not_maximal', hf2.max_tokens);
      end if;
    end if;
  end loop;
  return jsonb_build_object('failures', v_fails, 'capped', v_maxed);
end
$$;
select tests.property(3000) as prop \gset
select is(:'prop'::jsonb -> 'failures', '[]'::jsonb,
          'over 3000 random requests and usages, the charge never exceeds the hold, and a capped max_tokens is the largest the credits afford');
select cmp_ok((:'prop'::jsonb ->> 'capped')::integer, '>', 500, '… (max_tokens was capped by the credits in many of them)');

-- The same end to end: random requests admitted and settled within their facts never overrun ------
create function tests.property_e2e(p_cases integer, p_now timestamptz) returns jsonb
language plpgsql as $$
declare
  v_models text[] := array(select model from gateway.model_catalog where model like 'prop/%' order by model);
  v_acct jsonb := tests.acct(1000000000);
  v_cands text[];
  v_facts jsonb;
  b jsonb;
  st jsonb;
  v_bound bigint;
  v_q bigint;
  v_fails jsonb := '[]';
begin
  for i in 1 .. p_cases loop
    perform gateway.set_setting('pricing_mode', case when random() < 0.5 then 'flat' else 'cost' end);
    perform gateway.set_setting('markup_percent', round((random() * 100)::numeric, 2)::text);
    v_cands := array(select distinct v_models[1 + floor(random() * 24)::int]
                       from generate_series(1, 1 + floor(random() * 3)::int));
    v_facts := jsonb_build_object('models', to_jsonb(v_cands), 'prompt_bound', floor(random() * 5000)::int,
                                  'parts', jsonb_build_object('images', floor(random() * 2)::int),
                                  'web_results', floor(random() * 3)::int,
                                  'max_tokens', 1 + floor(random() * 2000)::int);
    b := tests.b(v_acct, v_facts, p_now);
    v_bound := (b ->> 'held_credits')::bigint;
    v_q := (b ->> 'max_tokens')::bigint;
    st := tests.s(b, jsonb_build_object(
      'model', v_cands[1 + floor(random() * cardinality(v_cands))::int],
      'prompt_tokens', floor(random() * ((v_facts ->> 'prompt_bound')::int
                                         + (v_facts #>> '{parts,images}')::int * 3000
                                         + (v_facts ->> 'web_results')::int * 2000 + 1))::int,
      'cached_tokens', floor(random() * 100)::int,
      'completion_tokens', floor(random() * (v_q + 1))::int,
      'reasoning_tokens', floor(random() * (v_q + 1))::int,
      'web_search_requests', floor(random() * ((v_facts ->> 'web_results')::int + 1))::int,
      'images', floor(random() * ((v_facts #>> '{parts,images}')::int + 1))::int), p_now);
    if (st ->> 'overrun')::boolean or not (b ->> 'ok')::boolean then
      v_fails := v_fails || jsonb_build_object('case', i, 'begin', b, 'settle', st);
    end if;
  end loop;
  return v_fails;
end
$$;
select is(tests.property_e2e(200, :'t'), '[]'::jsonb,
          'over 200 random requests admitted and settled within their facts (both modes, model lists): no overrun');
select ok(tests.ledger_ok(), 'and every ledger still equals its balance');

select * from finish();
rollback;
