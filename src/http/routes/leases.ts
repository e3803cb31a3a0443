/**
 * Long jobs (DESIGN.md section 3): an app that needs more time than its lease
 * extends it instead of letting it expire (an expired lease is requeued and
 * the job would run twice).
 *   POST /v1/leases/extend {"deliveryIds": [...], "leaseMs": N}
 *     200 {"results": [{deliveryId, result: "extended", expiresAt} | {deliveryId, result: "stale" | "unknown"}]}
 *     400 INVALID_REQUEST when leaseMs, or the lease it would give one of the deliveries,
 *         is over consume.maxLeaseMs counted from the delivery (nothing is extended then)
 */
import type { FastifyInstance } from 'fastify'
import { MIN_LEASE_MS, type Consumers } from '../../consume/consumers.js'
import { errorResponses } from '../responses.js'
import { MAX_SETTLE_IDS } from './ack.js'

interface ExtendBody {
  deliveryIds: string[]
  leaseMs: number
}

export async function leaseRoutes(app: FastifyInstance, deps: { consumers: Consumers }): Promise<void> {
  const { consumers } = deps
  app.post<{ Body: ExtendBody }>(
    '/v1/leases/extend',
    {
      schema: {
        summary: 'Extend the leases of deliveries still being worked on',
        description:
          'Moves each lease\'s expiry to leaseMs from now. No lease may outlive consume.maxLeaseMs (default 25 min) from its delivery: a longer request answers 400 naming the cap, and extends nothing. An expired lease (already requeued) or one whose channel is gone answers "stale".',
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['deliveryIds', 'leaseMs'],
          properties: {
            deliveryIds: { type: 'array', minItems: 1, maxItems: MAX_SETTLE_IDS, items: { type: 'string', minLength: 1, maxLength: 255 } },
            leaseMs: { type: 'integer', minimum: MIN_LEASE_MS, description: 'New lease from now; at most consume.maxLeaseMs' },
          },
        },
        response: {
          200: {
            description: 'A result per id, in order',
            type: 'object',
            additionalProperties: true,
            properties: {
              results: {
                type: 'array',
                items: {
                  type: 'object',
                  additionalProperties: true,
                  properties: {
                    deliveryId: { type: 'string' },
                    result: { type: 'string', enum: ['extended', 'stale', 'unknown'] },
                    expiresAt: { type: 'string', format: 'date-time', description: 'When the lease now ends (extended only)' },
                  },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req) => {
      const leaseMs = consumers.leaseMs(req.body.leaseMs)
      return { results: consumers.extend(req.body.deliveryIds, leaseMs) }
    },
  )
}
