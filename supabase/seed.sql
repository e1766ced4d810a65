-- Seed data for a local or fresh database (`scripts/stack.sh reset`, `supabase db reset`).
-- Defaults that the product needs (system settings, model multipliers) live in migrations, not here:
-- this file only adds what is convenient for local development.
select 1;
