/**
 * Request/reply over RabbitMQ's direct reply-to (DESIGN.md section 3).
 *
 * One confirm channel on the publish connection consumes the pseudo-queue
 * amq.rabbitmq.reply-to (noAck, as the broker requires) and publishes every
 * request with reply_to = amq.rabbitmq.reply-to: the broker routes a reply
 * only to the channel that published the request, so both must be the same
 * channel. Replies are matched to waiting requests by correlation_id.
 *
 *   queued --write--> written --reply--> 200
 *     |                  |----basic.return--> 422 UNROUTABLE
 *     |                  |----nack---------> 502 PUBLISH_NACKED
 *     |                  |----channel gone--> 504 RPC_OUTCOME_UNKNOWN, at once
 *     |                  '----deadline-----> 504 RPC_TIMEOUT
 *     '--deadline--> 504 RPC_TIMEOUT (never sent)
 *
 * A direct reply-to reply cannot outlive its channel, so a written request is
 * never re-sent after a reconnect: its reply would have nowhere to go. A
 * request still queued (the link was down when it came) waits for the next
 * channel while its deadline allows.
 */
import { randomUUID } from 'node:crypto'
import { IllegalOperationError, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type MessageProperties } from 'amqplib'
import { SidecarError, type ErrorCode } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics, RpcOutcome } from '../observe/metrics.js'
import { ExchangeRegistry } from '../publish/exchanges.js'
import { DIRECT_REPLY_TO } from '../publish/message.js'
import type { OutgoingMessage } from '../publish/publisher.js'
import { channelErrorCode } from '../upstream/classify.js'
import type { Upstream } from '../upstream/connection.js'

/** Pause before reopening a channel the broker closed while the connection stayed up. */
const REOPEN_DELAY_MS = 100

export interface RpcReply {
  content: Buffer
  properties: MessageProperties
}

type CallState = 'queued' | 'written' | 'done'

interface Call {
  correlationId: string
  msg: OutgoingMessage
  state: CallState
  startedAt: bigint
  deadlineMs: number
  timer: NodeJS.Timeout | undefined
  slot: Slot | undefined
  resolve: (r: RpcReply) => void
  reject: (e: SidecarError) => void
}

interface Slot {
  channel: ConfirmChannel
  connection: ChannelModel
  open: boolean
  written: Set<Call>
}

export class RpcClient {
  readonly #calls = new Map<string, Call>()
  #queue: Call[] = []
  #slot: Slot | undefined
  #opening = false
  #writing = false
  #closed = false
  readonly #exchanges = new ExchangeRegistry()
  readonly #log: Logger

