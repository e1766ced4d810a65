// Concurrency invariants, the light run of the suite (the full one: `bash scripts/soak.sh`): 1,000
// chat requests from 200 keys of 20 accounts with small balances, 48 in flight, mixed stream and
// non-stream, upstream faults, clients hanging up at every stage, credit grants landing meanwhile.
// Afterwards: no balance below zero, ledger = balance for every account, usage records = the
// simulator's generations, no hold open, every admitted request settled exactly once.

import assert from 'node:assert/strict'
import { test } from '../lib/stack.ts'
import { soak, soakLines, soakProblems } from '../lib/soak.ts'

test('1,000 concurrent chat requests over 200 keys and 20 small balances: nothing lost, nothing twice', async () => {
  const result = await soak({
    requests: 1_000,
    concurrency: 48,
    accounts: 20,
    keysPerAccount: 10,
    credits: 300,
    seed: Date.now() % 1_000_000,
  })
  for (const line of soakLines(result)) console.log(line)
  assert.deepEqual(soakProblems(result), [])
  assert.equal(result.books.openHolds, 0)
  assert.equal(result.books.usageRecords, result.books.admitted)
  // Every generation billed, but those the simulator made after the gateway's upstream timeout had
  // voided their request (the documented before-headers limit; counted and bounded in the books).
  assert.equal(
    result.books.generationsMatched + result.books.lostBeforeHeaders,
    result.books.generations,
  )
  assert.ok(result.load.faultsInjected > 0 && result.load.clientAborts > 0)
})
