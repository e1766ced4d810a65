-- cost_exact_pricing: owns what a request costs (issues 11 and 14; docs/SQL-API.md "Pricing").
--
-- A hold is an upper bound of what its request can cost. The function measures the request (a byte
-- bound of its prompt, its non-text parts, its candidate models, the web results it may pull, its
-- max_tokens and how long it may live); SQL prices those facts at the dearest candidate, category by
-- category, and stores the prices with the hold, so a later catalog or override change never alters
-- a request in flight. One charge function (gateway.charge) prices both the hold (at the worst usage
-- the facts allow) and the settle (at the reported usage), in both pricing modes:
--   flat  credits = ceil(prompt × prompt_multiplier + completion × completion_multiplier
--                        + (request + web searches × web_search + images × image) / usd_per_credit)
--         (a free catalog model's tokens cost 0)
--   cost  credits = ceil(upstream USD × (1 + markup/100) / usd_per_credit), upstream USD being
--         OpenRouter's usage.cost when reported, else computed from the stored catalog prices; an
--         override with fixed multipliers is charged as in flat mode.
-- A settle above its hold is charged in full and listed (gateway.overruns); a settle after its hold
-- expired still charges (the expired usage record becomes the real one).
--
-- The function still calls the signatures of 20261125172143/174446 (model, max_tokens, prompt
-- estimate): those stay as TRANSITIONAL overloads over the new code until it moves to the facts.

-- Settings ------------------------------------------------------------------------------------------
alter table gateway.system_settings
  add column pricing_mode text not null default 'flat' check (pricing_mode in ('flat', 'cost')),
  add column markup_percent numeric not null default 0
    check (markup_percent >= 0 and markup_percent <= 100000),
  add column image_part_tokens integer not null default 3000 check (image_part_tokens >= 0),
  add column audio_part_tokens integer not null default 20000 check (audio_part_tokens >= 0),
  add column file_part_tokens integer not null default 50000 check (file_part_tokens >= 0),
  add column web_result_tokens integer not null default 2000 check (web_result_tokens >= 0),
  add column web_result_usd numeric not null default 0.004 check (web_result_usd >= 0),
  add column refuse_unprofitable_models boolean not null default false;
-- Credits are USD / usd_per_credit in both modes now: zero would divide by zero.
alter table gateway.system_settings drop constraint system_settings_usd_per_credit_check;
alter table gateway.system_settings
  add constraint system_settings_usd_per_credit_check check (usd_per_credit > 0);
comment on column gateway.system_settings.usd_per_credit is
  'USD per credit: what a credit is sold for (monitor costs, usage.cost) and the rate at which USD '
  'prices become credits (fees in flat mode, everything in cost mode).';
comment on column gateway.system_settings.pricing_mode is
  'flat: credits per token (1, or the model''s multipliers) plus pass-through fees; cost: upstream '
  'USD × (1 + markup_percent/100) / usd_per_credit. Applies to requests admitted after the change.';
comment on column gateway.system_settings.markup_percent is
  'Cost mode: the default markup on upstream cost (a model_pricing row can override it).';
comment on column gateway.system_settings.image_part_tokens is
  'Prompt tokens a hold allows per image part whose bytes are not in the prompt bound.';
comment on column gateway.system_settings.audio_part_tokens is
  'Prompt tokens a hold allows per audio part.';
comment on column gateway.system_settings.file_part_tokens is
  'Prompt tokens a hold allows per file part (a file given by URL has no bytes to count).';
comment on column gateway.system_settings.web_result_tokens is
  'Prompt tokens a hold allows per web-search result the request may pull.';
comment on column gateway.system_settings.web_result_usd is
  'USD per web search when the catalog gives the model no web_search price (OpenRouter''s web plugin).';
comment on column gateway.system_settings.refuse_unprofitable_models is
  'Refuse (403 model_not_available) models whose catalog price is above what their multipliers charge.';

-- Prices --------------------------------------------------------------------------------------------
-- One candidate's prices as a hold stores them: USD per token/request/search/image with the
-- fallbacks applied (a cache or reasoning price of 0 is its parent's price; no web_search price is
-- web_result_usd), the override's multipliers and markup, and how it is charged: `fixed` (tokens ×
-- multipliers + fees: flat mode, or a fixed-price override in cost mode), `by_cost` (upstream USD ×
-- markup), `free` (flat mode, a catalog model priced 0 for prompt and completion: its tokens cost
-- nothing, fees still apply).
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

create table gateway.model_catalog (
  model text primary key,
  canonical_slug text,
  prompt numeric not null check (prompt >= 0),
  completion numeric not null check (completion >= 0),
  input_cache_read numeric not null default 0 check (input_cache_read >= 0),
  input_cache_write numeric not null default 0 check (input_cache_write >= 0),
  internal_reasoning numeric not null default 0 check (internal_reasoning >= 0),
  request numeric not null default 0 check (request >= 0),
  web_search numeric not null default 0 check (web_search >= 0),
  image numeric not null default 0 check (image >= 0),
  updated_at timestamptz not null
);
comment on table gateway.model_catalog is
  'Priceable models of the upstream catalog, USD per token/request/search/image, the dearest of '
  'every long-context or time override; filled by gateway.store_models_cache. Absent: unknown.';
alter table gateway.model_catalog enable row level security;
revoke all on gateway.model_catalog from public;
do $$
begin
  if exists (select from pg_roles where rolname = 'anon') then
    execute 'revoke all on gateway.model_catalog from anon, authenticated';
    execute 'create policy no_api_access on gateway.model_catalog for all to anon, authenticated '
            'using (false) with check (false)';
  end if;
end
$$;

-- Overrides by pattern: an exact id or a prefix ending in '*'. Null multipliers: 1 in flat mode and
-- charged by cost in cost mode; null markup: the setting's.
alter table gateway.model_pricing
  alter column prompt_multiplier drop not null,
  alter column prompt_multiplier drop default,
  alter column completion_multiplier drop not null,
  alter column completion_multiplier drop default,
  drop constraint model_pricing_completion_multiplier_check,
  add column markup_percent numeric check (markup_percent >= 0 and markup_percent <= 100000),
  add constraint model_pricing_completion_multiplier_check check (completion_multiplier >= 0),
  add constraint model_pricing_model_check
    check (model ~ '^[^*]*\*?$' and length(model) between 1 and 256);
comment on table gateway.model_pricing is
  'Operator overrides for a model (exact id) or a pattern (prefix ending in *): credits per token '
  '(flat mode; in cost mode a fixed selling price) and/or a markup (cost mode). A request is priced '
  'at admission (the hold keeps its prices); later changes do not affect it.';
create index model_pricing_patterns_idx on gateway.model_pricing (model)
  where right(model, 1) = '*';
comment on column gateway.model_pricing.model is
  'An exact model id, or a prefix ending in * (anthropic/*). Lookup: the id requested, the catalog '
  'id it resolved to, then the longest matching prefix.';

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

