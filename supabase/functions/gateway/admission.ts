// Admits a chat request and holds credits for it before anything goes upstream (`begin_request`,
// docs/SQL-API.md "The request path"): from an admission reserved ahead for a busy caller
// (reservations.ts) when there is one, else from SQL, batched under load (batcher.ts). A refusal is
// thrown as its HTTP error (refusals.ts). What follows an admission is settlement.ts's.

import { toHex } from '../_shared/keys.ts'
import { Batcher } from './batcher.ts'
import { call } from './db.ts'
import type { BeginResult, Hold } from './hold.ts'
import { type Caller, callerArgs } from './identity.ts'
import { opened } from './open-holds.ts'
import { refusalError } from './refusals.ts'
import * as reservations from './reservations.ts'

interface Admission {
  who: Caller
  model: string
  maxTokens: number | null
  promptTokens: number
}

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
        batch[0].model,
        batch[0].maxTokens,
        batch[0].promptTokens,
      ]).then((r) => [r])
      : call<BeginResult[]>('begin_requests', [
        batch.map((a) => ({
          key_hash: toHex(a.who.keyHash),
          client_ip: a.who.ip,
          referrer: a.who.referrer,
          model: a.model,
          max_tokens: a.maxTokens,
          prompt_tokens: a.promptTokens,
        })),
      ]),
})

/** Admits the request and holds credits for it, or throws the refusal as a 401/402/403/429. */
export async function begin(
  who: Caller,
  model: string,
  maxTokens: number | null,
  promptTokens: number,
): Promise<Hold> {
  const context = { who, model, maxTokens }
  const reserved = reservations.take(context, promptTokens)
  if (reserved) return opened(reserved)
  const r = await admissions.submit({ who, model, maxTokens, promptTokens })
  reservations.admitted(context, promptTokens, r)
  if (r.ok) return opened(r)
  throw refusalError(r)
}
