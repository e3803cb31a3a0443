/**
 * One WebSocket connection: its lifecycle (ping/pong liveness, close), frame
 * dispatch, and its send queue. What it says to the client goes through
 * send()/sendMessage(); subscriptions (subscriptions.ts) and stateless ops
 * (ops.ts) see it only as PeerIO.
 *
 * The send queue is bounded for every frame kind. Message frames are bounded
 * by credit (prefetch per subscription, subscriptions per socket). Every other
 * frame (pong, result, error, confirm, stale, status...) answers something the
 * client sent, so a client that sends ops but never reads would grow it
 * without end: past CONTROL_QUEUE_MAX_BYTES unwritten, the client is cut with
 * close code 4008 (its leases are requeued).
 *
 * Writes are coalesced: ws writes every frame to the socket at once (a
 * writev per frame), which was a quarter of the sidecar's CPU when consuming.
 * The first frame of a turn of the event loop corks the raw socket, and
 * setImmediate uncorks it, so the frames of one burst of deliveries (one read
 * from the broker) leave in one write. The order of frames is unchanged.
 */
import type { Duplex } from 'node:stream'
import type { WebSocket } from 'ws'
import type { StatusListener } from '../../consume/consumers.js'
import { SidecarError } from '../../errors.js'
import type { Logger } from '../../observe/logger.js'
import type { UpstreamState } from '../../upstream/connection.js'
import { toSidecarError } from '../errors.js'
import { WS_CLOSE_NOT_READING, type PeerIO, type WsDeps } from './context.js'
import { parseFrame, type Frame } from './frames.js'
import { rpcOp } from '../../rpc/ws-op.js'
import { extendOp, publishOp, settleOp } from './ops.js'
import { ClientSubscriptions } from './subscriptions.js'

/** How often the server pings; a client that missed the previous ping's pong is cut. */
const PING_INTERVAL_MS = 30_000
/** Unwritten bytes of non-message frames past which a client counts as not reading. */
export const CONTROL_QUEUE_MAX_BYTES = 1024 * 1024
/** After a close frame that cannot be written (the client is not reading), drop the socket this much later. */
const CUT_GRACE_MS = 1_000

export class WsPeer implements StatusListener, PeerIO {
  readonly log: Logger
  readonly #subs: ClientSubscriptions
  /**
   * Message frames still in our send buffer (not yet written to the socket). A lease that
   * expires with its frame still here means the client is not reading.
   */
  readonly #unwritten = new Set<string>()
  /** Bytes of non-message frames handed to ws and not yet written to the socket. */
  #controlBytes = 0
  #alive = true
  #closed = false
  #cut = false
  /** The raw socket is corked until the next setImmediate. */
  #corked = false
  readonly #ping: NodeJS.Timeout

