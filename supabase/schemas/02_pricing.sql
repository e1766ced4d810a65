-- Pricing: what a request costs. The upstream catalog's prices (model_catalog), the operator's
-- overrides (model_pricing), a request's candidates priced (price_candidates), and the one
-- definition of a charge (charge), used for the hold at the worst usage a request's facts allow
-- (hold_for) and for the settle at the usage reported. Settings: 01_settings.sql; the formulas:
-- docs/SQL-API.md, "Pricing".

-- One candidate's prices as a hold stores them; gateway.charge says how each field counts.
create type gateway.model_price as (
  model text,
  catalog_id text,
  canonical_slug text,
  prompt numeric,
  completion numeric,
  input_cache_read numeric,
  input_cache_write numeric,
  internal_reasoning numeric,
  request numeric,
  web_search numeric,
  image numeric,
  prompt_multiplier numeric,
  completion_multiplier numeric,
  markup_percent numeric,
  fixed boolean,
  by_cost boolean,
  free boolean
);
comment on type gateway.model_price is
  'The prices a hold keeps for one candidate model (or the dearest of them); see gateway.charge.';

-- The upstream catalog, priced; a model absent from it is unknown. Prices are finite: numeric
-- takes 'NaN' and 'Infinity', and Postgres orders NaN above every number, so `>= 0` alone let an
-- operator's NaN through to holds that charge nothing or fail their settle (`< 'Infinity'` keeps
-- out both).
create table gateway.model_catalog (
  model text primary key,
  canonical_slug text,
  prompt numeric not null check (prompt >= 0 and prompt < 'Infinity'),
  completion numeric not null check (completion >= 0 and completion < 'Infinity'),
  input_cache_read numeric not null default 0 check (input_cache_read >= 0 and input_cache_read < 'Infinity'),
  input_cache_write numeric not null default 0 check (input_cache_write >= 0 and input_cache_write < 'Infinity'),
  internal_reasoning numeric not null default 0 check (internal_reasoning >= 0 and internal_reasoning < 'Infinity'),
  request numeric not null default 0 check (request >= 0 and request < 'Infinity'),
  web_search numeric not null default 0 check (web_search >= 0 and web_search < 'Infinity'),
  image numeric not null default 0 check (image >= 0 and image < 'Infinity'),
  updated_at timestamptz not null
);
comment on table gateway.model_catalog is
  'Priceable models of the upstream catalog, USD per token/request/search/image, the dearest of '
  'every long-context or time override; filled by gateway.store_models_cache. Absent: unknown.';
alter table gateway.model_catalog enable row level security;
create policy no_api_access on gateway.model_catalog
  for all to anon, authenticated using (false) with check (false);

-- Operator overrides by model or pattern; a model without one costs 1 and 1 in flat mode and is
-- charged by cost with the setting's markup in cost mode.
create table gateway.model_pricing (
  model text primary key,
  prompt_multiplier numeric check (prompt_multiplier >= 0 and prompt_multiplier < 'Infinity'),
  completion_multiplier numeric,
  updated_at timestamptz not null default now(),
  markup_percent numeric check (markup_percent >= 0 and markup_percent <= 100000),
  constraint model_pricing_completion_multiplier_check
    check (completion_multiplier >= 0 and completion_multiplier < 'Infinity'),
  constraint model_pricing_model_check
    check (model ~ '^[^*]*\*?$' and length(model) between 1 and 256)
);
comment on table gateway.model_pricing is
  'Operator overrides for a model (exact id) or a pattern (prefix ending in *): credits per token '
  '(flat mode; in cost mode a fixed selling price) and/or a markup (cost mode). A request is priced '
  'at admission (the hold keeps its prices); later changes do not affect it.';
create index model_pricing_patterns_idx on gateway.model_pricing (model)
  where right(model, 1) = '*';
comment on column gateway.model_pricing.model is
  'An exact model id, or a prefix ending in * (anthropic/*). Lookup: the id requested, the catalog '
  'id it resolved to, then the longest matching prefix.';
alter table gateway.model_pricing enable row level security;
create policy no_api_access on gateway.model_pricing
  for all to anon, authenticated using (false) with check (false);

