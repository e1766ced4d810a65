-- Admission: a chat request is admitted (key, fences, rate windows, credits, request cap) and its
-- worst-case cost held, one at a time (begin_request), in batches (begin_requests), or ahead of the
-- requests of a busy caller (reserve_admissions, given back by cancel_admissions). Every rule is in
-- begin_request; the others call it or replay it exactly. Lock order and proofs: docs/SQL-NOTES.md.

-- Open holds only: closing a hold (settle, void, expiry, cancel) deletes its row, so only one
-- caller can close it. No CHECKs, no foreign keys: docs/SQL-NOTES.md, "The request path".
create table gateway.holds (
  id bigint generated always as identity primary key,
  account_id bigint not null,
  key_id bigint not null,
  model text not null,
  amount bigint not null,
  max_tokens integer not null,
  prompt_estimate integer not null,
  prompt_multiplier numeric not null,
  completion_multiplier numeric not null,
  count_key_windows boolean not null,
  created_at timestamptz not null,
  reserved boolean not null default false,
  prices gateway.model_price[],
  dearest gateway.model_price not null,
  pricing_mode text not null,
  usd_per_credit numeric not null,
  facts jsonb not null,
  expires_at timestamptz not null,
  generation_id text
) with (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
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
  'When the sweeper may expire it: the end of its lease (admission + hold_lease_seconds, renewed by '
  'its worker through gateway.note_holds), never past admission + greatest(hold_timeout_seconds, '
  'the request''s lifetime).';
comment on column gateway.holds.generation_id is
  'OpenRouter''s generation id, noted when upstream answered (gateway.note_holds): a hold whose '
  'worker died is settled from /generation by it (gateway.reconcile_candidates).';
comment on column gateway.holds.reserved is
  'Admitted ahead of its request by gateway.reserve_admissions. Only such holds can be cancelled '
  '(gateway.cancel_admissions); settle, void and the sweeper close them like any other.';
alter table gateway.holds enable row level security;
create policy no_api_access on gateway.holds
  for all to anon, authenticated using (false) with check (false);

-- The longest a hold may live: admission + greatest(hold_timeout_seconds, its request's lifetime).
-- Its worker renews its lease up to then (note_holds); the sweeper voids any hold past it
-- (expire_stale_holds), with a generation id or not.
create or replace function gateway.hold_life_end(
  p_created_at timestamptz,
  p_facts jsonb,
  p_timeout_seconds integer
)
returns timestamptz
language sql
immutable
security definer
set search_path = ''
as $$
  select p_created_at + make_interval(secs => greatest(
    p_timeout_seconds, coalesce((p_facts ->> 'lifetime_seconds')::integer, 0)))
$$;
revoke execute on function gateway.hold_life_end(timestamptz, jsonb, integer) from public;


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

-- Admission ---------------------------------------------------------------------------------------
-- begin_request's body, for it, begin_requests and reserve_admissions: the facts typed and checked.
-- Unchanged from 20261125153547 but for the pricing: the candidates are priced (a refusal counts
-- nothing), the credit checks and the hold are gateway.hold_for's, and the hold keeps its prices.
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
  v_reserved_a bigint;
  v_reserved_k bigint;
  v_soon boolean;
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
           s.file_part_tokens, s.web_result_tokens, s.hold_lease_seconds,
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
    v.refuse_unprofitable_models, false);
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
        -- Reserved admissions are counted from the moment they are reserved, and those a worker
        -- does not use go back within a second or two (given back, or released by the server):
        -- another worker's, for one (a retired worker keeps its reservations until it gives them
        -- back). When they alone make the windows full, the refusal says to retry in a second,
        -- not when the window resets — hours away for a day window.
        select count(*), count(*) filter (where h.key_id = v.key_id and h.count_key_windows)
          into v_reserved_a, v_reserved_k
          from gateway.holds h
         where h.account_id = v.account_id and h.reserved;
        if v_reserved_a > 0 then
          v_soon := true;
          for i in 1 .. v_n loop
            if (v_tok_limit[i] is not null and v_tok_used[i] >= v_tok_limit[i])
               or (v_req_limit[i] is not null
                   and v_req_used[i] - case when i <= 3 then v_reserved_a else v_reserved_k end
                       >= v_req_limit[i]) then
              v_soon := false;
            end if;
          end loop;
          if v_soon then
            v_retry := 1;
          end if;
        end if;
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
      p_now + make_interval(secs => v.hold_lease_seconds)
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

  v_dearest := gateway.price_json(pc.dearest);
  if cardinality(pc.prices) = 1 then
    v_candidates := jsonb_build_array(v_dearest);
  else
    select jsonb_agg(gateway.price_json(x)) into v_candidates from unnest(pc.prices) x;
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
    'expires_at', p_now + make_interval(secs => v.hold_lease_seconds),
    -- What the settle will charge by (gateway.charge at the served candidate's prices), so that
    -- the function can report it without waiting: every number as exact decimal text.
    'pricing', jsonb_build_object(
      'mode', v.pricing_mode,
      'usd_per_credit', v.usd_per_credit::text,
      'candidates', v_candidates,
      'dearest', v_dearest),
    'limits', v_limits
  );
