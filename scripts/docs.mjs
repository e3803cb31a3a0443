#!/usr/bin/env node
// Regenerates the docs that are derived from code, from the built dist/:
//   node scripts/docs.mjs openapi   -> docs/openapi.json      (npm run openapi)
//   node scripts/docs.mjs config    -> docs/configuration.md  (npm run docs:config)
//   node scripts/docs.mjs metrics   -> docs/metrics.md        (npm run docs:metrics)
//   node scripts/docs.mjs all
// The npm scripts build first; test/docs.test.ts fails when a file is stale.
import { writeFileSync } from 'node:fs'

const root = new URL('../', import.meta.url)
const targets = {
  openapi: ['docs/openapi.json', async () => (await import(new URL('dist/docs/openapi.js', root).href)).renderOpenApi()],
  config: ['docs/configuration.md', async () => (await import(new URL('dist/docs/config-reference.js', root).href)).renderConfigReference()],
  metrics: ['docs/metrics.md', async () => (await import(new URL('dist/docs/metrics-reference.js', root).href)).renderMetricsReference()],
}

const wanted = process.argv[2] ?? 'all'
const names = wanted === 'all' ? Object.keys(targets) : [wanted]
for (const name of names) {
  const target = targets[name]
  if (!target) {
    process.stderr.write(`usage: node scripts/docs.mjs ${Object.keys(targets).join('|')}|all\n`)
    process.exit(2)
  }
  const [file, render] = target
  writeFileSync(new URL(file, root), await render())
  process.stdout.write(`wrote ${file}\n`)
}