-- Operator: sets a model's multipliers (insert or update); holds already placed keep theirs.
create or replace function gateway.set_model_pricing(
  p_model text,
  p_prompt_multiplier numeric,
  p_completion_multiplier numeric
)
returns gateway.model_pricing
language sql
security definer
set search_path = ''
as $$
  insert into gateway.model_pricing (model, prompt_multiplier, completion_multiplier)
  values (p_model, p_prompt_multiplier, p_completion_multiplier)
  on conflict (model) do update
    set prompt_multiplier = excluded.prompt_multiplier,
        completion_multiplier = excluded.completion_multiplier,
        updated_at = now()
  returning *;
$$;
revoke execute on function gateway.set_model_pricing(text, numeric, numeric) from public;
grant execute on function gateway.set_model_pricing(text, numeric, numeric) to service_role;

-- Operator: a markup for a model or pattern (cost mode), next to set_model_pricing's multipliers.
create or replace function gateway.set_model_markup(p_model text, p_markup_percent numeric)
returns gateway.model_pricing
language sql
security definer
set search_path = ''
as $$
  insert into gateway.model_pricing (model, markup_percent)
  values (p_model, p_markup_percent)
  on conflict (model) do update
    set markup_percent = excluded.markup_percent, updated_at = now()
  returning *;
$$;
revoke execute on function gateway.set_model_markup(text, numeric) from public;
grant execute on function gateway.set_model_markup(text, numeric) to service_role;

