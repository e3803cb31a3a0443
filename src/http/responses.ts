/**
 * JSON schemas for responses, request headers and path parameters. fastify
 * serializes responses with them and @fastify/swagger turns them into the
 * OpenAPI document (docs/openapi.json), so the API is documented by the same
 * objects that shape it.
 *
 * Every object schema keeps `additionalProperties: true`: fast-json-stringify
 * drops properties a response schema does not list, and a documentation schema
 * must never silently strip a field the code added.
 */
import { ERROR_CODES } from '../errors.js'

const open = { additionalProperties: true } as const

/** Every error, on every surface: a stable code, a message, and the messageId it concerns (publishes). */
export const errorBodySchema = {
  type: 'object',
  required: ['error'],
  ...open,
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      ...open,
      properties: {
        code: { type: 'string', enum: Object.keys(ERROR_CODES) },
        message: { type: 'string' },
        messageId: { type: 'string' },
      },
    },
  },
} as const

/** Response schemas for the error classes every route may answer. */
export const errorResponses = {
  '4xx': { description: 'Refused: see error.code (INVALID_REQUEST, UNAUTHORIZED, EXCHANGE_NOT_ALLOWED, ...)', ...errorBodySchema },
  '5xx': { description: 'Not done: see error.code (BUFFER_FULL and SHUTTING_DOWN come with Retry-After)', ...errorBodySchema },
} as const

export const publishResultResponse = {
  type: 'object',
  required: ['messageId', 'status'],
  ...open,
  properties: {
    messageId: { type: 'string', description: 'The message_id the message carries (the app\'s, or a generated one)' },
    status: { type: 'string', enum: ['confirmed', 'accepted'] },
  },
} as const

export const publishBatchResponse = {
  type: 'object',
  required: ['results', 'failed'],
  ...open,
  properties: {
    results: {
      type: 'array',
      description: 'One result per message, in request order',
      items: {
        type: 'object',
        ...open,
        properties: {
          messageId: { type: 'string' },
          status: { type: 'string', enum: ['confirmed', 'accepted', 'error'] },
          error: {
            type: 'object',
            ...open,
            properties: { code: { type: 'string' }, message: { type: 'string' }, httpStatus: { type: 'integer' } },
          },
        },
      },
    },
    failed: { type: 'integer', description: 'How many messages failed (status 207 when > 0)' },
  },
} as const

export const publishParamsSchema = {
  type: 'object',
  required: ['exchange'],
  properties: {
    exchange: { type: 'string', description: 'Exchange name; amq.default names the default exchange' },
    '*': { type: 'string', description: 'Routing key (may contain "/")' },
  },
} as const

const h = (description: string) => ({ type: 'string', description }) as const

/**
 * The headers the raw publish route reads. Documentation only: every property
 * is an optional string, so fastify's validation accepts whatever the
 * publish code itself checks (and answers with INVALID_REQUEST).
 */
export const publishHeadersSchema = {
  type: 'object',
  properties: {
    'content-type': h('-> content_type'),
    'content-encoding': h('-> content_encoding'),
    'x-message-id': h('-> message_id (generated when absent); reuse it to retry an unknown outcome'),
    'x-correlation-id': h('-> correlation_id'),
    'x-reply-to': h('-> reply_to'),
    'x-expiration': h('-> expiration, in milliseconds'),
    'x-priority': h('-> priority, 0-255'),
    'x-type': h('-> type'),
    'x-app-id': h('-> app_id'),
    'x-persistent': h('"false" publishes transient (default: publish.persistent)'),
    'x-mandatory': h('"false" disables mandatory routing (default: publish.mandatory)'),
    'x-ack': h('"confirm" (default): answer after the broker confirm; "accepted": answer 202 once buffered'),
    'x-timeout-ms': h('Request deadline in milliseconds (default: publish.timeoutMs)'),
  },
} as const

export const statusResponse = {
  type: 'object',
  description: 'Upstream state, last disconnect, buffer and a human diagnosis; passwords redacted',
  ...open,
  properties: {
    sidecar: { type: 'object', ...open, properties: { state: { type: 'string' }, startedAt: { type: 'string' } } },
    upstream: { type: 'object', ...open, properties: { state: { type: 'string', enum: ['idle', 'connecting', 'connected', 'blocked', 'reconnecting', 'closed'] } } },
    buffer: { type: 'object', ...open, description: 'Messages and bytes held in memory against publish.maxBufferedMessages/Bytes' },
    spool: { type: ['object', 'null'], ...open, description: 'The durable spool (null without publish.spool.dir): messages, bytes, maxBytes, oldestAgeSeconds' },
    consumeUpstream: { type: 'object', ...open, description: 'The consume connection, as upstream (shared: true when consume.connection is shared; state idle while on-demand and unused)' },
    consumers: { type: 'object', ...open, description: 'Subscriptions by kind; push subscriptions with paused, pausedSince, pauseCause, probes, pauses' },
    rpc: { type: 'object', ...open, description: 'outstanding and maxOutstanding request/reply calls' },
    diagnosis: {},
    idleTimeoutDetected: { description: 'The middlebox idle timeout inferred from recent cuts (bracket and named value), or null' },
  },
} as const

export const openApiDocumentResponse = { type: 'object', description: 'This OpenAPI 3 document', ...open } as const
