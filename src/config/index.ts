/**
 * Loads, validates and freezes the configuration. Precedence: CLI > env > file
 * > defaults (convict re-applies env and argv after loadFile). Unknown keys are
 * rejected. The file comes from --config, else AMQP_SIDECAR_CONFIG, else
 * config/default.json next to the package.
 */
import convict from 'convict'
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { redactUrl } from '../observe/redact.js'
import { registerFormats } from './formats.js'
import { schema } from './schema.js'
import { blame, readConfigFile, type Sources } from './sources.js'
import type { Config, SidecarConfig } from './types.js'

export type { SidecarConfig } from './types.js'

registerFormats()

const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const DEFAULT_CONFIG_FILE = join(PACKAGE_ROOT, 'config', 'default.json')

export class ConfigError extends Error {
  override name = 'ConfigError'
}

export interface LoadOptions {
  /** argv without node and the script (flags like --api.port 0). --config is taken out here. */
  args?: string[]
  env?: NodeJS.ProcessEnv
  /** An explicit file; wins over --config and AMQP_SIDECAR_CONFIG. */
  file?: string | null
  /** Plain overrides applied after the file (tests use this instead of temp files). */
  overrides?: Record<string, unknown>
}

export interface LoadedConfig {
  config: SidecarConfig
  file: string | null
  /** The effective config as JSON with sensitive values masked. */
  describe(): string
}

/** Splits --config <path> / --config=<path> out of argv, so convict never sees it. */
export function extractConfigFlag(args: string[]): { file: string | undefined; rest: string[] } {
  const rest: string[] = []
  let file: string | undefined
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string
    if (a === '--config') {
      file = args[++i]
      if (file === undefined) throw new ConfigError('--config needs a path')
    } else if (a.startsWith('--config=')) file = a.slice('--config='.length)
    else rest.push(a)
  }
  return { file, rest }
}

export function loadConfig(opts: LoadOptions = {}): LoadedConfig {
  const env = opts.env ?? process.env
  const { file: flagFile, rest } = extractConfigFlag(opts.args ?? [])
  refuseSecretFlags(rest)
  const file = opts.file !== undefined ? opts.file : flagFile ?? env.AMQP_SIDECAR_CONFIG ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : null)
  const conf = convict<Config>(schema as never, { env, args: rest })
  const sources: Sources = { args: rest, env, file, fileValues: undefined, overrides: opts.overrides }
  try {
    if (file) {
      if (!existsSync(file)) throw new ConfigError(`config file not found: ${file}`)
      try {
        sources.fileValues = readConfigFile(file)
      } catch (err) {
        throw new ConfigError(`invalid configuration: ${(err as Error).message}`)
      }
      // load() re-applies env and argv over the file, like loadFile() did.
      conf.load(sources.fileValues as never)
    }
    if (opts.overrides) conf.load(opts.overrides as never)
    conf.validate({ allowed: 'strict' })
  } catch (err) {
    if (err instanceof ConfigError) throw err
    // convict's messages name the key and the problem; our formats never echo secrets.
    throw new ConfigError(`invalid configuration: ${blame((err as Error).message, sources)}`)
  }
  const config = deepFreeze(conf.getProperties()) as SidecarConfig
  if (config.api.headersTimeoutMs > config.api.requestTimeoutMs) {
    // Node refuses this combination at listen time; say so at load time instead.
    throw new ConfigError('invalid configuration: api.headersTimeoutMs must not exceed api.requestTimeoutMs')
  }
  if (config.amqp.urls.length === 0 && config.amqp.urlFile === null) {
    throw new ConfigError('invalid configuration: amqp.urls: must be a non-empty list of amqp:// or amqps:// URLs (or set amqp.urlFile)')
  }
  if (config.amqp.reconnect.initialDelayMs > config.amqp.reconnect.maxDelayMs) {
    throw new ConfigError('invalid configuration: amqp.reconnect.initialDelayMs must not exceed amqp.reconnect.maxDelayMs')
  }
  return { config, file, describe: () => describe(config) }
}

/**
 * The effective config as JSON, broker URLs shown as /v1/status shows them
 * (amqp://user:***@host/vhost): which broker and user is what an operator checks.
 */
function describe(config: SidecarConfig): string {
  return JSON.stringify({ ...config, amqp: { ...config.amqp, urls: config.amqp.urls.map(redactUrl) } }, null, 2)
}

/** Flags that would put a secret in argv (visible to every user through ps and /proc). */
const SECRET_FLAGS = ['--amqp.urls']

/**
 * convict silently ignores a flag that has no `arg`, so a broker URL given on
 * the command line would be dropped without a word. Refuse it loudly instead,
 * without echoing the value (it carries a password).
 */
function refuseSecretFlags(args: readonly string[]): void {
  for (const a of args) {
    const flag = SECRET_FLAGS.find((f) => a === f || a.startsWith(`${f}=`) || a.startsWith(`${f}.`))
    if (flag) {
      throw new ConfigError(`${flag} is not accepted on the command line (argv is visible to every local user); use amqp.urlFile, AMQP_URL or the config file`)
    }
  }
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}
