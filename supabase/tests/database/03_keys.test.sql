-- Keys: format and checksum, hashed storage, rotation grace, permission subsets, ownership, audit.
begin;
\ir _helpers.sql
select plan(42);

-- Format and checksum ------------------------------------------------------------------------------
select is(gateway.crc32(convert_to('123456789', 'UTF8')), 3421780262::bigint,
          'crc32 is CRC-32/ISO-HDLC (zlib): check value 0xCBF43926');
select is(gateway.base62(3421780262, 6), '3jZRME',
          'base62 uses 0-9A-Za-z, most significant digit first');
select is(gateway.base62(0, 6), '000000', 'base62 pads with 0 to the width');
select is(gateway.key_checksum('gw_live_abcdefghijABCDEFGHIJ01'), '2GeCg4',
          'key_checksum matches an independent implementation (Python zlib.crc32 + base62)');

select gateway.generate_key('live') as k \gset
select matches(:'k'::text, '^gw_live_[0-9A-Za-z]{28}$', 'a live key is gw_live_ + 22 body + 6 checksum chars');
select is(right(:'k', 6), gateway.key_checksum(left(:'k', -6)),
          'the last 6 chars are the checksum of the rest');
select ok(gateway.key_is_well_formed(:'k'), 'a generated key is well formed');
select ok(
  not gateway.key_is_well_formed(
    left(:'k', 10) || case when substr(:'k', 11, 1) = 'a' then 'b' else 'a' end || substr(:'k', 12)),
  'one mistyped body character fails the checksum');
select ok(
  not gateway.key_is_well_formed(left(:'k', -1) || case when right(:'k', 1) = 'a' then 'b' else 'a' end),
  'a mistyped checksum character fails');
select ok(not gateway.key_is_well_formed('gw_prod_' || substr(:'k', 9)), 'unknown environment fails');
select ok(not gateway.key_is_well_formed(null), 'null is not a key');
select ok(
  (select bool_and(gateway.key_is_well_formed(gateway.generate_key(e)))
     from unnest(array['live', 'test', 'staging', 'dev']) e, generate_series(1, 25)),
  'keys of every environment are well formed (100 samples)');
select is(
  (select count(distinct gateway.generate_key('test')) from generate_series(1, 200)), 200::bigint,
  '200 generated keys are all different');
select is(tests.error_of($$select gateway.generate_key('prod')$$), '22023:invalid_request',
          'generate_key refuses an unknown environment');

-- Stored hashed ----------------------------------------------------------------------------------
select tests.new_account() as a \gset
select (:'a'::jsonb ->> 'api_key') as key, (:'a'::jsonb ->> 'key_id')::bigint as key_id \gset
select is((select key_hash from gateway.api_keys where id = :key_id), sha256(convert_to(:'key', 'UTF8')),
          'only sha256(key) is stored');
select is((select key_prefix from gateway.api_keys where id = :key_id), left(:'key', 12) || '…',
          'the display prefix is the first 12 chars and an ellipsis');
select is(
  (select count(*) from gateway.api_keys k where to_jsonb(k)::text like '%' || substr(:'key', 13) || '%'),
  0::bigint, 'the secret part of the key appears nowhere in the table');

-- Create: permissions are a subset of the caller's ---------------------------------------------------
select gateway.create_key(tests.h(:'key'), '10.0.0.1', null,
                          '{"name":"reader","permissions":["read"]}') as reader \gset
select is(:'reader'::jsonb -> 'permissions', '["read"]'::jsonb, 'a write key creates a read key');
select ok(gateway.key_is_well_formed(:'reader'::jsonb ->> 'api_key'),
          'create_key returns the plaintext once');
select is(
  tests.error_of(format($$select gateway.create_key(%L, null, null, '{"permissions":["read","admin"]}')$$,
                        tests.h(:'key'))),
  '22023:invalid_request', 'a key cannot create a key with a permission it lacks (admin)');
select is(
  tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"x"}')$$,
                        tests.h(:'reader'::jsonb ->> 'api_key'))),
  '42501:permission_denied', 'a read-only key cannot create keys at all');
select is(
  tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"Reader"}')$$,
                        tests.h(:'key'))),
  '23505:duplicate_key_name', 'key names are unique per account (case-insensitively)');
select tests.new_account() as b \gset
select is(
  tests.error_of(format($$select gateway.create_key(%L, null, null, '{"name":"reader"}')$$,
                        tests.h(:'b'::jsonb ->> 'api_key'))),
  'ok', 'another account may use the same name');

