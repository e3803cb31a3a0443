/**
 * What the death of a publish channel means for each message written on it
 * and not yet confirmed. Two cases:
 *
 * - The connection died: any of them may have reached the broker. Each is
 *   marked maybe-published and re-sent (same message_id).
 * - The broker closed the channel (a channel error: 404, 403, 406...): it
 *   processed the messages up to the one it refused and discarded every frame
 *   after it. When the close names an exchange, the LAST message written to
 *   that exchange was the refused one or was discarded after it: either way
 *   it was not published, so it is refused for good, exactly; what came
 *   after it was not processed; what came before may have been. When the
 *   close names no exchange, nobody can tell which message it was: all are
 *   re-sent one at a time ("isolated"), so the next refusal falls on exactly
 *   one message, which is then refused for good.
 */
import { SidecarError, type ErrorCode } from '../errors.js'
import { channelErrorCode, refusedExchangeOf } from '../upstream/classify.js'
import type { Entry } from './entry.js'

export type Verdict = { entry: Entry; action: 'refuse'; error: SidecarError } | { entry: Entry; action: 'resend' }

/** Judges each written entry (in write order); sets maybePublished and isolate on those to re-send. */
export function judgeClosedChannel(written: readonly Entry[], closeError: unknown): { verdicts: Verdict[]; blamed: { code: 403 | 404; exchange: string } | undefined } {
  const code = channelErrorCode(closeError)
  const blamed = refusedExchangeOf(closeError)
  const lastBlamed = blamed ? findLastIndex(written, (e) => e.msg.exchange === blamed.exchange) : -1
  // An isolated message alone on the channel: the refusal was its own.
  const alone = written.length === 1 && written[0]?.isolate === true
  const verdicts = written.map((entry, i): Verdict => {
    entry.channel = undefined
    entry.state = 'queued'
    entry.returned = false
    if (code !== undefined && (i === lastBlamed || (alone && lastBlamed < 0))) {
      return { entry, action: 'refuse', error: refusalOf(code, entry, closeError) }
    }
    if (lastBlamed < 0 || i < lastBlamed) entry.maybePublished = true
    if (code !== undefined && lastBlamed < 0) entry.isolate = true
    return { entry, action: 'resend' }
  })
  return { verdicts, blamed }
}

export function refusalText(code: ErrorCode, exchange: string): string {
  return code === 'EXCHANGE_NOT_FOUND'
    ? `The broker has no exchange "${exchange}"`
    : `The broker refused publishing to exchange "${exchange}" (internal, or no write permission)`
}

/** What a channel error that fell on one message means for the app. */
function refusalOf(code: number, entry: Entry, cause: unknown): SidecarError {
  const exchange = entry.msg.exchange
  if (code === 404) return new SidecarError('EXCHANGE_NOT_FOUND', refusalText('EXCHANGE_NOT_FOUND', exchange))
  if (code === 403) return new SidecarError('EXCHANGE_ACCESS_REFUSED', refusalText('EXCHANGE_ACCESS_REFUSED', exchange))
  return new SidecarError('PUBLISH_REFUSED', `The broker refused the message: ${(cause as Error | undefined)?.message ?? `reply code ${code}`}`, { cause })
}

function findLastIndex<T>(list: readonly T[], pred: (t: T) => boolean): number {
  for (let i = list.length - 1; i >= 0; i--) if (pred(list[i] as T)) return i
  return -1
}
