/**
 * Checks the command line before convict sees it. convict silently ignores
 * flags it does not know, so a typo such as `--api.prot 0` or a misspelt
 * command (`chek-config`) would otherwise start the sidecar with defaults.
 */
import { schema } from './schema.js'

type Node = { [key: string]: unknown }

function collectFlags(node: Node, out: Set<string>): Set<string> {
  for (const value of Object.values(node)) {
    if (!value || typeof value !== 'object' || Array.isArray(value)) continue
    const leaf = value as { doc?: unknown; default?: unknown; arg?: unknown }
    if ('doc' in leaf && 'default' in leaf) {
      if (typeof leaf.arg === 'string') out.add(leaf.arg)
    } else collectFlags(value as Node, out)
  }
  return out
}

/** Every --<key> the CLI accepts (--config included). */
export function knownFlags(): Set<string> {
  return collectFlags(schema as unknown as Node, new Set(['config']))
}

/**
 * Returns a message naming the first argument the CLI would not understand,
 * or undefined when all are fine. Values are never echoed (they may be secret).
 */
export function checkArgs(args: readonly string[]): string | undefined {
  const known = knownFlags()
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string
    if (!a.startsWith('--')) return `unexpected argument "${a}" (commands: check-config; see --help)`
    const name = a.slice(2).split('=')[0] as string
    if (!known.has(name)) return `unknown option --${name} (see --help for the options; config keys are --<section>.<key>)`
    const next = args[i + 1]
    if (!a.includes('=') && next !== undefined && !next.startsWith('--')) i++
  }
  return undefined
}
