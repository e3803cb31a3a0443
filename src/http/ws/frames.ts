/**
 * WebSocket frame parsing: every client frame is a JSON object with an "op".
 * Fields are checked by hand here (frames have no JSON schema), with the same
 * rules the HTTP routes' schemas apply, so an op and its route agree.
 */
import { SidecarError } from '../../errors.js'
import type { Envelope } from '../../publish/message.js'

export type Frame = Record<string, unknown> & { op: string }

/** Parses one text frame; throws INVALID_REQUEST. */
export function parseFrame(text: string, isBinary: boolean): Frame {
  try {
    if (isBinary) throw new Error('binary frames are not supported')
    const parsed: unknown = JSON.parse(text)
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || typeof (parsed as Frame).op !== 'string') throw new Error('a frame is a JSON object with an "op"')
    return parsed as Frame
  } catch (err) {
    throw new SidecarError('INVALID_REQUEST', (err as Error).message)
  }
}

/** `{id}` when the frame carried one, else nothing: answers echo the client's id. */
export function idOf(f: Frame): { id?: unknown } {
  return f['id'] === undefined ? {} : { id: f['id'] }
}

export function intIn(name: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new SidecarError('INVALID_REQUEST', `${name} must be an integer from ${min} to ${max}`)
  return v
}

export function deliveryIdIn(v: unknown, name = 'deliveryId'): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > 255) throw new SidecarError('INVALID_REQUEST', `${name} must be a string of 1-255 characters`)
  return v
}

const ENVELOPE_KEYS = new Set(['exchange', 'routingKey', 'body', 'bodyEncoding', 'properties', 'headers', 'mandatory'])

/** The same envelope rules as POST /v1/publish (its JSON schema), checked by hand for frames. */
export function envelope(f: Record<string, unknown>): Envelope {
  for (const k of Object.keys(f)) if (!ENVELOPE_KEYS.has(k)) throw new SidecarError('INVALID_REQUEST', `unknown publish field "${k}"`)
  if (typeof f['exchange'] !== 'string') throw new SidecarError('INVALID_REQUEST', 'exchange must be a string')
  if (f['routingKey'] !== undefined && typeof f['routingKey'] !== 'string') throw new SidecarError('INVALID_REQUEST', 'routingKey must be a string')
  const enc = f['bodyEncoding']
  if (enc !== undefined && enc !== 'utf8' && enc !== 'base64' && enc !== 'json') throw new SidecarError('INVALID_REQUEST', 'bodyEncoding must be utf8, base64 or json')
  const props = f['properties']
  if (props !== undefined && (typeof props !== 'object' || props === null || Array.isArray(props))) throw new SidecarError('INVALID_REQUEST', 'properties must be an object')
  if (props && 'persistent' in props && typeof (props as { persistent: unknown }).persistent !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'properties.persistent must be a boolean')
  const headers = f['headers']
  if (headers !== undefined) {
    if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw new SidecarError('INVALID_REQUEST', 'headers must be an object')
    for (const v of Object.values(headers)) {
      if (v !== null && typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'header values must be strings, numbers, booleans or null')
    }
  }
  if (f['mandatory'] !== undefined && typeof f['mandatory'] !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'mandatory must be a boolean')
  return f as unknown as Envelope
}
