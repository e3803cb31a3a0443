/**
 * Consuming over GET /v1/ws against the shared broker: subscribe, message shape,
 * ack, publish ops, the prefetch as credit, lease expiry, and a socket closed
 * with unacked deliveries. Queues are read back directly with amqplib.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient, type Frame } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const queues = Array.from({ length: 6 }, (_, i) => amqp.name(`ws${i}`))
const [qBasic, qCredit, qClose, qLease, qPublish, qNack] = queues as [string, string, string, string, string, string]
const sc = await startSidecar(t, { topology: { queues: queues.map((name) => ({ name, durable: false })) } })
await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 15_000, what: 'sidecar ready' })
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const put = async (queue: string, bodies: (string | Buffer)[], props: Record<string, unknown> = {}) => {
  const ch = await amqp.channel()
  for (const b of bodies) ch.sendToQueue(queue, Buffer.isBuffer(b) ? b : Buffer.from(b), { messageId: `m-${String(b)}`, ...props })
}
const messages = (frames: Frame[], queue: string) => frames.filter((f) => f.op === 'message' && f['queue'] === queue)

t.test('subscribe, receive the documented shape, ack', async (t) => {
  const c = await wsClient(t, sc.api)
  const status = await c.next((f) => f.op === 'status', 'a status frame on connect')
  t.equal(status['upstream'], 'connected')
  await put(qBasic, ['hello'], { correlationId: 'c-1', contentType: 'text/plain', headers: { tenant: 'acme', n: 5 } })
  await put(qBasic, [Buffer.from([0xff, 0x00, 0xfe])])
  c.send({ op: 'subscribe', queue: qBasic, prefetch: 5 })
  const sub = await c.next((f) => f.op === 'subscribed', 'subscribed')
  t.match(sub, { queue: qBasic, prefetch: 5, active: true })
  const [m1, m2] = await c.count('message', 2)
  t.match(m1, {
    op: 'message',
    queue: qBasic,
    exchange: '',
    routingKey: qBasic,
    redelivered: false,
    body: 'hello',
    bodyEncoding: 'utf8',
    properties: { messageId: 'm-hello', correlationId: 'c-1', contentType: 'text/plain', headers: { tenant: 'acme', n: 5 } },
  })
  t.type(m1?.['deliveryId'], 'string')
  t.match(m2, { body: Buffer.from([0xff, 0x00, 0xfe]).toString('base64'), bodyEncoding: 'base64' })
  c.send({ op: 'ack', deliveryId: m1?.['deliveryId'], id: 'a1' })
  c.send({ op: 'ack', deliveryId: m2?.['deliveryId'], id: 'a2' })
  const r2 = await c.next((f) => f.op === 'result' && f['id'] === 'a2', 'ack result')
  t.equal(r2['result'], 'acked')
  c.send({ op: 'ack', deliveryId: m1?.['deliveryId'], id: 'again' })
  const again = await c.next((f) => f.op === 'error' && f['id'] === 'again', 'a second ack is refused')
  t.equal(again['code'], 'DELIVERY_UNKNOWN')
  // Acked for real: closing the socket requeues nothing.
  await c.close()
  await waitFor(() => sc.sidecar.consumers.status().subscriptions === 0, { timeoutMs: 5000, what: 'subscription gone' })
  t.equal(await amqp.depth(qBasic), 0, 'nothing came back after the socket closed')
})

t.test('a slow client never holds more than its prefetch', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qCredit, Array.from({ length: 10 }, (_, i) => `c${i}`))
  c.send({ op: 'subscribe', queue: qCredit, prefetch: 2 })
  await c.count('message', 2)
  // The broker holds back the other 8: the prefetch is the client's credit.
  await waitFor(async () => (await amqp.depth(qCredit)) === 8, { timeoutMs: 5000, what: '8 messages left in the queue' })
  t.equal(messages(c.frames, qCredit).length, 2, 'exactly prefetch messages outstanding')
  t.equal(sc.sidecar.consumers.leases.size, 2, 'the sidecar leases exactly prefetch')
  const first = messages(c.frames, qCredit)[0]
  c.send({ op: 'ack', deliveryId: first?.['deliveryId'] })
  await c.count('message', 3)
  await waitFor(async () => (await amqp.depth(qCredit)) === 7, { timeoutMs: 5000, what: '7 left after one ack' })
  t.equal(messages(c.frames, qCredit).length, 3, 'one ack buys exactly one more message')
  await c.close()
  await waitFor(async () => (await amqp.depth(qCredit)) === 9, { timeoutMs: 5000, what: 'the two unacked requeued on close' })
})

t.test('a socket closed mid-delivery: the message comes back redelivered', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qClose, ['x'])
  c.send({ op: 'subscribe', queue: qClose, prefetch: 1 })
  await c.count('message', 1)
  await c.close()
  const [m] = await amqp.drainUntil(qClose, 1)
  t.equal(m?.content.toString(), 'x')
  t.equal(m?.fields.redelivered, true)
})

t.test('an expired lease is requeued, told as stale, and redelivered', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qLease, ['lease'])
  c.send({ op: 'subscribe', queue: qLease, prefetch: 1, leaseMs: 300 })
  const [m] = await c.count('message', 1)
  const stale = await c.next((f) => f.op === 'stale', 'stale after the lease expired')
  t.same(stale['deliveryIds'], [m?.['deliveryId']])
  t.equal(stale['reason'], 'lease-expired')
  const again = await c.next((f) => f.op === 'message' && f['redelivered'] === true, 'the redelivery')
  t.equal(again['body'], 'lease')
  t.not(again['deliveryId'], m?.['deliveryId'])
  c.send({ op: 'ack', deliveryId: m?.['deliveryId'], id: 'late' })
  const late = await c.next((f) => f.op === 'result' && f['id'] === 'late', 'late ack answer')
  t.equal(late['result'], 'stale', 'the expired delivery cannot be acked')
  c.send({ op: 'ack', deliveryId: again['deliveryId'], id: 'ok' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ok', 'ack answer'))['result'], 'acked')
})

t.test('nack requeue=true brings it back; requeue=false drops it', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qNack, ['n'])
  c.send({ op: 'subscribe', queue: qNack, prefetch: 1 })
  const [m] = await c.count('message', 1)
  c.send({ op: 'nack', deliveryId: m?.['deliveryId'] })
  const again = await c.next((f) => f.op === 'message' && f['redelivered'] === true, 'redelivery after nack')
  c.send({ op: 'nack', deliveryId: again['deliveryId'], requeue: false, id: 'drop' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'drop', 'nack answer'))['result'], 'nacked')
  c.send({ op: 'unsubscribe', queue: qNack })
  await c.next((f) => f.op === 'unsubscribed', 'unsubscribed')
  t.equal(await amqp.depth(qNack), 0)
})

t.test('publish ops answer confirm, or an error with the HTTP codes', async (t) => {
  const c = await wsClient(t, sc.api)
  c.send({ op: 'publish', id: 'p1', exchange: 'amq.default', routingKey: qPublish, body: { a: 1 }, bodyEncoding: 'json', properties: { messageId: 'pub-1' }, headers: { h: 'v' } })
  const ok = await c.next((f) => f['id'] === 'p1', 'publish answer')
  t.same(ok, { op: 'confirm', id: 'p1', messageId: 'pub-1' })
  const [m] = await amqp.drainUntil(qPublish, 1)
  t.equal(m?.content.toString(), '{"a":1}')
  t.equal(m?.properties.headers?.['h'], 'v')

  c.send({ op: 'publish', id: 'p2', exchange: `no-such-${Date.now()}`, routingKey: 'x', body: 'b' })
  t.match(await c.next((f) => f['id'] === 'p2', 'missing exchange'), { op: 'error', code: 'EXCHANGE_NOT_FOUND' })
  c.send({ op: 'publish', id: 'p3', exchange: 'amq.default', routingKey: `nobody-${Date.now()}`, body: 'b' })
  t.match(await c.next((f) => f['id'] === 'p3', 'unroutable'), { op: 'error', code: 'UNROUTABLE' })
  c.send({ op: 'publish', id: 'p4', exchange: 5 })
  t.match(await c.next((f) => f['id'] === 'p4', 'invalid'), { op: 'error', code: 'INVALID_REQUEST' })
  c.send({ op: 'subscribe', id: 's1', queue: `no-such-queue-${Date.now()}` })
  t.match(await c.next((f) => f['id'] === 's1', 'missing queue'), { op: 'error', code: 'QUEUE_NOT_FOUND' })
  c.ws.send('not json')
  t.match(await c.next((f) => f.op === 'error' && f['id'] === undefined, 'bad frame'), { code: 'INVALID_REQUEST' })
  c.send({ op: 'ping', id: 'k' })
  await c.next((f) => f.op === 'pong', 'pong')
})

t.test('a plain GET /v1/ws (no upgrade) answers a documented 400', async (t) => {
  const res = await fetch(`${sc.api}/v1/ws`)
  t.equal(res.status, 400)
  t.match(await res.json(), { error: { code: 'INVALID_REQUEST', message: /WebSocket upgrade/ } })
})

t.test("subscribing to another connection's exclusive queue answers FORBIDDEN, not INTERNAL", async (t) => {
  const ch = await amqp.channel()
  const { queue: exclusive } = await ch.assertQueue('', { exclusive: true })
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', id: 'x1', queue: exclusive })
  t.match(await c.next((f) => f['id'] === 'x1', 'locked queue'), { op: 'error', code: 'FORBIDDEN' })
})
