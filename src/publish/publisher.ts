/**
 * Publishing with honest answers (DESIGN.md section 2).
 *
 * The publisher owns a raw confirm channel per connection instead of ACM's
 * ChannelWrapper, because an honest status needs facts the wrapper hides:
 * whether a message was written before the deadline (not written: it is
 * dropped, never sent late), which message a basic.return belongs to, and a
 * channel that can be reopened after a 404 without dropping the connection.
 *
 *   queued --write--> written --ack--> 200 (or 422 if returned first)
 *     |                  |----nack--> 502
 *     |                  '--channel closed / deadline--> 504 unknown
 *     '--deadline--> 504 (never sent)
 *
 * Every message holds room in the PublishBuffer from accept until the broker
 * settles it, so memory stays bounded even for answered (504) messages.
 * X-Ack: accepted messages (202) have no deadline: they survive reconnects
 * and are re-sent when a channel dies under them (at-least-once).
 */
import { IllegalOperationError, type ChannelModel, type ConfirmChannel, type Options } from 'amqplib'
import { TIMED_OUT, withDeadline } from '../deadline.js'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics, PublishOutcome } from '../observe/metrics.js'
import type { Upstream } from '../upstream/connection.js'
import { channelErrorCode, missingExchangeOf } from '../upstream/classify.js'
import type { PublishBuffer } from './buffer.js'
import { ExchangeRegistry } from './exchanges.js'

export interface OutgoingMessage {
  exchange: string
  routingKey: string
  content: Buffer
  /** amqplib publish options; messageId is always set. */
  options: Options.Publish & { messageId: string; mandatory: boolean }
}

export type AckMode = 'confirm' | 'accepted'

export interface PublishResult {
  messageId: string
  status: 'confirmed' | 'accepted'
}

type EntryState = 'queued' | 'written' | 'done'

interface Entry {
  msg: OutgoingMessage
  mode: AckMode
  state: EntryState
  startedAt: bigint
  answered: boolean
  returned: boolean
  channel: ChannelSlot | undefined
  timer: NodeJS.Timeout | undefined
  resolve: (r: PublishResult) => void
  reject: (e: SidecarError) => void
}

/** One confirm channel and what was written on it. */
interface ChannelSlot {
  channel: ConfirmChannel
  connection: ChannelModel
  open: boolean
  /** False after amqplib's publish() said its write buffer is full, until 'drain'. */
  hasRoom: boolean
  /** The broker's reason, when it closed this channel ('error' comes before 'close'). */
  closeError: unknown
  written: Set<Entry>
}

/** Pause before reopening a publish channel the broker closed, so a persistent fault cannot spin. */
const REOPEN_DELAY_MS = 100
const noop = () => {}

export class Publisher {
  #queue: Entry[] = []
  #slot: ChannelSlot | undefined
  #flushing = false
  #flushRequested = false
  #closed = false
  readonly #exchanges = new ExchangeRegistry()

