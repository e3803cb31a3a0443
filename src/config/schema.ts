/**
 * The configuration schema: every key, its default and its doc, in one place
 * (DESIGN.md section 4). Environment names are derived, not written by hand:
 * `publish.timeoutMs` is AMQP_SIDECAR_PUBLISH_TIMEOUT_MS. A few keys keep the
 * shorter names DESIGN.md promises (AMQP_URL, AMQP_SIDECAR_API_PORT, ...).
 * Secrets (`amqp.urls`) are `sensitive` and never take a command-line argument.
 */

export const ENV_PREFIX = 'AMQP_SIDECAR_'

/** Keys whose environment variable is not the derived one. */
const ENV_OVERRIDES: Record<string, string> = {
  'amqp.urls': 'AMQP_URL',
  'api.port': 'AMQP_SIDECAR_API_PORT',
  'ops.port': 'AMQP_SIDECAR_OPS_PORT',
  'log.level': 'AMQP_SIDECAR_LOG_LEVEL',
}

/** Keys that must never come from argv (they carry or point at secrets). */
const NO_ARG = new Set(['amqp.urls'])

const ms = (doc: string, def: number, min = 0) => ({ doc, format: 'integer', default: def, min })

export const schema = {
  amqp: {
    urls: {
      doc: 'Broker URLs, tried in order for failover. Env AMQP_URL takes one URL or a comma-separated list.',
      format: 'amqp-url-list',
      default: ['amqp://guest:guest@127.0.0.1:5672/%2F'],
      sensitive: true,
    },
    urlFile: {
      doc: 'A file holding broker URLs (one per line or comma-separated). Wins over amqp.urls; re-read on every reconnect so rotated credentials apply.',
      format: 'nullable-string',
      default: null,
    },
    heartbeatSeconds: { doc: 'AMQP heartbeat to negotiate, in seconds. 0 disables heartbeats (not advised behind any proxy).', format: 'integer', default: 15 },
    adaptiveHeartbeat: {
      enabled: {
        doc: 'When disconnects show a middlebox cutting idle flows after ~T s, ask for a heartbeat of T/2 s (not below floorSeconds) on the next connection.',
        format: 'boolean',
        default: true,
      },
      floorSeconds: { doc: 'The lowest heartbeat adaptation may choose.', format: 'integer', default: 2, min: 1 },
    },
    keepAliveDelayMs: { doc: 'TCP keepalive idle delay on the broker socket.', format: 'integer', default: 15000 },
    unansweredWriteMs: ms(
      'A publish written after the publish connection was idle (no byte either way) for 1 s or more, and answered by no byte at all within this many ms, means the flow is dead: a middlebox forgot it and drops its packets silently, or the broker is frozen. The connection is replaced and the publish re-sent within its deadline. Keep it well below publish.timeoutMs. 0: off (then only the heartbeat and TCP keepalive find such a flow).',
      2000,
    ),
    connectTimeoutMs: ms('Deadline for TCP connect plus the AMQP handshake.', 10000, 1),
    reconnect: {
      initialDelayMs: ms('Smallest reconnect backoff cap (full jitter).', 500, 1),
      maxDelayMs: ms('Largest reconnect backoff cap (full jitter).', 30000, 1),
    },
    connectionName: { doc: 'connection_name client property, shown in the management UI.', format: String, default: 'amqp-sidecar' },
    tls: {
      caFile: { doc: 'PEM CA bundle for amqps.', format: 'nullable-string', default: null },
      certFile: { doc: 'PEM client certificate for amqps.', format: 'nullable-string', default: null },
      keyFile: { doc: 'PEM client key for amqps.', format: 'nullable-string', default: null },
      rejectUnauthorized: { doc: 'Verify the broker certificate.', format: 'boolean', default: true },
    },
  },
  api: {
    host: { doc: 'API listener address. Keep it on loopback.', format: String, default: '127.0.0.1' },
    port: { doc: 'API listener port (0 picks a free one).', format: 'port', default: 8672 },
    tokenFile: { doc: 'A file holding a bearer token the API requires. null: no token.', format: 'nullable-string', default: null },
    bodyLimitBytes: { doc: 'Largest request body accepted.', format: 'integer', default: 4194304, min: 1 },
    allowedHosts: {
      doc: 'Host header names (no port) the API answers besides loopback (127.0.0.1, localhost, [::1]). Any other Host is refused 403 HOST_NOT_ALLOWED (DNS rebinding). E.g. ["amqp-sidecar.local"].',
      format: 'host-list',
      default: [],
    },
    maxHeaderBytes: { doc: 'Largest request head (request line plus headers) accepted; larger answers 431.', format: 'integer', default: 16384, min: 1024 },
    headersTimeoutMs: ms('Deadline for a client to send the complete request head, from connect (slowloris); answered 408.', 10000, 1),
    requestTimeoutMs: ms('Deadline for a client to send the complete request, head and body (slow uploads); answered 408. Waiting for the response does not count.', 60000, 1),
    keepAliveTimeoutMs: ms('How long an idle keep-alive connection is kept open between requests.', 65000, 1),
    maxConnections: {
      doc: 'Most connections the API listener holds at once (keep-alive and WebSocket included). One over it is answered 503 TOO_MANY_CONNECTIONS and closed. 0: no cap.',
      format: 'integer',
      default: 0,
    },
  },
  ops: {
    host: { doc: 'Operations listener address (/livez, /readyz, /metrics).', format: String, default: '0.0.0.0' },
    port: { doc: 'Operations listener port (0 picks a free one).', format: 'port', default: 8673 },
  },
  publish: {
    timeoutMs: ms('Default per-request publish deadline (X-Timeout-Ms overrides).', 10000, 1),
    maxBufferedMessages: { doc: 'Bound on queued plus unconfirmed messages.', format: 'integer', default: 10000, min: 1 },
    maxBufferedBytes: { doc: 'Bound on queued plus unconfirmed body bytes.', format: 'integer', default: 67108864, min: 1 },
    mandatory: { doc: 'Publish with mandatory=true by default (unroutable answers 422).', format: 'boolean', default: true },
    persistent: { doc: 'Publish persistent messages by default.', format: 'boolean', default: true },
    allowedExchanges: { doc: 'Exchanges apps may publish to. null: any.', format: 'nullable-name-list', default: null },
    nackRetryMs: ms(
      "How long a message the broker nacked is re-sent, on a fresh channel with a backoff of 100 ms doubling to 1 s, counted from its first nack and never past its deadline, before it is answered 502 PUBLISH_NACKED (a 202 message goes to publish.deadLetter). Covers a quorum queue's leader moving; a queue with x-overflow reject-publish answers 502 after this long. 0: the first nack is answered.",
      5000,
    ),
    deadLetter: {
      doc: 'Where a message answered 202 goes when the broker refuses it for good (no such exchange, access refused, unroutable, nacked again and again): {"exchange", "routingKey"}, with the reason in the x-sidecar-error header. null: it is logged at error level with its message_id and counted in amqp_sidecar_accepted_dropped_total.',
      format: 'nullable-dead-letter',
      default: null,
    },
    spool: {
      dir: {
        doc: 'A directory for the durable spool: X-Ack: accepted messages are written there and fsynced before the 202, and survive a crash of the sidecar. null: accepted messages are held in memory only.',
        format: 'nullable-string',
        default: null,
      },
      maxBytes: { doc: 'Bound on the spool on disk; past it a 202 publish answers 503 BUFFER_FULL.', format: 'integer', default: 1073741824, min: 65536 },
    },
  },
  consume: {
    leaseMs: ms('How long an app may hold a delivery before it is requeued (default for pulls and WebSocket subscriptions); at most consume.maxLeaseMs.', 60000, 1),
    maxLeaseMs: ms(
      "Cap on any lease, initial or extended, counted from the delivery: longer requests are refused with 400. Keep it below RabbitMQ's consumer_timeout (30 min by default), which closes the channel of a delivery held longer. Push timeouts and retry schedules must fit in it too.",
      1500000,
      1000,
    ),
    defaultPrefetch: { doc: 'Prefetch for WebSocket subscriptions that give none.', format: 'integer', default: 10, min: 1 },
    allowedQueues: { doc: 'Queues apps may consume from. null: any.', format: 'nullable-name-list', default: null },
    push: { doc: 'HTTP push subscriptions.', format: 'push-list', default: [] },
    pullIdleMs: ms('A queue nobody pulls for this long, with nothing leased from it, has its channel closed (the next pull opens it again). Pulls never hold messages nobody asked for.', 30000, 1),
    pushTokenFile: {
      doc: 'A file holding the token sent as X-Sidecar-Token on every push, so the app can verify the caller. null: api.tokenFile, if set.',
      format: 'nullable-string',
      default: null,
    },
    connection: {
      doc: 'The consume connection. "on-demand": a second connection, opened at the first subscription (WebSocket, pull or push) and closed consume.connectionIdleMs after the last one ends. "always": that connection, opened at start. "shared": no second connection; consumers use the publish connection, so a broker memory or disk alarm, which blocks a publishing connection, also stalls their acks and deliveries.',
      format: ['on-demand', 'always', 'shared'],
      default: 'on-demand',
    },
    connectionIdleMs: ms('With consume.connection "on-demand": how long the consume connection stays open after the last subscription ends.', 30000, 0),
  },
  rpc: {
    maxOutstanding: {
      doc: 'Bound on requests waiting for a reply (POST /v1/rpc, WebSocket rpc); past it a request answers 503 RPC_BUSY.',
      format: 'integer',
      default: 1000,
      min: 1,
    },
  },
  topology: {
    exchanges: { doc: 'Exchanges declared on every (re)connect.', format: 'exchange-list', default: [] },
    queues: { doc: 'Queues declared on every (re)connect.', format: 'queue-list', default: [] },
    bindings: { doc: 'Bindings declared on every (re)connect.', format: 'binding-list', default: [] },
  },
  shutdown: {
    drainMs: ms('How long publishes and acks are still served after SIGTERM.', 10000),
  },
  log: {
    level: {
      doc: 'pino log level.',
      format: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      default: 'info',
    },
  },
}

type Leaf = { doc: string; default: unknown; env?: string; arg?: string }
const isLeaf = (v: object): v is Leaf => 'doc' in v && 'default' in v

/** Scalars get an env var and a CLI flag; arrays of objects (topology, push) come from the file only. */
function annotate(node: Record<string, object>, path: string[]): void {
  for (const [key, value] of Object.entries(node)) {
    const p = [...path, key]
    if (!isLeaf(value)) {
      annotate(value as Record<string, object>, p)
      continue
    }
    const dotted = p.join('.')
    const objectList = Array.isArray(value.default) && dotted.startsWith('topology.') || dotted === 'consume.push'
    if (objectList) continue
    value.env = ENV_OVERRIDES[dotted] ?? ENV_PREFIX + p.map((s) => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_')
    if (!NO_ARG.has(dotted)) value.arg = dotted
  }
}
annotate(schema as unknown as Record<string, object>, [])
