/**
 * One WebSocket client's subscriptions: subscribe {queue, prefetch?, leaseMs?,
 * encoding?}, unsubscribe {queue}, and the leases handed out on them.
 *
 * Each subscription is its own channel on the consume connection with an
 * awaited basic.qos(prefetch): the prefetch is the client's credit, so a slow
 * reader holds at most `prefetch` messages per subscription, in the sidecar
 * or in flight. An unsubscribed channel stays until its leases settle or
 * expire; a closed socket requeues every unacked delivery.
 */
import { MAX_PREFETCH } from '../../consume/consumers.js'
import { messageFrame } from '../../consume/delivery.js'
import type { Lease, LeaseEnd } from '../../consume/leases.js'
import type { Subscription, SubscriptionEvent } from '../../consume/subscription.js'
import { TIMED_OUT, withDeadline } from '../../deadline.js'
import { SidecarError } from '../../errors.js'
import { WS_CLOSE_NOT_READING, type PeerIO } from './context.js'
import { idOf, intIn, type Frame } from './frames.js'

/** Subscriptions one socket may hold: with the prefetch cap, this bounds the message frames it can owe. */
export const MAX_SUBSCRIPTIONS_PER_SOCKET = 100

interface WsSubscription {
  sub: Subscription
  leaseMs: number
  base64: boolean
  /** Delivery ids handed to this client on this subscription and not yet settled. */
  leases: Set<string>
  unsubscribing: boolean
  /** The subscribe op was answered; events before that are part of its answer. */
  answered: boolean
}

export class ClientSubscriptions {
  readonly #subs = new Map<string, WsSubscription>()
  /** Unsubscribed, but leases still outstanding: the channel stays until they settle (or the socket closes). */
  readonly #leaving = new Set<WsSubscription>()

  constructor(private readonly io: PeerIO) {}

