/**
 * One message the publisher holds, from accept until the broker settles it,
 * and what the publisher knows about its copies. Kept apart from the writer so
 * the rules about a message (how many bytes it holds, whether an earlier copy
 * may have been published) read in one place.
 */
import type { ConfirmChannel, ChannelModel, Options } from 'amqplib'
import type { SidecarError } from '../errors.js'
import type { ExpiryEntry } from '../expiry.js'

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

/** How an entry ended, for whoever owns it beyond the app's answer (the spool). */
export type Settlement = 'published' | 'refused' | 'abandoned'

export interface Entry {
  readonly msg: OutgoingMessage
  readonly mode: AckMode
  state: 'queued' | 'written' | 'done'
  readonly startedAt: bigint
  /** Epoch ms after which a confirm-mode message is not written again; Infinity for 202 messages. */
  readonly deadlineAt: number
  answered: boolean
  returned: boolean
  channel: ChannelSlot | undefined
  /** Its place in the publisher's deadline list (confirm mode only). */
  expiry: ExpiryEntry<Entry> | undefined
  /** Bytes held in the PublishBuffer (0 when the spool bounds the message instead). */
  held: number
  /** Copies written so far. */
  copies: number
  /** A copy was written on a channel that died before its confirm: the broker may hold it. */
  maybePublished: boolean
  /** Write alone, once nothing else is unconfirmed, so a channel error is pinned on it exactly. */
  isolate: boolean
  /** Nacks seen so far (a nacked message is re-sent for a while: nack.ts). */
  nacks: number
  /** Epoch ms of the first nack, 0 if none: the re-send window counts from it. */
  firstNackAt: number
  /** The last copy written was nacked (and none written since): its deadline answers 502, not 504. */
  nackedLast: boolean
  /** A copy sent to publish.deadLetter: if that is refused too, it is only logged. */
  readonly deadLetter: boolean
  resolve: (r: PublishResult) => void
  reject: (e: SidecarError) => void
  /** Called once when the entry is done (the spool releases its record). */
  settled: ((how: Settlement) => void) | undefined
}

/** One confirm channel and what was written on it. */
export interface ChannelSlot {
  channel: ConfirmChannel
  connection: ChannelModel
  open: boolean
  /** False after amqplib's publish() said its write buffer is full, until 'drain'. */
  hasRoom: boolean
  /** The broker's reason, when it closed this channel ('error' comes before 'close'). */
  closeError: unknown
  /**
   * Nothing more is written here: the broker nacked on it and a fresh channel
   * is being opened (nack.ts). It closes once its unconfirmed entries settle.
   */
  retiring: boolean
  /** Unconfirmed entries in write order (a Set iterates in insertion order). */
  written: Set<Entry>
  /**
   * The unconfirmed entry per message id. At most one copy of an id is in
   * flight on a channel, so a basic.return (which carries no sequence number)
   * is matched to exactly one message.
   */
  byId: Map<string, Entry>
}

const PROPERTY_OVERHEAD_BYTES = 64

/**
 * What a message really holds in memory: body, header table and properties.
 * The bound counts this, so messages with large headers and empty bodies
 * cannot grow memory past it.
 */
export function heldBytes(msg: OutgoingMessage): number {
  let n = msg.content.length + PROPERTY_OVERHEAD_BYTES + msg.exchange.length + msg.routingKey.length
  const o = msg.options
  for (const k of ['messageId', 'correlationId', 'replyTo', 'type', 'appId', 'contentType', 'contentEncoding', 'expiration'] as const) {
    const v = o[k]
    if (typeof v === 'string') n += v.length
  }
  if (o.headers) {
    for (const key in o.headers) {
      const v: unknown = o.headers[key]
      n += key.length + 8 + (typeof v === 'string' ? v.length : 8)
    }
  }
  return n
}

export function newEntry(
  msg: OutgoingMessage,
  mode: AckMode,
  deadlineAt: number,
  held: number,
  resolve: (r: PublishResult) => void,
  reject: (e: SidecarError) => void,
): Entry {
  return {
    msg,
    mode,
    state: 'queued',
    startedAt: process.hrtime.bigint(),
    deadlineAt,
    answered: false,
    returned: false,
    channel: undefined,
    expiry: undefined,
    held,
    copies: 0,
    maybePublished: false,
    isolate: false,
    nacks: 0,
    firstNackAt: 0,
    nackedLast: false,
    deadLetter: false,
    resolve,
    reject,
    settled: undefined,
  }
}
