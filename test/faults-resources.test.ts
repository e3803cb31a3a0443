/**
 * FAULTS.md rows 9, 10, 11, 14 and 15: the broker refuses work rather than
 * failing (memory and disk alarms, refused credentials, unroutable messages,
 * a missing exchange), on a private node this file owns. The sidecar logs in
 * as a private user with a unique random password, so S (no password in logs,
 * status, readiness, metrics or error bodies) is checked against a real
 * secret. Also L, D, H and R on every row.
 */
import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { brokerFor } from './fixtures/broker.js'
import { checkH, checkLD, checkR, checkS, getStatus, metric, publishOnce, publishStream, readyzStatus, type Outcome } from './fixtures/faults.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const DEADLINE_MS = 2_000
const MAX_BUFFER = 20
const MAX_BACKOFF_MS = 1_000

const broker = await brokerFor(t)
const password = `pw-${randomBytes(16).toString('hex')}`
await broker.ctl('add_user', 'app', password)
await broker.ctl('set_permissions', '-p', '/', 'app', '.*', '.*', '.*')
const amqp = await directAmqp(t, broker.url) // guest: the test's own view of the queues
const q = amqp.name('faults-res')
const unbound = amqp.name('faults-unbound')

const sc = await startSidecar(t, {
  amqp: { urls: [`amqp://app:${password}@127.0.0.1:${broker.port}/%2F`], heartbeatSeconds: 2, reconnect: { initialDelayMs: 100, maxDelayMs: MAX_BACKOFF_MS } },
  topology: { queues: [{ name: q, durable: true }], exchanges: [{ name: unbound, type: 'fanout', durable: false }] },
  publish: { maxBufferedMessages: MAX_BUFFER },
  log: { level: 'info' },
})
t.teardown(async () => {
  await (await amqp.channel()).deleteExchange(unbound).catch(() => {})
})
const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
const logs = () => sc.logs.join('')
/** Error bodies seen by the app, for the S check. */
const errorBodies: string[] = []
const ready = (what: string) => waitFor(async () => (await readyzStatus(sc.ops)) === 200, { timeoutMs: 30_000, what })
await ready('the sidecar ready')

async function alarmRow(t: Test, kind: 'memory' | 'disk'): Promise<void> {
  const setAlarm = (on: boolean) => (kind === 'memory' ? broker.setMemoryAlarm(on) : broker.setDiskAlarm(on))
  const stream = publishStream(t, target, { prefix: `alarm-${kind}`, deadlineMs: DEADLINE_MS })
  await stream.advance(10)
  await setAlarm(true)
  t.teardown(() => setAlarm(false))
  const alarmAt = Date.now()
  // The stream itself nudges the broker: RabbitMQ blocks a connection when it next publishes.
  await waitFor(async () => (await getStatus(sc.api)).upstream.state === 'blocked', { timeoutMs: 20_000, what: 'the publish connection blocked' })
  t.comment(`row ${kind === 'memory' ? 9 : 10}: blocked ${Date.now() - alarmAt} ms after the alarm was raised`)
  // While blocked: readiness 503 with the reason, the buffer never above its bound, publishes refused 503.
  const maxHeld: number[] = []
  await waitFor(
    async () => {
      maxHeld.push((await getStatus(sc.api)).buffer.messages)
      return maxHeld.length >= 5
    },
    { timeoutMs: 20_000, intervalMs: 200, what: 'buffer samples while blocked' },
  )
  const readyz = await fetch(`${sc.ops}/readyz`)
  t.equal(readyz.status, 503, 'readiness is 503 while blocked')
  t.match(((await readyz.json()) as { reasons: string[] }).reasons.join(' '), /upstream blocked/, 'readiness says why')
  const s = await getStatus(sc.api)
  t.equal(s.upstream.state, 'blocked', '/v1/status upstream.state is blocked')
  t.ok(s.upstream.blockedReason, `blockedReason is set (${s.upstream.blockedReason})`)
  t.match(s.diagnosis, /blocked publishing/, 'the diagnosis says so')
  t.equal(await metric(sc.ops, 'amqp_sidecar_upstream_blocked', 'connection="publish"'), 1, 'upstream_blocked{connection="publish"} is 1')
  t.ok(Math.max(...maxHeld) <= MAX_BUFFER, `the buffer stays bounded (max ${Math.max(...maxHeld)} <= ${MAX_BUFFER})`)
  const refused = await publishOnce(target, `alarm-${kind}-refused`, { deadlineMs: DEADLINE_MS })
  t.equal(refused.status, 503, 'a publish while blocked answers 503')
  t.equal(refused.code, 'UPSTREAM_BLOCKED')
  await stream.advance(10)

  await setAlarm(false)
  const clearedAt = Date.now()
  await ready('ready after the alarm cleared')
  t.comment(`row ${kind === 'memory' ? 9 : 10}: ready ${Date.now() - clearedAt} ms after the alarm cleared`)
  await stream.advance(10)
  const outcomes = [...(await stream.stop()), refused]
  checkH(t, outcomes)
  const codes = new Set(outcomes.filter((o) => o.status !== 200).map((o) => o.code))
  t.ok([...codes].every((c) => c === 'UPSTREAM_BLOCKED' || c === 'BUFFER_FULL' || c === 'PUBLISH_OUTCOME_UNKNOWN'), `refusals are 503 UPSTREAM_BLOCKED/BUFFER_FULL or 504 (${[...codes].join(', ')})`)
  t.ok(outcomes.some((o) => o.code === 'UPSTREAM_BLOCKED'), 'the stream was refused with UPSTREAM_BLOCKED while blocked')
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  t.equal((await getStatus(sc.api)).buffer.messages, 0, 'the buffer empties after the alarm')
  await checkR(t, amqp, target)
}

