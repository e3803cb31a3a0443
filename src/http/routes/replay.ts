/**
 * Dead-letter replay (DESIGN.md section 3):
 *   POST /v1/queues/{queue}/replay?max=100
 *     200 {queue, examined, replayed, skipped, skippedByReason}
 * See src/replay/replayer.ts for how a replay can duplicate but never lose.
 */
import type { FastifyInstance } from 'fastify'
import type { Consumers } from '../../consume/consumers.js'
import { parseTimeout } from '../../publish/message.js'
import type { Replayer } from '../../replay/replayer.js'
import { errorResponses } from '../responses.js'

/** Bound per call: a replay is an operator action, not a bulk copy. */
export const REPLAY_MAX_MESSAGES = 1000
const DEFAULT_MAX = 100

export interface ReplayRouteDeps {
  consumers: Consumers
  replayer: Replayer
  defaultTimeoutMs: number
}

const SKIP_REASONS = ['no-x-death', 'no-origin', 'exchange-not-allowed', 'exchange-not-found', 'unroutable', 'nacked', 'unconfirmed']

export const replayResultSchema = {
  type: 'object',
  required: ['queue', 'examined', 'replayed', 'skipped', 'skippedByReason', 'stopped'],
  additionalProperties: true,
  properties: {
    queue: { type: 'string' },
    examined: { type: 'integer', description: 'Messages read from the queue by this call' },
    replayed: { type: 'integer', description: 'Re-published, confirmed, then acked on the dead-letter queue' },
    skipped: { type: 'integer', description: 'Left in the dead-letter queue' },
    skippedByReason: {
      type: 'object',
      description: `Skipped messages by reason: ${SKIP_REASONS.join(', ')}`,
      additionalProperties: { type: 'integer' },
    },
    stopped: {
      type: 'string',
      enum: ['max', 'empty', 'deadline', 'unconfirmed', 'connection-lost'],
      description: 'Why it stopped; after unconfirmed or connection-lost, call again once the link is back',
    },
  },
} as const

export async function replayRoutes(app: FastifyInstance, deps: ReplayRouteDeps): Promise<void> {
  app.post<{ Params: { queue: string }; Querystring: { max: number } }>(
    '/v1/queues/:queue/replay',
    {
      schema: {
        summary: 'Move up to max dead-lettered messages back to where they were first dead-lettered from',
        description:
          'Each message goes back to x-first-death-exchange with the routing key of its first x-death entry, published mandatory with a confirm, and is acked on this queue only after the confirm: a replay can duplicate, never lose. Messages without x-death (and those that cannot go back) stay in the queue and are counted by reason. X-Timeout-Ms bounds the call (default publish.timeoutMs).',
        params: { type: 'object', required: ['queue'], properties: { queue: { type: 'string', minLength: 1, maxLength: 255 } } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { max: { type: 'integer', minimum: 1, maximum: REPLAY_MAX_MESSAGES, default: DEFAULT_MAX } },
        },
        headers: { type: 'object', properties: { 'x-timeout-ms': { type: 'string', description: 'Deadline for the whole replay, in milliseconds' } } },
        response: { 200: { description: 'What the replay did', ...replayResultSchema }, ...errorResponses },
      },
    },
    async (req, reply) => {
      const queue = deps.consumers.checkQueue(req.params.queue)
      const raw = req.headers['x-timeout-ms']
      const deadlineMs = parseTimeout(Array.isArray(raw) ? raw[0] : raw, deps.defaultTimeoutMs)
      return reply.code(200).send(await deps.replayer.replay(queue, req.query.max, deadlineMs))
    },
  )
}
