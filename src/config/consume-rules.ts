/**
 * Cross-field rules for consume.*: checked once at load time, so a lease or
 * push schedule that RabbitMQ's consumer_timeout would cut short is a config
 * error at start, not a channel closed in production 30 minutes later.
 * The per-field maxima live here too, next to the defaults they bound.
 */
import type { Config, PushSubscription } from './types.js'

/** Defaults for fields a push subscription leaves out (documented in docs/consuming.md). */
export const PUSH_DEFAULTS = {
  concurrency: 4,
  timeoutMs: 10_000,
  retry: { maxAttempts: 5, initialDelayMs: 500, maxDelayMs: 30_000 },
  onGiveUp: 'dead-letter',
} as const

/**
 * Upper bounds on push fields. Past 100 attempts a message is poison, not unlucky;
 * a backoff over 10 min, or a call over 15 min, holds the delivery (unacked) for
 * longer than any retry can usefully wait.
 */
export const PUSH_MAXIMA = { concurrency: 1000, timeoutMs: 15 * 60_000, maxAttempts: 100, initialDelayMs: 10 * 60_000, maxDelayMs: 10 * 60_000 } as const

export type ResolvedPush = Omit<PushSubscription, 'retry'> & { retry: PushSubscription['retry'] }

export function pushWithDefaults(p: Partial<PushSubscription> & { queue: string; url: string }): ResolvedPush {
  return {
    queue: p.queue,
    url: p.url,
    concurrency: p.concurrency ?? PUSH_DEFAULTS.concurrency,
    timeoutMs: p.timeoutMs ?? PUSH_DEFAULTS.timeoutMs,
    retry: { ...PUSH_DEFAULTS.retry, ...p.retry },
    onGiveUp: p.onGiveUp ?? PUSH_DEFAULTS.onGiveUp,
  }
}

/**
 * The longest a push delivery can stay unacked: every attempt times out and
 * every wait between them is the longest backoff (Retry-After is capped at
 * maxDelayMs too). A pause for an unreachable app does not count: it requeues.
 */
export function pushHoldMs(p: ResolvedPush): number {
  const attempts = Math.max(1, p.retry.maxAttempts)
  return attempts * p.timeoutMs + (attempts - 1) * p.retry.maxDelayMs
}

/** Throws a message naming the key and the cap; the loader wraps it as a ConfigError. */
export function checkConsume(consume: Config['consume']): void {
  const cap = consume.maxLeaseMs
  if (consume.leaseMs > cap) throw new Error(`consume.leaseMs (${consume.leaseMs}) must not exceed consume.maxLeaseMs (${cap})`)
  consume.push.forEach((raw, i) => {
    const p = pushWithDefaults(raw)
    if (p.retry.initialDelayMs > p.retry.maxDelayMs) throw new Error(`consume.push[${i}].retry.initialDelayMs must not exceed its maxDelayMs (${p.retry.maxDelayMs})`)
    const hold = pushHoldMs(p)
    if (hold > cap) {
      throw new Error(
        `consume.push[${i}] (${p.queue}) can hold a message unacked for ${hold} ms (maxAttempts ${p.retry.maxAttempts} x timeoutMs ${p.timeoutMs} + ${p.retry.maxAttempts - 1} x retry.maxDelayMs ${p.retry.maxDelayMs}), over consume.maxLeaseMs (${cap}); lower them or raise the cap`,
      )
    }
  })
}
