/**
 * Delivery leases: our own map deliveryId -> (raw channel, message), because
 * a delivery tag only means something on the channel it arrived on
 * (AMQP-LIBRARY-NOTES "Consuming and late acks"). An ack is sent on the
 * lease's own channel or not at all: when that channel closes, its leases
 * become stale, and a late ack answers "stale" instead of reaching a new
 * channel where the same tag names a different message.
 *
 *   handed out --ack/nack--> settled (acked | nacked)
 *       |------extend---------> handed out, expiry moved (never past deliveredAt + cap)
 *       |------lease time over--> requeued (nack requeue=true), then stale
 *       '------channel closed---> stale (the broker requeues it itself)
 */
import { randomBytes } from 'node:crypto'
import type { Channel, ConsumeMessage } from 'amqplib'
import type { Metrics } from '../observe/metrics.js'
import { Expiries, type ExpiryEntry } from '../expiry.js'

/** How an app learns what happened to its ack or nack. */
export type SettleResult = 'acked' | 'nacked' | 'stale' | 'unknown'

/** How an app learns what happened to its lease extension. */
export type ExtendResult = { result: 'extended'; expiresAt: string } | { result: 'stale' | 'unknown' }

/** Why a lease ended, as told to its owner. */
export type LeaseEnd = 'acked' | 'nacked' | 'expired' | 'stale' | 'released'

/** Which way a delivery went out (the deliveries_total{via} label). */
export type Via = 'ws' | 'pull' | 'push'

/** How long ids of stale leases are remembered, so a late ack answers "stale" rather than "unknown". */
const STALE_MEMORY_MS = 30 * 60_000
/** Bound on remembered stale ids (oldest forgotten first). */
const STALE_MEMORY_MAX = 100_000

let channelSeq = 0

/**
 * One raw amqplib channel that consumes. `open` turns false exactly once, on
 * the channel's 'close' event; nothing is ever sent on it afterwards.
 */
export class ConsumerChannel {
  readonly id = ++channelSeq
  open = true

  constructor(readonly channel: Channel) {}

  /** Sends basic.ack; false if the channel is gone (the message is the broker's again). */
  ack(msg: ConsumeMessage): boolean {
    if (!this.open) return false
    try {
      this.channel.ack(msg)
      return true
    } catch {
      // amqplib throws once the channel is closing or closed.
      return false
    }
  }

  /** Sends basic.nack (never basic.reject, so multiple=false and requeue are explicit). */
  nack(msg: ConsumeMessage, requeue: boolean): boolean {
    if (!this.open) return false
    try {
      this.channel.nack(msg, false, requeue)
      return true
    } catch {
      return false
    }
  }
}

export interface Lease {
  readonly deliveryId: string
  readonly queue: string
  readonly via: Via
  readonly channel: ConsumerChannel
  readonly msg: ConsumeMessage
  /** When it was handed out: no lease, however extended, outlives deliveredAt + consume.maxLeaseMs. */
  readonly deliveredAt: number
  /** Called once when the lease ends, however it ends. */
  readonly onEnd: ((lease: Lease, how: LeaseEnd) => void) | undefined
  expiresAt: number | null
  /** Its place in the expiry list of its lease length (expiry.ts); undefined: no expiry. */
  expiry: ExpiryEntry<Lease> | undefined
}

export interface LeaseOptions {
  queue: string
  via: Via
  /** null: no expiry (push deliveries, whose attempts are bounded by their own retry policy). */
  leaseMs: number | null
  onEnd?: (lease: Lease, how: LeaseEnd) => void
}

export class LeaseTable {
  readonly #live = new Map<string, Lease>()
  readonly #byChannel = new Map<ConsumerChannel, Set<Lease>>()
  /** deliveryId -> when it went stale; insertion order is age order. */
  readonly #stale = new Map<string, number>()
  /** Unguessable per process, so ids from an earlier process answer "unknown", never someone else's message. */
  readonly #prefix = randomBytes(6).toString('base64url')
  #seq = 0
  /** One timer per lease length, not one per lease. */
  readonly #expiries = new Expiries<Lease>((lease) => this.#expire(lease))

  constructor(private readonly metrics: Metrics) {}

  get size(): number {
    return this.#live.size
  }

