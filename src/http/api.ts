/**
 * The app-facing API listener (loopback by default). Routes are plugins; the
 * lifecycle gate refuses requests once the drain period is over.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { SidecarError } from '../errors.js'
import type { Logger } from '../observe/logger.js'
import { serverLogging } from './server-options.js'
import { installErrorHandling, sendError } from './errors.js'
import { registerOpenApi } from './openapi.js'
import { publishRoutes, type PublishRouteDeps } from './routes/publish.js'
import { statusRoutes } from './routes/status.js'

export interface ApiDeps extends PublishRouteDeps {
  log: Logger
  status: () => Record<string, unknown>
  /** False once the sidecar stopped serving (after shutdown.drainMs). */
  accepting: () => boolean
}

/** Slow or idle clients cannot hold a socket for ever. */
const REQUEST_TIMEOUT_MS = 330_000
const KEEP_ALIVE_TIMEOUT_MS = 65_000

export async function buildApiServer(deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    ...serverLogging(deps.log, 'api'),
    bodyLimit: deps.bodyLimitBytes,
    requestTimeout: REQUEST_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    // Close idle keep-alive sockets on close(), so shutdown is not held by a pooled client.
    forceCloseConnections: 'idle',
    return503OnClosing: false,
  })
  installErrorHandling(app, deps.log)
  app.addHook('onRequest', async (_req, reply) => {
    if (!deps.accepting()) return sendError(reply, new SidecarError('SHUTTING_DOWN'))
  })
  // Before every route: @fastify/swagger documents the routes registered after it.
  await registerOpenApi(app)
  await app.register(publishRoutes, deps)
  await app.register(statusRoutes, { status: deps.status })
  return app
}
