/**
 * What happens to a message answered 202 that the broker refuses for good
 * (no such exchange, access refused, unroutable, nacked again and again,
 * DESIGN.md section 9). The app was told 202 and is gone, so the sidecar must
 * keep it or say so loudly, and never let it block the messages behind it:
 * it goes to `publish.deadLetter` when configured, with the reason in the
 * x-sidecar-error header; otherwise (or when that is refused too) it is logged
 * at error level with its message_id and counted.
 */
import type { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics, PublishOutcome } from '../observe/metrics.js'
import type { Entry } from './entry.js'

export interface DeadLetterTarget {
  exchange: string
  routingKey: string
}

export class Refusals {
  constructor(
    private readonly target: DeadLetterTarget | null,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly enqueue: (entry: Entry) => void,
  ) {}

  /**
   * Sends a copy of a refused 202 message to the dead-letter target. The copy
   * takes over the original's buffer room and spool record. False when there
   * is no target, or the message is itself a dead-letter copy.
   */
  deadLetter(entry: Entry, err: SidecarError, outcome: PublishOutcome): boolean {
    if (!this.target || entry.deadLetter) return false
    const { msg } = entry
    const copy: Entry = {
      ...entry,
      msg: {
        exchange: this.target.exchange,
        routingKey: this.target.routingKey,
        content: msg.content,
        options: {
          ...msg.options,
          // A dead letter that reaches no queue must not vanish either.
          mandatory: true,
          headers: {
            ...msg.options.headers,
            'x-sidecar-error': `${err.code}: ${err.message}`,
            'x-sidecar-original-exchange': msg.exchange,
            'x-sidecar-original-routing-key': msg.routingKey,
          },
        },
      },
      state: 'queued',
      deadLetter: true,
      answered: true,
      returned: false,
      channel: undefined,
      timer: undefined,
      copies: 0,
      maybePublished: false,
      isolate: false,
      nacks: 0,
    }
    this.metrics.deadLettered.inc({ reason: outcome === 'rejected' ? err.code.toLowerCase() : outcome })
    this.log.warn(
      { messageId: msg.options.messageId, exchange: msg.exchange, routingKey: msg.routingKey, code: err.code, deadLetter: this.target },
      'a message accepted with 202 was refused by the broker; sending it to publish.deadLetter',
    )
    this.enqueue(copy)
    return true
  }

  /** The last word on a 202 message that will not be published. */
  dropped(entry: Entry, err: SidecarError, outcome: PublishOutcome): void {
    this.metrics.acceptedDropped.inc({ outcome })
    this.log.error(
      {
        messageId: entry.msg.options.messageId,
        exchange: entry.msg.exchange,
        routingKey: entry.msg.routingKey,
        code: err.code,
        reason: err.message,
        ...(entry.deadLetter ? { deadLetterCopy: true } : {}),
      },
      'a message accepted with 202 was not published',
    )
  }
}
