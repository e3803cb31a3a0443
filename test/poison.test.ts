/**
 * Poison messages (issue 14 item 3), against the shared broker with real
 * quorum queues and a real dead-letter setup, all declared through the
 * sidecar's topology config: deliveryCount in the delivered message,
 * x-delivery-limit dead-lettering a message nacked too often, and
 * POST /v1/queues/{queue}/replay moving dead-lettered messages back where
 * they came from (confirm before ack), skipping and counting what cannot go.
 */
import t from 'tap'
import { loadConfig } from '../src/config/index.js'
import { directAmqp } from './fixtures/amqp.js'
import { metric } from './fixtures/faults.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { errorCode, request } from './fixtures/http.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const LIMIT = 2
const amqp = await directAmqp(t, SHARED_BROKER_URL)
const qq = amqp.name('poison-qq')
const qc = amqp.name('poison-classic')
const dlq = amqp.name('poison-dlq')
const exchange = `${amqp.name('poison-ex')}`
const dlx = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq }
t.teardown(async () => (await amqp.channel()).deleteExchange(exchange).catch(() => {}))

const sc = await startSidecar(t, {
  topology: {
    exchanges: [{ name: exchange, type: 'direct', durable: false, autoDelete: false }],
    queues: [
      { name: qq, durable: true, arguments: { 'x-queue-type': 'quorum', 'x-delivery-limit': LIMIT, ...dlx } },
      { name: qc, durable: false, arguments: dlx },
      { name: dlq, durable: false },
    ],
    bindings: [{ exchange, queue: qc, routingKey: 'order.created' }],
  },
})
await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'sidecar ready' })

const post = (path: string, body?: unknown, headers: Record<string, string> = {}) =>
  request(sc.api, path, { method: 'POST', headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body), timeoutMs: 30_000 })

interface Delivered {
  deliveryId: string
  deliveryCount?: number
  body: string
  properties: { messageId?: string; headers: Record<string, unknown> }
}

async function pullOne(queue: string): Promise<Delivered> {
  const res = await post(`/v1/queues/${queue}/pull?max=1&waitMs=10000`)
  if (res.status !== 200) throw new Error(`pull answered ${res.status}: ${res.text}`)
  return (res.json as Delivered[])[0] as Delivered
}

t.test('x-delivery-limit is checked at config load: an integer, on a quorum queue', async (t) => {
  const load = (args: Record<string, unknown>) => () => loadConfig({ file: null, env: {}, overrides: { topology: { queues: [{ name: 'q', arguments: args }] } } })
  t.throws(load({ 'x-queue-type': 'quorum', 'x-delivery-limit': 'three' }), /x-delivery-limit: must be a non-negative integer/)
  t.throws(load({ 'x-delivery-limit': 3 }), /only quorum queues count deliveries/)
  t.doesNotThrow(load({ 'x-queue-type': 'quorum', 'x-delivery-limit': 3 }))
})

t.test('a quorum queue: deliveryCount counts attempts, and x-delivery-limit dead-letters the poison message', async (t) => {
  const pub = await request(sc.api, `/v1/publish/amq.default/${qq}`, { method: 'POST', headers: { 'x-message-id': 'poison-1' }, body: 'poison' })
  t.equal(pub.status, 200, pub.text)
  const counts: (number | undefined)[] = []
  for (let i = 0; i <= LIMIT; i++) {
    const m = await pullOne(qq)
    t.equal(m.properties.messageId, 'poison-1')
    counts.push(m.deliveryCount)
    const nack = await post('/v1/nack', { deliveryIds: [m.deliveryId], requeue: true })
    t.equal(nack.status, 200)
  }
  // RabbitMQ 3.10 sets x-delivery-count from the first redelivery on (a basic.get shows 0 on the first).
  t.same(counts, [undefined, 1, 2], 'no deliveryCount on the first delivery, then one more per attempt')
  await waitFor(async () => (await amqp.depth(dlq)) === 1, { timeoutMs: 15_000, what: 'the message in the dead-letter queue' })
  t.equal(await amqp.depth(qq), 0, 'gone from the quorum queue')
  // Look without taking it (the replay test below needs it where the broker put it).
  const ch = await amqp.channel()
  const dead = await ch.get(dlq, { noAck: false })
  if (dead === false) throw new Error('the dead-letter queue is empty')
  ch.nack(dead, false, true)
  t.equal(dead.properties.messageId, 'poison-1', `after ${LIMIT + 1} attempts the message was dead-lettered`)
  const death = (dead.properties.headers?.['x-death'] as Record<string, unknown>[] | undefined)?.[0]
  t.match(death, { reason: 'delivery_limit', queue: qq }, 'for its delivery limit')
})

