/**
 * FAULTS.md rows 5, 6, 7, 8 and 20: the network between the sidecar and the
 * broker fails. The sidecar talks to the broker through a userspace fault
 * proxy (test/fixtures/fault-proxy.ts) or haproxy; the broker is the shared
 * one, which these faults do not hurt (only this file's own connections are
 * reset, held or cut). Invariants: L (drain the queue directly, not through
 * the proxy), D, H, S, R.
 *
 * Row 8 (NAT/conntrack eviction) cannot run on this machine: see its test.
 */
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { checkH, checkLD, checkR, checkS, getStatus, metric, publishOnce, publishStream, readQueue, readyzStatus, type Outcome } from './fixtures/faults.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { startHaproxy } from './fixtures/haproxy.js'
import { netnsAvailable, startNetnsPath } from './fixtures/netns-path.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const HEARTBEAT_S = 2
const DEADLINE_MS = 2_000
const shared = new URL(SHARED_BROKER_URL)
const sharedPort = Number(shared.port || 5672)
/** The shared broker's URL with another host:port (a proxy in front of it). */
const via = (port: number) => {
  const u = new URL(SHARED_BROKER_URL)
  u.hostname = '127.0.0.1'
  u.port = String(port)
  return u.toString()
}

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const q = amqp.name('faults-net')
/** Consumed through the sidecar (pull) in row 20; kept apart so the pull consumer never takes q's messages. */
const qDown = amqp.name('faults-net-down')
const proxy = await startFaultProxy({ upstreamHost: shared.hostname, upstreamPort: sharedPort })
t.teardown(() => proxy.close())
const sc = await startSidecar(t, {
  amqp: { urls: [via(proxy.port)], heartbeatSeconds: HEARTBEAT_S, connectTimeoutMs: 3_000, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } },
  topology: { queues: [q, qDown].map((name) => ({ name, durable: false })) },
  log: { level: 'info' },
})
const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
const ready = (what: string, timeoutMs = 30_000) =>
  waitFor(async () => (await readyzStatus(sc.ops)) === 200 && sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs, what })
await ready('the sidecar ready through the proxy')

t.test('row 5: an RST reconnects and is classified econnreset; mid-stream (proxy reset_peer) nothing confirmed is lost', async (t) => {
  // `ss -K` destroys the proxy's end of the sidecar's publish connection: the kernel sends
  // the sidecar a real RST, with no userspace relay in between.
  const idleBefore = await getStatus(sc.api)
  const localPort = Number(String((idleBefore.upstream as unknown as { localAddress: string }).localAddress).split(':').pop())
  t.ok(Number.isInteger(localPort) && localPort > 0, `the publish connection's local port is known (${localPort})`)
  const lostIdle = waitForEvent<[{ cause: string; idleMsBefore: number | null }]>(sc.sidecar.upstream, 'lost', { timeoutMs: 15_000, what: 'the RST from ss -K' })
  spawnSync('ss', ['-K', `( sport = :${proxy.port} and dport = :${localPort} )`], { stdio: 'ignore', timeout: 10_000 })
  const [idleRecord] = await lostIdle
  t.equal(idleRecord.cause, 'econnreset', 'the RST is classified econnreset')
  await waitFor(async () => (await getStatus(sc.api)).upstream.connects > idleBefore.upstream.connects && (await readyzStatus(sc.ops)) === 200, { timeoutMs: 20_000, what: 'the reconnect' })
  t.ok((await metric(sc.ops, 'amqp_sidecar_upstream_disconnects_total', 'connection="publish",cause="econnreset"')) >= 1, 'counted in upstream_disconnects_total{cause="econnreset"}')
  t.match((await getStatus(sc.api)).diagnosis, /last disconnect was econnreset/, 'the diagnosis names it')
  t.ok(sc.logs.some((l) => l.includes('lost the broker connection') && l.includes('"cause":"econnreset"')), 'logged with its cause')

  // Mid-stream: publishes in both directions while the RST lands.
  const before = (await getStatus(sc.api)).upstream.connects
  const stream = publishStream(t, target, { prefix: 'r5', deadlineMs: DEADLINE_MS })
  await stream.advance(20)
  const lost = waitForEvent<[{ cause: string; idleMsBefore: number | null }]>(sc.sidecar.upstream, 'lost', { timeoutMs: 15_000, what: 'the reset to be seen' })
  proxy.resetPeers('client')
  const [record] = await lost
  // Through the userspace proxy a reset has, in about one run in five, reached amqplib as a
  // bare end of stream ("Unexpected close") rather than ECONNRESET; the cause was not
  // pinned down (see docs/failure-modes.md). The handling is the same.
  t.ok(['econnreset', 'epipe', 'unexpected-close'].includes(record.cause), `classified as a reset (${record.cause})`)
  t.ok(record.idleMsBefore !== null && record.idleMsBefore < 1_000, `the link was busy, not idle, when it was reset (${record.idleMsBefore} ms idle)`)
  const resetAt = Date.now()
  await waitFor(async () => (await getStatus(sc.api)).upstream.connects > before && (await readyzStatus(sc.ops)) === 200, { timeoutMs: 20_000, what: 'the reconnect' })
  t.comment(`row 5: reconnected ${Date.now() - resetAt} ms after the RST (${record.cause})`)
  await stream.advance(20)
  const outcomes = await stream.stop()
  checkH(t, outcomes)
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  await checkR(t, amqp, target)
})

