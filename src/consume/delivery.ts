/**
 * The delivered-message shape, the same on every surface (DESIGN.md section 3):
 *   {deliveryId, queue, exchange, routingKey, redelivered, body, bodyEncoding,
 *    properties: {messageId, correlationId, contentType, headers, ...}}
 * plus deliveryCount when the broker counts deliveries (quorum queues'
 * x-delivery-count header, present from the first redelivery on), so an app
 * can give up on a poison message before the queue's x-delivery-limit does.
 * The body is a UTF-8 string when the bytes are valid UTF-8, base64 otherwise
 * (or always, when the app asks for base64).
 */
import { isUtf8 } from 'node:buffer'
import type { ConsumeMessage } from 'amqplib'

export type BodyEncoding = 'utf8' | 'base64'

export interface DeliveredMessage {
  deliveryId: string
  queue: string
  exchange: string
  routingKey: string
  redelivered: boolean
  /** Earlier delivery attempts (quorum queues' x-delivery-count); absent when the broker gives none. */
  deliveryCount?: number
  body: string
  bodyEncoding: BodyEncoding
  properties: Record<string, unknown>
}

const PROPERTY_NAMES = [
  'messageId',
  'correlationId',
  'contentType',
  'contentEncoding',
  'replyTo',
  'expiration',
  'priority',
  'type',
  'appId',
  'timestamp',
  'userId',
  'deliveryMode',
] as const

export function toDelivered(deliveryId: string, queue: string, msg: ConsumeMessage, forceBase64 = false): DeliveredMessage {
  const utf8 = !forceBase64 && isUtf8(msg.content)
  const count = deliveryCountOf(msg.properties.headers)
  return {
    deliveryId,
    queue,
    exchange: msg.fields.exchange,
    routingKey: msg.fields.routingKey,
    redelivered: msg.fields.redelivered,
    ...(count === undefined ? {} : { deliveryCount: count }),
    body: msg.content.toString(utf8 ? 'utf8' : 'base64'),
    bodyEncoding: utf8 ? 'utf8' : 'base64',
    properties: propertiesOf(msg.properties),
  }
}

/**
 * The WebSocket `message` frame as JSON text: the same text as
 * JSON.stringify({op: 'message', ...toDelivered(...)}), built in one pass
 * without the intermediate objects (consume is per message; the frame is the
 * hot path, and its garbage was a sixth of the sidecar's profile).
 */
export function messageFrame(deliveryId: string, queue: string, msg: ConsumeMessage, forceBase64 = false): string {
  const utf8 = !forceBase64 && isUtf8(msg.content)
  const count = deliveryCountOf(msg.properties.headers)
  const f = msg.fields
  // base64 text needs no escaping; utf8 text only when it has a byte JSON escapes.
  const body = !utf8 ? `"${msg.content.toString('base64')}"` : needsNoEscape(msg.content) ? `"${msg.content.toString('utf8')}"` : JSON.stringify(msg.content.toString('utf8'))
  return (
    `{"op":"message","deliveryId":${JSON.stringify(deliveryId)},"queue":${JSON.stringify(queue)},"exchange":${JSON.stringify(f.exchange)},"routingKey":${JSON.stringify(f.routingKey)},"redelivered":${f.redelivered === true}` +
    `${count === undefined ? '' : `,"deliveryCount":${count}`},"body":${body},"bodyEncoding":"${utf8 ? 'utf8' : 'base64'}","properties":${JSON.stringify(propertiesOf(msg.properties))}}`
  )
}

/**
 * True when JSON.stringify would copy the (valid UTF-8) text unchanged between
 * its quotes: no byte below 0x20, no '"', no '\\'. (Bytes from 0x80 up are
 * parts of valid UTF-8 sequences, which JSON.stringify leaves as they are.)
 * JSON.stringify of a 1 KB body cost about four times this scan. Four bytes
 * at a time, with the classic "has a byte below n" / "has a zero byte" tricks.
 */
export function needsNoEscape(b: Buffer): boolean {
  const n = b.length
  let i = 0
  const lead = Math.min(n, (4 - (b.byteOffset & 3)) & 3)
  for (; i < lead; i++) if (escaped(b[i] as number)) return false
  const words = (n - i) >>> 2
  if (words > 0) {
    const w = new Uint32Array(b.buffer, b.byteOffset + i, words)
    for (let k = 0; k < words; k++) {
      const x = w[k] as number
      const quote = x ^ 0x22222222
      const slash = x ^ 0x5c5c5c5c
      if ((((x - 0x20202020) & ~x) | ((quote - 0x01010101) & ~quote) | ((slash - 0x01010101) & ~slash)) & 0x80808080) return false
    }
    i += words * 4
  }
  for (; i < n; i++) if (escaped(b[i] as number)) return false
  return true
}

const escaped = (c: number): boolean => c < 0x20 || c === 0x22 || c === 0x5c

/** AMQP properties as JSON: those that are set, and always `headers` (RPC replies use the same shape). */
export function propertiesOf(amqpProperties: object): Record<string, unknown> {
  const props = amqpProperties as Record<string, unknown>
  const properties: Record<string, unknown> = {}
  for (const name of PROPERTY_NAMES) {
    const v = props[name]
    if (v !== undefined && v !== null) properties[name] = jsonSafe(v)
  }
  properties['headers'] = jsonSafe(props['headers'] ?? {})
  return properties
}

/** x-delivery-count as a number, when the broker set it (a long header may decode as a bigint). */
function deliveryCountOf(headers: Record<string, unknown> | undefined): number | undefined {
  const v = headers?.['x-delivery-count']
  const n = typeof v === 'number' && Number.isInteger(v) ? v : typeof v === 'bigint' ? Number(v) : undefined
  // RabbitMQ sends 0 on a first delivery by basic.get (pull) but nothing by basic.consume: one story, absent until a redelivery.
  return n !== undefined && n > 0 ? n : undefined
}

/** AMQP header tables may hold byte arrays, 64-bit integers and nested tables: make them JSON. */
export function jsonSafe(v: unknown): unknown {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v
  if (typeof v === 'bigint') return v.toString()
  if (Buffer.isBuffer(v)) return isUtf8(v) ? v.toString('utf8') : v.toString('base64')
  if (v instanceof Date) return v.toISOString()
  if (Array.isArray(v)) return v.map(jsonSafe)
  if (typeof v === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[k] = jsonSafe(x)
    return out
  }
  return String(v)
}

/** A header value as one HTTP header line (push): strings as they are, anything else as JSON. */
export function headerText(v: unknown): string {
  const safe = jsonSafe(v)
  const text = typeof safe === 'string' ? safe : JSON.stringify(safe)
  // HTTP header values cannot carry control characters or non-Latin-1 text.
  return /^[\x20-\x7e]*$/.test(text) ? text : encodeURIComponent(text)
}
