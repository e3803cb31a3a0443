/**
 * HTTP long-poll pull (DESIGN.md section 3), for apps that cannot hold a socket:
 *   POST /v1/queues/{queue}/pull?max=10&waitMs=20000&leaseMs=30000&encoding=base64
 *     200 [delivered message, ...]   as soon as at least one message is there
 *     204                            nothing arrived within waitMs
 * Each message carries a deliveryId to ack or nack (routes/ack.ts) before its lease ends.
 */
import type { FastifyInstance } from 'fastify'
import { MAX_LEASE_MS, type Consumers } from '../../consume/consumers.js'
import { errorResponses } from '../responses.js'

/** Query bounds: enough for batch consumers, small enough that one request cannot hog a queue. */
export const PULL_LIMITS = { maxMessages: 100, maxWaitMs: 60_000, minLeaseMs: 100 } as const
const DEFAULT_MAX = 10
const DEFAULT_WAIT_MS = 20_000

const open = { additionalProperties: true } as const

export const deliveredMessageSchema = {
  type: 'object',
  required: ['deliveryId', 'queue', 'exchange', 'routingKey', 'redelivered', 'body', 'bodyEncoding', 'properties'],
  ...open,
  properties: {
    deliveryId: { type: 'string', description: 'Ack or nack with this id before the lease ends' },
    queue: { type: 'string' },
    exchange: { type: 'string' },
    routingKey: { type: 'string' },
    redelivered: { type: 'boolean' },
    deliveryCount: { type: 'integer', description: "Earlier delivery attempts (quorum queues' x-delivery-count); absent when the broker gives none" },
    body: { type: 'string' },
    bodyEncoding: { type: 'string', enum: ['utf8', 'base64'] },
    properties: { type: 'object', ...open, properties: { messageId: { type: 'string' }, correlationId: { type: 'string' }, contentType: { type: 'string' }, headers: { type: 'object', ...open } } },
  },
} as const

export async function pullRoutes(app: FastifyInstance, deps: { consumers: Consumers }): Promise<void> {
  const { consumers } = deps
  app.post<{ Params: { queue: string }; Querystring: { max: number; waitMs: number; leaseMs?: number; encoding?: 'auto' | 'base64' } }>(
    '/v1/queues/:queue/pull',
    {
      schema: {
        summary: 'Long-poll up to max messages from a queue',
        params: { type: 'object', required: ['queue'], properties: { queue: { type: 'string', minLength: 1, maxLength: 255 } } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            max: { type: 'integer', minimum: 1, maximum: PULL_LIMITS.maxMessages, default: DEFAULT_MAX },
            waitMs: { type: 'integer', minimum: 0, maximum: PULL_LIMITS.maxWaitMs, default: DEFAULT_WAIT_MS },
            leaseMs: { type: 'integer', minimum: PULL_LIMITS.minLeaseMs, maximum: MAX_LEASE_MS, description: 'Default consume.leaseMs' },
            encoding: { type: 'string', enum: ['auto', 'base64'], description: 'base64 forces base64 bodies' },
          },
        },
        response: { 200: { type: 'array', items: deliveredMessageSchema }, 204: { type: 'null', description: 'Nothing arrived within waitMs' }, ...errorResponses },
      },
    },
    async (req, reply) => {
      const queue = consumers.checkQueue(req.params.queue)
      const ac = new AbortController()
      // The client went away while waiting: nothing must be leased to it.
      const onClose = () => {
        if (!reply.raw.writableFinished) ac.abort()
      }
      reply.raw.once('close', onClose)
      try {
        const messages = await consumers.pull(queue, {
          max: req.query.max,
          waitMs: req.query.waitMs,
          leaseMs: req.query.leaseMs ?? consumers.config.leaseMs,
          base64: req.query.encoding === 'base64',
          signal: ac.signal,
        })
        if (messages.length === 0) return reply.code(204).send()
        return reply.code(200).send(messages)
      } finally {
        reply.raw.off('close', onClose)
      }
    },
  )
}
