-- Accounts, their credit balances and the append-only credit ledger, and the functions that move
-- credits outside the request path. The money rule: every change of a balance is one ledger row
-- written in the same transaction, so sum(ledger.amount) = balance, always.

create table gateway.accounts (
  id bigint generated always as identity primary key,
  email text check (email is null or (length(email) <= 254 and email ~ '^[^@\s]+@[^@\s]+$')),
  username text check (username is null or username ~ '^[A-Za-z0-9_.-]{1,50}$'),
  full_name text check (full_name is null or length(full_name) <= 200),
  company text check (company is null or length(company) <= 200),
  settings jsonb not null default '{}' check (jsonb_typeof(settings) = 'object'),
  is_active boolean not null default true,
  registration_ip inet,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- A deleted account is a tombstone: personal data erased, ledger and usage kept.
  deleted_at timestamptz
);
-- Rows written before this limit may exceed it (not valid): it holds for every new write.
alter table gateway.accounts
  add constraint accounts_settings_size check (octet_length(settings::text) <= 16384) not valid;
comment on table gateway.accounts is
  'A gateway user. Never deleted: gateway.delete_account erases personal data and keeps a tombstone, '
  'so the ledger, usage records and audit log (which carry no foreign keys) never dangle.';
create unique index accounts_email_key on gateway.accounts (lower(email)) where email is not null;
create unique index accounts_username_key on gateway.accounts (lower(username))
  where username is not null;
create index accounts_registration_ip_idx on gateway.accounts (registration_ip, created_at)
  where registration_ip is not null;
alter table gateway.accounts enable row level security;
create policy no_api_access on gateway.accounts
  for all to anon, authenticated using (false) with check (false);

-- One row per account; held = the sum of its open holds. fillfactor leaves room for HOT updates:
-- the row changes twice per request.
create table gateway.credit_balances (
  account_id bigint primary key references gateway.accounts (id),
  balance bigint not null default 0,
  held bigint not null default 0 check (held >= 0)
) with (fillfactor = 50);
comment on table gateway.credit_balances is
  'Credits of an account. balance = sum of its ledger; held = sum of its open holds; available = '
  'balance - held, which admission never takes below zero. balance < 0 only after an overrun.';
alter table gateway.credit_balances enable row level security;
create policy no_api_access on gateway.credit_balances
  for all to anon, authenticated using (false) with check (false);

create table gateway.ledger (
  id bigint generated always as identity primary key,
  account_id bigint not null,
  kind text not null check (kind in ('grant', 'charge', 'refund', 'adjustment')),
  amount bigint not null,
  balance_after bigint not null,
  hold_id bigint,
  reason text,
  actor text,
  created_at timestamptz not null default now(),
  constraint ledger_amount_sign check (
    (kind = 'grant' and amount > 0) or (kind = 'charge' and amount < 0)
    or (kind = 'refund' and amount > 0) or (kind = 'adjustment' and amount <> 0)
  )
);
comment on table gateway.ledger is
  'Append-only record of every change of a balance (grant, charge, refund, adjustment). No foreign '
  'keys on purpose: an FK check would lock the account row FOR KEY SHARE on every charge.';
create index ledger_account_id_idx on gateway.ledger (account_id, id);
alter table gateway.ledger enable row level security;
create policy no_api_access on gateway.ledger
  for all to anon, authenticated using (false) with check (false);
create trigger ledger_append_only
  before update or delete on gateway.ledger
  for each row execute function gateway.forbid_change();
create trigger ledger_no_truncate
  before truncate on gateway.ledger
  for each statement execute function gateway.forbid_change();

-- Moves credits outside the request path: the balance and its ledger row in one statement pair.
create or replace function gateway.post_ledger(
  p_account_id bigint,
  p_kind text,
  p_amount bigint,
  p_reason text,
  p_actor text,
  p_now timestamptz default now()
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
begin
  update gateway.credit_balances
     set balance = balance + p_amount
   where account_id = p_account_id
  returning balance into v_balance;
  if not found then
    raise exception using
      errcode = 'P0002', message = 'no such account', hint = 'not_found';
  end if;
  insert into gateway.ledger (account_id, kind, amount, balance_after, reason, actor, created_at)
  values (p_account_id, p_kind, p_amount, v_balance, p_reason, p_actor, p_now);
  return v_balance;
end
$$;
revoke execute on function gateway.post_ledger(bigint, text, bigint, text, text, timestamptz)
  from public;

-- Grants (p_credits > 0) or adjusts (p_credits < 0) an account's credits, on the locked balance row.
-- An adjustment takes at most the available credits (balance - held): held credits are owed to
-- requests in flight, whose settles must not take the balance below zero.
create or replace function gateway.grant_credits(
  p_account_id bigint,
  p_credits bigint,
  p_reason text,
  p_actor text,
  p_now timestamptz default now()
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_balance bigint;
  v_held bigint;
begin
  if p_credits is null or p_credits = 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'credits must be a non-zero whole number';
  end if;
  if length(p_reason) > 500 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = 'reason: at most 500 characters';
  end if;
  select b.balance, b.held into v_balance, v_held
    from gateway.credit_balances b where b.account_id = p_account_id for update;
  if not found then
    raise exception using errcode = 'P0002', hint = 'not_found', message = 'user not found';
  end if;
  if p_credits < 0 and v_balance - v_held + p_credits < 0 then
    raise exception using errcode = '22023', hint = 'invalid_request',
      message = format('an adjustment of %s exceeds the available credits: %s (balance %s, of '
                       'which %s held by requests in flight)',
                       p_credits, greatest(v_balance - v_held, 0), v_balance, v_held);
  end if;
  return gateway.post_ledger(
    p_account_id, case when p_credits > 0 then 'grant' else 'adjustment' end, p_credits, p_reason,
    p_actor, p_now);
end
$$;
revoke execute on function gateway.grant_credits(bigint, bigint, text, text, timestamptz)
  from public;

-- Operator check of the money rule: the accounts whose ledger does not sum to their balance (none).
create or replace function gateway.ledger_discrepancies()
returns table (account_id bigint, balance bigint, ledger_sum numeric)
language sql
stable
security definer
set search_path = ''
as $$
  select b.account_id, b.balance, coalesce(l.total, 0)
    from gateway.credit_balances b
    left join (
      select g.account_id, sum(g.amount) as total from gateway.ledger g group by g.account_id
    ) l on l.account_id = b.account_id
   where b.balance is distinct from coalesce(l.total, 0);
$$;
revoke execute on function gateway.ledger_discrepancies() from public;
grant execute on function gateway.ledger_discrepancies() to service_role;
