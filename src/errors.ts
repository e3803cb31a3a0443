/**
 * The one error registry. Every error the sidecar reports to an app has a
 * stable code, an HTTP status and (for 503) a Retry-After hint. HTTP routes,
 * WebSocket ops and batch results all render errors from here, so a code means
 * the same thing on every surface (DESIGN.md section 2).
 */

export const ERROR_CODES = {
  INVALID_REQUEST: { status: 400, message: 'The request is malformed' },
  UNAUTHORIZED: { status: 401, message: 'A valid API token is required' },
  FORBIDDEN: { status: 403, message: 'The request was refused' },
  ORIGIN_NOT_ALLOWED: { status: 403, message: 'Requests carrying an Origin header (browsers) are refused' },
  HOST_NOT_ALLOWED: { status: 403, message: 'The Host header is not loopback or a configured api.allowedHosts name' },
  EXCHANGE_NOT_ALLOWED: { status: 403, message: 'The exchange is not in the allow-list' },
  EXCHANGE_ACCESS_REFUSED: { status: 403, message: 'The broker refused publishing to the exchange (internal, or no write permission)' },
  QUEUE_NOT_ALLOWED: { status: 403, message: 'The queue is not in the allow-list' },
  NOT_FOUND: { status: 404, message: 'No such route' },
  EXCHANGE_NOT_FOUND: { status: 404, message: 'The broker has no such exchange' },
  QUEUE_NOT_FOUND: { status: 404, message: 'The broker has no such queue' },
  REQUEST_TIMEOUT: { status: 408, message: 'The request was not received in time' },
  DELIVERY_STALE: { status: 409, message: 'The delivery belongs to a channel that is gone' },
  DELIVERY_UNKNOWN: { status: 404, message: 'No such delivery is outstanding (already settled, or never handed out)' },
  PAYLOAD_TOO_LARGE: { status: 413, message: 'The body is over the configured limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'Unsupported content type' },
  UNROUTABLE: { status: 422, message: 'The broker returned the message: no queue is bound for it' },
  HEADERS_TOO_LARGE: { status: 431, message: 'The request headers are over the configured limit' },
  PUBLISH_NACKED: { status: 502, message: 'The broker nacked the message' },
  PUBLISH_REFUSED: { status: 502, message: 'The broker refused the message and closed the channel' },
  BUFFER_FULL: { status: 503, message: 'The publish buffer is full', retryAfterSeconds: 1 },
  UPSTREAM_BLOCKED: { status: 503, message: 'The broker has blocked publishing (resource alarm)', retryAfterSeconds: 5 },
  SPOOL_UNAVAILABLE: { status: 503, message: 'The spool could not store the message (disk error)', retryAfterSeconds: 5 },
  SHUTTING_DOWN: { status: 503, message: 'The sidecar is shutting down', retryAfterSeconds: 1 },
  RPC_BUSY: { status: 503, message: 'Too many requests are waiting for replies (rpc.maxOutstanding)', retryAfterSeconds: 1 },
  UPSTREAM_UNAVAILABLE: { status: 503, message: 'The broker connection is not up', retryAfterSeconds: 1 },
  TOO_MANY_CONNECTIONS: { status: 503, message: 'The API has api.maxConnections connections open; this one is closed', retryAfterSeconds: 1 },
  PUBLISH_OUTCOME_UNKNOWN: { status: 504, message: 'The outcome of the publish is unknown; retry with the same X-Message-Id' },
  RPC_TIMEOUT: { status: 504, message: 'No reply came before the deadline; the request may have been processed' },
  RPC_OUTCOME_UNKNOWN: { status: 504, message: 'The broker connection dropped while waiting for the reply; the request may have been processed' },
  INTERNAL: { status: 500, message: 'Internal error' },
} as const satisfies Record<string, { status: number; message: string; retryAfterSeconds?: number }>

export type ErrorCode = keyof typeof ERROR_CODES

export class SidecarError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly retryAfterSeconds: number | undefined
  /** The message the error concerns, echoed back so the app can retry it. */
  messageId: string | undefined

  constructor(code: ErrorCode, message?: string, opts: { cause?: unknown; messageId?: string } = {}) {
    const entry = ERROR_CODES[code]
    super(message ?? entry.message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'SidecarError'
    this.code = code
    this.status = entry.status
    this.retryAfterSeconds = 'retryAfterSeconds' in entry ? entry.retryAfterSeconds : undefined
    this.messageId = opts.messageId
  }

  /** The JSON error body every surface uses: {"error": {code, message, messageId?}}. */
  toBody(): { error: { code: ErrorCode; message: string; messageId?: string } } {
    return {
      error: {
        code: this.code,
        message: this.message,
        ...(this.messageId === undefined ? {} : { messageId: this.messageId }),
      },
    }
  }
}

export function isSidecarError(err: unknown): err is SidecarError {
  return err instanceof SidecarError
}
