/**
 * Turns whatever amqplib, Node's net/tls or the broker reported into one
 * bounded cause (DESIGN.md section 5). This is the ONLY place that looks at
 * error codes and message text; everything else branches on the cause.
 */

export const DISCONNECT_CAUSES = [
  'econnreset',
  'epipe',
  'econnrefused',
  'etimedout',
  'heartbeat-timeout',
  'unanswered-write',
  'connection-forced',
  'access-refused',
  'not-allowed',
  'tls',
  'dns',
  'unexpected-close',
  'channel-error',
  'client-close',
  'other',
] as const

export type DisconnectCause = (typeof DISCONNECT_CAUSES)[number]

export interface ClassifiedError {
  cause: DisconnectCause
  /** The AMQP reply code (320, 403, 530...) or the errno string (ECONNRESET...). */
  code: string | number | undefined
  message: string
}

/** The code of the error the sidecar destroys a socket with when a publish after an idle spell got no answer (idle-meter.ts). */
export const UNANSWERED_CODE = 'EUNANSWERED'

const TLS_CODES = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERR_OSSL)/

export function classifyError(err: unknown): ClassifiedError {
  if (err === undefined || err === null) return { cause: 'client-close', code: undefined, message: 'closed by the sidecar' }
  const e = err as { code?: unknown; message?: unknown; library?: unknown }
  const code = typeof e.code === 'string' || typeof e.code === 'number' ? e.code : undefined
  const message = typeof e.message === 'string' ? e.message : String(err)
  return { cause: causeOf(code, message, e.library), code, message }
}

function causeOf(code: string | number | undefined, message: string, library: unknown): DisconnectCause {
  if (typeof code === 'number') {
    if (code === 320) return 'connection-forced'
    if (code === 403) return 'access-refused'
    if (code === 530) return 'not-allowed'
    // 404/406/505... on channel 0 mean a channel-level fault escalated to the connection.
    if (code >= 400 && code < 600) return 'channel-error'
    return 'other'
  }
  switch (code) {
    case UNANSWERED_CODE:
      return 'unanswered-write'
    case 'ECONNRESET':
      return 'econnreset'
    case 'EPIPE':
      return 'epipe'
    case 'ECONNREFUSED':
      return 'econnrefused'
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'etimedout'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'dns'
  }
  if ((typeof code === 'string' && TLS_CODES.test(code)) || library === 'SSL routines' || /\bTLS\b|\bSSL\b|certificate/i.test(message)) return 'tls'
  // amqplib's own messages: these have no code.
  if (/Heartbeat timeout/i.test(message)) return 'heartbeat-timeout'
  if (/Unexpected close/i.test(message)) return 'unexpected-close'
  if (/connect ETIMEDOUT/i.test(message)) return 'etimedout'
  if (/\b403\b|ACCESS[-_]REFUSED/i.test(message)) return 'access-refused'
  if (/\b530\b|NOT[-_]ALLOWED/i.test(message)) return 'not-allowed'
  if (/\b320\b|CONNECTION[-_]FORCED/i.test(message)) return 'connection-forced'
  if (/forced reconnect/i.test(message)) return 'client-close'
  return 'other'
}

/** The reply code of a channel-level close (404 NOT_FOUND, 406 PRECONDITION_FAILED...). */
export function channelErrorCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'number' ? code : undefined
}

/**
 * The exchange a channel close blames: a 404 ("NOT_FOUND - no exchange 'x' in
 * vhost '/'") or a 403 ("ACCESS_REFUSED - cannot publish to internal exchange
 * 'x' in vhost '/'", "access to exchange 'x' in vhost '/' refused for user
 * 'u'"), so the publisher can tell which messages the broker refused.
 */
export function refusedExchangeOf(err: unknown): { code: 403 | 404; exchange: string } | undefined {
  const code = channelErrorCode(err)
  if (code !== 404 && code !== 403) return undefined
  const m = /exchange '([^']*)' in vhost/.exec(String((err as { message?: unknown } | null)?.message ?? ''))
  return m?.[1] === undefined ? undefined : { code, exchange: m[1] }
}
