/**
 * FAULTS.md row 8 for real, silent variant (issue 11 item 3): the router's
 * NAT forgets an idle flow after NAT_TIMEOUT_S and DROPS the next packet of
 * it, without a word. With heartbeat 0 only TCP keepalive can find that: its
 * first probe leaves KEEPALIVE_MS after the last byte (after the eviction),
 * is dropped, and the socket fails with ETIMEDOUT some probes later. The
 * idle period that met the cut is therefore KEEPALIVE_MS (an upper bound);
 * an idle period of SURVIVE_MS the flow survived is the lower bound.
 *
 * In the first test the app publishes only right after each (re)connect, so
 * keepalive is what finds each cut. The next two publish INTO the evicted
 * flow after an idle spell, adaptation off: TCP would retransmit that publish
 * into the dark until its deadline (504, the last test, with the check off);
 * with amqp.unansweredWriteMs the sidecar sees no byte come back, replaces
 * the connection and re-sends, and the app gets 200.
 *
 * Invariants L, D, H, S, R (FAULTS.md), plus: the diagnosis names the timeout
 * within the bracket the idle periods allow, the heartbeat adapts, the cuts
 * stop. Measured: the time from the third silent cut to a connection whose
 * heartbeat stops them.
 */
import t from 'tap'
import { checkH, checkLD, checkR, checkS, publishOnce, type Outcome } from './fixtures/faults.js'
import { natAvailable } from './fixtures/netns-nat.js'
import { cuts, logged, logTime, NAT_TIMEOUT_S, nextCut, row8, row8Sidecar, status } from './fixtures/row8.js'
import { delay, waitFor } from './fixtures/wait.js'

const NAT_MS = NAT_TIMEOUT_S * 1000
/** Above the NAT timeout, so the first probe meets the eviction. */
const KEEPALIVE_MS = 6000
const SURVIVE_MS = 2500
const DEADLINE_MS = 10_000
const RESOLUTION_MS = 400
const CYCLES = 3
/** Keepalive gives up after its probes (Node: 10, 1 s apart): delay + ~10 s, plus slack for a loaded box. */
const CUT_DEADLINE_MS = KEEPALIVE_MS + 10_000 + 30_000

