/**
 * Explains the link in words an operator can act on (DESIGN.md section 5),
 * using the advice of the troubleshooting guides in shared/seeds. The one
 * inference made here: resets that keep arriving after about the same idle
 * time mean a middlebox (load balancer, NAT, firewall) closes idle flows.
 */
import type { DisconnectCause } from './classify.js'
import type { DisconnectRecord } from './connection.js'

/** Causes a middlebox idle timeout shows up as: an RST, a broken pipe or a bare FIN. */
const IDLE_CUT_CAUSES: ReadonlySet<DisconnectCause> = new Set(['econnreset', 'epipe', 'unexpected-close'])
/** How many similar idle cuts make a pattern, and how similar they must be. */
export const IDLE_PATTERN_MIN_EVENTS = 3
const IDLE_PATTERN_TOLERANCE = 0.2
const MIN_IDLE_MS = 1_000

export const ADVICE: Record<DisconnectCause, string> = {
  econnreset:
    'The TCP connection was reset (RST). Usually a load balancer, NAT or firewall idle timeout, or the broker dropping the client: keep heartbeats below the smallest idle timeout on the path.',
  epipe: 'The broker side of the socket was already closed when the sidecar wrote (broken pipe): the outbound twin of a reset.',
  econnrefused: 'Nothing accepted the connection: the broker is down, restarting, or the URL/port is wrong. The sidecar retries with backoff.',
  etimedout: 'The connection attempt or the socket timed out: a firewall dropping packets, a wrong host, or a broker too busy to answer.',
  'heartbeat-timeout': 'No frame arrived for about two heartbeat intervals: the broker is frozen or overloaded, or the network silently drops traffic.',
  'connection-forced': 'The broker closed the connection on purpose (320 CONNECTION_FORCED): an operator, a node shutdown or a restart. The sidecar reconnects.',
  'access-refused': 'The broker refused the credentials (403 ACCESS_REFUSED): fix the user, password or permissions; the sidecar keeps retrying slowly and picks up a rotated amqp.urlFile.',
  'not-allowed': 'The broker refused the virtual host (530 NOT_ALLOWED): the vhost does not exist or the user has no access to it.',
  tls: 'The TLS handshake failed: check amqp.tls.caFile, the broker certificate and its host name.',
  dns: 'The broker host name does not resolve.',
  'unexpected-close': 'The socket closed without an AMQP close (a bare FIN): a proxy or load balancer ended the flow, often on an idle timeout.',
  'channel-error': 'A channel-level fault escalated to the connection.',
  'client-close': 'The sidecar closed the connection itself.',
  other: 'The connection ended for a reason the sidecar does not classify; see the message.',
}

export interface IdlePattern {
  idleTimeoutSeconds: number
  events: number
}

/** Finds "cut after ~N s idle" in the most recent disconnects, newest last. */
export function detectIdleTimeout(history: readonly DisconnectRecord[]): IdlePattern | null {
  const cuts = history.filter((d) => !d.duringConnect && IDLE_CUT_CAUSES.has(d.cause) && d.idleMsBefore !== null && d.idleMsBefore >= MIN_IDLE_MS)
  const recent = cuts.slice(-IDLE_PATTERN_MIN_EVENTS)
  if (recent.length < IDLE_PATTERN_MIN_EVENTS) return null
  const idles = recent.map((d) => d.idleMsBefore as number).sort((a, b) => a - b)
  const median = idles[Math.floor(idles.length / 2)] as number
  if (!idles.every((i) => Math.abs(i - median) <= median * IDLE_PATTERN_TOLERANCE)) return null
  return { idleTimeoutSeconds: Math.round(median / 100) / 10, events: recent.length }
}

export function diagnose(input: {
  state: string
  heartbeatSeconds: number
  lastDisconnect: DisconnectRecord | null
  lastConnectError: DisconnectRecord | null
  blockedReason: string | null
  topologyError: string | null
  idlePattern: IdlePattern | null
}): string {
  if (input.topologyError) return `Topology declaration failed: ${input.topologyError}. Fix the config or the broker object; it is retried on the next reconnect.`
  if (input.state === 'blocked') return `The broker blocked publishing (${input.blockedReason ?? 'resource alarm'}): a memory or disk alarm. Publishes answer 503 UPSTREAM_BLOCKED until it clears.`
  if (input.idlePattern) {
    const p = input.idlePattern
    // Adapted (or configured) below the timeout: the cuts were seen, and the link is now kept busy.
    if (input.heartbeatSeconds > 0 && input.heartbeatSeconds < p.idleTimeoutSeconds && input.state === 'connected') {
      return `A middlebox closes idle flows after ~${p.idleTimeoutSeconds} s (${p.events} disconnects after about that much idle time); the heartbeat is now ${input.heartbeatSeconds} s, which keeps the link busy. Raise the proxy's idle timeout or keep amqp.heartbeatSeconds below it.`
    }
    return `A middlebox closes idle flows after ~${p.idleTimeoutSeconds} s (${p.events} disconnects after about that much idle time); heartbeat is ${input.heartbeatSeconds} s. Keep the heartbeat below ${p.idleTimeoutSeconds} s, or raise the proxy's idle timeout.`
  }
  if (input.state === 'connecting' || input.state === 'reconnecting') {
    const e = input.lastConnectError ?? input.lastDisconnect
    return e ? `Not connected. Last error (${e.cause}): ${ADVICE[e.cause]}` : 'Connecting to the broker.'
  }
  if (input.state === 'closed') return 'The sidecar has shut down.'
  const d = input.lastDisconnect
  return d ? `Connected. The last disconnect was ${d.cause}: ${ADVICE[d.cause]}` : 'Connected; no disconnects so far.'
}