end
$$;
revoke execute on function gateway.admit(bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, timestamptz) from public;

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
    f.web_results, f.max_tokens, f.lifetime_seconds, p_now);
end
$$;
revoke execute on function gateway.begin_request(bytea, inet, text, jsonb, timestamptz) from public;
grant execute on function gateway.begin_request(bytea, inet, text, jsonb, timestamptz) to gateway_api;

-- Many admissions in one transaction, each by begin_request, made in account order (no deadlock
-- with another batch) and answered in the order given. An element that raises aborts the batch.
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
    f := gateway.request_facts(e.v - array['key_hash', 'client_ip', 'referrer']);
    v_results[e.ord] := gateway.admit(
      e.h, (e.v ->> 'client_ip')::inet, e.v ->> 'referrer', f.models, f.prompt_bound, f.images,
      f.audio, f.files, f.web_results, f.max_tokens, f.lifetime_seconds, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.begin_requests(jsonb, timestamptz) from public;
grant execute on function gateway.begin_requests(jsonb, timestamptz) to gateway_api;


-- reserve_admissions' body: the first admission by gateway.admit (every
-- rule), the others in one pass with gateway.hold_for — exactly those that further admissions with
-- the same facts and p_now would make (20261125174446 explains the pass). Answers in the compact
-- form {"first": admit's answer, "more": {"hold_ids", "held_credits", "max_tokens",
-- "available_credits"}: one array each, the i-th element the (i+1)-th admission's}; "more" is
-- absent when only the first was made (or refused). gateway.reserved_answers spells it out.
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
    p_web_results, p_max_tokens, p_lifetime_seconds, p_now);
  if not (v_first ->> 'ok')::boolean then
    return jsonb_build_object('first', v_first);
  end if;
  -- The hold is this transaction's own row, unseen by anyone until it commits; the others copy
  -- its prices, facts and expiry.
  update gateway.holds x set reserved = true
   where x.id = (v_first ->> 'hold_id')::bigint
  returning x.* into h;
  if p_count = 1 then
    return jsonb_build_object('first', v_first);
  end if;

  -- 2. How many more the windows and the key cap allow.
  v_req_remaining := (v_first #>> '{limits,requests,remaining}')::bigint;
  v_room := least(p_count - 1, v_req_remaining);
  if v_room < 1 then
    return jsonb_build_object('first', v_first);
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
    return jsonb_build_object('first', v_first);
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

  -- 5. The answer: admit's for the first; of the others only what differs from it, by column
  --    (gateway.reserved_answers spells them out). Each spelled out in full here was a copy of
  --    the first's pricing: ~1.3 KB of JSON built, sent and parsed per admission, and ~40 % of a
  --    reservation of 16.
  return jsonb_build_object('first', v_first, 'more', jsonb_build_object(
    'hold_ids', to_jsonb(v_ids), 'held_credits', to_jsonb(v_amounts),
    'max_tokens', to_jsonb(v_tokens), 'available_credits', to_jsonb(v_available)));
end
$$;
revoke execute on function gateway.reserve(bytea, inet, text, text[], bigint, integer, integer, integer, integer, integer, integer, integer, timestamptz) from public;

-- gateway.reserve's compact answer spelled out: the array of admit answers it stands for. The
-- (i+1)-th is the first's but for its hold, credits held and available, max_tokens and, when the
-- request window has a limit, the requests remaining (i fewer). The edge function does the same to
-- a batch's answers (reservations.ts, `spelledOut`; a test checks they agree).
create or replace function gateway.reserved_answers(p_reserved jsonb)
returns jsonb
language sql
immutable
security definer
set search_path = ''
as $$
  select jsonb_build_array(p_reserved -> 'first') || coalesce((
    select jsonb_agg(
             (p_reserved -> 'first') || jsonb_build_object(
               'hold_id', m.hold_id, 'held_credits', m.held, 'max_tokens', m.max_tokens,
               'available_credits', m.available,
               'limits', case when r.remaining is null then p_reserved #> '{first,limits}'
                              else jsonb_set(p_reserved #> '{first,limits}', '{requests,remaining}',
                                             to_jsonb(r.remaining - m.i)) end)
             order by m.i)
      from rows from (
             jsonb_array_elements(p_reserved #> '{more,hold_ids}'),
             jsonb_array_elements(p_reserved #> '{more,held_credits}'),
             jsonb_array_elements(p_reserved #> '{more,max_tokens}'),
             jsonb_array_elements(p_reserved #> '{more,available_credits}')
           ) with ordinality m (hold_id, held, max_tokens, available, i)
     cross join lateral (
       select (p_reserved #>> '{first,limits,requests,remaining}')::bigint as remaining) r
  ), '[]'::jsonb)
$$;
revoke execute on function gateway.reserved_answers(jsonb) from public;

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
  return gateway.reserved_answers(gateway.reserve(
    p_key_hash, p_client_ip, p_referrer, f.models, f.prompt_bound, f.images, f.audio, f.files,
    f.web_results, f.max_tokens, f.lifetime_seconds, p_count, p_now));
end
$$;
revoke execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz) from public;
grant execute on function gateway.reserve_admissions(bytea, inet, text, jsonb, integer, timestamptz) to gateway_api;

-- Reservations for many contexts in one call, each by reserve_admissions' own code, made in account
-- order (no deadlock with another batch or with begin_requests) and answered in the order given:
-- element i's answer is gateway.reserve's compact form ({"first", "more"}), which
-- gateway.reserved_answers turns into reserve_admissions' array. One transaction: an element that
-- raises aborts the batch (the edge function then sends its elements one by one).
create or replace function gateway.reserve_admissions_batch(
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
      message = 'p_batch must be a JSON array of reserve_admissions arguments';
  end if;
  if exists (select from jsonb_array_elements(p_batch) b (v)
              where jsonb_typeof(b.v -> 'key_hash') is distinct from 'string'
                 or (b.v ->> 'key_hash') !~ '^[0-9a-f]{64}$'
                 or jsonb_typeof(b.v -> 'count') is distinct from 'number'
                 or (b.v ->> 'count') !~ '^[0-9]{1,9}$') then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'every element needs key_hash (the SHA-256 of the key as 64 lower-case hex '
                'digits) and count (an integer from 1 to 64)';
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
    f := gateway.request_facts(e.v - array['key_hash', 'client_ip', 'referrer', 'count']);
    v_results[e.ord] := gateway.reserve(
      e.h, (e.v ->> 'client_ip')::inet, e.v ->> 'referrer', f.models, f.prompt_bound, f.images,
      f.audio, f.files, f.web_results, f.max_tokens, f.lifetime_seconds,
      (e.v ->> 'count')::integer, p_now);
  end loop;
  return to_jsonb(v_results);
end
$$;
revoke execute on function gateway.reserve_admissions_batch(jsonb, timestamptz) from public;
grant execute on function gateway.reserve_admissions_batch(jsonb, timestamptz) to gateway_api;

-- Gives back reserved admissions never used, as if never made (no usage record, no ledger row); ids
-- that are not open reserved holds are skipped. Returns how many it cancelled.
create or replace function gateway.cancel_admissions(p_hold_ids bigint[])
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
  v_account bigint;
  v_holds gateway.holds[];
  v_count integer := 0;
begin
  for v_account in
    select distinct h.account_id
      from gateway.holds h
     where h.id = any(p_hold_ids) and h.reserved
     order by h.account_id
  loop
    -- The exactly-once gate, as in settle_request: only one caller can delete a hold. One closed
    -- meanwhile (settled, voided, expired, cancelled) is no longer found.
    with d as (
      delete from gateway.holds h
       where h.id = any(p_hold_ids) and h.reserved and h.account_id = v_account
      returning h as hold
    )
    select array_agg(d.hold) into v_holds from d;
    continue when v_holds is null;
    v_count := v_count + cardinality(v_holds);

    if exists (select from unnest(v_holds) h where h.count_key_windows) then
      perform
        from gateway.rate_counters c
        join (select 'account'::gateway.rate_subject as kind, v_account as sid
              union
              select 'key', h.key_id from unnest(v_holds) h where h.count_key_windows) s
          on c.subject_kind = s.kind and c.subject_id = s.sid
       order by c.subject_kind, c.subject_id
         for update of c;
    end if;
    -- Compared with the row's window starts as updated (a concurrent admission may have rolled a
    -- window over before this locked the row), not as read before.
    update gateway.rate_counters c set
      minute_requests = greatest(c.minute_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('minute', t.at, 'UTC') = c.minute_start), 0),
      hour_requests = greatest(c.hour_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('hour', t.at, 'UTC') = c.hour_start), 0),
      day_requests = greatest(c.day_requests - (
        select count(*) from unnest(s.created) t (at)
         where date_trunc('day', t.at, 'UTC') = c.day_start), 0)
      from (select 'account'::gateway.rate_subject as kind, v_account as sid,
                   array_agg(h.created_at) as created
              from unnest(v_holds) h
            union all
            select 'key', h.key_id, array_agg(h.created_at)
              from unnest(v_holds) h
             where h.count_key_windows
             group by h.key_id) s
     where c.subject_kind = s.kind and c.subject_id = s.sid;

    update gateway.credit_balances b
       set held = b.held - (select sum(h.amount) from unnest(v_holds) h)
     where b.account_id = v_account;

    update gateway.key_counters c
       set requests_used = greatest(c.requests_used - s.n, 0)
      from (select h.key_id, count(*) as n from unnest(v_holds) h group by h.key_id) s
     where c.key_id = s.key_id;
  end loop;
  return v_count;
end
$$;
revoke execute on function gateway.cancel_admissions(bigint[]) from public;
grant execute on function gateway.cancel_admissions(bigint[]) to gateway_api;

-- What the function says about its open holds, for many in one call, every second or two while
-- they are open (open-holds.ts): they are alive, so their leases are renewed (expires_at moves to
-- now + hold_lease_seconds, never earlier, never past admission + greatest(hold_timeout_seconds,
-- the request's lifetime)); a request took each (reserved = false: a reserved admission in use is
-- never released as unused); and, when upstream answered, its generation id (null keeps the one
-- noted). Returns how many were open.
create or replace function gateway.note_holds(
  p_hold_ids bigint[],
  p_generation_ids text[],
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
set enable_seqscan = off
as $$
declare
  v_lease integer;
  v_timeout integer;
  v_count integer;
begin
  if cardinality(p_hold_ids) is distinct from cardinality(p_generation_ids) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'hold ids and generation ids must be arrays of the same length';
  end if;
  if exists (select from unnest(p_generation_ids) g (id) where length(g.id) > 256) then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'a generation id has at most 256 characters';
  end if;
  select s.hold_lease_seconds, s.hold_timeout_seconds into v_lease, v_timeout
    from gateway.system_settings s where s.id;
  -- Rows locked in id order (two calls never wait on each other in a cycle); a hold closed
  -- meanwhile is simply not found. A hold another transaction has locked (its settle, the sweeper,
  -- an operator's session) is skipped, not waited for: one locked row must not hold up the
  -- renewal of every other hold in the call (the worker sends it again at its next renewal).
  with n as (
    select distinct on (t.id) t.id, t.gen
      from unnest(p_hold_ids, p_generation_ids) t (id, gen)
     order by t.id, t.gen nulls last
  ), l as (
    select h.id from gateway.holds h join n on n.id = h.id
     order by h.id for update of h skip locked
  ), u as (
    update gateway.holds h
       set reserved = false, generation_id = coalesce(n.gen, h.generation_id),
           expires_at = greatest(h.expires_at, least(
             p_now + make_interval(secs => v_lease),
             gateway.hold_life_end(h.created_at, h.facts, v_timeout)))
      from n, l
     where h.id = n.id and l.id = n.id
    returning h.id
  )
  select count(*) into v_count from u;
  return v_count;
end
$$;
revoke execute on function gateway.note_holds(bigint[], text[], timestamptz) from public;
grant execute on function gateway.note_holds(bigint[], text[], timestamptz) to gateway_api;

-- Reserved admissions the server released (release_reserved_admissions), kept a day: a request that
-- had taken one while its worker could not say so (the database out of its reach for seconds)
-- still settles, late, from its copy here (settle_hold). Rows as in holds, and when released.
create table gateway.released_reservations (
  like gateway.holds,
  released_at timestamptz not null,
  primary key (id)
);
create index released_reservations_released_at on gateway.released_reservations (released_at);
comment on table gateway.released_reservations is
  'Reserved admissions the server released as unused, kept a day: a settle that still comes for '
  'one charges it late (gateway.settle_hold). Deleted once settled, or after a day.';
alter table gateway.released_reservations enable row level security;
create policy no_api_access on gateway.released_reservations
  for all to anon, authenticated using (false) with check (false);

-- The server's bound on reserved admissions a worker never used nor gave back (it vanished): those
-- reserved more than p_older_than_seconds ago are cancelled as gateway.cancel_admissions does
-- (uncounted, unheld, no usage record). A reservation in use is noted within about a second
-- (gateway.note_holds: no longer reserved), so never matches, unless its worker could not reach
-- the database meanwhile: a copy of each is kept (released_reservations), by which its settle, if
-- one comes, still charges it. An age below 5 s is taken as 5: a younger reservation may be in use
-- and not noted yet, and releasing it uncounts a request that runs (its late settle charges it but
-- does not count it again: a way past a key's cap and the windows).
create or replace function gateway.release_reserved_admissions(
  p_older_than_seconds integer default 5,
  p_now timestamptz default now()
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids bigint[];
  v_account bigint;
  v_mine bigint[];
  v_count integer := 0;
begin
  delete from gateway.released_reservations r where r.released_at < p_now - interval '1 day';
  v_ids := array(
    select h.id from gateway.holds h
     where h.reserved
       and h.created_at <= p_now - make_interval(secs => greatest(p_older_than_seconds, 5)));
  if cardinality(v_ids) = 0 then
    return 0;
  end if;
  -- Account by account in id order; within one, its counter row first, then only its holds nobody
  -- else has locked. A hold being settled is that settle's: taken first (cancel_admissions' order),
  -- the release held it and waited for the counter row a settle_requests batch held since an
  -- earlier settle of the account, while the batch waited for the hold (40P01).
  for v_account in
    select distinct h.account_id from gateway.holds h where h.id = any(v_ids) order by 1
  loop
    perform from gateway.rate_counters c
      where c.subject_kind = 'account' and c.subject_id = v_account
        for update;
    v_mine := array(
      select h.id from gateway.holds h
       where h.id = any(v_ids) and h.account_id = v_account and h.reserved
       order by h.id
         for update skip locked);
    continue when cardinality(v_mine) = 0;
    insert into gateway.released_reservations
    select h.*, p_now from gateway.holds h where h.id = any(v_mine)
    on conflict (id) do nothing;
    v_count := v_count + gateway.cancel_admissions(v_mine);
  end loop;
  -- Noted or closed meanwhile (cancel_admissions skips those): not released.
  delete from gateway.released_reservations r
   where r.id = any(v_ids) and exists (select from gateway.holds h where h.id = r.id);
  return v_count;
end
$$;
revoke execute on function gateway.release_reserved_admissions(integer, timestamptz) from public;
grant execute on function gateway.release_reserved_admissions(integer, timestamptz) to service_role;
