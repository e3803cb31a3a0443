/**
 * `npm run bench`: builds nothing itself (the npm script compiles src/ and
 * bench/ first), runs the harness, writes bench/results/latest.json and the
 * docs. Progress goes to stderr; a one-line summary per target to stdout.
 */
import { isAbsolute, join } from 'node:path'
import { runBench, REPO_ROOT } from './harness.js'
import { parseOptions, USAGE, UsageError } from './options.js'
import { writeDocs, writeResults } from './report.js'

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE)
    return 0
  }
  let opts
  try {
    opts = parseOptions(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}`)
    return 2
  }
  const results = await runBench(opts)
  const out = isAbsolute(opts.out) ? opts.out : join(REPO_ROOT, opts.out)
  writeResults(results, out)
  process.stderr.write(`[bench] wrote ${out}\n`)
  if (opts.docs) {
    writeDocs(results, REPO_ROOT)
    process.stderr.write('[bench] wrote docs/benchmarks.md and docs/benchmarks.svg\n')
  }
  for (const c of results.cases) {
    const value = c.skipped ?? `${Math.round(c.median ?? 0)} msg/s${c.ratio === null ? '' : ` (${c.ratio.toFixed(2)}x ${c.baseline})`}`
    process.stdout.write(`${c.id.padEnd(10)} ${value}\n`)
  }
  for (const t of results.targets) {
    const verdict = t.pass === null ? 'not measured' : t.pass ? 'holds' : 'MISSED'
    process.stdout.write(`target ${t.id.padEnd(7)} ${t.comparison} ${t.limit}: ${t.actual === null ? '-' : t.actual.toFixed(3)} ${verdict}\n`)
  }
  return 0
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  },
)
