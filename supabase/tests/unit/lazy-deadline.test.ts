// sse.ts's LazyDeadline: a stream's idle and stall bounds with one timer each instead of one per
// chunk. It must fire exactly when a timer per start would: once a single start has gone its `ms`
// without a stop, never because starts and stops add up past it. No assertion on elapsed time: the
// order of timers (ours are due before its own) decides, however slow the machine.

import assert from 'node:assert/strict'
import { LazyDeadline } from '../../functions/gateway/sse.ts'

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms))

Deno.test('LazyDeadline fires once a start goes its ms without a stop', async () => {
  let fired = 0
  let done!: () => void
  const firedOnce = new Promise<void>((r) => (done = r))
  const d = new LazyDeadline(() => {
    fired++
    done()
  })
  d.start(20)
  await firedOnce
  await tick(40)
  assert.equal(fired, 1, 'once, not again without a new start')
  d.clear()
})

Deno.test('LazyDeadline: starts and stops that each end in time never fire, however many', async () => {
  let fired = 0
  const d = new LazyDeadline(() => fired++)
  // 100 cycles of ~5 ms against a 200 ms bound: far longer in total than the bound, each in time.
  for (let i = 0; i < 100; i++) {
    d.start(200)
    await tick(5)
    d.stop()
  }
  // A timer armed by an early start fired meanwhile (500 ms > 200) and was armed again or
  // lapsed: none of that may fire.
  await tick(250)
  assert.equal(fired, 0)
  // Left running, the last start fires.
  let done!: () => void
  const firedNow = new Promise<void>((r) => (done = r))
  const e = new LazyDeadline(() => done())
  e.start(50)
  await tick(5)
  e.stop()
  e.start(50) // re-armed for the rest of this one, not the first one's
  await firedNow
  d.clear()
  e.clear()
})

Deno.test('LazyDeadline: a shorter bound after a longer one is not held up by the longer timer', async () => {
  let done!: () => void
  const fired = new Promise<string>((r) => (done = () => r('fired')))
  const d = new LazyDeadline(() => done())
  d.start(60_000)
  d.stop()
  d.start(10)
  // With the 60 s timer kept, this would wait a minute (and the test time out).
  assert.equal(await Promise.race([fired, tick(5_000).then(() => 'late')]), 'fired')
  d.clear()
})

Deno.test('LazyDeadline: clear disarms it (an ended stream leaves no timer)', async () => {
  let fired = 0
  const d = new LazyDeadline(() => fired++)
  d.start(10)
  d.clear()
  await tick(40)
  assert.equal(fired, 0)
})