t.test('row 6: a silent blackhole (proxy holds every byte) is detected by heartbeat', async (t) => {
  const stream = publishStream(t, target, { prefix: 'r6', deadlineMs: DEADLINE_MS })
  await stream.advance(10)
  const lost = waitForEvent<[{ cause: string }]>(sc.sidecar.upstream, 'lost', { timeoutMs: 30_000, what: 'the blackhole to be noticed' })
  // A real blackhole passes nothing, not even the broker's own close: RabbitMQ also misses
  // our heartbeats and resets its side, which the proxy would otherwise relay at once.
  proxy.setSlowClose(60_000)
  proxy.setBlackhole(true)
  t.teardown(() => proxy.clear())
  const holeAt = Date.now()
  const [record] = await lost
  const detectMs = Date.now() - holeAt
  t.equal(record.cause, 'heartbeat-timeout', 'classified heartbeat-timeout')
  t.comment(`row 6: heartbeat ${HEARTBEAT_S} s, blackhole detected after ${detectMs} ms`)
  t.ok(detectMs <= 3 * HEARTBEAT_S * 1000 + 3_000, `detected within about 3 heartbeats (${detectMs} ms)`)
  // Reconnects into the hole time out at connectTimeoutMs: they must not hang either.
  await waitFor(async () => (await getStatus(sc.api)).upstream.lastConnectError !== null, { timeoutMs: 20_000, what: 'a connect attempt into the hole to fail' })
  await stream.advance(6)
  await proxy.clear()
  await ready('ready after the blackhole cleared')
  t.comment(`row 6: ready ${Date.now() - holeAt} ms after the blackhole started`)
  const outcomes = await stream.stop()
  checkH(t, outcomes)
  // Bytes held by the proxy flow on when it clears: such publishes (answered 504) may land ("recovered").
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  await checkR(t, amqp, target)
})

t.test(
  'row 6 (keepalive): a true silent blackhole (veth down in a network namespace) with heartbeat 0 is noticed by TCP keepalive',
  { skip: netnsAvailable() ?? false },
  async (t) => {
    // The proxy's blackhole above holds bytes in userspace, so the kernel still answers
    // keepalive probes. Here the packets themselves vanish: only keepalive can notice an
    // idle link, and only an idle one (unacked data is governed by TCP retransmission).
    const path = await startNetnsPath(t, { upstreamPort: sharedPort, upstreamHost: shared.hostname })
    const u = new URL(SHARED_BROKER_URL)
    u.hostname = path.host
    u.port = String(path.port)
    const qk = amqp.name('faults-keepalive')
    const ka = await startSidecar(t, {
      amqp: { urls: [u.toString()], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: false }, keepAliveDelayMs: 1_000, connectTimeoutMs: 3_000, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } },
      topology: { queues: [{ name: qk, durable: false }] },
    })
    const kaTarget = { api: ka.api, exchange: '', routingKey: qk, queue: qk }
    await waitFor(async () => (await readyzStatus(ka.ops)) === 200, { timeoutMs: 30_000, what: 'the sidecar ready through the namespace' })
    const before = await publishOnce(kaTarget, 'r6k-before', { deadlineMs: 5_000 })
    t.equal(before.status, 200)
    const lost = waitForEvent<[{ cause: string }]>(ka.sidecar.upstream, 'lost', { timeoutMs: 60_000, what: 'keepalive to notice the dead idle link' })
    path.down()
    const downAt = Date.now()
    const [record] = await lost
    const detectMs = Date.now() - downAt
    t.comment(`row 6 (keepalive): heartbeat 0, keepAliveDelayMs 1000: dead link noticed after ${detectMs} ms (${record.cause})`)
    t.equal(record.cause, 'etimedout', 'classified etimedout (keepalive probes unanswered)')
    path.up()
    await waitFor(async () => (await readyzStatus(ka.ops)) === 200, { timeoutMs: 30_000, what: 'ready after the link came back' })
    const outcomes = [before]
    checkH(t, outcomes)
    await checkLD(t, amqp, qk, outcomes)
    await checkR(t, amqp, kaTarget)
  },
)