-- Decimal prices of an OpenRouter `pricing` object: the dearest value of each category over the
-- object and everything nested in it (long-context/time overrides, input_cache_write_1h); missing
-- optional categories are 0. Null prompt when the model is not priceable (no prompt or completion
-- price, or a price that is negative or not a decimal, like openrouter/auto's "-1").
create or replace function gateway.catalog_prices(
  p_pricing jsonb,
  out prompt numeric, out completion numeric, out input_cache_read numeric,
  out input_cache_write numeric, out internal_reasoning numeric, out request numeric,
  out web_search numeric, out image numeric)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_bad boolean;
begin
  if jsonb_typeof(p_pricing) is distinct from 'object'
     or jsonb_typeof(p_pricing -> 'prompt') not in ('string', 'number')
     or jsonb_typeof(p_pricing -> 'completion') not in ('string', 'number') then
    return;
  end if;
  with v as (
    select case e.key when 'input_cache_write_1h' then 'input_cache_write' else e.key end as k,
           e.value #>> '{}' as t
      from jsonb_path_query(p_pricing, 'strict $.** ? (@.type() == "object")') o (obj)
      cross join lateral jsonb_each(o.obj) e
     where e.key in ('prompt', 'completion', 'input_cache_read', 'input_cache_write',
                     'input_cache_write_1h', 'internal_reasoning', 'request', 'web_search', 'image')
       and jsonb_typeof(e.value) in ('string', 'number')
  ), n as (
    select v.k, case when v.t ~ '^[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]{1,3})?$' then v.t::numeric end as x
      from v
  )
  select bool_or(n.x is null),
         max(n.x) filter (where n.k = 'prompt'), max(n.x) filter (where n.k = 'completion'),
         coalesce(max(n.x) filter (where n.k = 'input_cache_read'), 0),
         coalesce(max(n.x) filter (where n.k = 'input_cache_write'), 0),
         coalesce(max(n.x) filter (where n.k = 'internal_reasoning'), 0),
         coalesce(max(n.x) filter (where n.k = 'request'), 0),
         coalesce(max(n.x) filter (where n.k = 'web_search'), 0),
         coalesce(max(n.x) filter (where n.k = 'image'), 0)
    into v_bad, prompt, completion, input_cache_read, input_cache_write, internal_reasoning,
         request, web_search, image
    from n;
  if v_bad then
    prompt := null;
  end if;
end
$$;
revoke execute on function gateway.catalog_prices(jsonb) from public;

-- Prices the models of an OpenRouter /models answer (its `data`, or the whole document) into
-- model_catalog. A list with no priceable model leaves the catalog as it was: an empty or broken
-- upstream answer must not turn "unknown model" into "catalog not loaded".
create or replace function gateway.store_model_catalog(p_data jsonb, p_now timestamptz)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_list jsonb := case jsonb_typeof(p_data) when 'array' then p_data
                                            when 'object' then p_data -> 'data' end;
begin
  if jsonb_typeof(v_list) = 'array' then
    -- A model listed twice is priced at the dearest of its entries, and not at all if one of them
    -- cannot be priced. The delete and the upsert touch disjoint rows.
    with priced as (
      select e ->> 'id' as model, max(e ->> 'canonical_slug') as canonical_slug,
             max(p.prompt) as prompt, max(p.completion) as completion,
             max(p.input_cache_read) as input_cache_read,
             max(p.input_cache_write) as input_cache_write,
             max(p.internal_reasoning) as internal_reasoning, max(p.request) as request,
             max(p.web_search) as web_search, max(p.image) as image
        from jsonb_array_elements(v_list) e
        cross join lateral gateway.catalog_prices(e -> 'pricing') p
       where jsonb_typeof(e -> 'id') = 'string' and length(e ->> 'id') between 1 and 256
       group by e ->> 'id'
      having bool_and(p.prompt is not null)
    ), removed as (
      delete from gateway.model_catalog c
       where exists (select from priced)
         and not exists (select from priced m where m.model = c.model)
    )
    insert into gateway.model_catalog as c (
      model, canonical_slug, prompt, completion, input_cache_read, input_cache_write,
      internal_reasoning, request, web_search, image, updated_at)
    select m.model, m.canonical_slug, m.prompt, m.completion, m.input_cache_read,
           m.input_cache_write, m.internal_reasoning, m.request, m.web_search, m.image, p_now
      from priced m
    on conflict (model) do update set
      canonical_slug = excluded.canonical_slug, prompt = excluded.prompt,
      completion = excluded.completion, input_cache_read = excluded.input_cache_read,
      input_cache_write = excluded.input_cache_write,
      internal_reasoning = excluded.internal_reasoning, request = excluded.request,
      web_search = excluded.web_search, image = excluded.image, updated_at = excluded.updated_at
    where (c.canonical_slug, c.prompt, c.completion, c.input_cache_read, c.input_cache_write,
           c.internal_reasoning, c.request, c.web_search, c.image)
          is distinct from
          (excluded.canonical_slug, excluded.prompt, excluded.completion,
           excluded.input_cache_read, excluded.input_cache_write, excluded.internal_reasoning,
           excluded.request, excluded.web_search, excluded.image);
  end if;
end
$$;
revoke execute on function gateway.store_model_catalog(jsonb, timestamptz) from public;

create type gateway.candidate_prices as (
  prices gateway.model_price[],
  dearest gateway.model_price,
  refusal text,
  refused_model text
);
comment on type gateway.candidate_prices is
  'A request''s candidates priced (gateway.price_candidates), or why one cannot be.';

-- The prices of the candidate models of a request, and the dearest of each category over them, or
-- the refusal: model_not_found (a candidate absent from a loaded catalog, after variant resolution),
-- pricing_unavailable (cost mode before the catalog was ever loaded), model_not_available (sold at a
-- loss while refuse_unprofitable_models is on). A variant (`base:variant`) is priced by its own
-- catalog row if it has one (`…:free`), else by its base's (`:nitro`, `:online`, … route, not
-- price); a `:free` the catalog does not list is unknown. `openrouter/auto` is the dearest of the
-- whole catalog. p_unknown_at_default (the transitional overloads only) prices an unknown model in
-- flat mode at its override or 1 credit per token, as before the catalog.
create or replace function gateway.price_candidates(
  p_models text[],
  p_mode text,
  p_markup numeric,
  p_web_result_usd numeric,
  p_usd_per_credit numeric,
  p_refuse_unprofitable boolean,
  p_unknown_at_default boolean
)
returns gateway.candidate_prices
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  r gateway.candidate_prices;
  m text;
  c gateway.model_catalog;
  o gateway.model_pricing;
  p gateway.model_price;
  v_colon integer;
  v_base text;
  v_loaded boolean;
  v_auto boolean;
  v_auto_fixed boolean;
