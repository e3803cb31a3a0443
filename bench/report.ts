/**
 * Renders a run: the Markdown section of docs/benchmarks.md between the
 * generated-section markers, and docs/benchmarks.svg, a hand-rolled bar chart.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { BenchResults, CaseResult } from './results.js'

export const BEGIN_MARKER = '<!-- bench:generated:begin (npm run bench rewrites this section) -->'
export const END_MARKER = '<!-- bench:generated:end -->'

const int = (n: number | null) => (n === null ? '–' : Math.round(n).toLocaleString('en-US'))
const fixed = (n: number | null | undefined, d = 2) => (n === null || n === undefined ? '–' : n.toFixed(d))
const pct = (n: number | null) => (n === null ? '–' : `${Math.round(n * 100)}%`)

function caseRow(c: CaseResult): string {
  const value = c.skipped !== undefined ? `skipped` : int(c.median)
  const vs = c.baseline === null ? (c.id === 'a' ? 'ceiling' : 'baseline') : c.ratio === null ? '–' : `${fixed(c.ratio)}× ${c.baseline}`
  return `| ${c.id} | ${c.title} | ${value} | ${c.skipped ? '–' : pct(c.spread)} | ${vs} | ${fixed(c.sidecarCpuPer1000, 3)} |`
}

/** The paced-CPU and RSS cases: every repetition, the median, the target. */
function resourceTable(r: BenchResults): string[] {
  const target = (id: string) => r.targets.find((t) => t.id === id)
  const row = (name: string, reps: Array<number | undefined>, med: number | null, id: string | undefined, digits: number) => {
    const t = id === undefined ? undefined : target(id)
    const given = reps.filter((v): v is number => v !== undefined)
    return `| ${name} | ${given.length ? given.map((v) => v.toFixed(digits)).join(', ') : '–'} | ${fixed(med, digits)} | ${t ? `${t.comparison} ${t.limit}` : '–'} |`
  }
  return [
    '| sidecar resource | per repetition | median | target |',
    '|---|---|---:|---:|',
    row('idle RSS at start (MB)', [r.resources.idleRssMB ?? undefined], r.resources.idleRssMB, 'i.idle', 1),
    row('RSS under load, largest sampled (MB)', r.resources.loadRssReps ?? [], r.resources.loadRssMB, 'i.load', 1),
    row(`cores at a paced ${r.latency.rate.toLocaleString('en-US')} msg/s (CPU s per 1,000 msgs)`, r.latency.reps.map((x) => x.sidecarCpuPer1000), r.latency.sidecarCpuPer1000, 'i.cpu', 3),
  ]
}