t.test('row 9: memory alarm — blocked reported, readiness 503, buffer bounded then 503, resumes after unblock', (t) => alarmRow(t, 'memory'))

t.test('row 10: disk alarm — as row 9', (t) => alarmRow(t, 'disk'))

t.test('row 14: an unroutable publish answers 422 UNROUTABLE, never 200', async (t) => {
  const outcomes: Outcome[] = []
  const good = publishStream(t, target, { prefix: 'r14-good', workers: 2, deadlineMs: DEADLINE_MS })
  for (let i = 0; i < 10; i++) outcomes.push(await publishOnce({ api: sc.api, exchange: unbound, routingKey: 'x' }, `r14-${i}`, { deadlineMs: DEADLINE_MS }))
  const goodOutcomes = await good.stop()
  t.same([...new Set(outcomes.map((o) => `${o.status} ${o.code}`))], ['422 UNROUTABLE'], 'every unroutable publish answered 422 UNROUTABLE')
  errorBodies.push(JSON.stringify(outcomes))
  checkH(t, [...outcomes, ...goodOutcomes])
  t.ok(goodOutcomes.every((o) => o.status === 200), 'routable publishes alongside were all confirmed')
  await checkLD(t, amqp, q, goodOutcomes)
  t.ok((await metric(sc.ops, 'amqp_sidecar_published_total', 'outcome="unroutable"')) >= 10, 'counted as published_total{outcome="unroutable"}')
})

t.test('row 15: a missing exchange answers 404 for that request only; other publishes are unaffected', async (t) => {
  const before = await getStatus(sc.api)
  const good = publishStream(t, target, { prefix: 'r15-good', workers: 3, deadlineMs: DEADLINE_MS })
  await good.advance(5)
  const bad: Outcome[] = []
  for (let i = 0; i < 10; i++) {
    const o = await publishOnce({ api: sc.api, exchange: `no-such-exchange-${i % 3}`, routingKey: 'x' }, `r15-${i}`, { deadlineMs: DEADLINE_MS })
    bad.push(o)
  }
  await good.advance(5)
  const goodOutcomes = await good.stop()
  t.same([...new Set(bad.map((o) => `${o.status} ${o.code}`))], ['404 EXCHANGE_NOT_FOUND'], 'each publish to a missing exchange answered 404 EXCHANGE_NOT_FOUND')
  errorBodies.push(JSON.stringify(bad))
  t.same(goodOutcomes.filter((o) => o.status !== 200).map((o) => `${o.id} ${o.status} ${o.code}`), [], 'every concurrent publish to a real exchange was confirmed')
  checkH(t, [...bad, ...goodOutcomes])
  const after = await getStatus(sc.api)
  t.equal(after.upstream.connects, before.upstream.connects, 'the connection was never dropped')
  await checkLD(t, amqp, q, goodOutcomes)
})