-- The catalog is stored whole (models_cache, for /v1/models) and priced (model_catalog).
create or replace function gateway.store_models_cache(
  p_data jsonb,
  p_error text default null,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_data is not null then
    update gateway.models_cache
       set data = p_data, fetched_at = p_now, last_error = p_error,
           last_error_at = case when p_error is null then last_error_at else p_now end
     where id;
    perform gateway.store_model_catalog(p_data, p_now);
  elsif p_error is not null then
    update gateway.models_cache set last_error = p_error, last_error_at = p_now where id;
  else
    raise exception using
      errcode = '22023', message = 'give p_data or p_error', hint = 'invalid_request';
  end if;
  return gateway.models_cache();
end
$$;
revoke execute on function gateway.store_models_cache(jsonb, text, timestamptz) from public;
grant execute on function gateway.store_models_cache(jsonb, text, timestamptz) to gateway_api;

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
revoke execute on function gateway.price_candidates(
  text[], text, numeric, numeric, numeric, boolean, boolean) from public;

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
revoke execute on function gateway.charge(
  gateway.model_price, numeric, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric)
  from public;

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
revoke execute on function gateway.hold_for(
  gateway.model_price, numeric, bigint, integer, integer, bigint, bigint) from public;

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
revoke execute on function gateway.served_price(
  gateway.model_price[], gateway.model_price, text, text) from public;

-- Request facts (begin_request's p_facts, begin_requests' elements, reserve_admissions'), checked:
-- anything missing, unknown, negative or out of range is 22023 with a message of our own.
--   models            1–16 model ids (1–256 characters), deduplicated in order; openrouter/auto = all
--   prompt_bound      tokens: bytes of the body as it goes upstream, minus inline image/audio data
--   parts             {"images", "audio", "files"}: non-text parts, 0–1000 each (default 0)
--   web_results       web-search results the request may pull, 0–100 (default 0; :online counts 5)
--   max_tokens        1–2^31-1, or null/absent for the default_max_tokens setting
--   lifetime_seconds  how long the function may keep the request alive, 0–86400 (default 0)
create or replace function gateway.request_facts(
  p jsonb,
  out models text[],
  out prompt_bound bigint,
  out images integer,
  out audio integer,
  out files integer,
  out web_results integer,
  out max_tokens integer,
  out lifetime_seconds integer
)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  -- Plain expressions, no queries: this runs for every admission.
  v_parts jsonb := nullif(p -> 'parts', 'null');
  v_models jsonb := p -> 'models';
  v_bad text;
begin
  if jsonb_typeof(p) is distinct from 'object' then
    v_bad := 'the request facts must be a JSON object';
  elsif p - array['models', 'prompt_bound', 'parts', 'web_results', 'max_tokens',
                  'lifetime_seconds'] <> '{}' then
    v_bad := format('unknown request facts: %s', left(array_to_string(array(
      select jsonb_object_keys(p - array['models', 'prompt_bound', 'parts', 'web_results',
                                         'max_tokens', 'lifetime_seconds'])), ', '), 200));
  elsif jsonb_typeof(v_models) is distinct from 'array'
        or jsonb_array_length(v_models) not between 1 and 16
        or jsonb_path_exists(v_models, '$[*] ? (@.type() != "string")') then
    v_bad := 'models must be an array of 1 to 16 model ids';
  elsif coalesce(jsonb_typeof(p -> 'prompt_bound'), '') <> 'number'
        or (p ->> 'prompt_bound') !~ '^[0-9]{1,10}$'
        or (p ->> 'prompt_bound')::bigint > 2147483647 then
    v_bad := 'prompt_bound must be an integer from 0 to 2147483647';
  elsif coalesce(jsonb_typeof(p -> 'web_results'), 'null') not in ('null', 'number')
        or (p ->> 'web_results') !~ '^[0-9]{1,3}$' or (p ->> 'web_results')::integer > 100 then
    v_bad := 'web_results must be an integer from 0 to 100';
  elsif coalesce(jsonb_typeof(p -> 'max_tokens'), 'null') not in ('null', 'number')
        or (p ->> 'max_tokens') !~ '^[0-9]{1,10}$' or (p ->> 'max_tokens')::bigint > 2147483647
        or (p ->> 'max_tokens')::bigint < 1 then
    v_bad := 'max_tokens must be an integer from 1 to 2147483647, or null';
  elsif coalesce(jsonb_typeof(p -> 'lifetime_seconds'), 'null') not in ('null', 'number')
        or (p ->> 'lifetime_seconds') !~ '^[0-9]{1,5}$'
        or (p ->> 'lifetime_seconds')::integer > 86400 then
    v_bad := 'lifetime_seconds must be an integer from 0 to 86400';
  elsif v_parts is not null
        and (jsonb_typeof(v_parts) <> 'object'
             or v_parts - array['images', 'audio', 'files'] <> '{}'
             or coalesce(jsonb_typeof(v_parts -> 'images'), 'null') not in ('null', 'number')
             or (v_parts ->> 'images') !~ '^[0-9]{1,4}$' or (v_parts ->> 'images')::integer > 1000
             or coalesce(jsonb_typeof(v_parts -> 'audio'), 'null') not in ('null', 'number')
             or (v_parts ->> 'audio') !~ '^[0-9]{1,4}$' or (v_parts ->> 'audio')::integer > 1000
             or coalesce(jsonb_typeof(v_parts -> 'files'), 'null') not in ('null', 'number')
             or (v_parts ->> 'files') !~ '^[0-9]{1,4}$' or (v_parts ->> 'files')::integer > 1000)
  then
    v_bad := 'parts must be {"images", "audio", "files"}, each an integer from 0 to 1000';
  end if;
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request', message = v_bad;
  end if;
  if jsonb_array_length(v_models) = 1 then
    models := array[v_models ->> 0];
    v_bad := case when length(models[1]) not between 1 and 256 then 'bad' end;
  else
    select array_agg(x.id order by x.first), max(case when length(x.id) not between 1 and 256
                                                      then 'bad' end)
      into models, v_bad
      from (select e.id, min(e.o) as first
              from jsonb_array_elements_text(v_models) with ordinality e (id, o)
             group by e.id) x;
  end if;
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a model id must have 1 to 256 characters';
  end if;
  prompt_bound := (p ->> 'prompt_bound')::bigint;
  images := coalesce((v_parts ->> 'images')::integer, 0);
  audio := coalesce((v_parts ->> 'audio')::integer, 0);
  files := coalesce((v_parts ->> 'files')::integer, 0);
  web_results := coalesce((p ->> 'web_results')::integer, 0);
  max_tokens := (p ->> 'max_tokens')::integer;
  lifetime_seconds := coalesce((p ->> 'lifetime_seconds')::integer, 0);
end
$$;
revoke execute on function gateway.request_facts(jsonb) from public;

-- A settle's usage (settle_request's p_usage, settle_requests' elements), checked like the facts.
--   model               the model upstream reported (picks the candidate whose price is charged)
--   prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens (parts of the prompt),
--   reasoning_tokens (part of the completion), web_search_requests, images: counts (default 0)
--   cost                OpenRouter's usage.cost, USD, decimal text (or a number), ≥ 0; absent/null:
--                       computed from the hold's prices. `upstream_cost`: the transitional name.
--   status, latency_ms, generation_id: recorded; settled_by: usage|generation|stream_count|sweeper
create or replace function gateway.usage_facts(
  p jsonb,
  out model text,
  out prompt_tokens bigint,
  out completion_tokens bigint,
  out cached_tokens bigint,
  out cache_write_tokens bigint,
  out reasoning_tokens bigint,
  out web_search_requests bigint,
  out images bigint,
  out cost numeric,
  out status text,
  out latency_ms integer,
  out generation_id text,
  out settled_by text
)
language plpgsql
immutable
security definer
set search_path = ''
as $$
declare
  -- Plain expressions, no queries: this runs for every settle.
  v_cost jsonb := coalesce(nullif(p -> 'cost', 'null'), nullif(p -> 'upstream_cost', 'null'));
  v_counts jsonb;
  v_bad text;
begin
  if jsonb_typeof(p) is distinct from 'object' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the usage must be a JSON object';
  end if;
  -- The counts, present and not null, as one object: each must be an integer in range.
  v_counts := jsonb_strip_nulls(p - array['hold_id', 'model', 'cost', 'upstream_cost', 'status',
                                          'generation_id', 'settled_by']);
  if v_counts - array['prompt_tokens', 'completion_tokens', 'cached_tokens', 'cache_write_tokens',
                      'reasoning_tokens', 'web_search_requests', 'images', 'latency_ms'] <> '{}' then
    v_bad := format('unknown usage fields: %s', left(array_to_string(array(
      select jsonb_object_keys(v_counts - array['prompt_tokens', 'completion_tokens',
                                                'cached_tokens', 'cache_write_tokens',
                                                'reasoning_tokens', 'web_search_requests',
                                                'images', 'latency_ms'])), ', '), 200));
  elsif jsonb_path_exists(v_counts, '$.* ? (@.type() != "number" || @ < 0 || @ > 2147483647 '
                                    '|| @.floor() != @)') then
    v_bad := 'token counts, web_search_requests, images and latency_ms must be integers from 0 to '
             '2147483647';
  elsif coalesce(jsonb_typeof(p -> 'model'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'status'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'generation_id'), 'null') not in ('null', 'string')
        or coalesce(jsonb_typeof(p -> 'settled_by'), 'null') not in ('null', 'string')
        or length(p ->> 'model') > 256 or length(p ->> 'status') > 256
        or length(p ->> 'generation_id') > 256 then
    v_bad := 'model, status, generation_id and settled_by must be strings of at most 256 characters';
  elsif v_cost is not null
        and (jsonb_typeof(v_cost) not in ('string', 'number')
             or (v_cost #>> '{}') !~ '^[0-9]{1,7}(\.[0-9]{0,30})?([eE][-+]?[0-9]{1,2})?$'
             or (v_cost #>> '{}')::numeric >= 1000000) then
    v_bad := 'cost must be a non-negative decimal number of USD below 1000000';
  end if;
  if v_bad is not null then
    raise exception using errcode = '22023', hint = 'invalid_request', message = v_bad;
  end if;
  model := p ->> 'model';
  prompt_tokens := coalesce((v_counts ->> 'prompt_tokens')::bigint, 0);
  completion_tokens := coalesce((v_counts ->> 'completion_tokens')::bigint, 0);
  cached_tokens := coalesce((v_counts ->> 'cached_tokens')::bigint, 0);
  cache_write_tokens := coalesce((v_counts ->> 'cache_write_tokens')::bigint, 0);
  reasoning_tokens := coalesce((v_counts ->> 'reasoning_tokens')::bigint, 0);
  web_search_requests := coalesce((v_counts ->> 'web_search_requests')::bigint, 0);
  images := coalesce((v_counts ->> 'images')::bigint, 0);
  cost := (v_cost #>> '{}')::numeric;
  status := p ->> 'status';
  latency_ms := (v_counts ->> 'latency_ms')::integer;
  generation_id := p ->> 'generation_id';
  settled_by := p ->> 'settled_by';
end
$$;
revoke execute on function gateway.usage_facts(jsonb) from public;

-- Holds keep their prices, the facts they were sized from and when they expire -------------------
alter table gateway.holds
  add column prices gateway.model_price[],
  add column dearest gateway.model_price,
  add column pricing_mode text,
  add column usd_per_credit numeric,
  add column facts jsonb,
  add column expires_at timestamptz;
-- Holds open at this migration were priced by their multipliers: that, in flat mode, is what they
-- keep; they expire as they would have.
update gateway.holds h set
  dearest = row(h.model, null, null, 0, 0, 0, 0, 0, 0, 0, 0, h.prompt_multiplier,
                h.completion_multiplier, 0, true, false, false)::gateway.model_price,
  pricing_mode = 'flat',
  usd_per_credit = s.usd_per_credit,
  facts = jsonb_build_object('prompt_bound', h.prompt_estimate),
  expires_at = h.created_at + make_interval(secs => s.hold_timeout_seconds)
  from gateway.system_settings s
 where s.id;
alter table gateway.holds
  alter column dearest set not null,
  alter column pricing_mode set not null,
  alter column usd_per_credit set not null,
  alter column facts set not null,
  alter column expires_at set not null;
comment on table gateway.holds is
  'Open holds only: credits reserved for a request in flight, the worst case of its facts at the '
  'dearest candidate''s prices (stored with it). settle/void/the sweeper delete the row and write '
  'its usage record.';
comment on column gateway.holds.prompt_estimate is
  'Prompt tokens the hold covers: the prompt bound plus the allowances of parts and web results.';
comment on column gateway.holds.prices is
  'The candidates'' prices at admission, when more than one (else dearest is the only one); the '
  'settle charges the served model''s (gateway.served_price).';
comment on column gateway.holds.expires_at is
  'Admission + greatest(hold_timeout_seconds, the request''s lifetime): when the sweeper may expire it.';

alter table gateway.usage_records
  add column cached_tokens integer not null default 0,
  add column cache_write_tokens integer not null default 0,
  add column reasoning_tokens integer not null default 0,
  add column web_search_requests integer not null default 0,
  add column images integer not null default 0,
  add column upstream_usd numeric,
  add column pricing_mode text,
  add column usd_per_credit numeric,
  add column price gateway.model_price,
  add column candidates gateway.model_price[],
  add column facts jsonb,
  add column overrun_credits bigint not null default 0,
  add column settled_late boolean not null default false;
comment on column gateway.usage_records.upstream_usd is
  'What upstream cost, USD: usage.cost as reported (also in upstream_cost), else computed from price.';
comment on column gateway.usage_records.price is
  'The prices charged (the served candidate''s, or the dearest; for a void or an expiry, the dearest).';
comment on column gateway.usage_records.candidates is
  'Expired records only: the candidates'' prices when more than one, for a settle that arrives late.';
comment on column gateway.usage_records.overrun_credits is
  'Credits charged above the hold (charged in full: the operator paid upstream for them).';
comment on column gateway.usage_records.settled_late is
  'Settled after its hold expired: the expired record became the real one, and the charge was posted.';
-- A settle may still come for a hold expired shortly before this migration: give those records the
-- prices their holds were admitted at.
update gateway.usage_records u set
  price = row(u.model, null, null, 0, 0, 0, 0, 0, 0, 0, 0, coalesce(mp.prompt_multiplier, 1),
              coalesce(mp.completion_multiplier, 1), 0, true, false, false)::gateway.model_price,
  candidates = array[row(u.model, null, null, 0, 0, 0, 0, 0, 0, 0, 0,
                         coalesce(mp.prompt_multiplier, 1), coalesce(mp.completion_multiplier, 1),
                         0, true, false, false)::gateway.model_price],
  pricing_mode = 'flat',
  usd_per_credit = s.usd_per_credit
  from gateway.system_settings s, gateway.usage_records u2
  left join gateway.model_pricing mp on mp.model = u2.model
 where s.id and u2.hold_id = u.hold_id and u.status = 'expired'
   and u.settled_at > now() - interval '1 day';
create index usage_records_overrun_idx on gateway.usage_records (settled_at)
  where overrun_credits > 0;

-- Admission ---------------------------------------------------------------------------------------
-- begin_request's body, for its two signatures and begin_requests: the facts typed and checked.
-- Unchanged from 20261125153547 but for the pricing: the candidates are priced (a refusal counts
-- nothing), the credit checks and the hold are gateway.hold_for's, and the hold keeps its prices.
-- p_transitional (the old signatures): an unknown model at its override or 1 credit per token in
-- flat mode, and no `pricing` in the answer (that caller reads the multipliers).
create or replace function gateway.admit(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_models text[],
  p_prompt_bound bigint,
  p_images integer,
  p_audio integer,
  p_files integer,
  p_web_results integer,
  p_max_tokens integer,
  p_lifetime_seconds integer,
  p_transitional boolean,
  p_now timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  c_grans constant gateway.rate_granularity[] :=
    array['minute', 'hour', 'day']::gateway.rate_granularity[];
  c_names constant text[] := array['minute', 'hour', 'day', 'minute', 'hour', 'day'];
  v record;
  pc record;
  hf record;
  v_hash bytea := p_key_hash;
  v_reason text;
  v_answer jsonb;
  v_limits jsonb;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
  v_n integer;
  v_req_limit bigint[];
  v_tok_limit bigint[];
  v_req_used bigint[];
  v_tok_used bigint[];
  v_counted boolean := false;
  v_affordable boolean;
  v_refused integer;
  v_refused_kind text;
  v_retry integer;
  v_reset integer;
  v_web integer;
  v_prompt bigint;
  v_want bigint;
  v_balance bigint;
  v_held bigint;
  v_max_tokens bigint;
  v_hold bigint;
  v_hold_id bigint;
  v_rem bigint;
  v_req_at integer;
  v_req_rem bigint;
  v_tok_at integer;
  v_tok_rem bigint;
  v_dearest jsonb;
  v_candidates jsonb;
  r1 bigint; r2 bigint; r3 bigint; t1 bigint; t2 bigint; t3 bigint;
  r4 bigint; r5 bigint; r6 bigint; t4 bigint; t5 bigint; t6 bigint;
begin
  -- 1. The key, its account, balance, limits and the settings: one statement of unique-index
  --    probes, no locks, by the hash of the key's current secret. If no key has this one, it may be
  --    the previous secret of a key within its grace: then the same statement again, with that
  --    key's current hash (an unknown key pays the second probe; a known one no longer pays for
  --    the previous-secret probe).
  loop
    select k.id as key_id, k.account_id, k.key_prefix, k.is_active,
           k.deleted_at is not null as deleted, k.expires_at, k.permissions, k.allowed_ips,
           k.allowed_referrers, k.max_requests,
           c.requests_used, a.is_active as account_active, b.balance, b.held, s.default_max_tokens,
           s.pricing_mode, s.markup_percent, s.usd_per_credit, s.web_result_usd,
           s.refuse_unprofitable_models, s.image_part_tokens, s.audio_part_tokens,
           s.file_part_tokens, s.web_result_tokens, s.hold_timeout_seconds,
           coalesce(r.requests_per_minute, s.requests_per_minute) as a_rpm,
           coalesce(r.requests_per_hour, s.requests_per_hour) as a_rph,
           coalesce(r.requests_per_day, s.requests_per_day) as a_rpd,
           coalesce(r.tokens_per_minute, s.tokens_per_minute) as a_tpm,
           coalesce(r.tokens_per_hour, s.tokens_per_hour) as a_tph,
           coalesce(r.tokens_per_day, s.tokens_per_day) as a_tpd,
           kl.key_id is not null as key_limited,
           kl.requests_per_minute as k_rpm, kl.requests_per_hour as k_rph,
           kl.requests_per_day as k_rpd, kl.tokens_per_minute as k_tpm,
           kl.tokens_per_hour as k_tph, kl.tokens_per_day as k_tpd
      into v
      from gateway.api_keys k
      join gateway.key_counters c on c.key_id = k.id
      join gateway.accounts a on a.id = k.account_id
      join gateway.credit_balances b on b.account_id = k.account_id
      join gateway.system_settings s on s.id
      left join gateway.rate_limits r on r.account_id = k.account_id
      left join gateway.key_rate_limits kl on kl.key_id = k.id
     where k.key_hash = v_hash;
    exit when found or v_hash is distinct from p_key_hash;
    select k2.key_hash into v_hash
      from gateway.api_keys k2
     where k2.previous_key_hash = p_key_hash and k2.previous_valid_until > p_now
       and not exists (select from gateway.api_keys k1 where k1.key_hash = p_key_hash);
    exit when not found;
  end loop;

  v_reason := gateway.key_refusal(
    v.key_id, v.is_active, v.deleted, v.account_active, v.expires_at, v.permissions,
    v.allowed_ips, v.allowed_referrers, p_client_ip, p_referrer, 'write', p_now
  );
  if v_reason is null and v.max_requests is not null and v.requests_used >= v.max_requests then
    v_reason := 'key_request_cap';
  end if;
  if v_reason is not null then
    return jsonb_build_object(
      'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
  end if;

  -- The prices of the candidates: a model that cannot be priced is refused before anything counts.
  pc := gateway.price_candidates(
    p_models, v.pricing_mode, v.markup_percent, v.web_result_usd, v.usd_per_credit,
    v.refuse_unprofitable_models, p_transitional);
  if pc.refusal is not null then
    return jsonb_build_object(
      'ok', false, 'reason', pc.refusal, 'model', pc.refused_model,
      'message', case pc.refusal
        when 'model_not_found' then format(
          'Model %s is not in the model catalog (a :free variant only if the catalog lists it)',
          pc.refused_model)
        when 'pricing_unavailable' then
          'The model catalog has not been loaded yet, so no request can be priced; retry shortly'
        else format('Model %s is not available on this gateway', pc.refused_model) end);
  end if;
  -- The worst prompt: the bound of its text, an allowance per part whose bytes it does not see and
  -- per web result (:online searches as the web plugin's default, 5 results).
  v_web := greatest(p_web_results,
                    case when array_to_string(p_models, chr(1)) || chr(1) like '%:online' || chr(1) || '%'
                         then 5 else 0 end);
  v_prompt := p_prompt_bound + p_images::bigint * v.image_part_tokens
              + p_audio::bigint * v.audio_part_tokens + p_files::bigint * v.file_part_tokens
              + v_web::bigint * v.web_result_tokens;
  if v_prompt > 2147483647 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'the request is too large to be priced (its prompt bound exceeds 2^31 tokens)';
  end if;
  v_want := coalesce(p_max_tokens, v.default_max_tokens);
  -- On the unlocked balance: whether one completion token is affordable at all (else it is refused
  -- below, rate_limited or insufficient_credits, without writing anything).
  hf := gateway.hold_for(
    pc.dearest, v.usd_per_credit, v_prompt, v_web, p_images, v_want, v.balance - v.held);
  v_affordable := v.balance > 0 and hf.max_tokens >= 1;

  v_n := case when v.key_limited then 6 else 3 end;
  v_req_limit := array[v.a_rpm, v.a_rph, v.a_rpd, v.k_rpm, v.k_rph, v.k_rpd];
  v_tok_limit := array[v.a_tpm, v.a_tph, v.a_tpd, v.k_tpm, v.k_tph, v.k_tpd];

  -- 2. Count the request, if affordable. Per subject, an UPDATE whose WHERE checks every limit
  --    (re-checked on the row under its lock when a concurrent count changed it); when it counts
  --    nothing (no row yet, or a limit refuses), the upsert, whose DO UPDATE … WHERE makes the same
  --    check and, refused, leaves the row locked for the refusal's read below. A zero limit refuses
  --    even an empty window: then nothing is inserted either. The account's row is locked before
  --    the key's. The window-rollover case is written out: as a function it would cost ~23 µs more
  --    per UPDATE (bench/probes/rollover-helper.sql).
  if v_affordable then
    update gateway.rate_counters c set
      minute_start = greatest(c.minute_start, v_minute),
      minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
      minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
      hour_start = greatest(c.hour_start, v_hour),
      hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
      hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
      day_start = greatest(c.day_start, v_day),
      day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
      day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
    where c.subject_kind = 'account' and c.subject_id = v.account_id
      and (v.a_rpm is null
           or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.a_rpm)
      and (v.a_rph is null
           or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.a_rph)
      and (v.a_rpd is null
           or case when c.day_start >= v_day then c.day_requests else 0 end < v.a_rpd)
      and (v.a_tpm is null
           or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.a_tpm)
      and (v.a_tph is null
           or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.a_tph)
      and (v.a_tpd is null
           or case when c.day_start >= v_day then c.day_tokens else 0 end < v.a_tpd)
    returning c.minute_requests, c.hour_requests, c.day_requests,
              c.minute_tokens, c.hour_tokens, c.day_tokens
      into r1, r2, r3, t1, t2, t3;
    v_counted := found;
    if not v_counted then
      insert into gateway.rate_counters as c (
        subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
        hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
      select 'account', v.account_id, v_minute, 1, 0, v_hour, 1, 0, v_day, 1, 0
       where coalesce(least(v.a_rpm, v.a_rph, v.a_rpd, v.a_tpm, v.a_tph, v.a_tpd), 1) > 0
      on conflict (subject_kind, subject_id) do update set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
      where (v.a_rpm is null
             or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.a_rpm)
        and (v.a_rph is null
             or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.a_rph)
        and (v.a_rpd is null
             or case when c.day_start >= v_day then c.day_requests else 0 end < v.a_rpd)
        and (v.a_tpm is null
             or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.a_tpm)
        and (v.a_tph is null
             or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.a_tph)
        and (v.a_tpd is null
             or case when c.day_start >= v_day then c.day_tokens else 0 end < v.a_tpd)
      returning c.minute_requests, c.hour_requests, c.day_requests,
                c.minute_tokens, c.hour_tokens, c.day_tokens
        into r1, r2, r3, t1, t2, t3;
      v_counted := found;
    end if;

    if v_counted and v.key_limited then
      update gateway.rate_counters c set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
      where c.subject_kind = 'key' and c.subject_id = v.key_id
        and (v.k_rpm is null
             or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.k_rpm)
        and (v.k_rph is null
             or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.k_rph)
        and (v.k_rpd is null
             or case when c.day_start >= v_day then c.day_requests else 0 end < v.k_rpd)
        and (v.k_tpm is null
             or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.k_tpm)
        and (v.k_tph is null
             or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.k_tph)
        and (v.k_tpd is null
             or case when c.day_start >= v_day then c.day_tokens else 0 end < v.k_tpd)
      returning c.minute_requests, c.hour_requests, c.day_requests,
                c.minute_tokens, c.hour_tokens, c.day_tokens
        into r4, r5, r6, t4, t5, t6;
      v_counted := found;
      if not v_counted then
        insert into gateway.rate_counters as c (
          subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
          hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
        select 'key', v.key_id, v_minute, 1, 0, v_hour, 1, 0, v_day, 1, 0
         where coalesce(least(v.k_rpm, v.k_rph, v.k_rpd, v.k_tpm, v.k_tph, v.k_tpd), 1) > 0
        on conflict (subject_kind, subject_id) do update set
          minute_start = greatest(c.minute_start, v_minute),
          minute_requests = case when c.minute_start >= v_minute then c.minute_requests + 1 else 1 end,
          minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
          hour_start = greatest(c.hour_start, v_hour),
          hour_requests = case when c.hour_start >= v_hour then c.hour_requests + 1 else 1 end,
          hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
          day_start = greatest(c.day_start, v_day),
          day_requests = case when c.day_start >= v_day then c.day_requests + 1 else 1 end,
          day_tokens = case when c.day_start >= v_day then c.day_tokens else 0 end
        where (v.k_rpm is null
               or case when c.minute_start >= v_minute then c.minute_requests else 0 end < v.k_rpm)
          and (v.k_rph is null
               or case when c.hour_start >= v_hour then c.hour_requests else 0 end < v.k_rph)
          and (v.k_rpd is null
               or case when c.day_start >= v_day then c.day_requests else 0 end < v.k_rpd)
          and (v.k_tpm is null
               or case when c.minute_start >= v_minute then c.minute_tokens else 0 end < v.k_tpm)
          and (v.k_tph is null
               or case when c.hour_start >= v_hour then c.hour_tokens else 0 end < v.k_tph)
          and (v.k_tpd is null
               or case when c.day_start >= v_day then c.day_tokens else 0 end < v.k_tpd)
        returning c.minute_requests, c.hour_requests, c.day_requests,
                  c.minute_tokens, c.hour_tokens, c.day_tokens
          into r4, r5, r6, t4, t5, t6;
        v_counted := found;
      end if;
      if not v_counted then
        -- Refused by the key's limits: take back the account's count (its row is still locked).
        update gateway.rate_counters c
           set minute_requests = c.minute_requests - 1, hour_requests = c.hour_requests - 1,
               day_requests = c.day_requests - 1
         where c.subject_kind = 'account' and c.subject_id = v.account_id;
      end if;
    end if;
  end if;

  -- Steps 2 to 5 decide; a refusal that reports the windows leaves with its answer in v_answer.
  <<decided>>
  begin
    if not v_counted then
      -- Refused by a limit, or by the credits: read the counts (those of the refusing subject are
      -- locked) to say which, as the old pre-read did: a window is exhausted when used >= limit,
      -- and the refusal names the one that resets last.
      select case when c.minute_start >= v_minute then c.minute_requests else 0 end,
             case when c.hour_start >= v_hour then c.hour_requests else 0 end,
             case when c.day_start >= v_day then c.day_requests else 0 end,
             case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
             case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
             case when c.day_start >= v_day then c.day_tokens else 0 end
        into r1, r2, r3, t1, t2, t3
        from gateway.rate_counters c
       where c.subject_kind = 'account' and c.subject_id = v.account_id;
      if v.key_limited then
        select case when c.minute_start >= v_minute then c.minute_requests else 0 end,
               case when c.hour_start >= v_hour then c.hour_requests else 0 end,
               case when c.day_start >= v_day then c.day_requests else 0 end,
               case when c.minute_start >= v_minute then c.minute_tokens else 0 end,
               case when c.hour_start >= v_hour then c.hour_tokens else 0 end,
               case when c.day_start >= v_day then c.day_tokens else 0 end
          into r4, r5, r6, t4, t5, t6
          from gateway.rate_counters c
         where c.subject_kind = 'key' and c.subject_id = v.key_id;
      end if;
      v_req_used := array[coalesce(r1, 0), coalesce(r2, 0), coalesce(r3, 0),
                          coalesce(r4, 0), coalesce(r5, 0), coalesce(r6, 0)];
      v_tok_used := array[coalesce(t1, 0), coalesce(t2, 0), coalesce(t3, 0),
                          coalesce(t4, 0), coalesce(t5, 0), coalesce(t6, 0)];
      for i in 1 .. v_n loop
        if (v_req_limit[i] is not null and v_req_used[i] >= v_req_limit[i])
           or (v_tok_limit[i] is not null and v_tok_used[i] >= v_tok_limit[i]) then
          v_reset := gateway.window_reset_seconds(c_grans[(i - 1) % 3 + 1], p_now);
          if v_retry is null or v_reset > v_retry then
            v_retry := v_reset;
            v_refused := i;
            v_refused_kind := case when v_req_limit[i] is not null and v_req_used[i] >= v_req_limit[i]
                                   then 'requests' else 'tokens' end;
          end if;
        end if;
      end loop;
      if v_refused is not null then
        v_answer := jsonb_build_object(
          'ok', false, 'reason', 'rate_limited', 'message', gateway.refusal_message('rate_limited'),
          'retry_after_seconds', v_retry,
          'window', v_refused_kind || '_per_' || c_names[v_refused],
          'scope', case when v_refused <= 3 then 'account' else 'key' end);
        exit decided;
      end if;
      if v_affordable then
        -- Not counted, yet no window is exhausted: cannot be (the refusing row is locked).
        raise exception 'rate counters of account % changed under their lock', v.account_id;
      end if;
      v_balance := v.balance;
      v_held := v.held;
    else
      v_req_used := array[r1, r2, r3, r4, r5, r6];
      v_tok_used := array[t1, t2, t3, t4, t5, t6];

      -- 3. Credits, decided on the locked balance row: the largest max_tokens the available
      --    credits afford (capped by the request or the default), and its worst case as the hold.
      select b.balance, b.held into v_balance, v_held
        from gateway.credit_balances b where b.account_id = v.account_id
         for update;
      if v_balance is distinct from v.balance or v_held is distinct from v.held then
        hf := gateway.hold_for(
          pc.dearest, v.usd_per_credit, v_prompt, v_web, p_images, v_want, v_balance - v_held);
      end if;
      v_max_tokens := hf.max_tokens;
      if v_max_tokens < 1 or v_balance <= 0 then
        v_reason := 'insufficient_credits';
      else
        -- 4. The key's request cap, atomically (a concurrent request may have taken the last one).
        update gateway.key_counters c
           set requests_used = c.requests_used + 1, last_used_at = p_now
         where c.key_id = v.key_id
           and (v.max_requests is null or c.requests_used < v.max_requests);
        if not found then
          v_reason := 'key_request_cap';
        end if;
      end if;
      if v_reason is not null then
        -- Refused after counting: take the count back (both rows are still locked by this
        -- transaction).
        update gateway.rate_counters c
           set minute_requests = c.minute_requests - 1, hour_requests = c.hour_requests - 1,
               day_requests = c.day_requests - 1
         where (c.subject_kind = 'account' and c.subject_id = v.account_id)
            or (v.key_limited and c.subject_kind = 'key' and c.subject_id = v.key_id);
        if v_reason <> 'insufficient_credits' then
          return jsonb_build_object(
            'ok', false, 'reason', v_reason, 'message', gateway.refusal_message(v_reason));
        end if;
        v_req_used := array[r1 - 1, r2 - 1, r3 - 1, r4 - 1, r5 - 1, r6 - 1];
      end if;
    end if;
    if not v_counted or v_reason is not null then
      -- Refused for credits: say by how much the worst case of one completion token exceeds
      -- what the account can spend.
      v_answer := jsonb_build_object(
        'ok', false, 'reason', 'insufficient_credits',
        'message', case
          when v_balance <= 0 then format(
            'Insufficient credits: the balance is %s; add credits to continue', v_balance)
          else format(
            'Insufficient credits: this request''s worst case with one completion token is %s '
            'credits (its prompt of up to %s tokens at the prices of %s), %s more than the %s '
            'available; shorten the prompt or add credits',
            hf.needed, v_prompt, array_to_string(p_models, ', '),
            hf.needed - (v_balance - v_held), v_balance - v_held) end,
        'balance', v_balance, 'available_credits', v_balance - v_held,
        'needed_credits', hf.needed);
      exit decided;
    end if;
    v_hold := hf.amount;

    -- 5. Place the hold (the balance row is already locked by this transaction).
    with b as (
      update gateway.credit_balances set held = held + v_hold where account_id = v.account_id
    )
    insert into gateway.holds (
      account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
      completion_multiplier, count_key_windows, created_at, prices, dearest, pricing_mode,
      usd_per_credit, facts, expires_at
    ) values (
      v.account_id, v.key_id, p_models[1], v_hold, v_max_tokens, v_prompt,
      (pc.dearest).prompt_multiplier, (pc.dearest).completion_multiplier, v.key_limited, p_now,
      case when cardinality(pc.prices) > 1 then pc.prices end, pc.dearest, v.pricing_mode,
      v.usd_per_credit,
      jsonb_build_object('prompt_bound', p_prompt_bound, 'images', p_images, 'audio', p_audio,
                         'files', p_files, 'web_results', v_web,
                         'lifetime_seconds', p_lifetime_seconds),
      p_now + make_interval(secs => greatest(v.hold_timeout_seconds, p_lifetime_seconds))
    )
    returning id into v_hold_id;
  end decided;

  -- The x-ratelimit-* view of the windows counted (admitted) or read (refused): for requests and
  -- for tokens, the window with the least remaining, the first of them on a tie, and the seconds
  -- until it resets, computed as gateway.window_reset_seconds does (windows are aligned to the
  -- epoch). Inline rather than a function per window: a call costs a search_path switch.
  for i in 1 .. v_n loop
    if v_req_limit[i] is not null then
      v_rem := greatest(v_req_limit[i] - v_req_used[i], 0);
      if v_req_rem is null or v_rem < v_req_rem then
        v_req_rem := v_rem;
        v_req_at := i;
      end if;
    end if;
    if v_tok_limit[i] is not null then
      v_rem := greatest(v_tok_limit[i] - v_tok_used[i], 0);
      if v_tok_rem is null or v_rem < v_tok_rem then
        v_tok_rem := v_rem;
        v_tok_at := i;
      end if;
    end if;
  end loop;
  v_limits := jsonb_build_object(
    'requests', case when v_req_at is not null then jsonb_build_object(
      'limit', v_req_limit[v_req_at], 'remaining', v_req_rem,
      'reset_seconds', greatest(1, ceil(
        case (v_req_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end
        - mod(extract(epoch from p_now),
              case (v_req_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end)))::integer)
    end,
    'tokens', case when v_tok_at is not null then jsonb_build_object(
      'limit', v_tok_limit[v_tok_at], 'remaining', v_tok_rem,
      'reset_seconds', greatest(1, ceil(
        case (v_tok_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end
        - mod(extract(epoch from p_now),
              case (v_tok_at - 1) % 3 when 0 then 60 when 1 then 3600 else 86400 end)))::integer)
    end);
  if v_answer is not null then
    return v_answer || jsonb_build_object('limits', v_limits);
  end if;

  if not p_transitional then
    v_dearest := gateway.price_json(pc.dearest);
    if cardinality(pc.prices) = 1 then
      v_candidates := jsonb_build_array(v_dearest);
    else
      select jsonb_agg(gateway.price_json(x)) into v_candidates from unnest(pc.prices) x;
    end if;
  end if;
  return jsonb_build_object(
    'ok', true,
    'hold_id', v_hold_id,
    'user_id', v.account_id,
    'key_id', v.key_id,
    'key_prefix', v.key_prefix,
    'held_credits', v_hold,
    'max_tokens', v_max_tokens,
    'balance', v_balance,
    'available_credits', v_balance - v_held - v_hold,
    'expires_at', p_now + make_interval(secs => greatest(v.hold_timeout_seconds, p_lifetime_seconds)),
    -- What the settle will charge by (gateway.charge at the served candidate's prices), so that
    -- the function can report it without waiting: every number as exact decimal text.
    'pricing', case when not p_transitional then jsonb_build_object(
      'mode', v.pricing_mode,
      'usd_per_credit', v.usd_per_credit::text,
      'candidates', v_candidates,
      'dearest', v_dearest) end,
    -- TRANSITIONAL (the function's credits.ts until it reads `pricing`): the dearest candidate's
    -- credits per token in flat mode (0 for a free model).
    'prompt_multiplier', case when (pc.dearest).free then '0'
                              else (pc.dearest).prompt_multiplier::text end,
    'completion_multiplier', case when (pc.dearest).free then '0'
                                  else (pc.dearest).completion_multiplier::text end,
    'limits', v_limits
  );
end
$$;
revoke execute on function gateway.admit(
  bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, boolean,
  timestamptz) from public;

-- Admits a request from its measured facts (gateway.request_facts) and holds the worst case of
-- them at its dearest candidate's prices. One transaction; refusals are answers, bad input 22023.
create or replace function gateway.begin_request(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_facts jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  f record;
begin
  f := gateway.request_facts(p_facts);
  return gateway.admit(
    p_key_hash, p_client_ip, p_referrer, f.models, f.prompt_bound, f.images, f.audio, f.files,
    f.web_results, f.max_tokens, f.lifetime_seconds, false, p_now);
end
$$;
revoke execute on function gateway.begin_request(bytea, inet, text, jsonb, timestamptz) from public;
grant execute on function gateway.begin_request(bytea, inet, text, jsonb, timestamptz)
  to gateway_api;

-- TRANSITIONAL: the signature the function calls until it measures the facts. The prompt estimate
-- is the prompt bound, [model] the candidates; an unknown model is priced as before the catalog.
create or replace function gateway.begin_request(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_model text,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_max_tokens < 1 or p_prompt_tokens < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'max_tokens must be >= 1 and prompt_tokens >= 0';
  end if;
  return gateway.admit(
    p_key_hash, p_client_ip, p_referrer, array[coalesce(p_model, '')],
    coalesce(p_prompt_tokens, 0), 0, 0, 0, 0, p_max_tokens, 0, true, p_now);
end
$$;
revoke execute on function gateway.begin_request(bytea, inet, text, text, integer, integer, timestamptz)
  from public;
grant execute on function gateway.begin_request(bytea, inet, text, text, integer, integer, timestamptz)
  to gateway_api;

-- Many admissions in one transaction, in account order (so that concurrent batches and settles
-- cannot deadlock), each as begin_request would make it. An element is
-- {key_hash, client_ip, referrer, …facts}, or (TRANSITIONAL, without `models`) {key_hash, client_ip,
-- referrer, model, max_tokens, prompt_tokens}.
create or replace function gateway.begin_requests(
  p_batch jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  e record;
  f record;
  v_results jsonb[];
begin
  if jsonb_typeof(p_batch) is distinct from 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'p_batch must be a JSON array of begin_request arguments';
  end if;
  -- The hash is the one argument begin_request cannot check (any bytea is a possible hash), and
  -- decode() would quote a bad value in its error: checked here, with a message of our own.
  if exists (select from jsonb_array_elements(p_batch) b (v)
              where jsonb_typeof(b.v -> 'key_hash') is distinct from 'string'
                 or (b.v ->> 'key_hash') !~ '^[0-9a-f]{64}$') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'every element needs key_hash: the SHA-256 of the key as 64 lower-case hex digits';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  for e in
    select b.ord, b.v, d.h
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      cross join lateral (select decode(b.v ->> 'key_hash', 'hex') as h) d
     order by coalesce(
                (select k1.account_id from gateway.api_keys k1 where k1.key_hash = d.h),
                (select k2.account_id from gateway.api_keys k2
                  where k2.previous_key_hash = d.h and k2.previous_valid_until > p_now)
              ) nulls first,
              b.ord
  loop
    if e.v ? 'models' then
      f := gateway.request_facts(e.v - array['key_hash', 'client_ip', 'referrer']);
      v_results[e.ord] := gateway.admit(
        e.h, (e.v ->> 'client_ip')::inet, e.v ->> 'referrer', f.models, f.prompt_bound, f.images,
        f.audio, f.files, f.web_results, f.max_tokens, f.lifetime_seconds, false, p_now);
    else
      v_results[e.ord] := gateway.begin_request(
        e.h,
        (e.v ->> 'client_ip')::inet,
        e.v ->> 'referrer',
        e.v ->> 'model',
        (e.v ->> 'max_tokens')::integer,
        (e.v ->> 'prompt_tokens')::integer,
        p_now
      );
    end if;
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.begin_requests(jsonb, timestamptz) from public;
grant execute on function gateway.begin_requests(jsonb, timestamptz) to gateway_api;

-- reserve_admissions' body for its two signatures: the first admission by gateway.admit (every
-- rule), the others in one pass with gateway.hold_for — exactly those that further admissions with
-- the same facts and p_now would make (20261125174446 explains the pass).
create or replace function gateway.reserve(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_models text[],
  p_prompt_bound bigint,
  p_images integer,
  p_audio integer,
  p_files integer,
  p_web_results integer,
  p_max_tokens integer,
  p_lifetime_seconds integer,
  p_transitional boolean,
  p_count integer,
  p_now timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_first jsonb;
  v_answers jsonb[];
  h gateway.holds;
  hf record;
  v_room bigint;
  v_req_remaining bigint;
  v_requests_used bigint;
  v_max_requests bigint;
  v_want bigint;
  v_balance bigint;
  v_held bigint;
  v_held_first bigint;
  v_amounts bigint[] := array[]::bigint[];
  v_tokens bigint[] := array[]::bigint[];
  v_available bigint[] := array[]::bigint[];
  v_ids bigint[];
  v_m integer;
begin
  if p_count is null or p_count < 1 or p_count > 64 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'count must be from 1 to 64';
  end if;

  -- 1. The first, by admit: every rule. Refused, its refusal is the answer.
  v_first := gateway.admit(
    p_key_hash, p_client_ip, p_referrer, p_models, p_prompt_bound, p_images, p_audio, p_files,
    p_web_results, p_max_tokens, p_lifetime_seconds, p_transitional, p_now);
  if not (v_first ->> 'ok')::boolean then
    return jsonb_build_array(v_first);
  end if;
  -- The hold is this transaction's own row, unseen by anyone until it commits; the others copy
  -- its prices, facts and expiry.
  update gateway.holds x set reserved = true
   where x.id = (v_first ->> 'hold_id')::bigint
  returning x.* into h;
  if p_count = 1 then
    return jsonb_build_array(v_first);
  end if;

  -- 2. How many more the windows and the key cap allow.
  v_req_remaining := (v_first #>> '{limits,requests,remaining}')::bigint;
  v_room := least(p_count - 1, v_req_remaining);
  if v_room < 1 then
    return jsonb_build_array(v_first);
  end if;
  select c.requests_used, k.max_requests, coalesce(p_max_tokens, s.default_max_tokens)
    into v_requests_used, v_max_requests, v_want
    from gateway.key_counters c
    join gateway.api_keys k on k.id = c.key_id
    join gateway.system_settings s on s.id
   where c.key_id = h.key_id;
  v_room := least(v_room, v_max_requests - v_requests_used);

  -- 3. The credits of each, as admit decides them, after the holds before it.
  v_balance := (v_first ->> 'balance')::bigint;
  v_held_first := v_balance - (v_first ->> 'available_credits')::bigint;
  v_held := v_held_first;
  for i in 1 .. coalesce(v_room, 0) loop
    exit when v_balance <= 0;
    hf := gateway.hold_for(
      h.dearest, h.usd_per_credit, h.prompt_estimate, (h.facts ->> 'web_results')::integer,
      p_images, v_want, v_balance - v_held);
    exit when hf.max_tokens < 1;
    v_held := v_held + hf.amount;
    v_amounts := v_amounts || hf.amount;
    v_tokens := v_tokens || hf.max_tokens;
    v_available := v_available || (v_balance - v_held);
  end loop;
  v_m := cardinality(v_amounts);
  if v_m = 0 then
    return jsonb_build_array(v_first);
  end if;

  -- 4. Apply the m admissions: counters, then balance, then the key's counter, as admit does.
  update gateway.rate_counters c
     set minute_requests = c.minute_requests + v_m, hour_requests = c.hour_requests + v_m,
         day_requests = c.day_requests + v_m
   where (c.subject_kind = 'account' and c.subject_id = h.account_id)
      or (h.count_key_windows and c.subject_kind = 'key' and c.subject_id = h.key_id);
  update gateway.credit_balances b
     set held = b.held + (v_held - v_held_first)
   where b.account_id = h.account_id;
  update gateway.key_counters c
     set requests_used = c.requests_used + v_m, last_used_at = p_now
   where c.key_id = h.key_id;
  -- Identity values are drawn in the order the rows are inserted: the i-th id is the i-th hold's.
  with ins as (
    insert into gateway.holds (
      account_id, key_id, model, amount, max_tokens, prompt_estimate, prompt_multiplier,
      completion_multiplier, count_key_windows, created_at, reserved, prices, dearest,
      pricing_mode, usd_per_credit, facts, expires_at
    )
    select h.account_id, h.key_id, h.model, a.amount, a.max_tokens, h.prompt_estimate,
           h.prompt_multiplier, h.completion_multiplier, h.count_key_windows, p_now, true,
           h.prices, h.dearest, h.pricing_mode, h.usd_per_credit, h.facts, h.expires_at
      from unnest(v_amounts, v_tokens) with ordinality a (amount, max_tokens, ord)
     order by a.ord
    returning id
  )
  select array_agg(ins.id order by ins.id) into v_ids from ins;

  -- 5. The answers, admit's for each.
  v_answers := array[v_first];
  for i in 1 .. v_m loop
    v_answers := v_answers || (v_first || jsonb_build_object(
      'hold_id', v_ids[i],
      'held_credits', v_amounts[i],
      'max_tokens', v_tokens[i],
      'available_credits', v_available[i],
      'limits', case when v_req_remaining is null then v_first -> 'limits'
                     else jsonb_set(v_first -> 'limits', '{requests,remaining}',
                                    to_jsonb(v_req_remaining - i)) end));
  end loop;
  return to_jsonb(v_answers);
end
$$;
revoke execute on function gateway.reserve(
  bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, boolean,
  integer, timestamptz) from public;

-- Up to p_count (1–64) admissions of one request's facts made ahead, their holds `reserved`, each
-- the one begin_request would make (docs/SQL-API.md); given back unused by cancel_admissions.
create or replace function gateway.reserve_admissions(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_facts jsonb,
  p_count integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  f record;
begin
  f := gateway.request_facts(p_facts);
  return gateway.reserve(
    p_key_hash, p_client_ip, p_referrer, f.models, f.prompt_bound, f.images, f.audio, f.files,
    f.web_results, f.max_tokens, f.lifetime_seconds, false, p_count, p_now);
end
$$;
revoke execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz)
  from public;
grant execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz)
  to gateway_api;

-- TRANSITIONAL: the signature the function calls until it measures the facts (see begin_request).
create or replace function gateway.reserve_admissions(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_model text,
  p_max_tokens integer,
  p_prompt_tokens integer,
  p_count integer,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_max_tokens < 1 or p_prompt_tokens < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'max_tokens must be >= 1 and prompt_tokens >= 0';
  end if;
  return gateway.reserve(
    p_key_hash, p_client_ip, p_referrer, array[coalesce(p_model, '')], coalesce(p_prompt_tokens, 0),
    0, 0, 0, 0, p_max_tokens, 0, true, p_count, p_now);
end
$$;
revoke execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz) from public;
grant execute on function gateway.reserve_admissions(
  bytea, inet, text, text, integer, integer, integer, timestamptz) to gateway_api;

-- Settlement --------------------------------------------------------------------------------------
-- settle_request's body for its two signatures and settle_requests. Exactly once per hold: deleting
-- the hold is the gate, or, for a hold the sweeper expired, turning its `expired` record into the
-- real one (under the record's row lock). Charged at the served candidate's prices as admitted
-- (gateway.served_price, gateway.charge); above the hold, in full.
create or replace function gateway.settle_hold(
  p_hold_id bigint,
  p_model text,
  p_prompt bigint,
  p_completion bigint,
  p_cached bigint,
  p_cache_write bigint,
  p_reasoning bigint,
  p_web_searches bigint,
  p_images bigint,
  p_cost numeric,
  p_status text,
  p_latency_ms integer,
  p_generation_id text,
  p_settled_by text,
  p_now timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
  h gateway.holds;
  u gateway.usage_records;
  v_late boolean := false;
  v_account bigint;
  v_key bigint;
  v_key_windows boolean;
  v_prices gateway.model_price[];
  v_dearest gateway.model_price;
  v_mode text;
  v_usd_per_credit numeric;
  v_held bigint;
  v_price gateway.model_price;
  ch record;
  v_credits bigint;
  v_usd numeric;
  v_tokens bigint;
  v_balance bigint;
  v_overrun bigint;
  v_minute timestamptz := date_trunc('minute', p_now, 'UTC');
  v_hour timestamptz := date_trunc('hour', p_now, 'UTC');
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
begin
  if least(p_prompt, p_completion, p_cached, p_cache_write, p_reasoning, p_web_searches, p_images) < 0
     or greatest(p_prompt, p_completion, p_cached, p_cache_write, p_reasoning, p_web_searches,
                 p_images) > 2147483647 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'token counts must be from 0 to 2147483647';
  end if;
  if p_cost < 0 or p_cost >= 1000000 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'cost must be a non-negative number of USD below 1000000';
  end if;
  if p_settled_by is null or p_settled_by not in ('usage', 'generation', 'stream_count', 'sweeper') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'settled_by must be usage, generation, stream_count or sweeper';
  end if;

  -- Closing the hold is the exactly-once gate: only one caller can delete the row.
  delete from gateway.holds where id = p_hold_id returning * into h;
  if found then
    v_account := h.account_id;
    v_key := h.key_id;
    v_key_windows := h.count_key_windows;
    v_prices := h.prices;
    v_dearest := h.dearest;
    v_mode := h.pricing_mode;
    v_usd_per_credit := h.usd_per_credit;
    v_held := h.amount;
  else
    -- Expired by the sweeper while its request still ran: the money is still owed. Its record is
    -- the gate now (locked; a second late settle finds it settled).
    select * into u from gateway.usage_records r where r.hold_id = p_hold_id for update;
    if not found then
      return jsonb_build_object('settled', false, 'reason', 'unknown_hold');
    end if;
    if u.status <> 'expired' or u.price is null then
      return jsonb_build_object('settled', false, 'reason', 'already_settled');
    end if;
    v_late := true;
    v_account := u.account_id;
    v_key := u.key_id;
    v_key_windows := exists (select from gateway.key_rate_limits kl where kl.key_id = u.key_id);
    v_prices := u.candidates;
    v_dearest := u.price;
    v_mode := u.pricing_mode;
    v_usd_per_credit := u.usd_per_credit;
    v_held := u.credits_held;
  end if;

  -- Tokens into the subjects' windows first (one upsert: the account's row, then the key's when it
  -- has its own limits), then the charge: counter rows before the balance row, as in admission.
  v_tokens := p_prompt + p_completion;
  if v_tokens > 0 then
    -- The account's row alone (no key windows) is there but on a subject's first count of the day
    -- after the purge: an UPDATE, cheaper than the upsert's speculative insertion, lock and update.
    if not v_key_windows then
      update gateway.rate_counters c set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests else 0 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens + v_tokens
                             else v_tokens end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests else 0 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens + v_tokens else v_tokens end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests else 0 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens + v_tokens else v_tokens end
       where c.subject_kind = 'account' and c.subject_id = v_account;
    end if;
    if v_key_windows or not found then
      insert into gateway.rate_counters as c (
        subject_kind, subject_id, minute_start, minute_requests, minute_tokens,
        hour_start, hour_requests, hour_tokens, day_start, day_requests, day_tokens)
      select g.kind, g.sid, v_minute, 0, v_tokens, v_hour, 0, v_tokens, v_day, 0, v_tokens
        from (values (1, 'account'::gateway.rate_subject, v_account),
                     (2, 'key', v_key)) g (i, kind, sid)
       where g.i = 1 or v_key_windows
       order by g.i
      on conflict (subject_kind, subject_id) do update set
        minute_start = greatest(c.minute_start, v_minute),
        minute_requests = case when c.minute_start >= v_minute then c.minute_requests else 0 end,
        minute_tokens = case when c.minute_start >= v_minute then c.minute_tokens + v_tokens
                             else v_tokens end,
        hour_start = greatest(c.hour_start, v_hour),
        hour_requests = case when c.hour_start >= v_hour then c.hour_requests else 0 end,
        hour_tokens = case when c.hour_start >= v_hour then c.hour_tokens + v_tokens else v_tokens end,
        day_start = greatest(c.day_start, v_day),
        day_requests = case when c.day_start >= v_day then c.day_requests else 0 end,
        day_tokens = case when c.day_start >= v_day then c.day_tokens + v_tokens else v_tokens end;
    end if;
  end if;

  -- Priced as admitted; an overrun is charged in full (the operator paid upstream for it).
  v_price := case when v_prices is null and v_dearest.model <> 'openrouter/auto' then v_dearest
                  else gateway.served_price(v_prices, v_dearest, p_model, v_mode) end;
  ch := gateway.charge(
    v_price, v_usd_per_credit, p_prompt, p_completion, p_cached, p_cache_write, p_reasoning,
    p_web_searches, p_images, p_cost);
  -- Plain variables from here: the statements below are planned once, not per record shape.
  v_credits := ch.credits;
  v_usd := ch.upstream_usd;
  v_overrun := greatest(v_credits - v_held, 0);
  if v_late then
    with b as (
      update gateway.credit_balances
         set balance = balance - v_credits
       where account_id = v_account
      returning balance
    ), l as (
      insert into gateway.ledger (account_id, kind, amount, balance_after, hold_id, reason, created_at)
      select v_account, 'charge', -v_credits, b.balance, p_hold_id, coalesce(p_model, u.model), p_now
        from b
       where v_credits > 0
    ), r as (
      update gateway.usage_records x set
        model = coalesce(p_model, u.model), prompt_tokens = p_prompt,
        completion_tokens = p_completion, total_tokens = p_prompt + p_completion,
        cached_tokens = least(p_cached, p_prompt),
        cache_write_tokens = least(p_cache_write, p_prompt - least(p_cached, p_prompt)),
        reasoning_tokens = least(p_reasoning, p_completion), web_search_requests = p_web_searches,
        images = p_images, upstream_cost = p_cost, upstream_usd = v_usd,
        credits_charged = v_credits, status = coalesce(p_status, 'success'),
        settled_by = p_settled_by, latency_ms = p_latency_ms, generation_id = p_generation_id,
        note = 'settled after its hold expired', price = v_price, candidates = null,
        overrun_credits = v_overrun, settled_late = true, settled_at = p_now
       where x.hold_id = p_hold_id
    )
    select b.balance into v_balance from b;
    raise warning using message = format(
      'hold %s settled after it expired: %s credits charged late', p_hold_id, v_credits);
  else
    with b as (
      update gateway.credit_balances
         set balance = balance - v_credits, held = held - v_held
       where account_id = v_account
      returning balance
    ), l as (
      insert into gateway.ledger (account_id, kind, amount, balance_after, hold_id, reason, created_at)
      select v_account, 'charge', -v_credits, b.balance, p_hold_id, coalesce(p_model, h.model), p_now
        from b
       where v_credits > 0
    ), r as (
      insert into gateway.usage_records (
        hold_id, account_id, key_id, model, prompt_tokens, completion_tokens, total_tokens,
        upstream_cost, credits_charged, credits_held, max_tokens, status, settled_by, latency_ms,
        generation_id, created_at, settled_at, cached_tokens, cache_write_tokens, reasoning_tokens,
        web_search_requests, images, upstream_usd, pricing_mode, usd_per_credit, price, facts,
        overrun_credits
      ) values (
        p_hold_id, v_account, v_key, coalesce(p_model, h.model), p_prompt, p_completion,
        p_prompt + p_completion, p_cost, v_credits, v_held, h.max_tokens,
        coalesce(p_status, 'success'), p_settled_by, p_latency_ms, p_generation_id, h.created_at,
        p_now, least(p_cached, p_prompt), least(p_cache_write, p_prompt - least(p_cached, p_prompt)),
        least(p_reasoning, p_completion), p_web_searches, p_images, v_usd, v_mode,
        v_usd_per_credit, v_price, h.facts, v_overrun
      )
    )
    select b.balance into v_balance from b;
  end if;

  return jsonb_build_object(
    'settled', true,
    'hold_id', p_hold_id,
    'credits_charged', v_credits,
    'held_credits', v_held,
    'overrun', v_overrun > 0,
    'overrun_credits', v_overrun,
    'upstream_usd', v_usd::text,
    'late', v_late,
    'balance_after', v_balance
  );
end
$$;
revoke execute on function gateway.settle_hold(
  bigint, text, bigint, bigint, bigint, bigint, bigint, bigint, bigint, numeric, text, integer, text,
  text, timestamptz) from public;

-- Charges a hold for its request's usage (gateway.usage_facts), exactly once.
create or replace function gateway.settle_request(
  p_hold_id bigint,
  p_usage jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  f record;
begin
  f := gateway.usage_facts(p_usage);
  return gateway.settle_hold(
    p_hold_id, f.model, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
    f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images, f.cost, f.status,
    f.latency_ms, f.generation_id, f.settled_by, p_now);
end
$$;
revoke execute on function gateway.settle_request(bigint, jsonb, timestamptz) from public;
grant execute on function gateway.settle_request(bigint, jsonb, timestamptz) to gateway_api;

-- TRANSITIONAL: the signature the function calls until it passes the whole usage.
create or replace function gateway.settle_request(
  p_hold_id bigint,
  p_model text,
  p_prompt_tokens integer,
  p_completion_tokens integer,
  p_upstream_cost numeric,
  p_status text,
  p_latency_ms integer,
  p_generation_id text,
  p_settled_by text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  return gateway.settle_hold(
    p_hold_id, p_model, coalesce(p_prompt_tokens, 0), coalesce(p_completion_tokens, 0), 0, 0, 0, 0,
    0, p_upstream_cost, p_status, p_latency_ms, p_generation_id, p_settled_by, p_now);
end
$$;
revoke execute on function gateway.settle_request(
  bigint, text, integer, integer, numeric, text, integer, text, text, timestamptz) from public;
grant execute on function gateway.settle_request(
  bigint, text, integer, integer, numeric, text, integer, text, text, timestamptz) to gateway_api;

-- Many settles in one transaction, in account order (within an account, the settles with tokens
-- before those without) so that concurrent batches cannot deadlock; each as settle_request would.
-- An element is {hold_id, …usage} (upstream_cost: the transitional name of cost).
create or replace function gateway.settle_requests(
  p_batch jsonb,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  e record;
  f record;
  v_results jsonb[];
begin
  if jsonb_typeof(p_batch) is distinct from 'array' then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'p_batch must be a JSON array of settle_request arguments';
  end if;
  v_results := array_fill(null::jsonb, array[jsonb_array_length(p_batch)]);
  for e in
    select b.ord, b.v
      from jsonb_array_elements(p_batch) with ordinality b (v, ord)
      left join gateway.holds h on h.id = (b.v ->> 'hold_id')::bigint
     order by coalesce(h.account_id,
                       (select u.account_id from gateway.usage_records u
                         where u.hold_id = (b.v ->> 'hold_id')::bigint and u.status = 'expired'))
                nulls first,
              coalesce((b.v ->> 'prompt_tokens')::bigint, 0) = 0
                and coalesce((b.v ->> 'completion_tokens')::bigint, 0) = 0,
              b.ord
  loop
    f := gateway.usage_facts(e.v);
    v_results[e.ord] := gateway.settle_hold(
      (e.v ->> 'hold_id')::bigint, f.model, f.prompt_tokens, f.completion_tokens, f.cached_tokens,
      f.cache_write_tokens, f.reasoning_tokens, f.web_search_requests, f.images, f.cost, f.status,
      f.latency_ms, f.generation_id, f.settled_by, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.settle_requests(jsonb, timestamptz) from public;
grant execute on function gateway.settle_requests(jsonb, timestamptz) to gateway_api;

-- Releases a hold without charge (nothing reached upstream, or upstream refused it).
create or replace function gateway.void_request(
  p_hold_id bigint,
  p_reason text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  h gateway.holds;
begin
  delete from gateway.holds where id = p_hold_id returning * into h;
  if not found then
    return jsonb_build_object(
      'voided', false,
      'reason', case when exists (select from gateway.usage_records u where u.hold_id = p_hold_id)
                     then 'already_settled' else 'unknown_hold' end);
  end if;
  update gateway.credit_balances set held = held - h.amount where account_id = h.account_id;
  insert into gateway.usage_records (
    hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
    settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, facts
  ) values (
    h.id, h.account_id, h.key_id, h.model, 0, h.amount, h.max_tokens, 'voided', 'void', p_reason,
    h.created_at, p_now, h.pricing_mode, h.usd_per_credit, h.dearest, h.facts
  );
  return jsonb_build_object('voided', true, 'hold_id', h.id, 'released_credits', h.amount);
end
$$;
revoke execute on function gateway.void_request(bigint, text, timestamptz) from public;
grant execute on function gateway.void_request(bigint, text, timestamptz) to gateway_api;

-- The sweeper: holds past their expires_at are released uncharged and recorded as expired, with
-- their prices, so that a settle arriving later still charges them (gateway.settle_hold).
create or replace function gateway.expire_stale_holds(p_now timestamptz default now())
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  with expired as (
    delete from gateway.holds h
     where h.expires_at <= p_now
    returning h.*
  ), released as (
    update gateway.credit_balances b
       set held = b.held - e.total
      from (select x.account_id, sum(x.amount) as total from expired x group by x.account_id) e
     where b.account_id = e.account_id
  ), recorded as (
    insert into gateway.usage_records (
      hold_id, account_id, key_id, model, credits_charged, credits_held, max_tokens, status,
      settled_by, note, created_at, settled_at, pricing_mode, usd_per_credit, price, candidates,
      facts
    )
    select x.id, x.account_id, x.key_id, x.model, 0, x.amount, x.max_tokens, 'expired', 'sweeper',
           'hold timed out: released without charge', x.created_at, p_now, x.pricing_mode,
           x.usd_per_credit, x.dearest, x.prices, x.facts
      from expired x
  )
  select count(*) into v_count from expired;
  return v_count;
end
$$;
revoke execute on function gateway.expire_stale_holds(timestamptz) from public;
do $$
begin
  if exists (select from pg_roles where rolname = 'service_role') then
    execute 'grant execute on function gateway.expire_stale_holds(timestamptz) to service_role';
  end if;
end
$$;

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
do $$
begin
  if exists (select from pg_roles where rolname = 'service_role') then
    execute 'grant execute on function gateway.set_model_markup(text, numeric) to service_role';
  end if;
end
$$;

-- What the operator sees -----------------------------------------------------------------------------
create view gateway.overruns as
  select u.hold_id, u.account_id as user_id, u.key_id, u.model, u.created_at, u.settled_at,
         u.credits_held, u.credits_charged, u.overrun_credits, u.prompt_tokens,
         (u.facts ->> 'prompt_bound')::bigint as prompt_bound,
         (u.facts ->> 'images')::integer as images, (u.facts ->> 'audio')::integer as audio,
         (u.facts ->> 'files')::integer as files,
         (u.facts ->> 'web_results')::integer as web_results, u.completion_tokens, u.max_tokens,
         u.web_search_requests, u.upstream_usd, u.settled_by, u.settled_late
    from gateway.usage_records u
   where u.overrun_credits > 0;
comment on view gateway.overruns is
  'Operator: settles charged above their hold (charged in full), with the facts the hold was sized '
  'from. Only what a byte bound cannot see (parts larger than their allowance) should appear here.';

-- Margin: what clients paid (credits × usd_per_credit at admission) against what upstream cost.
create view gateway.margin as
  select (u.created_at at time zone 'UTC')::date as day, u.model,
         count(*) as requests,
         sum(u.credits_charged) as credits_charged,
         sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit)) as charged_usd,
         sum(coalesce(u.upstream_usd, u.upstream_cost)) as upstream_usd,
         sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit))
           - sum(coalesce(u.upstream_usd, u.upstream_cost)) as margin_usd,
         count(*) filter (where coalesce(u.upstream_usd, u.upstream_cost) is null)
           as requests_without_cost
    from gateway.usage_records u
    cross join gateway.system_settings s
   where s.id and u.status not in ('voided', 'expired')
   group by 1, 2;
comment on view gateway.margin is
  'Operator: per UTC day and model, what clients were charged (USD) against upstream cost (USD).';

create view gateway.margin_daily as
  select m.day, sum(m.requests) as requests, sum(m.credits_charged) as credits_charged,
         sum(m.charged_usd) as charged_usd, sum(m.upstream_usd) as upstream_usd,
         sum(m.margin_usd) as margin_usd, sum(m.requests_without_cost) as requests_without_cost
    from gateway.margin m
   group by m.day;
comment on view gateway.margin_daily is 'Operator: gateway.margin per UTC day.';

-- Sold at a loss: catalog models whose multipliers (flat mode, or a fixed-price override in cost
-- mode) charge less per token than upstream's price. refuse_unprofitable_models refuses them.
create view gateway.unprofitable_models as
  select c.model, s.pricing_mode,
         (p.dearest).prompt * 1000000 as prompt_usd_per_million,
         (p.dearest).completion * 1000000 as completion_usd_per_million,
         (p.dearest).prompt_multiplier * s.usd_per_credit * 1000000 as sold_prompt_usd_per_million,
         (p.dearest).completion_multiplier * s.usd_per_credit * 1000000
           as sold_completion_usd_per_million
    from gateway.model_catalog c
    cross join gateway.system_settings s
    cross join lateral gateway.price_candidates(
      array[c.model], s.pricing_mode, s.markup_percent, s.web_result_usd, s.usd_per_credit, false,
      false) p
   where s.id and (p.dearest).fixed and not (p.dearest).free
     and (greatest((p.dearest).prompt, (p.dearest).input_cache_write)
            > (p.dearest).prompt_multiplier * s.usd_per_credit
          or greatest((p.dearest).completion, (p.dearest).internal_reasoning)
            > (p.dearest).completion_multiplier * s.usd_per_credit);
comment on view gateway.unprofitable_models is
  'Operator: models whose catalog price is above what their multipliers charge (sold at a loss).';

do $$
begin
  if exists (select from pg_roles where rolname = 'service_role') then
    execute 'grant select on gateway.overruns, gateway.margin, gateway.margin_daily, '
            'gateway.unprofitable_models to service_role';
  end if;
end
$$;

drop view gateway.monitor;
drop function gateway.monitor_at(timestamptz);
-- System-wide figures at p_now ("today" = the UTC day). All-time figures scan usage_records.
create function gateway.monitor_at(p_now timestamptz default now())
returns table (
  checked_at timestamptz,
  users_total bigint,
  users_active bigint,
  keys_total bigint,
  keys_active bigint,
  requests_today bigint,
  tokens_today bigint,
  credits_charged_today bigint,
  requests_all_time bigint,
  tokens_all_time bigint,
  credits_charged_all_time bigint,
  open_holds bigint,
  held_credits bigint,
  outstanding_balance bigint,
  expired_holds_today bigint,
  top_models_today jsonb,
  overruns_today bigint,
  overrun_credits_today bigint,
  overruns_all_time bigint,
  overrun_credits_all_time bigint,
  expired_uncharged_all_time bigint,
  charged_usd_today numeric,
  upstream_usd_today numeric,
  charged_usd_all_time numeric,
  upstream_usd_all_time numeric
)
language sql
stable
security definer
set search_path = ''
as $$
  with day as (select date_trunc('day', p_now, 'UTC') as start),
  acc as (
    select count(*) filter (where a.deleted_at is null) as total,
           count(*) filter (where a.deleted_at is null and a.is_active) as active
      from gateway.accounts a
  ),
  keys as (
    select count(*) filter (where k.deleted_at is null) as total,
           count(*) filter (where k.deleted_at is null and k.is_active
                            and (k.expires_at is null or k.expires_at > p_now)) as active
      from gateway.api_keys k
  ),
  usage as (
    select count(*) filter (where u.created_at >= d.start and u.status <> 'voided') as req_today,
           coalesce(sum(u.total_tokens) filter (where u.created_at >= d.start), 0) as tok_today,
           coalesce(sum(u.credits_charged) filter (where u.created_at >= d.start), 0) as cred_today,
           count(*) filter (where u.status <> 'voided') as req_all,
           coalesce(sum(u.total_tokens), 0) as tok_all,
           coalesce(sum(u.credits_charged), 0) as cred_all,
           count(*) filter (where u.created_at >= d.start and u.status = 'expired') as expired_today,
           count(*) filter (where u.status = 'expired') as expired_all,
           count(*) filter (where u.created_at >= d.start and u.overrun_credits > 0) as over_today,
           coalesce(sum(u.overrun_credits) filter (where u.created_at >= d.start), 0)
             as over_cred_today,
           count(*) filter (where u.overrun_credits > 0) as over_all,
           coalesce(sum(u.overrun_credits), 0) as over_cred_all,
           coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit))
                      filter (where u.created_at >= d.start), 0) as charged_usd_today,
           coalesce(sum(coalesce(u.upstream_usd, u.upstream_cost))
                      filter (where u.created_at >= d.start and u.status <> 'voided'), 0)
             as upstream_usd_today,
           coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, s.usd_per_credit)), 0)
             as charged_usd_all,
           coalesce(sum(coalesce(u.upstream_usd, u.upstream_cost))
                      filter (where u.status <> 'voided'), 0) as upstream_usd_all
      from gateway.usage_records u, day d, gateway.system_settings s
     where s.id
  ),
  holds as (
    select count(*) as n from gateway.holds
  ),
  bal as (
    select coalesce(sum(b.held), 0) as held, coalesce(sum(b.balance), 0) as balance
      from gateway.credit_balances b
  ),
  top as (
    select coalesce(jsonb_agg(jsonb_build_object('model', t.model, 'requests', t.requests,
                                                 'tokens', t.tokens, 'credits', t.credits)
                              order by t.requests desc, t.model), '[]') as models
      from (
        select u.model, count(*) as requests, sum(u.total_tokens) as tokens,
               sum(u.credits_charged) as credits
          from gateway.usage_records u, day d
         where u.created_at >= d.start and u.status <> 'voided'
         group by u.model
         order by count(*) desc, u.model
         limit 10
      ) t
  )
  select p_now, acc.total, acc.active, keys.total, keys.active, usage.req_today,
         usage.tok_today::bigint, usage.cred_today::bigint, usage.req_all, usage.tok_all::bigint,
         usage.cred_all::bigint, holds.n, bal.held::bigint, bal.balance::bigint, usage.expired_today,
         top.models, usage.over_today, usage.over_cred_today::bigint, usage.over_all,
         usage.over_cred_all::bigint, usage.expired_all, usage.charged_usd_today,
         usage.upstream_usd_today, usage.charged_usd_all, usage.upstream_usd_all
    from acc, keys, usage, holds, bal, top;
$$;
revoke execute on function gateway.monitor_at(timestamptz) from public;

create view gateway.monitor as
  select * from gateway.monitor_at(now());
comment on view gateway.monitor is 'Operator: system-wide figures now (today = the UTC day).';
do $$
begin
  if exists (select from pg_roles where rolname = 'service_role') then
    execute 'grant select on gateway.monitor to service_role';
    execute 'grant execute on function gateway.monitor_at(timestamptz) to service_role';
  end if;
end
$$;

create or replace function gateway.admin_monitor(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  m record;
begin
  perform gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'admin', p_now);
  select * into m from gateway.monitor_at(p_now);
  return jsonb_build_object(
    'status', 'success',
    'timestamp', p_now,
    'users', jsonb_build_object('total', m.users_total, 'active', m.users_active),
    'keys', jsonb_build_object('total', m.keys_total, 'active', m.keys_active),
    'requests', jsonb_build_object('today', m.requests_today, 'all_time', m.requests_all_time),
    'tokens', jsonb_build_object('today', m.tokens_today, 'all_time', m.tokens_all_time),
    'credits', jsonb_build_object(
      'charged_today', m.credits_charged_today, 'charged_all_time', m.credits_charged_all_time,
      'outstanding_balance', m.outstanding_balance, 'held', m.held_credits),
    'open_holds', m.open_holds,
    'expired_holds_today', m.expired_holds_today,
    'expired_uncharged', jsonb_build_object(
      'today', m.expired_holds_today, 'all_time', m.expired_uncharged_all_time),
    'overruns', jsonb_build_object(
      'today', m.overruns_today, 'credits_today', m.overrun_credits_today,
      'all_time', m.overruns_all_time, 'credits_all_time', m.overrun_credits_all_time),
    -- USD as decimal text: exact (a JSON number is a double).
    'margin', jsonb_build_object(
      'today', jsonb_build_object(
        'charged_usd', m.charged_usd_today::text, 'upstream_usd', m.upstream_usd_today::text,
        'margin_usd', (m.charged_usd_today - m.upstream_usd_today)::text),
      'all_time', jsonb_build_object(
        'charged_usd', m.charged_usd_all_time::text, 'upstream_usd', m.upstream_usd_all_time::text,
        'margin_usd', (m.charged_usd_all_time - m.upstream_usd_all_time)::text)),
    'top_models_today', m.top_models_today
  );
end
$$;
revoke execute on function gateway.admin_monitor(bytea, inet, text, timestamptz) from public;
grant execute on function gateway.admin_monitor(bytea, inet, text, timestamptz) to gateway_api;

-- What a client sees: credits beside tokens ---------------------------------------------------------
create or replace function gateway.user_monitor(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text,
  p_now timestamptz default now()
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_price numeric;
  v_day timestamptz := date_trunc('day', p_now, 'UTC');
  v_month timestamptz := date_trunc('month', p_now, 'UTC');
  v_metrics jsonb;
  v_balance bigint;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read', p_now);
  select s.usd_per_credit into v_price from gateway.system_settings s where s.id;
  select b.balance into v_balance from gateway.credit_balances b where b.account_id = k.account_id;
  -- Requests = admitted requests that reached upstream (voided ones never did). Cost = credits ×
  -- the usd_per_credit they were charged at (today's for records older than that column).
  select jsonb_build_object(
    'total_requests', count(*),
    'total_tokens', coalesce(sum(u.total_tokens), 0),
    'total_credits', coalesce(sum(u.credits_charged), 0),
    'total_cost', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price)), 0), 6),
    'requests_today', count(*) filter (where u.created_at >= v_day),
    'tokens_today', coalesce(sum(u.total_tokens) filter (where u.created_at >= v_day), 0),
    'credits_today', coalesce(sum(u.credits_charged) filter (where u.created_at >= v_day), 0),
    'cost_today', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price))
                                   filter (where u.created_at >= v_day), 0), 6),
    'requests_this_month', count(*) filter (where u.created_at >= v_month),
    'tokens_this_month', coalesce(sum(u.total_tokens) filter (where u.created_at >= v_month), 0),
    'credits_this_month',
      coalesce(sum(u.credits_charged) filter (where u.created_at >= v_month), 0),
    'cost_this_month', round(coalesce(sum(u.credits_charged * coalesce(u.usd_per_credit, v_price))
                                        filter (where u.created_at >= v_month), 0), 6),
    'average_tokens_per_request',
      case when count(*) = 0 then 0.0 else round(sum(u.total_tokens)::numeric / count(*), 1) end,
    'most_used_model', mode() within group (order by u.model),
    'last_request_time', max(u.created_at)
  ) into v_metrics
    from gateway.usage_records u
   where u.account_id = k.account_id and u.status <> 'voided';
  return jsonb_build_object(
    'status', 'success',
    'timestamp', p_now,
    'user_id', k.account_id,
    'api_key', k.key_prefix,
    'current_credits', v_balance,
    'usage_metrics', v_metrics,
    'rate_limits', gateway.account_limits(k.account_id)
  );
end
$$;
revoke execute on function gateway.user_monitor(bytea, inet, text, timestamptz) from public;
grant execute on function gateway.user_monitor(bytea, inet, text, timestamptz) to gateway_api;

create or replace function gateway.key_usage(
  p_key_hash bytea,
  p_client_ip inet,
  p_referrer text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k gateway.api_keys;
  v_keys jsonb;
begin
  k := gateway.authenticate(p_key_hash, p_client_ip, p_referrer, 'read');
  select coalesce(jsonb_agg(jsonb_build_object(
           'key_id', x.id,
           'api_key', x.key_prefix,
           'key_name', x.name,
           'is_active', x.is_active,
           'is_primary', x.is_primary,
           'requests_used', c.requests_used,
           'max_requests', x.max_requests,
           'requests_remaining',
             case when x.max_requests is not null
                  then greatest(x.max_requests - c.requests_used, 0) end,
           'usage_percentage',
             case when x.max_requests is not null
                  then round(c.requests_used * 100.0 / x.max_requests, 1) end,
           'tokens_used', coalesce(t.tokens, 0),
           'credits_used', coalesce(t.credits, 0),
           'environment_tag', x.environment,
           'created_at', x.created_at,
           'last_used_at', c.last_used_at
         ) order by x.id), '[]')
    into v_keys
    from gateway.api_keys x
    join gateway.key_counters c on c.key_id = x.id
    left join (select u.key_id, sum(u.total_tokens) as tokens, sum(u.credits_charged) as credits
                 from gateway.usage_records u
                where u.account_id = k.account_id and u.status <> 'voided'
                group by u.key_id) t on t.key_id = x.id
   where x.account_id = k.account_id and x.deleted_at is null;
  return jsonb_build_object(
    'user_id', k.account_id, 'total_keys', jsonb_array_length(v_keys), 'keys', v_keys);
end
$$;
revoke execute on function gateway.key_usage(bytea, inet, text) from public;
grant execute on function gateway.key_usage(bytea, inet, text) to gateway_api;

-- The catalog the gateway already has is priced now, not at its next refresh.
do $$
begin
  perform gateway.store_model_catalog(c.data, c.fetched_at)
     from gateway.models_cache c
    where c.id and c.data is not null;
end
$$;
