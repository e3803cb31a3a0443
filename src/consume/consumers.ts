/**
 * Every consumer the sidecar runs, on the consume connection: WebSocket
 * subscriptions, pull queues and push workers, plus the one lease table that
 * all acks go through. Owns their lifecycle:
 *
 *   running --stopConsuming()--> draining --close()--> closed
 *
 * stopConsuming() (shutdown step 1) cancels every consumer and requeues
 * prefetched messages nobody was given; acks keep working while the app
 * drains its leases; close() requeues what is still leased and closes the
 * channels. Nothing is ever dead-lettered by shutdown.
 */
import type { SidecarConfig } from '../config/index.js'
import { SidecarError } from '../errors.js'
import { assertQueueAllowed } from './allow.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import type { SecretRegistry } from '../observe/redact.js'
import type { Upstream, UpstreamState } from '../upstream/connection.js'
import { LeaseTable, type ExtendResult, type SettleResult } from './leases.js'
import { PullQueue, type PullRequest } from './pull.js'
import { PushWorker } from './push.js'
import type { DeliveredMessage } from './delivery.js'
import { Subscription, type SubscriptionSink } from './subscription.js'

export type ConsumersState = 'running' | 'draining' | 'closed'

/** Something told about upstream state changes (a WebSocket client). */
export interface StatusListener {
  onUpstreamState(state: UpstreamState): void
  /** Shutdown: the listener releases its leases and goes away. */
  close(): Promise<void>
  /** Shutdown step 1: cancel its consumers, keep its leases. */
  stopConsuming(): Promise<void>
}

const QUEUE_NAME_RE = /^[A-Za-z0-9\-_.:]{1,255}$/
/** Upper bound on any prefetch an app asks for. */
export const MAX_PREFETCH = 1000
/** Shortest lease an app may ask for: below it a lease expires before the app can answer. */
export const MIN_LEASE_MS = 100

export interface ConsumersDeps {
  config: SidecarConfig
  upstream: Upstream
  log: Logger
  metrics: Metrics
  /** Push tokens are registered here, so no log line can carry one. */
  secrets: SecretRegistry
  /** Told how many subscriptions exist after each change: an on-demand connection opens and closes with them. */
  onUsers?: (subscriptions: number) => void
}

export type SettleAction = { kind: 'ack' } | { kind: 'nack'; requeue: boolean }

export class Consumers {
  readonly leases: LeaseTable
  readonly upstream: Upstream
  #state: ConsumersState = 'running'
  readonly #subscriptions = new Set<Subscription>()
  readonly #pull = new Map<string, PullQueue>()
  readonly #push: PushWorker[] = []
  readonly #listeners = new Set<StatusListener>()
  readonly #log: Logger

