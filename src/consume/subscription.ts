/**
 * One queue consumer on the consume connection, on a raw amqplib channel of
 * its own (so a fault on one subscription, or on the publish side, never
 * kills another). What happens to each message is up to its owner (the
 * WebSocket client, the pull buffer, the push worker): the subscription only
 * keeps the consumer alive.
 *
 *   attach(conn): open channel -> await basic.qos(prefetch) -> basic.consume
 *   channel closed with the connection up  -> reopen with backoff
 *   connection lost                        -> the registry calls attach() on 'ready'
 *   broker-side cancel (queue deleted)     -> re-declare from topology, consume again
 *   queue missing and not in topology      -> retry with backoff, owner told
 */
import type { ChannelModel, ConsumeMessage } from 'amqplib'
import type { SidecarConfig } from '../config/index.js'
import type { Logger } from '../observe/logger.js'
import { Backoff } from '../upstream/backoff.js'
import { channelErrorCode } from '../upstream/classify.js'
import type { Upstream } from '../upstream/connection.js'
import { redeclareQueue } from '../upstream/topology.js'
import { ConsumerChannel } from './leases.js'

export type SubscriptionEvent =
  | { type: 'active'; prefetch: number }
  /** The broker cancelled the consumer (queue deleted); it is being restored. */
  | { type: 'cancelled' }
  | { type: 'not-found'; message: string }
  | { type: 'failed'; code: number | undefined; message: string }

export interface SubscriptionSink {
  /** A message arrived. Must not throw. */
  onMessage(msg: ConsumeMessage, channel: ConsumerChannel): void
  /** The channel closed: the broker requeues every unacked message that came on it. */
  onChannelClosed(channel: ConsumerChannel): void
  onEvent(event: SubscriptionEvent): void
}

export interface SubscriptionOptions {
  queue: string
  prefetch: number
  upstream: Upstream
  topology: SidecarConfig['topology']
  log: Logger
  sink: SubscriptionSink
}

type State = 'idle' | 'consuming' | 'paused' | 'stopped'

const RETRY_INITIAL_MS = 250
const RETRY_MAX_MS = 10_000
/** How long a subscription's first answer waits for a connection that is being opened. */
const FIRST_CONNECT_WAIT_MS = 5_000

export class Subscription {
  readonly queue: string
  /** The prefetch the next basic.consume gets (pull sizes it to what its requests ask for). */
  prefetch: number
  /** The prefetch last set on the current channel with basic.qos. */
  #appliedPrefetch: number | undefined
  #state: State = 'idle'
  #channel: ConsumerChannel | undefined
  #connection: ChannelModel | undefined
  #consumerTag: string | undefined
  #attaching: Promise<void> | undefined
  #retryTimer: NodeJS.Timeout | undefined
  readonly #backoff = new Backoff(RETRY_INITIAL_MS, RETRY_MAX_MS)
  readonly #log: Logger

  constructor(private readonly opts: SubscriptionOptions) {
    this.queue = opts.queue
    this.prefetch = opts.prefetch
    this.#log = opts.log.child({ queue: opts.queue })
  }

  get consuming(): boolean {
    return this.#consumerTag !== undefined
  }

  get channel(): ConsumerChannel | undefined {
    return this.#channel
  }

