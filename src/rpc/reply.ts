/**
 * How a reply reaches the app. HTTP: the reply's body is the response body,
 * and its properties come back as the same headers the publish route takes
 * (Content-Type, X-Correlation-Id, X-Header-<name>, ...). WebSocket: a
 * `reply` frame with the delivered-message body and properties shape.
 */
import { isUtf8 } from 'node:buffer'
import { headerText, propertiesOf } from '../consume/delivery.js'
import type { RpcReply } from './client.js'

/** An HTTP header name (RFC 9110 token); AMQP header names that are not one are left out. */
const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

const STRING_HEADERS = [
  ['contentEncoding', 'content-encoding'],
  ['messageId', 'x-message-id'],
  ['correlationId', 'x-correlation-id'],
  ['type', 'x-type'],
  ['appId', 'x-app-id'],
  ['expiration', 'x-expiration'],
] as const

export function replyHeaders(reply: RpcReply): Record<string, string> {
  const p = reply.properties
  const out: Record<string, string> = { 'content-type': typeof p.contentType === 'string' && p.contentType ? headerText(p.contentType) : 'application/octet-stream' }
  for (const [from, to] of STRING_HEADERS) {
    const v = p[from] as unknown
    if (v !== undefined && v !== null && v !== '') out[to] = headerText(v)
  }
  if (typeof p.priority === 'number') out['x-priority'] = String(p.priority)
  if (p.deliveryMode !== undefined) out['x-persistent'] = String(p.deliveryMode === 2)
  for (const [name, value] of Object.entries(p.headers ?? {})) {
    if (TOKEN_RE.test(name) && value !== undefined) out[`x-header-${name.toLowerCase()}`] = headerText(value)
  }
  return out
}

export function replyFrame(id: unknown, reply: RpcReply, forceBase64 = false): Record<string, unknown> & { op: string } {
  const utf8 = !forceBase64 && isUtf8(reply.content)
  return {
    op: 'reply',
    ...(id === undefined ? {} : { id }),
    body: reply.content.toString(utf8 ? 'utf8' : 'base64'),
    bodyEncoding: utf8 ? 'utf8' : 'base64',
    properties: propertiesOf(reply.properties),
  }
}
