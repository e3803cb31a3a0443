/**
 * Publishing with honest answers (DESIGN.md sections 2 and 9).
 *
 * The publisher writes on raw confirm channels (channels.ts) instead of ACM's
 * ChannelWrapper, because an honest status needs facts the wrapper hides:
 * whether a message was written before the deadline (not written: it is
 * dropped, never sent late), which message a basic.return belongs to, and a
 * channel that can be reopened after a 404 without dropping the connection.
 *
 *   queued --write--> written --ack--> 200 (or 422 if returned first)
 *     |    ^             |----nack--> 502 once nack.ts gives up
 *     |    '--re-send----'--channel or connection died, or nacked (after a
 *     |                     backoff, on a fresh channel), deadline not passed
 *     '--deadline--> 504 (never sent again; 502 if its last copy was nacked)
 *
 * At-least-once: a message written on a channel that died before its confirm
 * is written again on the next channel (same message_id) while its deadline
 * allows, and answered by that copy's confirm. A copy the broker refuses for
 * good (404, 403, a refused property) is answered with that refusal, never
 * re-sent in a loop; if an earlier copy may have been published, the answer is
 * 504 unknown instead of a refusal that would be a lie.
 *
 * 202 messages (X-Ack: accepted) have no deadline: they are re-sent until
 * confirmed, and a refusal for good sends them to publish.deadLetter (see
 * settle.ts). Every message holds room in the PublishBuffer (bytes of body,
 * headers and properties) from accept until the broker settles it, except
 * spooled ones, which the spool bounds on disk.
 */
import { IllegalOperationError } from 'amqplib'
import { TIMED_OUT, withDeadline } from '../deadline.js'
import { SidecarError, type ErrorCode } from '../errors.js'
import { Expiries } from '../expiry.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics, PublishOutcome } from '../observe/metrics.js'
import type { Upstream } from '../upstream/connection.js'
import type { PublishBuffer } from './buffer.js'
import { judgeClosedChannel, refusalText } from './channel-close.js'
import { PublishChannels } from './channels.js'
import { heldBytes, newEntry, type AckMode, type ChannelSlot, type Entry, type OutgoingMessage, type PublishResult, type Settlement } from './entry.js'
import { ExchangeRegistry } from './exchanges.js'
import { judgeNack } from './nack.js'
import { Settler, type DeadLetterTarget } from './settle.js'

export type { AckMode, OutgoingMessage, PublishResult } from './entry.js'

/** A message written this many times without a confirm is given up (a loop guard; re-sends are normally few). */
const MAX_COPIES = 20
const noop = () => {}

export interface PublisherOptions {
  deadLetter?: DeadLetterTarget | null
  /** How long a nacked message is re-sent before the 502 (publish.nackRetryMs; nack.ts). */
  nackRetryMs?: number
}

/** Where 202 messages go instead of memory when publish.spool.dir is set (the Spool). */
export interface AcceptedStore {
  accept(msg: OutgoingMessage, deadlineMs: number): Promise<PublishResult>
}

export class Publisher {
  #queue: Entry[] = []
  /** 202 messages waiting out a nack before they are queued again. */
  #delayed = new Set<Entry>()
  readonly #channels: PublishChannels
  readonly #nackRetryMs: number
  #flushing = false
  #flushRequested = false
  #closed = false
  readonly #exchanges = new ExchangeRegistry()
  readonly #settle: Settler
  /** Confirm-mode deadlines: one timer per deadline length, not one per message (expiry.ts). */
  readonly #deadlines = new Expiries<Entry>((entry) => this.#onDeadline(entry))
  #store: AcceptedStore | undefined

