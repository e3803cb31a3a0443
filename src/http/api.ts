/**
 * The app-facing API listener (loopback by default). Routes are plugins; the
 * lifecycle gate refuses requests once the drain period is over.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import { serverLogging } from './server-options.js'
import { installErrorHandling, sendError } from './errors.js'
import { installValidation } from './validation.js'
import { installGuard } from './guard.js'
import { serverLimits } from './limits.js'
import { ApiToken } from './token.js'
import type { SidecarConfig } from '../config/index.js'
import type { SecretRegistry } from '../observe/redact.js'
import { registerOpenApi } from './openapi.js'
import { publishRoutes, type PublishRouteDeps } from './routes/publish.js'
import { statusRoutes } from './routes/status.js'
import { pullRoutes } from './routes/pull.js'
import { ackRoutes } from './routes/ack.js'
import { wsRoutes } from './ws.js'
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
  })
  installErrorHandling(app, deps.log)
  installValidation(app)
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
    if (deps.replayer) await app.register(replayRoutes, { consumers, replayer: deps.replayer, defaultTimeoutMs: deps.defaults.timeoutMs })
    await app.register(wsRoutes, { consumers, publishUpstream, metrics, publisher: deps.publisher, defaults: deps.defaults, bodyLimitBytes: deps.bodyLimitBytes, log: deps.log, rpc: deps.rpc })
  }
  return app
}
