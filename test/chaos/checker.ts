/**
 * A Jepsen-style loss checker for the sidecar (issue 4; FAULTS.md "A
 * Jepsen-style checker"; the model of RabbitMQ's own Jepsen test).
 *
 *   private broker <- fault proxy <- sidecar process <- K HTTP publishers
 *                                                   -> C WebSocket consumers (acks)
 *
 * K publisher loops publish uniquely numbered messages (message_id and body
 * p<k>-<seq>) with POST /v1/publish/amq.default/<queue> and record each
 * answer. C consumers read through GET /v1/ws (subscribe, ack every message).
 * Meanwhile a cycler rotates faults (reset, refuse, blackhole, broker restart,
 * forced close, memory alarm): on for a while, healed, then a clear period
 * once the sidecar is connected again. When time is up: stop publishing, let
 * the consumers catch up, stop the sidecar (it requeues what it holds), drain
 * the queue directly with amqplib, and check (history.ts).
 *
 * Used by test/chaos.test.ts (60 s) and main.ts (`npm run chaos -- --seconds N`).
 */
import amqplib from 'amqplib'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import WebSocket from 'ws'
import { startBroker, type PrivateBroker } from '../fixtures/broker.js'
import { startFaultProxy, type FaultProxy } from '../fixtures/fault-proxy.js'
import { delay, freePorts, waitFor } from '../fixtures/wait.js'
import { FAULT_KINDS, SPOOL_ONLY_FAULTS, makeFault, rng, shuffled, type FaultKind } from './faults.js'
import { History, type CheckResult } from './history.js'
import { startSidecarProcess, type SidecarProcess } from './sidecar-process.js'

export interface ChaosOptions {
  /** How long faults cycle (and publishers publish). */
  seconds: number
  publishers?: number
  consumers?: number
  /** Per publisher loop, messages per second at most (each loop also waits for its answer). */
  ratePerPublisher?: number
  seed?: number
  faults?: readonly FaultKind[]
  /** How long a non-instant fault stays on, ms [min, max]. */
  holdMs?: readonly [number, number]
  /**
   * Per-kind overrides of holdMs. By default a blackhole lasts 2-9 s: with the
   * 2 s heartbeat, the shorter ones are stalls the link rides through and the
   * longer ones end in a heartbeat timeout (about 2 heartbeats).
   */
  holdMsByKind?: Partial<Record<FaultKind, readonly [number, number]>>
  /** Clear period after the sidecar is connected again, ms [min, max]. */
  clearMs?: readonly [number, number]
  heartbeatSeconds?: number
  /** X-Timeout-Ms of each publish. */
  publishTimeoutMs?: number
  prefetch?: number
  queueType?: 'classic' | 'quorum'
  /** Progress lines (every progressEveryMs). */
  onProgress?: (line: string) => void
  progressEveryMs?: number
  /** Keep cycling past `seconds` until every fault kind ran once (default true). */
  fullRound?: boolean
  /**
   * Negative control: a direct amqplib consumer steals messages (noAck) for a
   * second at the start of the faults, so the checker must report lost > 0.
   */
  sabotage?: boolean
  /** Keep the work directory (sidecar log and config) even when the run passes. */
  keepDir?: boolean
  /**
   * Publish with X-Ack: accepted into a durable spool (202 counts as a
   * promise, like 200), and add the sidecar-kill fault: kill -9, then a start
   * on the same spool directory.
   */
  spool?: boolean
}

export interface ChaosReport extends CheckResult {
  seed: number
  queueType: string
  publishers: number
  consumers: number
  faultSeconds: number
  durationMs: number
  faultsInjected: Partial<Record<FaultKind, number>>
  /** The sidecar's own count of lost connections, by role and cause, just before it stopped. */
  sidecarDisconnects: Record<string, Record<string, number>>
  /** WebSocket frames: stale notices and errors the consumers saw; socket reconnects. */
  consumerEvents: { stale: number; errors: Record<string, number>; reconnects: number }
  /** Left in the queue after the sidecar stopped (read by the direct drain). */
  drained: number
  /** Messages taken by the sabotage consumer (0 unless sabotage). */
  stolen: number
  /** Whether the consumers had read every confirmed message before the drain. */
  caughtUp: boolean
  loadAvg: { start: number[]; end: number[] }
  /** The sidecar log and config; kept when the run fails (or keepDir). */
  workDir: string | undefined
}

