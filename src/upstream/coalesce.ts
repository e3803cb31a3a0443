/**
 * One socket write per batch of frames instead of one per message.
 *
 * amqplib's muxer moves frames from each channel's buffer to the socket in a
 * loop (once per setImmediate), calling socket.write() for every message.
 * With noDelay on, each write is a syscall and, on loopback, the kernel does
 * the receiver's TCP work inside it: at a few thousand messages a second this
 * was a third of the sidecar's CPU (profile in docs/benchmarks.md); the consume connection's acks gain the same way. Corking
 * the socket for the duration of one muxer pass turns the pass into a single
 * writev. Nothing is delayed: the pass uncorks before it returns, so every
 * frame leaves in the same tick it would have left anyway, in the same order.
 *
 * This reaches into amqplib internals (connection.muxer, connection.stream),
 * checked at runtime: if their shape is not the one we know (another amqplib
 * version), the connection is left as it is.
 */
import type { ChannelModel } from 'amqplib'

interface MuxerLike {
  _readIncoming: () => void
}

interface SocketLike {
  cork: () => void
  uncork: () => void
}

const patched = new WeakSet<object>()

/** Makes each muxer pass of this connection one socket write. Idempotent; false if amqplib's internals differ. */
export function coalesceWrites(model: ChannelModel): boolean {
  const conn = (model as unknown as { connection?: { muxer?: Partial<MuxerLike>; stream?: Partial<SocketLike> } }).connection
  const muxer = conn?.muxer
  const socket = conn?.stream
  if (!muxer || !socket || typeof muxer._readIncoming !== 'function' || typeof socket.cork !== 'function' || typeof socket.uncork !== 'function') return false
  if (patched.has(muxer)) return true
  const pass = muxer._readIncoming.bind(muxer)
  const cork = socket.cork.bind(socket)
  const uncork = socket.uncork.bind(socket)
  muxer._readIncoming = () => {
    cork()
    try {
      pass()
    } finally {
      uncork()
    }
  }
  patched.add(muxer)
  return true
}
