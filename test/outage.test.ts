/**
 * Publishing through broker faults, on a private broker node this file owns:
 * forced close (320), a stopped broker (ECONNREFUSED), a full buffer, the
 * accepted (202) mode across an outage, failover, and a memory alarm.
 */
import t from 'tap'
import { brokerFor } from './fixtures/broker.js'
import { directAmqp } from './fixtures/amqp.js'
import { startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'

const broker = await brokerFor(t)
const amqp = await directAmqp(t, broker.url)
const queue = amqp.name('outage')
/** No request may outlive its deadline by more than this (a hang check, not a performance bound). */
const HANG_SLACK_MS = 3_000

const sc = await startSidecar(t, {
  amqp: { urls: [broker.url] },
  topology: { queues: [{ name: queue, durable: true }] },
  publish: { maxBufferedMessages: 5 },
})
const ready = (want: number) => waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === want, { timeoutMs: 30_000, what: `readyz ${want}` })
await ready(200)

const publish = async (id: string, headers: Record<string, string> = {}) => {
  const started = Date.now()
  const res = await fetch(`${sc.api}/v1/publish/amq.default/${queue}`, { method: 'POST', body: id, headers: { 'x-message-id': id, ...headers } })
  return { id, status: res.status, body: (await res.json()) as { error?: { code: string } }, retryAfter: res.headers.get('retry-after'), ms: Date.now() - started }
}
const status = async () => (await (await fetch(`${sc.api}/v1/status`)).json()) as {
  upstream: { state: string; connects: number; lastDisconnect: { cause: string } | null; disconnectsByCause: Record<string, number>; url: string }
}

t.test('close_all_connections (320): reconnects, and no publish answered 200 is lost', async (t) => {
  const before = (await status()).upstream.connects
  const results: Array<Awaited<ReturnType<typeof publish>>> = []
  let seq = 0
  // A steady stream of publishes, running through the forced close.
  const stream = (async () => {
    const until = Date.now() + 3_000
    while (Date.now() < until) results.push(await publish(`f-${seq++}`, { 'x-timeout-ms': '2000' }))
  })()
  await waitFor(() => results.length >= 5, { timeoutMs: 10_000, what: 'publishes flowing' })
  await broker.closeAllConnections('test 320')
  await stream
  await waitFor(async () => (await status()).upstream.connects > before, { timeoutMs: 15_000, what: 'reconnect' })
  const s = await status()
  t.equal(s.upstream.lastDisconnect?.cause, 'connection-forced')
  t.ok((s.upstream.disconnectsByCause['connection-forced'] ?? 0) >= 1)
  for (const r of results) {
    t.ok([200, 503, 504].includes(r.status), `${r.id} answered a documented status (${r.status})`)
    t.ok(r.ms < 2_000 + HANG_SLACK_MS, `${r.id} answered within its deadline`)
  }
  const confirmed = results.filter((r) => r.status === 200).map((r) => r.id)
  t.ok(confirmed.length > 5, 'publishes succeeded around the fault')
  const got = new Set((await amqp.drainUntil(queue, confirmed.length, 15_000)).map((m) => m.properties.messageId as string))
  t.same(confirmed.filter((id) => !got.has(id)), [], 'lost = 0')
  const after = await publish('after-320')
  t.equal(after.status, 200, 'a new publish round-trips after the fault')
  await amqp.drainUntil(queue, 1)
})

t.test('broker down: deadlines hold, 202 is buffered, the bound answers 503 with Retry-After', async (t) => {
  // Undone even if the row fails, so the next row never finds the broker stopped.
  let appDown = true
  t.teardown(() => (appDown ? broker.startApp() : undefined))
  await broker.stopApp()
  await ready(503)
  const readyz = (await (await fetch(`${sc.ops}/readyz`)).json()) as { reasons: string[] }
  t.match(readyz.reasons.join(' '), /upstream (reconnecting|connecting)/)

  const timed = await publish('down-1', { 'x-timeout-ms': '500' })
  t.equal(timed.status, 504, 'a confirm-mode publish answers 504 at its deadline')
  t.equal(timed.body.error?.code, 'PUBLISH_OUTCOME_UNKNOWN')
  t.ok(timed.ms < 500 + HANG_SLACK_MS, `answered by its deadline (${timed.ms} ms)`)

  const accepted = []
  for (let i = 0; i < 5; i++) accepted.push(await publish(`acc-${i}`, { 'x-ack': 'accepted' }))
  t.same(accepted.map((r) => r.status), [202, 202, 202, 202, 202], 'accepted into the buffer')
  const full = await publish('acc-overflow', { 'x-ack': 'accepted' })
  t.equal(full.status, 503)
  t.equal(full.body.error?.code, 'BUFFER_FULL')
  t.ok(Number(full.retryAfter) >= 1, 'Retry-After is set')

  await broker.startApp()
  appDown = false
  await ready(200)
  const got = await amqp.drainUntil(queue, 5, 15_000)
  t.same(got.map((m) => m.properties.messageId).sort(), ['acc-0', 'acc-1', 'acc-2', 'acc-3', 'acc-4'], 'every 202 was delivered after the reconnect')
  t.notOk(got.some((m) => m.properties.messageId === 'down-1'), 'the 504 (never sent) message was dropped, not sent late')
})

t.test('memory alarm: 503 UPSTREAM_BLOCKED, readiness 503, resumes after unblock', async (t) => {
  let alarmOn = true
  t.teardown(() => (alarmOn ? broker.setMemoryAlarm(false) : undefined))
  await broker.setMemoryAlarm(true)
  // RabbitMQ blocks a connection when it next publishes: nudge it with one publish.
  const nudge = await publish('nudge', { 'x-timeout-ms': '1000' })
  t.ok([200, 504].includes(nudge.status), `the nudge answered ${nudge.status}`)
  await ready(503)
  const blocked = await publish('blocked-1')
  t.equal(blocked.status, 503)
  t.equal(blocked.body.error?.code, 'UPSTREAM_BLOCKED')
  t.ok(blocked.retryAfter, 'Retry-After is set')
  t.equal((await status()).upstream.state, 'blocked')
  await broker.setMemoryAlarm(false)
  alarmOn = false
  await ready(200)
  const after = await publish('after-alarm')
  t.equal(after.status, 200)
  await amqp.drain(queue)
})

t.test('failover: the first URL is dead, the second broker takes over', async (t) => {
  const deadPort = await freePort()
  const fo = await startSidecar(t, { amqp: { urls: [`amqp://guest:guest@127.0.0.1:${deadPort}/%2F`, broker.url] } })
  await waitFor(async () => (await fetch(`${fo.ops}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'failover sidecar ready' })
  const s = (await (await fetch(`${fo.api}/v1/status`)).json()) as { upstream: { url: string; lastConnectError: unknown } }
  t.match(s.upstream.url, `:${broker.port}/`, 'connected to the second URL')
  const res = await fetch(`${fo.api}/v1/publish/amq.default/${queue}`, { method: 'POST', body: 'via failover' })
  t.equal(res.status, 200)
  const metrics = await (await fetch(`${fo.ops}/metrics`)).text()
  t.match(metrics, /amqp_sidecar_upstream_connect_failures_total\{connection="publish",cause="econnrefused"\} [1-9]/)
  await amqp.drainUntil(queue, 1)
})
