/** Turns raw repetitions into medians, ratios and the targets. */
import { BATCH_CONCURRENCY, BATCH_SIZE, BODY_BYTES, CONSUME_PREFETCH, HTTP_CONCURRENCY, PUBLISH_WINDOW } from './context.js'
import type { BenchOptions } from './options.js'
import type { BenchResults, CaseResult, LatencyRep, LatencyResult, Machine, RepResult, Resources, Target } from './results.js'
import { median, spread } from './stats.js'

/** The targets: ratios within one run, and absolute limits. */
export const TARGETS = {
  bOverA: 0.6,
  cOverA: 0.9,
  dOverA: 0.8,
  consumeOverDirect: 0.8,
  bOverE: 5,
  addedP99Ms: 1.2,
  idleRssMB: 60,
  loadRssMB: 90,
  coresPer1000MsgPerSec: 0.15,
  spoolOverMemory: 0.7,
} as const

export interface SummaryInput {
  opts: BenchOptions
  startedAt: string
  machine: Machine
  brokerKind: 'private' | 'external'
  plugins: string[]
  titles: Map<string, string>
  reps: Map<string, RepResult[]>
  latencyReps: LatencyRep[]
  resources: Omit<Resources, 'skipped'>
  skipped: Map<string, string>
}

const CONSUME_TITLES: Record<string, string> = {
  'g.direct': `direct amqplib consume + ack, prefetch ${CONSUME_PREFETCH}`,
  'g.sidecar': `sidecar WebSocket consume + ack, prefetch ${CONSUME_PREFETCH}`,
  'g.sidecar-batched': `sidecar WebSocket consume, acks in batches (ack {deliveryIds}), prefetch ${CONSUME_PREFETCH}`,
  'j.memory': `sidecar HTTP 202 (X-Ack: accepted), held in memory, concurrency ${HTTP_CONCURRENCY}`,
  'j.spool': `sidecar HTTP 202 (X-Ack: accepted), fsynced to the spool, concurrency ${HTTP_CONCURRENCY}`,
}

/** Median over repetitions of (rate / baseline rate in the same repetition). */
function pairedRatio(rs: RepResult[] | undefined, base: RepResult[] | undefined): number | null {
  if (!rs?.length || !base?.length) return null
  const ratios = rs.flatMap((r, i) => {
    const b = base[i]
    return b && b.rate > 0 ? [r.rate / b.rate] : []
  })
  return ratios.length ? median(ratios) : null
}

function nullableMedian(values: Array<number | undefined>): number | null {
  const xs = values.filter((v): v is number => v !== undefined && Number.isFinite(v))
  return xs.length ? median(xs) : null
}

