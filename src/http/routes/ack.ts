/**
 * Settling deliveries over HTTP (DESIGN.md section 2 and 3):
 *   POST /v1/ack  {"deliveryIds": [...]}                  -> 200 {"results": [{deliveryId, result}]}
 *   POST /v1/nack {"deliveryIds": [...], "requeue": true} -> same
 *   POST /v1/ack  {"deliveryId": "..."}                   -> 200 {deliveryId, result: "acked"},
 *                                                           409 DELIVERY_STALE, 404 DELIVERY_UNKNOWN
 * result: acked (nacked for nack) | stale (its channel is gone: the broker redelivers it,
 * redelivered=true) | unknown (already settled, or never handed out).
 */
import type { FastifyInstance } from 'fastify'
import type { Consumers, SettleAction } from '../../consume/consumers.js'
import { SidecarError } from '../../errors.js'
import { errorResponses } from '../responses.js'

/** Largest list accepted in one ack or nack. */
export const MAX_SETTLE_IDS = 1000

const open = { additionalProperties: true } as const
const deliveryId = { type: 'string', minLength: 1, maxLength: 255 } as const

const settleBody = (nack: boolean) => ({
  type: 'object',
  additionalProperties: false,
  oneOf: [{ required: ['deliveryIds'] }, { required: ['deliveryId'] }],
  properties: {
    deliveryIds: { type: 'array', minItems: 1, maxItems: MAX_SETTLE_IDS, items: deliveryId },
    deliveryId,
    ...(nack ? { requeue: { type: 'boolean', default: true, description: 'false: dead-letter (or drop) the message' } } : {}),
  },
})

const resultSchema = {
  type: 'object',
  ...open,
  properties: { deliveryId: { type: 'string' }, result: { type: 'string', enum: ['acked', 'nacked', 'stale', 'unknown'] } },
} as const

const response = {
  200: {
    description: 'A result per id (list form), or the one result (single form)',
    type: 'object',
    ...open,
    properties: { results: { type: 'array', items: resultSchema }, deliveryId: { type: 'string' }, result: { type: 'string' } },
  },
  ...errorResponses,
}

interface SettleBody {
  deliveryIds?: string[]
  deliveryId?: string
  requeue?: boolean
}

export async function ackRoutes(app: FastifyInstance, deps: { consumers: Consumers }): Promise<void> {
  const handle = (action: (body: SettleBody) => SettleAction) => async (req: { body: SettleBody }) => {
    const body = req.body
    const act = action(body)
    if (body.deliveryIds) return { results: deps.consumers.settle(body.deliveryIds, act) }
    const id = body.deliveryId as string
    const [r] = deps.consumers.settle([id], act)
    if (r?.result === 'stale') throw new SidecarError('DELIVERY_STALE', `Delivery "${id}" came on a channel that is gone; the broker redelivers it (redelivered=true)`)
    if (!r || r.result === 'unknown') throw new SidecarError('DELIVERY_UNKNOWN', `No delivery "${id}" is outstanding`)
    return r
  }
  app.post<{ Body: SettleBody }>('/v1/ack', { schema: { summary: 'Ack deliveries', body: settleBody(false), response } }, handle(() => ({ kind: 'ack' })))
  app.post<{ Body: SettleBody }>(
    '/v1/nack',
    { schema: { summary: 'Nack deliveries (requeue by default)', body: settleBody(true), response } },
    handle((b) => ({ kind: 'nack', requeue: b.requeue ?? true })),
  )
}
