/**
 * HTTP long-poll pull for one queue. A pull never takes off the queue what it
 * is not about to hand out, so the queue's other consumers are not starved:
 *
 *   1. what the queue holds now is fetched with basic.get, one message per
 *      message asked for (max), stopping at the first get-empty;
 *   2. if nothing was there and waitMs > 0, the pull waits. While pulls wait,
 *      a consumer runs whose prefetch is what they ask for together (the sum
 *      of their max); when none waits, it is cancelled at once, and anything
 *      it delivered for nobody (a pull that timed out meanwhile) is given back
 *      (nack requeue=true) after the cancel, so it goes to other consumers.
 *
 * Every pull answers by its own deadline (waitMs, or GET_GRACE_MS for
 * waitMs=0), even when the broker does not answer at all (a black-holed link):
 * a get that answers later is given back. A missing queue answers 404
 * QUEUE_NOT_FOUND, also when it is only found out after a reconnect: pending
 * pulls are answered 404 and the queue is forgotten, so the next pull asks
 * the broker again. Messages become leases only when handed out.
 */
import type { ConsumeMessage } from 'amqplib'
import { TIMED_OUT, withDeadline } from '../deadline.js'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import { channelErrorCode } from '../upstream/classify.js'
import { toDelivered, type DeliveredMessage } from './delivery.js'
import type { ConsumerChannel, LeaseTable } from './leases.js'
import { Subscription, type SubscriptionEvent, type SubscriptionOptions } from './subscription.js'

export interface PullRequest {
  max: number
  waitMs: number
  leaseMs: number
  base64: boolean
  /** Aborted when the HTTP client goes away: nothing is handed to it then. */
  signal: AbortSignal
}

/** A pull with waitMs=0 still needs a broker round trip: this bounds it when the broker is silent. */
export const GET_GRACE_MS = 1_000
/** Upper bound on the waiting consumer's prefetch, however many pulls wait. */
const MAX_WAIT_PREFETCH = 1_000

interface Arrived {
  msg: ConsumeMessage
  channel: ConsumerChannel
}

interface Waiter {
  req: PullRequest
  resolve: (messages: DeliveredMessage[]) => void
  reject: (err: SidecarError) => void
  timer: NodeJS.Timeout
  onAbort: () => void
}

export class PullQueue {
  readonly queue: string
  readonly #sub: Subscription
  /** Arrived from the waiting consumer, not yet handed out (handed out on the next turn). */
  readonly #arrived: Arrived[] = []
  readonly #waiters: Waiter[] = []
  /** Deliveries the running consumer may still send us (its prefetch minus what it sent). */
  #credit = 0
  #fitting: Promise<void> | undefined
  #refit = false
  #lastPullAt = Date.now()
  readonly #idleTimer: NodeJS.Timeout
  #flushScheduled = false
  #closed = false

