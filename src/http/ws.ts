/**
 * GET /v1/ws: one socket, JSON text frames, multiplexed (DESIGN.md section 3).
 *
 * Client ops: subscribe {queue, prefetch?, leaseMs?, encoding?}, unsubscribe {queue},
 *   ack {deliveryId, id?}, nack {deliveryId, requeue?, id?}, publish {id, exchange,
 *   routingKey, body, bodyEncoding, properties, headers, mandatory?}, ping,
 *   rpc {id, exchange, ...} (request/reply: handled by src/rpc/ws-op.ts).
 * Server ops: message, confirm {id, messageId}, reply {id, body, bodyEncoding,
 *   properties}, error {id?, code, message},
 *   stale {deliveryIds, reason}, status {upstream, ...}, subscribed, unsubscribed,
 *   result {id, deliveryId, result} (only for acks/nacks that carry an id), pong.
 *
 * Each subscription is its own channel on the consume connection with an
 * awaited basic.qos(prefetch): the prefetch is the client's credit, so a slow
 * reader can hold at most `prefetch` messages per subscription, in the
 * sidecar or in flight. A closed socket requeues its unacked deliveries.
 */
import websocket from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import type { WebSocket } from 'ws'
import { MAX_LEASE_MS, MAX_PREFETCH, type Consumers, type StatusListener } from '../consume/consumers.js'
import { toDelivered } from '../consume/delivery.js'
import type { Lease, LeaseEnd } from '../consume/leases.js'
import type { Subscription, SubscriptionEvent } from '../consume/subscription.js'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import { fromEnvelope, type Envelope, type PublishDefaults } from '../publish/message.js'
import type { Publisher } from '../publish/publisher.js'
import type { Upstream, UpstreamState } from '../upstream/connection.js'
import type { RpcClient } from '../rpc/client.js'
import { rpcOp } from '../rpc/ws-op.js'
import { sendError, toSidecarError } from './errors.js'

export interface WsDeps {
  consumers: Consumers
  publisher: Publisher
  publishUpstream: Upstream
  defaults: PublishDefaults
  bodyLimitBytes: number
  log: Logger
  metrics: Metrics
  rpc?: RpcClient | undefined
}

/** How often the server pings; a client that missed the previous ping's pong is cut. */
const PING_INTERVAL_MS = 30_000
/** A base64 body in a JSON envelope is 4/3 of the bytes, plus room for the envelope. */
const FRAME_OVERHEAD_BYTES = 64 * 1024

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

type Frame = Record<string, unknown> & { op: string }

export async function wsRoutes(app: FastifyInstance, deps: WsDeps): Promise<void> {
  const maxPayload = Math.ceil((deps.bodyLimitBytes * 4) / 3) + FRAME_OVERHEAD_BYTES
  await app.register(websocket, { options: { maxPayload } })
  const doc = {
    summary: 'WebSocket: subscribe, ack, nack and publish over one socket',
    description:
      'Upgrade to a WebSocket carrying JSON text frames. Client ops: subscribe {queue, prefetch?, leaseMs?, encoding?}, unsubscribe {queue}, ack {deliveryId, id?}, nack {deliveryId, requeue?, id?}, publish {id, exchange, routingKey, body, bodyEncoding, properties, headers}, rpc {id, exchange, routingKey, body, bodyEncoding, properties, headers, timeoutMs?}, ping. Server ops: message, confirm, reply, error, stale, status, subscribed, unsubscribed, result, pong. See docs/consuming.md and docs/api.md.',
  }
  app.route({
    method: 'GET',
    url: '/v1/ws',
    schema: doc,
    // @fastify/websocket hides WebSocket routes from OpenAPI; this one is API, so document it.
    config: { swaggerTransform: ({ schema, url }: { schema: unknown; url: string }) => ({ schema: { ...(schema as object), hide: false, response: { 101: { description: 'Switching Protocols: the socket is open' } } }, url }) },
    // A plain GET (no Upgrade header) gets a documented error instead of the plugin's empty 404.
    handler: (_req, reply) => sendError(reply, new SidecarError('INVALID_REQUEST', 'GET /v1/ws needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)')),
    wsHandler: (socket) => {
      // Handlers are attached synchronously inside the peer's constructor, so no frame is missed.
      new WsPeer(socket, deps)
    },
  })
}

