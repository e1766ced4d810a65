// Batching by the rhythm of the database rather than a timer, for admissions and settles alike
// (admission.ts, settlement.ts): while fewer than `maxCalls` calls are in flight an item goes at
// once; items that arrive meanwhile queue, and the next call takes all of them (up to `maxBatch`).
// At concurrency 1 nothing queues and nothing waits; under load many items share one round trip,
// one transaction and one commit.
//
// A batch runs in one transaction, so one element SQL cannot process (an error, not a refusal)
// aborts all of it: the elements are then sent one by one, so that only that one fails. An
// unreachable database (a 503) fails the whole batch at once instead: one by one would fail alike.

import { keepWorker } from './background.ts'
import { ApiError } from './errors.ts'

interface Queued<T, R> {
  item: T
  resolve: (r: R) => void
  reject: (err: unknown) => void
}

export interface BatcherOptions<T, R> {
  /** Calls in flight at most. */
  maxCalls: number
  /** Items per call at most (a bound on one transaction and the rows it keeps locked). */
  maxBatch: number
  /** One call for these items (one or many), answering one result per item, in order. */
  call: (items: T[]) => Promise<R[]>
  /**
   * How long an item that would go alone waits for company (0: it goes at once). For work nobody
   * waits for (settles): at low concurrency it turns one call per item into one per few.
   */
  lingerMs?: number
  /** Names this batcher to background.ts, which keeps the worker alive while it holds items. */
  name: string
}

export class Batcher<T, R> {
  #queue: Queued<T, R>[] = []
  #calls = 0
  /** Every item submitted and not answered yet (drain). */
  #pending = new Set<Promise<unknown>>()
  #lingering: ReturnType<typeof setTimeout> | undefined

  constructor(private readonly opts: BatcherOptions<T, R>) {}

  /** The item's result, from whichever call takes it. `urgent`: no lingering for this one. */
  submit(item: T, urgent = false): Promise<R> {
    const answer = new Promise<R>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject })
      this.#flush(urgent)
      this.#keep()
    })
    const tracked = answer.then(() => {}, () => {})
    this.#pending.add(tracked)
    tracked.then(() => this.#pending.delete(tracked))
    return answer
  }

  /**
   * Resolves once every item submitted before this call is answered (or failed), sending what
   * lingers at once: a read that must see this isolate's own writes waits for it.
   */
  drain(): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve()
    this.flushNow()
    return Promise.all([...this.#pending]).then(() => {})
  }

  /** Sends what is queued now, lingering no more (the worker is about to go). */
  flushNow(): void {
    clearTimeout(this.#lingering)
    this.#lingering = undefined
    this.#sendQueued()
  }

  /** Queued, lingering or in flight: a timer alone would not keep the worker alive for it. */
  #keep(): void {
    keepWorker(this.opts.name, this.#queue.length > 0 || this.#calls > 0)
  }

  #flush(urgent: boolean): void {
    const linger = this.opts.lingerMs ?? 0
    if (!urgent && linger > 0 && this.#calls === 0 && this.#queue.length < this.opts.maxBatch) {
      this.#lingering ??= setTimeout(() => {
        this.#lingering = undefined
        this.#sendQueued()
      }, linger)
      return
    }
    this.#sendQueued()
  }

  #sendQueued(): void {
    while (this.#calls < this.opts.maxCalls && this.#queue.length > 0) {
      this.#calls++
      this.#send(this.#queue.splice(0, this.opts.maxBatch)).finally(() => {
        this.#calls--
        // What queued meanwhile has waited long enough: no lingering for it.
        this.#sendQueued()
        this.#keep()
      })
    }
  }

  async #send(batch: Queued<T, R>[]): Promise<void> {
    try {
      const results = await this.opts.call(batch.map((q) => q.item))
      if (
        !Array.isArray(results) || results.length !== batch.length || results.some((r) => r == null)
      ) {
        // Never seen; a missing result would otherwise resolve a request with undefined.
        throw new Error(`a batch of ${batch.length} was answered with something else`)
      }
      batch.forEach((q, i) => q.resolve(results[i]))
    } catch (err) {
      const unreachable = err instanceof ApiError && err.status === 503
      if (batch.length === 1 || unreachable) {
        for (const q of batch) q.reject(err)
        return
      }
      await Promise.all(batch.map((q) => this.#send([q])))
    }
  }
}
