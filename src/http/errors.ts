/**
 * The one place errors become HTTP responses. SidecarErrors carry their own
 * status; fastify's own errors (body too large, bad JSON, schema validation,
 * unknown media type) are translated into registry codes so every error body
 * has the documented shape {"error": {code, message, messageId?}}.
 */
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { SidecarError, type ErrorCode } from '../errors.js'
import type { Logger } from '../observe/logger.js'

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_REQUEST',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_REQUEST',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_REQUEST',
  FST_ERR_VALIDATION: 'INVALID_REQUEST',
}

export function toSidecarError(err: unknown): SidecarError {
  if (err instanceof SidecarError) return err
  const fe = err as Partial<FastifyError> & { validation?: unknown }
  const mapped = (fe.code && FASTIFY_CODES[fe.code]) || (fe.validation ? 'INVALID_REQUEST' : undefined)
  if (mapped) return new SidecarError(mapped, mapped === 'PAYLOAD_TOO_LARGE' ? undefined : fe.message, { cause: err })
  // Body-parser errors carry a 4xx statusCode (e.g. a bad JSON body is 400).
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new SidecarError(fe.statusCode === 413 ? 'PAYLOAD_TOO_LARGE' : 'INVALID_REQUEST', fe.message, { cause: err })
  }
  return new SidecarError('INTERNAL', undefined, { cause: err })
}

export function sendError(reply: FastifyReply, error: SidecarError): FastifyReply {
  if (error.retryAfterSeconds !== undefined) reply.header('retry-after', String(error.retryAfterSeconds))
  return reply.code(error.status).send(error.toBody())
}

export function installErrorHandling(app: FastifyInstance, log: Logger): void {
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const error = toSidecarError(err)
    if (error.status >= 500 && error.code === 'INTERNAL') log.error({ err, url: req.url }, 'unexpected error serving a request')
    return sendError(reply, error)
  })
  app.setNotFoundHandler((req: FastifyRequest, reply: FastifyReply) => sendError(reply, new SidecarError('NOT_FOUND', `No route ${req.method} ${req.url.split('?')[0]}`)))
}
