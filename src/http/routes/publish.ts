/**
 * Publish routes (DESIGN.md section 3):
 *   POST /v1/publish/{exchange}/{routingKey...}  raw body, properties in headers
 *   POST /v1/publish                             one JSON envelope, or an array (batch)
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { SidecarError } from '../../errors.js'
import { fromEnvelope, fromRawRequest, parseAckMode, parseTimeout, type Envelope, type PublishDefaults } from '../../publish/message.js'
import type { Publisher, PublishResult } from '../../publish/publisher.js'
import { sendError, toSidecarError } from '../errors.js'
import { publishBodySchema } from '../schemas.js'
import { errorResponses, publishBatchResponse, publishHeadersSchema, publishParamsSchema, publishResultResponse } from '../responses.js'

export interface PublishRouteDeps {
  publisher: Publisher
  defaults: PublishDefaults
  bodyLimitBytes: number
}

type BatchItem = PublishResult | { messageId?: string; status: 'error'; error: { code: string; message: string; httpStatus: number } }

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name]
  return Array.isArray(v) ? v[0] : v
}

function statusOf(r: PublishResult): number {
  return r.status === 'accepted' ? 202 : 200
}

export async function publishRoutes(app: FastifyInstance, deps: PublishRouteDeps): Promise<void> {
  const { publisher, defaults } = deps

  // Raw routes take any body as bytes: the message is exactly what the app sent.
  await app.register(async (raw) => {
    raw.removeAllContentTypeParsers()
    raw.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: deps.bodyLimitBytes }, (_req, body, done) => done(null, body))
    const handler = async (req: FastifyRequest<{ Params: { exchange: string; '*'?: string } }>, reply: FastifyReply) => {
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)
      const { msg, deadlineMs, mode } = fromRawRequest(req.params.exchange, req.params['*'], req.headers, body, defaults)
      const result = await publisher.publish(msg, { deadlineMs, mode })
      return reply.code(statusOf(result)).send(result)
    }
    const schema = {
      summary: 'Publish the raw request body; AMQP properties come from headers',
      params: publishParamsSchema,
      headers: publishHeadersSchema,
      response: {
        200: { description: 'Confirmed by the broker (and routed, when mandatory)', ...publishResultResponse },
        202: { description: 'Accepted into the buffer (X-Ack: accepted); not yet confirmed', ...publishResultResponse },
        ...errorResponses,
      },
    }
    raw.post('/v1/publish/:exchange', { schema }, handler)
    raw.post('/v1/publish/:exchange/*', { schema }, handler)
  })

  const envelopeSchema = {
    summary: 'Publish one JSON envelope, or an array of them (batch, results in order)',
    body: publishBodySchema,
    response: {
      200: { description: 'Confirmed: one result for an envelope, results for a batch', anyOf: [publishResultResponse, publishBatchResponse] },
      202: { description: 'Accepted into the buffer (X-Ack: accepted)', anyOf: [publishResultResponse, publishBatchResponse] },
      207: { description: 'A batch where some messages failed; see results[].error', ...publishBatchResponse },
      ...errorResponses,
    },
  }
  app.post<{ Body: Envelope | Envelope[] }>('/v1/publish', { schema: envelopeSchema, bodyLimit: deps.bodyLimitBytes }, async (req, reply) => {
    const deadlineMs = parseTimeout(header(req, 'x-timeout-ms'), defaults.timeoutMs)
    const mode = parseAckMode(header(req, 'x-ack'))
    if (!Array.isArray(req.body)) {
      const result = await publisher.publish(fromEnvelope(req.body, defaults), { deadlineMs, mode })
      return reply.code(statusOf(result)).send(result)
    }
    // Batch: every message is published concurrently; results come back in order.
    const results: BatchItem[] = await Promise.all(
      req.body.map(async (env): Promise<BatchItem> => {
        try {
          return await publisher.publish(fromEnvelope(env, defaults), { deadlineMs, mode })
        } catch (err) {
          const e = toSidecarError(err)
          return { ...(e.messageId === undefined ? {} : { messageId: e.messageId }), status: 'error', error: { code: e.code, message: e.message, httpStatus: e.status } }
        }
      }),
    )
    const failed = results.filter((r) => r.status === 'error').length
    // 207 tells a client that checks only the status line that something in the batch failed.
    return reply.code(failed > 0 ? 207 : mode === 'accepted' ? 202 : 200).send({ results, failed })
  })
}

/** Answered while draining has ended but the process is still closing. */
export function refuseShuttingDown(reply: FastifyReply): FastifyReply {
  return sendError(reply, new SidecarError('SHUTTING_DOWN'))
}