t.test('row 20: a slow, sliced link (200 ms latency, 1-7 byte slices, 10 KB/s) causes no false heartbeat timeouts and no corruption', async (t) => {
  await ready('ready before the slow link')
  const before = await getStatus(sc.api)
  proxy.setLatency(200, 20)
  proxy.setSlicer(1, 7)
  proxy.setBandwidth(10_000)
  t.teardown(() => proxy.clear())
  const started = Date.now()
  // Binary bodies, so any reordering, loss or truncation of bytes shows.
  const sent = new Map<string, Buffer>()
  const outcomes: Outcome[] = []
  const worker = async (w: number) => {
    for (let i = 0; i < 6; i++) {
      const id = `r20-${w}-${i}`
      const body = randomBytes(1_000 + Math.floor(Math.random() * 1_000))
      sent.set(id, body)
      outcomes.push(await publishOnce(target, id, { deadlineMs: 20_000, body }))
    }
  }
  await Promise.all([worker(0), worker(1)])
  // Downstream too: messages put in directly, pulled through the sliced link (base64 bodies).
  const read = await readQueue(amqp, q)
  const down = new Map([0, 1].map((i) => [`r20-down-${i}`, randomBytes(1_500)] as const))
  const ch = await amqp.channel()
  for (const [id, body] of down) ch.sendToQueue(qDown, body, { messageId: id })
  const pulled = new Map<string, Buffer>()
  await waitFor(
    async () => {
      const r = await fetch(`${sc.api}/v1/queues/${qDown}/pull?max=10&waitMs=2000&encoding=base64`, { method: 'POST' })
      if (r.status === 200) {
        for (const m of (await r.json()) as Array<{ deliveryId: string; body: string; properties: { messageId: string } }>) {
          pulled.set(m.properties.messageId, Buffer.from(m.body, 'base64'))
          await fetch(`${sc.api}/v1/ack`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ deliveryId: m.deliveryId }) })
        }
      }
      return pulled.size >= down.size
    },
    { timeoutMs: 90_000, what: 'the messages pulled over the slow link' },
  )
  // Keep the slow link up for at least 4 heartbeat intervals in total.
  await waitFor(() => Date.now() - started >= 4 * HEARTBEAT_S * 1000, { timeoutMs: 60_000, intervalMs: 250, what: 'four heartbeat intervals on the slow link' })
  const after = await getStatus(sc.api)
  const elapsed = Date.now() - started
  await proxy.clear()

  t.comment(`row 20: ${sent.size} messages up and ${down.size} down over ${elapsed} ms of a 200 ms / 1-7 B / 10 KB/s link`)
  t.equal(after.upstream.connects, before.upstream.connects, `no reconnect during ${elapsed} ms on the slow link (publish)`)
  t.equal(after.consumeUpstream.connects, before.consumeUpstream.connects, 'no reconnect (consume)')
  t.same(after.upstream.disconnectsByCause, before.upstream.disconnectsByCause, 'no disconnect: no false heartbeat timeout')
  t.same(after.consumeUpstream.disconnectsByCause, before.consumeUpstream.disconnectsByCause, 'no disconnect on the consume connection')
  t.same(outcomes.filter((o) => o.status !== 200).map((o) => `${o.id} ${o.status} ${o.code}`), [], 'every publish over the slow link was confirmed')
  checkH(t, outcomes)
  await checkLD(t, amqp, q, outcomes)
  const corrupt = read.filter((m) => !sent.get(String(m.properties.messageId))?.equals(m.content)).map((m) => m.properties.messageId)
  t.same(corrupt, [], 'upstream: the broker holds byte-for-byte what the app sent')
  t.same([...down].filter(([id, body]) => !pulled.get(id)?.equals(body)).map(([id]) => id), [], 'downstream: the app pulled byte-for-byte what the broker held')
  await checkR(t, amqp, target)
})