  async subscribe(f: Frame): Promise<void> {
    const { consumers } = this.io.deps
    const queue = consumers.checkQueue(f['queue'])
    const prefetch = intIn('prefetch', f['prefetch'], 1, MAX_PREFETCH) ?? consumers.config.defaultPrefetch
    const leaseMs = consumers.leaseMs(f['leaseMs'])
    if (f['encoding'] !== undefined && f['encoding'] !== 'base64' && f['encoding'] !== 'auto') throw new SidecarError('INVALID_REQUEST', 'encoding must be "auto" or "base64"')
    if (this.#subs.has(queue)) throw new SidecarError('INVALID_REQUEST', `already subscribed to "${queue}"`)
    if (this.#subs.size + this.#leaving.size >= MAX_SUBSCRIPTIONS_PER_SOCKET) throw new SidecarError('INVALID_REQUEST', `at most ${MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket`)
    const s: WsSubscription = { sub: undefined as unknown as Subscription, leaseMs, base64: f['encoding'] === 'base64', leases: new Set(), unsubscribing: false, answered: false }
    s.sub = consumers.subscribe(queue, prefetch, {
      onMessage: (msg, channel) => {
        if (this.io.closed || s.unsubscribing) return void channel.nack(msg, true)
        const lease = consumers.leases.add(channel, msg, { queue, via: 'ws', leaseMs: s.leaseMs, onEnd: (l, how) => this.#onLeaseEnd(s, l, how) })
        s.leases.add(lease.deliveryId)
        this.io.sendMessage(lease.deliveryId, messageFrame(lease.deliveryId, queue, msg, s.base64))
      },
      onChannelClosed: (channel) => {
        const dropped = consumers.leases.dropChannel(channel)
        if (dropped.length > 0) this.io.send({ op: 'stale', queue, reason: 'channel-closed', deliveryIds: dropped.map((l) => l.deliveryId) })
      },
      onEvent: (e) => this.#onSubEvent(s, e),
    })
    this.#subs.set(queue, s)
    // Answered by the request deadline even when the broker is silent (a black-holed link holds basic.consume for ever).
    const deadlineMs = this.io.deps.defaults.timeoutMs
    const first = await withDeadline(s.sub.start(), deadlineMs)
    if (first === TIMED_OUT) {
      if (this.#subs.get(queue) === s) this.#subs.delete(queue)
      // Not awaited: closing the channel waits on the same silent broker.
      void consumers.unsubscribe(s.sub)
      if (this.io.closed) return
      throw new SidecarError('UPSTREAM_TIMEOUT', `The broker did not confirm the subscription to "${queue}" within ${deadlineMs} ms; not subscribed, subscribe again`)
    }
    if (this.io.closed) {
      // The client went away mid-subscribe: its channel was closed under the subscribe. Expected, not an error.
      this.io.log.debug({ queue, outcome: first.type }, 'websocket client left while subscribing')
      return
    }
    if (first.type === 'not-found' || first.type === 'failed') {
      this.#subs.delete(queue)
      await consumers.unsubscribe(s.sub)
      // 403 ACCESS_REFUSED and 405 RESOURCE_LOCKED (another connection's exclusive queue) are the broker saying no.
      const refused = first.type === 'failed' && (first.code === 403 || first.code === 405)
      throw new SidecarError(first.type === 'not-found' ? 'QUEUE_NOT_FOUND' : refused ? 'FORBIDDEN' : 'INTERNAL', first.message)
    }
    s.answered = true
    this.io.send({ op: 'subscribed', queue, prefetch, leaseMs, active: first.type === 'active', ...idOf(f) })
  }

  async unsubscribe(f: Frame): Promise<void> {
    const { consumers } = this.io.deps
    const queue = consumers.checkQueue(f['queue'])
    const s = this.#subs.get(queue)
    if (!s) throw new SidecarError('INVALID_REQUEST', `not subscribed to "${queue}"`)
    this.#subs.delete(queue)
    // Still tracked, so a socket closed before the leases settle requeues them and closes the channel.
    this.#leaving.add(s)
    s.unsubscribing = true
    // Stop deliveries now; the channel stays until the leases on it are settled or expire.
    await s.sub.pause()
    if (s.leases.size === 0) {
      this.#leaving.delete(s)
      await consumers.unsubscribe(s.sub)
    }
    this.io.send({ op: 'unsubscribed', queue, outstanding: s.leases.size, ...idOf(f) })
  }

  /** Shutdown step 1: no more deliveries; leases stay ackable. */
  async pauseAll(): Promise<void> {
    await Promise.all([...this.#subs.values()].map((s) => s.sub.pause()))
  }

  /** The socket closed: requeue every unacked delivery and close every channel. */
  async closeAll(): Promise<void> {
    const subs = [...this.#subs.values(), ...this.#leaving]
    this.#subs.clear()
    this.#leaving.clear()
    await Promise.all(subs.map((s) => this.#teardown(s)))
  }

  #onLeaseEnd(s: WsSubscription, lease: Lease, how: LeaseEnd): void {
    s.leases.delete(lease.deliveryId)
    const unwritten = this.io.unwritten(lease.deliveryId)
    if (how === 'expired' && unwritten && !this.io.closed) {
      // Its redelivery would pile up behind it without bound: cut the client instead (its leases are requeued).
      this.io.log.warn({ queue: lease.queue }, 'websocket client is not reading: a lease expired before its message was even written; closing it')
      this.io.cut(WS_CLOSE_NOT_READING, 'not reading: a lease expired before its message could be written')
    }
    if (how === 'expired') this.io.send({ op: 'stale', queue: lease.queue, reason: 'lease-expired', deliveryIds: [lease.deliveryId] })
    if (s.unsubscribing && s.leases.size === 0 && !this.io.closed) {
      this.#leaving.delete(s)
      void this.io.deps.consumers.unsubscribe(s.sub)
    }
  }

  #onSubEvent(s: WsSubscription, e: SubscriptionEvent): void {
    const queue = s.sub.queue
    if (!s.answered) return
    const up = this.io.upstreams()
    if (e.type === 'cancelled') this.io.send({ op: 'status', ...up, queue, subscription: 'cancelled', reason: 'the broker cancelled the consumer (queue deleted?); re-subscribing' })
    else if (e.type === 'active') this.io.send({ op: 'status', ...up, queue, subscription: 'active' })
    else if (e.type === 'not-found') this.io.send({ op: 'error', queue, code: 'QUEUE_NOT_FOUND', message: `${e.message}; retrying` })
  }

  async #teardown(s: WsSubscription): Promise<void> {
    s.unsubscribing = true
    await s.sub.pause()
    // Requeue explicitly (nack requeue=true) before the channel goes, so nothing waits for the close.
    for (const id of [...s.leases]) this.io.deps.consumers.leases.release(id)
    await this.io.deps.consumers.unsubscribe(s.sub)
  }
}
