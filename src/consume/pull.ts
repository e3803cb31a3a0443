/**
 * HTTP long-poll pull for one queue. A consumer with the default prefetch
 * fills a small local buffer; each pull takes what is there, or waits up to
 * waitMs for the next arrival. Messages become leases only when handed out.
 *
 * Prefetched messages nobody pulls for a while (consume.pullIdleMs) are
 * requeued, and the consumer is cancelled first so they go to other
 * consumers of the queue instead of straight back to us. The next pull
 * resumes it. With nothing leased either, the channel is closed too.
 */
import type { ConsumeMessage } from 'amqplib'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
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

interface Prefetched {
  msg: ConsumeMessage
  channel: ConsumerChannel
}

interface Waiter {
  req: PullRequest
  resolve: (messages: DeliveredMessage[]) => void
  timer: NodeJS.Timeout
  onAbort: () => void
}

export class PullQueue {
  readonly queue: string
  readonly #sub: Subscription
  readonly #ready: Prefetched[] = []
  readonly #waiters: Waiter[] = []
  #lastPullAt = Date.now()
  #idleTimer: NodeJS.Timeout
  #flushScheduled = false
  #closed = false

  constructor(
    opts: Omit<SubscriptionOptions, 'sink'>,
    private readonly leases: LeaseTable,
    private readonly idleMs: number,
    private readonly log: Logger,
    /** Called when the queue has gone quiet and released everything: the registry forgets it. */
    private readonly onIdle: (q: PullQueue) => void,
  ) {
    this.queue = opts.queue
    this.#sub = new Subscription({
      ...opts,
      sink: {
        onMessage: (msg, channel) => this.#onMessage(msg, channel),
        onChannelClosed: (channel) => this.#onChannelClosed(channel),
        onEvent: (e) => this.#onEvent(e),
      },
    })
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
    return { ...this.#sub.status(), prefetched: this.#ready.length, waiting: this.#waiters.length }
  }

  async pull(req: PullRequest): Promise<DeliveredMessage[]> {
    if (this.#closed) throw new SidecarError('SHUTTING_DOWN')
    this.#lastPullAt = Date.now()
    const s = this.#sub.status().state
    if (s === 'idle') {
      const first = await this.#sub.start()
      if (first.type === 'not-found') {
        // Forgotten by the registry too, or every pull of a missing queue leaks a subscription.
        void this.close()
        this.onIdle(this)
        throw new SidecarError('QUEUE_NOT_FOUND', first.message)
      }
    } else if (s === 'paused') {
      this.#sub.resume()
    }
    // A client that left while the consumer was starting must not be leased anything.
    if (req.signal.aborted) return []
    if (this.#ready.length > 0) return this.#take(req)
    if (req.waitMs === 0) return []
    return new Promise((resolve) => {
      const waiter: Waiter = {
        req,
        resolve,
        timer: setTimeout(() => this.#dropWaiter(waiter, []), req.waitMs),
        onAbort: () => this.#dropWaiter(waiter, []),
      }
      req.signal.addEventListener('abort', waiter.onAbort, { once: true })
      this.#waiters.push(waiter)
    })
  }

  /** Shutdown step 1: cancel the consumer and requeue what nobody took; leases stay ackable. */
  async stopConsuming(): Promise<void> {
    this.#closed = true
    for (const w of [...this.#waiters]) this.#dropWaiter(w, [])
    await this.#sub.pause()
    this.#requeueReady()
  }

  /** Final: closes the channel (the broker requeues anything still unacked). */
  close(): Promise<void> {
    this.#closed = true
    clearInterval(this.#idleTimer)
    for (const w of [...this.#waiters]) this.#dropWaiter(w, [])
    this.#requeueReady()
    return this.#sub.stop()
  }

  #take(req: PullRequest): DeliveredMessage[] {
    const out: DeliveredMessage[] = []
    while (out.length < req.max && this.#ready.length > 0) {
      const p = this.#ready.shift() as Prefetched
      if (!p.channel.open) continue
      const lease = this.leases.add(p.channel, p.msg, { queue: this.queue, via: 'pull', leaseMs: req.leaseMs })
      out.push(toDelivered(lease.deliveryId, this.queue, p.msg, req.base64))
    }
    return out
  }

  #onMessage(msg: ConsumeMessage, channel: ConsumerChannel): void {
    if (this.#closed || this.#sub.status().state !== 'consuming') {
      // Arrived while the consumer was being cancelled: give it straight back.
      channel.nack(msg, true)
      return
    }
    this.#ready.push({ msg, channel })
    // Flush on the next turn, so a burst read from one socket chunk goes out as one batch.
    if (!this.#flushScheduled) {
      this.#flushScheduled = true
      setImmediate(() => {
        this.#flushScheduled = false
        this.#flush()
      })
    }
  }

  #flush(): void {
    while (this.#waiters.length > 0 && this.#ready.length > 0) {
      const w = this.#waiters[0] as Waiter
      const got = this.#take(w.req)
      if (got.length > 0) this.#dropWaiter(w, got)
    }
  }

  #dropWaiter(w: Waiter, messages: DeliveredMessage[]): void {
    const i = this.#waiters.indexOf(w)
    if (i < 0) return
    this.#waiters.splice(i, 1)
    clearTimeout(w.timer)
    w.req.signal.removeEventListener('abort', w.onAbort)
    this.#lastPullAt = Date.now()
    w.resolve(messages)
  }

  #onChannelClosed(channel: ConsumerChannel): void {
    // The broker requeues these itself; handing them out now would create leases that can never be acked.
    for (let i = this.#ready.length - 1; i >= 0; i--) if (this.#ready[i]?.channel === channel) this.#ready.splice(i, 1)
    this.leases.dropChannel(channel)
  }

  #onEvent(e: SubscriptionEvent): void {
    if (e.type === 'cancelled' || e.type === 'not-found') this.log.warn({ queue: this.queue, event: e.type }, 'pull consumer interrupted')
  }

  #requeueReady(): void {
    for (const p of this.#ready.splice(0)) p.channel.nack(p.msg, true)
  }

  async #checkIdle(): Promise<void> {
    if (this.#closed || this.#waiters.length > 0 || Date.now() - this.#lastPullAt < this.idleMs) return
    const s = this.#sub.status().state
    if (s === 'consuming') {
      await this.#sub.pause()
      const n = this.#ready.length
      this.#requeueReady()
      if (n > 0) this.log.info({ queue: this.queue, requeued: n }, 'nobody pulled for a while: requeued the prefetched messages')
    }
    const ch = this.#sub.channel
    const quiet = Date.now() - this.#lastPullAt >= this.idleMs
    if (quiet && this.#sub.status().state === 'paused' && (!ch || this.leases.onChannel(ch).length === 0) && this.#waiters.length === 0) {
      await this.close()
      this.onIdle(this)
    }
  }
}