t.test('row 15 (edge): an exchange deleted while the sidecar still trusts it answers 404, and the other publishes are not disturbed', async (t) => {
  // The publisher caches "exists" for 60 s (src/publish/exchanges.ts). An exchange
  // deleted inside that window is published to and the broker closes the publish
  // channel with 404. The publisher reads the missing exchange from the close:
  // that message answers 404; those written after it were discarded by the broker
  // and are sent again; only those before it (routed, confirm lost) can be unknown.
  const ex = amqp.name('faults-doomed')
  const ch = await amqp.channel()
  await ch.assertExchange(ex, 'fanout', { durable: false })
  await ch.bindQueue(q, ex, '')
  t.teardown(async () => (await amqp.channel()).deleteExchange(ex).catch(() => {}))
  const warm = await publishOnce({ api: sc.api, exchange: ex, routingKey: '' }, 'r15e-warm', { deadlineMs: DEADLINE_MS })
  t.equal(warm.status, 200, 'the exchange works and is now cached')
  await (await amqp.channel()).deleteExchange(ex)
  const good = publishStream(t, target, { prefix: 'r15e-good', workers: 3, deadlineMs: DEADLINE_MS })
  await good.advance(5)
  const doomed = await publishOnce({ api: sc.api, exchange: ex, routingKey: '' }, 'r15e-doomed', { deadlineMs: DEADLINE_MS })
  await good.advance(10)
  const goodOutcomes = await good.stop()
  t.equal(doomed.status, 404, 'the publish to the deleted exchange answers 404')
  t.equal(doomed.code, 'EXCHANGE_NOT_FOUND')
  const disturbed = goodOutcomes.filter((o) => o.status !== 200)
  // Messages written just before the refused one may have lost their confirm with the channel.
  t.ok(disturbed.every((o) => o.status === 504), `at most an unknown outcome for what preceded it (${disturbed.length} of ${goodOutcomes.length})`)
  t.ok(disturbed.length <= 3, 'only the few publishes in flight before it can be disturbed')
  checkH(t, [warm, doomed, ...goodOutcomes])
  const next = await publishOnce({ api: sc.api, exchange: ex, routingKey: '' }, 'r15e-next', { deadlineMs: DEADLINE_MS })
  t.equal(next.status, 404, 'the next publish to it answers 404 (the cache was cleared)')
  t.equal(next.code, 'EXCHANGE_NOT_FOUND')
  // Those written before the refused one may have been routed before the channel closed:
  // they are re-sent (at-least-once), so up to the few in flight can be there twice.
  await checkLD(t, amqp, q, [warm, ...goodOutcomes], { duplicateBound: 3 })
  await checkR(t, amqp, target)
})

t.test('row 11: ACCESS_REFUSED (password changed, connection forced) — slow retry, readiness 503, clear error, recovers when restored', async (t) => {
  const stream = publishStream(t, target, { prefix: 'r11', deadlineMs: DEADLINE_MS })
  await stream.advance(5)
  const failuresBefore = await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="access-refused"')
  await broker.changePassword('app', `rotated-${randomBytes(8).toString('hex')}`)
  await broker.closeAllConnections('fault matrix row 11')
  const refusedAt = Date.now()
  await waitFor(async () => (await getStatus(sc.api)).upstream.lastConnectError?.cause === 'access-refused', { timeoutMs: 20_000, what: 'an access-refused connect error' })
  // Watch the retry loop for at least 3 s (a measurement window, not a synchronisation):
  // the first retries come fast (100 ms cap, doubling), a hot loop would be hundreds.
  await waitFor(async () => Date.now() - refusedAt >= 3_000 && (await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="access-refused"')) - failuresBefore >= 3, {
    timeoutMs: 30_000,
    intervalMs: 250,
    what: 'several refused logins over 3 s',
  })
  const failures = (await metric(sc.ops, 'amqp_sidecar_upstream_connect_failures_total', 'connection="publish",cause="access-refused"')) - failuresBefore
  const refusedMs = Date.now() - refusedAt
  t.ok(failures / (refusedMs / 1000) < 10, `retries back off: ${failures} refused logins in ${refusedMs} ms`)
  const readyz = await fetch(`${sc.ops}/readyz`)
  t.equal(readyz.status, 503, 'readiness 503 while refused')
  const s = await getStatus(sc.api)
  // amqplib's login refusal carries no reply code, only the broker's text: classify.ts reads that.
  t.match(s.upstream.lastConnectError?.message, /ACCESS_REFUSED/, 'the error carries the broker\'s ACCESS_REFUSED text')
  t.match(s.diagnosis, /403 ACCESS_REFUSED.*fix the user, password or permissions/, 'the diagnosis says what to fix')
  t.ok(sc.logs.some((l) => l.includes('could not connect to the broker') && l.includes('"cause":"access-refused"')), 'logged with its cause')
  await stream.advance(3)
  const during = await publishOnce(target, 'r11-refused', { deadlineMs: 500 })
  errorBodies.push(JSON.stringify(during))
  t.equal(during.status, 504, 'a publish while refused ends at its deadline with 504')
  await checkS(t, password, { api: sc.api, ops: sc.ops, logs, extra: errorBodies })

  await broker.changePassword('app', password)
  const restoredAt = Date.now()
  await ready('ready after the password was restored')
  t.comment(`row 11: ${failures} refused logins in ${refusedMs} ms; ready ${Date.now() - restoredAt} ms after the password was restored`)
  await stream.advance(5)
  const outcomes = [...(await stream.stop()), during]
  checkH(t, outcomes)
  await checkLD(t, amqp, q, outcomes, { duplicateBound: 3 })
  await checkR(t, amqp, target)
})

t.test('S: the private password appears nowhere after every row above', async (t) => {
  const bad = await fetch(`${sc.api}/v1/publish/no-such-exchange/x`, { method: 'POST', body: 'x' })
  errorBodies.push(await bad.text())
  await checkS(t, password, { api: sc.api, ops: sc.ops, logs, extra: errorBodies })
  t.match(JSON.stringify(await getStatus(sc.api)), /app:\*\*\*@/, 'the status shows the URL with the password redacted')
})
