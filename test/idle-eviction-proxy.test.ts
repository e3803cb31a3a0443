/**
 * Row 8 in userspace (issue 11 item 4): the fault proxy plays a NAT that
 * forgets a flow after EVICT_MS of idleness, silently, and answers the next
 * byte with an RST. Where network namespaces are not allowed this is the
 * middlebox the idle-time measurement and the adaptive heartbeat are proven
 * against (test/idle-eviction-netns.test.ts is the kernel one).
 *
 * The app publishes with heartbeat 0 and idles between publishes: a short
 * idle period (SURVIVE_MS) the flow survives, then a long one (CUT_IDLE_MS)
 * after which the publish meets the RST. Idle periods are real waiting (time
 * is the fault); everything else waits on what the sidecar reports.
 */
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { checkH, publishOnce, type Outcome } from './fixtures/faults.js'
import { SHARED_BROKER_URL, startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { delay, waitFor } from './fixtures/wait.js'
import type { Upstream } from '../src/upstream/connection.js'

const EVICT_MS = 2000
const SURVIVE_MS = 800
const CUT_IDLE_MS = 3200
/** The meter samples every 100 ms; a loaded box adds a little. */
const RESOLUTION_MS = 300
const DEADLINE_MS = 10_000

const broker = new URL(SHARED_BROKER_URL)
const amqp = await directAmqp(t, SHARED_BROKER_URL)

async function evictingProxy(t: Test) {
  const proxy = await startFaultProxy({ upstreamHost: broker.hostname, upstreamPort: Number(broker.port || 5672) })
  t.teardown(() => proxy.close())
  proxy.setIdleEviction(EVICT_MS)
  const url = new URL(SHARED_BROKER_URL)
  url.hostname = '127.0.0.1'
  url.port = String(proxy.port)
  return { proxy, url: url.toString() }
}

const disconnects = (up: Upstream): number => Object.values(up.status().disconnectsByCause).reduce((a, b) => a + (b ?? 0), 0)

const connected = (sc: RunningSidecar, what: string) =>
  waitFor(() => sc.sidecar.upstream.state === 'connected', { timeoutMs: 20_000, what: `${what}: the publish connection connected` })

interface Cycle {
  survived: Outcome
  afterIdle: Outcome
}

/** A publish, a short idle period, a publish (it survives), a long one, a publish (it meets the eviction). */
async function cycle(sc: RunningSidecar, q: string, i: number): Promise<Cycle & { survivedIdleMs: number; cutIdleMs: number }> {
  const target = { api: sc.api, exchange: '', routingKey: q }
  const first = await publishOnce(target, `c${i}-a`, { deadlineMs: DEADLINE_MS })
  let last = first.at + first.ms
  await delay(SURVIVE_MS)
  const survivedIdleMs = Date.now() - last
  const survived = await publishOnce(target, `c${i}-b`, { deadlineMs: DEADLINE_MS })
  last = survived.at + survived.ms
  await delay(CUT_IDLE_MS)
  const cutIdleMs = Date.now() - last
  const afterIdle = await publishOnce(target, `c${i}-c`, { deadlineMs: DEADLINE_MS })
  return { survived, afterIdle, survivedIdleMs, cutIdleMs }
}

const statusOf = async (sc: RunningSidecar) =>
  (await (await fetch(`${sc.api}/v1/status`)).json()) as {
    diagnosis: string
    idleTimeoutDetected: { idleTimeoutSeconds: number; atLeastSeconds: number | null; atMostSeconds: number; kind: string; events: number } | null
    upstream: { heartbeatSeconds: number | null; lastDisconnect: { cause: string; idleMsBefore: number | null } | null }
  }

t.test('the proxy evicts an idle flow silently and RSTs the next byte', async (t) => {
  const { proxy, url } = await evictingProxy(t)
  const q = amqp.name('evict-plain')
  const sc = await startSidecar(t, {
    amqp: { urls: [url], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: false } },
    topology: { queues: [{ name: q, durable: false }] },
  })
  await connected(sc, 'start')
  const up = sc.sidecar.upstream
  const before = disconnects(up)
  const c = await cycle(sc, q, 0)
  t.equal(c.survived.status, 200, `a publish after ${c.survivedIdleMs} ms idle (under ${EVICT_MS}) goes through`)
  await waitFor(() => disconnects(up) > before, { timeoutMs: DEADLINE_MS, what: 'the publish after the long idle period to meet the RST' })
  const rec = up.lastDisconnect
  t.equal(rec?.cause, 'econnreset', 'the eviction is met as an RST')
  t.ok(proxy.evictions >= 1, `the proxy evicted (${proxy.evictions})`)
  t.comment(`idle before the cut: sidecar ${rec?.idleMsBefore} ms, test ${c.cutIdleMs} ms`)
  t.ok((rec?.idleMsBefore ?? 0) >= EVICT_MS - RESOLUTION_MS, `the idle time before the cut is the idle period (${rec?.idleMsBefore} ms), not the ~0 ms after the write`)
  checkH(t, [c.survived, c.afterIdle])
})

