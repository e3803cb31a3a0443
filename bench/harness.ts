/**
 * One benchmark run: a private broker node (or --broker-url), the sidecar as a
 * child process, then every case for each repetition, interleaved so that a
 * noisy minute hurts all cases alike rather than one of them.
 */
import { connect, type ChannelModel } from 'amqplib'
import { existsSync, rmSync } from 'node:fs'
import { availableParallelism, cpus, loadavg, release, totalmem, type } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { startBroker, type PrivateBroker } from '../test/fixtures/broker.js'
import { directConsume, directPublish, directSession, prefill } from './cases/direct.js'
import { httpBatch, httpSession, httpSingle, managementPublish } from './cases/http.js'
import { acceptedPublish, startAcceptedSidecars, type AcceptedSidecars } from './cases/accepted.js'
import { webStompPublish } from './cases/stomp.js'
import { wsConsume, wsPublish, wsUnavailable } from './cases/ws.js'
import { BATCH_CONCURRENCY, BATCH_SIZE, BODY_BYTES, CONSUME_PREFETCH, HTTP_CONCURRENCY, makeBody, PUBLISH_WINDOW, type BenchContext } from './context.js'
import { fixedRate, type LoadResult } from './load.js'
import { Meter } from './meter.js'
import type { BenchOptions, CaseId } from './options.js'
import { cpuPressure, memory, RssSampler } from './proc.js'
import type { BenchResults, LatencyRep, RepResult } from './results.js'
import { startSidecarProcess, type SidecarCommand, type SidecarProcess } from './sidecar-process.js'
import { summarise } from './summary.js'
import { median, percentiles } from './stats.js'

const PLUGINS = ['rabbitmq_management', 'rabbitmq_web_stomp']
/** Let the sidecar settle (JIT, first GC) before its idle RSS is read. */
const IDLE_SETTLE_MS = 3000
const SMOKE_SETTLE_MS = 300

export const REPO_ROOT = findRoot(dirname(fileURLToPath(import.meta.url)))

export interface HarnessHooks {
  /** How to start the sidecar; default `node dist/main.js`. */
  sidecarCommand?: SidecarCommand
  progress?: (line: string) => void
}

interface PublishCase {
  /** The result's id; `option` is the --only letter that runs it. */
  id: string
  option: CaseId
  title: string
  sidecar: boolean
  run: (ctx: BenchContext, edge: (e: 'start' | 'end') => void) => Promise<LoadResult>
}

const PUBLISH_CASES: PublishCase[] = [
  { id: 'a', option: 'a', title: `direct amqplib, confirm channel, window ${PUBLISH_WINDOW}`, sidecar: false, run: (ctx, edge) => directPublish(ctx, edge) },
  // Not a target: the ceiling at (b)'s concurrency, to show what 64 messages in flight allow on this broker.
  { id: 'a.64', option: 'a', title: `direct amqplib, confirm channel, window ${HTTP_CONCURRENCY} (reference for b)`, sidecar: false, run: (ctx, edge) => directPublish(ctx, edge, HTTP_CONCURRENCY) },
  { id: 'b', option: 'b', title: `sidecar HTTP, 1 msg/request, keep-alive, concurrency ${HTTP_CONCURRENCY}`, sidecar: true, run: httpSingle },
  { id: 'c', option: 'c', title: `sidecar HTTP batch, ${BATCH_SIZE} msgs/request, concurrency ${BATCH_CONCURRENCY}`, sidecar: true, run: httpBatch },
  { id: 'd', option: 'd', title: `sidecar WebSocket publish, window ${PUBLISH_WINDOW}`, sidecar: true, run: wsPublish },
  { id: 'e', option: 'e', title: `RabbitMQ management HTTP publish API, concurrency ${HTTP_CONCURRENCY}`, sidecar: false, run: managementPublish },
  { id: 'f', option: 'f', title: `RabbitMQ Web-STOMP, SEND with receipt, window ${PUBLISH_WINDOW}`, sidecar: false, run: webStompPublish },
]

/** The latency case alternates direct and sidecar slices of this length, so drift in the broker's speed hits both alike. */
const LATENCY_SLICE_MS = 1000