  /** Hands out a delivery: it now belongs to an app until settled, expired or its channel closes. */
  add(channel: ConsumerChannel, msg: ConsumeMessage, opts: LeaseOptions): Lease {
    const lease: Lease = {
      deliveryId: `${this.#prefix}.${channel.id}.${++this.#seq}`,
      queue: opts.queue,
      via: opts.via,
      channel,
      msg,
      deliveredAt: Date.now(),
      onEnd: opts.onEnd,
      expiresAt: null,
      expiry: undefined,
    }
    this.#live.set(lease.deliveryId, lease)
    let set = this.#byChannel.get(channel)
    if (!set) this.#byChannel.set(channel, (set = new Set()))
    set.add(lease)
    if (opts.leaseMs !== null) this.#arm(lease, opts.leaseMs)
    this.metrics.leases.set(this.#live.size)
    this.metrics.deliveries.inc({ via: opts.via })
    return lease
  }

  get(deliveryId: string): Lease | undefined {
    return this.#live.get(deliveryId)
  }

  ack(deliveryId: string): SettleResult {
    const result = this.#settle(deliveryId, (l) => l.channel.ack(l.msg), 'acked')
    this.metrics.acks.inc({ result: result === 'acked' ? 'acked' : result })
    return result
  }

  nack(deliveryId: string, requeue: boolean): SettleResult {
    const result = this.#settle(deliveryId, (l) => l.channel.nack(l.msg, requeue), 'nacked')
    this.metrics.nacks.inc({ result })
    return result
  }

  /**
   * Moves a live lease's expiry to leaseMs from now (the caller checked the cap).
   * An expired lease was requeued already: it answers stale, like a late ack.
   */
  extend(deliveryId: string, leaseMs: number): ExtendResult {
    const result = this.#extend(deliveryId, leaseMs)
    this.metrics.leaseExtensions.inc({ result: result.result })
    return result
  }

  #extend(deliveryId: string, leaseMs: number): ExtendResult {
    const lease = this.#live.get(deliveryId)
    if (!lease) return { result: this.#stale.has(deliveryId) ? 'stale' : 'unknown' }
    if (!lease.channel.open) {
      this.#end(lease, 'stale')
      return { result: 'stale' }
    }
    this.#arm(lease, leaseMs)
    return { result: 'extended', expiresAt: new Date(lease.expiresAt as number).toISOString() }
  }

  /** The sidecar gives a delivery back (socket closed, shutdown): nack requeue=true, never dead-letter. */
  release(deliveryId: string): void {
    const lease = this.#live.get(deliveryId)
    if (!lease) return
    lease.channel.nack(lease.msg, true)
    this.#end(lease, 'released')
  }

  /** Every lease on a channel that just closed becomes stale; the broker requeues those messages. */
  dropChannel(channel: ConsumerChannel): Lease[] {
    const set = this.#byChannel.get(channel)
    this.#byChannel.delete(channel)
    if (!set) return []
    const dropped = [...set]
    for (const lease of dropped) this.#end(lease, 'stale')
    return dropped
  }

  /** Leases on one channel (to release them before the channel is closed on purpose). */
  onChannel(channel: ConsumerChannel): Lease[] {
    return [...(this.#byChannel.get(channel) ?? [])]
  }

  leases(): IterableIterator<Lease> {
    return this.#live.values()
  }

  /** Stops every expiry timer (close). */
  clearTimers(): void {
    this.#expiries.clear()
  }

  /** Expiry timers armed: one per lease length in use (a test checks it is not one per lease). */
  get expiryTimers(): number {
    return this.#expiries.timers
  }

  #settle(deliveryId: string, send: (l: Lease) => boolean, how: 'acked' | 'nacked'): SettleResult {
    const lease = this.#live.get(deliveryId)
    if (!lease) return this.#stale.has(deliveryId) ? 'stale' : 'unknown'
    if (!send(lease)) {
      // The channel is closing under us: its 'close' event will follow.
      this.#end(lease, 'stale')
      return 'stale'
    }
    this.#end(lease, how)
    return how
  }

  /** Starts (or, for extend, moves) the lease's expiry: leaseMs from now. */
  #arm(lease: Lease, leaseMs: number): void {
    if (lease.expiry) this.#expiries.remove(lease.expiry)
    lease.expiresAt = Date.now() + leaseMs
    lease.expiry = this.#expiries.add(lease, leaseMs)
  }

  #expire(lease: Lease): void {
    lease.expiry = undefined
    if (this.#live.get(lease.deliveryId) !== lease) return
    // Requeue on its own channel; a later ack for it answers stale.
    lease.channel.nack(lease.msg, true)
    this.#end(lease, 'expired')
  }

  #end(lease: Lease, how: LeaseEnd): void {
    if (this.#live.get(lease.deliveryId) !== lease) return
    this.#live.delete(lease.deliveryId)
    this.#byChannel.get(lease.channel)?.delete(lease)
    if (lease.expiry) this.#expiries.remove(lease.expiry)
    lease.expiry = undefined
    if (how === 'stale' || how === 'expired' || how === 'released') this.#remember(lease.deliveryId)
    this.metrics.leases.set(this.#live.size)
    try {
      lease.onEnd?.(lease, how)
    } catch {
      // An owner's bookkeeping must never break settlement.
    }
  }

  #remember(deliveryId: string): void {
    const now = Date.now()
    this.#stale.set(deliveryId, now)
    for (const [id, at] of this.#stale) {
      if (this.#stale.size <= STALE_MEMORY_MAX && now - at < STALE_MEMORY_MS) break
      this.#stale.delete(id)
    }
  }
}
