/**
 * Where a configuration value came from, so an error blames the right place: a
 * bad `--api.port` is the command line's fault, a bad AMQP_URL the environment's,
 * not the file's. Also reads the file itself, so a syntax error names a line and
 * a column (JSON.parse gives only a character offset) and a file that is not an
 * object (`[]`, `42`) is refused instead of silently meaning "no settings".
 */
import JSON5 from 'json5'
import { readFileSync } from 'node:fs'
import { schema } from './schema.js'

type Leaf = { doc: string; default: unknown; env?: string; arg?: string }
const isLeaf = (v: unknown): v is Leaf => typeof v === 'object' && v !== null && 'doc' in v && 'default' in v

export interface Sources {
  args: readonly string[]
  env: NodeJS.ProcessEnv
  file: string | null
  fileValues: Record<string, unknown> | undefined
  overrides: Record<string, unknown> | undefined
}

function lookup(obj: unknown, path: readonly string[]): unknown {
  let node = obj
  for (const p of path) {
    if (typeof node !== 'object' || node === null || !(p in node)) return undefined
    node = (node as Record<string, unknown>)[p]
  }
  return node
}

/** The place a key's effective value came from, in precedence order: flag, env, overrides, file. */
export function sourceOf(key: string, s: Sources): string {
  const path = key.split('.')
  // A key inside a list (topology.queues[0].name) belongs to its leaf key.
  let leaf: Leaf | undefined
  for (let i = path.length; i > 0 && !leaf; i--) {
    const node = lookup(schema, path.slice(0, i))
    if (isLeaf(node)) leaf = node
  }
  if (leaf?.arg && s.args.some((a) => a === `--${leaf.arg}` || a.startsWith(`--${leaf.arg}=`))) return `flag --${leaf.arg}`
  if (leaf?.env && s.env[leaf.env] !== undefined) return `environment ${leaf.env}`
  if (s.overrides && lookup(s.overrides, path) !== undefined) return 'overrides'
  if (s.file && s.fileValues && lookup(s.fileValues, path) !== undefined) return s.file
  return s.file ?? 'defaults'
}

/** Appends "(set by <source>)" to each of convict's "key: problem" lines. */
export function blame(message: string, s: Sources): string {
  return message
    .split('\n')
    .map((line) => {
      const m = /^([A-Za-z0-9_.]+): /.exec(line)
      return m?.[1] ? `${line} (set by ${sourceOf(m[1], s)})` : line
    })
    .join('\n')
}

/**
 * Parses a config file: JSON with comments (// and /* *\/) in any of .json,
 * .jsonc and .json5, since JSON5 reads plain JSON unchanged. Returns the
 * object or throws an Error naming the line and column.
 */
export function readConfigFile(file: string): Record<string, unknown> {
  const text = readFileSync(file, 'utf8')
  let value: unknown
  try {
    value = JSON5.parse(text)
  } catch (err) {
    const e = err as SyntaxError & { lineNumber?: number; columnNumber?: number }
    const at = e.lineNumber !== undefined ? `line ${e.lineNumber}, column ${e.columnNumber ?? '?'}` : 'unknown position'
    // JSON5's message already ends in "at L:C"; say it once, in words.
    throw new Error(`${file}: syntax error at ${at}: ${e.message.replace(/^JSON5: /, '').replace(/ at \d+:\d+$/, '')}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${file}: must hold a JSON object ({ "amqp": ..., "api": ... }), not ${Array.isArray(value) ? 'an array' : value === null ? 'null' : `a ${typeof value}`}`)
  }
  return value as Record<string, unknown>
}
