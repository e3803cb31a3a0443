/**
 * `npm run chaos -- --cluster`: the loss checker against a real three-node
 * RabbitMQ cluster (test/fixtures/cluster.ts) with a quorum queue and the
 * sidecar (a separate process) given all three URLs. Faults rotate, each
 * against a node chosen from what the broker says at that moment:
 *
 *   kill-own-node     kill -9 the node holding the sidecar's publish connection; restart it
 *   kill-leader       kill -9 the queue's leader node; restart it
 *   partition-node    the sidecar's node cut off (link down), then back
 *   memory-alarm      memory alarm on one node (blocks publishers cluster-wide)
 *   rolling-restart   graceful restart of each node in turn
 *
 * After each fault the cluster is healed (all nodes up, queue fully online)
 * before a clear period. Traffic and bookkeeping: fixtures/cluster-traffic.ts
 * and history.ts; the rule is the same: lost = 0 and unexpected = 0.
 */
import amqplib from 'amqplib'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { startCluster, type Cluster } from '../fixtures/cluster.js'
import { Traffic } from '../fixtures/cluster-traffic.js'
import { delay, waitFor } from '../fixtures/wait.js'
import { rng, shuffled } from './faults.js'
import { alignRows, historyRows, type ReportRow } from './checker.js'
import type { CheckResult } from './history.js'
import { startSidecarProcess } from './sidecar-process.js'

export const CLUSTER_FAULTS = ['kill-own-node', 'kill-leader', 'partition-node', 'memory-alarm', 'rolling-restart'] as const
export type ClusterFault = (typeof CLUSTER_FAULTS)[number]

const HOLD_MS: readonly [number, number] = [3_000, 15_000]
const CLEAR_MS: readonly [number, number] = [3_000, 8_000]
const READY_TIMEOUT_MS = 180_000
const CATCH_UP_TIMEOUT_MS = 60_000
const CONNECTION = 'amqp-sidecar:publish'

export interface ClusterChaosReport extends CheckResult {
  seed: number
  seconds: number
  durationMs: number
  /** Per fault injected: its kind and the fault-to-first-200 time (ms; null if none came before the next fault). */
  failovers: Array<{ fault: ClusterFault; ms: number | null; answers: Record<string, number> }>
  loadAvg: { start: number[]; end: number[] }
  workDir: string | undefined
}

export async function runClusterChaos(opts: { seconds: number; seed?: number; faults?: readonly ClusterFault[]; onProgress?: (l: string) => void; keepDir?: boolean }): Promise<ClusterChaosReport> {
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31)
  const random = rng(seed)
  const log = opts.onProgress ?? (() => {})
  const pick = ([a, b]: readonly [number, number]) => Math.round(a + random() * (b - a))
  const started = Date.now()
  const loadStart = loadavg()
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-chaos-cluster-'))
  const queue = `chaos.cluster.${randomUUID().slice(0, 8)}`
  let cluster: Cluster | undefined
  let passed = false
  let stopSidecar: (() => Promise<string>) | undefined
  let traffic: Traffic | undefined
  try {
    log('booting a 3-node cluster (minutes on a busy machine)')
    cluster = await startCluster()
    const c = cluster
    const sc = await startSidecarProcess(dir, {
      amqp: { urls: [...c.urls], heartbeatSeconds: 2, reconnect: { initialDelayMs: 100, maxDelayMs: 2000 } },
      publish: { timeoutMs: 10_000 },
      topology: { queues: [{ name: queue, durable: true, arguments: { 'x-queue-type': 'quorum' } }] },
      shutdown: { drainMs: 0 },
      log: { level: 'info' },
    })
    stopSidecar = sc.stop
    await waitReady(sc.api)
    traffic = new Traffic(sc.api, queue, { publishers: 4, ratePerPublisher: 25 })
    await traffic.start('c')
    const failovers: ClusterChaosReport['failovers'] = []
    const until = Date.now() + opts.seconds * 1000
    let round: ClusterFault[] = []
    while (Date.now() < until) {
      if (round.length === 0) round = shuffled(opts.faults ?? CLUSTER_FAULTS, random)
      const kind = round.shift() as ClusterFault
      const own = (await c.nodeOfConnection(CONNECTION)) ?? 0
      const leader = c.indexOf((await c.queue(queue))?.leader) ?? 0
      log(`[${Math.round((Date.now() - started) / 1000)}s] ${kind} (sidecar on node ${own}, leader node ${leader}); confirmed so far ${traffic.history.counts.confirmed}`)
      const t0 = Date.now()
      await inject(c, kind, own, leader, queue, pick)
      await c.heal([queue])
      await waitReady(sc.api)
      const healedAt = Date.now()
      await waitFor(() => traffic?.firstConfirmAfter(healedAt) !== undefined, { timeoutMs: READY_TIMEOUT_MS, what: `a 200 after ${kind}` })
      const ms = traffic.firstConfirmAfter(t0)
      failovers.push({ fault: kind, ms: ms ?? null, answers: traffic.statusesSince(t0, healedAt) })
      log(`  fault to first 200: ${ms} ms; answers during: ${JSON.stringify(failovers.at(-1)?.answers)}`)
      await delay(pick(CLEAR_MS)) // a clear period with traffic, real time on purpose
    }
    await traffic.stopPublishing()
    const t = traffic
    await waitFor(() => t.history.allConfirmedRead(), { timeoutMs: CATCH_UP_TIMEOUT_MS, what: 'the consumers to catch up' }).catch(() => false)
    await traffic.stopConsumers()
    await sc.stop()
    await drain(c.urls[0] as string, queue, traffic)
    const result = traffic.history.check()
    passed = result.ok && traffic.late().length === 0
    return { ...result, ok: passed, seed, seconds: opts.seconds, durationMs: Date.now() - started, failovers, loadAvg: { start: loadStart, end: loadavg() }, workDir: opts.keepDir || !passed ? dir : undefined }
  } finally {
    await traffic?.stopPublishing()
    await traffic?.stopConsumers()
    await stopSidecar?.()
    await cluster?.stop()
    if (passed && !opts.keepDir) rmSync(dir, { recursive: true, force: true })
  }
}

