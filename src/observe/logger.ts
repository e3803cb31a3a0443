/** pino logger with secret scrubbing applied to every line it writes. */
import { pino, type DestinationStream, type Logger } from 'pino'
import type { SecretRegistry } from './redact.js'

export type { Logger } from 'pino'

export function createLogger(opts: { level: string; secrets: SecretRegistry; destination?: DestinationStream }): Logger {
  const { secrets } = opts
  // Wrap the destination: the last place a line passes through, so a secret
  // inside a library's error message is caught as well as our own fields.
  const target: DestinationStream = opts.destination ?? pino.destination({ dest: 1, sync: false })
  const scrubbing: DestinationStream = {
    write(line: string) {
      return target.write(secrets.size === 0 ? line : secrets.scrub(line))
    },
  }
  return pino(
    {
      level: opts.level,
      base: { name: 'amqp-sidecar' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['password', '*.password', 'headers.authorization', 'req.headers.authorization', 'token'], censor: '***' },
    },
    scrubbing,
  )
}
