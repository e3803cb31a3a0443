/**
 * Renders docs/metrics.md from the registry createMetrics() builds: every
 * metric's name, type, labels and help text, as the sidecar exports them.
 * prom-client's default process and Node.js metrics are summarised, not
 * listed one by one: their exact set depends on the platform.
 */
import { Registry } from 'prom-client'
import { createMetrics, PREFIX } from '../observe/metrics.js'

export function renderMetricsReference(): string {
  const registry = new Registry()
  createMetrics(registry)
  const own = registry.getMetricsAsArray().filter((m) => !isDefaultMetric(m.name))
  const out = [
    '# Metrics reference',
    '',
    '<!-- Generated from src/observe/metrics.ts by `npm run docs:metrics`. Do not edit by hand: test/docs.test.ts fails when it is stale. -->',
    '',
    `The operations listener serves Prometheus text at \`GET /metrics\` (port 8673 by default). Every name starts with \`${PREFIX}\`;`,
    'counters end in `_total`, durations in `_seconds`, and label values are bounded (no queue or exchange names from',
    'requests, no message ids). The `connection` label is `publish` or `consume`: the sidecar holds one connection for each.',
    '',
    '| name | type | labels | meaning |',
    '|---|---|---|---|',
  ]
  for (const m of own) {
    const meta = m as unknown as { type: string; labelNames?: string[] }
    const labels = (meta.labelNames ?? []).map((l) => `\`${l}\``).join(', ') || '-'
    out.push(`| \`${m.name}\` | ${meta.type} | ${labels} | ${m.help.replace(/\|/g, '\\|')} |`)
  }
  out.push(
    '',
    '## Process and Node.js metrics',
    '',
    `prom-client's default collectors are installed with the same prefix, for example \`${PREFIX}process_cpu_seconds_total\`,`,
    `\`${PREFIX}process_resident_memory_bytes\`, \`${PREFIX}process_open_fds\`, \`${PREFIX}nodejs_heap_size_used_bytes\`,`,
    `\`${PREFIX}nodejs_eventloop_lag_p99_seconds\` and \`${PREFIX}nodejs_gc_duration_seconds\`. The exact set depends on the platform`,
    'and the Node.js version; `curl -s localhost:8673/metrics` lists them.',
    '',
  )
  return out.join('\n')
}

/** Default collector names (prom-client 15) all start with process_ or nodejs_ after the prefix. */
function isDefaultMetric(name: string): boolean {
  const rest = name.startsWith(PREFIX) ? name.slice(PREFIX.length) : name
  return rest.startsWith('process_') || rest.startsWith('nodejs_')
}
