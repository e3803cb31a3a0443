/**
 * Builds an RPC request from what the app sent, with the publish rules
 * (src/publish/message.ts) plus three of its own: the sidecar owns reply_to
 * (direct reply-to), a request is always mandatory (no queue bound must answer
 * 422, not wait for a reply that cannot come), and a request without an
 * expiration expires with its deadline, so a responder that was down does not
 * work through requests nobody waits for any more.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { SidecarError } from '../errors.js'
import { envelopeSchema } from '../http/schemas.js'
import { lazyAjv } from '../http/validation.js'
import { fromEnvelope, fromRawRequest, MAX_TIMEOUT_MS, type Envelope, type PublishDefaults } from '../publish/message.js'
import type { OutgoingMessage } from '../publish/publisher.js'

export interface RpcRequest {
  msg: OutgoingMessage
  deadlineMs: number
}

const invalid = (text: string) => new SidecarError('INVALID_REQUEST', text)

function finish(msg: OutgoingMessage, deadlineMs: number): RpcRequest {
  msg.options.mandatory = true
  msg.options.expiration ??= String(deadlineMs)
  return { msg, deadlineMs }
}

/** POST /v1/rpc/{exchange}/{routingKey}: headers as the raw publish route takes them. */
export function rpcFromRawRequest(exchange: string, routingKey: string | undefined, h: IncomingHttpHeaders, body: Buffer, defaults: PublishDefaults): RpcRequest {
  if (h['x-reply-to'] !== undefined) throw invalid('X-Reply-To is not accepted: the sidecar receives the reply (direct reply-to)')
  if (h['x-ack'] !== undefined) throw invalid('X-Ack is not accepted: the answer is the reply')
  if (h['x-mandatory'] !== undefined && h['x-mandatory'] !== 'true') throw invalid('X-Mandatory must be "true": a request no queue takes answers 422')
  const { msg, deadlineMs } = fromRawRequest(exchange, routingKey, h, body, defaults)
  return finish(msg, deadlineMs)
}

/** The WebSocket rpc op: the publish envelope, an id, and an optional timeoutMs. */
const frameSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['op', 'exchange'],
  properties: {
    ...envelopeSchema.properties,
    op: { const: 'rpc' },
    id: { type: ['string', 'number'] },
    timeoutMs: { type: 'integer', minimum: 1, maximum: MAX_TIMEOUT_MS },
  },
} as const
// The schema POST /v1/publish validates envelopes with, checked the same strict way (no coercion).
// Compiled at the first rpc frame: a sidecar that never gets one does not load ajv for it.
const frameAjv = lazyAjv({ allErrors: false, allowUnionTypes: true, strict: false })
let compiledFrame: ReturnType<ReturnType<typeof frameAjv>['compile']> | undefined
/** Whether the frame schema was compiled in this process (test/footprint.test.ts). */
export const frameSchemaCompiled = (): boolean => compiledFrame !== undefined

export function rpcFromFrame(frame: Record<string, unknown>, defaults: PublishDefaults): RpcRequest {
  const validateFrame = (compiledFrame ??= frameAjv().compile(frameSchema))
  if (!validateFrame(frame)) {
    const e = validateFrame.errors?.[0]
    throw invalid(`rpc ${e?.instancePath || 'frame'} ${e?.message ?? 'is invalid'}${e?.params && 'additionalProperty' in e.params ? ` ("${String(e.params.additionalProperty)}")` : ''}`)
  }
  const { op: _op, id: _id, timeoutMs, ...env } = frame
  if ((env as unknown as Envelope).properties?.replyTo !== undefined) throw invalid('properties.replyTo is not accepted: the sidecar receives the reply (direct reply-to)')
  if (env['mandatory'] === false) throw invalid('mandatory must be true: a request no queue takes answers UNROUTABLE')
  const msg = fromEnvelope(env as unknown as Envelope, defaults)
  return finish(msg, typeof timeoutMs === 'number' ? timeoutMs : defaults.timeoutMs)
}
