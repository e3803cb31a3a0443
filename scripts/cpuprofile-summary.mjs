#!/usr/bin/env node
/**
 * Reads a V8 .cpuprofile (node --cpu-prof, or `npm run bench -- --profile <dir>`)
 * and prints where the time went: self time by function and by package, as a
 * share of the busy (non-idle) samples. Read the flame graph for the call
 * paths; this is the table the findings in docs/benchmarks.md quote.
 *
 *   node scripts/cpuprofile-summary.mjs <file.cpuprofile> [--top 30]
 */
import { readFileSync } from 'node:fs'

const args = process.argv.slice(2)
const file = args.find((a) => !a.startsWith('--'))
const topIdx = args.indexOf('--top')
const top = topIdx >= 0 ? Number(args[topIdx + 1]) : 30
if (!file) {
  process.stderr.write('usage: node scripts/cpuprofile-summary.mjs <file.cpuprofile> [--top N]\n')
  process.exit(2)
}
const profile = JSON.parse(readFileSync(file, 'utf8'))

// Sample intervals: timeDeltas[i] is the time before samples[i].
const selfUs = new Map()
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
}

/** Which part of the system a script URL belongs to. */
function packageOf(url, name) {
  if (!url) return name.startsWith('(') ? name : '(native)'
  if (url.startsWith('node:')) return 'node:' + (url.slice(5).split('/')[1] ?? url.slice(5))
  const nm = url.lastIndexOf('/node_modules/')
  if (nm >= 0) {
    const rest = url.slice(nm + 14).split('/')
    return rest[0].startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]
  }
  const m = /\/(dist|src)\/(.*)$/.exec(url)
  return m ? `sidecar:${m[2].split('/').slice(0, -1).join('/') || '.'}` : url
}

const byFn = new Map()
const byPkg = new Map()
let total = 0
let idle = 0
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0
  if (us === 0) continue
  const cf = node.callFrame
  const name = cf.functionName || '(anonymous)'
  total += us
  if (name === '(idle)') {
    idle += us
    continue
  }
  const short = cf.url ? `${cf.url.replace(/^.*\/(node_modules|dist|src)\//, '$1/').replace(/^file:\/\//, '')}:${cf.lineNumber + 1}` : ''
  const key = `${name} ${short}`.trim()
  byFn.set(key, (byFn.get(key) ?? 0) + us)
  const pkg = packageOf(cf.url, name)
  byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + us)
}
const busy = total - idle
const pct = (us) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`
const ms = (us) => `${(us / 1000).toFixed(0).padStart(7)} ms`
process.stdout.write(`${file}\nwall ${(total / 1e6).toFixed(1)} s sampled, busy ${(busy / 1e6).toFixed(2)} s (${((100 * busy) / total).toFixed(1)}%)\n\n`)
process.stdout.write(`self time by package (share of busy)\n`)
for (const [k, v] of [...byPkg].sort((a, b) => b[1] - a[1]).slice(0, 25)) process.stdout.write(`${pct(v)} ${ms(v)}  ${k}\n`)
process.stdout.write(`\ntop ${top} functions by self time (share of busy)\n`)
for (const [k, v] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${pct(v)} ${ms(v)}  ${k}\n`)