t.test('heartbeat 0, adaptation on: the timeout is bracketed, the heartbeat adapts, the cuts stop', async (t) => {
  const { proxy, url } = await evictingProxy(t)
  const q = amqp.name('evict-adapt')
  const sc = await startSidecar(t, {
    amqp: { urls: [url], heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: true, floorSeconds: 1 } },
    topology: { queues: [{ name: q, durable: false }] },
  })
  await connected(sc, 'start')
  const up = sc.sidecar.upstream
  const outcomes: Outcome[] = []
  const cycles: Array<{ survivedIdleMs: number; cutIdleMs: number }> = []
  const cutTimes: number[] = []
  for (let i = 0; i < 3; i++) {
    const before = disconnects(up)
    const c = await cycle(sc, q, i)
    outcomes.push(c.survived, c.afterIdle)
    cycles.push(c)
    await waitFor(() => disconnects(up) > before, { timeoutMs: DEADLINE_MS, what: `cut ${i}` })
    cutTimes.push(Date.now())
    await connected(sc, `after cut ${i}`)
  }
  const adaptedAt = await waitFor(
    () => {
      const hb = up.status().heartbeatSeconds
      return up.state === 'connected' && hb !== null && hb > 0 ? Date.now() : undefined
    },
    { timeoutMs: 30_000, what: 'a connection with an adapted heartbeat' },
  )
  const st = await statusOf(sc)
  const p = st.idleTimeoutDetected
  t.ok(p, 'the pattern is detected after three cuts')
  const minCut = Math.min(...cycles.map((c) => c.cutIdleMs))
  const maxSurvived = Math.max(...cycles.map((c) => c.survivedIdleMs))
  t.comment(`test: survived up to ${maxSurvived} ms, cut after ${minCut} ms; detected ${JSON.stringify(p)}; ${st.diagnosis}`)
  t.ok(p && p.idleTimeoutSeconds * 1000 >= EVICT_MS - RESOLUTION_MS && p.idleTimeoutSeconds * 1000 <= minCut + RESOLUTION_MS, `the named timeout (${p?.idleTimeoutSeconds} s) is within the bracket the idle periods allow (${EVICT_MS} .. ${minCut} ms)`)
  t.ok(p?.atLeastSeconds !== null && (p?.atLeastSeconds ?? 0) * 1000 >= maxSurvived / 2 && (p?.atLeastSeconds ?? Infinity) * 1000 < EVICT_MS, `the lower bound (${p?.atLeastSeconds} s) comes from the idle periods that survived`)
  t.ok((p?.idleTimeoutSeconds ?? 0) > (p?.atLeastSeconds ?? Infinity), 'never a value below an idle period that survived')
  t.match(st.diagnosis, /middlebox closes idle flows after ~[\d.]+ s/, 'the diagnosis names it')
  const hb = st.upstream.heartbeatSeconds ?? 0
  t.ok(hb > 0 && hb * 1000 < EVICT_MS, `the new connection's heartbeat (${hb} s) is under the eviction timeout`)
  t.comment(`from the third cut to an adapted connection: ${adaptedAt - (cutTimes[2] ?? 0)} ms`)

  // The cuts stop: idle periods well past the eviction timeout, then publishes, with no disconnect.
  const cutsBefore = disconnects(up)
  const evictionsBefore = proxy.evictions
  for (let i = 0; i < 2; i++) {
    await delay(CUT_IDLE_MS)
    const o = await publishOnce({ api: sc.api, exchange: '', routingKey: q }, `quiet-${i}`, { deadlineMs: DEADLINE_MS })
    outcomes.push(o)
    t.equal(o.status, 200, `a publish after ${CUT_IDLE_MS} ms of app idleness is confirmed`)
  }
  t.equal(disconnects(up), cutsBefore, 'no more cuts on the publish connection')
  t.equal(proxy.evictions, evictionsBefore, 'the proxy evicted nothing more: the heartbeat keeps the flows busy')
  checkH(t, outcomes)
})
