/**
 * Resource limits of the API listener, so a slow or hostile local client
 * cannot hold sockets or memory for ever (DESIGN.md section 8):
 *
 * - head size: api.maxHeaderBytes (Node's maxHeaderSize), else 431 HEADERS_TOO_LARGE;
 * - head deadline: api.headersTimeoutMs from connect (slowloris), else 408 REQUEST_TIMEOUT;
 * - request deadline: api.requestTimeoutMs to receive head and body (slow
 *   uploads), else 408; time spent waiting for the answer does not count, so
 *   long publishes and long polls are unaffected;
 * - idle keep-alive: api.keepAliveTimeoutMs between requests;
 * - body: api.bodyLimitBytes (fastify's bodyLimit), else 413 PAYLOAD_TOO_LARGE;
 * - WebSocket messages: derived from api.bodyLimitBytes in http/ws.ts (@fastify/websocket's maxPayload);
 * - connections: api.maxConnections open at once (0: no cap), else 503 TOO_MANY_CONNECTIONS.
 *
 * Errors Node raises before a request exists (bad framing, timeouts, an
 * oversized head) are answered here with the registry's JSON body, because
 * fastify's error handler never sees them.
 */
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify'
import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { SidecarConfig } from '../config/index.js'
import { SidecarError, type ErrorCode } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import { sendError } from './errors.js'

/** Node checks header/request deadlines on an interval (30 s by default): keep it well under the deadline. */
const MAX_CHECK_INTERVAL_MS = 1_000
const MIN_CHECK_INTERVAL_MS = 50
/** How long a refused connection may take to read its 503 before it is destroyed. */
const REFUSED_LINGER_MS = 5_000
/**
 * Longest path parameter. fastify's default (100) answered a valid 255-character
 * exchange name with its own 414 body; a 255-byte routing key percent-encoded
 * is at most 765 characters.
 */
export const MAX_PARAM_LENGTH = 1024

type ApiLimits = Pick<SidecarConfig['api'], 'maxHeaderBytes' | 'headersTimeoutMs' | 'requestTimeoutMs' | 'keepAliveTimeoutMs' | 'bodyLimitBytes'>

const CLIENT_ERROR_CODES: Record<string, ErrorCode> = {
  ERR_HTTP_REQUEST_TIMEOUT: 'REQUEST_TIMEOUT',
  HPE_HEADER_OVERFLOW: 'HEADERS_TOO_LARGE',
}

/** The fastify constructor options that enforce the limits. */
export function serverLimits(api: ApiLimits) {
  const checkEvery = Math.max(MIN_CHECK_INTERVAL_MS, Math.min(MAX_CHECK_INTERVAL_MS, Math.floor(api.headersTimeoutMs / 4)))
  return {
    bodyLimit: api.bodyLimitBytes,
    requestTimeout: api.requestTimeoutMs,
    keepAliveTimeout: api.keepAliveTimeoutMs,
    http: {
      maxHeaderSize: api.maxHeaderBytes,
      headersTimeout: api.headersTimeoutMs,
      requestTimeout: api.requestTimeoutMs,
      connectionsCheckingInterval: checkEvery,
    },
    clientErrorHandler,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors,
  }
}

/**
 * URLs the router refuses before any hook runs (bad percent-encoding, an
 * over-long parameter): answered with the registry's body instead of
 * fastify's own. Nothing else happens for them, so skipping the guard is safe.
 */
function frameworkErrors(error: FastifyError, _req: unknown, reply: FastifyReply): void {
  const message = error.code === 'FST_ERR_MAX_PARAM_LENGTH' ? `A path segment is longer than ${MAX_PARAM_LENGTH} characters` : 'The URL is not valid (bad percent-encoding?)'
  void sendError(reply, new SidecarError('INVALID_REQUEST', message, { cause: error }))
}

/** The raw HTTP/1.1 response for an error raised before fastify had a request. */
export function rawErrorResponse(error: SidecarError): string {
  const body = JSON.stringify(error.toBody())
  const retryAfter = error.retryAfterSeconds === undefined ? '' : `Retry-After: ${error.retryAfterSeconds}\r\n`
  return (
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\n` +
    `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${retryAfter}Connection: close\r\n\r\n${body}`
  )
}

/**
 * api.maxConnections: a connection over the cap gets one 503 TOO_MANY_CONNECTIONS
 * (a clear answer, where Node's own server.maxConnections just drops the socket)
 * and is closed. Nothing it sends is served: the first onRequest hook ends any
 * request (or WebSocket upgrade) that arrives on it before the close.
 */
export function capConnections(app: FastifyInstance, max: number, log: Logger): void {
  if (max <= 0) return
  const refused = new WeakSet<Socket>()
  let open = 0
  app.server.prependListener('connection', (socket: Socket) => {
    if (open >= max) {
      refused.add(socket)
      log.warn({ maxConnections: max }, 'API connection refused: api.maxConnections reached')
      socket.end(rawErrorResponse(new SidecarError('TOO_MANY_CONNECTIONS')))
      // A client that never reads must not keep the refused socket either.
      socket.setTimeout(REFUSED_LINGER_MS, () => socket.destroy())
      return
    }
    open++
    socket.once('close', () => open--)
  })
  app.addHook('onRequest', async (req, reply) => {
    if (refused.has(req.raw.socket)) {
      reply.hijack()
      req.raw.socket.destroy()
    }
  })
}

function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const code = CLIENT_ERROR_CODES[err.code ?? ''] ?? 'INVALID_REQUEST'
  // Like Node's own handler: never write into a response that has started.
  const inFlight = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage
  if (socket.writable && !inFlight?.headersSent) {
    socket.write(rawErrorResponse(new SidecarError(code, code === 'INVALID_REQUEST' ? 'The request is not valid HTTP' : undefined)))
  }
  socket.destroy()
}
