/**
 * What the publisher does with a basic.nack (DESIGN.md section 2; issue 15).
 *
 * A nack says the broker did not take the message, but not why, and the two
 * common reasons want different answers:
 * - a quorum queue whose leader just died: RabbitMQ (3.10's rabbit_fifo_client)
 *   keeps nacking on the channel whose first publish met the dead leader, while a
 *   fresh channel is confirmed a moment later. Re-sending on a new channel turns
 *   a minute of 502s into a short delay.
 * - a full queue with `x-overflow: reject-publish`: nothing changes soon, and the
 *   app wants its 502 quickly to slow down.
 * So a nacked message is re-sent, on a fresh channel, with a short backoff, for
 * at most `publish.nackRetryMs` after its first nack and never past its
 * deadline; then it is answered 502 PUBLISH_NACKED (a 202 message goes to
 * publish.deadLetter). `nackRetryMs: 0` answers the first nack.
 */
import type { Entry } from './entry.js'

/** Backoff between re-sends of a nacked message: 100 ms, doubling, at most 1 s. */
const FIRST_DELAY_MS = 100
const MAX_DELAY_MS = 1_000

export type NackVerdict = { action: 'retry'; delayMs: number } | { action: 'refuse' }

/** Called on each nack of `entry`; records it and says whether to re-send. */
export function judgeNack(entry: Entry, now: number, nackRetryMs: number): NackVerdict {
  entry.nacks++
  entry.nackedLast = true
  if (entry.firstNackAt === 0) entry.firstNackAt = now
  const delayMs = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (entry.nacks - 1))
  const resendAt = now + delayMs
  if (resendAt > entry.firstNackAt + nackRetryMs || resendAt >= entry.deadlineAt) return { action: 'refuse' }
  return { action: 'retry', delayMs }
}