begin
  r.prices := array[]::gateway.model_price[];
  foreach m in array p_models loop
    c := null;
    o := null;
    v_auto := m = 'openrouter/auto';
    v_colon := strpos(m, ':');
    v_base := case when v_colon > 0 then left(m, v_colon - 1) else m end;
    if v_auto then
      select m, null, max(x.prompt), max(x.completion), max(x.input_cache_read),
             max(x.input_cache_write), max(x.internal_reasoning), max(x.request), max(x.web_search),
             max(x.image), max(x.updated_at)
        into c
        from gateway.model_catalog x
      having count(*) > 0;
      if c.model is null and p_mode = 'cost' then
        r.refusal := 'pricing_unavailable';
        r.refused_model := m;
        return r;
      end if;
      -- Any model may serve: the dearest override, and the default where a model has none.
      select null::text, greatest(1, max(x.prompt_multiplier)),
             greatest(1, max(x.completion_multiplier)), null::timestamptz,
             greatest(p_markup, max(x.markup_percent)),
             coalesce(bool_or(x.prompt_multiplier is not null or x.completion_multiplier is not null),
                      false)
        into o.model, o.prompt_multiplier, o.completion_multiplier, o.updated_at, o.markup_percent,
             v_auto_fixed
        from gateway.model_pricing x;
    else
      -- Its own row, else (not for :free) its base's.
      select * into c from gateway.model_catalog x where x.model = m;
      if not found and v_colon > 0 and substr(m, v_colon + 1) <> 'free' then
        select * into c from gateway.model_catalog x where x.model = v_base;
      end if;
      if c.model is null then
        v_loaded := coalesce(v_loaded, exists (select from gateway.model_catalog));
        if p_mode = 'cost' or (v_loaded and not p_unknown_at_default) then
          r.refusal := case when v_loaded then 'model_not_found' else 'pricing_unavailable' end;
          r.refused_model := m;
          return r;
        end if;
      end if;
      -- The id requested, the catalog id it resolved to (or, unpriced, its base), the longest
      -- prefix: primary-key probes (patterns only where there are any: their partial index).
      select * into o from gateway.model_pricing x where x.model = m;
      if not found and coalesce(c.model, v_base) <> m then
        select * into o from gateway.model_pricing x where x.model = coalesce(c.model, v_base);
      end if;
      if not found and exists (select from gateway.model_pricing x where right(x.model, 1) = '*') then
        select * into o
          from gateway.model_pricing x
         where x.model = any(array(select left(m, i) || '*' from generate_series(0, length(m)) i))
         order by length(x.model) desc
         limit 1;
      end if;
    end if;

    -- One row expression (field by field assignments cost as much as the lookups).
    p := row(
      m, case when not v_auto then c.model end, c.canonical_slug,
      coalesce(c.prompt, 0), coalesce(c.completion, 0),
      case when c.input_cache_read > 0 then c.input_cache_read else coalesce(c.prompt, 0) end,
      case when c.input_cache_write > 0 then c.input_cache_write else coalesce(c.prompt, 0) end,
      case when c.internal_reasoning > 0 then c.internal_reasoning else coalesce(c.completion, 0) end,
      coalesce(c.request, 0),
      case when c.web_search > 0 then c.web_search else p_web_result_usd end,
      coalesce(c.image, 0),
      coalesce(o.prompt_multiplier, 1), coalesce(o.completion_multiplier, 1),
      coalesce(o.markup_percent, p_markup),
      -- flat: every model by its multipliers; cost: by cost, or fixed by an override's multipliers
      -- (openrouter/auto: by cost, and also fixed if any override could charge the served model so)
      case when p_mode = 'flat' then true
           when v_auto then v_auto_fixed
           else o.prompt_multiplier is not null or o.completion_multiplier is not null end,
      p_mode <> 'flat' and (v_auto or (o.prompt_multiplier is null and o.completion_multiplier is null)),
      p_mode = 'flat' and c.model is not null and c.prompt = 0 and c.completion = 0
    )::gateway.model_price;
    if p_refuse_unprofitable and p.fixed and not p.free and c.model is not null
       and (greatest(p.prompt, p.input_cache_write) > p.prompt_multiplier * p_usd_per_credit
            or greatest(p.completion, p.internal_reasoning)
               > p.completion_multiplier * p_usd_per_credit) then
      r.refusal := 'model_not_available';
      r.refused_model := m;
      return r;
    end if;
    r.prices := r.prices || p;
  end loop;

  if cardinality(r.prices) = 1 then
    r.dearest := r.prices[1];
  else
    select row('*', null, null, max(x.prompt), max(x.completion), max(x.input_cache_read),
               max(x.input_cache_write), max(x.internal_reasoning), max(x.request),
               max(x.web_search), max(x.image), max(x.prompt_multiplier),
               max(x.completion_multiplier), max(x.markup_percent), bool_or(x.fixed),
               bool_or(x.by_cost), bool_and(x.free))::gateway.model_price
      into r.dearest
      from unnest(r.prices) x;
  end if;
  return r;
