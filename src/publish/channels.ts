/**
 * The publish channels: which confirm channel the writer writes on, and how
 * channels come and go. One current channel per connection, opened on the
 * upstream's 'ready'; reopened after the broker closes it (a channel-level
 * error: the connection lives on); replaced by a fresh one after a nack
 * (rotate, see nack.ts), while the replaced one only waits for the confirms of
 * what was written on it and then closes (retiring). What to write and how a
 * message ends stay in the publisher; this module knows channels, not answers.
 */
import type { ChannelModel, ConfirmChannel } from 'amqplib'
import type { Logger } from '../observe/logger.js'
import type { Upstream } from '../upstream/connection.js'
import { channelErrorCode } from '../upstream/classify.js'
import type { ChannelSlot, Entry } from './entry.js'

/** Pause before reopening a publish channel the broker closed, so a persistent fault cannot spin. */
const REOPEN_DELAY_MS = 100
/** At most one fresh channel per this long after nacks, so a queue that nacks everything cannot churn channels. */
const ROTATE_MIN_INTERVAL_MS = 1_000
const noop = () => {}

export interface ChannelEvents {
  /** Writes may go on: a channel opened, drained its write buffer, or was kept after all. */
  writable(): void
  /** The broker closed `slot`; `written` were unconfirmed on it, in write order. */
  closed(slot: ChannelSlot, written: Entry[]): void
  /** A 404 closed a channel: what is known about exchanges may be stale. */
  notFound(): void
}

export class PublishChannels {
  #current: ChannelSlot | undefined
  /** Replaced after a nack; each closes once its unconfirmed messages are settled. */
  readonly #retiring = new Set<ChannelSlot>()
  #opening = false
  #lastRotateAt = 0
  #closed = false

  constructor(
    private readonly upstream: Upstream,
    private readonly log: Logger,
    private readonly events: ChannelEvents,
  ) {
    upstream.on('ready', (conn) => void this.#open(conn))
  }

  /** The channel to write on now, or undefined (none open, replaced, or its write buffer full). */
  writable(): ChannelSlot | undefined {
    const slot = this.#current
    return slot && this.isCurrent(slot) && slot.hasRoom ? slot : undefined
  }

  /** Still the channel to write on (checked again after an await). */
  isCurrent(slot: ChannelSlot): boolean {
    return slot === this.#current && slot.open && !slot.retiring
  }

  /**
   * The broker nacked on this channel: write on a fresh one from now on
   * (nack.ts says why that helps). At most once per interval.
   */
  rotate(slot: ChannelSlot): void {
    if (!this.isCurrent(slot) || this.#opening) return
    const now = Date.now()
    if (now - this.#lastRotateAt < ROTATE_MIN_INTERVAL_MS) return
    this.#lastRotateAt = now
    slot.retiring = true
    this.log.info('the broker nacked a publish: re-sending on a fresh channel')
    void this.#open(slot.connection)
  }

  /** Call after a confirm on `slot`: a retiring channel closes once nothing on it is unconfirmed. */
  settled(slot: ChannelSlot): void {
    if (!slot.retiring || slot === this.#current || slot.written.size > 0 || !slot.open) return
    this.#retiring.delete(slot)
    slot.open = false
    slot.channel.close().catch(noop)
  }

  /** Final: no more channels; hands back what was unconfirmed on each, then closes them. */
  async close(settle: (written: Entry[]) => void): Promise<void> {
    this.#closed = true
    const slots = [...this.#retiring, ...(this.#current ? [this.#current] : [])]
    this.#current = undefined
    this.#retiring.clear()
    for (const slot of slots) {
      settle([...slot.written])
      slot.open = false
      await slot.channel.close().catch(noop)
    }
  }

  async #open(connection: ChannelModel): Promise<void> {
    if (this.#closed || this.upstream.connection !== connection || this.#opening) return
    let channel: ConfirmChannel
    this.#opening = true
    try {
      channel = await connection.createConfirmChannel()
    } catch (err) {
      // The connection died under us; 'ready' fires again after the reconnect.
      this.log.warn({ err: (err as Error).message }, 'could not open the publish channel')
      // A channel replaced after a nack is better than none while its connection lives.
      const cur = this.#current
      if (cur?.retiring && cur.open && cur.connection === connection) {
        cur.retiring = false
        this.events.writable()
      }
      return
    } finally {
      this.#opening = false
    }
    const slot: ChannelSlot = { channel, connection, open: true, hasRoom: true, retiring: false, closeError: undefined, written: new Set(), byId: new Map() }
    // Prepended so it runs before amqplib's own close handler fails the confirm
    // callbacks: the entries are settled first, and those callbacks find them
    // re-queued instead of mistaking a lost channel for a nack.
    channel.prependListener('close', () => this.#onClose(slot))
    channel.on('error', (err: unknown) => {
      slot.closeError = err
      if (channelErrorCode(err) === 404) this.events.notFound()
      this.log.warn({ err: (err as Error).message, code: channelErrorCode(err) }, 'the broker closed the publish channel')
    })
    channel.on('return', (m: { properties: { messageId?: string } }) => {
      // A return precedes the ack of the same message; one copy per id is in flight.
      const entry = m.properties.messageId === undefined ? undefined : slot.byId.get(m.properties.messageId)
      if (entry) entry.returned = true
    })
    channel.on('drain', () => {
      slot.hasRoom = true
      this.events.writable()
    })
    if (this.#closed) {
      await channel.close().catch(noop)
      return
    }
    const old = this.#current
    this.#current = slot
    if (old && old.open) {
      old.retiring = true
      this.#retiring.add(old)
      this.settled(old)
    }
    this.events.writable()
  }

  #onClose(slot: ChannelSlot): void {
    slot.open = false
    this.#retiring.delete(slot)
    const wasCurrent = this.#current === slot
    if (wasCurrent) this.#current = undefined
    const written = [...slot.written]
    slot.written.clear()
    slot.byId.clear()
    this.events.closed(slot, written)
    // The connection is still up (a channel-level error): reopen the channel,
    // unless this one had already been replaced after a nack.
    const conn = this.upstream.connection
    if (!this.#closed && wasCurrent && conn && conn === slot.connection) {
      setTimeout(() => void this.#open(conn), REOPEN_DELAY_MS).unref()
    }
  }
}
