/**
 * Explains the link in words an operator can act on (DESIGN.md section 5),
 * using the advice of the troubleshooting guides in shared/seeds. The one
 * inference made here: recent cuts of one kind, each after an idle period
 * longer than any the link survived, mean a middlebox (load balancer, NAT,
 * firewall) closes idle flows.
 */
import type { DisconnectCause } from './classify.js'
import type { DisconnectRecord } from './connection.js'

/**
 * The kinds of cut an idle timeout shows up as. A middlebox answers the next
 * packet of an evicted flow with an RST (or a broken pipe, its write-side
 * twin), closes the flow itself with a FIN, or drops it silently, which only a
 * timer finds (heartbeat, TCP keepalive). One middlebox cuts the same way every
 * time, so only cuts of one kind make a pattern.
 */
export type CutKind = 'reset' | 'close' | 'silent'
const CUT_KIND: Partial<Record<DisconnectCause, CutKind>> = {
  econnreset: 'reset',
  epipe: 'reset',
  'unexpected-close': 'close',
  'heartbeat-timeout': 'silent',
  etimedout: 'silent',
  'unanswered-write': 'silent',
}
/** How many idle cuts of one kind make a pattern. */
export const IDLE_PATTERN_MIN_EVENTS = 3
/**
 * Only cuts this close together make a pattern: the window ends at the newest
 * cut of the kind. 30 min admits three cuts of a middlebox that evicts after up
 * to ~10 min (cloud load balancers: 4-10 min), and leaves out cuts spread over
 * hours, which are not one middlebox's timeout.
 */
export const IDLE_PATTERN_WINDOW_MS = 30 * 60_000
/** A cut after less idleness than this was a busy link, not an idle one. */
const MIN_IDLE_MS = 1_000
/**
 * Idle times are sampled (idle-meter.ts); a cut must come after clearly more
 * idleness than the link survived to count. This keeps a frozen broker (cut by
 * the heartbeat timer after the same idle gap the heartbeats kept surviving)
 * from passing for a middlebox.
 */
const MEASUREMENT_SLACK_MS = 300

export const ADVICE: Record<DisconnectCause, string> = {
  econnreset:
    'The TCP connection was reset (RST). Usually a load balancer, NAT or firewall idle timeout, or the broker dropping the client: keep heartbeats below the smallest idle timeout on the path.',
  epipe: 'The broker side of the socket was already closed when the sidecar wrote (broken pipe): the outbound twin of a reset.',
  econnrefused: 'Nothing accepted the connection: the broker is down, restarting, or the URL/port is wrong. The sidecar retries with backoff.',
  etimedout: 'The connection attempt or the socket timed out: a firewall dropping packets, a wrong host, or a broker too busy to answer.',
  'heartbeat-timeout': 'No frame arrived for about two heartbeat intervals: the broker is frozen or overloaded, or the network silently drops traffic.',
  'unanswered-write':
    'A publish written after an idle spell got no answer at all within amqp.unansweredWriteMs: a NAT, load balancer or firewall forgot the idle flow and drops its packets, or the broker is frozen. The sidecar replaced the connection and re-sent the publish; keep heartbeats below the idle timeout to stop the cuts.',
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
  /**
   * The timeout named: the shortest idle period that was cut, i.e. the upper
   * end of the bracket. Never below an idle period that survived.
   */
  idleTimeoutSeconds: number
  /** The longest idle period a connection survived in the window (null: none measured): the timeout is above it. */
  atLeastSeconds: number | null
  /** The shortest idle period that was cut: the timeout is at most this. */
  atMostSeconds: number
  kind: CutKind
  events: number
  windowSeconds: number
}

/** Tenths of a second, rounded outwards so the bracket never shrinks past what was measured. */
const ceilSeconds = (ms: number) => Math.ceil(ms / 100) / 10
const floorSeconds = (ms: number) => Math.floor(ms / 100) / 10

/**
 * Finds "cut after N s idle" in the disconnect history (oldest first). A
 * silent eviction is seen only when traffic resumes, so each cut says only
 * "the timeout is at most the idle time before it"; an idle period that a
 * connection survived says "it is above that". The tightest bracket is (longest
 * survived, shortest cut]. A cut after no more idleness than a survived period
 * was not an idle timeout and is left out.
 */
export function detectIdleTimeout(history: readonly DisconnectRecord[]): IdlePattern | null {
  let best: { pattern: IdlePattern; newest: number } | null = null
  for (const kind of ['reset', 'close', 'silent'] as const) {
    const cuts = history.filter((d) => !d.duringConnect && CUT_KIND[d.cause] === kind && d.idleMsBefore !== null)
    const newest = cuts.at(-1)
    if (!newest) continue
    const end = Date.parse(newest.at)
    const inWindow = (d: DisconnectRecord) => end - Date.parse(d.at) <= IDLE_PATTERN_WINDOW_MS
    const survived = Math.max(0, ...history.filter((d) => !d.duringConnect && inWindow(d)).map((d) => d.longestSurvivedIdleMs ?? 0))
    const idleCuts = cuts.filter((d) => inWindow(d) && (d.idleMsBefore as number) >= MIN_IDLE_MS && (d.idleMsBefore as number) > survived + MEASUREMENT_SLACK_MS)
    if (idleCuts.length < IDLE_PATTERN_MIN_EVENTS) continue
    const atMost = Math.min(...idleCuts.map((d) => d.idleMsBefore as number))
    const pattern: IdlePattern = {
      idleTimeoutSeconds: ceilSeconds(atMost),
      atLeastSeconds: survived > 0 ? floorSeconds(survived) : null,
      atMostSeconds: ceilSeconds(atMost),
      kind,
      events: idleCuts.length,
      windowSeconds: IDLE_PATTERN_WINDOW_MS / 1000,
    }
    if (!best || end > best.newest) best = { pattern, newest: end }
  }
  return best?.pattern ?? null
}

/** "between 3.1 and 6.5 s" or "at most 6.5 s": what the history allows. */
export function bracketText(p: IdlePattern): string {
  return p.atLeastSeconds === null ? `at most ${p.atMostSeconds} s` : `between ${p.atLeastSeconds} and ${p.atMostSeconds} s`
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
      return `A middlebox closes idle flows after ~${p.idleTimeoutSeconds} s (${evidence(p)}); the heartbeat is now ${input.heartbeatSeconds} s, which keeps the link busy. Raise the proxy's idle timeout or keep amqp.heartbeatSeconds below it.`
    }
    return `A middlebox closes idle flows after ~${p.idleTimeoutSeconds} s (${evidence(p)}); heartbeat is ${input.heartbeatSeconds} s. Keep the heartbeat below ${p.idleTimeoutSeconds} s, or raise the proxy's idle timeout.`
  }
  if (input.state === 'connecting' || input.state === 'reconnecting') {
    const e = input.lastConnectError ?? input.lastDisconnect
    return e ? `Not connected. Last error (${e.cause}): ${ADVICE[e.cause]}` : 'Connecting to the broker.'
  }
  if (input.state === 'closed') return 'The sidecar has shut down.'
  const d = input.lastDisconnect
  return d ? `Connected. The last disconnect was ${d.cause}: ${ADVICE[d.cause]}` : 'Connected; no disconnects so far.'
}

function evidence(p: IdlePattern): string {
  const how = p.kind === 'reset' ? 'resets' : p.kind === 'close' ? 'closes' : 'silent drops'
  return `${p.events} ${how} after idle periods within ${p.windowSeconds / 60} min; the timeout is ${bracketText(p)}`
}