const skip = natAvailable()
if (skip) {
  t.plan(0, skip)
} else {
  const env = await row8(t, 'drop')

  t.test('silent DROP, heartbeat 0: keepalive finds each cut; diagnosed, the heartbeat adapts, the cuts stop', async (t) => {
    const q = env.amqp.name('row8-drop')
    const sc = await row8Sidecar(t, env, { heartbeatSeconds: 0, keepAliveDelayMs: KEEPALIVE_MS, adaptiveHeartbeat: { enabled: true, floorSeconds: 1 } }, q)
    const target = { api: sc.api, exchange: '', routingKey: q }
    const outcomes: Outcome[] = []
    const survived: number[] = []
    await waitFor(async () => (await status(sc)).upstream.state === 'connected', { timeoutMs: 30_000, intervalMs: 200, what: 'the publish connection' })
    for (let i = 0; i < CYCLES; i++) {
      const before = cuts((await status(sc)).upstream)
      const first = await publishOnce(target, `c${i}-a`, { deadlineMs: DEADLINE_MS })
      await delay(SURVIVE_MS)
      survived.push(Date.now() - (first.at + first.ms))
      const second = await publishOnce(target, `c${i}-b`, { deadlineMs: DEADLINE_MS })
      outcomes.push(first, second)
      t.same([first.status, second.status], [200, 200], `cycle ${i}: publishes before and after ${SURVIVE_MS} ms idle go through`)
      // Now silence: the NAT forgets the flow at NAT_MS, the first keepalive probe at KEEPALIVE_MS is dropped.
      const st = await nextCut(sc, before, CUT_DEADLINE_MS, `cut ${i}: keepalive to find the silent eviction`)
      const d = st.upstream.lastDisconnect
      t.equal(d?.cause, 'etimedout', `cut ${i}: found by keepalive (etimedout)`)
      t.equal(d?.idleMsBefore, KEEPALIVE_MS, `cut ${i}: the idle period that met the cut is the probe delay`)
      t.comment(`cut ${i}: ${JSON.stringify(d)}`)
    }
    const st = await waitFor(
      async () => {
        const s = await status(sc)
        return s.upstream.state === 'connected' && (s.upstream.heartbeatSeconds ?? 0) > 0 ? s : undefined
      },
      { timeoutMs: 30_000, intervalMs: 200, what: 'a connection with an adapted heartbeat' },
    )
    const p = st.idleTimeoutDetected
    t.comment(`detected ${JSON.stringify(p)}; ${st.diagnosis}`)
    t.equal(p?.kind, 'silent', 'a pattern of silent cuts')
    t.ok(p && p.idleTimeoutSeconds * 1000 >= NAT_MS - RESOLUTION_MS && p.idleTimeoutSeconds * 1000 <= KEEPALIVE_MS, `the named timeout (${p?.idleTimeoutSeconds} s) lies in the bracket (${NAT_MS}..${KEEPALIVE_MS} ms)`)
    const maxSurvived = Math.max(...survived)
    t.ok(p?.atLeastSeconds != null && p.atLeastSeconds * 1000 >= maxSurvived - RESOLUTION_MS && p.atLeastSeconds * 1000 < NAT_MS, `the lower bound (${p?.atLeastSeconds} s) is the idle period that survived (${maxSurvived} ms)`)
    t.match(st.diagnosis, /middlebox closes idle flows after ~[\d.]+ s/, 'the diagnosis names it')
    const hb = st.upstream.heartbeatSeconds ?? 0
    t.ok(hb > 0 && hb < NAT_TIMEOUT_S, `the next connection's heartbeat (${hb} s) is below the NAT timeout`)
    const third = logged(sc, 'lost the broker connection')[CYCLES - 1]
    const adapted = logged(sc, 'connected to the broker').find((l) => Number(l.heartbeatSeconds) > 0)
    if (third && adapted) t.comment(`MEASURED: third silent cut -> connection with heartbeat ${adapted.heartbeatSeconds} s: ${logTime(adapted) - logTime(third)} ms`)

    // The cuts stop: longer than keepalive + its probes would need, with a publish after each idle period.
    const cutsBefore = cuts(st.upstream)
    for (let i = 0; i < 2; i++) {
      await delay(KEEPALIVE_MS + 1000)
      const o = await publishOnce(target, `quiet-${i}`, { deadlineMs: DEADLINE_MS })
      outcomes.push(o)
      t.equal(o.status, 200, `the cuts stop: a publish after ${KEEPALIVE_MS + 1000} ms of app idleness is confirmed`)
    }
    t.equal(cuts((await status(sc)).upstream), cutsBefore, 'no more cuts of the publish connection')
    checkH(t, outcomes)
    await checkLD(t, env.amqp, q, outcomes, { duplicateBound: 0 })
    await checkR(t, env.amqp, { api: sc.api, exchange: '', routingKey: q, queue: q })
    await checkS(t, env.password, { api: sc.api, ops: sc.ops, logs: sc.output })
  })

  /**
   * Publish right after connecting, stay idle past the NAT timeout, publish again: the
   * second publish goes into the evicted flow, whose packets the router drops.
   */
  const afterEviction = async (sc: Awaited<ReturnType<typeof row8Sidecar>>, q: string, i: number) => {
    const target = { api: sc.api, exchange: '', routingKey: q }
    await waitFor(async () => (await status(sc)).upstream.state === 'connected', { timeoutMs: 30_000, intervalMs: 200, what: 'the publish connection' })
    const first = await publishOnce(target, `e${i}-a`, { deadlineMs: DEADLINE_MS })
    await delay(KEEPALIVE_MS + 500)
    const second = await publishOnce(target, `e${i}-b`, { deadlineMs: DEADLINE_MS })
    return { first, second }
  }

  t.test('silent DROP, heartbeat 0, adaptation off: a publish into the evicted flow is answered 200 (no byte back, so reconnect and re-send)', async (t) => {
    const q = env.amqp.name('row8-drop-off')
    // Keepalive far away, so only the unanswered publish can find the eviction.
    const sc = await row8Sidecar(t, env, { heartbeatSeconds: 0, keepAliveDelayMs: 120_000, unansweredWriteMs: 2000, adaptiveHeartbeat: { enabled: false } }, q)
    const outcomes: Outcome[] = []
    for (let i = 0; i < 2; i++) {
      const before = cuts((await status(sc)).upstream)
      const { first, second } = await afterEviction(sc, q, i)
      outcomes.push(first, second)
      t.same(
        [first.status, second.status],
        [200, 200],
        `round ${i}: the publish after ${KEEPALIVE_MS + 500} ms idle (NAT ${NAT_MS} ms) is confirmed, in ${second.ms} ms (${second.code ?? ''})`,
      )
      const st = await status(sc)
      t.equal(cuts(st.upstream), before + 1, `round ${i}: the dead flow was replaced once`)
      t.equal(st.upstream.lastDisconnect?.cause, 'unanswered-write', `round ${i}: found by the unanswered publish`)
      t.ok((st.upstream.lastDisconnect?.idleMsBefore ?? 0) >= NAT_MS, `round ${i}: the idle period that met the cut (${st.upstream.lastDisconnect?.idleMsBefore} ms) is past the NAT timeout`)
    }
    t.equal((await status(sc)).upstream.requestedHeartbeatSeconds, 0, 'adaptation off: the heartbeat stays 0')
    checkH(t, outcomes)
    await checkLD(t, env.amqp, q, outcomes, { duplicateBound: 2 })
    await checkR(t, env.amqp, { api: sc.api, exchange: '', routingKey: q, queue: q })
    await checkS(t, env.password, { api: sc.api, ops: sc.ops, logs: sc.output })
  })

  t.test('the same with amqp.unansweredWriteMs 0 (the behaviour before it): the publish ends by its deadline with 504', async (t) => {
    const q = env.amqp.name('row8-drop-off0')
    const sc = await row8Sidecar(t, env, { heartbeatSeconds: 0, keepAliveDelayMs: 120_000, unansweredWriteMs: 0, adaptiveHeartbeat: { enabled: false } }, q)
    const { first, second } = await afterEviction(sc, q, 0)
    t.same([first.status, second.status], [200, 504], 'without the check, TCP retransmits into the dark until the deadline')
    checkH(t, [first, second])
  })
}
