/**
 * The one upstream connection. amqp-connection-manager (ACM) owns the socket
 * and the reconnect loop; this class adds what ACM lacks (AMQP-LIBRARY-NOTES):
 * full-jitter backoff, re-read URL files, classified and counted disconnects,
 * idle time before each disconnect, blocked state, and topology on every
 * connect. Channels are NOT created here: the publisher and consumers open
 * their own on 'ready', so a fault in one never takes down another.
 */
import { EventEmitter } from 'node:events'
import type { Socket } from 'node:net'
import { AmqpConnectionManagerClass, type AmqpConnectionManager } from 'amqp-connection-manager'
import type { ChannelModel } from 'amqplib'
import type { SidecarConfig } from '../config/index.js'
import { TIMED_OUT, withDeadline } from '../deadline.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import { redactUrl, type SecretRegistry } from '../observe/redact.js'
import { coalesceWrites } from './coalesce.js'
import { brokerUrls, socketOptions } from './endpoints.js'
import { IdleMeter } from './idle-meter.js'
import { Backoff } from './backoff.js'
import { classifyError, UNANSWERED_CODE, type DisconnectCause } from './classify.js'
import { bracketText, detectIdleTimeout } from './diagnosis.js'
import { declareTopology, TopologyError } from './topology.js'

/**
 * Publishing and consuming use separate connections: RabbitMQ blocks a
 * connection that publishes during a memory or disk alarm, and a blocked
 * connection would also stall consumers' acks, which are what drain the
 * queues and end the alarm. Both roles share this class and its behaviour.
 */
export type UpstreamRole = 'publish' | 'consume'

/**
 * 'idle': not opened (yet), or closed on purpose because nothing needs it (the
 * consume connection of a sidecar with no consumer; see upstream/on-demand.ts).
 * start() leaves it for 'connecting'; close() ends in 'closed' for good.
 */
export type UpstreamState = 'idle' | 'connecting' | 'connected' | 'blocked' | 'reconnecting' | 'closed'

export interface DisconnectRecord {
  cause: DisconnectCause
  code: string | number | undefined
  message: string
  at: string
  /**
   * How long no byte crossed the socket before the write or timer that met the
   * cut (see idle-meter.ts); null when it never connected.
   */
  idleMsBefore: number | null
  /** The longest idle period this connection survived before; null when it never connected. */
  longestSurvivedIdleMs: number | null
  /** True for a failed connection attempt, false for a lost live connection. */
  duringConnect: boolean
}

export interface UpstreamEvents {
  /** Connected, and the topology was declared (or its failure recorded). */
  ready: [connection: ChannelModel]
  /** The live connection is gone; every channel on it is gone too. */
  lost: [record: DisconnectRecord]
  state: [state: UpstreamState]
}

/** A connection that lived less than this is "flapping": its loss keeps widening the backoff. */
const STABLE_CONNECTION_MS = 10_000
/** ACM's close() waits on a pending connect and on CloseOk: never wait for it longer than this. */
const CLOSE_DEADLINE_MS = 5_000
const HISTORY_LENGTH = 20

export class Upstream extends EventEmitter<UpstreamEvents> {
  #state: UpstreamState = 'idle'
  #acm: AmqpConnectionManager | undefined
  #connection: ChannelModel | undefined
  #socket: Socket | undefined
  #currentUrl: string | undefined
  #connectedAt: number | undefined
  readonly #idle = new IdleMeter()
  #blockedReason: string | null = null
  #topologyError: TopologyError | null = null
  #connects = 0
  #lastDisconnect: DisconnectRecord | null = null
  #lastConnectError: DisconnectRecord | null = null
  #disconnectsByCause: Partial<Record<DisconnectCause, number>> = {}
  /** Recent lost connections, oldest first, for pattern detection (bounded). */
  #history: DisconnectRecord[] = []
  readonly #backoff: Backoff
  /** The heartbeat asked for on the next connection (adaptive heartbeat may lower it). */
  heartbeatSeconds: number

  private readonly log: Logger