  /** `raw` is the upgraded request's socket, the one ws writes to (public API, unlike ws._socket). */
  constructor(
    private readonly ws: WebSocket,
    readonly deps: WsDeps,
    private readonly raw?: Duplex,
  ) {
    this.log = deps.log.child({ part: 'ws' })
    this.#subs = new ClientSubscriptions(this)
    ws.on('message', (data, isBinary) => this.#onFrame(data.toString(), isBinary))
    ws.on('pong', () => (this.#alive = true))
    ws.on('close', () => void this.close())
    ws.on('error', (err) => this.log.debug({ err: err.message }, 'websocket error'))
    this.#ping = setInterval(() => {
      if (!this.#alive) {
        this.log.info('websocket client missed a ping; closing it')
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

  get closed(): boolean {
    return this.#closed || this.#cut
  }

  onUpstreamState(_state: UpstreamState): void {
    this.#sendStatus()
  }

  async stopConsuming(): Promise<void> {
    await this.#subs.pauseAll()
    this.send({ op: 'status', ...this.upstreams(), sidecar: 'draining' })
  }

  /** Requeues every unacked delivery of this client and closes its channels. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#ping)
    this.deps.consumers.removeListener(this)
    this.deps.metrics.websocketClients.dec()
    await this.#subs.closeAll()
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(1001, 'sidecar shutting down')
  }

  #onFrame(text: string, isBinary: boolean): void {
    if (this.closed) return
    let frame: Frame
    try {
      frame = parseFrame(text, isBinary)
    } catch (err) {
      return this.error(undefined, err)
    }
    const id = frame['id']
    const fail = (err: unknown) => this.error(id, err)
    try {
      switch (frame.op) {
        case 'subscribe':
          return void this.#subs.subscribe(frame).catch(fail)
        case 'unsubscribe':
          return void this.#subs.unsubscribe(frame).catch(fail)
        case 'ack':
        case 'nack':
          return settleOp(this, frame)
        case 'extend':
          return extendOp(this, frame)
        case 'publish':
          return void publishOp(this, frame).catch(fail)
        case 'rpc':
          // Request/reply: src/rpc/ws-op.ts does the work; the answer is a reply frame.
          return void rpcOp(frame, this.deps).then((reply) => this.send(reply), fail)
        case 'ping':
          return this.send({ op: 'pong', ...(id === undefined ? {} : { id }) })
        default:
          throw new SidecarError('INVALID_REQUEST', `unknown op "${frame.op}"`)
      }
    } catch (err) {
      fail(err)
    }
  }

  upstreams() {
    return { upstream: this.deps.consumers.upstream.state, publishUpstream: this.deps.publishUpstream.state }
  }

  #sendStatus(): void {
    this.send({ op: 'status', ...this.upstreams() })
  }

  error(id: unknown, err: unknown): void {
    const e = toSidecarError(err)
    // After the client left, a failed op is the race with its going (e.g. "Channel ended"), not a bug.
    if (e.code === 'INTERNAL' && !this.closed) this.log.error({ err }, 'websocket op failed')
    else if (e.code === 'INTERNAL') this.log.debug({ err: (err as Error).message }, 'websocket op failed after the client left')
    this.send({ op: 'error', ...(id === undefined ? {} : { id }), code: e.code, message: e.message, ...(e.messageId === undefined ? {} : { messageId: e.messageId }) })
  }

  send(frame: Frame): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return
    const text = JSON.stringify(frame)
    const bytes = Buffer.byteLength(text)
    if (this.#controlBytes + bytes > CONTROL_QUEUE_MAX_BYTES) {
      this.log.warn({ unwrittenBytes: this.#controlBytes }, 'websocket client sends ops but does not read the answers; closing it')
      this.cut(WS_CLOSE_NOT_READING, 'not reading: send queue full')
      return
    }
    this.#controlBytes += bytes
    this.#cork()
    this.ws.send(text, () => (this.#controlBytes -= bytes))
  }

  sendMessage(deliveryId: string, text: string): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return
    this.#unwritten.add(deliveryId)
    this.#cork()
    this.ws.send(text, () => this.#unwritten.delete(deliveryId))
  }

  #cork(): void {
    if (this.#corked || !this.raw || this.raw.destroyed) return
    this.#corked = true
    this.raw.cork()
    setImmediate(this.#uncork)
  }

  /** One uncork per cork: a socket's cork is counted, and ws's own cork/uncork per frame nests inside ours. */
  readonly #uncork = (): void => {
    this.#corked = false
    this.raw?.uncork()
  }

  unwritten(deliveryId: string): boolean {
    return this.#unwritten.delete(deliveryId)
  }

  cut(code: number, reason: string): void {
    if (this.#cut) return
    this.#cut = true
    this.deps.metrics.websocketCuts.inc()
    // The close frame queues behind what the client does not read; drop the socket if it cannot get out.
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(code, reason)
    setTimeout(() => this.ws.terminate(), CUT_GRACE_MS).unref()
  }
}
