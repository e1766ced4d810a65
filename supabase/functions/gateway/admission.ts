// Admits a chat request and holds credits for it before anything goes upstream (`begin_request`,
// docs/SQL-API.md "The request path"): from an admission reserved ahead for a busy caller
// (reservations.ts) when there is one, else from SQL, batched under load (batcher.ts). A refusal is
// thrown as its HTTP error (refusals.ts). A model the catalog does not know may have been added
// upstream since it was loaded: the catalog is refreshed (if older than a minute) and the request
// admitted once more. What follows an admission is settlement.ts's.

import { toHex } from '../_shared/keys.ts'
import { Batcher } from './batcher.ts'
import { call } from './db.ts'
import type { RequestFacts } from './chat-request.ts'
import type { BeginResult, Hold } from './hold.ts'
import { type Caller, callerArgs } from './identity.ts'
import { refreshIfOlderThan } from './models-cache.ts'
import { opened } from './open-holds.ts'
import { refusalError } from './refusals.ts'
import * as reservations from './reservations.ts'

interface Admission {
  who: Caller
  facts: RequestFacts
}

/** A catalog older than this is refreshed when admission reports a model it does not know. */
const CATALOG_RECHECK_SECONDS = 60

// Admissions are batched (batcher.ts): one goes alone (`begin_request`), those that queue behind it
// go together (`begin_requests`, each admitted by begin_request itself, in account order). Two calls
// in flight, not one, so that a batch fills while the other is at the database instead of waiting
// for it; measured against one, three and four (docs/PERFORMANCE.md). At most 64 per call: every
// account a batch admits stays locked until it commits.
const admissions = new Batcher<Admission, BeginResult>({
  name: 'admissions',
  maxCalls: 2,
  maxBatch: 64,
  call: (batch) =>
    batch.length === 1
      ? call<BeginResult>('begin_request', [
        ...callerArgs(batch[0].who),
        { ...batch[0].facts },
      ]).then((r) => [r])
      : call<BeginResult[]>('begin_requests', [
        batch.map((a) => ({
          key_hash: toHex(a.who.keyHash),
          client_ip: a.who.ip,
          referrer: a.who.referrer,
          ...a.facts,
        })),
      ]),
})

/**
 * Admits the request and holds credits for its facts, or throws the refusal (401/402/403/429, 400
 * model_not_found, 503 pricing_unavailable).
 */
export async function begin(who: Caller, facts: RequestFacts): Promise<Hold> {
  const reserved = reservations.take(who, facts)
  if (reserved) return opened(reserved)
  let r = await admissions.submit({ who, facts })
  if (
    !r.ok && r.reason === 'model_not_found' && await refreshIfOlderThan(CATALOG_RECHECK_SECONDS)
  ) {
    r = await admissions.submit({ who, facts })
  }
  reservations.admitted(who, facts, r)
  if (r.ok) return opened(r)
  throw refusalError(r)
}
