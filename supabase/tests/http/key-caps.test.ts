// A key's request cap cannot be multiplied (issue 11, finding 4), tried the way the attacker did,
// over HTTP: a key capped at 3 requests tries every way to more than 3 successful completions —
// keys it mints (and keys those mint), raising a sibling's cap or its own, rotating a sibling to
// receive its secret — then spends with every secret it holds. The rule (docs/SQL-API.md): a key
// with a limit of its own creates no keys and manages no key but itself.

import assert from 'node:assert/strict'
import { isWellFormedKey } from '../../functions/_shared/keys.ts'
import { newAccount } from '../lib/accounts.ts'
import { api, type ApiResponse, chat } from '../lib/http.ts'
import { db, test } from '../lib/stack.ts'

const CHAT = { model: 'openai/gpt-4o-mini~len-3', max_tokens: 10 }

test('a key capped at 3 gets no more than 3 successful requests through keys it makes or manages', async () => {
  const owner = await newAccount(100_000, 'cap-owner')
  const mk = (by: string, spec: Record<string, unknown>) =>
    api('/user/api-keys', { key: by, body: spec })
  const capped = await mk(owner.key, { key_name: 'capped at 3', max_requests: 3 })
  assert.equal(capped.status, 200, capped.text)
  // A sibling the owner made (capped at 1): something to raise or rotate.
  const sibling = await mk(owner.key, { key_name: 'sibling', max_requests: 1 })
  assert.equal(sibling.status, 200, sibling.text)

  const attacker = capped.json.api_key as string
  const secrets = [attacker]
  const refusals: string[] = []
  const attempt = async (what: string, res: Promise<ApiResponse>) => {
    const r = await res
    if (r.status === 200 && isWellFormedKey(String(r.json?.api_key))) {
      secrets.push(r.json.api_key)
    }
    if (r.status === 403) refusals.push(what)
    return r
  }

  // Five keys capped at 3 each (each within what the capped key has left), and keys they mint.
  for (let i = 0; i < 5; i++) {
    await attempt(`mint ${i}`, mk(attacker, { key_name: `minted ${i}`, max_requests: 3 }))
  }
  for (const minted of secrets.slice(1)) {
    await attempt('mint from a minted key', mk(minted, { key_name: 'grandchild', max_requests: 3 }))
  }
  // Raise the sibling's cap, lift it, rotate the sibling to receive its secret.
  const sib = `/user/api-keys/${sibling.json.key_id}`
  await attempt(
    'raise a sibling',
    api(sib, { method: 'PUT', key: attacker, body: { max_requests: 3 } }),
  )
  await attempt(
    'lift a sibling',
    api(sib, { method: 'PUT', key: attacker, body: { max_requests: null } }),
  )
  await attempt('rotate a sibling', api(`${sib}/rotate`, { key: attacker, body: {} }))
  // Raise or lift its own cap.
  const own = `/user/api-keys/${capped.json.key_id}`
  await attempt(
    'raise itself',
    api(own, { method: 'PUT', key: attacker, body: { max_requests: 100 } }),
  )
  await attempt(
    'lift itself',
    api(own, { method: 'PUT', key: attacker, body: { max_requests: null } }),
  )

  // Spend: every secret the attacker holds, until each is refused.
  let succeeded = 0
  for (const key of secrets) {
    for (let i = 0; i < 5; i++) {
      const res = await chat(key, CHAT)
      if (res.status === 200) succeeded++
      else break
    }
  }
  console.log(
    `capped key: ${secrets.length} secret(s) held, ${succeeded} successful request(s); ` +
      `refused: ${refusals.join(', ')}`,
  )
  assert.equal(secrets.length, 1, 'the capped key obtained no other secret')
  assert.equal(succeeded, 3, 'exactly its 3 requests went through')
  // Each way to more was refused with 403 permission_denied.
  assert.deepEqual(refusals, [
    ...Array.from({ length: 5 }, (_, i) => `mint ${i}`),
    'raise a sibling',
    'lift a sibling',
    'rotate a sibling',
    'raise itself',
    'lift itself',
  ])
  const [{ cap, used }] = await db()`
    select k.max_requests as cap, c.requests_used as used
      from gateway.api_keys k join gateway.key_counters c on c.key_id = k.id
     where k.id = ${capped.json.key_id}`
  assert.deepEqual([Number(cap), Number(used)], [3, 3])

  // What stays: the owner's (uncapped) key creates and manages keys; a capped key manages itself.
  const renamed = await api(own, { method: 'PUT', key: attacker, body: { key_name: 'spent' } })
  assert.equal(renamed.status, 200, renamed.text)
  const raised = await api(sib, { method: 'PUT', key: owner.key, body: { max_requests: 10 } })
  assert.equal(raised.status, 200, raised.text)
  const refused = await mk(attacker, { key_name: 'one more', max_requests: 1 })
  assert.equal(refused.json.error.code, 'permission_denied')
  assert.match(refused.json.error.message, /request cap/)
})
