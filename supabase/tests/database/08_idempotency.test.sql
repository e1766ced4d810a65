-- Idempotency-Key for chat completions: first runs, retry replays, other body mismatches, concurrent
-- retry is in progress, failures release the key, entries expire.
begin;
\ir _helpers.sql
select plan(12);

select tests.new_account(1000) as a \gset
select tests.h(:'a'::jsonb ->> 'api_key') as h \gset

select is(gateway.idempotency_begin(:'h', null, null, 'k1', 'fp-1') ->> 'state', 'started',
          'a new Idempotency-Key starts');
select is(gateway.idempotency_begin(:'h', null, null, 'k1', 'fp-1') ->> 'state', 'in_progress',
          'a retry while the first runs is in progress (409)');
select is(gateway.idempotency_begin(:'h', null, null, 'k1', 'fp-2') ->> 'state', 'mismatch',
          'the same key with another body is a mismatch (422)');
select is(gateway.idempotency_complete(:'h', 'k1', 200, '{"id":"gen-1","usage":{"total_tokens":7}}'),
          '{"stored": true}'::jsonb, 'the response is stored');
select is(gateway.idempotency_begin(:'h', null, null, 'k1', 'fp-1'),
          '{"state":"replay","status":200,"response":{"id":"gen-1","usage":{"total_tokens":7}}}'::jsonb,
          'a retry with the same body replays the first response');
select is(gateway.idempotency_begin(:'h', null, null, 'k1', 'fp-1', now() + interval '25 hours') ->> 'state',
          'started', 'after 24 hours the key is new again');

select is(gateway.idempotency_begin(:'h', null, null, 'k2', 'fp') ->> 'state', 'started', 'another key starts');
select is(gateway.idempotency_complete(:'h', 'k2', 502, null), '{"stored": true}'::jsonb,
          'a failed request releases its key');
select is(gateway.idempotency_begin(:'h', null, null, 'k2', 'fp') ->> 'state', 'started',
          'so the retry runs again');
select is(gateway.idempotency_begin(:'h', null, null, 'k2', 'fp', now() + interval '16 minutes') ->> 'state',
          'started', 'a running entry older than the hold timeout is abandoned and can be claimed');

select tests.new_account(1000) as b \gset
select is(gateway.idempotency_begin(tests.h(:'b'::jsonb ->> 'api_key'), null, null, 'k1', 'fp-9') ->> 'state',
          'started', 'keys are scoped per account');
select is(tests.error_of(format('select gateway.idempotency_begin(%L, null, null, %L, %L)',
                                sha256('x'::bytea), 'k1', 'fp')),
          '28000:invalid_api_key', 'an unknown API key cannot use idempotency');

select * from finish();
rollback;