t.test('a classic queue gives no delivery count: the field is absent', async (t) => {
  await request(sc.api, `/v1/publish/amq.default/${qc}`, { method: 'POST', body: 'plain' })
  const m = await pullOne(qc)
  t.notOk('deliveryCount' in m, 'no deliveryCount')
  t.equal((await post('/v1/ack', { deliveryIds: [m.deliveryId] })).status, 200)
})

t.test('replay: back to the first-death exchange and routing key, confirm before ack; no x-death is skipped and counted', async (t) => {
  // A message rejected from a queue bound to a direct exchange: it must go back through that exchange and key.
  t.equal((await request(sc.api, `/v1/publish/${exchange}/order.created`, { method: 'POST', headers: { 'x-message-id': 'rejected-1' }, body: 'rejected' })).status, 200)
  const m = await pullOne(qc)
  t.equal((await post('/v1/nack', { deliveryIds: [m.deliveryId], requeue: false })).status, 200)
  await waitFor(async () => (await amqp.depth(dlq)) === 2, { timeoutMs: 10_000, what: 'two dead-lettered messages' })
  // And one that never died: published straight into the dead-letter queue.
  ;(await amqp.channel()).sendToQueue(dlq, Buffer.from('stray'), { messageId: 'stray-1' })
  await waitFor(async () => (await amqp.depth(dlq)) === 3, { timeoutMs: 10_000, what: 'three messages in the dead-letter queue' })

  const one = await post(`/v1/queues/${dlq}/replay?max=1`)
  t.equal(one.status, 200, one.text)
  t.match(one.json, { queue: dlq, examined: 1 }, 'max bounds the messages examined')

  const res = await post(`/v1/queues/${dlq}/replay?max=10`)
  t.equal(res.status, 200, res.text)
  const total = [one.json, res.json] as { replayed: number; skipped: number; skippedByReason: Record<string, number> }[]
  t.equal(total.reduce((n, r) => n + r.replayed, 0), 2, 'both dead-lettered messages replayed')
  t.equal(total.reduce((n, r) => n + (r.skippedByReason['no-x-death'] ?? 0), 0), 1, 'the stray one skipped as no-x-death')
  const left = await amqp.drain(dlq)
  t.same(left.map((x) => x.properties.messageId), ['stray-1'], 'only the stray message stays in the dead-letter queue')
  // Read through the sidecar: its pull consumer on that queue would hold the message from a direct read.
  const back = (await pullOne(qc)) as Delivered & { exchange: string; routingKey: string }
  t.equal(back.properties.messageId, 'rejected-1', 'the rejected message is back in its queue')
  t.equal(back.exchange, exchange, 'through its exchange')
  t.equal(back.routingKey, 'order.created', 'with its routing key')
  t.ok(Array.isArray(back.properties.headers['x-death']), 'its x-death history stays with it')
  t.equal((await post('/v1/ack', { deliveryIds: [back.deliveryId] })).status, 200)
  const again = await pullOne(qq)
  t.equal(again.properties.messageId, 'poison-1', 'the poison message is back in the quorum queue')
  t.equal((await post('/v1/ack', { deliveryIds: [again.deliveryId] })).status, 200)
  t.equal(await metric(sc.ops, 'amqp_sidecar_replay_messages_total', 'outcome="replayed"'), 2)
  t.equal(await metric(sc.ops, 'amqp_sidecar_replay_messages_total', 'outcome="no-x-death"'), 1)
})

t.test('replay: a message whose route is gone stays in the dead-letter queue (unroutable); bad queues are refused', async (t) => {
  t.equal((await request(sc.api, `/v1/publish/${exchange}/order.created`, { method: 'POST', headers: { 'x-message-id': 'orphan-1' }, body: 'orphan' })).status, 200)
  const m = await pullOne(qc)
  t.equal((await post('/v1/nack', { deliveryIds: [m.deliveryId], requeue: false })).status, 200)
  await waitFor(async () => (await amqp.depth(dlq)) === 1, { timeoutMs: 10_000, what: 'the dead-lettered message' })
  const ch = await amqp.channel()
  await ch.unbindQueue(qc, exchange, 'order.created')
  t.teardown(() => ch.bindQueue(qc, exchange, 'order.created'))
  const res = await post(`/v1/queues/${dlq}/replay`)
  t.equal(res.status, 200, res.text)
  t.match(res.json, { replayed: 0, skipped: 1, skippedByReason: { unroutable: 1 } })
  const left = await amqp.drain(dlq)
  t.same(left.map((x) => x.properties.messageId), ['orphan-1'], 'not lost: still in the dead-letter queue')

  const missing = await post('/v1/queues/no-such-queue-for-replay/replay')
  t.equal(`${missing.status} ${errorCode(missing)}`, '404 QUEUE_NOT_FOUND')
  const bad = await post(`/v1/queues/${dlq}/replay?max=0`)
  t.equal(`${bad.status} ${errorCode(bad)}`, '400 INVALID_REQUEST')
})

