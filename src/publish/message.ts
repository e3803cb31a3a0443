/**
 * Builds the AMQP message from what an app sent: the raw-body route's headers,
 * or a JSON envelope. All publish input validation lives here, so HTTP, batch
 * and WebSocket publishes accept and refuse exactly the same things.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { SidecarError } from '../errors.js'
import type { AckMode, OutgoingMessage } from './entry.js'

/** amq.default is how a URL names the default exchange, whose real name is "". */
export const DEFAULT_EXCHANGE_ALIAS = 'amq.default'
export const MAX_TIMEOUT_MS = 300_000
const NAME_RE = /^[A-Za-z0-9\-_.:]{1,255}$/
// AMQP short strings: at most 255 bytes; control characters would corrupt logs and headers.
const CONTROL_RE = /[\u0000-\u001f\u007f]/

export interface PublishDefaults {
  mandatory: boolean
  persistent: boolean
  timeoutMs: number
  allowedExchanges: readonly string[] | null
  /** Exchanges the topology declares internal: the broker refuses publishes to them by closing the channel. */
  internalExchanges?: readonly string[]
  /** api.bodyLimitBytes: the decoded body of an envelope (WebSocket publishes too) may not be larger. */
  bodyLimitBytes?: number
}

export interface PropertiesInput {
  messageId?: string
  correlationId?: string
  replyTo?: string
  expiration?: string | number
  priority?: number
  type?: string
  appId?: string
  contentType?: string
  contentEncoding?: string
  persistent?: boolean
  timestamp?: number
}

export type HeaderValue = string | number | boolean | null

export interface Envelope {
  exchange: string
  routingKey?: string
  body?: unknown
  bodyEncoding?: 'utf8' | 'base64' | 'json'
  properties?: PropertiesInput
  headers?: Record<string, HeaderValue>
  mandatory?: boolean
}

export interface PublishRequest {
  msg: OutgoingMessage
  deadlineMs: number
  mode: AckMode
}

const invalid = (text: string, messageId?: string) => new SidecarError('INVALID_REQUEST', text, messageId === undefined ? {} : { messageId })

function shortString(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.length === 0 || Buffer.byteLength(v) > 255 || CONTROL_RE.test(v)) {
    throw invalid(`${name} must be 1-255 bytes without control characters`)
  }
  return v
}

export function exchangeName(raw: string, allowed: readonly string[] | null, internal: readonly string[] = []): string {
  if (raw !== DEFAULT_EXCHANGE_ALIAS && raw !== '' && !NAME_RE.test(raw)) {
    throw invalid('exchange must be 1-255 characters of letters, digits, "-", "_", ".", ":" (amq.default for the default exchange)')
  }
  if (allowed && !allowed.includes(raw)) throw new SidecarError('EXCHANGE_NOT_ALLOWED', `Publishing to exchange "${raw}" is not allowed by publish.allowedExchanges`)
  if (internal.includes(raw)) throw new SidecarError('EXCHANGE_NOT_ALLOWED', `Exchange "${raw}" is internal: only other exchanges can route to it`)
  return raw === DEFAULT_EXCHANGE_ALIAS ? '' : raw
}

function routingKey(raw: string | undefined): string {
  const rk = raw ?? ''
  if (Buffer.byteLength(rk) > 255) throw invalid('routingKey must be at most 255 bytes')
  return rk
}

function parseBool(name: string, v: string | undefined, def: boolean): boolean {
  if (v === undefined) return def
  if (v === 'true') return true
  if (v === 'false') return false
  throw invalid(`${name} must be "true" or "false"`)
}

function parseIntIn(name: string, v: string | number | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined
  const n = typeof v === 'number' ? v : /^\d+$/.test(v) ? Number(v) : NaN
  if (!Number.isInteger(n) || n < min || n > max) throw invalid(`${name} must be an integer from ${min} to ${max}`)
  return n
}

function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name]
  return Array.isArray(v) ? v[0] : v
}

