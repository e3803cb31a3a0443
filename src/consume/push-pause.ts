/**
 * Safe push: an app URL that cannot be reached at all is not the message's
 * fault. Connection refused, a connect that times out, no route or no such
 * host pause the push subscription instead of spending its attempts (the app
 * is starting, restarting, or not deployed yet: a native sidecar is ready
 * before its app). While paused:
 *
 *   - the consumer is cancelled and in-flight deliveries are requeued (nack
 *     requeue=true), no attempt counted, so nothing is dead-lettered for it;
 *   - the URL is probed with a TCP connect, with backoff (full jitter, up to
 *     PROBE_MAX_MS), so the sidecar notices the app within a few seconds;
 *   - /v1/status (consumers.push[].paused) and amqp_sidecar_push_paused{queue} show it.
 *
 * The first successful connect resumes consuming. Only answers (429/5xx) and
 * response timeouts count as attempts (DESIGN.md section 3).
 */
import { connect } from 'node:net'
import type { Logger } from '../observe/logger.js'
import type { Metrics } from '../observe/metrics.js'
import { Backoff } from '../upstream/backoff.js'

/** First probe window; the window doubles up to PROBE_MAX_MS. */
const PROBE_INITIAL_MS = 250
/** Longest wait between probes: how late, at worst, a returning app is noticed. */
const PROBE_MAX_MS = 5_000
/** A TCP connect that has not completed in this long counts as a connect timeout. */
export const CONNECT_TIMEOUT_MS = 3_000

/** Socket error codes meaning "nothing is listening there", not "the app answered badly". */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT', 'EADDRNOTAVAIL'])

/** The socket code when a fetch() failure means the URL cannot be reached at all; else undefined. */
export function unreachableCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && UNREACHABLE_CODES.has(code)) return code
    // Happy eyeballs (localhost -> ::1 and 127.0.0.1) fails with an AggregateError of both attempts.
    const inner = (e as { errors?: unknown[] }).errors
    if (Array.isArray(inner)) {
      const codes = inner.map((x) => (x as { code?: unknown }).code)
      const first = codes.find((c): c is string => typeof c === 'string' && UNREACHABLE_CODES.has(c))
      if (first !== undefined && codes.every((c) => typeof c === 'string' && UNREACHABLE_CODES.has(c))) return first
    }
    e = (e as { cause?: unknown }).cause
  }
  return undefined
}

/** Resolves undefined when a TCP connection to the URL's host and port opens, else the reason. */
export function probeConnect(url: string, timeoutMs = CONNECT_TIMEOUT_MS): Promise<string | undefined> {
  const u = new URL(url)
  const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80))
  const host = u.hostname.replace(/^\[|\]$/g, '')
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: timeoutMs })
    const done = (reason: string | undefined) => {
      socket.destroy()
      resolve(reason)
    }
    socket.once('connect', () => done(undefined))
    socket.once('timeout', () => done('connect-timeout'))
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message))
  })
}

export interface PushPauseOptions {
  queue: string
  url: string
  log: Logger
  metrics: Metrics
  /** Stop deliveries (basic.cancel); resolves once the broker will send no more. */
  pauseConsumer(): Promise<void>
  /** Deliver again. */
  resumeConsumer(): void
}

export class PushPause {
  #paused: { since: string; cause: string; probes: number } | undefined
  /** Resolves when the consumer is cancelled: releases wait for it, so requeued messages are not sent straight back to us. */
  #cancelled: Promise<void> = Promise.resolve()
  #timer: NodeJS.Timeout | undefined
  #closed = false
  readonly #backoff = new Backoff(PROBE_INITIAL_MS, PROBE_MAX_MS)
  #pauses = 0

  constructor(private readonly opts: PushPauseOptions) {
    opts.metrics.pushPaused.set({ queue: opts.queue }, 0)
  }

  get paused(): boolean {
    return this.#paused !== undefined
  }

  status() {
    return { paused: this.#paused !== undefined, pausedSince: this.#paused?.since ?? null, pauseCause: this.#paused?.cause ?? null, probes: this.#paused?.probes ?? 0, pauses: this.#pauses }
  }

  /** The app cannot be reached: pause (once) and start probing. Resolves when the consumer is cancelled. */
  pause(cause: string): Promise<void> {
    if (this.#closed) return this.#cancelled
    if (this.#paused) return this.#cancelled
    this.#paused = { since: new Date().toISOString(), cause, probes: 0 }
    this.#pauses++
    this.opts.metrics.pushPaused.set({ queue: this.opts.queue }, 1)
    this.opts.log.warn({ cause }, 'the push URL cannot be reached: pausing this push subscription (in-flight messages requeued, no attempt counted) and probing it')
    this.#cancelled = this.opts.pauseConsumer().catch(() => {})
    this.#backoff.reset()
    this.#schedule()
    return this.#cancelled
  }

  /** Stops probing for good (shutdown); the subscription stays as it is. */
  close(): void {
    this.#closed = true
    if (this.#timer) clearTimeout(this.#timer)
    this.#timer = undefined
  }

  #schedule(): void {
    if (this.#closed || !this.#paused) return
    this.#timer = setTimeout(() => void this.#probe(), this.#backoff.next())
    this.#timer.unref()
  }

  async #probe(): Promise<void> {
    this.#timer = undefined
    const state = this.#paused
    if (this.#closed || !state) return
    const reason = await probeConnect(this.opts.url)
    state.probes++
    if (this.#closed) return
    if (reason !== undefined) {
      this.opts.log.debug({ reason, probes: state.probes }, 'push URL still unreachable')
      return this.#schedule()
    }
    await this.#cancelled
    this.#paused = undefined
    this.opts.metrics.pushPaused.set({ queue: this.opts.queue }, 0)
    this.opts.log.info({ pausedSince: state.since, probes: state.probes }, 'the push URL answers again: resuming this push subscription')
    this.opts.resumeConsumer()
  }
}