const READY_TIMEOUT_MS = 60_000
const CATCH_UP_TIMEOUT_MS = 30_000

export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const o = {
    publishers: 4,
    consumers: 2,
    ratePerPublisher: 50,
    seed: Math.floor(Math.random() * 2 ** 31),
    faults: opts.spool ? FAULT_KINDS : FAULT_KINDS.filter((f) => !SPOOL_ONLY_FAULTS.includes(f)),
    holdMs: [1500, 4500] as const,
    holdMsByKind: { blackhole: [2000, 9000] } as Partial<Record<FaultKind, readonly [number, number]>>,
    clearMs: [1000, 3000] as const,
    heartbeatSeconds: 2,
    publishTimeoutMs: 5000,
    prefetch: 50,
    queueType: 'classic' as const,
    progressEveryMs: 5000,
    fullRound: true,
    onProgress: (_: string) => {},
    // Options given as undefined keep their defaults.
    ...(Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as ChaosOptions),
  }
  const random = rng(o.seed)
  const started = Date.now()
  const loadStart = loadavg()
  const history = new History()
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-chaos-'))
  const queue = `chaos.${randomUUID().slice(0, 8)}`
  let broker: PrivateBroker | undefined
  let proxy: FaultProxy | undefined
  let sidecar: SidecarProcess | undefined
  const consumers: WsConsumer[] = []
  let passed = false
  try {
    broker = await startBroker()
    proxy = await startFaultProxy({ upstreamHost: '127.0.0.1', upstreamPort: broker.port })
    // --spool: fixed ports, so the apps' URLs survive a kill and restart of the sidecar.
    const [apiPort, opsPort] = o.spool ? await freePorts(2) : [0, 0]
    const sidecarConfig = {
      api: { port: apiPort },
      ops: { host: '127.0.0.1', port: opsPort },
      amqp: {
        urls: [`amqp://guest:guest@127.0.0.1:${proxy.port}/%2F`],
        heartbeatSeconds: o.heartbeatSeconds,
        reconnect: { initialDelayMs: 100, maxDelayMs: 2000 },
      },
      publish: { timeoutMs: o.publishTimeoutMs, ...(o.spool ? { spool: { dir: join(dir, 'spool') } } : {}) },
      topology: { queues: [{ name: queue, durable: true, ...(o.queueType === 'quorum' ? { arguments: { 'x-queue-type': 'quorum' } } : {}) }] },
      shutdown: { drainMs: 0 },
      log: { level: 'info' },
    }
    sidecar = await startSidecarProcess(dir, sidecarConfig)
    // The current process: a sidecar-kill fault replaces it (same ports, same spool).
    const sc = {
      get api() {
        return (sidecar as SidecarProcess).api
      },
      stop: () => (sidecar as SidecarProcess).stop(),
    }
    const sidecarFaults = {
      kill: async () => {
        await (sidecar as SidecarProcess).kill()
      },
      restart: async () => {
        sidecar = await startSidecarProcess(dir, sidecarConfig)
      },
    }
    await waitReady(sc, 'the sidecar to connect at start')
    for (let i = 0; i < o.consumers; i++) consumers.push(new WsConsumer(sc.api, queue, o.prefetch, history))
    await withDeadline(Promise.all(consumers.map((c) => c.subscribed)), READY_TIMEOUT_MS, 'the WebSocket consumers to subscribe')

    const until = Date.now() + o.seconds * 1000
    let current = 'none'
    const injected: Partial<Record<FaultKind, number>> = {}
    const progress = setInterval(() => {
      const c = history.counts
      o.onProgress(
        `[${String(Math.round((Date.now() - started) / 1000)).padStart(4)}s] fault=${current.padEnd(22)} attempted=${c.attempted} confirmed=${c.confirmed} unknown=${c.unknown} rejected=${c.rejected} in-flight=${c.pending} delivered=${c.deliveries} faults=${Object.values(injected).reduce((a, b) => a + (b ?? 0), 0)}`,
      )
    }, o.progressEveryMs)
    progress.unref()

    let publishing = true
    const loops = Array.from({ length: o.publishers }, (_, k) => publisherLoop(k, sc.api, queue, history, () => publishing, o.ratePerPublisher, o.publishTimeoutMs, o.spool === true))
    let stolen = 0
    try {
      if (o.sabotage) {
        stolen = await steal(broker.url, queue, 1000)
        o.onProgress(`sabotage: a direct consumer stole ${stolen} messages`)
      }
      // The fault cycler: rotate through every kind in a shuffled order per round.
      const targets = { proxy, broker, ...(o.spool ? { sidecar: sidecarFaults } : {}) }
      let round: FaultKind[] = []
      let rounds = 0
      while (Date.now() < until || (o.fullRound && rounds === 1 && round.length > 0)) {
        if (round.length === 0) {
          round = shuffled(o.faults, random)
          rounds++
        }
        const fault = makeFault(round.shift() as FaultKind, targets)
        current = `${fault.kind} (on)`
        await fault.inject()
        injected[fault.kind] = (injected[fault.kind] ?? 0) + 1
        try {
          // The fault's length: real time on purpose (this is the fault, not a synchronisation).
          if (!fault.instant) await delay(pick(o.holdMsByKind[fault.kind] ?? o.holdMs, random))
        } finally {
          current = `${fault.kind} (healing)`
          await fault.heal()
        }
        current = `after ${fault.kind}`
        await waitReady(sc, `the sidecar to reconnect after ${fault.kind}`)
        current = 'clear'
        // A clear period with traffic before the next fault (and after the last one).
        await delay(pick(o.clearMs, random))
      }
    } finally {
      current = 'stopping publishers'
      publishing = false
      await Promise.all(loops)
      clearInterval(progress)
    }
    o.onProgress(`faults over after ${Math.round((Date.now() - started) / 1000)} s; waiting for the consumers to catch up`)

    // Let the consumers catch up: every confirmed message read and the queue empty, or a deadline.
    const direct = await amqplib.connect(broker.url)
    direct.on('error', () => {})
    let caughtUp = false
    try {
      const ch = await direct.createChannel()
      caughtUp = await waitFor(async () => history.allConfirmedRead() && (await ch.checkQueue(queue)).messageCount === 0, {
        timeoutMs: CATCH_UP_TIMEOUT_MS,
        what: 'the consumers to read every confirmed message',
        intervalMs: 250,
      }).catch(() => false)
    } finally {
      await direct.close().catch(() => {})
    }
    const status = (await fetch(`${sc.api}/v1/status`).then((r) => r.json()).catch(() => ({}))) as Record<string, { disconnectsByCause?: Record<string, number> } | undefined>
    await Promise.all(consumers.map((c) => c.close()))
    const how = await sc.stop()
    o.onProgress(`sidecar stopped (${how}); draining ${queue} directly`)

    const drained = await drainDirectly(broker.url, queue, history)
    const result = history.check()
    passed = result.ok
    return {
      ...result,
      seed: o.seed,
      queueType: o.queueType,
      publishers: o.publishers,
      consumers: o.consumers,
      faultSeconds: o.seconds,
      durationMs: Date.now() - started,
      faultsInjected: injected,
      sidecarDisconnects: {
        publish: status['upstream']?.disconnectsByCause ?? {},
        consume: status['consumeUpstream']?.disconnectsByCause ?? {},
      },
      consumerEvents: {
        stale: consumers.reduce((a, c) => a + c.stale, 0),
        errors: consumers.reduce<Record<string, number>>((acc, c) => {
          for (const [k, v] of Object.entries(c.errors)) acc[k] = (acc[k] ?? 0) + v
          return acc
        }, {}),
        reconnects: consumers.reduce((a, c) => a + c.reconnects, 0),
      },
      drained,
      caughtUp,
      stolen,
      loadAvg: { start: loadStart, end: loadavg() },
      workDir: o.keepDir || !passed ? dir : undefined,
    }
  } finally {
    await Promise.all(consumers.map((c) => c.close()))
    await sidecar?.stop()
    await proxy?.close()
    await broker?.stop()
    if (passed && !o.keepDir) rmSync(dir, { recursive: true, force: true })
  }
}