export function parseAckMode(v: string | undefined): AckMode {
  if (v === undefined || v === 'confirm') return 'confirm'
  if (v === 'accepted') return 'accepted'
  throw invalid('X-Ack must be "confirm" or "accepted"')
}

export function parseTimeout(v: string | undefined, def: number): number {
  return parseIntIn('X-Timeout-Ms', v, 1, MAX_TIMEOUT_MS) ?? def
}

/** Keep well inside amqplib's 64 KiB encoding buffer for the whole property block. */
const MAX_HEADERS_BYTES = 32 * 1024

/**
 * amqplib throws while encoding an over-long header name or an oversized
 * table, and that must be an error for this request, never a write failure
 * that stalls every publish behind it.
 */
function checkHeaders(headers: Record<string, HeaderValue>): Record<string, HeaderValue> {
  let size = 0
  for (const [key, value] of Object.entries(headers)) {
    const keyBytes = Buffer.byteLength(key)
    if (keyBytes === 0 || keyBytes > 255) throw invalid(`header name "${key.slice(0, 40)}" must be 1-255 bytes`)
    size += keyBytes + 6 + (typeof value === 'string' ? Buffer.byteLength(value) : 8)
  }
  if (size > MAX_HEADERS_BYTES) throw invalid(`headers are too large (${size} bytes encoded, at most ${MAX_HEADERS_BYTES})`)
  return headers
}

// No userId: the broker requires it to equal the sidecar's own login, and closes the channel otherwise.
const STRING_PROPERTIES = ['correlationId', 'replyTo', 'type', 'appId', 'contentType', 'contentEncoding'] as const

/** Request headers that carry AMQP properties on the raw publish route. */
const PROPERTY_HEADERS = [
  ['x-message-id', 'messageId'],
  ['x-correlation-id', 'correlationId'],
  ['x-reply-to', 'replyTo'],
  ['x-type', 'type'],
  ['x-app-id', 'appId'],
  ['content-type', 'contentType'],
  ['content-encoding', 'contentEncoding'],
] as const

const HEADER_PREFIX = 'x-header-'

/** The broker's pseudo-queue for direct reply-to (rpc/client.ts consumes it and names it in requests). */
export const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to'

/**
 * A reply to an RPC caller goes to the routing key the broker generated from
 * DIRECT_REPLY_TO. RabbitMQ delivers such a publish straight to the caller's
 * channel but counts it as routed to no queue, so with mandatory it also
 * sends basic.return (seen on RabbitMQ 3.10: NO_ROUTE, yet delivered) and
 * the app would get a false 422. Replies go without mandatory; a reply whose
 * caller is gone is dropped by the broker, as with any client.
 */
const isDirectReply = (exchange: string, rk: string) => exchange === '' && rk.startsWith(`${DIRECT_REPLY_TO}.`)

function build(
  exchange: string,
  rk: string,
  content: Buffer,
  props: PropertiesInput,
  headers: Record<string, HeaderValue> | undefined,
  mandatory: boolean,
  defaults: PublishDefaults,
): OutgoingMessage {
  const messageId = shortString('messageId', props.messageId) ?? randomUUID()
  const expiration = props.expiration === undefined ? undefined : String(parseIntIn('expiration', props.expiration, 0, 2 ** 31 - 1))
  const options: OutgoingMessage['options'] = {
    messageId,
    mandatory: mandatory && !isDirectReply(exchange, rk),
    persistent: props.persistent ?? defaults.persistent,
    headers: checkHeaders(headers ?? {}),
  }
  for (const k of STRING_PROPERTIES) {
    const v = shortString(k, props[k])
    if (v !== undefined) options[k] = v
  }
  if (expiration !== undefined) options.expiration = expiration
  const priority = parseIntIn('priority', props.priority, 0, 255)
  if (priority !== undefined) options.priority = priority
  const ts = parseIntIn('timestamp', props.timestamp, 0, Number.MAX_SAFE_INTEGER)
  if (ts !== undefined) options.timestamp = ts
  return { exchange, routingKey: rk, content, options }
}

