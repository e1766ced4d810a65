// batcher.ts, with a stand-in for the database call: items go at once while fewer than `maxCalls`
// calls are in flight, queue while they are, and the next call takes what queued (at most
// `maxBatch`); a lingering item waits for company unless urgent; a batch that fails is retried one
// by one so that only the failing item fails, except when the database is unreachable (503).

import assert from 'node:assert/strict'
import { Batcher } from '../../functions/gateway/batcher.ts'
import { ApiError } from '../../functions/gateway/errors.ts'

/** A call that answers when released: records each batch it was given. */
function gate<T>() {
  const batches: T[][] = []
  const pending: (() => void)[] = []
  const call = (items: T[]) => {
    batches.push(items)
    return new Promise<string[]>((resolve) => {
      pending.push(() => resolve(items.map((i) => `done ${i}`)))
    })
  }
  const releaseAll = async () => {
    while (pending.length) {
      pending.shift()!()
      await new Promise((r) => setTimeout(r, 0))
    }
  }
  return { batches, call, releaseAll }
}

Deno.test('alone an item goes at once; those arriving meanwhile share the next call', async () => {
  const g = gate<number>()
  const b = new Batcher<number, string>({ name: 'test', maxCalls: 1, maxBatch: 10, call: g.call })
  const first = b.submit(1)
  assert.deepEqual(g.batches, [[1]], 'the first item did not wait')
  const rest = [2, 3, 4].map((i) => b.submit(i))
  assert.equal(g.batches.length, 1, 'the others queue while a call is in flight')
  await g.releaseAll()
  assert.deepEqual(await Promise.all([first, ...rest]), ['done 1', 'done 2', 'done 3', 'done 4'])
  assert.deepEqual(g.batches, [[1], [2, 3, 4]])
})

Deno.test('maxCalls calls in flight at once, and no call takes more than maxBatch', async () => {
  const g = gate<number>()
  const b = new Batcher<number, string>({ name: 'test', maxCalls: 2, maxBatch: 3, call: g.call })
  const all = Array.from({ length: 9 }, (_, i) => b.submit(i))
  assert.deepEqual(g.batches, [[0], [1]])
  await g.releaseAll()
  assert.equal((await Promise.all(all)).length, 9)
  assert.deepEqual(g.batches, [[0], [1], [2, 3, 4], [5, 6, 7], [8]])
})

Deno.test('a lingering item waits for company; an urgent one does not', async () => {
  const calls: number[][] = []
  const call = (items: number[]) => {
    calls.push(items)
    return Promise.resolve(items.map(String))
  }
  const b = new Batcher<number, string>({
    name: 'test',
    maxCalls: 1,
    maxBatch: 10,
    lingerMs: 20,
    call,
  })
  const lingering = [b.submit(1), b.submit(2)]
  assert.deepEqual(calls, [], 'nothing went yet')
  assert.deepEqual(await Promise.all(lingering), ['1', '2'])
  assert.deepEqual(calls, [[1, 2]], 'they went together')
  const urgent = b.submit(3, true)
  assert.deepEqual(calls, [[1, 2], [3]], 'an urgent item goes at once')
  assert.equal(await urgent, '3')
})

Deno.test('a batch that fails is sent one by one: only the failing item fails', async () => {
  const calls: number[][] = []
  const call = (items: number[]) => {
    calls.push(items)
    if (items.includes(0)) return Promise.reject(new ApiError(400, 'bad item'))
    return Promise.resolve(items.map(String))
  }
  const b = new Batcher<number, string>({ name: 'test', maxCalls: 1, maxBatch: 10, call })
  const first = b.submit(9)
  const batch = [1, 0, 2].map((i) => b.submit(i))
  const settled = await Promise.allSettled([first, ...batch])
  assert.deepEqual(settled.map((s) => s.status), [
    'fulfilled',
    'fulfilled',
    'rejected',
    'fulfilled',
  ])
  assert.equal(((settled[2] as PromiseRejectedResult).reason as ApiError).status, 400)
  assert.deepEqual(calls, [[9], [1, 0, 2], [1], [0], [2]])
})

Deno.test('an unreachable database (503) fails the whole batch at once', async () => {
  const calls: number[][] = []
  let down = false
  const call = (items: number[]) => {
    calls.push(items)
    return down
      ? Promise.reject(new ApiError(503, 'down', { code: 'database_unavailable' }))
      : new Promise<string[]>((r) => setTimeout(() => r(items.map(String)), 5))
  }
  const b = new Batcher<number, string>({ name: 'test', maxCalls: 1, maxBatch: 10, call })
  const first = b.submit(0)
  const batch = [1, 2, 3].map((i) => b.submit(i))
  down = true
  assert.equal(await first, '0')
  const settled = await Promise.allSettled(batch)
  assert.ok(settled.every((s) => s.status === 'rejected'))
  assert.deepEqual(calls, [[0], [1, 2, 3]], 'not retried one by one')
})

Deno.test('an answer of the wrong length never resolves an item with undefined', async () => {
  const b = new Batcher<number, string>({
    name: 'test',
    maxCalls: 1,
    maxBatch: 10,
    call: (items) => Promise.resolve(items.length > 1 ? ['only one'] : [`${items[0]}`]),
  })
  const first = b.submit(0)
  const batch = [1, 2].map((i) => b.submit(i))
  assert.deepEqual(await Promise.all([first, ...batch]), ['0', '1', '2'])
})
