/**
 * HTTP push (consume.push): the sidecar POSTs each message to the app's URL.
 *
 *   2xx                          -> ack
 *   429, 5xx, response timeout   -> retry with full-jitter backoff (Retry-After honoured, capped)
 *   URL unreachable (refused,    -> pause the subscription, requeue, no attempt counted, probe,
 *     connect timeout, no route)    resume by itself (push-pause.ts)
 *   other 4xx, retries exhausted -> onGiveUp: "dead-letter" (nack requeue=false: the
 *                                   queue's dead-letter exchange gets it) or "requeue"
 *   shutdown while pushing       -> nack requeue=true (never dead-lettered by shutdown)
 *
 * Concurrency is the consumer's prefetch: the broker never gives us more
 * messages than calls we may have in flight. The body is the raw message;
 * message id, redelivered flag, routing key and AMQP headers travel as HTTP
 * headers, with X-Sidecar-Token so the app can check who is calling.
 */
import { readFileSync } from 'node:fs'
import type { ConsumeMessage } from 'amqplib'
import type { SidecarConfig } from '../config/index.js'
import type { PushSubscription } from '../config/types.js'
import { pushWithDefaults, type ResolvedPush } from '../config/consume-rules.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import type { SecretRegistry } from '../observe/redact.js'
import { Backoff } from '../upstream/backoff.js'
import type { Consumers } from './consumers.js'
import { headerText } from './delivery.js'
import type { ConsumerChannel, Lease } from './leases.js'
import { CONNECT_TIMEOUT_MS, PushPause, probeConnect, unreachableCode } from './push-pause.js'
import type { Subscription } from './subscription.js'

export const TOKEN_HEADER = 'x-sidecar-token'
/** The token file is re-read at most this often, so a rotated token applies without a restart. */
const TOKEN_TTL_MS = 5_000

export type PushOutcome = 'delivered' | 'throttled' | 'server-error' | 'timeout' | 'network-error' | 'client-error' | 'unreachable' | 'aborted'

export class PushWorker {
  readonly spec: ResolvedPush
  #sub: Subscription | undefined
  readonly #abort = new AbortController()
  readonly #inFlight = new Set<Promise<void>>()
  readonly #log: Logger
  #token: { value: string | null; readAt: number } | undefined
  #delivered = 0
  #gaveUp = 0
  readonly #pause: PushPause

