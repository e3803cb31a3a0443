/**
 * The app factory: builds every part from a validated config and injected
 * logger/metrics, and owns the lifecycle. It never touches process, signals
 * or argv (main.ts does), so tests start and stop real sidecars in-process.
 *
 *   created --start()--> running --shutdown()--> draining --> closing --> closed
 */
import type { FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import type { SidecarConfig } from './config/index.js'
import { Consumers } from './consume/consumers.js'
import { TIMED_OUT, withDeadline } from './deadline.js'
import { buildApiServer } from './http/api.js'
import { buildOpsServer, type Readiness } from './http/ops.js'
import type { Logger } from './observe/logger.js'
import { createMetrics, type Metrics } from './observe/metrics.js'
import { SecretRegistry } from './observe/redact.js'
import { PublishBuffer } from './publish/buffer.js'
import { Publisher } from './publish/publisher.js'
import { Spool } from './spool/spool.js'
import { RpcClient } from './rpc/client.js'
import { Replayer } from './replay/replayer.js'
import { Upstream } from './upstream/connection.js'
import { OnDemandConnection } from './upstream/on-demand.js'
import { detectIdleTimeout, diagnose } from './upstream/diagnosis.js'

export type SidecarState = 'created' | 'running' | 'draining' | 'closing' | 'closed'

export interface SidecarDeps {
  log: Logger
  metrics?: Metrics
  secrets?: SecretRegistry
}

export interface Addresses {
  api: { host: string; port: number }
  ops: { host: string; port: number }
}

export interface Sidecar {
  readonly state: SidecarState
  readonly upstream: Upstream
  /** The connection consumers and their acks use (see upstream/connection.ts): the second one, or `upstream` when consume.connection is "shared". */
  readonly consumeUpstream: Upstream
  readonly consumers: Consumers
  readonly metrics: Metrics
  start(): Promise<Addresses>
  /** Staged shutdown; resolves when everything is closed. Idempotent. */
  shutdown(opts?: { drainMs?: number }): Promise<void>
  status(): Record<string, unknown>
  readiness(): Readiness
}

/** After the drain, how long outstanding confirms may take at most. */
const CONFIRM_WAIT_CAP_MS = 10_000
/** Each shutdown step that waits on the broker or on clients gets at most this long. */
const STEP_DEADLINE_MS = 5_000

export function buildSidecar(config: SidecarConfig, deps: SidecarDeps): Sidecar {
  const log = deps.log
  const metrics = deps.metrics ?? createMetrics()
  const secrets = deps.secrets ?? new SecretRegistry()
  for (const url of config.amqp.urls) secrets.addUrl(url)

  const upstream = new Upstream('publish', config, log, metrics, secrets)
  const buffer = new PublishBuffer(config.publish.maxBufferedMessages, config.publish.maxBufferedBytes, metrics)
  const publisher = new Publisher(upstream, buffer, metrics, log, { deadLetter: config.publish.deadLetter, nackRetryMs: config.publish.nackRetryMs })
  const spool = config.publish.spool.dir === null ? undefined : new Spool(config.publish.spool.dir, config.publish.spool.maxBytes, publisher, log, metrics)
  if (spool) publisher.useStore(spool)
  // Request/reply has its own channel on the publish connection (direct reply-to).
  const rpc = new RpcClient(upstream, config.rpc.maxOutstanding, metrics, log)
  // Consumers get their own connection (a memory alarm blocks the publishing one, and must not block acks),
  // unless the operator chose one shared connection; by default it opens only while something consumes.
  const mode = config.consume.connection
  const consumeUpstream = mode === 'shared' ? upstream : new Upstream('consume', config, log, metrics, secrets)
  const onDemand = mode === 'on-demand' ? new OnDemandConnection(consumeUpstream, config.consume.connectionIdleMs, log) : undefined
  const consumers = new Consumers({ config, upstream: consumeUpstream, log, metrics, secrets, ...(onDemand ? { onUsers: (n: number) => onDemand.setUsers(n) } : {}) })
  // A replay is a one-off operator request that publishes anyway: unless the consume connection is always
  // open, its basic.get runs on the publish connection rather than opening the consume one for it.
  const replayer = new Replayer({ publishUpstream: upstream, consumeUpstream: mode === 'always' ? consumeUpstream : upstream, allowedExchanges: config.publish.allowedExchanges, metrics, log })

  let state: SidecarState = 'created'
  let api: FastifyInstance | undefined
  let ops: FastifyInstance | undefined
  let shutdownPromise: Promise<void> | undefined
  const startedAt = new Date().toISOString()

  const status = () => {
    const up = upstream.status()
    const idlePattern = detectIdleTimeout(upstream.history)
    return {
      sidecar: { state, startedAt },
      upstream: up,
      buffer: buffer.snapshot(),
      spool: spool?.status() ?? null,
      consumeUpstream: mode === 'shared' ? { ...upstream.status(), shared: true } : consumeUpstream.status(),
      consumers: consumers.status(),
      rpc: { outstanding: rpc.outstanding, maxOutstanding: config.rpc.maxOutstanding },
      diagnosis: diagnose({
        state: up.state,
        heartbeatSeconds: up.heartbeatSeconds ?? upstream.heartbeatSeconds,
        lastDisconnect: up.lastDisconnect,
        lastConnectError: up.lastConnectError,
        blockedReason: up.blockedReason,
        topologyError: up.topologyError,
        idlePattern,
      }),
      idleTimeoutDetected: idlePattern,
    }
  }

  const readiness = (): Readiness => {
    const reasons: string[] = []
    if (state !== 'running') reasons.push(`sidecar is ${state}`)
    if (upstream.state === 'blocked') reasons.push(`upstream blocked: ${upstream.status().blockedReason}`)
    else if (upstream.state !== 'connected') reasons.push(`upstream ${upstream.state}`)
    if (upstream.topologyError) reasons.push(`topology: ${upstream.topologyError.message}`)
    // A blocked consume connection still delivers and acks; only a lost one stops consumers. An idle
    // one (on-demand, nothing consuming) is not needed, so readiness follows the connections that exist.
    const consumeState = consumeUpstream.state
    if (consumeUpstream !== upstream && consumeState !== 'idle' && consumeState !== 'connected' && consumeState !== 'blocked') reasons.push(`consume upstream ${consumeState}`)
    if (buffer.full) reasons.push('publish buffer full')
    return { ready: reasons.length === 0, reasons }
  }

  const step = async (what: string, work: Promise<unknown>) => {
    if ((await withDeadline(work, STEP_DEADLINE_MS)) === TIMED_OUT) log.warn({ step: what, deadlineMs: STEP_DEADLINE_MS }, 'a shutdown step overran its deadline; going on')
  }

  const listen = async (app: FastifyInstance, host: string, port: number) => {
    await app.listen({ host, port })
    const addr = app.server.address() as AddressInfo
    return { host: addr.address, port: addr.port }
  }

  const sidecar: Sidecar = {
    get state() {
      return state
    },
    upstream,
    consumeUpstream,
    consumers,
    metrics,
    status,
    readiness,

    async start() {
      if (state !== 'created') throw new Error(`cannot start a sidecar that is ${state}`)
      // First: a spool directory that cannot be used must stop the start, with a clear error.
      await spool?.open()
      state = 'running'
      ops = buildOpsServer({ log, registry: metrics.registry, readiness })
      api = await buildApiServer({
        log,
        publisher,
        bodyLimitBytes: config.api.bodyLimitBytes,
        api: config.api,
        secrets,
        defaults: {
          mandatory: config.publish.mandatory,
          persistent: config.publish.persistent,
          timeoutMs: config.publish.timeoutMs,
          allowedExchanges: config.publish.allowedExchanges,
          internalExchanges: config.topology.exchanges.filter((e) => e.internal).map((e) => e.name),
          bodyLimitBytes: config.api.bodyLimitBytes,
        },
        status,
        accepting: () => state === 'running' || state === 'draining',
        consumers,
        publishUpstream: upstream,
        metrics,
        rpc,
        replayer,
      })
      const opsAddr = await listen(ops, config.ops.host, config.ops.port)
      const apiAddr = await listen(api, config.api.host, config.api.port)
      upstream.start()
      if (mode === 'always') consumeUpstream.start()
      consumers.start()
      log.info({ api: apiAddr, ops: opsAddr }, 'amqp-sidecar listening')
      return { api: apiAddr, ops: opsAddr }
    },

    shutdown(opts = {}) {
      shutdownPromise ??= (async () => {
        const drainMs = opts.drainMs ?? config.shutdown.drainMs
        if (state === 'created') {
          state = 'closed'
          return
        }
        // 1. Not ready: the platform stops sending traffic; publishes are still served.
        state = 'draining'
        // Consumers first: cancel them and requeue prefetched messages nobody was given; acks keep working.
        await step('cancel consumers', consumers.stopConsuming())
        log.info({ drainMs }, 'shutting down: readiness is 503, still serving publishes during the drain (signal again to exit now)')
        await new Promise((r) => setTimeout(r, drainMs))
        // 2. Stop serving, wait for outstanding confirms, answer whatever is left.
        state = 'closing'
        const confirmWait = Math.min(config.publish.timeoutMs, CONFIRM_WAIT_CAP_MS)
        // Spooled messages not confirmed by then stay on disk for the next start.
        await spool?.quiesce(confirmWait)
        const drained = await publisher.drain(confirmWait)
        if (!drained) log.warn({ held: buffer.snapshot(), waitedMs: confirmWait }, 'messages still unconfirmed at shutdown; they are answered 504 or logged')
        await step('close the publisher', publisher.close())
        await step('answer waiting requests', rpc.close())
        await step('close the spool', spool?.close() ?? Promise.resolve())
        // Leases not acked within the drain are requeued (nack requeue=true), never dead-lettered.
        await step('requeue leases and close consumers', consumers.close())
        await step('close the API listener', api?.close() ?? Promise.resolve())
        onDemand?.close()
        // 3. Close the AMQP connections cleanly (connection.close, not a dropped socket); each has its own deadline.
        await Promise.all([upstream.close(), consumeUpstream.close()])
        await step('close the ops listener', ops?.close() ?? Promise.resolve())
        state = 'closed'
        log.info('amqp-sidecar stopped')
      })()
      return shutdownPromise
    },
  }
  return sidecar
}