export function renderMarkdown(r: BenchResults): string {
  const m = r.machine
  const s = r.settings
  const minutes = (Date.parse(r.finishedAt) - Date.parse(r.startedAt)) / 60_000
  const lines = [
    BEGIN_MARKER,
    '',
    `Run ${r.startedAt} (${minutes.toFixed(1)} min), \`${r.command}\`${r.smoke ? ' (smoke run: the figures mean nothing)' : ''}.`,
    `${s.reps} repetition(s), each case measured for ${s.seconds} s after ${s.warmupSeconds} s of warm-up; cases interleaved within each repetition.`,
    `${s.bodyBytes}-byte persistent messages, publisher confirms, mandatory where the protocol has it, one durable classic queue on a ${r.broker.kind} RabbitMQ node.`,
    '',
    `**Machine:** ${m.nproc} × ${m.cpuModel}, ${m.memoryGB} GB, ${m.os}; Node ${m.node}; RabbitMQ ${m.rabbitmq} (${m.erlang}). ` +
      `Load average (1/5/15 min) ${m.loadAverageStart.map((x) => x.toFixed(2)).join('/')} at the start, ${m.loadAverageEnd.map((x) => x.toFixed(2)).join('/')} at the end. ` +
      (m.cpuPressureStart === null || m.cpuPressureStart === undefined ? '' : `CPU pressure (share of the last minute in which a runnable task waited for a core) ${m.cpuPressureStart}% at the start, ${m.cpuPressureEnd ?? '?'}% at the end. `) +
      'Broker, sidecar and load generator share these cores.',
    '',
    '| case | what | msg/s (median) | spread | ratio | sidecar CPU s / 1,000 msgs |',
    '|---|---|---:|---:|---:|---:|',
    ...r.cases.map(caseRow),
    '',
    '"spread" is (max - min) / median over the repetitions; "ratio" is the median of the per-repetition ratios to the baseline.',
    '',
    `**Latency at a fixed ${r.latency.rate.toLocaleString('en-US')} msg/s** (open loop, milliseconds; ${s.latencySeconds} s per side and repetition):`,
    '',
    '| | p50 | p90 | p99 |',
    '|---|---:|---:|---:|',
  ]
  if (r.latency.skipped !== undefined || r.latency.direct === null) lines.push(`| skipped | ${r.latency.skipped ?? 'not run'} | | |`)
  else {
    const row = (name: string, p: { p50: number; p90: number; p99: number } | null) => `| ${name} | ${fixed(p?.p50)} | ${fixed(p?.p90)} | ${fixed(p?.p99)} |`
    lines.push(row('direct amqplib publish-to-confirm', r.latency.direct), row('sidecar HTTP publish-to-200', r.latency.sidecar), row('**added by the sidecar**', r.latency.added), '| Dapr (published, HTTP) | | +0.49 | +1.21 |', '', '"added" is the median over repetitions of (sidecar - direct) within each repetition, so it is not the difference of the two rows above.')
  }
  const res = r.resources
  const flags = s.sidecarNodeArgs?.length ? ` ${s.sidecarNodeArgs.join(' ')}` : ''
  lines.push(
    '',
    `**Sidecar process** (\`node${flags} dist/main.js\`, read from /proc): idle RSS ${fixed(res.idleRssMB, 1)} MB at start, ${fixed(res.idleRssAfterLoadMB, 1)} MB idle after the load, ` +
      `${fixed(res.loadRssMB, 1)} MB largest sampled under load (median over repetitions; peak ${fixed(res.peakRssMB, 1)} MB); ${fixed(r.latency.sidecarCpuPer1000, 3)} CPU seconds per 1,000 messages at ${r.latency.rate.toLocaleString('en-US')} msg/s.`,
    '',
    ...resourceTable(r),
    '',
    '| target | wanted | this run | holds |',
    '|---|---:|---:|:---:|',
    ...r.targets.map((t) => `| ${t.id}: ${t.description} | ${t.comparison} ${t.limit} | ${fixed(t.actual, t.id === 'i.idle' || t.id === 'i.load' ? 1 : t.id === 'i.cpu' ? 3 : 2)} | ${t.pass === null ? 'not measured' : t.pass ? 'yes' : '**no**'} |`),
    '',
  )
  if (r.skipped.length) lines.push('Skipped in this run:', '', ...r.skipped.map((x) => `- ${x.id}: ${x.reason}`), '')
  lines.push('![Throughput by case](benchmarks.svg)', '', END_MARKER)
  return lines.join('\n')
}

const COLORS = { direct: '#6b7280', sidecar: '#2563eb', peer: '#d97706', missed: '#dc2626' }

/** The idle-RSS, loaded-RSS and paced-CPU targets as bars, for the chart. */
function resourceBars(r: BenchResults): { label: string; value: number; limit: number; digits: number }[] {
  const bars: { label: string; value: number; limit: number; digits: number }[] = []
  const add = (id: string, label: string, digits: number) => {
    const t = r.targets.find((x) => x.id === id)
    if (t?.actual !== null && t?.actual !== undefined) bars.push({ label, value: t.actual, limit: t.limit, digits })
  }
  add('i.idle', 'idle RSS (MB)', 1)
  add('i.load', 'RSS under load (MB)', 1)
  add('i.cpu', `cores at a paced ${r.latency.rate.toLocaleString('en-US')} msg/s`, 3)
  return bars
}