end
$$;
revoke execute on function gateway.price_candidates(text[], text, numeric, numeric, numeric, boolean, boolean) from public;

-- Credits for a usage at these prices: the one definition of a charge, for the settle (the usage
-- reported) and the hold (the worst usage the request's facts allow, gateway.hold_for). Exact:
-- numeric throughout, one ceil at the end. Cached and cache-write tokens are part of the prompt,
-- reasoning tokens part of the completion (clamped to them). upstream_usd: p_cost when reported,
-- else computed from the prices; token_credits and fees: the terms of the fixed formula.
create or replace function gateway.charge(
  p gateway.model_price,
  p_usd_per_credit numeric,
  p_prompt bigint,
  p_completion bigint,
  p_cached bigint,
  p_cache_write bigint,
  p_reasoning bigint,
  p_web_searches bigint,
  p_images bigint,
  p_cost numeric,
  out credits bigint,
  out upstream_usd numeric,
  out token_credits numeric,
  out fees numeric
)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_cached bigint := least(p_cached, p_prompt);
  v_write bigint := least(p_cache_write, p_prompt - least(p_cached, p_prompt));
  v_reasoning bigint := least(p_reasoning, p_completion);
  v_num numeric;
  v_den numeric;
  v_q numeric;
begin
  fees := p.request + p_web_searches * p.web_search + p_images * p.image;
  -- A free model's tokens cost nothing; its fees (a web search) are still passed on.
  token_credits := case when p.free then 0
                        else p_prompt * p.prompt_multiplier + p_completion * p.completion_multiplier end;
  upstream_usd := coalesce(p_cost,
    (p_prompt - v_cached - v_write) * p.prompt + v_cached * p.input_cache_read
    + v_write * p.input_cache_write + (p_completion - v_reasoning) * p.completion
    + v_reasoning * p.internal_reasoning + fees);
  credits := 0;
  -- ceil(num / den) as div() and a remainder test: numeric division rounds, div() does not.
  if p.fixed then
    v_num := token_credits * p_usd_per_credit + fees;
    v_den := p_usd_per_credit;
    v_q := div(v_num, v_den);
    credits := v_q + case when v_q * v_den < v_num then 1 else 0 end;
  end if;
  if p.by_cost then
    v_num := upstream_usd * (100 + p.markup_percent);
    v_den := 100 * p_usd_per_credit;
    v_q := div(v_num, v_den);
    credits := greatest(credits, v_q + case when v_q * v_den < v_num then 1 else 0 end);
  end if;
end
$$;
revoke execute on function gateway.charge(gateway.model_price, numeric, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric) from public;

-- The hold for a request's facts at these prices (the dearest of its candidates) given p_available
-- credits: the largest max_tokens ≤ p_want whose worst case is affordable, and that worst case —
-- the charge of a usage with the whole prompt bound at the dearest prompt-side price (plain, cache
-- read or cache write), max_tokens at the dearer of completion and reasoning, every web result
-- searched and every image billed. max_tokens 0: not even one completion token is affordable;
-- `needed` (null when p_want was affordable) is what one would cost. Used by begin_request and
-- reserve_admissions alike.
create or replace function gateway.hold_for(
  p gateway.model_price,
  p_usd_per_credit numeric,
  p_prompt bigint,
  p_web_results integer,
  p_images integer,
  p_want bigint,
  p_available bigint,
  out max_tokens bigint,
  out amount bigint,
  out needed bigint
)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  v_read boolean := p.input_cache_read > greatest(p.prompt, p.input_cache_write);
  v_write boolean := p.input_cache_write > p.prompt and p.input_cache_write >= p.input_cache_read;
  v_reason boolean := p.internal_reasoning > p.completion;
  v_cached bigint := case when v_read then p_prompt else 0 end;
  v_written bigint := case when v_write and not v_read then p_prompt else 0 end;
  c record;
  v_q bigint := p_want;
  v_slope numeric;
begin
  -- The hold for all the tokens wanted: affordable, that is the answer (one charge).
  c := gateway.charge(
    p, p_usd_per_credit, p_prompt, v_q, v_cached, v_written, case when v_reason then v_q else 0 end,
    p_web_results, p_images, null);
  if c.credits <= p_available then
    max_tokens := v_q;
    amount := c.credits;
    return;
  end if;
  c := gateway.charge(
    p, p_usd_per_credit, p_prompt, 1, v_cached, v_written, case when v_reason then 1 else 0 end,
    p_web_results, p_images, null);
  needed := c.credits;
  max_tokens := 0;
  amount := 0;
  if needed > p_available then
    return;
  end if;
  -- The charge is affine in max_tokens before its ceil: solve each formula for the largest count
  -- within p_available, exactly (div), from its value at one token.
  if not p.free then  -- (free: the completion costs nothing, only the fees: any count)
    if p.fixed and p.completion_multiplier > 0 then
      v_q := least(v_q, 1 + div(
        p_available * p_usd_per_credit - (c.token_credits * p_usd_per_credit + c.fees),
        p.completion_multiplier * p_usd_per_credit));
    end if;
    if p.by_cost then
      v_slope := greatest(p.completion, p.internal_reasoning) * (100 + p.markup_percent);
      if v_slope > 0 then
        v_q := least(v_q, 1 + div(
          100 * p_available * p_usd_per_credit - c.upstream_usd * (100 + p.markup_percent),
          v_slope));
      end if;
    end if;
  end if;
  loop
    c := gateway.charge(
      p, p_usd_per_credit, p_prompt, v_q, v_cached, v_written,
      case when v_reason then v_q else 0 end, p_web_results, p_images, null);
    -- Never taken in exact arithmetic; kept so that no rounding could make a hold exceed p_available.
    exit when c.credits <= p_available or v_q <= 1;
    v_q := v_q - 1;
  end loop;
  max_tokens := v_q;
  amount := c.credits;
end
$$;
revoke execute on function gateway.hold_for(gateway.model_price, numeric, bigint, integer, integer, bigint, bigint) from public;

-- A price as the function reads it: every number as exact decimal text (a JSON number is a double).
create or replace function gateway.price_json(p gateway.model_price)
returns jsonb
language plpgsql
immutable
security definer
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'model', p.model, 'catalog_id', p.catalog_id, 'canonical_slug', p.canonical_slug,
    'prompt', p.prompt::text, 'completion', p.completion::text,
    'input_cache_read', p.input_cache_read::text, 'input_cache_write', p.input_cache_write::text,
    'internal_reasoning', p.internal_reasoning::text, 'request', p.request::text,
    'web_search', p.web_search::text, 'image', p.image::text,
    'prompt_multiplier', p.prompt_multiplier::text,
    'completion_multiplier', p.completion_multiplier::text,
    'markup_percent', p.markup_percent::text,
    'fixed', p.fixed, 'by_cost', p.by_cost, 'free', p.free);