async function inject(c: Cluster, kind: ClusterFault, own: number, leader: number, queue: string, pick: (r: readonly [number, number]) => number): Promise<void> {
  switch (kind) {
    case 'kill-own-node':
    case 'kill-leader': {
      const i = kind === 'kill-own-node' ? own : leader
      await c.kill9(i)
      await delay(pick(HOLD_MS)) // the fault's length
      await c.start(i)
      return
    }
    case 'partition-node':
      c.partition(own, true)
      await delay(pick(HOLD_MS) + 10_000) // past net_ticktime, so the minority pauses
      c.partition(own, false)
      return
    case 'memory-alarm': {
      const i = (own + 1) % c.nodes.length
      await c.setMemoryAlarm(i, true)
      await delay(pick(HOLD_MS))
      await c.setMemoryAlarm(i, false)
      return
    }
    case 'rolling-restart':
      for (let i = 0; i < c.nodes.length; i++) {
        await c.stopNode(i)
        await c.start(i)
        await c.heal([queue])
      }
  }
}

async function waitReady(api: string): Promise<void> {
  await waitFor(
    async () => {
      const s = (await (await fetch(`${api}/v1/status`)).json()) as { upstream?: { state?: string }; consumeUpstream?: { state?: string } }
      return s.upstream?.state === 'connected' && s.consumeUpstream?.state === 'connected'
    },
    { timeoutMs: READY_TIMEOUT_MS, intervalMs: 200, what: 'both sidecar connections up' },
  )
}

async function drain(url: string, queue: string, traffic: Traffic): Promise<void> {
  const conn = await amqplib.connect(url)
  conn.on('error', () => {})
  try {
    const ch = await conn.createChannel()
    for (let m = await ch.get(queue, { noAck: true }); m !== false; m = await ch.get(queue, { noAck: true })) {
      traffic.history.read(m.properties.messageId as string | undefined, m.content.toString(), 'drain')
    }
  } finally {
    await conn.close().catch(() => {})
  }
}

export function formatClusterReport(r: ClusterChaosReport): string {
  const rows: ReportRow[] = [
    ...historyRows(r),
    ['non-200 answers', JSON.stringify(r.outcomesByDetail)],
    ['failovers (fault to first 200)', r.failovers.map((f) => `${f.fault} ${f.ms ?? '-'} ms`).join('; ')],
    ['run', `${r.seconds} s of faults, ${Math.round(r.durationMs / 1000)} s total, seed ${r.seed}`],
    ['load average', `start ${r.loadAvg.start.map((x) => x.toFixed(2)).join(' ')}, end ${r.loadAvg.end.map((x) => x.toFixed(2)).join(' ')}`],
    ['verdict', r.ok ? 'PASS (lost = 0, unexpected = 0, every request answered by its deadline)' : 'FAIL'],
  ]
  return alignRows(rows, r)
}
