/**
 * The Prometheus rules and the Grafana dashboard in deploy/ are given to a real
 * promtool (Debian's, fetched by scripts/promtool.sh): the rules must load, their
 * unit tests (deploy/prometheus/tests/) must pass, every dashboard expression must
 * parse, and every amqp_sidecar_* name they use must be one a running sidecar
 * exposes on /metrics.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ROOT } from './fixtures/dist.js'
import { startSidecar } from './fixtures/sidecar.js'

const RULES_DIR = join(ROOT, 'deploy', 'prometheus')
const RULES = join(RULES_DIR, 'amqp-sidecar.rules.yaml')
const UNIT_TESTS = join(RULES_DIR, 'tests', 'amqp-sidecar.test.yaml')
const DASHBOARD = join(ROOT, 'deploy', 'grafana', 'amqp-sidecar.json')
/** A metric name; recording rules (amqp_sidecar:...) do not match. */
const METRIC_NAME = /\bamqp_sidecar_[a-z0-9_]+/g

function promtool(): string {
  const r = spawnSync('bash', [join(ROOT, 'scripts', 'promtool.sh')], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`scripts/promtool.sh failed: ${r.stderr}`)
  return r.stdout.trim()
}

function run(bin: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(bin, args, { encoding: 'utf8', cwd: RULES_DIR })
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

interface Panel {
  title: string
  targets?: { expr: string }[]
  panels?: Panel[]
}

function dashboardExprs(): { title: string; expr: string }[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] }
  const out: { title: string; expr: string }[] = []
  const walk = (panels: Panel[]) => {
    for (const p of panels) {
      for (const target of p.targets ?? []) out.push({ title: p.title, expr: target.expr })
      walk(p.panels ?? [])
    }
  }
  walk(dash.panels)
  return out
}

/** Grafana's variables, replaced by what Prometheus would see. */
function asPromql(expr: string): string {
  return expr.replace(/\$__rate_interval|\$__interval|\$__range/g, '5m').replace(/\$\{?(namespace|pod)\}?/g, '.*')
}

const bin = promtool()

t.test('promtool accepts the rule files', async (t) => {
  const files = readdirSync(RULES_DIR).filter((f) => f.endsWith('.rules.yaml'))
  t.same(files.sort(), ['amqp-sidecar.rules.yaml'])
  const r = run(bin, ['check', 'rules', ...files])
  t.equal(r.status, 0, r.out)
})

t.test('every alert fires and stays silent as its unit tests say', async (t) => {
  const r = run(bin, ['test', 'rules', UNIT_TESTS])
  t.equal(r.status, 0, r.out)
  t.match(r.out, /SUCCESS/)
  // Every alert has a test that expects it to fire.
  const rules = readFileSync(RULES, 'utf8')
  const tests = readFileSync(UNIT_TESTS, 'utf8')
  const alerts = [...rules.matchAll(/- alert: (\w+)/g)].map((m) => m[1])
  t.ok(alerts.length >= 12, `${alerts.length} alerts`)
  for (const name of alerts) t.match(tests, new RegExp(`alertname: ${name}\\n(?:.*\\n){0,1}\\s+exp_alerts:\\n\\s+- exp_labels`), `${name} is tested firing`)
})

t.test('every dashboard expression is valid PromQL', async (t) => {
  const exprs = dashboardExprs()
  t.ok(exprs.length >= 15, `${exprs.length} expressions`)
  const dir = mkdtempSync(join(tmpdir(), 'dashboard-rules-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // As recording rules, the one way promtool parses a bare expression offline.
  const yaml = ['groups:', '  - name: dashboard', '    rules:']
  exprs.forEach(({ expr }, i) => yaml.push(`      - record: dashboard:panel_${i}`, `        expr: ${JSON.stringify(asPromql(expr))}`))
  const file = join(dir, 'dashboard.rules.yaml')
  writeFileSync(file, `${yaml.join('\n')}\n`)
  const r = run(bin, ['check', 'rules', file])
  t.equal(r.status, 0, r.out)
  t.match(r.out, new RegExp(`SUCCESS: ${exprs.length} rules found`))
})

t.test('the rules and the dashboard name only metrics the sidecar exposes', async (t) => {
  const s = await startSidecar(t, { log: { level: 'silent' } })
  const text = await (await fetch(`${s.ops}/metrics`)).text()
  const exposed = new Set<string>()
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (!name) continue
    exposed.add(name)
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) exposed.add(`${name}${suffix}`)
    if (type === 'summary') for (const suffix of ['_sum', '_count']) exposed.add(`${name}${suffix}`)
  }
  t.ok(exposed.has('amqp_sidecar_upstream_connected'), 'the exposition was read')

  const used = new Map<string, string>()
  for (const m of readFileSync(RULES, 'utf8').matchAll(METRIC_NAME)) used.set(m[0], 'deploy/prometheus/amqp-sidecar.rules.yaml')
  for (const { title, expr } of dashboardExprs()) for (const m of expr.matchAll(METRIC_NAME)) used.set(m[0], `dashboard panel "${title}"`)
  t.ok(used.size >= 15, `${used.size} metric names used`)
  for (const [name, where] of used) t.ok(exposed.has(name), `${name} (${where}) is exposed`)

})