end
$$;
revoke execute on function gateway.price_json(gateway.model_price) from public;

-- The inverse of price_json (charge_for reads the prices a begin_request answer gave).
create or replace function gateway.price_from_json(p jsonb)
returns gateway.model_price
language sql
immutable
security definer
set search_path = ''
as $$
  select row(p ->> 'model', p ->> 'catalog_id', p ->> 'canonical_slug',
             (p ->> 'prompt')::numeric, (p ->> 'completion')::numeric,
             (p ->> 'input_cache_read')::numeric, (p ->> 'input_cache_write')::numeric,
             (p ->> 'internal_reasoning')::numeric, (p ->> 'request')::numeric,
             (p ->> 'web_search')::numeric, (p ->> 'image')::numeric,
             (p ->> 'prompt_multiplier')::numeric, (p ->> 'completion_multiplier')::numeric,
             (p ->> 'markup_percent')::numeric, (p ->> 'fixed')::boolean,
             (p ->> 'by_cost')::boolean, (p ->> 'free')::boolean)::gateway.model_price;
$$;
revoke execute on function gateway.price_from_json(jsonb) from public;

-- The price a settle charges: the only candidate (p_prices null), the candidate the served model is
-- (by the id requested, the catalog id or its canonical slug), or else the dearest. For openrouter/auto, the
-- served model's current price, never above the dearest the hold was sized at.
create or replace function gateway.served_price(
  p_prices gateway.model_price[],
  p_dearest gateway.model_price,
  p_served text,
  p_mode text
)
returns gateway.model_price
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  p gateway.model_price;
  s record;