  status() {
    return { queue: this.queue, prefetch: this.prefetch, state: this.#state, consuming: this.consuming }
  }

  /**
   * Starts consuming if the consume connection is up; resolves with the first
   * outcome (so a subscribe or pull can answer QUEUE_NOT_FOUND at once).
   */
  async start(): Promise<SubscriptionEvent | { type: 'waiting' }> {
    if (this.#state === 'stopped') return { type: 'failed', code: undefined, message: 'stopped' }
    this.#state = 'consuming'
    const up = this.opts.upstream
    const conn = up.connection
    // A connection being opened for the first time (an on-demand consume connection, just asked for by
    // this subscription) is worth a short wait, so the answer can still be "active" or QUEUE_NOT_FOUND.
    if (!conn && up.state === 'connecting' && up.status().lastConnectError === null) return this.#firstOutcomeWithin(FIRST_CONNECT_WAIT_MS)
    if (!conn || up.state === 'reconnecting' || up.state === 'connecting') return { type: 'waiting' }
    return new Promise((resolve) => {
      const first = (e: SubscriptionEvent | { type: 'waiting' }) => resolve(e)
      this.#firstOutcome = first
      void this.attach(conn).then(() => {
        // Attached without a verdict (connection died, or a retry is pending).
        if (this.#firstOutcome === first) {
          this.#firstOutcome = undefined
          resolve({ type: 'waiting' })
        }
      })
    })
  }

  /** The registry attaches every subscription on 'ready'; the first event it emits answers this. */
  #firstOutcomeWithin(ms: number): Promise<SubscriptionEvent | { type: 'waiting' }> {
    return new Promise((resolve) => {
      const first = (e: SubscriptionEvent | { type: 'waiting' }) => {
        clearTimeout(timer)
        resolve(e)
      }
      const timer = setTimeout(() => {
        if (this.#firstOutcome === first) this.#firstOutcome = undefined
        resolve({ type: 'waiting' })
      }, ms)
      timer.unref()
      this.#firstOutcome = first
    })
  }

  #firstOutcome: ((e: SubscriptionEvent) => void) | undefined
  #consumeInFlight = false

  /** (Re)builds the channel and consumer on this connection; the registry calls it on every 'ready'. */
  attach(conn: ChannelModel): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'idle') return Promise.resolve()
    this.#attaching ??= this.#attach(conn).finally(() => {
      this.#attaching = undefined
    })
    return this.#attaching
  }

  /** From idle to paused: the channel is opened (on 'ready') but nothing consumes until resume(). */
  prepare(): void {
    if (this.#state === 'idle') this.#state = 'paused'
  }

  /**
   * basic.get on this subscription's channel, opening it if need be. undefined:
   * no channel now (connection down). Throws the broker's channel error (404:
   * no such queue; the channel is closed by it).
   */
  async get(): Promise<{ msg: ConsumeMessage; channel: ConsumerChannel } | false | undefined> {
    if (this.#state === 'stopped' || this.#state === 'idle') return undefined
    const conn = this.opts.upstream.connection
    const up = this.opts.upstream.state
    if (!conn || (up !== 'connected' && up !== 'blocked')) return undefined
    if (!this.#channel?.open || this.#connection !== conn) await this.attach(conn)
    const ref = this.#channel
    if (!ref?.open) return undefined
    const msg = await ref.channel.get(this.queue, { noAck: false })
    return msg === false ? false : { msg: msg as unknown as ConsumeMessage, channel: ref }
  }

  /** basic.cancel, keeping the channel so outstanding deliveries can still be acked. */
  async pause(): Promise<void> {
    if (this.#state !== 'consuming') return
    this.#state = 'paused'
    await this.#cancelConsumer()
  }

  /** Consume again after pause(). */
  resume(): void {
    if (this.#state !== 'paused') return
    this.#state = 'consuming'
    this.#ensure()
  }

  /** Closes the channel: the broker requeues whatever is still unacked on it. Idempotent. */
  async stop(): Promise<void> {
    if (this.#state === 'stopped') return
    const wasConsuming = this.#state === 'consuming'
    this.#state = 'stopped'
    this.#clearRetry()
    if (wasConsuming) await this.#cancelConsumer()
    const ch = this.#channel
    if (ch?.open) await ch.channel.close().catch(() => {})
  }

  async #attach(conn: ChannelModel): Promise<void> {
    if (this.opts.upstream.connection !== conn) return
    if (this.#channel?.open && this.#connection === conn) {
      this.#ensure()
      return
    }
    let ref: ConsumerChannel
    try {
      const ch = await conn.createChannel()
      ref = new ConsumerChannel(ch)
      ch.on('error', (err: unknown) => this.#log.warn({ err: (err as Error).message, code: channelErrorCode(err) }, 'the broker closed a consumer channel'))
      ch.on('close', () => this.#onClose(ref, conn))
      this.#channel = ref
      this.#connection = conn
      // Awaited: consume()'s own prefetch option is never awaited (AMQP-LIBRARY-NOTES).
      this.#appliedPrefetch = this.prefetch
      await ch.prefetch(this.prefetch)
    } catch (err) {
      // Usually the connection died meanwhile; 'ready' calls attach() again.
      this.#log.debug({ err: (err as Error).message }, 'could not open a consumer channel')
      return
    }
    if ((this.#state as State) === 'stopped') {
      await ref.channel.close().catch(() => {})
      return
    }
    if (this.#state === 'consuming') await this.#consume(ref, conn)
  }

  async #consume(ref: ConsumerChannel, conn: ChannelModel): Promise<void> {
    if (!ref.open || this.#consumerTag !== undefined || this.#consumeInFlight) return
    this.#consumeInFlight = true
    let cancelledForPause = false
    try {
      // basic.qos applies to consumers started after it: set it again if the prefetch changed since.
      if (this.#appliedPrefetch !== this.prefetch) {
        this.#appliedPrefetch = this.prefetch
        await ref.channel.prefetch(this.prefetch)
      }
      const { consumerTag } = await ref.channel.consume(this.queue, (msg) => this.#onMessage(ref, conn, msg), { noAck: false })
      if (!ref.open) return
      this.#consumerTag = consumerTag
      this.#backoff.reset()
      if ((this.#state as State) !== 'consuming' || this.#appliedPrefetch !== this.prefetch) {
        // pause()/stop() ran while basic.consume was in flight, or the prefetch changed meanwhile (consume again with it).
        cancelledForPause = true
        await this.#cancelConsumer()
        return
      }
      this.#log.debug({ prefetch: this.prefetch }, 'consuming')
      this.#emit({ type: 'active', prefetch: this.prefetch })
    } catch (err) {
      const code = channelErrorCode(err)
      if (code === 404) {
        // The queue is gone; the channel closed with it. Restore it if the topology declares it.
        const redeclared = await redeclareQueue(conn, this.opts.topology, this.queue).catch(() => false)
        if (!redeclared) this.#emit({ type: 'not-found', message: `The broker has no queue "${this.queue}"` })
        if (redeclared) this.#log.info('re-declared the queue from the topology')
        this.#scheduleRetry(redeclared ? 0 : undefined)
        return
      }
      if (ref.open || this.opts.upstream.connection === conn) {
        this.#emit({ type: 'failed', code, message: (err as Error).message })
        this.#scheduleRetry()
      }
    } finally {
      this.#consumeInFlight = false
      // resume() may have landed during that cancel, and found a consume still in flight.
      if (cancelledForPause && this.#state === 'consuming') this.#ensure()
    }
  }

  #onMessage(ref: ConsumerChannel, conn: ChannelModel, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // Broker-side cancel: the queue was deleted (or its node went away).
      this.#consumerTag = undefined
      if (this.#state !== 'consuming') return
      this.#log.warn('the broker cancelled the consumer (queue deleted?); re-declaring and re-subscribing')
      this.#emit({ type: 'cancelled' })
      void redeclareQueue(conn, this.opts.topology, this.queue)
        .catch((err: unknown) => {
          this.#log.warn({ err: (err as Error).message }, 'could not re-declare the queue')
          return false
        })
        .then(() => this.#ensure())
      return
    }
    try {
      this.opts.sink.onMessage(msg, ref)
    } catch (err) {
      // Never throw into amqplib: requeue instead.
      this.#log.error({ err }, 'a consumer sink threw; requeueing the message')
      ref.nack(msg, true)
    }
  }

  #onClose(ref: ConsumerChannel, conn: ChannelModel): void {
    ref.open = false
    if (this.#channel === ref) {
      this.#channel = undefined
      this.#consumerTag = undefined
    }
    try {
      this.opts.sink.onChannelClosed(ref)
    } catch (err) {
      this.#log.error({ err }, 'a consumer sink threw on channel close')
    }
    // A channel-level close with the connection still up: reopen it ourselves.
    if (this.#state !== 'stopped' && this.opts.upstream.connection === conn) this.#scheduleRetry()
  }

  /** Gets back to "consuming" from wherever we are. */
  #ensure(): void {
    if (this.#state !== 'consuming') return
    const conn = this.opts.upstream.connection
    if (!conn) return
    const ref = this.#channel
    if (ref?.open && this.#connection === conn) void this.#consume(ref, conn)
    else void this.attach(conn)
  }

  #scheduleRetry(delay = this.#backoff.next()): void {
    if (this.#state === 'stopped' || this.#retryTimer) return
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined
      this.#ensure()
    }, delay)
    this.#retryTimer.unref()
  }

  #clearRetry(): void {
    if (this.#retryTimer) clearTimeout(this.#retryTimer)
    this.#retryTimer = undefined
  }

  async #cancelConsumer(): Promise<void> {
    const tag = this.#consumerTag
    const ref = this.#channel
    this.#consumerTag = undefined
    if (tag === undefined || !ref?.open) return
    await ref.channel.cancel(tag).catch(() => {})
  }

  #emit(event: SubscriptionEvent): void {
    const first = this.#firstOutcome
    this.#firstOutcome = undefined
    first?.(event)
    try {
      this.opts.sink.onEvent(event)
    } catch (err) {
      this.#log.error({ err }, 'a consumer sink threw on an event')
    }
  }
}
