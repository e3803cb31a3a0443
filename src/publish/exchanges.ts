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
const NOT_FOUND = 404

export class ExchangeRegistry {
  #known = new Map<string, { exists: boolean; until: number }>()
  #pending = new Map<string, Promise<boolean>>()

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

  /** Forget everything (after a 404 on the publish channel: something was deleted). */
  clear(): void {
    this.#known.clear()
  }

  async #check(connection: ChannelModel, name: string): Promise<boolean> {
    const ch = await connection.createChannel()
    // A 404 here closes this throwaway channel only; the rejection below carries it.
    ch.on('error', () => {})
    try {
      await ch.checkExchange(name)
      this.#known.set(name, { exists: true, until: Date.now() + POSITIVE_TTL_MS })
      await ch.close().catch(() => {})
      return true
    } catch (err) {
      if (channelErrorCode(err) !== NOT_FOUND) throw err
      this.#known.set(name, { exists: false, until: Date.now() + NEGATIVE_TTL_MS })
      return false
    }
  }
}