function colorOf(id: string): string {
  if (id === 'a' || id === 'g.direct') return COLORS.direct
  if (id === 'e' || id === 'f') return COLORS.peer
  return COLORS.sidecar
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** Horizontal bars: publish cases against (a), then the consume cases. */
export function renderSvg(r: BenchResults): string {
  const rows = r.cases.filter((c) => c.median !== null && c.skipped === undefined)
  const max = Math.max(1, ...rows.map((c) => c.median as number))
  const width = 900
  const labelW = 430
  const barW = width - labelW - 150
  const rowH = 30
  const top = 50
  const resources = resourceBars(r)
  const resTop = top + rows.length * rowH + 45
  const height = resTop + (resources.length ? 30 + resources.length * rowH : 0) + 10
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="22" font-size="16" font-weight="bold">Throughput, 1 KB persistent messages with confirms (median msg/s)</text>`,
    `<text x="10" y="40" fill="#555">${esc(`${r.machine.nproc} × ${r.machine.cpuModel}, Node ${r.machine.node}, RabbitMQ ${r.machine.rabbitmq}, ${r.startedAt.slice(0, 10)}`)}</text>`,
  ]
  rows.forEach((c, i) => {
    const y = top + i * rowH
    const w = Math.max(1, ((c.median as number) / max) * barW)
    const ratio = c.ratio === null ? '' : ` (${c.ratio.toFixed(2)}× ${c.baseline})`
    out.push(
      `<text x="10" y="${y + 19}">${esc(`${c.id}. ${c.title}`)}</text>`,
      `<rect x="${labelW}" y="${y + 5}" width="${w.toFixed(1)}" height="${rowH - 10}" fill="${colorOf(c.id)}"/>`,
      `<text x="${(labelW + w + 6).toFixed(1)}" y="${y + 19}">${esc(`${int(c.median)}${ratio}`)}</text>`,
    )
  })
  const ly = top + rows.length * rowH + 25
  out.push(
    `<rect x="10" y="${ly - 10}" width="12" height="12" fill="${COLORS.direct}"/><text x="28" y="${ly}">direct amqplib</text>`,
    `<rect x="150" y="${ly - 10}" width="12" height="12" fill="${COLORS.sidecar}"/><text x="168" y="${ly}">amqp-sidecar</text>`,
    `<rect x="290" y="${ly - 10}" width="12" height="12" fill="${COLORS.peer}"/><text x="308" y="${ly}">RabbitMQ's own HTTP / Web-STOMP</text>`,
  )
  if (resources.length) out.push(`<text x="10" y="${resTop + 18}" font-size="15" font-weight="bold">Sidecar resources (median over repetitions); the line is the target</text>`)
  resources.forEach((b, i) => {
    const y = resTop + 30 + i * rowH
    const scale = Math.max(b.value, b.limit) * 1.15
    const w = Math.max(1, (b.value / scale) * barW)
    const tx = labelW + (b.limit / scale) * barW
    out.push(
      `<text x="10" y="${y + 19}">${esc(b.label)}</text>`,
      `<rect x="${labelW}" y="${y + 5}" width="${w.toFixed(1)}" height="${rowH - 10}" fill="${b.value <= b.limit ? COLORS.sidecar : COLORS.missed}"/>`,
      `<line x1="${tx.toFixed(1)}" y1="${y + 2}" x2="${tx.toFixed(1)}" y2="${y + rowH - 2}" stroke="#111" stroke-width="2"/>`,
      `<text x="${(labelW + Math.max(w, (b.limit / scale) * barW) + 6).toFixed(1)}" y="${y + 19}">${esc(`${b.value.toFixed(b.digits)} (target ${b.limit})`)}</text>`,
    )
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}

export function writeResults(r: BenchResults, file: string): void {
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, JSON.stringify(r, null, 2) + '\n')
}

/** Rewrites docs/benchmarks.svg and the generated section of docs/benchmarks.md (the prose around it is kept). */
export function writeDocs(r: BenchResults, root: string): void {
  const docs = join(root, 'docs')
  mkdirSync(docs, { recursive: true })
  writeFileSync(join(docs, 'benchmarks.svg'), renderSvg(r))
  const file = join(docs, 'benchmarks.md')
  const section = renderMarkdown(r)
  const current = existsSync(file) ? readFileSync(file, 'utf8') : `# Benchmarks\n\n${BEGIN_MARKER}\n${END_MARKER}\n`
  const begin = current.indexOf(BEGIN_MARKER)
  const end = current.indexOf(END_MARKER)
  const next = begin >= 0 && end > begin ? current.slice(0, begin) + section + current.slice(end + END_MARKER.length) : `${current.trimEnd()}\n\n${section}\n`
  writeFileSync(file, next)
}
