#!/usr/bin/env node
/**
 * The process: argv, config, logger, signals, exit codes. Everything else is
 * in buildSidecar(), which never touches the process.
 *
 *   amqp-sidecar [--config <file>] [--<key> <value> ...]
 *   amqp-sidecar check-config [--config <file>]
 *   amqp-sidecar --help | --version
 */
import closeWithGrace from 'close-with-grace'
import { readFileSync } from 'node:fs'
import { checkArgs } from './config/args.js'
import { ConfigError, DEFAULT_CONFIG_FILE, loadConfig } from './config/index.js'
import { createLogger } from './observe/logger.js'
import { SecretRegistry } from './observe/redact.js'
import { buildSidecar } from './sidecar.js'

/** Beyond drain + confirm wait + connection close, the process exits regardless. */
const SHUTDOWN_SLACK_MS = 20_000

const HELP = `amqp-sidecar: one robust RabbitMQ connection behind a localhost HTTP and WebSocket API

Usage:
  amqp-sidecar [--config <file>] [--<key> <value> ...]   run the sidecar
  amqp-sidecar check-config [--config <file>]            validate and print the effective config (secrets masked)
  amqp-sidecar --help | --version

The config file defaults to AMQP_SIDECAR_CONFIG, else ${DEFAULT_CONFIG_FILE}.
Any scalar key can be set as --<key> (e.g. --api.port 0) or as an environment
variable (e.g. AMQP_SIDECAR_API_PORT, AMQP_SIDECAR_PUBLISH_TIMEOUT_MS). Broker
URLs come from the file, AMQP_URL or amqp.urlFile, never from the command line.
Signals: SIGTERM/SIGINT drain and exit 0; a second signal exits at once.
`

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP)
    return 0
  }
  if (argv.includes('--version')) {
    process.stdout.write(`${version()}\n`)
    return 0
  }
  const checkOnly = argv[0] === 'check-config'
  const args = checkOnly ? argv.slice(1) : argv
  const argError = checkArgs(args)
  if (argError) {
    process.stderr.write(`amqp-sidecar: ${argError}\n`)
    return 2
  }
  let loaded
  try {
    loaded = loadConfig({ args })
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    process.stderr.write(`amqp-sidecar: ${err.message}\n`)
    return 2
  }
  if (checkOnly) {
    process.stdout.write(`${loaded.describe()}\n`)
    process.stderr.write(`amqp-sidecar: configuration OK${loaded.file ? ` (${loaded.file})` : ''}\n`)
    return 0
  }
  const { config } = loaded
  const secrets = new SecretRegistry()
  const log = createLogger({ level: config.log.level, secrets })
  const sidecar = buildSidecar(config, { log, secrets })
  const hardDeadline = config.shutdown.drainMs + config.publish.timeoutMs + SHUTDOWN_SLACK_MS
  const grace = closeWithGrace({ delay: hardDeadline, logger: { error: (m: unknown) => log.error(String(m)) } }, async ({ signal, err }) => {
    if (err) log.error({ err }, 'fatal error, shutting down')
    else if (signal) log.info({ signal }, 'signal received')
    else log.info('nothing left to run, shutting down')
    await sidecar.shutdown()
  })
  try {
    await sidecar.start()
  } catch (err) {
    // close-with-grace would otherwise run again when the loop empties and exit 0.
    grace.uninstall()
    const reason = startFailure(err)
    log.fatal({ err }, `could not start: ${reason}`)
    await sidecar.shutdown({ drainMs: 0 })
    process.stderr.write(`amqp-sidecar: could not start: ${reason}\n`)
    return 1
  }
  return -1
}

/** One line an operator can act on, for the ways a start fails. */
function startFailure(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number }
  const where = e.address !== undefined && e.port !== undefined ? `${e.address}:${e.port}` : undefined
  if (e.code === 'EADDRINUSE' && where) return `${where} is already in use (api.port / ops.port)`
  if (e.code === 'EACCES' && where) return `no permission to listen on ${where}`
  if (e.code === 'EADDRNOTAVAIL' && where) return `${where} is not an address of this host (api.host / ops.host)`
  return e.message ?? String(err)
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`amqp-sidecar: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  },
)
