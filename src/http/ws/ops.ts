/**
 * Request/answer ops that hold no per-connection state: ack, nack, extend,
 * publish. Each checks its frame, calls the sidecar and answers on the same
 * socket. (New stateless ops belong here, next to these.)
 */
import type { SettleAction } from '../../consume/consumers.js'
import { SidecarError } from '../../errors.js'
import { fromEnvelope } from '../../publish/message.js'
import { toSidecarError } from '../errors.js'
import type { PeerIO } from './context.js'
import { deliveryIdIn, envelope, idOf, type Frame } from './frames.js'

/** Largest list one extend op takes (the same as POST /v1/leases/extend). */
const MAX_EXTEND_IDS = 1000

/** Largest list one batched ack or nack takes (the same as POST /v1/ack). */
export const MAX_SETTLE_IDS = 1000

/**
 * ack {deliveryId, id?} / nack {deliveryId, requeue?, id?}, or in batches:
 * ack {deliveryIds, id?} / nack {deliveryIds, requeue?, id?}, answered by one
 * `settled` frame. A batch saves the client a frame per message and the
 * sidecar a parse and a dispatch per message (docs/consuming.md, "Acking in batches").
 */
export function settleOp(io: PeerIO, f: Frame): void {
  const requeue = f['requeue'] ?? true
  if (typeof requeue !== 'boolean') throw new SidecarError('INVALID_REQUEST', 'requeue must be true or false')
  const action = f.op === 'ack' ? ({ kind: 'ack' } as const) : ({ kind: 'nack', requeue } as const)
  if (f['deliveryIds'] !== undefined) {
    if (f['deliveryId'] !== undefined) throw new SidecarError('INVALID_REQUEST', `${f.op} takes deliveryId (one) or deliveryIds (a list), not both`)
    return settleBatch(io, f, action, batchIdsIn(f['deliveryIds']))
  }
  if (f['deliveryId'] === undefined) throw new SidecarError('INVALID_REQUEST', `${f.op} needs deliveryId (one) or deliveryIds (a list of 1-${MAX_SETTLE_IDS})`)
  const deliveryId = deliveryIdIn(f['deliveryId'])
  const [r] = io.deps.consumers.settle([deliveryId], action)
  const result = r?.result ?? 'unknown'
  const id = f['id']
  if (id !== undefined) io.send({ op: 'result', id, deliveryId, result })
  if (result === 'stale') io.send({ op: 'stale', reason: 'channel-closed', deliveryIds: [deliveryId], ...idOf(f) })
  else if (result === 'unknown') io.error(id, new SidecarError('DELIVERY_UNKNOWN', `No delivery "${deliveryId}" is outstanding`))
}

/** The ids of a batch: 1-1000 distinct strings (a duplicate is the client's bug: the second would answer "unknown"). */
function batchIdsIn(v: unknown): string[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_SETTLE_IDS) throw new SidecarError('INVALID_REQUEST', `deliveryIds must be a list of 1-${MAX_SETTLE_IDS} ids`)
  const seen = new Set<string>()
  for (const id of v) {
    deliveryIdIn(id, 'each deliveryId')
    if (seen.has(id)) throw new SidecarError('INVALID_REQUEST', `deliveryIds lists "${id}" twice; nothing was settled`)
    seen.add(id)
  }
  return v as string[]
}

/** settled {id?, acked|nacked: [...], stale: [...], unknown: [...]}: every id of the batch in one list. */
function settleBatch(io: PeerIO, f: Frame, action: SettleAction, deliveryIds: string[]): void {
  const done: string[] = []
  const stale: string[] = []
  const unknown: string[] = []
  for (const r of io.deps.consumers.settle(deliveryIds, action)) {
    if (r.result === 'stale') stale.push(r.deliveryId)
    else if (r.result === 'unknown') unknown.push(r.deliveryId)
    else done.push(r.deliveryId)
  }
  io.send({ op: 'settled', ...idOf(f), [action.kind === 'ack' ? 'acked' : 'nacked']: done, stale, unknown })
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
