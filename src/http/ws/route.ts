/**
 * GET /v1/ws: one socket, JSON text frames, multiplexed (DESIGN.md section 3).
 *
 * Client ops: subscribe {queue, prefetch?, leaseMs?, encoding?}, unsubscribe {queue},
 *   ack {deliveryId | deliveryIds, id?}, nack {deliveryId | deliveryIds, requeue?, id?}, extend {deliveryIds, leaseMs, id?},
 *   publish {id, exchange, routingKey, body, bodyEncoding, properties, headers, mandatory?}, ping,
 *   rpc {id, exchange, ...} (request/reply: handled by src/rpc/ws-op.ts).
 * Server ops: message, confirm {id, messageId}, reply {id, body, bodyEncoding, properties},
 *   error {id?, code, message},
 *   stale {deliveryIds, reason}, status {upstream, ...}, subscribed, unsubscribed,
 *   result {id, deliveryId, result} (only for acks/nacks that carry an id),
 *   settled {id?, acked|nacked, stale, unknown} (the answer to a batch: ack/nack with deliveryIds),
 *   extended {id?, results}, pong.
 *
 * The parts: peer.ts (one connection: lifecycle, dispatch, bounded send queue),
 * subscriptions.ts (its consumers and leases), ops.ts (stateless ops), frames.ts (parsing).
 */
import websocket from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import { SidecarError } from '../../errors.js'
import { sendError } from '../errors.js'
import type { WsDeps } from './context.js'
import { WsPeer } from './peer.js'

export type { WsDeps } from './context.js'

/** A base64 body in a JSON envelope is 4/3 of the bytes, plus room for the envelope. */
const FRAME_OVERHEAD_BYTES = 64 * 1024

export async function wsRoutes(app: FastifyInstance, deps: WsDeps): Promise<void> {
  const maxPayload = Math.ceil((deps.bodyLimitBytes * 4) / 3) + FRAME_OVERHEAD_BYTES
  await app.register(websocket, { options: { maxPayload } })
  const doc = {
    summary: 'WebSocket: subscribe, ack, nack, extend and publish over one socket',
    description:
      'Upgrade to a WebSocket carrying JSON text frames. Client ops: subscribe {queue, prefetch?, leaseMs?, encoding?}, unsubscribe {queue}, ack {deliveryId, id?} or a batch ack {deliveryIds (1-1000), id?}, nack {deliveryId or deliveryIds, requeue?, id?}, extend {deliveryIds, leaseMs, id?}, publish {id, exchange, routingKey, body, bodyEncoding, properties, headers}, rpc {id, exchange, routingKey, body, bodyEncoding, properties, headers, timeoutMs?}, ping. Server ops: message, confirm, reply, error, stale, status, subscribed, unsubscribed, result, settled {id?, acked|nacked, stale, unknown} (one per batch), extended, pong. A client that does not read what it is sent is closed with code 4008. See docs/consuming.md and docs/api.md.',
  }
  app.route({
    method: 'GET',
    url: '/v1/ws',
    schema: doc,
    // @fastify/websocket hides WebSocket routes from OpenAPI; this one is API, so document it.
    config: { swaggerTransform: ({ schema, url }: { schema: unknown; url: string }) => ({ schema: { ...(schema as object), hide: false, response: { 101: { description: 'Switching Protocols: the socket is open' } } }, url }) },
    // A plain GET (no Upgrade header) gets a documented error instead of the plugin's empty 404.
    handler: (_req, reply) => sendError(reply, new SidecarError('INVALID_REQUEST', 'GET /v1/ws needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)')),
    wsHandler: (socket, req) => {
      // Handlers are attached synchronously inside the peer's constructor, so no frame is missed.
      // req.socket is the upgraded socket ws writes to: the peer corks it to coalesce frames.
      new WsPeer(socket, deps, req.socket)
    },
  })
}
