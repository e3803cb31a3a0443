/**
 * TCP-awareness acceptance (issue 4, DESIGN.md section 5): the exact
 * reproduction of shared/seeds/000 (econnreset after idling past a proxy's
 * idle timeout). haproxy in `mode tcp` with `timeout client/server` of
 * TIMEOUT_MS and `option nolinger` (it closes with an RST) sits in front of a
 * private broker; the sidecar connects through it.
 *
 *   1. heartbeat 0, adaptation off: cut after every idle period; reconnects,
 *      loses nothing, and its diagnosis names the proxy's timeout (±20 %).
 *   2. heartbeat 0, adaptation on: after the diagnosis the next connection
 *      negotiates a heartbeat under the timeout and the cutting stops.
 *   3. heartbeat under the timeout: zero reconnects across several idle periods.
 *
 * Idle periods are real waiting (time is the fault), but every wait is
 * synchronised on what the sidecar reports (its disconnect count, its state),
 * with a deadline; "nothing happens for N idle periods" is watched by polling
 * and fails at the first disconnect.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { brokerFor } from './fixtures/broker.js'
import { startHaproxy } from './fixtures/haproxy.js'
import { startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { delay, waitFor } from './fixtures/wait.js'
import type { Upstream } from '../src/upstream/connection.js'

const TIMEOUT_MS = 3000
const TIMEOUT_S = TIMEOUT_MS / 1000
/** Several idle periods: how long "no more disconnects" is watched. */
const QUIET_WATCH_MS = 3 * TIMEOUT_MS + 1500
/** An idle cut must come within this after the link went quiet (timeout + reconnect + slack on a busy box). */
const CUT_DEADLINE_MS = 2 * TIMEOUT_MS + 5000

const broker = await brokerFor(t)
const lb = await startHaproxy({ backendPort: broker.port, timeoutMs: TIMEOUT_MS, nolinger: true })
t.teardown(() => lb.stop())
const lbUrl = `amqp://guest:guest@127.0.0.1:${lb.port}/%2F`
const amqp = await directAmqp(t, broker.url)

const disconnects = (up: Upstream): number => Object.values(up.status().disconnectsByCause).reduce((a, b) => a + (b ?? 0), 0)

const connected = (sc: RunningSidecar, what: string) =>
  waitFor(() => sc.sidecar.upstream.state === 'connected' && sc.sidecar.consumeUpstream.state === 'connected', {
    timeoutMs: 15_000,
    what: `${what}: both upstream connections connected`,
  })

/** Waits for the publish connection's next disconnect; resolves with its record. */
async function nextCut(sc: RunningSidecar, what: string) {
  const up = sc.sidecar.upstream
  const before = disconnects(up)
  await waitFor(() => disconnects(up) > before, { timeoutMs: CUT_DEADLINE_MS, what: `${what}: the proxy to cut the idle connection` })
  const rec = up.lastDisconnect
  if (!rec) throw new Error('a disconnect was counted but not recorded')
  return rec
}

/** Watches for `ms` (real time: the fault is idleness) and fails at the first disconnect on either connection. */
async function noDisconnectsFor(sc: RunningSidecar, ms: number, what: string): Promise<void> {
  const ups = [sc.sidecar.upstream, sc.sidecar.consumeUpstream]
  const before = ups.map(disconnects)
  const until = Date.now() + ms
  while (Date.now() < until) {
    ups.forEach((up, i) => {
      if (disconnects(up) !== before[i]) {
        throw new Error(`${what}: the ${up.role} connection was cut (${JSON.stringify(up.lastDisconnect)})`)
      }
    })
    await delay(100)
  }
}

async function publish(sc: RunningSidecar, queue: string, id: string): Promise<number> {
  const res = await fetch(`${sc.api}/v1/publish/amq.default/${queue}`, {
    method: 'POST',
    headers: { 'content-type': 'text/plain', 'x-message-id': id, 'x-timeout-ms': '10000' },
    body: id,
  })
  await res.arrayBuffer()
  return res.status
}

const status = async (sc: RunningSidecar) => (await (await fetch(`${sc.api}/v1/status`)).json()) as {
  diagnosis: string
  idleTimeoutDetected: { idleTimeoutSeconds: number; events: number } | null
  upstream: { heartbeatSeconds: number | null; requestedHeartbeatSeconds: number; reconnects: number; lastDisconnect: { cause: string; idleMsBefore: number | null } | null }
}

const within20 = (seconds: number) => seconds >= TIMEOUT_S * 0.8 && seconds <= TIMEOUT_S * 1.2