t.test('replay under a connection reset: every message is still in the dead-letter queue or back in its own (never lost)', async (t) => {
  const n = 300
  const qsrc = amqp.name('poison-src')
  const dlq2 = amqp.name('poison-dlq2')
  const ch = await amqp.channel()
  await ch.assertQueue(dlq2, { durable: false })
  await ch.assertQueue(qsrc, { durable: false, arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq2 } })
  for (let i = 0; i < n; i++) ch.sendToQueue(qsrc, Buffer.from(`m${i}`), { messageId: `r-${i}` })
  await waitFor(async () => (await amqp.depth(qsrc)) === n, { timeoutMs: 15_000, what: `${n} messages in the source queue` })
  for (let i = 0; i < n; i++) {
    const m = await ch.get(qsrc, { noAck: false })
    if (m !== false) ch.nack(m, false, false)
  }
  await waitFor(async () => (await amqp.depth(dlq2)) === n, { timeoutMs: 15_000, what: `${n} dead-lettered messages` })

  const shared = new URL(SHARED_BROKER_URL)
  const proxy = await startFaultProxy({ upstreamHost: shared.hostname, upstreamPort: Number(shared.port || 5672) })
  t.teardown(() => proxy.close())
  const via = new URL(SHARED_BROKER_URL)
  via.port = String(proxy.port)
  const behind = await startSidecar(t, { amqp: { urls: [via.toString()] }, log: { level: 'info' } })
  await waitFor(async () => (await fetch(`${behind.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the proxied sidecar ready' })

  const pending = request(behind.api, `/v1/queues/${dlq2}/replay?max=1000`, { method: 'POST', headers: { 'x-timeout-ms': '60000' }, timeoutMs: 90_000 })
  await waitFor(async () => (await amqp.depth(qsrc)) > 0, { timeoutMs: 30_000, what: 'the replay under way' })
  proxy.resetPeers('client')
  const res = await pending
  const body = res.json as { replayed?: number; stopped?: string }
  t.ok(res.status === 200 || (res.status === 503 && errorCode(res) === 'UPSTREAM_UNAVAILABLE'), `a documented answer (${res.status} ${res.text})`)
  t.comment(`replay answered ${res.status}: replayed ${body.replayed}, stopped ${body.stopped}`)

  // Once the broker has requeued what the dead channels held, every id is in one queue or the other.
  await waitFor(async () => (await amqp.depth(dlq2)) + (await amqp.depth(qsrc)) >= n, { timeoutMs: 30_000, what: 'unacked messages requeued' })
  const ids = [...(await amqp.drain(dlq2)), ...(await amqp.drain(qsrc))].map((m) => String(m.properties.messageId))
  const missing = Array.from({ length: n }, (_, i) => `r-${i}`).filter((id) => !ids.includes(id))
  t.same(missing, [], 'no message lost')
  const duplicates = ids.length - new Set(ids).size
  t.ok(duplicates <= 1, `at most the one message in flight at the reset is duplicated (${duplicates})`)
})

t.test('replay respects publish.allowedExchanges: a message from an exchange apps may not publish to stays put', async (t) => {
  const src = amqp.name('poison-src3')
  const dead = amqp.name('poison-dlq3')
  const ch = await amqp.channel()
  await ch.assertQueue(dead, { durable: false })
  await ch.assertQueue(src, { durable: false, arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dead } })
  ch.sendToQueue(src, Buffer.from('from the default exchange'), { messageId: 'guarded-1' })
  await waitFor(async () => (await amqp.depth(src)) === 1, { timeoutMs: 10_000, what: 'the message in its queue' })
  const m = await ch.get(src, { noAck: false })
  if (m === false) throw new Error('no message to reject')
  ch.nack(m, false, false)
  await waitFor(async () => (await amqp.depth(dead)) === 1, { timeoutMs: 10_000, what: 'the dead-lettered message' })
  const guarded = await startSidecar(t, { publish: { allowedExchanges: ['orders'] } })
  await waitFor(async () => (await fetch(`${guarded.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the guarded sidecar ready' })
  const res = await request(guarded.api, `/v1/queues/${dead}/replay`, { method: 'POST' })
  t.equal(res.status, 200, res.text)
  t.match(res.json, { replayed: 0, skipped: 1, skippedByReason: { 'exchange-not-allowed': 1 }, stopped: 'empty' })
  t.same((await amqp.drain(dead)).map((x) => x.properties.messageId), ['guarded-1'], 'still in the dead-letter queue')
  t.equal(await amqp.depth(src), 0, 'not sent back')
})
