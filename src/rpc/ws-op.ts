/**
 * The WebSocket `rpc` op: rpc {id, exchange, routingKey, body, bodyEncoding,
 * properties, headers, timeoutMs?} is answered by reply {id, body,
 * bodyEncoding, properties} or, through the socket's error path,
 * error {id, code, message}. http/ws.ts only dispatches the frame here.
 */
import { SidecarError } from '../errors.js'
import type { PublishDefaults } from '../publish/message.js'
import type { RpcClient } from './client.js'
import { replyFrame } from './reply.js'
import { rpcFromFrame } from './request.js'

export interface RpcOpDeps {
  rpc?: RpcClient | undefined
  defaults: PublishDefaults
}

export async function rpcOp(frame: Record<string, unknown>, deps: RpcOpDeps): Promise<Record<string, unknown> & { op: string }> {
  if (!deps.rpc) throw new SidecarError('INVALID_REQUEST', 'rpc is not served on this socket')
  const { msg, deadlineMs } = rpcFromFrame(frame, deps.defaults)
  const reply = await deps.rpc.call(msg, deadlineMs)
  return replyFrame(frame['id'], reply)
}
