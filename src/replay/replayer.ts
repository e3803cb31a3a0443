/**
 * Dead-letter replay (DESIGN.md section 3, poison messages): moves up to `max`
 * messages from a dead-letter queue back to the exchange and routing key they
 * were first dead-lettered from.
 *
 *   basic.get (consume connection) --> origin from x-death --> publish, mandatory,
 *   with a confirm (publish connection) --> basic.ack on the dead-letter queue
 *
 * The ack is sent only after the confirm, so a crash or a lost link between
 * the two leaves the message in the dead-letter queue too: a replay can
 * duplicate, never lose. A message that cannot go back (no x-death, exchange
 * gone, unroutable, nacked) is held unacked until the end of the call, so the
 * same call never reads it twice, and is then returned to the queue.
 * Reading and acking use the consume connection and publishing the publish
 * connection, for the reason they are separate (upstream/connection.ts): an
 * alarm that blocks publishing must not block acks.
 */
import type { Channel, ChannelModel, ConfirmChannel, GetMessage } from 'amqplib'
import { TIMED_OUT, withDeadline } from '../deadline.js'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import { ExchangeRegistry } from '../publish/exchanges.js'
import { channelErrorCode } from '../upstream/classify.js'
import type { Upstream } from '../upstream/connection.js'
import { originOf, type SkipReason } from './origin.js'

export type ReplaySkip = SkipReason | 'exchange-not-allowed' | 'exchange-not-found' | 'unroutable' | 'nacked' | 'unconfirmed'

export interface ReplayResult {
  queue: string
  /** Messages read from the queue by this call. */
  examined: number
  replayed: number
  skipped: number
  skippedByReason: Partial<Record<ReplaySkip, number>>
  /** Why it stopped: max messages examined, queue empty, deadline, a copy left unconfirmed, or a connection lost. */
  stopped: 'max' | 'empty' | 'deadline' | 'unconfirmed' | 'connection-lost'
}

export interface ReplayerDeps {
  publishUpstream: Upstream
  consumeUpstream: Upstream
  allowedExchanges: readonly string[] | null
  metrics: Metrics
  log: Logger
}

type Confirmed = 'confirmed' | 'unroutable' | 'nacked' | 'unconfirmed'

const noop = () => {}
/** How long closing the replay's two channels may take. */
const CLOSE_DEADLINE_MS = 2_000

export class Replayer {
  readonly #exchanges = new ExchangeRegistry()
  readonly #log: Logger

  constructor(private readonly deps: ReplayerDeps) {
    this.#log = deps.log.child({ part: 'replay' })
  }