export function summarise(input: SummaryInput): BenchResults {
  const { opts, reps, skipped } = input
  const ids = ['a', 'a.64', 'b', 'c', 'd', 'e', 'f', 'g.direct', 'g.sidecar', 'g.sidecar-batched', 'j.memory', 'j.spool']
  const cases: CaseResult[] = []
  for (const id of ids) {
    const caseId = id.split('.')[0] as string
    if (!opts.only.has(caseId as never)) continue
    const rs = reps.get(id) ?? []
    const baseline = id === 'a' || id === 'g.direct' ? null : id === 'g.sidecar' || id === 'g.sidecar-batched' ? 'g.direct' : id === 'j.spool' ? 'j.memory' : 'a'
    const result: CaseResult = {
      id,
      title: input.titles.get(id) ?? CONSUME_TITLES[id] ?? id,
      reps: rs,
      median: rs.length ? median(rs.map((r) => r.rate)) : null,
      spread: rs.length ? spread(rs.map((r) => r.rate)) : null,
      baseline,
      ratio: baseline === null ? null : pairedRatio(rs, reps.get(baseline)),
      sidecarCpuPer1000: nullableMedian(rs.map((r) => r.sidecarCpuPer1000)),
    }
    const why = skipped.get(caseId)
    if (why !== undefined) result.skipped = why
    cases.push(result)
  }

  const lr = input.latencyReps
  const pick = (f: (r: LatencyRep) => { p50: number; p90: number; p99: number }) =>
    lr.length ? { p50: median(lr.map((r) => f(r).p50)), p90: median(lr.map((r) => f(r).p90)), p99: median(lr.map((r) => f(r).p99)) } : null
  const latency: LatencyResult = {
    rate: opts.latencyRate,
    reps: lr,
    direct: pick((r) => r.direct),
    sidecar: pick((r) => r.sidecar),
    added: pick((r) => r.added),
    sidecarCpuPer1000: nullableMedian(lr.map((r) => r.sidecarCpuPer1000)),
  }
  const hSkip = skipped.get('h')
  if (hSkip !== undefined) latency.skipped = hSkip
  const resources: Resources = { ...input.resources }
  const iSkip = skipped.get('i')
  if (iSkip !== undefined) resources.skipped = iSkip

  const byId = new Map(cases.map((c) => [c.id, c]))
  const target = (id: string, description: string, actual: number | null | undefined, comparison: '>=' | '<=', limit: number): Target => ({
    id,
    description,
    actual: actual ?? null,
    limit,
    comparison,
    pass: actual === null || actual === undefined ? null : comparison === '>=' ? actual >= limit : actual <= limit,
  })
  const targets: Target[] = [
    target('b/a', 'sidecar HTTP single publish vs direct', byId.get('b')?.ratio, '>=', TARGETS.bOverA),
    target('c/a', 'sidecar HTTP batch publish vs direct', byId.get('c')?.ratio, '>=', TARGETS.cOverA),
    target('d/a', 'sidecar WebSocket publish vs direct', byId.get('d')?.ratio, '>=', TARGETS.dOverA),
    target('g', 'sidecar WebSocket consume vs direct consume', byId.get('g.sidecar')?.ratio, '>=', TARGETS.consumeOverDirect),
    target('b/e', 'sidecar HTTP single publish vs management HTTP API', pairedRatio(reps.get('b'), reps.get('e')), '>=', TARGETS.bOverE),
    target('h.p99', `added p99 latency at ${opts.latencyRate} msg/s (ms)`, latency.added?.p99, '<=', TARGETS.addedP99Ms),
    target('j', 'spooled 202 vs in-memory 202', byId.get('j.spool')?.ratio, '>=', TARGETS.spoolOverMemory),
    target('i.idle', 'sidecar idle RSS (MB)', resources.idleRssMB, '<=', TARGETS.idleRssMB),
    target('i.load', 'sidecar RSS under load, median of the per-repetition maximum (MB)', resources.loadRssMB, '<=', TARGETS.loadRssMB),
    // Cores per 1,000 msg/s is CPU seconds per 1,000 messages, measured at the fixed rate of (h).
    target('i.cpu', `sidecar cores per 1,000 msg/s (at ${opts.latencyRate} msg/s)`, latency.sidecarCpuPer1000, '<=', TARGETS.coresPer1000MsgPerSec),
  ]

  return {
    version: 1,
    startedAt: input.startedAt,
    finishedAt: new Date().toISOString(),
    command: ['npm run bench', ...(opts.argv.length ? ['--', ...opts.argv] : [])].join(' '),
    smoke: opts.smoke,
    settings: {
      seconds: opts.seconds,
      warmupSeconds: opts.warmupSeconds,
      reps: opts.reps,
      bodyBytes: BODY_BYTES,
      publishWindow: PUBLISH_WINDOW,
      httpConcurrency: HTTP_CONCURRENCY,
      batchSize: BATCH_SIZE,
      batchConcurrency: BATCH_CONCURRENCY,
      prefetch: CONSUME_PREFETCH,
      consumeMessages: opts.consumeMessages,
      latencyRate: opts.latencyRate,
      latencySeconds: opts.latencySeconds,
      sidecarNodeArgs: opts.nodeArgs,
    },
    broker: { kind: input.brokerKind, plugins: input.plugins },
    machine: input.machine,
    cases,
    latency,
    resources,
    targets,
    skipped: [...skipped].map(([id, reason]) => ({ id, reason })),
  }
}
