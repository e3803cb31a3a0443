/**
 * The bound on messages the sidecar holds for the broker: queued (not yet
 * written) plus written-but-unconfirmed, by count and by bytes. ACM's own queue
 * is unbounded (ACM #61), so this is the only thing that keeps memory flat
 * during an outage: past the bound a publish is refused with 503 BUFFER_FULL.
 */
import type { Metrics } from '../observe/metrics.js'

export class PublishBuffer {
  #messages = 0
  #bytes = 0

  constructor(
    readonly maxMessages: number,
    readonly maxBytes: number,
    private readonly metrics: Metrics,
  ) {}

  /** Reserves room for one message; false when that would pass either bound. */
  tryReserve(bytes: number): boolean {
    if (this.#messages + 1 > this.maxMessages || this.#bytes + bytes > this.maxBytes) return false
    this.#messages++
    this.#bytes += bytes
    this.#publish()
    return true
  }

  release(bytes: number): void {
    this.#messages--
    this.#bytes -= bytes
    this.#publish()
  }

  get messages(): number {
    return this.#messages
  }

  get bytes(): number {
    return this.#bytes
  }

  /** Readiness uses this: a full buffer means the pod should get no more traffic. */
  get full(): boolean {
    return this.#messages >= this.maxMessages || this.#bytes >= this.maxBytes
  }

  snapshot() {
    return { messages: this.#messages, bytes: this.#bytes, maxMessages: this.maxMessages, maxBytes: this.maxBytes }
  }

  #publish(): void {
    this.metrics.bufferedMessages.set(this.#messages)
    this.metrics.bufferedBytes.set(this.#bytes)
  }
}