  constructor(
    private readonly upstream: Upstream,
    private readonly buffer: PublishBuffer,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    upstream.on('ready', (conn) => void this.#openChannel(conn))
    // Leaving 'blocked' (or reconnecting) may let queued messages go out.
    upstream.on('state', () => this.#flush())
  }

  /**
   * Publishes one message. Resolves with 200/202 semantics; rejects with a
   * SidecarError carrying the documented status. Never hangs past deadlineMs.
   */
  async publish(msg: OutgoingMessage, opts: { deadlineMs: number; mode: AckMode }): Promise<PublishResult> {
    const messageId = msg.options.messageId
    const fail = (code: ConstructorParameters<typeof SidecarError>[0], text?: string) => {
      this.#count('rejected')
      return new SidecarError(code, text, { messageId })
    }
    if (this.#closed) throw fail('SHUTTING_DOWN')
    if (this.upstream.state === 'blocked') throw fail('UPSTREAM_BLOCKED', `The broker has blocked publishing: ${this.upstream.status().blockedReason}`)
    const deadlineAt = Date.now() + opts.deadlineMs
    const conn = this.upstream.connection
    // Checked before taking buffer room; when disconnected the writer checks it instead.
    if (conn && !this.#exchanges.knownToExist(msg.exchange)) {
      const checked = await withDeadline(this.#exchanges.exists(conn, msg.exchange).catch(() => undefined), Math.max(0, deadlineAt - Date.now()))
      const exists = checked === TIMED_OUT ? undefined : checked
      if (exists === false) throw fail('EXCHANGE_NOT_FOUND', `The broker has no exchange "${msg.exchange}"`)
    }
    if (!this.buffer.tryReserve(msg.content.length)) {
      throw fail('BUFFER_FULL', `The publish buffer is full (${this.buffer.messages} messages, ${this.buffer.bytes} bytes held for the broker)`)
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const entry: Entry = {
        msg,
        mode: opts.mode,
        state: 'queued',
        startedAt: process.hrtime.bigint(),
        answered: false,
        returned: false,
        channel: undefined,
        timer: undefined,
        resolve,
        reject,
      }
      if (opts.mode === 'accepted') {
        this.#answer(entry, { messageId, status: 'accepted' }, 'accepted')
      } else {
        const remaining = Math.max(0, deadlineAt - Date.now())
        entry.timer = setTimeout(() => this.#onDeadline(entry), remaining)
      }
      this.#queue.push(entry)
      this.#flush()
    })
  }

  /** Resolves when nothing is queued or unconfirmed, or when the deadline passes. */
  async drain(deadlineMs: number): Promise<boolean> {
    const until = Date.now() + deadlineMs
    while (this.buffer.messages > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 20).unref())
    }
    return this.buffer.messages === 0
  }

  /** Refuses new publishes and answers everything still held; idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const entry of this.#queue.splice(0)) {
      this.#finish(entry, new SidecarError('SHUTTING_DOWN', 'The sidecar shut down before the message was sent', { messageId: entry.msg.options.messageId }), 'rejected')
    }
    const slot = this.#slot
    this.#slot = undefined
    if (slot) {
      for (const entry of slot.written) this.#finish(entry, this.#unknown(entry, 'The sidecar shut down before the broker confirmed the message'), 'unknown')
      slot.open = false
      await slot.channel.close().catch(noop)
    }
  }

  async #openChannel(connection: ChannelModel): Promise<void> {
    if (this.#closed || this.upstream.connection !== connection) return
    let channel: ConfirmChannel
    try {
      channel = await connection.createConfirmChannel()
    } catch (err) {
      // The connection died under us; 'ready' fires again after the reconnect.
      this.log.warn({ err: (err as Error).message }, 'could not open the publish channel')
      return
    }
    const slot: ChannelSlot = { channel, connection, open: true, hasRoom: true, closeError: undefined, written: new Set() }
    // Prepended so it runs before amqplib's own close handler fails the confirm
    // callbacks: the entries are settled as "unknown" first, and those callbacks
    // find them done instead of mistaking a lost channel for a nack.
    channel.prependListener('close', () => this.#onChannelClose(slot))
    channel.on('error', (err: unknown) => {
      slot.closeError = err
      if (channelErrorCode(err) === 404) this.#exchanges.clear()
      this.log.warn({ err: (err as Error).message, code: channelErrorCode(err) }, 'the broker closed the publish channel')
    })
    channel.on('return', (m: { fields: { exchange: string; routingKey: string }; properties: { messageId?: string } }) => this.#onReturn(slot, m))
    channel.on('drain', () => {
      slot.hasRoom = true
      this.#flush()
    })
    if (this.#closed) {
      await channel.close().catch(noop)
      return
    }
    this.#slot = slot
    this.#flush()
  }

  #onChannelClose(slot: ChannelSlot): void {
    slot.open = false
    if (this.#slot === slot) this.#slot = undefined
    // Write order (a Set iterates in insertion order).
    const written = [...slot.written]
    slot.written.clear()
    // A 404 names the missing exchange (deleted while we still trusted it). The
    // broker processed everything before the first message to it (outcome
    // unknown: routed, confirm lost), refused that one, and discarded every
    // frame after it until close-ok: those were never published, so they are
    // sent again on the next channel instead of being answered 504.
    const missing = missingExchangeOf(slot.closeError)
    const culprit = missing === undefined ? -1 : written.findIndex((e) => e.msg.exchange === missing)
    const resend: Entry[] = []
    written.forEach((entry, i) => {
      entry.channel = undefined
      if (i === culprit) {
        this.#finish(entry, new SidecarError('EXCHANGE_NOT_FOUND', `The broker has no exchange "${entry.msg.exchange}"`, { messageId: entry.msg.options.messageId }), 'rejected')
      } else if ((culprit >= 0 && i > culprit) || entry.mode === 'accepted') {
        // Not published (discarded after the refusal), or already answered 202 and
        // owned by the sidecar: send it again (at-least-once).
        entry.state = 'queued'
        entry.returned = false
        resend.push(entry)
      } else {
        this.#finish(entry, this.#unknown(entry, 'The channel to the broker closed after the message was sent'), 'unknown')
      }
    })
    this.#queue.unshift(...resend)
    // The connection is still up (a channel-level error): reopen the channel.
    const conn = this.upstream.connection
    if (!this.#closed && conn && conn === slot.connection) {
      setTimeout(() => void this.#openChannel(conn), REOPEN_DELAY_MS).unref()
    }
  }

  #onReturn(slot: ChannelSlot, m: { fields: { exchange: string; routingKey: string }; properties: { messageId?: string } }): void {
    // A return precedes the ack of the same message, and returns arrive in publish order.
    for (const entry of slot.written) {
      if (!entry.returned && entry.msg.options.messageId === m.properties.messageId && entry.msg.exchange === m.fields.exchange && entry.msg.routingKey === m.fields.routingKey) {
        entry.returned = true
        return
      }
    }
  }

  /**
   * Starts the writer, or asks the running one for another pass. The request
   * flag closes the gap where a message is queued while the writer is
   * finishing its last await and would otherwise wait for the next event.
   */
  #flush(): void {
    this.#flushRequested = true
    if (this.#flushing) return
    this.#flushing = true
    void (async () => {
      try {
        while (this.#flushRequested) {
          this.#flushRequested = false
          await this.#writeQueued()
        }
      } finally {
        this.#flushing = false
      }
    })()
  }

  async #writeQueued(): Promise<void> {
    while (this.#queue.length > 0) {
      const slot = this.#slot
      if (!slot || !slot.open || !slot.hasRoom || this.upstream.state === 'blocked') return
      const entry = this.#queue[0] as Entry
      if (entry.state === 'done') {
        this.#queue.shift()
        continue
      }
      const { msg } = entry
      if (!this.#exchanges.knownToExist(msg.exchange)) {
        // Queued while disconnected: check now, on this connection.
        const exists = await this.#exchanges.exists(slot.connection, msg.exchange).catch(() => undefined)
        if (exists === undefined) return // the connection is failing; 'ready' restarts the flush
        if (!exists) {
          this.#queue.shift()
          this.#finish(entry, new SidecarError('EXCHANGE_NOT_FOUND', `The broker has no exchange "${msg.exchange}"`, { messageId: msg.options.messageId }), 'rejected')
          continue
        }
        if (this.#slot !== slot || !slot.open) return
        if (this.#queue[0] !== entry) continue
      }
      this.#queue.shift()
      entry.state = 'written'
      entry.channel = slot
      slot.written.add(entry)
      let hasRoom: boolean
      try {
        hasRoom = slot.channel.publish(msg.exchange, msg.routingKey, msg.content, msg.options, (err: unknown) => this.#onConfirm(slot, entry, err))
      } catch (err) {
        slot.written.delete(entry)
        entry.channel = undefined
        if (err instanceof IllegalOperationError) {
          // The channel closed between our check and the write: send it on the next one.
          entry.state = 'queued'
          this.#queue.unshift(entry)
          return
        }
        // amqplib could not encode this message: its fault alone, so refuse it and go on.
        entry.state = 'queued'
        this.#finish(entry, new SidecarError('INVALID_REQUEST', `The message could not be encoded: ${(err as Error).message}`, { messageId: msg.options.messageId }), 'rejected')
        continue
      }
      // amqplib's write buffer is full: wait for its 'drain' before writing more.
      if (!hasRoom) {
        slot.hasRoom = false
        return
      }
    }
  }

  #onConfirm(slot: ChannelSlot, entry: Entry, err: unknown): void {
    if (entry.state !== 'written' || entry.channel !== slot) return
    slot.written.delete(entry)
    const id = entry.msg.options.messageId
    if (err) {
      this.#finish(entry, new SidecarError('PUBLISH_NACKED', undefined, { messageId: id }), 'nacked')
    } else if (entry.returned) {
      this.#finish(
        entry,
        new SidecarError('UNROUTABLE', `No queue is bound for exchange "${entry.msg.exchange}" with routing key "${entry.msg.routingKey}"`, { messageId: id }),
        'unroutable',
      )
    } else {
      this.metrics.publishDuration.observe(Number(process.hrtime.bigint() - entry.startedAt) / 1e9)
      this.#finish(entry, { messageId: id, status: 'confirmed' }, 'confirmed')
    }
  }

  #onDeadline(entry: Entry): void {
    entry.timer = undefined
    if (entry.state === 'queued') {
      // Never written: drop it, so it cannot reach the broker after we said 504.
      const i = this.#queue.indexOf(entry)
      if (i >= 0) this.#queue.splice(i, 1)
      // What waited behind it may be writable now.
      this.#flush()
      this.#finish(entry, this.#unknown(entry, `The deadline passed before the message could be sent (upstream ${this.upstream.state}); it was not sent`), 'unknown')
    } else if (entry.state === 'written') {
      // Written: answer now, but keep its buffer room until the broker settles it.
      this.#answer(entry, this.#unknown(entry, 'The deadline passed before the broker confirmed the message'), 'unknown')
    }
  }

  #unknown(entry: Entry, text: string): SidecarError {
    return new SidecarError('PUBLISH_OUTCOME_UNKNOWN', `${text}; retry with the same X-Message-Id`, { messageId: entry.msg.options.messageId })
  }

  /** Final state: answers the app (if not yet), frees the buffer room, stops the timer. */
  #finish(entry: Entry, result: PublishResult | SidecarError, outcome: PublishOutcome): void {
    if (entry.state === 'done') return
    const wasAccepted = entry.mode === 'accepted'
    entry.state = 'done'
    if (entry.timer) clearTimeout(entry.timer)
    this.buffer.release(entry.msg.content.length)
    if (wasAccepted && result instanceof SidecarError) {
      // The app was already told 202; all that is left is to say it loudly.
      this.metrics.acceptedDropped.inc({ outcome })
      this.log.error({ messageId: entry.msg.options.messageId, exchange: entry.msg.exchange, routingKey: entry.msg.routingKey, code: result.code }, 'a message accepted with 202 was not published')
      return
    }
    this.#answer(entry, result, outcome)
  }

  #answer(entry: Entry, result: PublishResult | SidecarError, outcome: PublishOutcome): void {
    if (entry.answered) return
    entry.answered = true
    this.#count(outcome)
    if (result instanceof SidecarError) entry.reject(result)
    else entry.resolve(result)
  }

  #count(outcome: PublishOutcome): void {
    this.metrics.published.inc({ outcome })
  }
}