/** Both of the sidecar's connections up and the publish one not blocked (its own /v1/status). */
async function waitReady(sc: { api: string }, what: string): Promise<void> {
  await waitFor(
    async () => {
      const s = (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream?: { state?: string }; consumeUpstream?: { state?: string } }
      return s.upstream?.state === 'connected' && s.consumeUpstream?.state === 'connected'
    },
    { timeoutMs: READY_TIMEOUT_MS, intervalMs: 100, what },
  )
}

async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function pick([min, max]: readonly [number, number], random: () => number): number {
  return Math.round(min + random() * (max - min))
}

async function publisherLoop(
  k: number,
  api: string,
  queue: string,
  history: History,
  running: () => boolean,
  rate: number,
  timeoutMs: number,
  accepted: boolean,
): Promise<void> {
  const url = `${api}/v1/publish/amq.default/${encodeURIComponent(queue)}`
  const start = Date.now()
  for (let seq = 0; running(); seq++) {
    const id = `p${k}-${seq}`
    history.attempt(id)
    let answer: number | string
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'text/plain', 'x-message-id': id, 'x-timeout-ms': String(timeoutMs), ...(accepted ? { 'x-ack': 'accepted' } : {}) },
        body: id,
        // The sidecar promises an answer by the deadline; past it plus slack, call it a timeout.
        signal: AbortSignal.timeout(timeoutMs + 5000),
      })
      await res.arrayBuffer()
      answer = res.status
    } catch (err) {
      const e = err as { name?: string; cause?: { code?: string } }
      answer = e.name === 'TimeoutError' ? 'timeout' : `error:${e.cause?.code ?? e.name ?? 'unknown'}`
    }
    history.settle(id, answer)
    // Pace: at most `rate` per second; after a failure, at least a short pause (no hot loop on 503).
    const due = start + ((seq + 1) * 1000) / rate - Date.now()
    const pause = answer === 200 || answer === 202 ? due : Math.max(due, 100)
    if (pause > 0 && running()) await delay(pause)
  }
}

