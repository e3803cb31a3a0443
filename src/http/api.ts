/**
 * The app-facing API listener (loopback by default). Routes are plugins; the
 * lifecycle gate refuses requests once the drain period is over.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import { serverLogging } from './server-options.js'
import { installErrorHandling, sendError } from './errors.js'
import { installValidation, lazySchemaCompilers } from './validation.js'
import { installGuard } from './guard.js'
import { capConnections, serverLimits } from './limits.js'
import { ApiToken } from './token.js'
import type { SidecarConfig } from '../config/index.js'
import type { SecretRegistry } from '../observe/redact.js'
import { registerOpenApi } from './openapi.js'
import { publishRoutes, type PublishRouteDeps } from './routes/publish.js'
import { statusRoutes } from './routes/status.js'
import { pullRoutes } from './routes/pull.js'
import { ackRoutes } from './routes/ack.js'
import { leaseRoutes } from './routes/leases.js'
import { wsRoutes } from './ws/route.js'
import { rpcRoutes } from './routes/rpc.js'
import type { RpcClient } from '../rpc/client.js'
import { replayRoutes } from './routes/replay.js'
import type { Replayer } from '../replay/replayer.js'
import type { Consumers } from '../consume/consumers.js'
import type { Metrics } from '../observe/metrics.js'
import type { Upstream } from '../upstream/connection.js'

export interface ApiDeps extends PublishRouteDeps {
  log: Logger
  status: () => Record<string, unknown>
  /** False once the sidecar stopped serving (after shutdown.drainMs). */
  accepting: () => boolean
  /** api.*: limits, api.tokenFile and api.allowedHosts (see http/limits.ts and http/guard.ts). */
  api: SidecarConfig['api']
  /** The API token is registered here so it is scrubbed from every log line. */
  secrets: SecretRegistry
  /** Consuming (WebSocket, pull, ack/nack); without it those routes are not served. */
  consumers?: Consumers
  /** The publish connection, whose state WebSocket status frames report too. */
  publishUpstream?: Upstream
  metrics?: Metrics
  /** Request/reply (POST /v1/rpc, WebSocket rpc); without it those are not served. */
  rpc?: RpcClient
  /** Dead-letter replay; needs consumers (the allow-list) too. */
  replayer?: Replayer
}

export async function buildApiServer(deps: ApiDeps): Promise<FastifyInstance> {
  // Read before listening: a missing or invalid token file stops the start (fail closed).
  const token = deps.api.tokenFile ? new ApiToken(deps.api.tokenFile, deps.secrets, deps.log) : null
  const app = Fastify({
    ...serverLogging(deps.log, 'api'),
    // Body, head size, slowloris and idle limits; bodyLimit is api.bodyLimitBytes.
    ...serverLimits(deps.api),
    // Close idle keep-alive sockets on close(), so shutdown is not held by a pooled client.
    forceCloseConnections: 'idle',
    return503OnClosing: false,
    // Validators and serializers compiled at a route's first use, not at start (footprint).
    ...lazySchemaCompilers(),
  })
  installErrorHandling(app, deps.log)
  installValidation(app)
  // Before the guard: a request on a connection over api.maxConnections is not served at all.
  capConnections(app, deps.api.maxConnections, deps.log)
  // First hook: Origin/Host/token checks run before anything else, WebSocket upgrades included.
  installGuard(app, { allowedHosts: deps.api.allowedHosts, apiHost: deps.api.host, token })
  app.addHook('onRequest', async (_req, reply) => {
    if (!deps.accepting()) return sendError(reply, new SidecarError('SHUTTING_DOWN'))
  })
  // Before every route: the document describes the routes registered after it.
  registerOpenApi(app)
  await app.register(publishRoutes, deps)
  await app.register(statusRoutes, { status: deps.status })
  if (deps.rpc) await app.register(rpcRoutes, { rpc: deps.rpc, defaults: deps.defaults, bodyLimitBytes: deps.bodyLimitBytes })
  if (deps.consumers && deps.publishUpstream && deps.metrics) {
    const { consumers, publishUpstream, metrics } = deps
    await app.register(pullRoutes, { consumers })
    await app.register(ackRoutes, { consumers })
    await app.register(leaseRoutes, { consumers })
    if (deps.replayer) await app.register(replayRoutes, { consumers, replayer: deps.replayer, defaultTimeoutMs: deps.defaults.timeoutMs })
    // One encapsulated scope, as app.register(wsRoutes) would make, so that the
    // WebSocket server @fastify/websocket decorates it with is in reach of the hook.
    await app.register(async (scope) => {
      await wsRoutes(scope, { consumers, publishUpstream, metrics, publisher: deps.publisher, defaults: deps.defaults, bodyLimitBytes: deps.bodyLimitBytes, log: deps.log, rpc: deps.rpc })
      if (token) closeSocketsOnRotation(scope, token, deps.log)
    })
  }
  return app
}

/** WebSocket close code sent to a socket opened with an API token that was since rotated. */
export const WS_CLOSE_TOKEN_ROTATED = 4401

type WsClient = { readyState: number; close(code: number, reason: string): void }
type WsServer = { clients: Set<WsClient>; on(event: 'connection', fn: (ws: WsClient) => void): void }

/**
 * A rotated token must end the sessions it opened, not only refuse new requests:
 * each socket remembers the token generation it was accepted under, and a rotation
 * closes the older ones with WS_CLOSE_TOKEN_ROTATED (their deliveries are requeued
 * like any closed socket's). The app reconnects with the new token.
 */
function closeSocketsOnRotation(app: FastifyInstance, token: ApiToken, log: Logger): void {
  const openedUnder = new WeakMap<WsClient, number>()
  app.addHook('onReady', async () => {
    const wss = (app as unknown as { websocketServer: WsServer }).websocketServer
    wss.on('connection', (ws) => openedUnder.set(ws, token.generation))
    token.onRotate((generation) => {
      let closed = 0
      for (const ws of wss.clients) {
        if ((openedUnder.get(ws) ?? -1) < generation && ws.readyState === 1) {
          ws.close(WS_CLOSE_TOKEN_ROTATED, 'API token rotated')
          closed++
        }
      }
      if (closed > 0) log.info({ closed }, 'closed the WebSockets opened with the previous API token')
    })
    token.watch()
  })
  app.addHook('onClose', async () => token.unwatch())
}
