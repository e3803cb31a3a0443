/** Pure parts of the upstream: classification, backoff, diagnosis. */
import t from 'tap'
import { Backoff } from '../src/upstream/backoff.js'
import { classifyError } from '../src/upstream/classify.js'
import type { DisconnectRecord } from '../src/upstream/connection.js'
import { detectIdleTimeout, diagnose } from '../src/upstream/diagnosis.js'

t.test('every cause DESIGN.md section 5 names is recognised', async (t) => {
  const errno = (code: string) => Object.assign(new Error(`x ${code}`), { code })
  const amqp = (code: number, msg: string) => Object.assign(new Error(msg), { code })
  const cases: Array<[unknown, string]> = [
    [errno('ECONNRESET'), 'econnreset'],
    [errno('EPIPE'), 'epipe'],
    [errno('ECONNREFUSED'), 'econnrefused'],
    [errno('ETIMEDOUT'), 'etimedout'],
    [new Error('connect ETIMEDOUT'), 'etimedout'],
    [new Error('Heartbeat timeout'), 'heartbeat-timeout'],
    [amqp(320, 'Connection closed: 320 (CONNECTION-FORCED)'), 'connection-forced'],
    [new Error('Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused"'), 'access-refused'],
    [amqp(530, 'Connection closed: 530 (NOT-ALLOWED)'), 'not-allowed'],
    [errno('DEPTH_ZERO_SELF_SIGNED_CERT'), 'tls'],
    [errno('ERR_TLS_CERT_ALTNAME_INVALID'), 'tls'],
    [errno('ENOTFOUND'), 'dns'],
    [new Error('Unexpected close'), 'unexpected-close'],
    [amqp(406, 'Channel closed by server: 406 (PRECONDITION-FAILED)'), 'channel-error'],
    [undefined, 'client-close'],
    [new Error('something new'), 'other'],
  ]
  for (const [err, cause] of cases) t.equal(classifyError(err).cause, cause, cause)
})

t.test('backoff: full jitter within a doubling cap, reset after a stable connection', async (t) => {
  const max = new Backoff(500, 30_000, () => 0.999999)
  const caps = Array.from({ length: 8 }, () => max.next())
  t.same(caps, [499, 999, 1999, 3999, 7999, 15999, 29999, 29999], 'the cap doubles up to the maximum')
  const min = new Backoff(500, 30_000, () => 0)
  t.equal(min.next(), 10, 'never 0, so a refused connect cannot spin')
  max.reset()
  t.equal(max.next(), 499, 'reset starts over')
})

const T0 = Date.parse('2026-01-01T00:00:00Z')
/** A lost connection: cut after `idleMsBefore` ms idle, `minutes` after T0, having survived `survived` ms idle. */
const cut = (idleMsBefore: number, cause: DisconnectRecord['cause'] = 'econnreset', minutes = 0, survived: number | null = 0): DisconnectRecord => ({
  cause,
  code: undefined,
  message: '',
  at: new Date(T0 + minutes * 60_000).toISOString(),
  idleMsBefore,
  longestSurvivedIdleMs: survived,
  duringConnect: false,
})

t.test('idle-timeout detection needs three recent cuts of one kind', async (t) => {
  t.equal(detectIdleTimeout([cut(5000), cut(5100)]), null, 'two are not a pattern')
  t.same(detectIdleTimeout([cut(5000), cut(5100), cut(4950)]), {
    idleTimeoutSeconds: 5,
    atLeastSeconds: null,
    atMostSeconds: 5,
    kind: 'reset',
    events: 3,
    windowSeconds: 1800,
  })
  t.equal(detectIdleTimeout([cut(5000, 'connection-forced'), cut(5000, 'connection-forced'), cut(5000, 'connection-forced')]), null, 'a broker close is not a middlebox')
  t.same(detectIdleTimeout([cut(5200, 'unexpected-close'), cut(5100, 'unexpected-close'), cut(5300, 'unexpected-close')])?.idleTimeoutSeconds, 5.1)
  t.equal(detectIdleTimeout([cut(5000, 'econnreset'), cut(5000, 'unexpected-close'), cut(5000, 'heartbeat-timeout')]), null, 'three cuts of three kinds are not one middlebox')
  t.same(detectIdleTimeout([cut(6000, 'heartbeat-timeout'), cut(7000, 'etimedout'), cut(6500, 'heartbeat-timeout')])?.kind, 'silent', 'heartbeat and keepalive timeouts are one kind: a silent drop')
  t.equal(detectIdleTimeout([cut(300), cut(200), cut(900)]), null, 'cuts of a busy link are not idle cuts')
  t.equal(detectIdleTimeout([{ ...cut(5000), duringConnect: true }, cut(5000), cut(5000)]), null, 'failed connects do not count')
})

