/**
 * Consuming when the consume link misbehaves, through the userspace fault
 * proxy in front of the shared broker (only this file's connections are held
 * or cut):
 *   - black hole (issue 11 item 6): a pull answers 204 by its waitMs and a
 *     WebSocket subscribe answers an error frame by its deadline, although
 *     the broker never answers (heartbeat 60 s, so the link is not declared
 *     dead during the test);
 *   - the first pull of a missing queue arriving during a reconnect answers
 *     404 QUEUE_NOT_FOUND, and so do later pulls;
 *   - WebSocket clients terminated mid-subscribe are an expected race, never
 *     logged at error level.
 */
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const WAIT_MS = 2_000
const REQUEST_DEADLINE_MS = 3_000
/** Generous: on a loaded machine an answer due at T may come a little after T, never tens of seconds after. */
const MARGIN_MS = 8_000

const shared = new URL(SHARED_BROKER_URL)
const amqp = await directAmqp(t, SHARED_BROKER_URL)
const [qHole, qRace] = [amqp.name('hole'), amqp.name('race')]
const proxy = await startFaultProxy({ upstreamHost: shared.hostname, upstreamPort: Number(shared.port || 5672) })
t.teardown(() => proxy.close())
const via = new URL(SHARED_BROKER_URL)
via.hostname = '127.0.0.1'
via.port = String(proxy.port)
const sc = await startSidecar(t, {
  amqp: { urls: [via.toString()], heartbeatSeconds: 60, connectTimeoutMs: 3_000 },
  publish: { timeoutMs: REQUEST_DEADLINE_MS },
  topology: { queues: [qHole, qRace].map((name) => ({ name, durable: false })) },
})
const ready = () => waitFor(() => sc.sidecar.consumeUpstream.state === 'connected' && sc.sidecar.upstream.state === 'connected', { timeoutMs: 30_000, what: 'both connections up' })
await ready()
const pull = (queue: string, query: string, timeoutMs: number) => fetch(`${sc.api}/v1/queues/${queue}/pull?${query}`, { method: 'POST', signal: AbortSignal.timeout(timeoutMs) })
const errorLines = () => sc.logs.filter((l) => l.includes('"level":50'))

t.test('black-holed consume link: pull answers 204 by waitMs, subscribe answers an error frame by its deadline', async (t) => {
  const c = await wsClient(t, sc.api)
  proxy.setBlackhole(true)
  t.teardown(() => proxy.setBlackhole(false))
  const res = await pull(qHole, `waitMs=${WAIT_MS}`, WAIT_MS + MARGIN_MS)
  t.equal(res.status, 204, 'the pull answered 204 although the broker never answered')
  const zero = await pull(qHole, 'waitMs=0', MARGIN_MS)
  t.equal(zero.status, 204, 'waitMs=0 too')
  c.send({ op: 'subscribe', queue: qHole, id: 'sub' })
  const err = await c.next((f) => f.op === 'error' && f['id'] === 'sub', 'the subscribe answer', { timeoutMs: REQUEST_DEADLINE_MS + MARGIN_MS })
  t.equal(err['code'], 'UPSTREAM_TIMEOUT')
  t.notOk(c.frames.some((f) => f.op === 'subscribed'), 'not reported as subscribed')
  proxy.setBlackhole(false)
  // The link was only held: once traffic flows again, everything works as before.
  await ready()
  await (await amqp.channel()).sendToQueue(qHole, Buffer.from('after'))
  c.send({ op: 'subscribe', queue: qHole, id: 'again' })
  await c.next((f) => f.op === 'subscribed' && f['id'] === 'again', 'subscribed after the link came back', { timeoutMs: 20_000 })
  const m = await c.next((f) => f.op === 'message', 'the message', { timeoutMs: 20_000 })
  c.send({ op: 'ack', deliveryId: m['deliveryId'], id: 'ack' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ack', 'ack'))['result'], 'acked')
})

t.test('the first pull of a missing queue during a reconnect answers 404, and so do later pulls', async (t) => {
  const missing = `${qHole}-missing`
  await proxy.setDown(true, 'refuse')
  await waitFor(() => sc.sidecar.consumeUpstream.state === 'reconnecting', { timeoutMs: 20_000, what: 'the consume connection to reconnect' })
  const first = pull(missing, 'waitMs=20000', 60_000)
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === missing && p.waiting === 1), { timeoutMs: 10_000, what: 'the pull to wait' })
  await proxy.setDown(false)
  const res = await first
  t.equal(res.status, 404, 'answered 404 once the broker could say so')
  t.match(await res.json(), { error: { code: 'QUEUE_NOT_FOUND' } })
  await ready()
  for (let i = 0; i < 2; i++) {
    const later = await pull(missing, 'waitMs=1000', 30_000)
    t.equal(later.status, 404, `later pull ${i + 1} answers 404 too`)
  }
})

t.test('WebSocket clients terminated mid-subscribe are not logged as errors', async (t) => {
  await ready()
  // Each subscribe round trip takes ~1 s; clients leave at every point of it, so some leave while basic.consume is in flight.
  proxy.setLatency(250)
  t.teardown(() => proxy.setLatency(0))
  const before = errorLines().length
  const leaves: Promise<void>[] = []
  for (let i = 0; i < 20; i++) {
    const c = await wsClient(t, sc.api)
    c.send({ op: 'subscribe', queue: qRace, id: `s${i}` })
    // The fault: the client vanishes i x 75 ms into its subscribe (a schedule, not a synchronisation).
    leaves.push(delay(i * 75).then(() => c.ws.terminate()))
  }
  await Promise.all(leaves)
  await waitFor(() => sc.sidecar.consumers.status().websocketClients === 0 && sc.sidecar.consumers.status().subscriptions === 0, { timeoutMs: 30_000, what: 'every client and subscription gone' })
  t.same(errorLines().slice(before), [], 'no error-level log line')
})
