/**
 * FAULTS.md rows 1, 2, 3, 4 and 21: the broker itself fails (forced close,
 * restart, crash, freeze, failover), on a private node this file owns (plus a
 * second node for failover). Each row runs a stream of publishes through the
 * fault and checks the invariants: L (drain the queue directly), D, H
 * (every request ends by its deadline with a documented status), S (no
 * password anywhere) and R (a new message round-trips afterwards).
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { brokerFor } from './fixtures/broker.js'
import { checkH, checkLD, checkR, checkS, getStatus, metric, publishOnce, publishStream, readQueue, readyzStatus } from './fixtures/faults.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const HEARTBEAT_S = 2
const DEADLINE_MS = 2_000
const MAX_BACKOFF_MS = 1_000

// Two nodes booted together (about 5 s of CPU each): A serves every row, B is the failover target of row 21.
const [broker, brokerB] = await Promise.all([brokerFor(t), brokerFor(t)])
t.teardown(() => broker.thaw())
const amqp = await directAmqp(t, broker.url)
const q = amqp.name('faults-broker')
const qConsume = amqp.name('faults-broker-consume')
const qRedeclare = amqp.name('faults-broker-redeclare')

const sc = await startSidecar(t, {
  amqp: { urls: [broker.url], heartbeatSeconds: HEARTBEAT_S, connectTimeoutMs: 3_000, reconnect: { initialDelayMs: 100, maxDelayMs: MAX_BACKOFF_MS } },
  topology: { queues: [q, qConsume, qRedeclare].map((name) => ({ name, durable: true })) },
  log: { level: 'info' },
})
const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
const ready = (what: string, timeoutMs = 60_000) =>
  waitFor(async () => (await readyzStatus(sc.ops)) === 200 && sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs, what })
await ready('the sidecar ready')
const logs = () => sc.logs.join('')

t.test('row 1: CONNECTION_FORCED (320) reconnects, re-declares the topology and re-subscribes', async (t) => {
  const ws = await wsClient(t, sc.api)
  ws.send({ op: 'subscribe', queue: qConsume, prefetch: 5 })
  await ws.next((f) => f.op === 'subscribed', 'subscribed')
  const before = (await getStatus(sc.api)).upstream.connects
  // Deleted behind the sidecar's back: only a re-declare on reconnect brings it back.
  await (await amqp.channel()).deleteQueue(qRedeclare)

  const stream = publishStream(t, target, { prefix: 'r1', deadlineMs: DEADLINE_MS })
  await stream.advance(10)
  const mark = ws.frames.length
  await broker.closeAllConnections('fault matrix row 1')
  await waitFor(async () => (await getStatus(sc.api)).upstream.connects > before, { timeoutMs: 30_000, what: 'the reconnect' })
  await stream.advance(10)
  const outcomes = await stream.stop()

  const s = await getStatus(sc.api)
  t.equal(s.upstream.lastDisconnect?.cause, 'connection-forced', 'classified connection-forced')
  t.equal(s.upstream.lastDisconnect?.code, 320)
  t.ok((await metric(sc.ops, 'amqp_sidecar_upstream_disconnects_total', 'connection="publish",cause="connection-forced"')) >= 1, 'counted in upstream_disconnects_total{cause}')
  t.ok(logs().includes('lost the broker connection'), 'the loss is logged')
  await t.resolves(async () => (await amqp.channel()).checkQueue(qRedeclare), 'the topology was re-declared on the new connection')

  checkH(t, outcomes)
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })

  // Re-subscribed without the client asking: a message published now reaches the WebSocket.
  await ws.next((f) => f.op === 'status' && f['upstream'] === 'connected', 'status: connected again', { from: mark })
  const sent = await publishOnce({ ...target, routingKey: qConsume }, 'r1-consume', { deadlineMs: 5_000 })
  t.equal(sent.status, 200, 'published to the consumed queue')
  const m = await ws.next((f) => f.op === 'message' && (f['properties'] as { messageId?: string }).messageId === 'r1-consume', 'a delivery on the re-subscribed consumer', { from: mark })
  ws.send({ op: 'ack', deliveryId: m['deliveryId'], id: 'a1' })
  t.equal((await ws.next((f) => f.op === 'result' && f['id'] === 'a1', 'the ack result'))['result'], 'acked', 'the new delivery can be acked')
  await ws.close()
  await amqp.drain(qConsume)
  await checkR(t, amqp, target)
})

t.test('row 2: broker restart (stop_app / start_app) backs off on ECONNREFUSED without a hot loop', async (t) => {
  const stream = publishStream(t, target, { prefix: 'r2', deadlineMs: DEADLINE_MS })
  await stream.advance(5)
  const failuresBefore = await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="econnrefused"')
  // Undone even if the row fails, so no later row finds the broker stopped.
  let appDown = true
  t.teardown(() => (appDown ? broker.startApp() : undefined))
  await broker.stopApp()
  const downAt = Date.now()
  await waitFor(async () => (await readyzStatus(sc.ops)) === 503, { timeoutMs: 15_000, what: 'readiness 503 while the broker is down' })
  // Observe the retry loop for a while: enough refused attempts to see the backoff.
  // Watch the retry loop for at least 3 s (a measurement window, not a synchronisation).
  await waitFor(async () => Date.now() - downAt >= 3_000 && (await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="econnrefused"')) - failuresBefore >= 3, {
    timeoutMs: 30_000,
    intervalMs: 250,
    what: 'refused reconnect attempts over 3 s',
  })
  await stream.advance(3) // requests during the outage end by their deadline
  const downMs = Date.now() - downAt
  const failures = (await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="econnrefused"')) - failuresBefore
  const s = await getStatus(sc.api)
  t.equal(s.upstream.lastConnectError?.cause, 'econnrefused', 'the connect error is classified econnrefused')
  t.match(s.diagnosis, /Not connected\. Last error \(econnrefused\)/, 'the diagnosis names it')
  // Full-jitter backoff capped at 1 s averages >= 0.5 s per attempt once widened; a hot loop would be thousands.
  const perSecond = failures / (downMs / 1000)
  t.ok(perSecond < 10, `no hot loop: ${failures} refused attempts in ${downMs} ms (${perSecond.toFixed(1)}/s)`)
  const delays = sc.logs
    .filter((l) => l.includes('could not connect to the broker') && l.includes('"connection":"publish"'))
    .map((l) => (JSON.parse(l) as { retryInMs: number }).retryInMs)
  t.ok(delays.every((d) => d >= 10 && d <= MAX_BACKOFF_MS), `every retry delay is within [10, ${MAX_BACKOFF_MS}] ms`)

  const upAt = Date.now()
  await broker.startApp()
  appDown = false
  await ready('ready after start_app')
  t.comment(`row 2: ready ${Date.now() - upAt} ms after start_app returned`)
  await stream.advance(5)
  const outcomes = await stream.stop()
  checkH(t, outcomes)
  t.ok(outcomes.some((o) => o.status === 504 && o.code === 'PUBLISH_OUTCOME_UNKNOWN'), 'publishes during the outage answered 504 at their deadline')
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  await checkR(t, amqp, target)
})

t.test('row 4: a frozen broker (SIGSTOP) is detected by heartbeat; pending publishes end by their deadline', async (t) => {
  const stream = publishStream(t, target, { prefix: 'r4', deadlineMs: DEADLINE_MS })
  await stream.advance(10)
  const lost = waitForEvent<[{ cause: string }]>(sc.sidecar.upstream, 'lost', { timeoutMs: 30_000, what: 'the frozen broker to be noticed' })
  broker.freeze()
  const frozenAt = Date.now()
  const [record] = await lost
  const detectMs = Date.now() - frozenAt
  t.equal(record.cause, 'heartbeat-timeout', 'classified heartbeat-timeout')
  t.comment(`row 4: heartbeat ${HEARTBEAT_S} s, detected after ${detectMs} ms`)
  // amqplib declares the peer dead after 2-3 silent intervals; + slack for a loaded box.
  t.ok(detectMs <= 3 * HEARTBEAT_S * 1000 + 3_000, `detected within about 3 heartbeats (${detectMs} ms)`)
  await stream.advance(6) // publishes while frozen: each must end by its deadline
  broker.thaw()
  await ready('ready after SIGCONT')
  const outcomes = await stream.stop()
  checkH(t, outcomes)
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  const s = await getStatus(sc.api)
  t.ok((s.upstream.disconnectsByCause['heartbeat-timeout'] ?? 0) >= 1, 'counted under heartbeat-timeout')
  await checkR(t, amqp, target)
})

t.test('rows 3 + 21: broker crash (kill -9) — unconfirmed publishes answer 504; a second URL takes over', async (t) => {
  // A second sidecar with both nodes: when A dies it must move to B (row 21),
  // while the first one (A only) waits for A to come back (row 3).
  const qF = amqp.name('faults-failover')
  const fo = await startSidecar(t, {
    amqp: { urls: [broker.url, brokerB.url], heartbeatSeconds: HEARTBEAT_S, connectTimeoutMs: 3_000, reconnect: { initialDelayMs: 100, maxDelayMs: MAX_BACKOFF_MS } },
    topology: { queues: [{ name: qF, durable: true }] },
  })
  await waitFor(async () => (await getStatus(fo.api)).upstream.url?.includes(`:${broker.port}/`) && (await readyzStatus(fo.ops)) === 200, {
    timeoutMs: 30_000,
    what: 'the failover sidecar on node A',
  })
  const foTarget = { api: fo.api, exchange: '', routingKey: qF, queue: qF }
  const stream = publishStream(t, target, { prefix: 'r3', deadlineMs: DEADLINE_MS })
  const foStream = publishStream(t, foTarget, { prefix: 'r21', deadlineMs: DEADLINE_MS })
  await stream.advance(10)
  await foStream.advance(10)

  let crashed = true
  t.teardown(() => (crashed ? broker.start() : undefined))
  await broker.kill9()
  const killedAt = Date.now()
  // Row 21: on B within the backoff cap (+ a connect and generous slack).
  await waitFor(async () => {
    const s = await getStatus(fo.api)
    return s.upstream.state === 'connected' && s.upstream.url?.includes(`:${brokerB.port}/`)
  }, { timeoutMs: 30_000, what: 'the failover sidecar on node B' })
  const failoverMs = Date.now() - killedAt
  t.comment(`row 21: connected to the second node ${failoverMs} ms after kill -9 of the first`)
  t.ok(failoverMs <= MAX_BACKOFF_MS + 3_000 + 5_000, `failover within the backoff cap (+ slack): ${failoverMs} ms`)
  const amqpB = await directAmqp(t, brokerB.url)
  await t.resolves(async () => (await amqpB.channel()).checkQueue(qF), 'the topology was declared on node B')
  await checkR(t, amqpB, foTarget, { what: 'row 21 on node B' })

  // Row 3: the A-only sidecar answers 504 until A is back.
  await stream.advance(6)
  const restartAt = Date.now()
  await broker.start()
  crashed = false
  await ready('ready after the crashed node restarted')
  t.comment(`row 3: ready ${Date.now() - restartAt} ms after the node was started again`)
  await stream.advance(5)
  const [outcomes, foOutcomes] = await Promise.all([stream.stop(), foStream.stop()])
  checkH(t, outcomes)
  checkH(t, foOutcomes)
  const failed = outcomes.filter((o) => o.status !== 200)
  t.ok(failed.length > 0, 'some publishes were not confirmed across the crash')
  t.same([...new Set(failed.map((o) => `${o.status} ${o.code}`))], ['504 PUBLISH_OUTCOME_UNKNOWN'], 'every unconfirmed publish answered 504 PUBLISH_OUTCOME_UNKNOWN')
  t.equal((await getStatus(sc.api)).upstream.lastDisconnect?.cause !== undefined, true, 'the disconnect was recorded')
  // Confirmed = persistent on a durable queue: it survives kill -9.
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3, timeoutMs: 30_000 })
  // Row 21 L: the failover sidecar's confirmed messages are on A (before) or B (after).
  // A classic queue on a node restarted after kill -9 can answer 404 ("home node ... is down") for
  // a moment after the node accepts connections (seen once in CI): wait for it, naming the error if it never comes.
  await waitFor(async () => (await readQueue(amqp, qF), true), { timeoutMs: 30_000, what: `${qF} readable on the restarted node A` })
  await checkLD(t, amqpB, qF, foOutcomes, { duplicateBound: 3 })
  await checkR(t, amqp, target, { what: 'row 3 after the restart' })
  await fo.stop()
})

t.test('S: no password in logs, status, readiness, metrics or errors after all of the above', async (t) => {
  // The private node's user is guest/guest: check the secret part of the URL, "guest@", never appears unredacted.
  const bad = await fetch(`${sc.api}/v1/publish/no-such-exchange/x`, { method: 'POST', body: 'x' })
  await checkS(t, ':guest@', { api: sc.api, ops: sc.ops, logs, extra: [await bad.text()] })
  t.match(JSON.stringify(await getStatus(sc.api)), /guest:\*\*\*@/, 'the status shows the URL redacted')
})