/** One WebSocket consumer: subscribes, records and acks every message, resubscribes if the socket drops. */
export class WsConsumer {
  stale = 0
  errors: Record<string, number> = {}
  reconnects = 0
  readonly subscribed: Promise<void>
  #ws: WebSocket | undefined
  #closing = false
  #resolveSubscribed: () => void = () => {}
  #rejectSubscribed: (err: Error) => void = () => {}

  constructor(
    private readonly api: string,
    private readonly queue: string,
    private readonly prefetch: number,
    private readonly history: History,
  ) {
    this.subscribed = new Promise((resolve, reject) => {
      this.#resolveSubscribed = resolve
      this.#rejectSubscribed = reject
    })
    this.subscribed.catch(() => {}) // observed by runChaos; never an unhandled rejection
    this.#open()
  }

  #open(): void {
    const ws = new WebSocket(`${this.api.replace(/^http/, 'ws')}/v1/ws`)
    this.#ws = ws
    ws.on('open', () => ws.send(JSON.stringify({ op: 'subscribe', queue: this.queue, prefetch: this.prefetch, id: 'sub' })))
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString()) as Record<string, unknown>
      switch (f['op']) {
        case 'subscribed':
          this.#resolveSubscribed()
          break
        case 'message': {
          const props = f['properties'] as { messageId?: string } | undefined
          const body = f['bodyEncoding'] === 'base64' ? Buffer.from(String(f['body']), 'base64').toString() : String(f['body'])
          this.history.read(props?.messageId, body, 'consumer')
          ws.send(JSON.stringify({ op: 'ack', deliveryId: f['deliveryId'] }))
          break
        }
        case 'stale':
          this.stale += Array.isArray(f['deliveryIds']) ? f['deliveryIds'].length : 1
          break
        case 'error': {
          const code = String(f['code'])
          this.errors[code] = (this.errors[code] ?? 0) + 1
          if (f['id'] === 'sub') this.#rejectSubscribed(new Error(`subscribe failed: ${code} ${String(f['message'])}`))
          break
        }
      }
    })
    ws.on('error', () => {})
    ws.on('close', () => {
      if (this.#closing) return
      this.reconnects++
      setTimeout(() => this.#open(), 200).unref()
    })
  }

  async close(): Promise<void> {
    this.#closing = true
    const ws = this.#ws
    if (!ws || ws.readyState === WebSocket.CLOSED) return
    const closed = new Promise<void>((r) => ws.once('close', () => r()))
    if (ws.readyState === WebSocket.CONNECTING) ws.terminate()
    else ws.close()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, 5000)))])
    clearTimeout(timer)
  }
}

