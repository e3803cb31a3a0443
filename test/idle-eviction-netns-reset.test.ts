/**
 * FAULTS.md row 8 for real, RST variant (issue 11 item 3): a kernel NAT in a
 * router namespace forgets an idle flow after NAT_TIMEOUT_S, silently; with
 * nf_conntrack_tcp_loose=0 the next packet is INVALID and answered with an
 * RST. The broker runs in the server namespace, the sidecar (a child process)
 * in the client namespace; only the NAT carries the AMQP flow.
 *
 * The app publishes with heartbeat 0 and idles between publishes: an idle
 * period the flow survives (SURVIVE_MS), then one it does not (CUT_IDLE_MS),
 * then a publish that meets the RST. Idle periods are real waiting (time is
 * the fault); every other step waits on what the sidecar reports.
 *
 * Invariants L, D, H, S, R (FAULTS.md), plus: the diagnosis names the timeout
 * within the bracket the idle periods allow, the heartbeat adapts, the cuts
 * stop; with adaptation off every publish after an idle period still answers
 * 200 (re-sent on the next connection within its deadline).
 */
import t, { type Test } from 'tap'
import { checkH, checkLD, checkR, checkS, publishOnce, type Outcome } from './fixtures/faults.js'
import { natAvailable } from './fixtures/netns-nat.js'
import { cuts, logged, logTime, NAT_TIMEOUT_S, nextCut, row8, row8Sidecar, status, type StatusView } from './fixtures/row8.js'
import type { ChildSidecar } from './fixtures/child-sidecar.js'
import { delay, waitFor } from './fixtures/wait.js'

const NAT_MS = NAT_TIMEOUT_S * 1000
const SURVIVE_MS = 2500
const CUT_IDLE_MS = 6500
const DEADLINE_MS = 10_000
/** The idle meter samples every 100 ms, conntrack expires on the next lookup; a loaded box adds a little. */
const RESOLUTION_MS = 400
const CYCLES = 3

