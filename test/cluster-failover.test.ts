// The sidecar on a real three-node RabbitMQ cluster (issue 15): a quorum queue
// from config, all three URLs, HTTP publishers (confirm mode), a WebSocket and
// a pull consumer (acks). One cluster for the file; each scenario uses its own
// queue and restores the cluster (cluster.heal) even when it fails, so no
// scenario depends on another's state. Invariants per scenario: lost = 0,
// unexpected = 0, every request answered by its deadline, and after the fault
// a new message round-trips within ROUNDTRIP_BOUND_MS. Failover (fault to the
// first 200 for a request sent after it) is reported, never asserted.
import t, { type Test } from 'tap'
import amqplib from 'amqplib'
import { randomUUID } from 'node:crypto'
import { clusterFor, type Cluster } from './fixtures/cluster.js'
import { Traffic } from './fixtures/cluster-traffic.js'
import { recordConfirmFrames } from './fixtures/confirm-frames.js'
import { netnsAvailable } from './fixtures/netns-path.js'
import { startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { delay, waitFor } from './fixtures/wait.js'

t.setTimeout(40 * 60_000) // a cluster boot alone takes minutes on a busy machine

/** A confirmed message must reach a consumer within this after the fault is healed. */
const ROUNDTRIP_BOUND_MS = 60_000
const FAILOVER_DEADLINE_MS = 180_000
const READY_TIMEOUT_MS = 120_000
const WARMUP_CONFIRMS = 20
const PUBLISH_TIMEOUT_MS = 10_000
/** How long a killed node stays down. */
const HOLD_MS = 20_000
const QUEUE_ARGS = { 'x-queue-type': 'quorum', 'x-queue-leader-locator': 'client-local' }

const skip = netnsAvailable()
if (skip !== null) t.plan(0, skip)
else {
  const cluster = await clusterFor(t)
  const figures: string[] = []
  t.teardown(() => {
    // One line per scenario, for docs/operations.md and the closing note.
    for (const f of figures) console.log(`# failover: ${f}`)
  })

  interface Ctx {
    cluster: Cluster
    sidecar: RunningSidecar
    queue: string
    traffic: Traffic
    /** Node index of the sidecar's publish connection, read from the broker. */
    sidecarNode: number
    leader: number
  }

  async function scenario(
    name: string,
    opts: { leaderOn?: number },
    fault: (ctx: Ctx, t: Test) => Promise<number>,
    check: (ctx: Ctx, t: Test, t0: number) => void = () => {},
  ): Promise<void> {
    await t.test(name, async (t) => {
      const queue = `cl-${name.replace(/\W+/g, '-')}-${randomUUID().slice(0, 6)}`
      t.teardown(() => cluster.heal([queue]))
      if (opts.leaderOn !== undefined) await declareOn(cluster, opts.leaderOn, queue)
      const frames = recordConfirmFrames()
      t.teardown(() => frames.restore())
      const sidecar = await startSidecar(t, {
        amqp: { urls: [...cluster.urls], heartbeatSeconds: 2, reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } },
        publish: { timeoutMs: PUBLISH_TIMEOUT_MS },
        topology: { queues: [{ name: queue, durable: true, arguments: QUEUE_ARGS }] },
        log: { level: 'info' },
      })
      await waitReady(sidecar)
      const sidecarNode = await waitFor(() => cluster.nodeOfConnection('amqp-sidecar:publish'), { timeoutMs: READY_TIMEOUT_MS, what: 'the broker to list the sidecar' })
      const leader = cluster.indexOf((await waitFor(() => cluster.queue(queue), { timeoutMs: READY_TIMEOUT_MS, what: queue }))?.leader) as number
      t.comment(`sidecar publishes through node ${sidecarNode}; ${queue}'s leader is node ${leader}`)
      const traffic = new Traffic(sidecar.api, queue, { timeoutMs: PUBLISH_TIMEOUT_MS })
      t.teardown(() => traffic.stopPublishing().then(() => traffic.stopConsumers()))
      await traffic.start(name.split(' ')[0] as string)
      await waitFor(() => traffic.history.counts.confirmed >= WARMUP_CONFIRMS, { timeoutMs: READY_TIMEOUT_MS, what: 'confirms before the fault' })
      const ctx: Ctx = { cluster, sidecar, queue, traffic, sidecarNode, leader }

      const t0 = await fault(ctx, t)
      const failover = traffic.firstConfirmAfter(t0)
      await cluster.heal([queue])
      await waitReady(sidecar)
      const healedAt = Date.now()
      await waitFor(() => traffic.firstConfirmAfter(healedAt) !== undefined, { timeoutMs: FAILOVER_DEADLINE_MS, what: 'a 200 after the cluster healed' })
      await traffic.stopPublishing()
      const probe = await traffic.publishOne(`${name.split(' ')[0]}-probe`)
      t.equal(probe.status, 200, 'a new publish after the fault is confirmed')
      await waitFor(() => traffic.history.allConfirmedRead(), { timeoutMs: ROUNDTRIP_BOUND_MS, what: `every confirmed message read within ${ROUNDTRIP_BOUND_MS} ms` })
      await traffic.stopConsumers()
      await sidecar.stop()
      await drain(cluster, queue, traffic)

      const r = traffic.history.check()
      const statuses = traffic.statusesSince(t0)
      const line = `${name}: fault to first 200 ${failover === undefined ? 'none' : `${failover} ms`}; answers from the fault on ${JSON.stringify(statuses)}; broker nack frames ${JSON.stringify(frames.byHost())}; attempted ${r.attempted}, confirmed ${r.confirmed}, recovered ${r.recovered}, duplicated ${r.duplicated}`
      figures.push(line)
      t.comment(line)
      t.equal(r.lost, 0, 'lost = 0', { examples: r.examples.lost })
      t.equal(r.unexpected, 0, 'unexpected = 0')
      t.equal(r.rejectedButRead, 0, 'nothing answered 4xx/503 was published')
      t.same(traffic.late(), [], 'every request answered by its deadline')
      t.ok(failover !== undefined, 'a 200 came after the fault')
      t.ok(traffic.pulled > 0, 'the pull consumer read messages too')
      check(ctx, t, t0)
    })
  }

  // The issue's report: the sidecar's node is also the queue's leader.
  await scenario(
    'kill9-own-node (sidecar node = leader)',
    { leaderOn: 0 },
    async ({ cluster, sidecarNode, leader }, t) => {
      t.equal(leader, sidecarNode, 'the leader is on the sidecar node (client-local)')
      const t0 = Date.now()
      await cluster.kill9(sidecarNode)
      await waitFor(() => cluster.nodeOfConnection('amqp-sidecar:publish').then((n) => n !== undefined && n !== sidecarNode), { timeoutMs: FAILOVER_DEADLINE_MS, what: 'the sidecar on another node' })
      // The fault's length, real time on purpose (as in the issue, where the
      // node stayed down ~64 s): long enough to see whether 502s go on.
      await delay(HOLD_MS)
      await cluster.start(sidecarNode)
      return t0
    },
    ({ traffic }, t, t0) => {
      const nacked = traffic.statusesSince(t0)['502 PUBLISH_NACKED'] ?? 0
      // The issue's report: 502s for a minute. A nacked message is now re-sent on a fresh channel (src/publish/nack.ts).
      t.equal(nacked, 0, 'no 502 PUBLISH_NACKED while the leader moves')
    },
  )

  // The same, deterministic: a frozen node is noticed by the sidecar's
  // heartbeat (~2 heartbeats) long before the cluster's net_ticktime (8 s)
  // elects a new leader, so the sidecar's new publish channel always meets the
  // queue while its record still names the frozen leader. Then the node is
  // killed (the frozen process is gone for good) and restarted later.
  await scenario(
    'freeze-own-node (sidecar node = leader)',
    { leaderOn: 0 },
    async ({ cluster, sidecarNode, leader }, t) => {
      t.equal(leader, sidecarNode, 'the leader is on the sidecar node (client-local)')
      const t0 = Date.now()
      cluster.freeze(sidecarNode)
      await waitFor(() => cluster.nodeOfConnection('amqp-sidecar:publish').then((n) => n !== undefined && n !== sidecarNode), { timeoutMs: FAILOVER_DEADLINE_MS, intervalMs: 500, what: 'the sidecar on another node' })
      await delay(HOLD_MS) // the fault's length, real time on purpose
      await cluster.kill9(sidecarNode)
      await delay(HOLD_MS)
      await cluster.start(sidecarNode)
      return t0
    },
    ({ traffic }, t, t0) => {
      const nacked = traffic.statusesSince(t0)['502 PUBLISH_NACKED'] ?? 0
      t.equal(nacked, 0, 'no 502 PUBLISH_NACKED while the leader moves')
    },
  )

  await scenario('kill9-leader-elsewhere', { leaderOn: 2 }, async ({ cluster, sidecarNode, leader }, t) => {
    t.not(leader, sidecarNode, 'the leader is not on the sidecar node')
    const t0 = Date.now()
    await cluster.kill9(leader)
    await delay(HOLD_MS) // the fault's length, real time on purpose
    await cluster.start(leader)
    return t0
  })

  await scenario('partition-own-node', { leaderOn: 1 }, async ({ cluster, sidecarNode }) => {
    const t0 = Date.now()
    cluster.partition(sidecarNode, true)
    // pause_minority: the majority goes on; the sidecar must notice (heartbeat) and move.
    await waitFor(() => cluster.nodeOfConnection('amqp-sidecar:publish').then((n) => n !== undefined && n !== sidecarNode), { timeoutMs: FAILOVER_DEADLINE_MS, intervalMs: 1000, what: 'the sidecar on another node' })
    cluster.partition(sidecarNode, false)
    return t0
  })

  await scenario('rolling-restart', {}, async ({ cluster, queue }) => {
    const t0 = Date.now()
    for (let i = 0; i < cluster.nodes.length; i++) {
      await cluster.stopNode(i)
      await cluster.start(i)
      await cluster.heal([queue])
    }
    return t0
  })

  await scenario('memory-alarm-other-node', {}, async ({ cluster, sidecar, sidecarNode }) => {
    const other = (sidecarNode + 1) % cluster.nodes.length
    await cluster.setMemoryAlarm(other, true)
    await waitFor(async () => (await status(sidecar)).upstream?.state === 'blocked', { timeoutMs: FAILOVER_DEADLINE_MS, what: 'the sidecar to report blocked' })
    const t0 = Date.now()
    await cluster.setMemoryAlarm(other, false)
    return t0 // here: alarm cleared to the first 200
  })
}

