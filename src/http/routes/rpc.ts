/**
 * Request/reply (DESIGN.md section 3):
 *   POST /v1/rpc/{exchange}/{routingKey...}  raw body, properties in headers
 * answers 200 with the reply's body and its properties as headers, or an
 * error: 422 UNROUTABLE, 504 RPC_TIMEOUT, 504 RPC_OUTCOME_UNKNOWN, 503 RPC_BUSY.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { PublishDefaults } from '../../publish/message.js'
import type { RpcClient } from '../../rpc/client.js'
import { replyHeaders } from '../../rpc/reply.js'
import { rpcFromRawRequest } from '../../rpc/request.js'
import { errorResponses, publishHeadersSchema, publishParamsSchema } from '../responses.js'

export interface RpcRouteDeps {
  rpc: RpcClient
  defaults: PublishDefaults
  bodyLimitBytes: number
}

const h = (description: string) => ({ type: 'string', description }) as const

// The publish headers, less the three that make no sense for a request that waits for its reply.
const { 'x-reply-to': _r, 'x-ack': _a, 'x-mandatory': _m, ...requestHeaders } = publishHeadersSchema.properties

export async function rpcRoutes(app: FastifyInstance, deps: RpcRouteDeps): Promise<void> {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: deps.bodyLimitBytes }, (_req, body, done) => done(null, body))
  const handler = async (req: FastifyRequest<{ Params: { exchange: string; '*'?: string } }>, reply: FastifyReply) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)
    const { msg, deadlineMs } = rpcFromRawRequest(req.params.exchange, req.params['*'], req.headers, body, deps.defaults)
    const answer = await deps.rpc.call(msg, deadlineMs)
    return reply.code(200).headers(replyHeaders(answer)).send(answer.content)
  }
  const schema = {
    summary: 'Request/reply: publish the raw body with reply_to = direct reply-to and answer with the reply',
    description:
      'The request is published like POST /v1/publish/{exchange}/{routingKey} (always mandatory: X-Reply-To, X-Ack and X-Mandatory: false are refused), with a correlation_id (X-Correlation-Id, else generated) and, unless X-Expiration is given, an expiration equal to its deadline. 422 UNROUTABLE: no queue took it. 504 RPC_TIMEOUT: no reply by the deadline (it may have been processed). 504 RPC_OUTCOME_UNKNOWN: the broker connection dropped while waiting (answered at once). 503 RPC_BUSY: rpc.maxOutstanding requests are already waiting.',
    params: publishParamsSchema,
    headers: { type: 'object', properties: { ...requestHeaders, 'x-timeout-ms': h('How long to wait for the reply, in milliseconds (default: publish.timeoutMs)') } },
    response: {
      200: {
        description:
          "The reply: its body byte for byte; Content-Type, Content-Encoding, X-Message-Id, X-Correlation-Id, X-Type, X-App-Id, X-Expiration, X-Priority, X-Persistent and X-Header-<name> carry the reply's properties",
        type: 'string',
        format: 'binary',
      },
      ...errorResponses,
    },
  }
  app.post('/v1/rpc/:exchange', { schema }, handler)
  app.post('/v1/rpc/:exchange/*', { schema }, handler)
}