  constructor(
    private readonly upstream: Upstream,
    private readonly buffer: PublishBuffer,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    opts: PublisherOptions = {},
  ) {
    this.#settle = new Settler(opts.deadLetter ?? null, buffer, metrics, log, this.#deadlines, (entry) => this.#enqueue(entry))
    this.#nackRetryMs = opts.nackRetryMs ?? 5_000
    this.#channels = new PublishChannels(upstream, log, {
      writable: () => this.#flush(),
      closed: (slot, written) => this.#onChannelClose(slot, written),
      notFound: () => this.#exchanges.clear(),
    })
    // Leaving 'blocked' (or reconnecting) may let queued messages go out.
    upstream.on('state', () => this.#flush())
  }

  /**
   * The checks every publish gets before it is held: shutting down, blocked,
   * an exchange the broker is known to refuse. Also used by the spool before
   * it writes a record, so a 202 is never given for what would be refused now.
   */
  async admit(msg: OutgoingMessage, deadlineMs: number): Promise<void> {
    const messageId = msg.options.messageId
    const fail = (code: ErrorCode, text?: string) => {
      this.#settle.count('rejected')
      return new SidecarError(code, text, { messageId })
    }
    if (this.#closed) throw fail('SHUTTING_DOWN')
    if (this.upstream.state === 'blocked') throw fail('UPSTREAM_BLOCKED', `The broker has blocked publishing: ${this.upstream.status().blockedReason}`)
    const refused = this.#exchanges.refusal(msg.exchange)
    if (refused) throw fail(refused, refusalText(refused, msg.exchange))
    const conn = this.upstream.connection
    // Checked before taking buffer room; when disconnected the writer checks it instead.
    if (conn && !this.#exchanges.knownToExist(msg.exchange)) {
      const checked = await withDeadline(this.#exchanges.exists(conn, msg.exchange).catch(() => undefined), Math.max(0, deadlineMs))
      if (checked === false) throw fail('EXCHANGE_NOT_FOUND', refusalText('EXCHANGE_NOT_FOUND', msg.exchange))
    }
  }

  /**
   * Publishes one message. Resolves with 200/202 semantics; rejects with a
   * SidecarError carrying the documented status. Never hangs past deadlineMs.
   */
  async publish(msg: OutgoingMessage, opts: { deadlineMs: number; mode: AckMode }): Promise<PublishResult> {
    if (opts.mode === 'accepted' && this.#store) return this.#store.accept(msg, opts.deadlineMs)
    const deadlineAt = Date.now() + opts.deadlineMs
    // Taken before admit's await, so the deadline counts from the request.
    const start = this.#deadlines.clock()
    await this.admit(msg, opts.deadlineMs)
    const held = heldBytes(msg)
    if (!this.buffer.tryReserve(held)) {
      this.#settle.count('rejected')
      throw new SidecarError('BUFFER_FULL', `The publish buffer is full (${this.buffer.messages} messages, ${this.buffer.bytes} bytes held for the broker)`, {
        messageId: msg.options.messageId,
      })
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const entry = newEntry(msg, opts.mode, opts.mode === 'accepted' ? Infinity : deadlineAt, held, resolve, reject)
      if (opts.mode === 'accepted') {
        this.#settle.answer(entry, { messageId: msg.options.messageId, status: 'accepted' }, 'accepted')
      } else {
        entry.expiry = this.#deadlines.add(entry, opts.deadlineMs, start)
      }
      this.#enqueue(entry)
    })
  }

  /**
   * Hands over a message the spool already answered 202 for and holds on
   * disk: no buffer room, no answer; `settled` says when the spool may
   * release its record.
   */
  sendOwned(msg: OutgoingMessage, settled: (how: Settlement) => void): void {
    const entry = newEntry(msg, 'accepted', Infinity, 0, noop, noop)
    entry.answered = true
    entry.settled = settled
    this.#enqueue(entry)
  }

  /** 202 messages go to this store (the durable spool) from now on. */
  useStore(store: AcceptedStore): void {
    this.#store = store
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
    const held = [...this.#queue.splice(0), ...this.#delayed]
    this.#delayed.clear()
    for (const entry of held) {
      this.#settle.finish(entry, new SidecarError('SHUTTING_DOWN', 'The sidecar shut down before the message was sent', { messageId: entry.msg.options.messageId }), 'rejected', 'abandoned')
    }
    await this.#channels.close((written) => {
      for (const entry of written) {
        this.#settle.finish(entry, this.#settle.unknown(entry, 'The sidecar shut down before the broker confirmed the message'), 'unknown', 'abandoned')
      }
    })
  }

  #enqueue(entry: Entry): void {
    this.#queue.push(entry)
    this.#flush()
  }

  /** The broker closed a publish channel: judge what was unconfirmed on it (channel-close.ts). */
  #onChannelClose(slot: ChannelSlot, written: Entry[]): void {
    const { verdicts, blamed } = judgeClosedChannel(written, slot.closeError)
    if (blamed) this.#exchanges.refuse(blamed.exchange, blamed.code)
    const requeue: Entry[] = []
    for (const v of verdicts) {
      const { entry } = v
      if (v.action === 'refuse') {
        this.#settle.refuse(entry, v.error)
      } else if (entry.answered && entry.mode === 'confirm') {
        // Already answered 504 at its deadline: the app owns the retry now.
        this.#settle.finish(entry, this.#settle.unknown(entry, ''), 'unknown', 'abandoned')
      } else if (entry.copies >= MAX_COPIES) {
        this.#settle.refuse(entry, new SidecarError('PUBLISH_OUTCOME_UNKNOWN', `The message was written ${entry.copies} times without a confirm; giving up`))
      } else {
        requeue.push(entry)
      }
    }
    if (requeue.length > 0) {
      this.metrics.publishResends.inc({ cause: 'channel_lost' }, requeue.length)
      this.#queue.unshift(...requeue)
    }
    this.#flush()
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
      const slot = this.#channels.writable()
      if (!slot || this.upstream.state === 'blocked') return
      const entry = this.#queue[0] as Entry
      if (entry.state === 'done') {
        this.#queue.shift()
        continue
      }
      const { msg } = entry
      const refused = this.#exchanges.refusal(msg.exchange)
      if (refused) {
        this.#remove(entry)
        this.#settle.refuse(entry, new SidecarError(refused, refusalText(refused, msg.exchange)))
        continue
      }
      if (!this.#exchanges.knownToExist(msg.exchange)) {
        // Queued while disconnected: check now, on this connection.
        const exists = await this.#exchanges.exists(slot.connection, msg.exchange).catch(() => undefined)
        if (exists === undefined) return // the connection is failing; 'ready' restarts the flush
        // The await let deadlines and channel closes run: look again at what is at the head.
        if (entry.state !== 'queued' || this.#queue[0] !== entry) continue
        if (!exists) {
          this.#remove(entry)
          this.#settle.refuse(entry, new SidecarError('EXCHANGE_NOT_FOUND', refusalText('EXCHANGE_NOT_FOUND', msg.exchange)))
          continue
        }
        if (!this.#channels.isCurrent(slot)) return
      }
      // One copy of an id in flight per channel (returns carry no sequence number);
      // an isolated message waits until nothing else is unconfirmed.
      if (slot.byId.has(msg.options.messageId)) return
      if (entry.isolate && slot.written.size > 0) return
      this.#queue.shift()
      entry.state = 'written'
      entry.nackedLast = false
      entry.channel = slot
      entry.copies++
      slot.written.add(entry)
      slot.byId.set(msg.options.messageId, entry)
      let hasRoom: boolean
      try {
        hasRoom = slot.channel.publish(msg.exchange, msg.routingKey, msg.content, msg.options, (err: unknown) => this.#onConfirm(slot, entry, err))
      } catch (err) {
        slot.written.delete(entry)
        slot.byId.delete(msg.options.messageId)
        entry.channel = undefined
        entry.state = 'queued'
        entry.copies--
        if (err instanceof IllegalOperationError) {
          // The channel closed between our check and the write: send it on the next one.
          this.#queue.unshift(entry)
          return
        }
        // amqplib could not encode this message: its fault alone, so refuse it and go on.
        this.#settle.refuse(entry, new SidecarError('INVALID_REQUEST', `The message could not be encoded: ${(err as Error).message}`))
        continue
      }
      // The broker must answer it: after an idle spell, no byte back means a dead flow (idle-meter.ts).
      this.upstream.expectAnswer()
      // amqplib's write buffer is full: wait for its 'drain' before writing more.
      if (!hasRoom) {
        slot.hasRoom = false
        return
      }
      if (entry.isolate) return
    }
  }

  #onConfirm(slot: ChannelSlot, entry: Entry, err: unknown): void {
    if (entry.state !== 'written' || entry.channel !== slot) return
    slot.written.delete(entry)
    slot.byId.delete(entry.msg.options.messageId)
    entry.channel = undefined
    entry.isolate = false
    const id = entry.msg.options.messageId
    if (err) {
      const verdict = judgeNack(entry, Date.now(), this.#nackRetryMs)
      if (verdict.action === 'retry') {
        entry.state = 'queued'
        this.#delayed.add(entry)
        this.metrics.publishResends.inc({ cause: 'nacked' })
        setTimeout(() => {
          if (this.#delayed.delete(entry)) this.#enqueue(entry)
        }, verdict.delayMs).unref()
        this.#channels.rotate(slot)
      } else {
        this.#settle.refuse(entry, this.#nacked(entry), 'nacked')
      }
    } else if (entry.returned) {
      this.#settle.refuse(
        entry,
        new SidecarError('UNROUTABLE', `No queue is bound for exchange "${entry.msg.exchange}" with routing key "${entry.msg.routingKey}"`, { messageId: id }),
        'unroutable',
      )
    } else {
      if (entry.mode === 'confirm') this.metrics.publishDuration.observe(Number(process.hrtime.bigint() - entry.startedAt) / 1e9)
      this.#settle.finish(entry, { messageId: id, status: 'confirmed' }, 'confirmed', 'published')
    }
    this.#channels.settled(slot)
    // Something held back behind this id, or behind an isolated message, may go now.
    if (this.#queue.length > 0) this.#flush()
  }

  #nacked(entry: Entry): SidecarError {
    const again = entry.nacks > 1 ? ` ${entry.nacks} times in ${Date.now() - entry.firstNackAt} ms (re-sent on a fresh channel in between)` : ''
    return new SidecarError('PUBLISH_NACKED', `The broker nacked the message${again}`, { messageId: entry.msg.options.messageId })
  }

  #onDeadline(entry: Entry): void {
    entry.expiry = undefined
    if (entry.state === 'queued') {
      // Not written now (never, or a dead channel's copy waiting to be re-sent):
      // drop it, so it cannot reach the broker after we said 504.
      this.#remove(entry)
      this.#delayed.delete(entry)
      if (entry.nackedLast) {
        // The broker's last word on it was a nack, and no copy is in flight.
        this.#settle.refuse(entry, this.#nacked(entry), 'nacked')
        this.#flush()
        return
      }
      const text = entry.maybePublished
        ? 'The connection to the broker was lost after the message was sent, and the deadline passed before a re-sent copy could be confirmed'
        : `The deadline passed before the message could be sent (upstream ${this.upstream.state}); it was not sent`
      this.#settle.finish(entry, this.#settle.unknown(entry, text), 'unknown', 'abandoned')
      // What waited behind it may be writable now.
      this.#flush()
    } else if (entry.state === 'written') {
      // Written: answer now, but keep its buffer room until the broker settles it.
      this.#settle.answer(entry, this.#settle.unknown(entry, 'The deadline passed before the broker confirmed the message'), 'unknown')
    }
  }

  #remove(entry: Entry): void {
    const i = this.#queue.indexOf(entry)
    if (i >= 0) this.#queue.splice(i, 1)
  }
}
