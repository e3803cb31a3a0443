/**
 * How a message ends: the app's answer, the buffer room given back, the
 * spool told, the metric counted, all in one place (finish), and what a
 * refusal for good means (refuse).
 *
 * What happens to a message answered 202 that the broker refuses for good
 * (no such exchange, access refused, unroutable, nacked again and again,
 * DESIGN.md section 9). The app was told 202 and is gone, so the sidecar must
 * keep it or say so loudly, and never let it block the messages behind it:
 * it goes to `publish.deadLetter` when configured, with the reason in the
 * x-sidecar-error header; otherwise (or when that is refused too) it is logged
 * at error level with its message_id and counted.
 */
import { SidecarError } from '../errors.js'
import type { Expiries } from '../expiry.js'
import type { Logger } from '../observe/logger.js'
import type { Metrics, PublishOutcome } from '../observe/metrics.js'
import type { PublishBuffer } from './buffer.js'
import type { Entry, PublishResult, Settlement } from './entry.js'

export interface DeadLetterTarget {
  exchange: string
  routingKey: string
}

export class Settler {
  constructor(
    private readonly target: DeadLetterTarget | null,
    private readonly buffer: PublishBuffer,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly deadlines: Expiries<Entry>,
    private readonly enqueue: (entry: Entry) => void,
  ) {}

  /** The broker refused this message for good: answer it, or dead-letter a 202 message. */
  refuse(entry: Entry, err: SidecarError, outcome: PublishOutcome = 'rejected'): void {
    err.messageId = entry.msg.options.messageId
    if (entry.mode === 'confirm' && entry.maybePublished && err.code !== 'UNROUTABLE') {
      // An earlier copy may have reached a queue before this one was refused: a
      // refusal would tell the app it was not published, which may be false.
      this.finish(entry, this.unknown(entry, `An earlier copy may have been published; the re-sent copy was refused (${err.code}: ${err.message})`), 'unknown', 'refused')
      return
    }
    if (entry.mode === 'accepted') {
      entry.answered = true
      // Its buffer room and spool record pass to the dead-letter copy, if there is one.
      if (this.deadLetter(entry, err, outcome)) {
        entry.state = 'done'
        return
      }
    }
    this.finish(entry, err, outcome, 'refused')
  }

  unknown(entry: Entry, text: string): SidecarError {
    return new SidecarError('PUBLISH_OUTCOME_UNKNOWN', `${text || 'The outcome is unknown'}; retry with the same X-Message-Id`, { messageId: entry.msg.options.messageId })
  }

  /** Final state: answers the app (if not yet), frees the buffer room, stops the timer, tells the owner. */
  finish(entry: Entry, result: PublishResult | SidecarError, outcome: PublishOutcome, how: Settlement): void {
    if (entry.state === 'done') return
    entry.state = 'done'
    if (entry.expiry) this.deadlines.remove(entry.expiry)
    if (entry.held > 0) this.buffer.release(entry.held)
    entry.settled?.(how)
    if (entry.mode === 'accepted' && result instanceof SidecarError) {
      // A spooled message abandoned at shutdown is still on disk: nothing is lost.
      if (how !== 'abandoned' || entry.settled === undefined) this.dropped(entry, result, outcome)
      return
    }
    this.answer(entry, result, outcome)
  }

  answer(entry: Entry, result: PublishResult | SidecarError, outcome: PublishOutcome): void {
    if (entry.answered) return
    entry.answered = true
    this.count(outcome)
    if (result instanceof SidecarError) entry.reject(result)
    else entry.resolve(result)
  }

  count(outcome: PublishOutcome): void {
    this.metrics.published.inc({ outcome })
  }

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
      expiry: undefined,
      copies: 0,
      maybePublished: false,
      isolate: false,
      nacks: 0,
      firstNackAt: 0,
      nackedLast: false,
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