begin
  if p_prices is null then
    if p_dearest.model <> 'openrouter/auto' then
      return p_dearest;
    end if;
    p_prices := array[p_dearest];
  end if;
  select x.* into p from unnest(p_prices) x
   where p_served in (x.model, x.catalog_id, x.canonical_slug) limit 1;
  if found then
    return p;
  end if;
  select x.* into p from unnest(p_prices) x where x.model = 'openrouter/auto';
  if not found or p_served is null then
    return p_dearest;
  end if;
  select * into s
    from gateway.system_settings st
    cross join lateral gateway.price_candidates(
      array[p_served], p_mode, st.markup_percent, st.web_result_usd, st.usd_per_credit, false, false)
   where st.id;
  if s.refusal is not null then
    return p_dearest;
  end if;
  -- Capped by the auto row, category by category (and charged as it would be, should an override
  -- made since the admission charge the served model in a way the hold did not provide for).
  if not (((s.dearest).fixed and p.fixed) or ((s.dearest).by_cost and p.by_cost)) then
    return p;
  end if;
  return row(p_served, (s.dearest).catalog_id, (s.dearest).canonical_slug,
             least((s.dearest).prompt, p.prompt), least((s.dearest).completion, p.completion),
             least((s.dearest).input_cache_read, p.input_cache_read),
             least((s.dearest).input_cache_write, p.input_cache_write),
             least((s.dearest).internal_reasoning, p.internal_reasoning),
             least((s.dearest).request, p.request), least((s.dearest).web_search, p.web_search),
             least((s.dearest).image, p.image),
             least((s.dearest).prompt_multiplier, p.prompt_multiplier),
             least((s.dearest).completion_multiplier, p.completion_multiplier),
             least((s.dearest).markup_percent, p.markup_percent),
             (s.dearest).fixed and p.fixed, (s.dearest).by_cost and p.by_cost,
             (s.dearest).free or p.free)::gateway.model_price;
end
$$;
revoke execute on function gateway.served_price(gateway.model_price[], gateway.model_price, text, text) from public;

-- What a begin_request answer's `pricing` charges for a usage: the charge the settle would make,
-- without a hold. For the function's copy of the charge (credits.ts) to be checked against.
create or replace function gateway.charge_for(p_pricing jsonb, p_usage jsonb)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  f record;
  c record;
  v_price gateway.model_price;
begin
  f := gateway.usage_facts(p_usage || '{"settled_by":"usage"}');
  v_price := gateway.served_price(
    case when jsonb_array_length(p_pricing -> 'candidates') > 1 then
      array(select gateway.price_from_json(x) from jsonb_array_elements(p_pricing -> 'candidates') x)
    end,
    gateway.price_from_json(p_pricing -> 'dearest'), f.model, p_pricing ->> 'mode');
  c := gateway.charge(
    v_price, (p_pricing ->> 'usd_per_credit')::numeric, f.prompt_tokens, f.completion_tokens,
    f.cached_tokens, f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images,
    f.cost);
  return jsonb_build_object('credits', c.credits, 'upstream_usd', c.upstream_usd::text,
                            'model', v_price.model);
end
$$;
revoke execute on function gateway.charge_for(jsonb, jsonb) from public;
