/**
 * What the parts of a WebSocket connection share: the sidecar's services
 * (WsDeps) and the connection's own output (PeerIO). The peer implements
 * PeerIO; subscriptions and ops only see this interface, so they never
 * import the peer (no cycle) and can be read on their own.
 */
import type { Consumers } from '../../consume/consumers.js'
import type { Logger } from '../../observe/logger.js'
import type { Metrics } from '../../observe/metrics.js'
import type { PublishDefaults } from '../../publish/message.js'
import type { Publisher } from '../../publish/publisher.js'
import type { RpcClient } from '../../rpc/client.js'
import type { Upstream } from '../../upstream/connection.js'
import type { Frame } from './frames.js'

/**
 * Close code for a client that does not read what it is sent: its send queue
 * passed its bound, or a lease expired before its message could be written.
 * (Documented in docs/consuming.md.) 1001: the sidecar is shutting down.
 */
export const WS_CLOSE_NOT_READING = 4008

export interface WsDeps {
  consumers: Consumers
  publisher: Publisher
  publishUpstream: Upstream
  defaults: PublishDefaults
  bodyLimitBytes: number
  log: Logger
  metrics: Metrics
  /** Request/reply (the rpc op); without it the op answers INVALID_REQUEST. */
  rpc?: RpcClient | undefined
}

export interface PeerIO {
  readonly deps: WsDeps
  readonly log: Logger
  /** True once the socket closed (or is being cut): nothing more is sent or handed out. */
  readonly closed: boolean
  send(frame: Frame): void
  /** A message frame (its JSON text, see messageFrame): tracked until written, so a lease expiring before that can be told apart. */
  sendMessage(deliveryId: string, text: string): void
  /** Still in our send buffer, never written to the socket. */
  unwritten(deliveryId: string): boolean
  /** Renders an error frame (with the op's id, if any). */
  error(id: unknown, err: unknown): void
  /** Cuts a client that does not read (its leases are requeued on close). */
  cut(code: number, reason: string): void
  upstreams(): { upstream: string; publishUpstream: string }
}