-- Admin keys cannot be managed by non-admin keys of the same account
select * from gateway.create_admin_key(:'a'::jsonb ->> 'email') \gset admin_
select is(
  tests.error_of(format('select gateway.rotate_key(%L, null, null, %s, 0)', tests.h(:'key'), :admin_key_id)),
  '42501:permission_denied', 'a write key cannot rotate (and so read) an admin key');
select is(
  tests.error_of(format('select gateway.update_key(%L, null, null, %s, %L)', tests.h(:'key'),
                        :admin_key_id, '{"is_active":false}')),
  '42501:permission_denied', 'a write key cannot deactivate an admin key');
select is(
  tests.error_of(format('select gateway.delete_key(%L, null, null, %s)', tests.h(:'b'::jsonb ->> 'api_key'),
                        (:'reader'::jsonb ->> 'key_id'))),
  'P0002:not_found', 'another account''s key is not found');
select is(
  tests.error_of(format('select gateway.delete_key(%L, null, null, %s)', tests.h(:'key'), :key_id)),
  '22023:invalid_request', 'the primary key cannot be deleted');
select is(
  tests.error_of(format('select gateway.update_key(%L, null, null, %s, %L)', tests.h(:'key'),
                        (:'reader'::jsonb ->> 'key_id'), '{"permissions":["read","admin"]}')),
  '22023:invalid_request', 'update cannot grant a permission the caller lacks');

-- Rotation with a grace period -------------------------------------------------------------------
select gateway.rotate_key(tests.h(:'key'), '10.0.0.2', null, :key_id, 3600) as rot \gset
select isnt(:'rot'::jsonb ->> 'api_key', :'key', 'rotation issues a new secret');
select is((tests.begin(:'rot'::jsonb ->> 'api_key')) ->> 'ok', 'true', 'the new secret works');
select is((tests.begin(:'key', p_now => now() + interval '59 minutes')) ->> 'ok', 'true',
          'the old secret still works within the grace');
select is((tests.begin(:'key', p_now => now() + interval '61 minutes')) ->> 'reason', 'invalid_api_key',
          'the old secret is refused once the grace has passed');
select gateway.rotate_key(tests.h(:'rot'::jsonb ->> 'api_key'), null, null, :key_id, 0) as rot2 \gset
select is((tests.begin(:'rot'::jsonb ->> 'api_key')) ->> 'reason', 'invalid_api_key',
          'grace 0: the previous secret stops at once');
select is((tests.begin(:'key')) ->> 'reason', 'invalid_api_key',
          'only the latest previous secret is kept');
select is(
  tests.error_of(format('select gateway.rotate_key(%L, null, null, %s, 99999999)',
                        tests.h(:'rot2'::jsonb ->> 'api_key'), :key_id)),
  '22023:invalid_request', 'a grace beyond max_rotation_grace_seconds is refused');

-- Update and delete ---------------------------------------------------------------------------------
select gateway.update_key(tests.h(:'rot2'::jsonb ->> 'api_key'), null, null,
                          (:'reader'::jsonb ->> 'key_id')::bigint,
                          '{"name":"renamed","max_requests":5,"allowed_ips":["192.168.1.7/24"]}') as upd \gset
select is(:'upd'::jsonb -> 'allowed_ips', '["192.168.1.0/24"]'::jsonb,
          'update normalizes CIDR ranges and returns the key');
select is(
  gateway.delete_key(tests.h(:'rot2'::jsonb ->> 'api_key'), null, null,
                     (:'reader'::jsonb ->> 'key_id')::bigint) ->> 'status',
  'deleted', 'a non-primary key can be deleted');
select is((tests.begin(:'reader'::jsonb ->> 'api_key')) ->> 'reason', 'invalid_api_key',
          'a deleted key is refused');
select is(
  (gateway.list_keys(tests.h(:'rot2'::jsonb ->> 'api_key'), null, null) ->> 'total_keys')::integer, 2,
  'list_keys shows the live keys (primary and admin), not the deleted one');

-- Audit ------------------------------------------------------------------------------------------
select set_eq(
  format('select action from gateway.key_audit_log where account_id = %s', :'a'::jsonb ->> 'user_id'),
  array['create', 'rotate', 'update', 'delete'],
  'create, rotate, update and delete are audited');
select is(
  (select row(actor_key_id, host(client_ip), detail ->> 'grace_seconds')::text
     from gateway.key_audit_log
    where account_id = (:'a'::jsonb ->> 'user_id')::bigint and action = 'rotate'
    order by id limit 1),
  row(:key_id, '10.0.0.2', '3600')::text,
  'an audit row says which key did it, from which IP, with what');
select is(
  (select count(*) from gateway.key_audit_log
    where account_id = (:'a'::jsonb ->> 'user_id')::bigint),
  7::bigint, 'one audit row per key operation (3 creates, 2 rotations, update, delete)');

select * from finish();
rollback;
