/**
 * Every Prometheus metric the sidecar exports, in one place, so docs/metrics.md
 * and the code cannot drift. Prefix amqp_sidecar_, counters end in _total,
 * durations in _seconds, and labels are bounded (connection: publish|consume,
 * outcome, cause, via, result).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export const PREFIX = 'amqp_sidecar_'

export type PublishOutcome = 'confirmed' | 'accepted' | 'unroutable' | 'nacked' | 'unknown' | 'rejected'

export type RpcOutcome = 'replied' | 'unroutable' | 'timeout' | 'unknown' | 'nacked' | 'rejected'

export function createMetrics(registry = new Registry()) {
  collectDefaultMetrics({ register: registry, prefix: PREFIX, eventLoopMonitoringPrecision: 20 })
  const r = [registry]
  // Ages are read at scrape time; the spool sets this when there is one.
  let spoolOldestAge = () => 0
  return {
    registry,
    setSpoolAgeSource(source: () => number) {
      spoolOldestAge = source
    },
    upstreamConnected: new Gauge({ name: `${PREFIX}upstream_connected`, help: '1 while the broker connection is open, 0 while it is down; no series for an idle consume connection (consume.connection on-demand, nothing consuming)', labelNames: ['connection'], registers: r }),
    upstreamBlocked: new Gauge({ name: `${PREFIX}upstream_blocked`, help: '1 while the broker blocks the connection (memory or disk alarm)', labelNames: ['connection'], registers: r }),
    upstreamConnects: new Counter({ name: `${PREFIX}upstream_connects_total`, help: 'Successful broker connections', labelNames: ['connection'], registers: r }),
    upstreamConnectFailures: new Counter({
      name: `${PREFIX}upstream_connect_failures_total`,
      help: 'Failed connection attempts by classified cause',
      labelNames: ['connection', 'cause'],
      registers: r,
    }),
    upstreamDisconnects: new Counter({
      name: `${PREFIX}upstream_disconnects_total`,
      help: 'Lost broker connections by classified cause',
      labelNames: ['connection', 'cause'],
      registers: r,
    }),
    upstreamHeartbeat: new Gauge({ name: `${PREFIX}upstream_heartbeat_seconds`, help: 'Negotiated heartbeat of the current connection', labelNames: ['connection'], registers: r }),
    idleTimeoutDetected: new Gauge({
      name: `${PREFIX}upstream_idle_timeout_detected_seconds`,
      help: 'Idle timeout of a middlebox inferred from three recent idle cuts of one kind: the upper end of the bracket /v1/status names (0: none seen)',
      labelNames: ['connection'],
      registers: r,
    }),
    topologyErrors: new Counter({ name: `${PREFIX}topology_errors_total`, help: 'Failed topology declarations', labelNames: ['connection'], registers: r }),
    published: new Counter({
      name: `${PREFIX}published_total`,
      help: 'Publish outcomes: confirmed, accepted, unroutable, nacked, unknown, rejected',
      labelNames: ['outcome'],
      registers: r,
    }),
    publishDuration: new Histogram({
      name: `${PREFIX}publish_duration_seconds`,
      help: 'Time from request to broker confirm',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    acceptedDropped: new Counter({
      name: `${PREFIX}accepted_dropped_total`,
      help: 'Messages answered 202 that were later not published (nacked, unroutable, exchange missing, unconfirmed at shutdown)',
      labelNames: ['outcome'],
      registers: r,
    }),
    publishResends: new Counter({
      name: `${PREFIX}publish_resends_total`,
      help: 'Copies of messages written again (same message_id), by cause: channel_lost (the channel or connection died before the confirm) or nacked (re-sent on a fresh channel after a basic.nack, within publish.nackRetryMs)',
      labelNames: ['cause'],
      registers: r,
    }),
    deadLettered: new Counter({
      name: `${PREFIX}publish_dead_lettered_total`,
      help: 'Messages answered 202 that the broker refused for good and that went to publish.deadLetter, by reason',
      labelNames: ['reason'],
      registers: r,
    }),
    spoolMessages: new Gauge({ name: `${PREFIX}spool_messages`, help: 'Records in the disk spool not yet confirmed by the broker', registers: r }),
    spoolBytes: new Gauge({ name: `${PREFIX}spool_bytes`, help: 'Bytes the disk spool holds on disk', registers: r }),
    spoolOldestAge: new Gauge({
      name: `${PREFIX}spool_oldest_age_seconds`,
      help: 'Age of the oldest record in the disk spool not yet confirmed (0: empty)',
      registers: r,
      collect() {
        this.set(spoolOldestAge())
      },
    }),
    spoolDropped: new Counter({
      name: `${PREFIX}spool_dropped_bytes_total`,
      help: 'Bytes dropped while recovering the spool at start (a torn tail cut by a crash, or a corrupt record)',
      registers: r,
    }),
    bufferedMessages: new Gauge({ name: `${PREFIX}buffered_messages`, help: 'Messages queued or awaiting a confirm', registers: r }),
    bufferedBytes: new Gauge({ name: `${PREFIX}buffered_bytes`, help: 'Bytes (body, headers and properties) of messages queued or awaiting a confirm', registers: r }),
    deliveries: new Counter({ name: `${PREFIX}deliveries_total`, help: 'Messages handed to apps, by way', labelNames: ['via'], registers: r }),
    acks: new Counter({ name: `${PREFIX}acks_total`, help: 'App acks by result: acked, stale, unknown', labelNames: ['result'], registers: r }),
    nacks: new Counter({ name: `${PREFIX}nacks_total`, help: 'App nacks by result: nacked, stale, unknown', labelNames: ['result'], registers: r }),
    leaseExtensions: new Counter({
      name: `${PREFIX}lease_extensions_total`,
      help: 'Lease extensions (long jobs) by result: extended, stale, unknown',
      labelNames: ['result'],
      registers: r,
    }),
    leases: new Gauge({ name: `${PREFIX}leases`, help: 'Deliveries handed out and not yet settled', registers: r }),
    websocketClients: new Gauge({ name: `${PREFIX}websocket_clients`, help: 'Open WebSocket clients', registers: r }),
    websocketCuts: new Counter({
      name: `${PREFIX}websocket_cuts_total`,
      help: 'WebSocket clients closed (code 4008) because they did not read what they were sent',
      registers: r,
    }),
    pushPaused: new Gauge({
      name: `${PREFIX}push_paused`,
      help: '1 while a push subscription is paused because its app URL cannot be reached (refused, connect timeout)',
      labelNames: ['queue'],
      registers: r,
    }),
    rpc: new Counter({
      name: `${PREFIX}rpc_total`,
      help: 'Request/reply outcomes: replied, unroutable, timeout, unknown (link dropped while waiting), nacked, rejected (refused before sending)',
      labelNames: ['outcome'],
      registers: r,
    }),
    rpcDuration: new Histogram({
      name: `${PREFIX}rpc_duration_seconds`,
      help: 'Time from request to reply, for requests that got one',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    rpcOutstanding: new Gauge({ name: `${PREFIX}rpc_outstanding`, help: 'Requests waiting for a reply (bounded by rpc.maxOutstanding)', registers: r }),
    rpcLateReplies: new Counter({ name: `${PREFIX}rpc_late_replies_total`, help: 'Replies that matched no waiting request (it timed out, or the correlation id is unknown); dropped', registers: r }),
    replayed: new Counter({
      name: `${PREFIX}replay_messages_total`,
      help: 'Dead-letter replay, per message: replayed, or the reason it was left in the queue (no-x-death, no-origin, exchange-not-allowed, exchange-not-found, unroutable, nacked, unconfirmed)',
      labelNames: ['outcome'],
      registers: r,
    }),
    pushAttempts: new Counter({ name: `${PREFIX}push_attempts_total`, help: 'HTTP push attempts by outcome', labelNames: ['outcome'], registers: r }),
  }
}

export type Metrics = ReturnType<typeof createMetrics>