const skip = natAvailable()
if (skip) {
  t.plan(0, skip)
} else {
  const env = await row8(t, 'reset')

  /** Publish, idle SURVIVE_MS, publish, idle CUT_IDLE_MS, publish: the last one meets the RST. */
  const cycle = async (sc: ChildSidecar, q: string, i: number) => {
    const target = { api: sc.api, exchange: '', routingKey: q }
    const first = await publishOnce(target, `c${i}-a`, { deadlineMs: DEADLINE_MS })
    await delay(SURVIVE_MS)
    const survivedIdleMs = Date.now() - (first.at + first.ms)
    const survived = await publishOnce(target, `c${i}-b`, { deadlineMs: DEADLINE_MS })
    await delay(CUT_IDLE_MS)
    const cutIdleMs = Date.now() - (survived.at + survived.ms)
    const afterIdle = await publishOnce(target, `c${i}-c`, { deadlineMs: DEADLINE_MS })
    return { outcomes: [first, survived, afterIdle], survived, afterIdle, survivedIdleMs, cutIdleMs }
  }

  const connected = (sc: ChildSidecar, what: string) =>
    waitFor(async () => (await status(sc)).upstream.state === 'connected', { timeoutMs: 30_000, intervalMs: 200, what: `${what}: the publish connection` })

  /** Runs CYCLES idle cycles, each ending in a cut of the publish connection. */
  const cycles = async (t: Test, sc: ChildSidecar, q: string) => {
    const out: Array<Awaited<ReturnType<typeof cycle>> & { after: StatusView }> = []
    for (let i = 0; i < CYCLES; i++) {
      const before = cuts((await status(sc)).upstream)
      const c = await cycle(sc, q, i)
      const after = await nextCut(sc, before, DEADLINE_MS + 50_000, `cut ${i}: the publish after ${CUT_IDLE_MS} ms idle to meet the RST`)
      t.equal(after.upstream.lastDisconnect?.cause, 'econnreset', `cut ${i}: the eviction is met as an RST (econnreset)`)
      t.comment(`cut ${i}: idle before it ${after.upstream.lastDisconnect?.idleMsBefore} ms (test: ${c.cutIdleMs}), survived ${after.upstream.lastDisconnect?.longestSurvivedIdleMs} ms (test: ${c.survivedIdleMs}); publishes ${c.outcomes.map((o) => o.status).join(',')}`)
      out.push({ ...c, after })
    }
    return out
  }

  /** The named timeout and its bracket agree with the NAT and with the idle periods the test made. */
  const checkBracket = (t: Test, st: StatusView, made: Array<{ survivedIdleMs: number; cutIdleMs: number }>) => {
    const p = st.idleTimeoutDetected
    t.ok(p, `the pattern is detected: ${st.diagnosis}`)
    if (!p) return
    const minCut = Math.min(...made.map((c) => c.cutIdleMs))
    const maxSurvived = Math.max(...made.map((c) => c.survivedIdleMs))
    t.comment(`detected ${JSON.stringify(p)}; the test made idle periods of ${maxSurvived} ms (survived) and ${minCut} ms (cut); NAT timeout ${NAT_MS} ms`)
    t.ok(p.idleTimeoutSeconds * 1000 >= NAT_MS - RESOLUTION_MS && p.idleTimeoutSeconds * 1000 <= minCut + RESOLUTION_MS, `the named timeout (${p.idleTimeoutSeconds} s) lies in the bracket the idle periods allow (${NAT_MS}..${minCut} ms)`)
    t.ok(p.atLeastSeconds !== null && p.atLeastSeconds * 1000 >= maxSurvived - RESOLUTION_MS && p.atLeastSeconds * 1000 < NAT_MS, `the lower bound (${p.atLeastSeconds} s) is the idle period that survived`)
    t.ok(p.idleTimeoutSeconds > (p.atLeastSeconds ?? Infinity), 'never a value below an idle period that survived')
    t.match(st.diagnosis, new RegExp(`middlebox closes idle flows after ~${p.idleTimeoutSeconds} s`), 'the diagnosis names it')
  }

  t.test('RST on the next packet, heartbeat 0, adaptation on: diagnosed, the heartbeat adapts, the cuts stop', async (t) => {
    const q = env.amqp.name('row8-rst')
    const sc = await row8Sidecar(t, env, { heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: true, floorSeconds: 1 } }, q)
    await connected(sc, 'start')
    const made = await cycles(t, sc, q)
    const outcomes: Outcome[] = made.flatMap((c) => c.outcomes)
    t.same(made.map((c) => c.survived.status), [200, 200, 200], `a publish after ${SURVIVE_MS} ms idle (under the NAT timeout) goes through`)
    const st = await waitFor(
      async () => {
        const s = await status(sc)
        return s.upstream.state === 'connected' && (s.upstream.heartbeatSeconds ?? 0) > 0 ? s : undefined
      },
      { timeoutMs: 30_000, intervalMs: 200, what: 'a connection with an adapted heartbeat' },
    )
    checkBracket(t, st, made)
    const hb = st.upstream.heartbeatSeconds ?? 0
    t.ok(hb > 0 && hb < NAT_TIMEOUT_S, `the next connection's heartbeat (${hb} s) is below the NAT timeout`)
    const lost = logged(sc, 'lost the broker connection')
    const adapted = logged(sc, 'connected to the broker').find((l) => Number(l.heartbeatSeconds) > 0)
    const third = lost[CYCLES - 1]
    if (third && adapted) t.comment(`MEASURED: third cut -> connection with heartbeat ${adapted.heartbeatSeconds} s: ${logTime(adapted) - logTime(third)} ms`)

    const cutsBefore = cuts(st.upstream)
    for (let i = 0; i < 2; i++) {
      await delay(CUT_IDLE_MS)
      const o = await publishOnce({ api: sc.api, exchange: '', routingKey: q }, `quiet-${i}`, { deadlineMs: DEADLINE_MS })
      outcomes.push(o)
      t.equal(o.status, 200, `the cuts stop: a publish after ${CUT_IDLE_MS} ms of app idleness is confirmed`)
    }
    t.equal(cuts((await status(sc)).upstream), cutsBefore, 'no more cuts of the publish connection')
    t.ok(env.nat.trackedFlows(env.broker.port) >= 1, 'the router still tracks the flow: the heartbeat keeps it alive')
    checkH(t, outcomes)
    await checkLD(t, env.amqp, q, outcomes, { duplicateBound: CYCLES })
    await checkR(t, env.amqp, { api: sc.api, exchange: '', routingKey: q, queue: q })
    await checkS(t, env.password, { api: sc.api, ops: sc.ops, logs: sc.output })
  })

  t.test('RST on the next packet, heartbeat 0, adaptation off: diagnosed, heartbeat kept, nothing lost', async (t) => {
    const q = env.amqp.name('row8-rst-off')
    const sc = await row8Sidecar(t, env, { heartbeatSeconds: 0, adaptiveHeartbeat: { enabled: false } }, q)
    await connected(sc, 'start')
    const made = await cycles(t, sc, q)
    const outcomes: Outcome[] = made.flatMap((c) => c.outcomes)
    const st = await status(sc)
    checkBracket(t, st, made)
    t.equal(st.upstream.requestedHeartbeatSeconds, 0, 'adaptation off: the heartbeat stays 0')
    t.match(st.diagnosis, /heartbeat is 0 s/, 'and the diagnosis says so')
    t.ok(sc.lines.some((l) => typeof l.msg === 'string' && l.msg.includes('adaptive heartbeat is off')), 'the advice is logged')
    // The re-send (DESIGN.md section 2): the publish that met the RST is re-sent on the next connection.
    t.same(
      made.map((c) => c.afterIdle.status),
      made.map(() => 200),
      `every publish after an idle period still answers 200, re-sent on the next connection (got ${made.map((c) => `${c.afterIdle.status}${c.afterIdle.code ? ` ${c.afterIdle.code}` : ''}`).join(', ')})`,
    )
    checkH(t, outcomes)
    await checkLD(t, env.amqp, q, outcomes, { duplicateBound: CYCLES })
    await checkR(t, env.amqp, { api: sc.api, exchange: '', routingKey: q, queue: q })
    await checkS(t, env.password, { api: sc.api, ops: sc.ops, logs: sc.output })
  })
}