  constructor(
    opts: Omit<SubscriptionOptions, 'sink' | 'prefetch'>,
    private readonly leases: LeaseTable,
    private readonly idleMs: number,
    private readonly log: Logger,
    /** Called when the queue is gone quiet (or missing) and released everything: the registry forgets it. */
    private readonly onIdle: (q: PullQueue) => void,
  ) {
    this.queue = opts.queue
    this.#sub = new Subscription({
      ...opts,
      prefetch: 1,
      sink: {
        onMessage: (msg, channel) => this.#onMessage(msg, channel),
        onChannelClosed: (channel) => this.#onChannelClosed(channel),
        onEvent: (e) => this.#onEvent(e),
      },
    })
    // Opens the channel on 'ready'; nothing consumes until a pull waits.
    this.#sub.prepare()
    this.#idleTimer = setInterval(() => void this.#checkIdle(), Math.max(50, Math.min(idleMs / 2, 5_000)))
    this.#idleTimer.unref()
  }

  get closed(): boolean {
    return this.#closed
  }

  get subscription(): Subscription {
    return this.#sub
  }

  status() {
    return { ...this.#sub.status(), prefetched: this.#arrived.length, waiting: this.#waiters.length }
  }

  async pull(req: PullRequest): Promise<DeliveredMessage[]> {
    if (this.#closed) throw new SidecarError('SHUTTING_DOWN')
    this.#lastPullAt = Date.now()
    const deadline = Date.now() + (req.waitMs === 0 ? GET_GRACE_MS : req.waitMs)
    const now = await this.#getUpTo(req, deadline)
    if (now.length > 0 || req.waitMs === 0 || req.signal.aborted || this.#closed || Date.now() >= deadline) return now
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        req,
        resolve,
        reject,
        timer: setTimeout(() => this.#dropWaiter(waiter, []), Math.max(0, deadline - Date.now())),
        onAbort: () => this.#dropWaiter(waiter, []),
      }
      req.signal.addEventListener('abort', waiter.onAbort, { once: true })
      this.#waiters.push(waiter)
      this.#fit()
    })
  }

  /** Shutdown step 1: cancel the consumer and requeue what nobody took; leases stay ackable. */
  async stopConsuming(): Promise<void> {
    this.#closed = true
    for (const w of [...this.#waiters]) this.#dropWaiter(w, [])
    await this.#sub.pause()
    this.#giveBack()
  }

  /** Final: closes the channel (the broker requeues anything still unacked). */
  close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#idleTimer)
    for (const w of [...this.#waiters]) this.#dropWaiter(w, [])
    this.#giveBack()
    return this.#sub.stop()
  }

  /** basic.get up to req.max messages, stopping at get-empty or the deadline. */
  async #getUpTo(req: PullRequest, deadline: number): Promise<DeliveredMessage[]> {
    const out: DeliveredMessage[] = []
    while (out.length < req.max && !req.signal.aborted && !this.#closed) {
      const get = this.#sub.get()
      let got: Awaited<typeof get> | typeof TIMED_OUT
      try {
        got = await withDeadline(get, Math.max(0, deadline - Date.now()))
      } catch (err) {
        if (channelErrorCode(err) === 404) this.#forget(`The broker has no queue "${this.queue}"`)
        if (channelErrorCode(err) === 404) throw new SidecarError('QUEUE_NOT_FOUND', `The broker has no queue "${this.queue}"`)
        // The channel or connection died under the get: its leases are stale; hand out what we have.
        this.log.debug({ queue: this.queue, err: (err as Error).message }, 'basic.get failed')
        break
      }
      if (got === TIMED_OUT) {
        // The broker is silent: answer now; a message the get brings later is given back.
        void get.then((late) => late && late.channel.nack(late.msg, true)).catch(() => {})
        break
      }
      if (!got) break
      if (req.signal.aborted || this.#closed) {
        got.channel.nack(got.msg, true)
        break
      }
      out.push(this.#hand(got, req))
    }
    return out
  }

  #hand(a: Arrived, req: PullRequest): DeliveredMessage {
    const lease = this.leases.add(a.channel, a.msg, { queue: this.queue, via: 'pull', leaseMs: req.leaseMs })
    return toDelivered(lease.deliveryId, this.queue, a.msg, req.base64)
  }

  /** Runs the waiting consumer at the size the waiting pulls ask for, or not at all. Serialised. */
  #fit(): void {
    if (this.#fitting) {
      this.#refit = true
      return
    }
    this.#fitting = (async () => {
      do {
        this.#refit = false
        await this.#fitOnce().catch((err: unknown) => this.log.debug({ err: (err as Error).message }, 'could not resize the pull consumer'))
      } while (this.#refit && !this.#closed)
    })().finally(() => (this.#fitting = undefined))
  }

  async #fitOnce(): Promise<void> {
    const consuming = this.#sub.status().state === 'consuming'
    const demand = Math.min(MAX_WAIT_PREFETCH, this.#waiters.reduce((n, w) => n + w.req.max, 0))
    if (demand === 0 || this.#closed) {
      if (consuming) await this.#sub.pause()
      // After the cancel: what arrived for nobody goes back to the queue and to its other consumers.
      if (this.#waiters.length === 0) this.#giveBack()
      return
    }
    if (consuming && demand <= this.#credit) return
    // basic.qos only applies to a new consumer: cancel and consume again with the larger prefetch.
    if (consuming) await this.#sub.pause()
    if (this.#closed || this.#waiters.length === 0) return this.#giveBack()
    this.#sub.prefetch = Math.min(MAX_WAIT_PREFETCH, this.#waiters.reduce((n, w) => n + w.req.max, 0))
    this.#credit = this.#sub.prefetch
    this.#sub.resume()
  }

  #onMessage(msg: ConsumeMessage, channel: ConsumerChannel): void {
    this.#credit = Math.max(0, this.#credit - 1)
    this.#arrived.push({ msg, channel })
    // Hand out on the next turn, so a burst read from one socket chunk goes out as one batch.
    if (!this.#flushScheduled) {
      this.#flushScheduled = true
      setImmediate(() => {
        this.#flushScheduled = false
        this.#flush()
      })
    }
  }

  #flush(): void {
    while (this.#waiters.length > 0 && this.#arrived.length > 0) {
      const w = this.#waiters[0] as Waiter
      const out: DeliveredMessage[] = []
      while (out.length < w.req.max && this.#arrived.length > 0) {
        const a = this.#arrived.shift() as Arrived
        if (a.channel.open) out.push(this.#hand(a, w.req))
      }
      if (out.length > 0) this.#dropWaiter(w, out)
    }
    // Surplus (a waiter left meanwhile), or fewer waiters: shrink or stop the consumer.
    this.#fit()
  }

  #dropWaiter(w: Waiter, messages: DeliveredMessage[] | SidecarError): void {
    const i = this.#waiters.indexOf(w)
    if (i < 0) return
    this.#waiters.splice(i, 1)
    clearTimeout(w.timer)
    w.req.signal.removeEventListener('abort', w.onAbort)
    this.#lastPullAt = Date.now()
    if (messages instanceof SidecarError) w.reject(messages)
    else w.resolve(messages)
    if (this.#waiters.length === 0) this.#fit()
  }

  #onChannelClosed(channel: ConsumerChannel): void {
    // The broker requeues these itself; handing them out now would create leases that can never be acked.
    for (let i = this.#arrived.length - 1; i >= 0; i--) if (this.#arrived[i]?.channel === channel) this.#arrived.splice(i, 1)
    this.#credit = 0
    this.leases.dropChannel(channel)
  }

  #onEvent(e: SubscriptionEvent): void {
    if (e.type === 'not-found') {
      // Found out late (e.g. the first pull came during a reconnect): every waiting pull answers 404, and the next asks again.
      this.log.info({ queue: this.queue }, 'pulled queue does not exist')
      this.#forget(e.message)
    } else if (e.type === 'cancelled') this.log.warn({ queue: this.queue }, 'pull consumer cancelled by the broker')
  }

  /** The queue is missing: answer the waiting pulls 404, close, and let the registry forget us. */
  #forget(message: string): void {
    if (this.#closed) return
    for (const w of [...this.#waiters]) this.#dropWaiter(w, new SidecarError('QUEUE_NOT_FOUND', message))
    void this.close()
    this.onIdle(this)
  }

  #giveBack(): void {
    for (const a of this.#arrived.splice(0)) a.channel.nack(a.msg, true)
  }

  async #checkIdle(): Promise<void> {
    if (this.#closed || this.#waiters.length > 0 || Date.now() - this.#lastPullAt < this.idleMs) return
    const ch = this.#sub.channel
    if (!ch || this.leases.onChannel(ch).length === 0) {
      await this.close()
      this.onIdle(this)
    }
  }
}
