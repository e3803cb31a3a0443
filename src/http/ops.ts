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
import { lazySchemaCompilers } from './validation.js'

export interface Readiness {
  ready: boolean
  reasons: string[]
}

export function buildOpsServer(deps: { log: Logger; registry: Registry; readiness: () => Readiness }): FastifyInstance {
  // No schemas here; the lazy compilers only keep fastify from loading its default ajv compiler.
  const app = Fastify({ ...serverLogging(deps.log, 'ops'), ...lazySchemaCompilers() })
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