t.test('row 7: haproxy with a 3 s idle timeout — heartbeat 1 s keeps it alive (zero reconnects); heartbeat 0 is cut and explained', async (t) => {
  const hap = await startHaproxy({ backendPort: sharedPort, backendHost: shared.hostname, timeoutMs: 3_000 })
  t.teardown(() => hap.stop())
  const q7 = amqp.name('faults-lb')
  const t7 = (api: string) => ({ api, exchange: '', routingKey: q7, queue: q7 })

  const alive = await startSidecar(t, {
    amqp: { urls: [via(hap.port)], heartbeatSeconds: 1, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } },
    topology: { queues: [{ name: q7, durable: false }] },
  })
  const cut = await startSidecar(t, {
    amqp: { urls: [via(hap.port)], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: false }, reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } },
    topology: { queues: [{ name: q7, durable: false }] },
  })
  await waitFor(async () => (await readyzStatus(alive.ops)) === 200 && (await readyzStatus(cut.ops)) === 200, { timeoutMs: 30_000, what: 'both sidecars ready behind haproxy' })
  t.ok(cut.logs.some((l) => l.includes('amqp.heartbeatSeconds is 0')), 'heartbeat 0 is warned about at start')
  const o1 = await publishOnce(t7(cut.api), 'r7-before', { deadlineMs: 5_000 })
  t.equal(o1.status, 200)

  // Idle for more than three proxy timeouts; the heartbeat-0 one is cut meanwhile.
  const idleFrom = Date.now()
  const lost = waitForEvent<[{ cause: string; idleMsBefore: number | null }]>(cut.sidecar.upstream, 'lost', { timeoutMs: 30_000, what: 'haproxy to cut the idle heartbeat-0 connection' })
  const [record] = await lost
  t.ok(['econnreset', 'unexpected-close', 'epipe'].includes(record.cause), `cut by the proxy (${record.cause})`)
  t.ok(record.idleMsBefore !== null && record.idleMsBefore >= 2_000 && record.idleMsBefore <= 6_000, `after about the proxy's 3 s idle timeout (${record.idleMsBefore} ms idle)`)
  t.comment(`row 7: heartbeat 0 cut after ${record.idleMsBefore} ms idle (${record.cause})`)
  await waitFor(
    async () => {
      const s = await getStatus(alive.api)
      if (s.upstream.connects !== 1 || s.consumeUpstream.connects !== 1) throw new Error(`the heartbeat-1 sidecar reconnected: ${JSON.stringify(s.upstream.disconnectsByCause)}`)
      return Date.now() - idleFrom >= 10_000
    },
    { timeoutMs: 30_000, intervalMs: 500, what: 'ten idle seconds behind haproxy' },
  )
  const s = await getStatus(alive.api)
  t.equal(s.upstream.connects, 1, 'heartbeat 1 s: zero reconnects across more than three idle timeouts (publish)')
  t.equal(s.consumeUpstream.connects, 1, 'heartbeat 1 s: zero reconnects (consume)')
  t.same(s.upstream.disconnectsByCause, {}, 'no disconnects at all')

  // The cut sidecar reconnected and explains; nothing confirmed is lost (row 7 L/R).
  const outcomes = [o1, await publishOnce(t7(cut.api), 'r7-after', { deadlineMs: 10_000 }), await publishOnce(t7(alive.api), 'r7-alive', { deadlineMs: 10_000 })]
  checkH(t, outcomes)
  t.same(outcomes.map((o) => o.status), [200, 200, 200], 'both sidecars publish after the idle period')
  await checkLD(t, amqp, q7, outcomes)
  const cs = await getStatus(cut.api)
  t.ok(cs.upstream.connects >= 2, `the heartbeat-0 sidecar reconnected (${cs.upstream.connects} connects)`)
  t.match(cs.diagnosis, /econnreset|unexpected-close|epipe|middlebox/i, 'the diagnosis names the cut')
  await checkR(t, amqp, t7(cut.api))
})

// Row 8 (NAT/conntrack eviction) runs with the kernel's NAT in network namespaces:
// test/idle-eviction-netns-reset.test.ts and test/idle-eviction-netns-drop.test.ts;
// its userspace twin (the fault proxy as a NAT) is test/idle-eviction-proxy.test.ts.

t.test('S: the URL password never appears unredacted', async (t) => {
  const bad = await fetch(`${sc.api}/v1/publish/no-such-exchange-${Date.now()}/x`, { method: 'POST', body: 'x' })
  await checkS(t, `:${shared.password || 'guest'}@`, { api: sc.api, ops: sc.ops, logs: () => sc.logs.join(''), extra: [await bad.text()] })
})