export async function runBench(opts: BenchOptions, hooks: HarnessHooks = {}): Promise<BenchResults> {
  const progress = hooks.progress ?? ((line: string) => process.stderr.write(`[bench] ${line}\n`))
  const startedAt = new Date().toISOString()
  const loadAverageStart = loadavg()
  const cpuPressureStart = cpuPressure()
  const wants = (id: CaseId) => opts.only.has(id)
  const skipped = new Map<string, string>()
  // The first reason is the real one; later checks only confirm it.
  const skip = (id: string, reason: string) => {
    if (skipped.has(id)) return
    progress(`skipping ${id}: ${reason}`)
    skipped.set(id, reason)
  }
  const cleanups: Array<() => Promise<void>> = []
  const reps = new Map<string, RepResult[]>()
  const record = (id: string, r: RepResult) => reps.set(id, [...(reps.get(id) ?? []), r])
  const latencyReps: LatencyRep[] = []
  const resources = { idleRssMB: null as number | null, idleRssAfterLoadMB: null as number | null, loadRssMB: null as number | null, loadRssReps: [] as number[], peakRssMB: null as number | null }
  let serverVersions = { rabbitmq: 'unknown', erlang: 'unknown' }
  let broker: PrivateBroker | undefined

  try {
    // 1. The broker.
    let brokerUrl: string
    if (opts.brokerUrl !== undefined) {
      brokerUrl = opts.brokerUrl
      for (const id of ['e', 'f'] as const) if (wants(id)) skip(id, 'needs the management and Web-STOMP plugins on a private node; --broker-url was given')
    } else {
      const plugins = wants('e') || wants('f') ? PLUGINS : []
      progress(`starting a private RabbitMQ node${plugins.length ? ` with ${plugins.join(', ')}` : ''}`)
      const node = await startBroker({ plugins })
      broker = node
      // Ctrl-C: children.ts SIGKILLs the node; this removes its directory.
      const removeDir = () => rmSync(node.dir, { recursive: true, force: true })
      process.on('exit', removeDir)
      cleanups.push(async () => {
        await node.stop()
        process.removeListener('exit', removeDir)
      })
      brokerUrl = node.url
    }

    // 2. Topology, unique per run so concurrent runs on a shared broker do not mix.
    const suffix = `${process.pid}.${Date.now().toString(36)}`
    const names = { exchange: `bench.x.${suffix}`, queue: `bench.q.${suffix}`, routingKey: `bench.q.${suffix}` }
    const admin: ChannelModel = await connect(brokerUrl)
    cleanups.push(() => admin.close().catch(() => {}))
    const server = admin.connection.serverProperties as Record<string, unknown>
    serverVersions = { rabbitmq: String(server['version'] ?? 'unknown'), erlang: String(server['platform'] ?? 'unknown') }
    const ch = await admin.createChannel()
    await ch.assertExchange(names.exchange, 'direct', { durable: true })
    await ch.assertQueue(names.queue, { durable: true })
    await ch.bindQueue(names.queue, names.exchange, names.routingKey)
    cleanups.push(async () => {
      await ch.deleteQueue(names.queue).catch(() => {})
      await ch.deleteExchange(names.exchange).catch(() => {})
    })
    const purge = () => ch.purgeQueue(names.queue)

    // 3. The sidecar, as a child process.
    let sidecar: SidecarProcess | undefined
    if ((['b', 'c', 'd', 'g', 'h', 'i'] as const).some(wants)) {
      const cmd = hooks.sidecarCommand ?? { nodeArgs: [], entry: join(REPO_ROOT, 'dist', 'main.js') }
      if (!existsSync(cmd.entry)) throw new Error(`${cmd.entry} not found: run \`npm run build\` first (npm run bench does)`)
      const withFlags = [...cmd.nodeArgs, ...opts.nodeArgs]
      const nodeArgs = opts.profileDir === undefined ? withFlags : [...withFlags, '--cpu-prof', '--cpu-prof-dir', resolve(opts.profileDir)]
      progress(`starting the sidecar: node ${[...nodeArgs, cmd.entry].join(' ')}`)
      const started = await startSidecarProcess({ nodeArgs, entry: cmd.entry }, brokerUrl)
      sidecar = started
      cleanups.push(() => started.stop())
    }

    // (j) has two sidecars of its own: one holds 202s in memory, the other spools them.
    let accepted: AcceptedSidecars | undefined
    if (wants('j')) {
      const cmd = hooks.sidecarCommand ?? { nodeArgs: [], entry: join(REPO_ROOT, 'dist', 'main.js') }
      progress('starting two sidecars for (j): 202 in memory, 202 spooled')
      const started = await startAcceptedSidecars(cmd, brokerUrl)
      accepted = started
      cleanups.push(() => started.stop())
    }

    const management = broker?.managementPort === undefined ? undefined : { url: `http://127.0.0.1:${broker.managementPort}`, authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` }
    const webStompUrl = broker?.webStompPort === undefined ? undefined : `ws://127.0.0.1:${broker.webStompPort}/ws`
    const body = makeBody(BODY_BYTES)
    const ctx: BenchContext = {
      brokerUrl,
      ...names,
      timing: { warmupMs: opts.warmupSeconds * 1000, measureMs: opts.seconds * 1000 },
      body,
      bodyText: body.toString('latin1'),
      sidecar,
      management,
      webStompUrl,
      progress,
    }

    // 4. Idle memory, before any load.
    const settleMs = opts.smoke ? SMOKE_SETTLE_MS : IDLE_SETTLE_MS
    if (wants('i') && sidecar) {
      progress(`sidecar pid ${sidecar.pid}: waiting ${settleMs / 1000} s for idle RSS`)
      await sleep(settleMs)
      resources.idleRssMB = memory(sidecar.pid).rssMB
      progress(`idle RSS ${resources.idleRssMB.toFixed(1)} MB`)
    }

    // 5. What cannot run.
    const wsReason = sidecar && (wants('d') || wants('g')) ? await wsUnavailable(ctx) : undefined
    if (wsReason) {
      if (wants('d')) skip('d', wsReason)
      if (wants('g')) skip('g', wsReason)
    }
    if (wants('e') && !management) skip('e', 'no management listener on this broker')
    if (wants('f') && !webStompUrl) skip('f', 'no Web-STOMP listener on this broker')

    const pids = { sidecar: sidecar?.pid, broker: broker?.beamPid }

    // 6. The repetitions.
    for (let rep = 1; rep <= opts.reps; rep++) {
      const tag = `rep ${rep}/${opts.reps}`
      // RSS under load: the largest value sampled in each repetition; the report gives their median.
      const rss = sidecar ? new RssSampler(sidecar.pid) : undefined
      rss?.start()
      for (const c of PUBLISH_CASES) {
        if (!wants(c.option) || skipped.has(c.option)) continue
        await purge()
        progress(`${tag} ${c.id}. ${c.title} ...`)
        const meter = new Meter(pids)
        const r = await c.run(ctx, meter.edge)
        const cpu = c.sidecar ? meter.sidecarCpuPer1000(r.messages) : undefined
        record(c.id, repResult(r, meter, cpu))
        progress(`${tag} ${c.id}. ${fmt(r.rate)} msg/s${r.errors ? ` (${r.errors} errors: ${r.firstError})` : ''}${cpu === undefined ? '' : `, sidecar ${cpu.toFixed(3)} CPU s/1000 msgs`}${coresText(meter)}`)
      }
      if (accepted) {
        for (const [id, sc] of [['j.memory', accepted.memory], ['j.spool', accepted.spool]] as const) {
          await purge()
          progress(`${tag} ${id} ...`)
          const meter = new Meter({ sidecar: sc.pid, broker: broker?.beamPid })
          const r = await acceptedPublish(ctx, sc, meter.edge)
          const cpu = meter.sidecarCpuPer1000(r.messages)
          record(id, repResult(r, meter, cpu))
          progress(`${tag} ${id}. ${fmt(r.rate)} msg/s${r.errors ? ` (${r.errors} errors: ${r.firstError})` : ''}${cpu === undefined ? "" : `, sidecar ${cpu.toFixed(3)} CPU s/1000 msgs`}${coresText(meter)}`)
        }
      }
      if (wants('g') && !skipped.has('g')) {
        const n = opts.consumeMessages
        const warm = Math.floor(n / 10)
        // sidecar-batched: the same consumer acking each burst of frames in one `ack {deliveryIds}`.
        for (const side of ['direct', 'sidecar', 'sidecar-batched'] as const) {
          await purge()
          progress(`${tag} g. prefilling ${fmt(n)} messages for ${side} consume ...`)
          await prefill(ctx, n)
          progress(`${tag} g. ${side} consume + ack, prefetch ${CONSUME_PREFETCH} ...`)
          const meter = new Meter(pids)
          meter.edge('start')
          const r = side === 'direct' ? await directConsume(ctx, n, warm) : await wsConsume(ctx, n, warm, side === 'sidecar-batched')
          meter.edge('end')
          record(`g.${side}`, repResult(r, meter, side === 'direct' ? undefined : meter.sidecarCpuPer1000(n)))
          progress(`${tag} g. ${side} consume: ${fmt(r.rate)} msg/s${coresText(meter)}`)
        }
      }
      if (wants('h') && sidecar) {
        await purge()
        progress(`${tag} h. latency at ${opts.latencyRate} msg/s, alternating ${LATENCY_SLICE_MS / 1000} s slices: direct publish-to-confirm, sidecar HTTP publish-to-200 ...`)
        const direct = await directSession(ctx)
        const viaSidecar = httpSession(ctx)
        const meter = new Meter(pids)
        const lat = { direct: [] as number[], sidecar: [] as number[], errors: 0, firstError: undefined as string | undefined }
        try {
          const rate = opts.latencyRate
          const warmupMs = opts.warmupSeconds * 1000
          await fixedRate({ rate, warmupMs: 0, measureMs: warmupMs, op: direct.publish })
          await fixedRate({ rate, warmupMs: 0, measureMs: warmupMs, op: viaSidecar.publish })
          const slices = Math.max(1, Math.round((opts.latencySeconds * 1000) / LATENCY_SLICE_MS))
          for (let i = 0; i < slices; i++) {
            const measureMs = Math.min(LATENCY_SLICE_MS, opts.latencySeconds * 1000)
            const d = await fixedRate({ rate, warmupMs: 0, measureMs, op: direct.publish })
            const v = await fixedRate({ rate, warmupMs: 0, measureMs, op: viaSidecar.publish, onWindow: meter.edge })
            lat.direct.push(...d.latenciesMs)
            lat.sidecar.push(...v.latenciesMs)
            lat.errors += d.errors + v.errors
            lat.firstError ??= d.firstError ?? v.firstError
          }
        } finally {
          await direct.close()
          await viaSidecar.close()
        }
        const d = percentiles(lat.direct)
        const s = percentiles(lat.sidecar)
        const lr: LatencyRep = { direct: d, sidecar: s, added: { p50: s.p50 - d.p50, p90: s.p90 - d.p90, p99: s.p99 - d.p99 }, errors: lat.errors }
        if (lat.firstError !== undefined) lr.firstError = lat.firstError
        const cpu = meter.sidecarCpuPer1000(s.count)
        if (cpu !== undefined) lr.sidecarCpuPer1000 = cpu
        const cores = meter.cores()
        if (cores) lr.cores = cores
        latencyReps.push(lr)
        progress(`${tag} h. p50/p90/p99 direct ${ms(d)}, sidecar ${ms(s)}, added ${ms(lr.added)}${cpu === undefined ? '' : `; sidecar ${cpu.toFixed(3)} CPU s/1000 msgs`}${lat.errors ? ` (${lat.errors} errors: ${lat.firstError})` : ''}`)
      }
      if (rss) {
        const max = rss.stop()
        resources.loadRssReps.push(max)
        progress(`${tag} largest sidecar RSS sampled under load ${max.toFixed(1)} MB`)
      }
    }
    if (resources.loadRssReps.length) resources.loadRssMB = median(resources.loadRssReps)
    if (wants('i') && sidecar) {
      await sleep(settleMs)
      const m = memory(sidecar.pid)
      resources.idleRssAfterLoadMB = m.rssMB
      resources.peakRssMB = m.peakRssMB
      progress(`RSS after load ${m.rssMB.toFixed(1)} MB (peak ${m.peakRssMB.toFixed(1)} MB)`)
    }
    if (wants('h') && !sidecar) skip('h', 'no sidecar')
    if (wants('i') && !sidecar) skip('i', 'no sidecar')
  } finally {
    for (const fn of cleanups.reverse()) await fn().catch((err: unknown) => progress(`cleanup: ${(err as Error).message}`))
  }

  return summarise({
    opts,
    startedAt,
    machine: {
      nproc: availableParallelism(),
      cpuModel: cpus()[0]?.model ?? 'unknown',
      memoryGB: Math.round(totalmem() / 2 ** 30),
      os: `${type()} ${release()}`,
      node: process.version,
      ...serverVersions,
      loadAverageStart,
      loadAverageEnd: loadavg(),
      cpuPressureStart,
      cpuPressureEnd: cpuPressure(),
    },
    brokerKind: broker ? 'private' : 'external',
    plugins: broker && (wants('e') || wants('f')) ? PLUGINS : [],
    titles: new Map(PUBLISH_CASES.map((c) => [c.id, c.title] as [string, string])),
    reps,
    latencyReps,
    resources,
    skipped,
  })
}

function repResult(r: LoadResult, meter: Meter, sidecarCpuPer1000: number | undefined): RepResult {
  const out: RepResult = { rate: r.rate, messages: r.messages, seconds: r.seconds, errors: r.errors }
  if (r.firstError !== undefined) out.firstError = r.firstError
  const cores = meter.cores()
  if (cores) out.cores = cores
  if (sidecarCpuPer1000 !== undefined) out.sidecarCpuPer1000 = sidecarCpuPer1000
  return out
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US')
const ms = (p: { p50: number; p90: number; p99: number }) => `${p.p50.toFixed(2)}/${p.p90.toFixed(2)}/${p.p99.toFixed(2)} ms`

function coresText(meter: Meter): string {
  const c = meter.cores()
  if (!c) return ''
  const parts = [c.sidecar === undefined ? '' : `sidecar ${c.sidecar.toFixed(2)}`, c.broker === undefined ? '' : `broker ${c.broker.toFixed(2)}`, `harness ${c.harness.toFixed(2)}`]
  return ` [cores: ${parts.filter(Boolean).join(', ')}]`
}

function findRoot(dir: string): string {
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'src'))) return d
    if (dirname(d) === d) throw new Error(`no package root above ${dir}`)
  }
}
