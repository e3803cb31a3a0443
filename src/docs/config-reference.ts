/**
 * Renders docs/configuration.md from the convict schema, so the reference
 * lists exactly the keys, defaults, environment variables and flags the
 * sidecar accepts (src/config/schema.ts is the single source).
 */
import { schema } from '../config/schema.js'

interface Leaf {
  doc: string
  default: unknown
  format?: unknown
  env?: string
  arg?: string
  sensitive?: boolean
}

const isLeaf = (v: object): v is Leaf => 'doc' in v && 'default' in v

function formatName(f: unknown): string {
  if (typeof f === 'function') return (f as { name: string }).name.toLowerCase()
  if (Array.isArray(f)) return f.map((x) => `\`${String(x)}\``).join(' \\| ')
  return typeof f === 'string' ? f : 'any'
}

const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ')
const code = (s: string) => `\`${s}\``

function rows(node: Record<string, object>, path: string[], out: string[]): void {
  for (const [key, value] of Object.entries(node)) {
    const p = [...path, key]
    if (!isLeaf(value)) {
      rows(value as Record<string, object>, p, out)
      continue
    }
    const def = value.sensitive ? '(sensitive)' : code(JSON.stringify(value.default))
    const env = value.env ? code(value.env) : 'file only'
    const arg = value.arg ? code(`--${value.arg}`) : 'file only'
    const secret = value.sensitive ? ' **Sensitive**: check-config shows the password as `***`; never accepted on the command line.' : ''
    out.push(`| ${code(p.join('.'))} | ${cell(formatName(value.format))} | ${cell(def)} | ${env} | ${arg} | ${cell(value.doc + secret)} |`)
  }
}

export function renderConfigReference(): string {
  const out = [
    '# Configuration reference',
    '',
    '<!-- Generated from src/config/schema.ts by `npm run docs:config`. Do not edit by hand: test/docs.test.ts fails when it is stale. -->',
    '',
    'Precedence: command-line flag > environment variable > config file > default. The file comes from',
    '`--config <file>`, else `AMQP_SIDECAR_CONFIG`, else `config/default.json` next to the package.',
    'Unknown keys and bad values are refused at start with a message naming the key and where its value came from',
    '(flag, environment variable or file); a syntax error names the line and column. The file must hold a JSON object;',
    '`//` and `/* */` comments are allowed in any config file (`.json`, `.jsonc`, `.json5`: all are read as JSON5).',
    'Booleans are `true` or `false`, in the file, the environment and on the command line alike; anything else',
    '(`0`, `off`, `no`) is refused rather than guessed.',
    '`amqp-sidecar check-config` validates a file and prints the effective config with secrets masked.',
    '',
    'Secrets come from files (`amqp.urlFile`, `api.tokenFile`), which Kubernetes mounts from a Secret;',
    'the broker URL is never taken from the command line, where `ps` would show it.',
    'Lists (topology, push subscriptions) are set in the file only.',
    '',
    '| key | format | default | environment | flag | meaning |',
    '|---|---|---|---|---|---|',
  ]
  rows(schema as unknown as Record<string, object>, [], out)
  out.push(
    '',
    '## Topology and push shapes',
    '',
    '```json',
    '{',
    '  "topology": {',
    '    "exchanges": [{ "name": "orders", "type": "topic", "durable": true, "autoDelete": false, "internal": false, "arguments": {} }],',
    '    "queues": [{ "name": "orders.created", "durable": true, "exclusive": false, "autoDelete": false, "arguments": { "x-queue-type": "quorum" } }],',
    '    "bindings": [{ "exchange": "orders", "queue": "orders.created", "routingKey": "order.created", "arguments": {} }]',
    '  },',
    '  "consume": {',
    '    "push": [{ "queue": "orders.created", "url": "http://127.0.0.1:8080/messages", "concurrency": 1, "timeoutMs": 10000,',
    '               "retry": { "maxAttempts": 5, "initialDelayMs": 500, "maxDelayMs": 30000 }, "onGiveUp": "dead-letter" }]',
    '  }',
    '}',
    '```',
    '',
  )
  return out.join('\n')
}