  constructor(private readonly deps: ConsumersDeps) {
    this.upstream = deps.upstream
    this.leases = new LeaseTable(deps.metrics)
    this.#log = deps.log.child({ part: 'consume' })
    deps.upstream.on('ready', (conn) => {
      for (const sub of this.#subscriptions) void sub.attach(conn)
    })
    deps.upstream.on('state', (s) => {
      for (const l of this.#listeners) l.onUpstreamState(s)
    })
  }

  get state(): ConsumersState {
    return this.#state
  }

  get config(): SidecarConfig['consume'] {
    return this.deps.config.consume
  }

  /** Push subscriptions from config start with the sidecar. */
  start(): void {
    // A push subscription to a queue outside the allow-list is a config error: refuse to start.
    for (const p of this.deps.config.consume.push) assertQueueAllowed(p.queue, this.deps.config.consume.allowedQueues)
    for (const p of this.deps.config.consume.push) {
      const worker = new PushWorker(p, this, this.deps.config, this.deps.log, this.deps.metrics, this.deps.secrets)
      this.#push.push(worker)
      worker.start()
    }
  }

  /** Throws INVALID_REQUEST / QUEUE_NOT_ALLOWED / SHUTTING_DOWN; answers the queue name. */
  checkQueue(queue: unknown): string {
    if (typeof queue !== 'string' || !QUEUE_NAME_RE.test(queue)) {
      throw new SidecarError('INVALID_REQUEST', 'queue must be 1-255 characters of letters, digits, "-", "_", ".", ":"')
    }
    assertQueueAllowed(queue, this.deps.config.consume.allowedQueues)
    return queue
  }

  /** A new subscription on the consume connection (not started). Refused once draining. */
  subscribe(queue: string, prefetch: number, sink: SubscriptionSink): Subscription {
    if (this.#state !== 'running') throw new SidecarError('SHUTTING_DOWN', 'The sidecar is shutting down: no new subscriptions')
    const sub = new Subscription({ queue, prefetch, upstream: this.upstream, topology: this.deps.config.topology, log: this.#log, sink })
    this.#subscriptions.add(sub)
    this.#usersChanged()
    return sub
  }

  /** Stops a subscription and forgets it. */
  async unsubscribe(sub: Subscription): Promise<void> {
    this.#subscriptions.delete(sub)
    this.#usersChanged()
    await sub.stop()
  }

  #usersChanged(): void {
    this.deps.onUsers?.(this.#subscriptions.size)
  }

  async pull(queue: string, req: PullRequest): Promise<DeliveredMessage[]> {
    if (this.#state !== 'running') throw new SidecarError('SHUTTING_DOWN', 'The sidecar is shutting down: no new pulls')
    let pq = this.#pull.get(queue)
    if (!pq || pq.closed) {
      const created: PullQueue = new PullQueue(
        { queue, upstream: this.upstream, topology: this.deps.config.topology, log: this.#log },
        this.leases,
        this.deps.config.consume.pullIdleMs,
        this.#log,
        (q) => {
          if (this.#pull.get(queue) === q) this.#pull.delete(queue)
          this.#subscriptions.delete(q.subscription)
          this.#usersChanged()
        },
      )
      pq = created
      this.#pull.set(queue, created)
      this.#subscriptions.add(created.subscription)
      this.#usersChanged()
    }
    return pq.pull(req)
  }

  /** Settles a list of deliveries (HTTP ack/nack, WebSocket ack/nack). Push deliveries are the sidecar's own. */
  settle(deliveryIds: readonly string[], action: SettleAction): { deliveryId: string; result: SettleResult }[] {
    return deliveryIds.map((deliveryId) => {
      const lease = this.leases.get(deliveryId)
      if (lease?.via === 'push') return { deliveryId, result: 'unknown' as const }
      const result = action.kind === 'ack' ? this.leases.ack(deliveryId) : this.leases.nack(deliveryId, action.requeue)
      return { deliveryId, result }
    })
  }

  /**
   * Checks a lease length an app asked for (pull, subscribe, extend) against
   * consume.maxLeaseMs; throws INVALID_REQUEST naming the cap. undefined: consume.leaseMs.
   */
  leaseMs(v: unknown, name = 'leaseMs'): number {
    if (v === undefined) return this.deps.config.consume.leaseMs
    const cap = this.deps.config.consume.maxLeaseMs
    if (typeof v !== 'number' || !Number.isInteger(v) || v < MIN_LEASE_MS) throw new SidecarError('INVALID_REQUEST', `${name} must be an integer from ${MIN_LEASE_MS} to ${cap}`)
    if (v > cap) throw new SidecarError('INVALID_REQUEST', `${name} ${v} is over consume.maxLeaseMs (${cap}): no lease may outlive it, so RabbitMQ's consumer_timeout never closes the channel under an app`)
    return v
  }

  /**
   * Extends leases (POST /v1/leases/extend, WebSocket extend). All or nothing:
   * if one live lease would outlive deliveredAt + consume.maxLeaseMs, none is
   * extended and the answer is 400 naming the cap and how much is left.
   */
  extend(deliveryIds: readonly string[], leaseMs: number): ({ deliveryId: string } & ExtendResult)[] {
    const cap = this.deps.config.consume.maxLeaseMs
    const now = Date.now()
    for (const id of deliveryIds) {
      const lease = this.leases.get(id)
      if (!lease || lease.via === 'push') continue
      const left = lease.deliveredAt + cap - now
      if (leaseMs > left) {
        throw new SidecarError(
          'INVALID_REQUEST',
          `Delivery "${id}" was handed out ${now - lease.deliveredAt} ms ago; no lease may outlive consume.maxLeaseMs (${cap} ms) from its delivery, so it can be extended by at most ${Math.max(0, left)} ms. Ack it, or nack it to requeue.`,
        )
      }
    }
    return deliveryIds.map((deliveryId) => {
      // Push deliveries are the sidecar's own: apps cannot extend them.
      if (this.leases.get(deliveryId)?.via === 'push') return { deliveryId, result: 'unknown' as const }
      return { deliveryId, ...this.leases.extend(deliveryId, leaseMs) }
    })
  }

  addListener(l: StatusListener): void {
    this.#listeners.add(l)
  }

  removeListener(l: StatusListener): void {
    this.#listeners.delete(l)
  }

  status() {
    return {
      state: this.#state,
      leases: this.leases.size,
      websocketClients: this.#listeners.size,
      subscriptions: this.#subscriptions.size,
      pull: [...this.#pull.values()].map((q) => q.status()),
      push: this.#push.map((w) => w.status()),
    }
  }

  /** Shutdown step 1: cancel every consumer, requeue what was prefetched but never handed out. */
  async stopConsuming(): Promise<void> {
    if (this.#state !== 'running') return
    this.#state = 'draining'
    await Promise.all([
      ...[...this.#pull.values()].map((q) => q.stopConsuming()),
      ...this.#push.map((w) => w.stopConsuming()),
      ...[...this.#listeners].map((l) => l.stopConsuming()),
    ])
    this.#log.info({ leases: this.leases.size }, 'consumers cancelled; outstanding leases can still be acked during the drain')
  }

  /** Final: requeue every lease still held (nack requeue=true), close every consumer channel. Idempotent. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return
    await this.stopConsuming()
    this.#state = 'closed'
    const held = this.leases.size
    await Promise.all([...this.#push].map((w) => w.close()))
    await Promise.all([...this.#listeners].map((l) => l.close()))
    for (const lease of [...this.leases.leases()]) this.leases.release(lease.deliveryId)
    this.leases.clearTimers()
    await Promise.all([...this.#pull.values()].map((q) => q.close()))
    await Promise.all([...this.#subscriptions].map((s) => s.stop()))
    this.#subscriptions.clear()
    this.#pull.clear()
    if (held > 0) this.#log.warn({ requeued: held }, 'deliveries still leased at shutdown were requeued')
  }
}
