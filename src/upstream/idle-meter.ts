/**
 * How long a socket has been idle: no byte in either direction. Sampled from
 * the socket's byte counters rather than by wrapping amqplib's reads and
 * writes, so it sees heartbeats and every frame without touching the hot path.
 * The resolution (SAMPLE_MS) is far finer than any middlebox idle timeout.
 */
import type { Socket } from 'node:net'

const SAMPLE_MS = 100

export class IdleMeter {
  #lastActivityAt = 0
  #bytesSeen = 0
  #timer: NodeJS.Timeout | undefined
  #socket: Socket | undefined

  start(socket: Socket): void {
    this.stop()
    this.#socket = socket
    this.#lastActivityAt = Date.now()
    this.#bytesSeen = 0
    this.#timer = setInterval(() => this.#sample(), SAMPLE_MS).unref()
  }

  /** Milliseconds since the last byte moved; null when nothing was measured. */
  idleMs(): number | null {
    if (!this.#lastActivityAt) return null
    this.#sample()
    return Date.now() - this.#lastActivityAt
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
    this.#socket = undefined
  }

  #sample(): void {
    const s = this.#socket
    if (!s) return
    const seen = s.bytesRead + s.bytesWritten
    if (seen !== this.#bytesSeen) {
      this.#bytesSeen = seen
      this.#lastActivityAt = Date.now()
    }
  }
}
