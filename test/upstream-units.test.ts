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

const cut = (idleMsBefore: number, cause: DisconnectRecord['cause'] = 'econnreset'): DisconnectRecord => ({
  cause,
  code: undefined,
  message: '',
  at: new Date().toISOString(),
  idleMsBefore,
  duringConnect: false,
})

t.test('idle-timeout detection needs repeated cuts after about the same idle time', async (t) => {
  t.equal(detectIdleTimeout([cut(5000), cut(5100)]), null, 'two are not a pattern')
  t.same(detectIdleTimeout([cut(5000), cut(5100), cut(4950)]), { idleTimeoutSeconds: 5, events: 3 })
  t.equal(detectIdleTimeout([cut(5000), cut(9000), cut(2000)]), null, 'scattered idle times are not a pattern')
  t.equal(detectIdleTimeout([cut(5000, 'connection-forced'), cut(5000, 'connection-forced'), cut(5000, 'connection-forced')]), null, 'a broker close is not a middlebox')
  t.same(detectIdleTimeout([cut(5000, 'unexpected-close'), cut(5200, 'unexpected-close'), cut(5100, 'unexpected-close')])?.idleTimeoutSeconds, 5.1)
})

t.test('diagnosis names the middlebox timeout and the heartbeat', async (t) => {
  const text = diagnose({
    state: 'connected',
    heartbeatSeconds: 0,
    lastDisconnect: cut(5000),
    lastConnectError: null,
    blockedReason: null,
    topologyError: null,
    idlePattern: { idleTimeoutSeconds: 5, events: 3 },
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
    idlePattern: { idleTimeoutSeconds: 5, events: 3 },
  })
  t.match(adapted, /the heartbeat is now 2 s, which keeps the link busy/, 'after adaptation it says the link is kept busy')
  const refused = diagnose({ state: 'reconnecting', heartbeatSeconds: 15, lastDisconnect: null, lastConnectError: cut(0, 'access-refused'), blockedReason: null, topologyError: null, idlePattern: null })
  t.match(refused, /ACCESS_REFUSED/)
})