/** The sabotage: a competing consumer on the queue, bypassing the checker, for ms. */
async function steal(url: string, queue: string, ms: number): Promise<number> {
  const conn = await amqplib.connect(url)
  conn.on('error', () => {})
  let n = 0
  try {
    const ch = await conn.createChannel()
    const { consumerTag } = await ch.consume(queue, () => void n++, { noAck: true })
    await delay(ms)
    await ch.cancel(consumerTag)
  } finally {
    await conn.close().catch(() => {})
  }
  return n
}

/** After the sidecar is gone: get every message left in the queue (noAck), then make sure it is empty. */
async function drainDirectly(url: string, queue: string, history: History): Promise<number> {
  const conn = await amqplib.connect(url)
  conn.on('error', () => {})
  try {
    const ch = await conn.createChannel()
    let n = 0
    for (;;) {
      const m = await ch.get(queue, { noAck: true })
      if (m === false) break
      history.read(m.properties.messageId as string | undefined, m.content.toString(), 'drain')
      n++
    }
    const q = await ch.checkQueue(queue)
    if (q.messageCount !== 0 || q.consumerCount !== 0) throw new Error(`after the drain ${queue} still has ${q.messageCount} messages and ${q.consumerCount} consumers`)
    return n
  } finally {
    await conn.close().catch(() => {})
  }
}

export type ReportRow = [string, string | number]

/** The loss checker's own counts, first in every report (this one and --cluster's). */
export function historyRows(r: CheckResult): ReportRow[] {
  return [
    ['attempted', r.attempted],
    ['confirmed (200)', r.confirmed],
    ['unknown (5xx/timeout)', r.unknown],
    ['rejected (4xx, 503)', r.rejected],
    ['lost', r.lost],
    ['unexpected', r.unexpected],
    ['duplicated (ids)', `${r.duplicated} (${r.duplicateDeliveries} extra deliveries)`],
    ['recovered (unknown, read)', `${r.recovered} ${JSON.stringify(r.recoveredByDetail)}`],
  ]
}

/** Rows as aligned text lines, with the examples and work directory of a failed run. */
export function alignRows(rows: ReportRow[], r: { ok: boolean; examples: unknown; workDir?: string | undefined }): string {
  if (!r.ok) rows.push(['examples', JSON.stringify(r.examples)])
  if (r.workDir) rows.push(['work dir (sidecar log)', r.workDir])
  const w = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n')
}

/** The figures as aligned text lines. */
export function formatReport(r: ChaosReport): string {
  const rows: ReportRow[] = [
    ...historyRows(r),
    ['rejected but read', r.rejectedButRead],
    ['corrupted', r.corrupted],
    ['read (distinct ids)', `${r.read} (consumers ${r.readByConsumers} deliveries, direct drain ${r.readByDrain})`],
    ['non-200 answers', JSON.stringify(r.outcomesByDetail)],
    ['faults injected', JSON.stringify(r.faultsInjected)],
    ['sidecar disconnects', JSON.stringify(r.sidecarDisconnects)],
    ['consumer events', JSON.stringify(r.consumerEvents)],
    ['consumers caught up', String(r.caughtUp)],
    ...(r.stolen > 0 ? [['stolen by the sabotage consumer', r.stolen] as [string, number]] : []),
    ['run', `${r.faultSeconds} s of faults, ${Math.round(r.durationMs / 1000)} s total, ${r.publishers} publishers, ${r.consumers} WebSocket consumers, ${r.queueType} queue, seed ${r.seed}`],
    ['load average', `start ${r.loadAvg.start.map((x) => x.toFixed(2)).join(' ')}, end ${r.loadAvg.end.map((x) => x.toFixed(2)).join(' ')}`],
    ['verdict', r.ok ? 'PASS (lost = 0, unexpected = 0)' : 'FAIL'],
  ]
  return alignRows(rows, r)
}