async function status(sc: RunningSidecar): Promise<{ upstream?: { state?: string }; consumeUpstream?: { state?: string } }> {
  return (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream?: { state?: string }; consumeUpstream?: { state?: string } }
}

async function waitReady(sc: RunningSidecar): Promise<void> {
  await waitFor(
    async () => {
      const s = await status(sc)
      return s.upstream?.state === 'connected' && s.consumeUpstream?.state === 'connected'
    },
    { timeoutMs: READY_TIMEOUT_MS, intervalMs: 200, what: 'both sidecar connections up' },
  )
}

/** Declares the queue through node i, so client-local puts its leader there. */
async function declareOn(cluster: Cluster, i: number, queue: string): Promise<void> {
  const conn = await amqplib.connect(cluster.urls[i] as string)
  conn.on('error', () => {})
  try {
    const ch = await conn.createChannel()
    await ch.assertQueue(queue, { durable: true, arguments: QUEUE_ARGS })
  } finally {
    await conn.close().catch(() => {})
  }
}

/** After the sidecar stopped: read what is left in the queue, directly. */
async function drain(cluster: Cluster, queue: string, traffic: Traffic): Promise<void> {
  const conn = await amqplib.connect(cluster.urls[0] as string)
  conn.on('error', () => {})
  try {
    const ch = await conn.createChannel()
    for (;;) {
      const m = await ch.get(queue, { noAck: true })
      if (m === false) break
      traffic.history.read(m.properties.messageId as string | undefined, m.content.toString(), 'drain')
    }
  } finally {
    await conn.close().catch(() => {})
  }
}
