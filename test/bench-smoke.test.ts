// The benchmark harness still works: a few seconds of `npm run bench -- --smoke`
// against the shared broker (e and f need plugins, so they are skipped), with
// the sidecar run from source. It checks the shape of the results, never how
// fast anything was: CI machines are too noisy for timing thresholds.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { REPO_ROOT, runBench } from '../bench/harness.js'
import { parseOptions, UsageError } from '../bench/options.js'
import { BEGIN_MARKER, END_MARKER, renderMarkdown, renderSvg, writeResults } from '../bench/report.js'
import type { BenchResults } from '../bench/results.js'
import { SHARED_BROKER_URL } from './fixtures/sidecar.js'

// The sidecar child runs src/main.ts through the same TypeScript loader as this test.
const tsLoader = process.execArgv.filter((a) => a.includes('@tapjs/typescript') || a === '--enable-source-maps')

t.test('options', async (t) => {
  const smoke = parseOptions(['--smoke'])
  t.equal(smoke.reps, 1)
  t.equal(smoke.docs, false, 'a smoke run never rewrites the docs')
  const o = parseOptions(['--seconds', '2', '--reps', '5', '--only', 'a,b'])
  t.same([o.seconds, o.reps, [...o.only]], [2, 5, ['a', 'b']])
  t.throws(() => parseOptions(['--only', 'z']), UsageError)
  t.throws(() => parseOptions(['--seconds', '-1']), UsageError)
  t.throws(() => parseOptions(['--bogus']), UsageError)
  t.same(parseOptions(['--node-arg=--max-semi-space-size=1', '--node-arg', '--heap-prof']).nodeArgs, ['--max-semi-space-size=1', '--heap-prof'], 'node flags for the sidecar, in order')
  t.throws(() => parseOptions(['--node-arg']), UsageError)
})

t.test('a smoke run produces well-formed results', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const lines: string[] = []
  const opts = parseOptions(['--smoke', '--broker-url', SHARED_BROKER_URL, '--consume', '500'])
  const results: BenchResults = await runBench(opts, {
    sidecarCommand: { nodeArgs: tsLoader, entry: join(REPO_ROOT, 'src', 'main.ts') },
    progress: (line) => lines.push(line),
  })
  t.ok(lines.length > 5, 'progress was reported')
  t.equal(results.version, 1)
  t.equal(results.smoke, true)
  t.equal(results.broker.kind, 'external')
  t.ok(results.machine.nproc >= 1 && results.machine.rabbitmq !== 'unknown', 'the machine and broker are described')

  const byId = new Map(results.cases.map((c) => [c.id, c]))
  t.same([...byId.keys()], ['a', 'a.64', 'b', 'c', 'd', 'e', 'f', 'g.direct', 'g.sidecar', 'g.sidecar-batched', 'j.memory', 'j.spool'])
  for (const id of ['e', 'f']) t.match(byId.get(id)?.skipped, /plugins/, `${id} is skipped, and says why`)
  for (const c of results.cases) {
    if (c.skipped !== undefined) {
      t.ok(results.skipped.some((s) => c.id.startsWith(s.id)), `${c.id} is listed as skipped`)
      continue
    }
    t.equal(c.reps.length, 1, `${c.id} ran once`)
    const rep = c.reps[0]
    // Shape, not speed: a 0.5 s window on a machine under a CPU hog has seen a case
    // move nothing while its requests waited (once, for b). What must hold: the case ran
    // and counted what it did, and any error is an overload answer (503/504), never a
    // broken case (a 4xx, a 500, a refused connection).
    t.ok(rep && Number.isInteger(rep.messages) && Number.isInteger(rep.errors) && rep.messages + rep.errors > 0, `${c.id} ran and counted messages and errors`)
    if (rep && rep.errors > 0) {
      t.comment(`${c.id}: ${rep.errors} errors in the smoke window, first: ${rep.firstError}`)
      t.match(rep.firstError ?? '', /^HTTP 50[34]\b|timeout/i, `${c.id}: its errors are overload answers`)
    } else t.ok(rep && rep.messages > 0, `${c.id} moved messages without errors`)
    t.type(c.median, 'number', `${c.id} has a median`)
    if (c.baseline !== null) t.type(c.ratio, 'number', `${c.id} has a ratio to ${c.baseline}`)
  }
  for (const id of ['b', 'c']) {
    const c = byId.get(id)
    // CPU per 1,000 messages needs messages in the window (see above).
    if ((c?.reps[0]?.messages ?? 0) > 0) t.type(c?.sidecarCpuPer1000, 'number', `${id} measured the sidecar's CPU`)
    else t.comment(`${id} moved no messages in the smoke window: no CPU per message to check`)
  }

  const lat = results.latency
  t.equal(lat.reps.length, 1)
  t.ok(lat.reps[0] && lat.reps[0].direct.count > 0 && lat.reps[0].sidecar.count > 0, 'latencies were recorded on both sides')
  t.type(lat.added?.p99, 'number')
  t.ok((results.resources.idleRssMB ?? 0) > 0, 'idle RSS was read from /proc')
  // The RSS-loaded and paced-CPU cases: one figure per repetition, a median, a target each.
  t.equal(results.resources.loadRssReps.length, 1, 'the RSS under load was sampled in the repetition')
  t.ok((results.resources.loadRssMB ?? 0) > 0, 'and has a median')
  t.type(lat.reps[0]?.sidecarCpuPer1000, 'number', 'the paced case measured the sidecar CPU')
  t.type(lat.sidecarCpuPer1000, 'number', 'and has a median')
  t.same(results.targets.map((x) => x.id), ['b/a', 'c/a', 'd/a', 'g', 'b/e', 'h.p99', 'j', 'i.idle', 'i.load', 'i.cpu'])
  for (const id of ['i.idle', 'i.load', 'i.cpu']) t.type(results.targets.find((x) => x.id === id)?.actual, 'number', `target ${id} has a figure`)
  for (const target of results.targets) t.ok(target.pass === null || typeof target.pass === 'boolean', `target ${target.id} is evaluated`)

  const file = join(dir, 'results.json')
  writeResults(results, file)
  t.same(JSON.parse(readFileSync(file, 'utf8')), JSON.parse(JSON.stringify(results)), 'the JSON file round-trips')
  const md = renderMarkdown(results)
  t.ok(md.startsWith(BEGIN_MARKER) && md.endsWith(END_MARKER), 'the docs section is delimited')
  t.match(md, /\| a \|/)
  t.match(md, /\| RSS under load, largest sampled \(MB\) \| [\d.]+ \| [\d.]+ \| <= 90 \|/, 'the loaded-RSS row is in the table')
  t.match(md, /\| cores at a paced [\d,]+ msg\/s \(CPU s per 1,000 msgs\) \| [\d.]+ \| [\d.]+ \| <= 0.15 \|/, 'the paced-CPU row is in the table')
  const svg = renderSvg(results)
  t.match(svg, /^<svg [^]*<\/svg>\n$/)
  t.match(svg, /RSS under load \(MB\)[^]*cores at a paced/, 'the chart shows the resource cases')
})