t.test('heartbeat 0, adaptation off: cut after each idle period, nothing lost, the timeout is named', async (t) => {
  const q = amqp.name('idle-off')
  const sc = await startSidecar(t, {
    amqp: { urls: [lbUrl], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: false } },
    topology: { queues: [{ name: q, durable: true }] },
  })
  t.ok(
    sc.logs.some((l) => l.includes('"level":40') && l.includes('heartbeatSeconds is 0')),
    'the "heartbeat is 0" warning is logged at start',
  )
  await connected(sc, 'start')
  const published: string[] = []
  const idles: number[] = []
  for (let i = 0; i < 4; i++) {
    const id = `idle-off-${i}`
    // Traffic, then silence: the proxy cuts the link TIMEOUT_MS after its last byte.
    t.equal(await publish(sc, q, id), 200, `${id} confirmed`)
    published.push(id)
    const rec = await nextCut(sc, `idle period ${i}`)
    t.ok(['econnreset', 'unexpected-close', 'epipe'].includes(rec.cause), `cut ${i} is classified as an idle cut (${rec.cause})`)
    if (rec.idleMsBefore !== null) idles.push(rec.idleMsBefore)
    await connected(sc, `after cut ${i}`)
  }
  t.comment(`idle before each cut (ms): ${idles.join(', ')}; haproxy timeout ${TIMEOUT_MS} ms`)
  t.equal(idles.length, 4, 'every cut recorded its idle time')
  t.ok(idles.every((ms) => within20(ms / 1000)), 'each idle time is the proxy timeout within ±20 %')

  const st = await status(sc)
  t.ok(st.idleTimeoutDetected, 'idleTimeoutDetected is set')
  const detected = st.idleTimeoutDetected?.idleTimeoutSeconds ?? -1
  t.comment(`detected idle timeout ${detected} s vs configured ${TIMEOUT_S} s; diagnosis: ${st.diagnosis}`)
  t.ok(within20(detected), `the detected timeout (${detected} s) is within ±20 % of ${TIMEOUT_S} s`)
  const named = /middlebox closes idle flows after ~(\d+(?:\.\d+)?) s/.exec(st.diagnosis)
  t.ok(named && within20(Number(named[1])), `the diagnosis names the middlebox idle timeout (~${named?.[1]} s)`)
  t.match(st.diagnosis, /heartbeat is 0 s/, 'and says the heartbeat is 0')
  t.equal(st.upstream.requestedHeartbeatSeconds, 0, 'adaptation off: the heartbeat stays 0')
  t.equal(st.upstream.heartbeatSeconds, 0, 'adaptation off: the live connection negotiated 0')
  t.ok(st.upstream.reconnects >= 4, `it reconnected after each cut (${st.upstream.reconnects})`)
  t.ok(
    sc.logs.some((l) => l.includes('a middlebox closes idle flows after ~') && l.includes('adaptive heartbeat is off')),
    'the diagnosis is logged with the advice',
  )
  const metrics = await (await fetch(`${sc.ops}/metrics`)).text()
  const m = /amqp_sidecar_upstream_idle_timeout_detected_seconds\{connection="publish"\} ([\d.]+)/.exec(metrics)
  t.ok(m && within20(Number(m[1])), `the metric reports the timeout (${m?.[1]})`)

  const got = await amqp.drainUntil(q, published.length)
  t.same(got.map((m) => m.properties.messageId).sort(), [...published].sort(), 'every publish answered 200 is in the queue: nothing lost')
})

t.test('heartbeat 0, adaptation on: the cutting stops after the diagnosis', async (t) => {
  const q = amqp.name('idle-adapt')
  const sc = await startSidecar(t, {
    amqp: { urls: [lbUrl], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: true, floorSeconds: 1 } },
    topology: { queues: [{ name: q, durable: true }] },
  })
  await connected(sc, 'start')
  // Cut after cut until the pattern is seen; then the next connection of each role asks for less than the timeout.
  const adapted = (up: Upstream) => {
    const hb = up.status().heartbeatSeconds
    return up.state === 'connected' && hb !== null && hb > 0
  }
  await waitFor(() => adapted(sc.sidecar.upstream) && adapted(sc.sidecar.consumeUpstream), {
    timeoutMs: 6 * CUT_DEADLINE_MS,
    what: 'both connections to reconnect with an adapted heartbeat',
  })
  const st = await status(sc)
  const detected = st.idleTimeoutDetected?.idleTimeoutSeconds ?? -1
  t.ok(within20(detected), `diagnosed ~${detected} s (configured ${TIMEOUT_S} s)`)
  const hb = st.upstream.heartbeatSeconds ?? 0
  t.ok(hb > 0 && hb < TIMEOUT_S, `the new connection negotiated heartbeat ${hb} s, under the ${TIMEOUT_S} s timeout`)
  t.ok(sc.logs.some((l) => l.includes('lowering the heartbeat from 0 s to')), 'the adaptation is logged')
  const cutsBefore = disconnects(sc.sidecar.upstream)
  t.ok(cutsBefore >= 3, `it took the cuts to learn (${cutsBefore})`)
  await noDisconnectsFor(sc, QUIET_WATCH_MS, 'adapted heartbeat')
  t.pass(`no disconnect on either connection across ${QUIET_WATCH_MS} ms of idleness (${(QUIET_WATCH_MS / TIMEOUT_MS).toFixed(1)} proxy timeouts)`)
  t.equal(await publish(sc, q, 'after-adapt'), 200, 'a publish after the quiet period is confirmed')
  const got = await amqp.drainUntil(q, 1)
  t.same(got.map((m) => m.properties.messageId), ['after-adapt'])
})

t.test('a heartbeat under the timeout: zero reconnects across several idle periods', async (t) => {
  const sc = await startSidecar(t, { amqp: { urls: [lbUrl], heartbeatSeconds: 1 } })
  await connected(sc, 'start')
  t.notOk(sc.logs.some((l) => l.includes('heartbeatSeconds is 0')), 'no heartbeat-0 warning with a heartbeat')
  await noDisconnectsFor(sc, QUIET_WATCH_MS, 'heartbeat 1 s')
  for (const up of [sc.sidecar.upstream, sc.sidecar.consumeUpstream]) {
    const s = up.status()
    t.equal(s.reconnects, 0, `${up.role}: zero reconnects`)
    t.same(s.disconnectsByCause, {}, `${up.role}: no disconnects`)
    t.equal(s.heartbeatSeconds, 1, `${up.role}: heartbeat 1 s negotiated`)
  }
  const st = await status(sc)
  t.equal(st.idleTimeoutDetected, null, 'nothing to diagnose')
})