/** POST /v1/publish/{exchange}/{routingKey}: the body is the message, headers carry the properties. */
export function fromRawRequest(exchangeParam: string, routingKeyParam: string | undefined, h: IncomingHttpHeaders, body: Buffer, defaults: PublishDefaults): PublishRequest {
  const exchange = exchangeName(exchangeParam, defaults.allowedExchanges, defaults.internalExchanges)
  const headers: Record<string, HeaderValue> = {}
  // A hot path (once per request): no per-call arrays (Object.entries, the table above is module-level).
  for (const name in h) {
    if (name.length > HEADER_PREFIX.length && name.startsWith(HEADER_PREFIX)) {
      const value = h[name]
      headers[name.slice(HEADER_PREFIX.length)] = Array.isArray(value) ? value.join(', ') : (value ?? '')
    }
  }
  const props: PropertiesInput = {}
  for (const [from, to] of PROPERTY_HEADERS) {
    const v = header(h, from)
    if (v !== undefined) props[to] = v
  }
  const expiration = header(h, 'x-expiration')
  if (expiration !== undefined) props.expiration = expiration
  const priority = parseIntIn('X-Priority', header(h, 'x-priority'), 0, 255)
  if (priority !== undefined) props.priority = priority
  props.persistent = parseBool('X-Persistent', header(h, 'x-persistent'), defaults.persistent)
  const mandatory = parseBool('X-Mandatory', header(h, 'x-mandatory'), defaults.mandatory)
  const msg = build(exchange, routingKey(routingKeyParam), body, props, headers, mandatory, defaults)
  return {
    msg,
    deadlineMs: parseTimeout(header(h, 'x-timeout-ms'), defaults.timeoutMs),
    mode: parseAckMode(header(h, 'x-ack')),
  }
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/

function envelopeBody(env: Envelope): { content: Buffer; defaultContentType?: string } {
  const enc = env.bodyEncoding ?? (typeof env.body === 'string' || env.body === undefined ? 'utf8' : 'json')
  if (enc === 'json') return { content: Buffer.from(JSON.stringify(env.body ?? null)), defaultContentType: 'application/json' }
  if (env.body !== undefined && typeof env.body !== 'string') throw invalid(`body must be a string when bodyEncoding is "${enc}"`)
  const text = (env.body as string | undefined) ?? ''
  if (enc === 'base64') {
    if (text.length % 4 !== 0 || !BASE64_RE.test(text)) throw invalid('body is not valid base64')
    return { content: Buffer.from(text, 'base64') }
  }
  return { content: Buffer.from(text, 'utf8') }
}

/** One JSON envelope (POST /v1/publish, batch items, WebSocket publish ops). */
export function fromEnvelope(env: Envelope, defaults: PublishDefaults): OutgoingMessage {
  try {
    const exchange = exchangeName(env.exchange, defaults.allowedExchanges, defaults.internalExchanges)
    const { content, defaultContentType } = envelopeBody(env)
    // A base64 body in a WebSocket frame is 4/3 of its bytes: the limit is on the message, not the frame.
    if (defaults.bodyLimitBytes !== undefined && content.length > defaults.bodyLimitBytes) {
      throw new SidecarError('PAYLOAD_TOO_LARGE', `The message body is ${content.length} bytes, over api.bodyLimitBytes (${defaults.bodyLimitBytes})`)
    }
    const props: PropertiesInput = { ...env.properties }
    if (props.contentType === undefined && defaultContentType) props.contentType = defaultContentType
    return build(exchange, routingKey(env.routingKey), content, props, env.headers, env.mandatory ?? defaults.mandatory, defaults)
  } catch (err) {
    // Echo the app's own id in the error, so a batch result can be matched.
    if (err instanceof SidecarError && typeof env.properties?.messageId === 'string') err.messageId = env.properties.messageId
    throw err
  }
}
