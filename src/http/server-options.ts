/** Options both listeners share: our pino logger, and no per-request log lines (a hot path at thousands of requests a second). */
import { LogController, type FastifyBaseLogger } from 'fastify'
import type { Logger } from '../observe/logger.js'

export function serverLogging(log: Logger, listener: 'api' | 'ops') {
  const logger = log.child({ listener }) as FastifyBaseLogger
  return {
    loggerInstance: logger,
    logController: new LogController({ disableRequestLogging: true }),
    // fastify gives every request a child logger bound to its id: a pino child (bindings
    // serialised, an object per request) that nothing reads, since request logging is off
    // and our error handler logs with its own fields. The profile of single-message publish
    // showed it; request.log is the listener's logger instead.
    childLoggerFactory: () => logger,
  }
}