  constructor(
    private readonly upstream: Upstream,
    private readonly maxOutstanding: number,
    private readonly metrics: Metrics,
    log: Logger,
  ) {
    this.#log = log.child({ part: 'rpc' })
    upstream.on('ready', (conn) => void this.#open(conn))
  }

  get outstanding(): number {
    return this.#calls.size
  }

  /**
   * Publishes the request and resolves with the reply; rejects with a
   * SidecarError carrying the documented status. Never waits past deadlineMs.
   */
  async call(msg: OutgoingMessage, deadlineMs: number): Promise<RpcReply> {
    const refuse = (code: ErrorCode, text?: string) => {
      this.metrics.rpc.inc({ outcome: 'rejected' })
      return new SidecarError(code, text, { messageId: msg.options.messageId })
    }
    if (this.#closed) throw refuse('SHUTTING_DOWN')
    if (this.upstream.state === 'blocked') throw refuse('UPSTREAM_BLOCKED', `The broker has blocked publishing: ${this.upstream.status().blockedReason}`)
    if (this.#calls.size >= this.maxOutstanding) throw refuse('RPC_BUSY', `${this.#calls.size} requests are waiting for replies (rpc.maxOutstanding)`)
    const correlationId = msg.options.correlationId ?? randomUUID()
    // Replies are matched by correlation id: two waiting requests must never share one.
    if (this.#calls.has(correlationId)) throw refuse('INVALID_REQUEST', 'X-Correlation-Id is already used by a request that is waiting for its reply')
    const deadlineAt = Date.now() + deadlineMs
    const conn = this.upstream.connection
    // A publish to a missing exchange would close the shared channel and lose every other reply.
    if (conn && !(await this.#exchanges.exists(conn, msg.exchange).catch(() => true))) throw refuse('EXCHANGE_NOT_FOUND', `The broker has no exchange "${msg.exchange}"`)
    if (this.#calls.has(correlationId)) throw refuse('INVALID_REQUEST', 'X-Correlation-Id is already used by a request that is waiting for its reply')
    if (this.#calls.size >= this.maxOutstanding) throw refuse('RPC_BUSY', `${this.#calls.size} requests are waiting for replies (rpc.maxOutstanding)`)
    msg.options.correlationId = correlationId
    msg.options.replyTo = DIRECT_REPLY_TO
    return new Promise<RpcReply>((resolve, reject) => {
      const call: Call = { correlationId, msg, state: 'queued', startedAt: process.hrtime.bigint(), deadlineMs, timer: undefined, slot: undefined, resolve, reject }
      call.timer = setTimeout(() => this.#onDeadline(call), Math.max(0, deadlineAt - Date.now()))
      this.#calls.set(correlationId, call)
      this.metrics.rpcOutstanding.set(this.#calls.size)
      this.#queue.push(call)
      void this.#write()
    })
  }

  /** Answers every waiting request and closes the channel; idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const call of [...this.#calls.values()]) {
      if (call.state === 'queued') this.#finish(call, this.#error(call, 'SHUTTING_DOWN', 'The sidecar shut down before the request was sent'), 'rejected')
      else this.#finish(call, this.#error(call, 'RPC_OUTCOME_UNKNOWN', 'The sidecar shut down while waiting for the reply; the request may have been processed'), 'unknown')
    }
    const slot = this.#slot
    this.#slot = undefined
    if (slot?.open) await slot.channel.close().catch(() => {})
  }

  async #open(connection: ChannelModel): Promise<void> {
    if (this.#closed || this.#opening || this.upstream.connection !== connection || (this.#slot?.open && this.#slot.connection === connection)) return
    this.#opening = true
    let slot: Slot | undefined
    try {
      const channel = await connection.createConfirmChannel()
      slot = { channel, connection, open: true, written: new Set() }
      const s = slot
      // Before amqplib's own close handler fails the confirm callbacks: a lost channel is "unknown", not a nack.
      channel.prependListener('close', () => this.#onClose(s))
      channel.on('error', (err: unknown) => this.#log.warn({ err: (err as Error).message, code: channelErrorCode(err) }, 'the broker closed the request/reply channel'))
      channel.on('return', (m: ConsumeMessage) => this.#onReturn(m))
      await channel.consume(DIRECT_REPLY_TO, (m) => this.#onReply(m), { noAck: true })
    } catch (err) {
      // The connection died meanwhile: 'ready' opens it again after the reconnect.
      this.#log.debug({ err: (err as Error).message }, 'could not open the request/reply channel')
      if (slot?.open) await slot.channel.close().catch(() => {})
      this.#opening = false
      this.#catchUp(connection)
      return
    }
    this.#opening = false
    this.#catchUp(connection)
    if (this.#closed) {
      await slot.channel.close().catch(() => {})
      return
    }
    if (!slot.open) return // closed while opening; #onClose or a newer 'ready' takes it from here
    this.#slot = slot
    void this.#write()
  }

  /** A 'ready' for a newer connection that came while this open was in flight was skipped: serve it now. */
  #catchUp(opened: ChannelModel): void {
    const current = this.upstream.connection
    if (current && current !== opened && !this.#closed) void this.#open(current)
  }

  async #write(): Promise<void> {
    if (this.#writing) return
    this.#writing = true
    try {
      while (this.#queue.length > 0) {
        const slot = this.#slot
        if (!slot?.open) return
        const call = this.#queue[0] as Call
        if (call.state !== 'queued') {
          this.#queue.shift()
          continue
        }
        if (!this.#exchanges.knownToExist(call.msg.exchange)) {
          // Queued while disconnected: check on this connection before risking the channel.
          const exists = await this.#exchanges.exists(slot.connection, call.msg.exchange).catch(() => undefined)
          if (exists === undefined) return // the connection is failing; 'ready' starts the writer again
          if (this.#queue[0] !== call || call.state !== 'queued') continue
          if (!exists) {
            this.#queue.shift()
            this.#finish(call, this.#error(call, 'EXCHANGE_NOT_FOUND', `The broker has no exchange "${call.msg.exchange}"`), 'rejected')
            continue
          }
          if (this.#slot !== slot || !slot.open) continue
        }
        this.#queue.shift()
        this.#send(slot, call)
      }
    } finally {
      this.#writing = false
    }
  }

  #send(slot: Slot, call: Call): void {
    const { msg } = call
    call.state = 'written'
    call.slot = slot
    slot.written.add(call)
    try {
      // The return value (amqplib's write buffer is full) is not waited on: rpc.maxOutstanding bounds what it holds.
      slot.channel.publish(msg.exchange, msg.routingKey, msg.content, msg.options, (err: unknown) => this.#onConfirm(slot, call, err))
    } catch (err) {
      slot.written.delete(call)
      call.slot = undefined
      call.state = 'queued'
      if (!(err instanceof IllegalOperationError)) {
        this.#finish(call, this.#error(call, 'INVALID_REQUEST', `The request could not be encoded: ${(err as Error).message}`), 'rejected')
        return
      }
      // The channel closed between the check and the write: send it on the next one.
      this.#queue.unshift(call)
    }
  }

  #onConfirm(slot: Slot, call: Call, err: unknown): void {
    if (call.state !== 'written' || call.slot !== slot) return
    // A positive confirm only says the broker took it; the reply (or the deadline) ends the call.
    if (err) this.#finish(call, this.#error(call, 'PUBLISH_NACKED', 'The broker nacked the request'), 'nacked')
  }

  #onReturn(m: ConsumeMessage): void {
    // basic.return comes before the confirm of the same message, on the same channel.
    const call = this.#calls.get(m.properties.correlationId as string)
    if (!call || call.state !== 'written') return
    const text = `No queue is bound for exchange "${call.msg.exchange}" with routing key "${call.msg.routingKey}"`
    this.#finish(call, this.#error(call, 'UNROUTABLE', text), 'unroutable')
  }

  #onReply(m: ConsumeMessage | null): void {
    if (m === null) return // a broker-side cancel; the channel is closing, and is reopened with it
    const call = this.#calls.get(m.properties.correlationId as string)
    if (!call || call.state !== 'written') {
      this.metrics.rpcLateReplies.inc()
      this.#log.debug({ correlationId: m.properties.correlationId }, 'a reply matched no waiting request; dropped')
      return
    }
    this.metrics.rpcDuration.observe(Number(process.hrtime.bigint() - call.startedAt) / 1e9)
    this.#finish(call, { content: m.content, properties: m.properties }, 'replied')
  }

  #onClose(slot: Slot): void {
    slot.open = false
    if (this.#slot === slot) this.#slot = undefined
    const lost = [...slot.written]
    slot.written.clear()
    for (const call of lost) {
      this.#finish(call, this.#error(call, 'RPC_OUTCOME_UNKNOWN', 'The broker connection dropped while waiting for the reply; the request may have been processed'), 'unknown')
    }
    if (lost.length > 0) this.#log.warn({ requests: lost.length }, 'the request/reply channel closed with requests waiting: answered 504 RPC_OUTCOME_UNKNOWN')
    // A channel-level close with the connection up: reopen it ourselves.
    const conn = this.upstream.connection
    if (!this.#closed && conn === slot.connection) setTimeout(() => void this.#open(conn), REOPEN_DELAY_MS).unref()
  }

  #onDeadline(call: Call): void {
    call.timer = undefined
    if (call.state === 'queued') {
      this.#finish(call, this.#error(call, 'RPC_TIMEOUT', `The deadline (${call.deadlineMs} ms) passed before the request could be sent (upstream ${this.upstream.state}); it was not sent`), 'timeout')
    } else if (call.state === 'written') {
      this.#finish(call, this.#error(call, 'RPC_TIMEOUT', `No reply within ${call.deadlineMs} ms; the request may have been processed`), 'timeout')
    }
  }

  #error(call: Call, code: ErrorCode, text: string): SidecarError {
    return new SidecarError(code, text, { messageId: call.msg.options.messageId })
  }

  #finish(call: Call, result: RpcReply | SidecarError, outcome: RpcOutcome): void {
    if (call.state === 'done') return
    const wasQueued = call.state === 'queued'
    call.state = 'done'
    if (call.timer) clearTimeout(call.timer)
    call.slot?.written.delete(call)
    if (wasQueued) {
      const i = this.#queue.indexOf(call)
      if (i >= 0) this.#queue.splice(i, 1)
    }
    this.#calls.delete(call.correlationId)
    this.metrics.rpcOutstanding.set(this.#calls.size)
    this.metrics.rpc.inc({ outcome })
    if (result instanceof SidecarError) call.reject(result)
    else call.resolve(result)
  }
}
