/**
 * Reconnect delays with "full jitter" (AWS architecture blog): a random delay
 * in [0, min(max, initial * 2^attempt)]. Jitter keeps a fleet of sidecars from
 * reconnecting to a restarted broker in lock-step.
 */
export class Backoff {
  #attempt = 0

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next attempt, in ms; each call widens the window. */
  next(): number {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.#attempt, 30))
    this.#attempt++
    // Never 0: a floor of a few ms keeps a refused connect from spinning the loop.
    return Math.max(10, Math.floor(this.random() * cap))
  }

  reset(): void {
    this.#attempt = 0
  }

  get attempt(): number {
    return this.#attempt
  }
}
