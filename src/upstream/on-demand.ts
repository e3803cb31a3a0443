/**
 * Opens a connection only while something uses it. A sidecar whose app only
 * publishes (the common case) never opens its consume connection, so each
 * such pod costs the broker one connection, not two. The first user (a
 * WebSocket subscription, a pull queue, a push worker) opens it; it closes
 * `idleMs` after the last user went away, so an app that subscribes again
 * soon (a pull loop, a reconnecting WebSocket client) does not pay a new
 * AMQP handshake each time.
 *
 *   idle --users > 0--> open --users = 0--> (idleMs) --> idle
 */
import type { Logger } from '../observe/logger.js'
import type { Upstream } from './connection.js'

export class OnDemandConnection {
  #users = 0
  #timer: NodeJS.Timeout | undefined
  #closed = false

  constructor(
    private readonly upstream: Upstream,
    private readonly idleMs: number,
    private readonly log: Logger,
  ) {}

  get users(): number {
    return this.#users
  }

  /** How many things use the connection now; called after every change. Idempotent. */
  setUsers(users: number): void {
    if (this.#closed) return
    const before = this.#users
    this.#users = users
    if (users > 0) {
      this.#cancelTimer()
      if (this.upstream.state === 'idle') {
        this.log.info({ connection: this.upstream.role }, 'opening the connection for the first consumer')
        this.upstream.start()
      }
      return
    }
    if (before > 0 || this.#timer === undefined) this.#arm()
  }

  /** Shutdown: no more opening or closing; the sidecar closes the upstream itself. */
  close(): void {
    this.#closed = true
    this.#cancelTimer()
  }

  #arm(): void {
    this.#cancelTimer()
    if (this.upstream.state === 'idle') return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      if (this.#users === 0 && !this.#closed) void this.upstream.stop()
    }, this.idleMs)
    // Never keeps the process alive; cleared on close().
    this.#timer.unref()
  }

  #cancelTimer(): void {
    if (this.#timer === undefined) return
    clearTimeout(this.#timer)
    this.#timer = undefined
  }
}