class WsPeer implements StatusListener {
  readonly #subs = new Map<string, WsSubscription>()
  /** Unsubscribed, but leases still outstanding: the channel stays until they settle (or the socket closes). */
  readonly #leaving = new Set<WsSubscription>()
  /**
   * Message frames still in our send buffer (not yet written to the socket). A lease that
   * expires with its frame still here means the client is not reading: its redelivery would
   * pile up behind it without bound, so the client is cut instead (its leases are requeued).
   */
  readonly #unwritten = new Set<string>()
  readonly #log: Logger
  #alive = true
  #closed = false
  readonly #ping: NodeJS.Timeout

  constructor(
    private readonly ws: WebSocket,
    private readonly deps: WsDeps,
  ) {
    this.#log = deps.log.child({ part: 'ws' })
    ws.on('message', (data, isBinary) => this.#onFrame(data.toString(), isBinary))
    ws.on('pong', () => (this.#alive = true))
    ws.on('close', () => void this.close())
    ws.on('error', (err) => this.#log.debug({ err: err.message }, 'websocket error'))
    this.#ping = setInterval(() => {
      if (!this.#alive) {
        this.#log.info('websocket client missed a ping; closing it')
        ws.terminate()
        return
      }
      this.#alive = false
      ws.ping()
    }, PING_INTERVAL_MS)
    this.#ping.unref()
    deps.consumers.addListener(this)
    deps.metrics.websocketClients.inc()
    this.#sendStatus()
  }

  onUpstreamState(_state: UpstreamState): void {
    this.#sendStatus()
  }

  async stopConsuming(): Promise<void> {
    await Promise.all([...this.#subs.values()].map((s) => s.sub.pause()))
    this.#send({ op: 'status', ...this.#upstreams(), sidecar: 'draining' })
  }

  /** Requeues every unacked delivery of this client and closes its channels. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#ping)
    this.deps.consumers.removeListener(this)
    this.deps.metrics.websocketClients.dec()
    const subs = [...this.#subs.values(), ...this.#leaving]
    this.#subs.clear()
    this.#leaving.clear()
    await Promise.all(subs.map((s) => this.#teardown(s)))
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(1001, 'sidecar shutting down')
  }

  #onFrame(text: string, isBinary: boolean): void {
    let frame: Frame
    try {
      if (isBinary) throw new Error('binary frames are not supported')
      const parsed: unknown = JSON.parse(text)
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || typeof (parsed as Frame).op !== 'string') throw new Error('a frame is a JSON object with an "op"')
      frame = parsed as Frame
    } catch (err) {
      this.#error(undefined, new SidecarError('INVALID_REQUEST', (err as Error).message))
      return
    }
    const id = frame['id']
    try {
      switch (frame.op) {
        case 'subscribe':
          return void this.#subscribe(frame).catch((err: unknown) => this.#error(id, err))
        case 'unsubscribe':
          return void this.#unsubscribe(frame).catch((err: unknown) => this.#error(id, err))
        case 'ack':
        case 'nack':
          return this.#settle(frame)
        case 'publish':
          return void this.#publish(frame).catch((err: unknown) => this.#error(id, err))
        case 'rpc':
          return void rpcOp(frame, this.deps).then((reply) => this.#send(reply), (err: unknown) => this.#error(id, err))
        case 'ping':
          return this.#send({ op: 'pong', ...(id === undefined ? {} : { id }) })
        default:
          throw new SidecarError('INVALID_REQUEST', `unknown op "${frame.op}"`)
      }
    } catch (err) {
      this.#error(id, err)
    }
  }

  async #subscribe(f: Frame): Promise<void> {
    const { consumers } = this.deps
    const queue = consumers.checkQueue(f['queue'])
    const prefetch = intIn('prefetch', f['prefetch'], 1, MAX_PREFETCH) ?? consumers.config.defaultPrefetch
    const leaseMs = intIn('leaseMs', f['leaseMs'], 100, MAX_LEASE_MS) ?? consumers.config.leaseMs
    if (f['encoding'] !== undefined && f['encoding'] !== 'base64' && f['encoding'] !== 'auto') throw new SidecarError('INVALID_REQUEST', 'encoding must be "auto" or "base64"')
    if (this.#subs.has(queue)) throw new SidecarError('INVALID_REQUEST', `already subscribed to "${queue}"`)
    const s: WsSubscription = { sub: undefined as unknown as Subscription, leaseMs, base64: f['encoding'] === 'base64', leases: new Set(), unsubscribing: false, answered: false }
    s.sub = consumers.subscribe(queue, prefetch, {
      onMessage: (msg, channel) => {
        if (this.#closed || s.unsubscribing) return void channel.nack(msg, true)
        const lease = consumers.leases.add(channel, msg, { queue, via: 'ws', leaseMs: s.leaseMs, onEnd: (l, how) => this.#onLeaseEnd(s, l, how) })
        s.leases.add(lease.deliveryId)
        this.#sendMessage(lease.deliveryId, { op: 'message', ...toDelivered(lease.deliveryId, queue, msg, s.base64) })
      },
      onChannelClosed: (channel) => {
        const dropped = consumers.leases.dropChannel(channel)
        if (dropped.length > 0) this.#send({ op: 'stale', queue, reason: 'channel-closed', deliveryIds: dropped.map((l) => l.deliveryId) })
      },
      onEvent: (e) => this.#onSubEvent(s, e),
    })
    this.#subs.set(queue, s)
    const first = await s.sub.start()
    if (first.type === 'not-found' || first.type === 'failed') {
      this.#subs.delete(queue)
      await consumers.unsubscribe(s.sub)
      // 403 ACCESS_REFUSED and 405 RESOURCE_LOCKED (another connection's exclusive queue) are the broker saying no.
      const refused = first.type === 'failed' && (first.code === 403 || first.code === 405)
      throw new SidecarError(first.type === 'not-found' ? 'QUEUE_NOT_FOUND' : refused ? 'FORBIDDEN' : 'INTERNAL', first.message)
    }
    s.answered = true
    this.#send({ op: 'subscribed', queue, prefetch, leaseMs, active: first.type === 'active', ...(f['id'] === undefined ? {} : { id: f['id'] }) })
  }

  async #unsubscribe(f: Frame): Promise<void> {
    const queue = this.deps.consumers.checkQueue(f['queue'])
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
      await this.deps.consumers.unsubscribe(s.sub)
    }
    this.#send({ op: 'unsubscribed', queue, outstanding: s.leases.size, ...(f['id'] === undefined ? {} : { id: f['id'] }) })
  }

  #settle(f: Frame): void {
    const deliveryId = f['deliveryId']
    if (typeof deliveryId !== 'string' || deliveryId.length === 0 || deliveryId.length > 255) throw new SidecarError('INVALID_REQUEST', 'deliveryId must be a string')
    const requeue = f['requeue'] ?? true
    if (typeof requeue !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'requeue must be true or false')
    const [r] = this.deps.consumers.settle([deliveryId], f.op === 'ack' ? { kind: 'ack' } : { kind: 'nack', requeue })
    const result = r?.result ?? 'unknown'
    const id = f['id']
    if (id !== undefined) this.#send({ op: 'result', id, deliveryId, result })
    if (result === 'stale') this.#send({ op: 'stale', reason: 'channel-closed', deliveryIds: [deliveryId], ...(id === undefined ? {} : { id }) })
    else if (result === 'unknown') this.#error(id, new SidecarError('DELIVERY_UNKNOWN', `No delivery "${deliveryId}" is outstanding`))
  }

  async #publish(f: Frame): Promise<void> {
    const { op: _op, id, ...rest } = f
    if (id !== undefined && typeof id !== 'string' && typeof id !== 'number') throw new SidecarError('INVALID_REQUEST', 'id must be a string or a number')
    const env = envelope(rest)
    const msg = fromEnvelope(env, this.deps.defaults)
    try {
      const result = await this.deps.publisher.publish(msg, { deadlineMs: this.deps.defaults.timeoutMs, mode: 'confirm' })
      this.#send({ op: 'confirm', id, messageId: result.messageId })
    } catch (err) {
      const e = toSidecarError(err)
      e.messageId ??= msg.options.messageId
      throw e
    }
  }

  #onLeaseEnd(s: WsSubscription, lease: Lease, how: LeaseEnd): void {
    s.leases.delete(lease.deliveryId)
    const unwritten = this.#unwritten.delete(lease.deliveryId)
    if (how === 'expired' && unwritten && !this.#closed) {
      this.#log.warn({ queue: lease.queue }, 'websocket client is not reading: a lease expired before its message was even written; closing it')
      this.ws.terminate()
    }
    if (how === 'expired') this.#send({ op: 'stale', queue: lease.queue, reason: 'lease-expired', deliveryIds: [lease.deliveryId] })
    if (s.unsubscribing && s.leases.size === 0 && !this.#closed) {
      this.#leaving.delete(s)
      void this.deps.consumers.unsubscribe(s.sub)
    }
  }

  #onSubEvent(s: WsSubscription, e: SubscriptionEvent): void {
    const queue = s.sub.queue
    if (!s.answered) return
    if (e.type === 'cancelled') this.#send({ op: 'status', ...this.#upstreams(), queue, subscription: 'cancelled', reason: 'the broker cancelled the consumer (queue deleted?); re-subscribing' })
    else if (e.type === 'active') this.#send({ op: 'status', ...this.#upstreams(), queue, subscription: 'active' })
    else if (e.type === 'not-found') this.#send({ op: 'error', queue, code: 'QUEUE_NOT_FOUND', message: `${e.message}; retrying` })
  }

  async #teardown(s: WsSubscription): Promise<void> {
    s.unsubscribing = true
    await s.sub.pause()
    // Requeue explicitly (nack requeue=true) before the channel goes, so nothing waits for the close.
    for (const id of [...s.leases]) this.deps.consumers.leases.release(id)
    await this.deps.consumers.unsubscribe(s.sub)
  }

  #upstreams() {
    return { upstream: this.deps.consumers.upstream.state, publishUpstream: this.deps.publishUpstream.state }
  }

  #sendStatus(): void {
    this.#send({ op: 'status', ...this.#upstreams() })
  }

  #error(id: unknown, err: unknown): void {
    const e = toSidecarError(err)
    if (e.code === 'INTERNAL') this.#log.error({ err }, 'websocket op failed')
    this.#send({ op: 'error', ...(id === undefined ? {} : { id }), code: e.code, message: e.message, ...(e.messageId === undefined ? {} : { messageId: e.messageId }) })
  }

  #send(frame: Frame): void {
    if (this.ws.readyState !== this.ws.OPEN) return
    this.ws.send(JSON.stringify(frame))
  }

  #sendMessage(deliveryId: string, frame: Frame): void {
    if (this.ws.readyState !== this.ws.OPEN) return
    this.#unwritten.add(deliveryId)
    this.ws.send(JSON.stringify(frame), () => this.#unwritten.delete(deliveryId))
  }
}

function intIn(name: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new SidecarError('INVALID_REQUEST', `${name} must be an integer from ${min} to ${max}`)
  return v
}

const ENVELOPE_KEYS = new Set(['exchange', 'routingKey', 'body', 'bodyEncoding', 'properties', 'headers', 'mandatory'])

/** The same envelope rules as POST /v1/publish (its JSON schema), checked by hand for frames. */
function envelope(f: Record<string, unknown>): Envelope {
  for (const k of Object.keys(f)) if (!ENVELOPE_KEYS.has(k)) throw new SidecarError('INVALID_REQUEST', `unknown publish field "${k}"`)
  if (typeof f['exchange'] !== 'string') throw new SidecarError('INVALID_REQUEST', 'exchange must be a string')
  if (f['routingKey'] !== undefined && typeof f['routingKey'] !== 'string') throw new SidecarError('INVALID_REQUEST', 'routingKey must be a string')
  const enc = f['bodyEncoding']
  if (enc !== undefined && enc !== 'utf8' && enc !== 'base64' && enc !== 'json') throw new SidecarError('INVALID_REQUEST', 'bodyEncoding must be utf8, base64 or json')
  const props = f['properties']
  if (props !== undefined && (typeof props !== 'object' || props === null || Array.isArray(props))) throw new SidecarError('INVALID_REQUEST', 'properties must be an object')
  if (props && 'persistent' in props && typeof (props as { persistent: unknown }).persistent !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'properties.persistent must be a boolean')
  const headers = f['headers']
  if (headers !== undefined) {
    if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw new SidecarError('INVALID_REQUEST', 'headers must be an object')
    for (const v of Object.values(headers)) {
      if (v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'header values must be strings, numbers, booleans or null')
    }
  }
  if (f['mandatory'] !== undefined && typeof f['mandatory'] !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'mandatory must be a boolean')
  return f as unknown as Envelope
}
