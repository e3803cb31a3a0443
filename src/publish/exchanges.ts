/**
 * Knows which exchanges exist. Publishing to a missing exchange makes the
 * broker close the channel with 404, which would turn every other in-flight
 * publish on it into an unknown outcome. So each exchange an app names is
 * checked once (passive declare on a throwaway channel) and cached.
 */
import type { ChannelModel } from 'amqplib'
import { channelErrorCode } from '../upstream/classify.js'

/** An exchange seen to exist is trusted this long before it is checked again. */
const POSITIVE_TTL_MS = 60_000
/** A missing exchange is remembered briefly, so a flood of bad publishes costs one check. */
const NEGATIVE_TTL_MS = 1_000
/**
 * An exchange the broker refused with 403 (internal, or no write permission)
 * is refused before writing for this long: each refusal costs a channel close
 * that disturbs every other publish in flight.
 */
const REFUSED_TTL_MS = 30_000
const NOT_FOUND = 404
/** Bounds: names apps invent must not grow memory, or open channels, without limit. */
const MAX_CACHED = 1_000
const MAX_CHECKS_IN_FLIGHT = 8

export class ExchangeRegistry {
  #known = new Map<string, { exists: boolean; until: number }>()
  #refused = new Map<string, number>()
  #pending = new Map<string, Promise<boolean>>()
  #inFlight = 0
  #waiting: Array<() => void> = []

  /** True when the exchange is known to exist without asking the broker. */
  knownToExist(name: string): boolean {
    if (name === '') return true
    const hit = this.#known.get(name)
    return hit !== undefined && hit.exists && hit.until > Date.now()
  }

  /** Whether the exchange exists; asks the broker at most once at a time per name. */
  async exists(connection: ChannelModel, name: string): Promise<boolean> {
    if (name === '') return true
    const hit = this.#known.get(name)
    if (hit && hit.until > Date.now()) return hit.exists
    let pending = this.#pending.get(name)
    if (!pending) {
      pending = this.#check(connection, name).finally(() => this.#pending.delete(name))
      this.#pending.set(name, pending)
    }
    return pending
  }

  /** The broker closed the publish channel over this exchange (404 or 403): remember it. */
  refuse(name: string, code: 403 | 404): void {
    if (code === NOT_FOUND) {
      this.#remember(name, false, NEGATIVE_TTL_MS)
      return
    }
    if (this.#refused.size >= MAX_CACHED) this.#refused.delete(this.#refused.keys().next().value as string)
    this.#refused.set(name, Date.now() + REFUSED_TTL_MS)
  }

  /** 'EXCHANGE_ACCESS_REFUSED' while a 403 for this exchange is remembered. */
  refusal(name: string): 'EXCHANGE_ACCESS_REFUSED' | undefined {
    if (this.#refused.size === 0) return undefined
    const until = this.#refused.get(name)
    if (until === undefined) return undefined
    if (until > Date.now()) return 'EXCHANGE_ACCESS_REFUSED'
    this.#refused.delete(name)
    return undefined
  }

  /** Forget everything (after a 404 on the publish channel: something was deleted). */
  clear(): void {
    this.#known.clear()
  }

  #remember(name: string, exists: boolean, ttlMs: number): void {
    this.#known.delete(name)
    // A Map iterates in insertion order: the first key is the oldest.
    if (this.#known.size >= MAX_CACHED) this.#known.delete(this.#known.keys().next().value as string)
    this.#known.set(name, { exists, until: Date.now() + ttlMs })
  }

  async #check(connection: ChannelModel, name: string): Promise<boolean> {
    if (this.#inFlight >= MAX_CHECKS_IN_FLIGHT) await new Promise<void>((resolve) => this.#waiting.push(resolve))
    this.#inFlight++
    try {
      return await this.#passiveDeclare(connection, name)
    } finally {
      this.#inFlight--
      this.#waiting.shift()?.()
    }
  }

  async #passiveDeclare(connection: ChannelModel, name: string): Promise<boolean> {
    const ch = await connection.createChannel()
    // A 404 here closes this throwaway channel only; the rejection below carries it.
    ch.on('error', () => {})
    try {
      await ch.checkExchange(name)
      this.#remember(name, true, POSITIVE_TTL_MS)
      await ch.close().catch(() => {})
      return true
    } catch (err) {
      if (channelErrorCode(err) !== NOT_FOUND) throw err
      this.#remember(name, false, NEGATIVE_TTL_MS)
      return false
    }
  }
}