t.test('only recent cuts make a pattern: three spread over a day do not', async (t) => {
  t.equal(detectIdleTimeout([cut(5000, 'econnreset', 0), cut(5000, 'econnreset', 9 * 60), cut(5000, 'econnreset', 20 * 60)]), null, 'one cut every ~10 h')
  t.equal(detectIdleTimeout([cut(5000, 'econnreset', 0), cut(5000, 'econnreset', 29), cut(5000, 'econnreset', 31)]), null, 'the first is 31 min before the newest: out of the 30 min window')
  t.same(detectIdleTimeout([cut(5000, 'econnreset', 0), cut(5000, 'econnreset', 29), cut(5000, 'econnreset', 30)])?.events, 3, 'all three within 30 min')
  const day = [cut(5000, 'econnreset', 0), cut(5000, 'econnreset', 6 * 60), cut(5000, 'econnreset', 12 * 60)]
  t.equal(detectIdleTimeout(day), null)
  t.same(detectIdleTimeout([...day, cut(6000, 'econnreset', 12 * 60 + 5), cut(5500, 'econnreset', 12 * 60 + 9)])?.events, 3, 'the last one and two newer make a pattern')
})

t.test('the bracket: cuts give an upper bound, survived idle periods a lower bound', async (t) => {
  // A 5 s timeout seen through an app that idles 6-40 s between publishes: every idle cut is an upper bound.
  const scattered = detectIdleTimeout([cut(40_000), cut(6_500), cut(12_000)])
  t.equal(scattered?.atMostSeconds, 6.5, 'the tightest upper bound is the shortest idle period that was cut')
  t.equal(scattered?.atLeastSeconds, null, 'no idle period survived: no lower bound')
  t.equal(scattered?.idleTimeoutSeconds, 6.5)
  const bracketed = detectIdleTimeout([cut(7000, 'econnreset', 0, 3000), cut(6000, 'econnreset', 1, 4200), cut(9000, 'econnreset', 2, 1000)])
  t.same([bracketed?.atLeastSeconds, bracketed?.atMostSeconds], [4.2, 6], 'between the longest survived (4.2 s) and the shortest cut (6 s)')
  t.match(diagnose({ state: 'connected', heartbeatSeconds: 0, lastDisconnect: null, lastConnectError: null, blockedReason: null, topologyError: null, idlePattern: bracketed }), /between 4\.2 and 6 s/, 'the diagnosis names the bracket')
  // A cut after less idleness than a period that survived was no idle timeout: it is left out, never named.
  const withStray = detectIdleTimeout([cut(2000, 'econnreset', 0, 0), cut(7000, 'econnreset', 1, 4000), cut(6000, 'econnreset', 2, 0), cut(8000, 'econnreset', 3, 0)])
  t.equal(withStray?.atMostSeconds, 6, 'the 2 s cut is below the 4 s that survived: not an idle cut')
  t.equal(withStray?.events, 3)
  t.ok((withStray?.idleTimeoutSeconds ?? 0) > (withStray?.atLeastSeconds ?? Infinity), 'the named value is above every idle period that survived')
  t.equal(detectIdleTimeout([cut(2000, 'econnreset', 0, 0), cut(3000, 'econnreset', 1, 10_000), cut(2500, 'econnreset', 2, 0)]), null, 'cuts below a survived idle period are no pattern')
  t.equal(
    detectIdleTimeout([cut(7600, 'heartbeat-timeout', 0, 7500), cut(7550, 'heartbeat-timeout', 5, 7500), cut(7700, 'heartbeat-timeout', 9, 7500)]),
    null,
    'a cut after the same idle gap the heartbeats kept surviving (a frozen broker) is no middlebox',
  )
  const old = detectIdleTimeout([cut(2000, 'econnreset', 0, 60_000), cut(3000, 'econnreset', 40), cut(2500, 'econnreset', 41), cut(2200, 'econnreset', 42)])
  t.equal(old?.atLeastSeconds, null, 'a survival outside the window does not bound the new pattern')
})

t.test('diagnosis names the middlebox timeout and the heartbeat', async (t) => {
  const text = diagnose({
    state: 'connected',
    heartbeatSeconds: 0,
    lastDisconnect: cut(5000),
    lastConnectError: null,
    blockedReason: null,
    topologyError: null,
    idlePattern: { idleTimeoutSeconds: 5, atLeastSeconds: null, atMostSeconds: 5, kind: 'reset', events: 3, windowSeconds: 1800 },
  })
  t.match(text, /middlebox closes idle flows after ~5 s/)
  t.match(text, /heartbeat is 0 s/)
  const adapted = diagnose({
    state: 'connected',
    heartbeatSeconds: 2,
    lastDisconnect: cut(5000),
    lastConnectError: null,
    blockedReason: null,
    topologyError: null,
    idlePattern: { idleTimeoutSeconds: 5, atLeastSeconds: null, atMostSeconds: 5, kind: 'reset', events: 3, windowSeconds: 1800 },
  })
  t.match(adapted, /the heartbeat is now 2 s, which keeps the link busy/, 'after adaptation it says the link is kept busy')
  const refused = diagnose({ state: 'reconnecting', heartbeatSeconds: 15, lastDisconnect: null, lastConnectError: cut(0, 'access-refused'), blockedReason: null, topologyError: null, idlePattern: null })
  t.match(refused, /ACCESS_REFUSED/)
})
