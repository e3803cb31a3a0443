/**
 * The operations listener: /livez (the process only, never the broker),
 * /readyz (connected, not blocked, buffer below its bound, not draining) and
 * /metrics. It binds 0.0.0.0 by default because kubelet probes the pod IP.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import type { Registry } from 'prom-client'
import type { Logger } from '../observe/logger.js'
import { serverLogging } from './server-options.js'
import { installErrorHandling } from './errors.js'

export interface Readiness {
  ready: boolean
  reasons: string[]
}

export function buildOpsServer(deps: { log: Logger; registry: Registry; readiness: () => Readiness }): FastifyInstance {
  const app = Fastify(serverLogging(deps.log, 'ops'))
  installErrorHandling(app, deps.log)
  app.get('/livez', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const r = deps.readiness()
    return reply.code(r.ready ? 200 : 503).send({ status: r.ready ? 'ready' : 'not-ready', reasons: r.reasons })
  })
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', deps.registry.contentType)
    return deps.registry.metrics()
  })
  return app
}
