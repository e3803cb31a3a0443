/**
 * The spool's record format. A record is self-checking, so a write cut by a
 * crash (a torn tail) or a damaged sector is found at start and dropped,
 * never mistaken for a message:
 *
 *   u32 payload length | u32 CRC-32 of the payload | payload
 *   payload: u8 version | f64 appendedAt (epoch ms) | u16 exchange length | exchange
 *            | u16 routing key length | routing key | u32 options length
 *            | options (JSON: amqplib publish options, message id included) | body
 */
import { crc32 } from 'node:zlib'
import type { OutgoingMessage } from '../publish/entry.js'

const VERSION = 1
export const RECORD_HEADER_BYTES = 8
/** Larger than any message the API accepts (bodyLimitBytes is capped well below). */
export const MAX_PAYLOAD_BYTES = 512 * 1024 * 1024

export interface SpoolRecord {
  msg: OutgoingMessage
  appendedAt: number
}

export function encodeRecord(msg: OutgoingMessage, appendedAt: number): Buffer {
  const exchange = Buffer.from(msg.exchange)
  const routingKey = Buffer.from(msg.routingKey)
  const options = Buffer.from(JSON.stringify(msg.options))
  const payloadLength = 1 + 8 + 2 + exchange.length + 2 + routingKey.length + 4 + options.length + msg.content.length
  const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payloadLength)
  let o = RECORD_HEADER_BYTES
  o = buf.writeUInt8(VERSION, o)
  o = buf.writeDoubleLE(appendedAt, o)
  o = buf.writeUInt16LE(exchange.length, o)
  o += exchange.copy(buf, o)
  o = buf.writeUInt16LE(routingKey.length, o)
  o += routingKey.copy(buf, o)
  o = buf.writeUInt32LE(options.length, o)
  o += options.copy(buf, o)
  msg.content.copy(buf, o)
  buf.writeUInt32LE(payloadLength, 0)
  buf.writeUInt32LE(crc32(buf.subarray(RECORD_HEADER_BYTES)), 4)
  return buf
}

export type Decoded = { kind: 'record'; record: SpoolRecord; bytes: number } | { kind: 'incomplete'; need: number } | { kind: 'corrupt'; reason: string }

/** Decodes the record at `offset`; 'incomplete' says how many bytes it needs in all. */
export function decodeRecord(buf: Buffer, offset: number): Decoded {
  const available = buf.length - offset
  if (available < RECORD_HEADER_BYTES) return { kind: 'incomplete', need: RECORD_HEADER_BYTES }
  const length = buf.readUInt32LE(offset)
  if (length < 17 || length > MAX_PAYLOAD_BYTES) return { kind: 'corrupt', reason: `impossible record length ${length}` }
  if (available < RECORD_HEADER_BYTES + length) return { kind: 'incomplete', need: RECORD_HEADER_BYTES + length }
  const payload = buf.subarray(offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + length)
  if (crc32(payload) !== buf.readUInt32LE(offset + 4)) return { kind: 'corrupt', reason: 'checksum mismatch' }
  try {
    let o = 0
    if (payload.readUInt8(o) !== VERSION) return { kind: 'corrupt', reason: 'unknown record version' }
    o += 1
    const appendedAt = payload.readDoubleLE(o)
    o += 8
    const exLen = payload.readUInt16LE(o)
    o += 2
    const exchange = payload.toString('utf8', o, o + exLen)
    o += exLen
    const rkLen = payload.readUInt16LE(o)
    o += 2
    const routingKey = payload.toString('utf8', o, o + rkLen)
    o += rkLen
    const optLen = payload.readUInt32LE(o)
    o += 4
    const options = JSON.parse(payload.toString('utf8', o, o + optLen)) as OutgoingMessage['options']
    o += optLen
    // A copy: the read buffer is reused for the next chunk.
    const content = Buffer.from(payload.subarray(o))
    return { kind: 'record', record: { msg: { exchange, routingKey, content, options }, appendedAt }, bytes: RECORD_HEADER_BYTES + length }
  } catch (err) {
    return { kind: 'corrupt', reason: `unreadable record: ${(err as Error).message}` }
  }
}