  constructor(
    spec: Partial<PushSubscription> & { queue: string; url: string },
    private readonly consumers: Consumers,
    private readonly config: SidecarConfig,
    log: Logger,
    private readonly metrics: Metrics,
    private readonly secrets: SecretRegistry,
  ) {
    this.spec = pushWithDefaults(spec)
    this.#log = log.child({ push: this.spec.queue })
    this.#pause = new PushPause({
      queue: this.spec.queue,
      url: this.spec.url,
      log: this.#log,
      metrics,
      pauseConsumer: async () => this.#sub?.pause(),
      resumeConsumer: () => this.#sub?.resume(),
    })
  }

  start(): void {
    this.#sub = this.consumers.subscribe(this.spec.queue, this.spec.concurrency, {
      onMessage: (msg, channel) => this.#onMessage(msg, channel),
      onChannelClosed: (channel) => void this.consumers.leases.dropChannel(channel),
      onEvent: (e) => {
        if (e.type !== 'active') this.#log.warn({ event: e }, 'push consumer interrupted')
      },
    })
    void this.#sub.start()
  }

  status() {
    return { queue: this.spec.queue, url: this.spec.url, inFlight: this.#inFlight.size, delivered: this.#delivered, gaveUp: this.#gaveUp, ...this.#sub?.status(), ...this.#pause.status() }
  }

  /** Shutdown step 1: no new messages; calls in flight may finish during the drain. */
  async stopConsuming(): Promise<void> {
    // A probe must not resume consuming during the drain.
    this.#pause.close()
    await this.#sub?.pause()
  }

  /** Final: abort what is left (those messages are requeued) and close the channel. */
  async close(): Promise<void> {
    this.#pause.close()
    this.#abort.abort()
    await Promise.allSettled([...this.#inFlight])
    await this.#sub?.stop()
  }

  #onMessage(msg: ConsumeMessage, channel: ConsumerChannel): void {
    // Sent before the broker saw our cancel: give it straight back (the nack follows the cancel, so it goes elsewhere or waits).
    if (this.#pause.paused) return void channel.nack(msg, true)
    const lease = this.consumers.leases.add(channel, msg, { queue: this.spec.queue, via: 'push', leaseMs: null })
    const p = this.#deliver(lease).catch((err: unknown) => {
      this.#log.error({ err }, 'push delivery failed unexpectedly; requeueing')
      this.consumers.leases.release(lease.deliveryId)
    })
    this.#inFlight.add(p)
    void p.finally(() => this.#inFlight.delete(p))
  }

  async #deliver(lease: Lease): Promise<void> {
    const { retry } = this.spec
    const backoff = new Backoff(retry.initialDelayMs, retry.maxDelayMs)
    const attempts = Math.max(1, retry.maxAttempts)
    const leases = this.consumers.leases
    for (let attempt = 1; ; attempt++) {
      // The channel closed meanwhile: the broker redelivers it (redelivered=true); stop here.
      if (leases.get(lease.deliveryId) !== lease) return
      const { outcome, retryAfterMs, unreachableReason } = await this.#attempt(lease, attempt)
      // A delivery that found the subscription already paused made no call: nothing to count.
      if (unreachableReason !== 'paused') this.metrics.pushAttempts.inc({ outcome })
      if (outcome === 'delivered') {
        if (leases.ack(lease.deliveryId) === 'acked') this.#delivered++
        return
      }
      if (outcome === 'aborted') {
        leases.release(lease.deliveryId)
        return
      }
      if (outcome === 'unreachable') {
        // Not this message's fault: no attempt counted. Cancel first, so the requeued copy is not sent straight back.
        await this.#pause.pause(unreachableReason ?? 'unreachable')
        leases.release(lease.deliveryId)
        return
      }
      const retryable = outcome !== 'client-error'
      if (!retryable || attempt >= attempts) {
        this.#giveUp(lease, outcome, attempt)
        return
      }
      const wait = Math.min(retry.maxDelayMs, Math.max(backoff.next(), retryAfterMs ?? 0))
      if (!(await this.#sleep(wait))) {
        leases.release(lease.deliveryId)
        return
      }
    }
  }

  async #attempt(lease: Lease, attempt: number): Promise<{ outcome: PushOutcome; retryAfterMs?: number; unreachableReason?: string }> {
    if (this.#abort.signal.aborted) return { outcome: 'aborted' }
    // Paused by another delivery meanwhile: requeue without trying.
    if (this.#pause.paused) return { outcome: 'unreachable', unreachableReason: 'paused' }
    const timeout = AbortSignal.timeout(this.spec.timeoutMs)
    try {
      const res = await fetch(this.spec.url, {
        method: 'POST',
        headers: this.#headers(lease, attempt),
        // A copy with its own ArrayBuffer: what fetch's BodyInit type accepts.
        body: new Uint8Array(lease.msg.content),
        signal: AbortSignal.any([timeout, this.#abort.signal]),
        redirect: 'manual',
      })
      // Drain the body so the keep-alive socket can be reused.
      await res.arrayBuffer().catch(() => undefined)
      if (res.status >= 200 && res.status < 300) return { outcome: 'delivered' }
      if (res.status === 429) return { outcome: 'throttled', ...retryAfter(res.headers.get('retry-after')) }
      if (res.status >= 500) return { outcome: 'server-error' }
      this.#log.warn({ status: res.status, messageId: lease.msg.properties.messageId }, 'the app refused a pushed message')
      return { outcome: 'client-error' }
    } catch (err) {
      if (this.#abort.signal.aborted) return { outcome: 'aborted' }
      const code = unreachableCode(err)
      if (code !== undefined) return { outcome: 'unreachable', unreachableReason: code }
      if (!timeout.aborted) return { outcome: 'network-error' }
      // A response timeout counts as an attempt; a connect that never completes is an unreachable app.
      const reason = await probeConnect(this.spec.url, Math.min(this.spec.timeoutMs, CONNECT_TIMEOUT_MS))
      return reason === undefined ? { outcome: 'timeout' } : { outcome: 'unreachable', unreachableReason: reason }
    }
  }

  #headers(lease: Lease, attempt: number): Record<string, string> {
    const { msg } = lease
    const p = msg.properties
    const h: Record<string, string> = {
      'content-type': p.contentType ?? 'application/octet-stream',
      'x-queue': headerText(lease.queue),
      'x-exchange': headerText(msg.fields.exchange),
      'x-routing-key': headerText(msg.fields.routingKey),
      'x-redelivered': String(msg.fields.redelivered),
      'x-attempt': String(attempt),
    }
    if (p.messageId !== undefined) h['x-message-id'] = headerText(p.messageId)
    if (p.correlationId !== undefined) h['x-correlation-id'] = headerText(p.correlationId)
    if (p.contentEncoding !== undefined) h['content-encoding'] = headerText(p.contentEncoding)
    if (p.type !== undefined) h['x-type'] = headerText(p.type)
    if (p.replyTo !== undefined) h['x-reply-to'] = headerText(p.replyTo)
    for (const [k, v] of Object.entries(p.headers ?? {})) {
      if (/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(k)) h[`x-header-${k.toLowerCase()}`] = headerText(v)
    }
    const token = this.#readToken()
    if (token) h[TOKEN_HEADER] = token
    return h
  }

  #giveUp(lease: Lease, outcome: PushOutcome, attempts: number): void {
    const deadLetter = this.spec.onGiveUp === 'dead-letter'
    this.#gaveUp++
    this.#log.warn(
      { messageId: lease.msg.properties.messageId, outcome, attempts, onGiveUp: this.spec.onGiveUp },
      deadLetter ? 'giving up on a pushed message: rejected to the queue\'s dead-letter exchange (dropped if it has none)' : 'giving up on a pushed message: requeued',
    )
    this.consumers.leases.nack(lease.deliveryId, !deadLetter)
  }

  /** Resolves true after ms, false at once if the worker is closing. */
  #sleep(ms: number): Promise<boolean> {
    const signal = this.#abort.signal
    if (signal.aborted) return Promise.resolve(false)
    return new Promise((resolve) => {
      const onAbort = () => {
        clearTimeout(timer)
        resolve(false)
      }
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort)
        resolve(true)
      }, ms)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  #readToken(): string | null {
    const file = this.config.consume.pushTokenFile ?? this.config.api.tokenFile
    if (!file) return null
    const now = Date.now()
    if (this.#token && now - this.#token.readAt < TOKEN_TTL_MS) return this.#token.value
    let value: string | null = this.#token?.value ?? null
    try {
      value = readFileSync(file, 'utf8').trim() || null
      if (value) this.secrets.add(value)
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'could not read the push token file; keeping the previous token')
    }
    this.#token = { value, readAt: now }
    return value
  }
}

function retryAfter(v: string | null): { retryAfterMs?: number } {
  if (!v) return {}
  const s = Number(v)
  if (Number.isFinite(s) && s >= 0) return { retryAfterMs: s * 1000 }
  const at = Date.parse(v)
  return Number.isNaN(at) ? {} : { retryAfterMs: Math.max(0, at - Date.now()) }
}
