/**
 * Request/answer ops that hold no per-connection state: ack, nack, extend,
 * publish. Each checks its frame, calls the sidecar and answers on the same
 * socket. (New stateless ops belong here, next to these.)
 */
import { SidecarError } from '../../errors.js'
import { fromEnvelope } from '../../publish/message.js'
import { toSidecarError } from '../errors.js'
import type { PeerIO } from './context.js'
import { deliveryIdIn, envelope, idOf, type Frame } from './frames.js'

/** Largest list one extend op takes (the same as POST /v1/leases/extend). */
const MAX_EXTEND_IDS = 1000

/** ack {deliveryId, id?} / nack {deliveryId, requeue?, id?}. */
export function settleOp(io: PeerIO, f: Frame): void {
  const deliveryId = deliveryIdIn(f['deliveryId'])
  const requeue = f['requeue'] ?? true
  if (typeof requeue !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'requeue must be true or false')
  const [r] = io.deps.consumers.settle([deliveryId], f.op === 'ack' ? { kind: 'ack' } : { kind: 'nack', requeue })
  const result = r?.result ?? 'unknown'
  const id = f['id']
  if (id !== undefined) io.send({ op: 'result', id, deliveryId, result })
  if (result === 'stale') io.send({ op: 'stale', reason: 'channel-closed', deliveryIds: [deliveryId], ...idOf(f) })
  else if (result === 'unknown') io.error(id, new SidecarError('DELIVERY_UNKNOWN', `No delivery "${deliveryId}" is outstanding`))
}

/** extend {deliveryIds, leaseMs, id?} -> extended {id?, results: [{deliveryId, result, expiresAt?}]}. */
export function extendOp(io: PeerIO, f: Frame): void {
  const ids = f['deliveryIds']
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > MAX_EXTEND_IDS) throw new SidecarError('INVALID_REQUEST', `deliveryIds must be a list of 1-${MAX_EXTEND_IDS} ids`)
  const deliveryIds = ids.map((v) => deliveryIdIn(v, 'each deliveryId'))
  if (f['leaseMs'] === undefined) throw new SidecarError('INVALID_REQUEST', 'leaseMs is required')
  const { consumers } = io.deps
  const leaseMs = consumers.leaseMs(f['leaseMs'])
  io.send({ op: 'extended', ...idOf(f), results: consumers.extend(deliveryIds, leaseMs) })
}

/** publish {id, exchange, routingKey, body, bodyEncoding, properties, headers, mandatory?} -> confirm {id, messageId}. */
export async function publishOp(io: PeerIO, f: Frame): Promise<void> {
  const { op: _op, id, ...rest } = f
  if (id !== undefined && typeof id !== 'string' && typeof id !== 'number') throw new SidecarError('INVALID_REQUEST', 'id must be a string or a number')
  const msg = fromEnvelope(envelope(rest), io.deps.defaults)
  try {
    const result = await io.deps.publisher.publish(msg, { deadlineMs: io.deps.defaults.timeoutMs, mode: 'confirm' })
    io.send({ op: 'confirm', id, messageId: result.messageId })
  } catch (err) {
    const e = toSidecarError(err)
    e.messageId ??= msg.options.messageId
    throw e
  }
}