  async replay(queue: string, max: number, deadlineMs: number): Promise<ReplayResult> {
    const { publishUpstream, consumeUpstream } = this.deps
    if (publishUpstream.state === 'blocked') throw new SidecarError('UPSTREAM_BLOCKED', `The broker has blocked publishing: ${publishUpstream.status().blockedReason}`)
    const getConn = consumeUpstream.connection
    const pubConn = publishUpstream.connection
    if (!getConn || !pubConn) throw new SidecarError('UPSTREAM_UNAVAILABLE', `Replay needs both broker connections (publish ${publishUpstream.state}, consume ${consumeUpstream.state})`)
    const until = Date.now() + deadlineMs
    const result: ReplayResult = { queue, examined: 0, replayed: 0, skipped: 0, skippedByReason: {}, stopped: 'max' }
    // Every wait on the broker is bounded by the request's deadline: a half-dead link must not hold the call.
    const within = async <T>(work: Promise<T>, what: string): Promise<T> => {
      const v = await withDeadline(work, Math.max(0, until - Date.now()))
      if (v === TIMED_OUT) throw new SidecarError('UPSTREAM_UNAVAILABLE', `${what} did not answer before the deadline`)
      return v
    }
    const getCh = await within(openChannel(getConn, false), 'the consume connection').catch((err: unknown) => {
      throw err instanceof SidecarError ? err : new SidecarError('UPSTREAM_UNAVAILABLE', 'The consume connection failed while the replay started', { cause: err })
    })
    const held: GetMessage[] = []
    let pubCh: ConfirmChannel | undefined
    try {
      try {
        await within(getCh.checkQueue(queue), 'the queue check')
      } catch (err) {
        if (err instanceof SidecarError) throw err
        const code = channelErrorCode(err)
        if (code === 404) throw new SidecarError('QUEUE_NOT_FOUND', `The broker has no queue "${queue}"`)
        if (code === 403) throw new SidecarError('FORBIDDEN', `The broker refused access to queue "${queue}"`, { cause: err })
        throw new SidecarError('UPSTREAM_UNAVAILABLE', 'The consume connection failed while the replay started', { cause: err })
      }
      pubCh = (await within(openChannel(pubConn, true), 'the publish connection').catch((err: unknown) => {
        throw err instanceof SidecarError ? err : new SidecarError('UPSTREAM_UNAVAILABLE', 'The publish connection failed while the replay started', { cause: err })
      })) as ConfirmChannel
      const publisher = new ReplayChannel(pubCh)
      const skip = (m: GetMessage, reason: ReplaySkip) => {
        held.push(m)
        result.skipped++
        result.skippedByReason[reason] = (result.skippedByReason[reason] ?? 0) + 1
        this.deps.metrics.replayed.inc({ outcome: reason })
      }
      for (;;) {
        if (result.examined >= max) break
        if (Date.now() >= until) {
          result.stopped = 'deadline'
          break
        }
        let m: GetMessage | false | typeof TIMED_OUT
        try {
          m = await withDeadline(getCh.get(queue, { noAck: false }), Math.max(0, until - Date.now()))
        } catch (err) {
          // The consume connection (or this channel) went away: what was not acked is back in the queue.
          this.#log.warn({ err: (err as Error).message }, 'dead-letter replay interrupted')
          result.stopped = 'connection-lost'
          break
        }
        if (m === TIMED_OUT) {
          // A get answered after this would be requeued by the channel's close.
          result.stopped = 'deadline'
          break
        }
        if (m === false) {
          result.stopped = 'empty'
          break
        }
        result.examined++
        const origin = originOf(m.properties.headers)
        if ('skip' in origin) {
          skip(m, origin.skip)
          continue
        }
        const allowed = this.deps.allowedExchanges
        if (allowed && !allowed.includes(origin.exchange === '' ? 'amq.default' : origin.exchange)) {
          skip(m, 'exchange-not-allowed')
          continue
        }
        // A publish to a missing exchange would close the channel: check first.
        const exists = await withDeadline(this.#exchanges.exists(pubConn, origin.exchange), Math.max(0, until - Date.now())).catch(() => undefined)
        if (exists === TIMED_OUT) {
          held.push(m)
          result.stopped = 'deadline'
          break
        }
        if (exists === undefined) {
          // The publish connection is failing: hand this one back and stop.
          held.push(m)
          result.stopped = 'connection-lost'
          break
        }
        if (!exists) {
          skip(m, 'exchange-not-found')
          continue
        }
        const outcome = await publisher.publish(m, origin, until)
        if (outcome !== 'confirmed') {
          skip(m, outcome)
          // No confirm: the channel may be broken; stop here and answer what was done.
          if (outcome === 'unconfirmed') {
            result.stopped = 'unconfirmed'
            break
          }
          continue
        }
        // Only now: the broker has taken responsibility for the copy.
        try {
          getCh.ack(m)
        } catch {
          // The channel is gone: the broker requeues the original, so it exists twice (a duplicate, never a loss).
        }
        result.replayed++
        this.deps.metrics.replayed.inc({ outcome: 'replayed' })
      }
    } finally {
      // Back to the queue, in place: they stay where an operator can look at them.
      for (const m of held) {
        try {
          getCh.nack(m, false, true)
        } catch {
          // The channel is gone: the broker has requeued them already.
        }
      }
      // Bounded: on a half-dead link a channel close can wait for a CloseOk that never comes.
      await withDeadline(Promise.all([getCh.close().catch(noop), pubCh?.close().catch(noop)]), CLOSE_DEADLINE_MS)
    }
    this.#log.info(result, 'dead-letter replay')
    return result
  }
}

/** One confirm channel, one message in flight at a time: a return or a close belongs to that message. */
class ReplayChannel {
  #returned = false
  #closed = false
  #pending: ((o: Confirmed) => void) | undefined

  constructor(private readonly ch: ConfirmChannel) {
    ch.on('return', () => (this.#returned = true))
    ch.on('close', () => {
      this.#closed = true
      this.#pending?.('unconfirmed')
    })
  }

  async publish(m: GetMessage, origin: { exchange: string; routingKey: string }, until: number): Promise<Confirmed> {
    if (this.#closed) return 'unconfirmed'
    this.#returned = false
    // Properties and headers as they were (x-death included: the history stays with the message),
    // except user_id: the broker refuses one that is not this connection's own user, closing the channel.
    const { userId: _userId, ...properties } = m.properties
    const confirmed = new Promise<Confirmed>((resolve) => {
      this.#pending = resolve
      try {
        this.ch.publish(origin.exchange, origin.routingKey, m.content, { ...properties, mandatory: true } as never, (err: unknown) => {
          // A return comes before the confirm of the same message.
          resolve(err ? 'nacked' : this.#returned ? 'unroutable' : 'confirmed')
        })
      } catch {
        resolve('unconfirmed')
      }
    })
    const outcome = await withDeadline(confirmed, Math.max(0, until - Date.now()))
    this.#pending = undefined
    return outcome === TIMED_OUT ? 'unconfirmed' : outcome
  }
}

async function openChannel(conn: ChannelModel, confirm: boolean): Promise<Channel> {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel()
  // A 404 or a lost connection closes this channel only; the failing call's rejection carries it.
  ch.on('error', noop)
  return ch
}
