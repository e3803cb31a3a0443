#!/usr/bin/env node
/**
 * What each module costs at idle: imports the given modules one after the
 * other and prints the growth of RSS and of the V8 heap (after a full GC)
 * that each import caused. Cumulative, so the order matters: a module's
 * dependencies already imported are not counted again. Needs --expose-gc.
 *
 *   npm run build && node --expose-gc scripts/module-footprint.mjs fastify ./dist/sidecar.js
 *   (no arguments: the sidecar's dependencies, then its own layers, then a started sidecar)
 */
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'
import { resolve } from 'node:path'

if (typeof globalThis.gc !== 'function') {
  process.stderr.write('run with node --expose-gc\n')
  process.exit(2)
}
const require = createRequire(resolve('package.json'))
const DEFAULT = [
  'pino', 'prom-client', 'convict', 'ajv', 'amqplib', 'amqp-connection-manager', 'fastify', 'close-with-grace',
  '@fastify/websocket', '@fastify/swagger',
  './dist/config/index.js', './dist/observe/metrics.js', './dist/upstream/connection.js', './dist/publish/publisher.js',
  './dist/consume/consumers.js', './dist/http/api.js', './dist/sidecar.js',
]
const mods = process.argv.slice(2).length ? process.argv.slice(2) : DEFAULT
const snap = () => {
  globalThis.gc()
  globalThis.gc()
  const m = process.memoryUsage()
  return { rss: m.rss / 2 ** 20, heap: m.heapUsed / 2 ** 20 }
}
const f = (n) => n.toFixed(1).padStart(5)
let prev = snap()
process.stdout.write(`node ${process.version}: bare process RSS ${f(prev.rss)} MiB, heap used ${f(prev.heap)} MiB\n`)
for (const m of mods) {
  const url = m.startsWith('.') ? pathToFileURL(resolve(m)).href : pathToFileURL(require.resolve(m)).href
  await import(url)
  const now = snap()
  process.stdout.write(`${m.padEnd(34)} +RSS ${f(now.rss - prev.rss)}  +heap ${f(now.heap - prev.heap)}   (RSS ${f(now.rss)}, heap ${f(now.heap)})\n`)
  prev = now
}
