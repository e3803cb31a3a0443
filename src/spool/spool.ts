/**
 * The durable spool (DESIGN.md section 9): with `publish.spool.dir` set, a
 * 202 means the message is on disk. accept() writes the record and answers
 * only after fdatasync (grouped across concurrent requests); a pump reads
 * records in order and hands a bounded window of them to the publisher, which
 * re-sends them across reconnects until confirmed; a record is released only
 * after its confirm, or after a refusal for good (dead-lettered or logged by
 * the publisher). On start, what a crash left behind is drained first; the
 * spool drains by itself whenever the broker is reachable.
 *
 * Memory: only the window (SPOOL_WINDOW_*) is held in memory, so an outage
 * longer than the in-memory buffer ends in 503 only when maxBytes is reached.
 */
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import type { OutgoingMessage, PublishResult, Settlement } from '../publish/entry.js'
import type { Publisher } from '../publish/publisher.js'
import { encodeRecord } from './record.js'
import { SegmentLog, type RecordRef } from './segment-log.js'

/** Records handed to the publisher at once, by count and by bytes. */
const SPOOL_WINDOW_MESSAGES = 1_000
const SPOOL_WINDOW_BYTES = 16 * 1024 * 1024

export interface SpoolStatus {
  dir: string
  messages: number
  bytes: number
  maxBytes: number
  oldestAgeSeconds: number
}

export class Spool {
  #log: SegmentLog | undefined
  /** Records handed to the publisher and not yet released, in read (= append) order, with their age. */
  #inFlight = new Map<RecordRef, { appendedAt: number; bytes: number }>()
  #inFlightBytes = 0
  #pumping = false
  #pumpAgain = false
  #feeding = true

  constructor(
    readonly dir: string,
    readonly maxBytes: number,
    private readonly publisher: Publisher,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {}

  /** Opens the directory and recovers it; throws SpoolOpenError with a clear message when it cannot be used. */
  async open(): Promise<void> {
    const { log, recovery } = await SegmentLog.open(this.dir)
    this.#log = log
    this.metrics.setSpoolAgeSource(() => this.status().oldestAgeSeconds)
    if (recovery.droppedBytes > 0) {
      this.metrics.spoolDropped.inc(recovery.droppedBytes)
      this.logger.warn({ dir: this.dir, droppedBytes: recovery.droppedBytes, problems: recovery.problems }, 'the spool had a torn or corrupt tail; dropped it and kept every whole record')
    }
    if (recovery.records > 0) this.logger.info({ dir: this.dir, records: recovery.records, segments: recovery.segments }, 'the spool holds messages from before the last stop; sending them')
    this.#publishMetrics()
    this.#pump()
  }

  /** The 202 path: the publish is admitted, written and made durable, then answered. */
  async accept(msg: OutgoingMessage, deadlineMs: number): Promise<PublishResult> {
    const log = this.#log
    const messageId = msg.options.messageId
    if (!log) throw new SidecarError('SHUTTING_DOWN', 'The spool is closed', { messageId })
    await this.publisher.admit(msg, deadlineMs)
    const record = encodeRecord(msg, Date.now())
    if (log.bytes + record.length > this.maxBytes) {
      this.metrics.published.inc({ outcome: 'rejected' })
      throw new SidecarError('BUFFER_FULL', `The spool is full (${log.bytes} of ${this.maxBytes} bytes, publish.spool.maxBytes)`, { messageId })
    }
    try {
      await log.append(record)
    } catch (err) {
      this.metrics.published.inc({ outcome: 'rejected' })
      this.logger.error({ err: (err as Error).message, dir: this.dir }, 'could not write to the spool')
      throw new SidecarError('SPOOL_UNAVAILABLE', `The spool could not store the message: ${(err as Error).message}`, { messageId, cause: err })
    }
    this.metrics.published.inc({ outcome: 'accepted' })
    this.#publishMetrics()
    this.#pump()
    return { messageId, status: 'accepted' }
  }

  status(): SpoolStatus {
    let oldest = 0
    for (const v of this.#inFlight.values()) {
      oldest = v.appendedAt
      break
    }
    return {
      dir: this.dir,
      messages: this.#log?.records ?? 0,
      bytes: this.#log?.bytes ?? 0,
      maxBytes: this.maxBytes,
      oldestAgeSeconds: oldest === 0 ? 0 : Math.max(0, (Date.now() - oldest) / 1000),
    }
  }

  /**
   * Shutdown, step one: hand nothing more to the publisher and wait (up to the
   * deadline) for what it holds to be confirmed. Unconfirmed records stay on
   * disk for the next start.
   */
  async quiesce(deadlineMs: number): Promise<void> {
    this.#feeding = false
    const until = Date.now() + deadlineMs
    while (this.#inFlight.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20).unref())
  }

  async close(): Promise<void> {
    this.#feeding = false
    const log = this.#log
    this.#log = undefined
    const left = log?.records ?? 0
    await log?.close()
    if (left > 0) this.logger.info({ dir: this.dir, records: left }, 'the spool keeps unconfirmed messages on disk for the next start')
  }

  /** Keeps the publisher's window full, reading records in order. One pass at a time. */
  #pump(): void {
    this.#pumpAgain = true
    if (this.#pumping) return
    this.#pumping = true
    void (async () => {
      try {
        while (this.#pumpAgain && this.#feeding && this.#log) {
          this.#pumpAgain = false
          const room = SPOOL_WINDOW_MESSAGES - this.#inFlight.size
          const roomBytes = SPOOL_WINDOW_BYTES - this.#inFlightBytes
          if (room <= 0 || roomBytes <= 0) break
          const batch = await this.#log.read(room, roomBytes)
          for (const { record, ref } of batch) {
            const bytes = record.msg.content.length
            this.#inFlight.set(ref, { appendedAt: record.appendedAt, bytes })
            this.#inFlightBytes += bytes
            this.publisher.sendOwned(record.msg, (how) => this.#settled(ref, how))
          }
          if (batch.length > 0) this.#pumpAgain = true
        }
      } catch (err) {
        this.logger.error({ err: (err as Error).message, dir: this.dir }, 'could not read the spool; the records stay on disk for the next start')
      } finally {
        this.#pumping = false
      }
    })()
  }

  #settled(ref: RecordRef, how: Settlement): void {
    const held = this.#inFlight.get(ref)
    if (!held) return
    this.#inFlight.delete(ref)
    this.#inFlightBytes -= held.bytes
    // Abandoned (shutdown): the record stays on disk and is sent after the next start.
    if (how !== 'abandoned') this.#log?.release(ref)
    this.#publishMetrics()
    this.#pump()
  }

  #publishMetrics(): void {
    const s = this.status()
    this.metrics.spoolMessages.set(s.messages)
    this.metrics.spoolBytes.set(s.bytes)
  }
}