  constructor(
    readonly role: UpstreamRole,
    private readonly config: SidecarConfig,
    log: Logger,
    private readonly metrics: Metrics,
    private readonly secrets: SecretRegistry,
  ) {
    super()
    this.log = log.child({ connection: role })
    this.#backoff = new Backoff(config.amqp.reconnect.initialDelayMs, config.amqp.reconnect.maxDelayMs)
    this.heartbeatSeconds = config.amqp.heartbeatSeconds
    // A sample from the start: a labelled gauge has none until set, and an alert on
    // "== 0" or "> 0" cannot tell "not yet" from "no such sidecar".
    this.metrics.upstreamConnected.set(this.#labels, 0)
    this.metrics.upstreamBlocked.set(this.#labels, 0)
    this.metrics.idleTimeoutDetected.set(this.#labels, 0)
  }

  get #labels() {
    return { connection: this.role }
  }

  get state(): UpstreamState {
    return this.#state
  }

  /** The live connection, when there is one. */
  get connection(): ChannelModel | undefined {
    return this.#connection
  }

  get topologyError(): TopologyError | null {
    return this.#topologyError
  }

  start(): void {
    if (this.#acm || this.#state === 'closed') return
    this.#setState('connecting')
    const { amqp } = this.config
    if (amqp.heartbeatSeconds === 0 && this.#connects === 0) {
      this.log.warn(
        'amqp.heartbeatSeconds is 0: heartbeats are disabled, so a load balancer, NAT or firewall idle timeout will cut the connection while it is quiet, and a dead broker is noticed only by TCP keepalive',
      )
    }
    const acm = new AmqpConnectionManagerClass(null, {
      // Called at the start of every round over the URL list: a rotated urlFile applies on the next reconnect.
      findServers: () => this.#readUrls(),
      heartbeatIntervalInSeconds: this.heartbeatSeconds,
      reconnectTimeInSeconds: amqp.reconnect.initialDelayMs / 1000,
      connectionOptions: this.#socketOptions(),
    })
    this.#acm = acm
    // After stop() a new manager replaces this one: events of the old one are ignored.
    const current = () => this.#acm === acm
    acm.on('connect', ({ connection, url }) => void (current() && this.#onConnect(connection as ChannelModel, url)))
    acm.on('disconnect', ({ err }) => current() && this.#onDisconnect(err))
    acm.on('connectFailed', ({ err, url }) => current() && this.#onConnectFailed(err, url))
    acm.on('blocked', ({ reason }) => current() && this.#onBlocked(reason))
    acm.on('unblocked', () => current() && this.#onUnblocked())
    acm.connect().catch(() => {
      // ACM keeps retrying in the background; failures arrive as 'connectFailed'.
    })
  }

  /** Closes the connection cleanly (the broker logs a normal close), bounded by a deadline. For good: start() does nothing after it. */
  async close(deadlineMs = CLOSE_DEADLINE_MS): Promise<void> {
    if (this.#state === 'closed') return
    this.#setState('closed')
    await this.#closeManager(deadlineMs)
  }

  /**
   * Closes the connection cleanly because nothing needs it now, back to
   * 'idle'; start() opens it again. Not a disconnect: nothing is counted or
   * classified, and the backoff and history are kept.
   */
  async stop(deadlineMs = CLOSE_DEADLINE_MS): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'idle') return
    this.#setState('idle')
    this.log.info('closing the connection: nothing uses it now (it reopens when needed)')
    await this.#closeManager(deadlineMs)
    // Not down, just not needed: no series, so "connected == 0" alerts do not fire for an idle consume connection.
    if ((this.#state as UpstreamState) === 'idle') {
      this.metrics.upstreamConnected.remove(this.#labels)
      this.metrics.upstreamBlocked.remove(this.#labels)
    }
  }

  async #closeManager(deadlineMs: number): Promise<void> {
    const acm = this.#acm
    const socket = this.#socket
    this.#acm = undefined
    this.#connection = undefined
    this.#socket = undefined
    this.#connectedAt = undefined
    this.#blockedReason = null
    this.#idle.stop()
    this.metrics.upstreamConnected.set(this.#labels, 0)
    this.metrics.upstreamBlocked.set(this.#labels, 0)
    if (!acm) return
    const result = await withDeadline(acm.close().catch(() => undefined), deadlineMs)
    if (result === TIMED_OUT) {
      this.log.warn({ deadlineMs }, 'the AMQP connection did not close in time; destroying the socket')
      socket?.destroy()
    }
    this.log.info({ clean: result !== TIMED_OUT }, result === TIMED_OUT ? 'AMQP connection destroyed' : 'AMQP connection closed')
  }

  /** Forces a new connection (used after channel-level faults ACM cannot recover). */
  reconnect(): void {
    if (this.#state !== 'closed') this.#acm?.reconnect()
  }

  get history(): readonly DisconnectRecord[] {
    return this.#history
  }

  get lastDisconnect(): DisconnectRecord | null {
    return this.#lastDisconnect
  }

  status() {
    const sock = this.#socket
    const conn = this.#connection as (ChannelModel & { connection?: { heartbeat?: number } }) | undefined
    return {
      role: this.role,
      state: this.#state,
      url: this.#currentUrl ? redactUrl(this.#currentUrl) : null,
      heartbeatSeconds: conn?.connection?.heartbeat ?? null,
      requestedHeartbeatSeconds: this.heartbeatSeconds,
      localAddress: sock?.localAddress ? `${sock.localAddress}:${sock.localPort}` : null,
      remoteAddress: sock?.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : null,
      connectedSince: this.#connectedAt ? new Date(this.#connectedAt).toISOString() : null,
      connects: this.#connects,
      reconnects: Math.max(0, this.#connects - 1),
      lastDisconnect: this.#lastDisconnect,
      lastConnectError: this.#lastConnectError,
      disconnectsByCause: { ...this.#disconnectsByCause },
      blockedReason: this.#blockedReason,
      topologyError: this.#topologyError ? this.#topologyError.message : null,
    }
  }

  /** Called by ACM before each round over the URL list; TLS files are re-read with the URLs. */
  #readUrls(): string[] {
    if (this.#acm) this.#acm.connectionOptions = this.#socketOptions()
    return brokerUrls(this.config.amqp, this.heartbeatSeconds, this.secrets)
  }

  #socketOptions(): Record<string, unknown> {
    return socketOptions(this.config.amqp, `${this.config.amqp.connectionName}:${this.role}`)
  }

  async #onConnect(connection: ChannelModel, url: unknown): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'idle') return
    const raw = connection as ChannelModel & { connection: { stream: Socket } }
    this.#connection = connection
    this.#socket = raw.connection.stream
    this.#currentUrl = typeof url === 'string' ? url : undefined
    this.#connectedAt = Date.now()
    this.#connects++
    this.#lastConnectError = null
    const socket = this.#socket
    this.#idle.start(socket, { ms: this.config.amqp.unansweredWriteMs, call: (waitedMs) => this.#onUnanswered(socket, waitedMs) })
    this.metrics.upstreamConnects.inc(this.#labels)
    this.metrics.upstreamConnected.set(this.#labels, 1)
    const hb = (connection as unknown as { connection: { heartbeat: number } }).connection.heartbeat
    this.metrics.upstreamHeartbeat.set(this.#labels, hb)
    this.log.info({ url: this.#currentUrl && redactUrl(this.#currentUrl), heartbeatSeconds: hb, connects: this.#connects }, 'connected to the broker')
    // Connection-level errors are followed by 'close', which ACM turns into 'disconnect'.
    connection.on('error', () => {})
    // Publishes and acks alike: one socket write per amqplib muxer pass (see coalesce.ts).
    if (!coalesceWrites(connection)) this.log.debug('amqplib internals differ from the known version: frames are written one socket write each')
    try {
      await declareTopology(connection, this.config.topology)
      this.#topologyError = null
      const t = this.config.topology
      if (t.exchanges.length + t.queues.length + t.bindings.length > 0) {
        this.log.info({ exchanges: t.exchanges.length, queues: t.queues.length, bindings: t.bindings.length }, 'topology declared')
      }
    } catch (err) {
      this.#topologyError = err instanceof TopologyError ? err : new TopologyError('topology', undefined, err)
      this.metrics.topologyErrors.inc(this.#labels)
      this.log.error(
        { err: this.#topologyError.message, replyCode: this.#topologyError.replyCode },
        'topology declaration failed: the broker has an object that differs from the config (406 means inequivalent arguments). Fix the config or the broker object; it is retried on the next reconnect',
      )
    }
    const now = this.#state as UpstreamState
    if (this.#connection !== connection || now === 'closed' || now === 'idle') return
    this.#setState(this.#blockedReason ? 'blocked' : 'connected')
    this.emit('ready', connection)
  }

  /**
   * A publish the publisher expects the broker to answer was written: see
   * IdleMeter.expectAnswer (a dead flow found without waiting for a timer).
   */
  expectAnswer(): void {
    this.#idle.expectAnswer()
  }

  /** No byte came back for a publish written after an idle spell: the flow is dead; replace it. */
  #onUnanswered(socket: Socket, waitedMs: number): void {
    // A blocked connection is not read by the broker on purpose (an alarm): not a dead flow.
    if (this.#socket !== socket || this.#state === 'blocked') return
    this.log.warn({ waitedMs }, 'a publish written after an idle spell got no answer at all: the flow is dead (a middlebox dropped it silently, or the broker is frozen); replacing the connection and re-sending')
    const err = Object.assign(new Error(`No byte from the broker ${waitedMs} ms after a publish that followed an idle spell (amqp.unansweredWriteMs)`), { code: UNANSWERED_CODE })
    socket.destroy(err)
  }

  #onDisconnect(err: unknown): void {
    const wasConnected = this.#connection !== undefined
    const c = classifyError(err)
    // A keepalive timeout was met by the first probe, keepAliveDelayMs after the last byte.
    const idle = wasConnected ? this.#idle.readCut(c.cause === 'etimedout' ? this.config.amqp.keepAliveDelayMs : undefined) : null
    const lived = this.#connectedAt ? Date.now() - this.#connectedAt : 0
    this.#connection = undefined
    this.#socket = undefined
    this.#connectedAt = undefined
    this.#blockedReason = null
    this.#idle.stop()
    this.metrics.upstreamConnected.set(this.#labels, 0)
    this.metrics.upstreamBlocked.set(this.#labels, 0)
    if (this.#state === 'closed') return
    const record: DisconnectRecord = {
      ...c,
      message: this.secrets.scrub(c.message),
      at: new Date().toISOString(),
      idleMsBefore: idle?.idleMsBefore ?? null,
      longestSurvivedIdleMs: idle?.longestSurvivedIdleMs ?? null,
      duringConnect: false,
    }
    this.#lastDisconnect = record
    this.#history.push(record)
    if (this.#history.length > HISTORY_LENGTH) this.#history.shift()
    this.#disconnectsByCause[c.cause] = (this.#disconnectsByCause[c.cause] ?? 0) + 1
    this.metrics.upstreamDisconnects.inc({ ...this.#labels, cause: c.cause })
    if (lived >= STABLE_CONNECTION_MS) this.#backoff.reset()
    const delay = this.#scheduleReconnect()
    this.log.warn({ cause: c.cause, code: c.code, error: record.message, idleMsBefore: record.idleMsBefore, reconnectInMs: delay }, 'lost the broker connection')
    this.#adaptHeartbeat()
    this.#setState('reconnecting')
    this.emit('lost', record)
  }

  #onConnectFailed(err: unknown, url: unknown): void {
    if (this.#state === 'closed' || this.#state === 'idle') return
    const c = classifyError(err)
    const record: DisconnectRecord = { ...c, message: this.secrets.scrub(c.message), at: new Date().toISOString(), idleMsBefore: null, longestSurvivedIdleMs: null, duringConnect: true }
    this.#lastConnectError = record
    this.metrics.upstreamConnectFailures.inc({ ...this.#labels, cause: c.cause })
    const delay = this.#scheduleReconnect()
    this.log.warn(
      { cause: c.cause, code: c.code, error: record.message, url: typeof url === 'string' ? redactUrl(url) : undefined, attempt: this.#backoff.attempt, retryInMs: delay },
      'could not connect to the broker',
    )
    if (this.#state === 'connected' || this.#state === 'blocked') this.#setState('reconnecting')
  }

  /**
   * Recent cuts after idle periods longer than any the link survived mean a
   * load balancer, NAT or firewall drops idle flows (seeds/000). Say so, and (unless switched off) ask for a
   * heartbeat short enough to keep the flow busy: the broker then sends a frame
   * every heartbeat/2 s, well inside the middlebox's timeout.
   */
  #adaptHeartbeat(): void {
    const pattern = detectIdleTimeout(this.#history)
    if (!pattern) return
    this.metrics.idleTimeoutDetected.set(this.#labels, pattern.idleTimeoutSeconds)
    const { enabled, floorSeconds } = this.config.amqp.adaptiveHeartbeat
    const target = Math.max(floorSeconds, Math.floor(pattern.idleTimeoutSeconds / 2))
    const advice = { ...pattern, heartbeatSeconds: this.heartbeatSeconds }
    if (!enabled) {
      this.log.warn(advice, `a middlebox closes idle flows after ~${pattern.idleTimeoutSeconds} s (${bracketText(pattern)}); heartbeat is ${this.heartbeatSeconds} s (adaptive heartbeat is off: lower amqp.heartbeatSeconds below the timeout)`)
      return
    }
    if (this.heartbeatSeconds !== 0 && this.heartbeatSeconds <= target) return
    this.log.warn({ ...advice, newHeartbeatSeconds: target }, `a middlebox closes idle flows after ~${pattern.idleTimeoutSeconds} s (${bracketText(pattern)}); lowering the heartbeat from ${this.heartbeatSeconds} s to ${target} s for the next connection`)
    this.heartbeatSeconds = target
  }

  /** ACM reads reconnectTimeInSeconds right after emitting the event, so setting it here sets the next delay. */
  #scheduleReconnect(): number {
    const delay = this.#backoff.next()
    if (this.#acm) this.#acm.reconnectTimeInSeconds = delay / 1000
    return delay
  }

  #onBlocked(reason: string): void {
    this.#blockedReason = reason || 'blocked'
    this.metrics.upstreamBlocked.set(this.#labels, 1)
    this.log.warn({ reason }, 'the broker blocked the connection (resource alarm): publishes are refused until it unblocks')
    if (this.#state === 'connected') this.#setState('blocked')
  }

  #onUnblocked(): void {
    this.#blockedReason = null
    this.metrics.upstreamBlocked.set(this.#labels, 0)
    this.log.info('the broker unblocked the connection')
    if (this.#state === 'blocked') this.#setState('connected')
  }

  #setState(state: UpstreamState): void {
    if (this.#state === state) return
    this.#state = state
    this.emit('state', state)
  }
}
