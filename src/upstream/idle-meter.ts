/**
 * How long a socket was idle (no byte in either direction) before the write
 * or timer that met a cut, and the longest idle period it survived. Sampled
 * from the socket's byte counters rather than by wrapping amqplib's reads and
 * writes, so it sees heartbeats and every frame without touching the hot path.
 * The resolution (SAMPLE_MS) is far finer than any middlebox idle timeout.
 *
 * Why not "now minus the last byte" at the disconnect: a middlebox that evicts
 * an idle flow silently is only met by the NEXT packet, and that packet is our
 * own write (a publish after a quiet spell), counted a few ms before the RST
 * arrives. The idle time that matters is the gap that write ended. So the
 * meter keeps the gaps that ended with a write since the last byte READ: a
 * read proves the flow still existed (an evicted flow is never revived: with
 * conntrack's tcp_loose=0 the middlebox answers RST or drops), so every gap
 * before it survived, and one of the gaps after it met the cut.
 *
 * It also finds such a cut without waiting for a timer: a publish written
 * after an idle spell (ARM_IDLE_MS, no byte either way) must be answered by
 * the broker (a confirm, at least); when not a single byte comes back within
 * the configured time, the flow is dead, and the `unanswered` callback given
 * to start() is called. Only
 * writes that follow an idle spell arm it: a flow in use is not the one a
 * middlebox evicts, and a busy broker is not mistaken for a dead path.
 */
import type { Socket } from 'node:net'

const SAMPLE_MS = 100
/** A write after this long without a byte either way is the one that meets a silent eviction. */
export const ARM_IDLE_MS = 1_000

export interface IdleReading {
  /** The idle period that met the cut: an upper bound for the middlebox's timeout. */
  idleMsBefore: number
  /** The longest idle period this connection survived (0 when none): a lower bound. */
  longestSurvivedIdleMs: number
}

export class IdleMeter {
  #lastActivityAt = 0
  #lastWriteAt = 0
  #read = 0
  #written = 0
  /** The longest gap that ended with a write since the last read (0: none). */
  #unprovenGapMs = 0
  #longestSurvivedMs = 0
  #timer: NodeJS.Timeout | undefined
  #socket: Socket | undefined
  /** A write after an idle spell waiting for any byte back: when, and bytesRead then. */
  #awaiting: { at: number; read: number } | undefined
  #unanswered: { ms: number; call: (waitedMs: number) => void } | undefined

  /** `unanswered`: called once when an answer-expecting write after an idle spell got no byte back within `ms`. */
  start(socket: Socket, unanswered?: { ms: number; call: (waitedMs: number) => void }): void {
    this.stop()
    this.#socket = socket
    this.#unanswered = unanswered && unanswered.ms > 0 ? unanswered : undefined
    this.#awaiting = undefined
    this.#lastActivityAt = Date.now()
    this.#lastWriteAt = this.#lastActivityAt
    this.#read = socket.bytesRead
    this.#written = socket.bytesWritten
    this.#unprovenGapMs = 0
    this.#longestSurvivedMs = 0
    this.#timer = setInterval(() => {
      this.#sample()
      this.#checkAnswer()
    }, SAMPLE_MS).unref()
  }

  /**
   * Something the broker must answer was just written (a publish in confirm
   * mode). Arms the check when the flow had been idle for ARM_IDLE_MS; the
   * idle time is read from the last sample, so it is exact to SAMPLE_MS.
   */
  expectAnswer(): void {
    if (!this.#unanswered || this.#awaiting || !this.#socket) return
    const now = Date.now()
    if (now - this.#lastActivityAt < ARM_IDLE_MS) return
    this.#awaiting = { at: now, read: this.#read }
  }

  #checkAnswer(): void {
    const waiting = this.#awaiting
    if (!waiting || !this.#unanswered) return
    if (this.#read !== waiting.read) {
      this.#awaiting = undefined
      return
    }
    const waited = Date.now() - waiting.at
    if (waited < this.#unanswered.ms) return
    this.#awaiting = undefined
    this.#unanswered.call(waited)
  }

  /**
   * The idle time before the write or timer that met the cut, read when the
   * socket has died. When writes of ours followed the last read, one of them
   * (or a heartbeat) met the cut: the longest gap they ended. Otherwise a timer
   * met it: TCP keepalive, whose first probe leaves `probeAfterMs` after the
   * last byte, or the middlebox's own, which closed the flow. A proxy such as
   * haproxy times each direction on its own (`timeout client` counts from the
   * last byte the client SENT), so a late reply from the broker does not make
   * the flow younger to it: the middlebox's timer is read from our last write.
   * Null when nothing was measured.
   */
  readCut(probeAfterMs = Number.POSITIVE_INFINITY): IdleReading | null {
    if (!this.#lastActivityAt) return null
    this.#sample()
    const now = Date.now()
    const byTimer = Math.min(now - (this.#unprovenGapMs > 0 ? this.#lastActivityAt : this.#lastWriteAt), probeAfterMs)
    return { idleMsBefore: Math.max(this.#unprovenGapMs, byTimer), longestSurvivedIdleMs: this.#longestSurvivedMs }
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
    this.#socket = undefined
    this.#awaiting = undefined
  }

  #sample(): void {
    const s = this.#socket
    if (!s) return
    const read = s.bytesRead
    const written = s.bytesWritten
    if (read === this.#read && written === this.#written) return
    const now = Date.now()
    const gap = now - this.#lastActivityAt
    if (read !== this.#read) {
      // A byte came in through the middlebox: the flow outlived every gap so far.
      this.#longestSurvivedMs = Math.max(this.#longestSurvivedMs, this.#unprovenGapMs, gap)
      this.#unprovenGapMs = 0
    } else {
      this.#unprovenGapMs = Math.max(this.#unprovenGapMs, gap)
    }
    if (written !== this.#written) this.#lastWriteAt = now
    this.#read = read
    this.#written = written
    this.#lastActivityAt = now
  }
}
