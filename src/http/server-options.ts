/** Options both listeners share: our pino logger, and no per-request log lines (a hot path at thousands of requests a second). */
import { LogController, type FastifyBaseLogger } from 'fastify'
import type { Logger } from '../observe/logger.js'

export function serverLogging(log: Logger, listener: 'api' | 'ops') {
  return {
    loggerInstance: log.child({ listener }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
  }
}
