/**
 * consume.allowedQueues: the queues apps may consume from (null: any). Every
 * consume surface (WebSocket subscribe, HTTP pull, push config) calls
 * assertQueueAllowed() before touching the broker, so a refused queue answers
 * 403 QUEUE_NOT_ALLOWED the same way everywhere, and the broker never sees
 * the request.
 */
import { SidecarError } from '../errors.js'

/** True when `queue` may be consumed under `allowed` (exact, case-sensitive match: AMQP names are). */
export function isQueueAllowed(queue: string, allowed: readonly string[] | null): boolean {
  return allowed === null || allowed.includes(queue)
}

/** Throws 403 QUEUE_NOT_ALLOWED when `queue` is not in the allow-list. */
export function assertQueueAllowed(queue: string, allowed: readonly string[] | null): void {
  if (!isQueueAllowed(queue, allowed)) {
    // JSON.stringify: the name comes from the app and may hold quotes or control characters.
    throw new SidecarError('QUEUE_NOT_ALLOWED', `Consuming from queue ${JSON.stringify(queue)} is not allowed by consume.allowedQueues`)
  }
}
