/**
 * Batched ack/nack over GET /v1/ws against the shared broker: `ack
 * {deliveryIds}` settles a list and answers one `settled` frame grouping the
 * ids (acked, stale, unknown); bad lists are refused whole, settling nothing.
 * Also lease expiry with one timer per lease length: leases still expire and
 * requeue, and extend still moves one out of its list.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient, type Frame } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const queues = Array.from({ length: 4 }, (_, i) => amqp.name(`wsb${i}`))
const [qBatch, qStale, qBad, qExpiry] = queues as [string, string, string, string]
const sc = await startSidecar(t, { topology: { queues: queues.map((name) => ({ name, durable: false })) } })
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const put = async (queue: string, bodies: string[]) => {
  const ch = await amqp.channel()
  for (const b of bodies) ch.sendToQueue(queue, Buffer.from(b), { messageId: `m-${b}` })
}
const idsOf = (frames: Frame[]) => frames.map((f) => f['deliveryId'] as string)

t.test('ack {deliveryIds}: one settled frame with acked, stale and unknown ids; the messages are really settled', async (t) => {
  // A stale id: a delivery whose lease expired (requeued) on another socket, which then left.
  const other = await wsClient(t, sc.api)
  await put(qStale, ['s'])
  other.send({ op: 'subscribe', queue: qStale, prefetch: 1, leaseMs: 200 })
  const [s] = await other.count('message', 1)
  await other.next((f) => f.op === 'stale' && f['reason'] === 'lease-expired', 'the lease to expire')
  await other.close()
  const staleId = s?.['deliveryId'] as string

  const c = await wsClient(t, sc.api)
  await put(qBatch, ['a', 'b', 'c', 'd', 'e'])
  c.send({ op: 'subscribe', queue: qBatch, prefetch: 10 })
  const ids = idsOf(await c.count('message', 5))
  c.send({ op: 'ack', id: 'b1', deliveryIds: [ids[0], staleId, ids[1], 'nope.1.1', ids[2]] })
  const settled = await c.next((f) => f.op === 'settled' && f['id'] === 'b1', 'the settled frame')
  t.same(settled, { op: 'settled', id: 'b1', acked: [ids[0], ids[1], ids[2]], stale: [staleId], unknown: ['nope.1.1'] })
  t.equal(c.ops('settled').length, 1, 'one frame for the batch')
  t.equal(c.ops('error').length + c.ops('stale').length + c.ops('result').length, 0, 'and no frame per id')
  c.send({ op: 'nack', deliveryIds: [ids[3], ids[4]], requeue: false })
  const nacked = await c.next((f) => f.op === 'settled' && f['id'] === undefined, 'the nack batch answer')
  t.same(nacked, { op: 'settled', nacked: [ids[3], ids[4]], stale: [], unknown: [] })
  c.send({ op: 'ack', id: 'again', deliveryIds: [ids[0]] })
  t.same((await c.next((f) => f.id === 'again', 'a second ack of the same id'))['unknown'], [ids[0]])
  // Settled for real: closing the socket requeues nothing.
  await c.close()
  await waitFor(() => sc.sidecar.consumers.status().subscriptions === 0, { timeoutMs: 5000, what: 'subscriptions gone' })
  t.equal(await amqp.depth(qBatch), 0, 'acked and nacked (requeue=false) messages are gone from the queue')
})

t.test('bad batches are refused whole, with a clear error, and settle nothing', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qBad, ['x'])
  c.send({ op: 'subscribe', queue: qBad, prefetch: 1 })
  const [m] = await c.count('message', 1)
  const id = m?.['deliveryId'] as string
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['empty', { op: 'ack', deliveryIds: [] }, /deliveryIds must be a list of 1-1000 ids/],
    ['too long', { op: 'ack', deliveryIds: [id, ...Array.from({ length: 1000 }, (_, i) => `x.1.${i}`)] }, /deliveryIds must be a list of 1-1000 ids/],
    ['not a list', { op: 'nack', deliveryIds: id }, /deliveryIds must be a list/],
    ['not strings', { op: 'ack', deliveryIds: [id, 7] }, /each deliveryId must be a string/],
    ['empty string', { op: 'ack', deliveryIds: [id, ''] }, /each deliveryId must be a string of 1-255/],
    ['duplicates', { op: 'ack', deliveryIds: [id, 'y.1.1', id] }, /lists ".*" twice; nothing was settled/],
    ['both forms', { op: 'ack', deliveryId: id, deliveryIds: [id] }, /deliveryId \(one\) or deliveryIds \(a list\), not both/],
    ['neither form', { op: 'nack' }, /nack needs deliveryId \(one\) or deliveryIds/],
    ['bad requeue', { op: 'nack', deliveryIds: [id], requeue: 'no' }, /requeue must be true or false/],
  ]
  for (const [name, frame, message] of cases) {
    c.send({ ...frame, id: name })
    const e = await c.next((f) => f['id'] === name, name)
    t.match(e, { op: 'error', code: 'INVALID_REQUEST', message }, name)
  }
  t.equal(c.ops('settled').length, 0, 'no batch was answered as settled')
  c.send({ op: 'ack', deliveryId: id, id: 'ok' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ok', 'the single ack'))['result'], 'acked', 'the delivery was still outstanding')
})

t.test('leases of one length share one expiry timer; they still expire and requeue, and extend still moves one', async (t) => {
  const leases = sc.sidecar.consumers.leases
  // Lists of lengths used before (earlier tests) may still hold a timer that has not fired yet: count from here.
  const before = leases.expiryTimers
  const c = await wsClient(t, sc.api)
  const bodies = Array.from({ length: 20 }, (_, i) => `e${i}`)
  await put(qExpiry, bodies)
  c.send({ op: 'subscribe', queue: qExpiry, prefetch: 50, leaseMs: 1000 })
  const first = await c.count('message', 20)
  const ids = idsOf(first)
  t.equal(leases.expiryTimers - before, 1, '20 leases of one length: one timer')
  const kept = ids[7] as string
  c.send({ op: 'extend', id: 'x', deliveryIds: [kept], leaseMs: 8000 })
  t.match(await c.next((f) => f.op === 'extended', 'extended'), { results: [{ deliveryId: kept, result: 'extended' }] })
  t.equal(leases.expiryTimers - before, 2, 'the extended lease moved to the list of its new length')
  const expired = await waitFor(
    () => {
      const got = c.ops('stale').flatMap((f) => f['deliveryIds'] as string[])
      return got.length >= 19 ? got : undefined
    },
    { timeoutMs: 15_000, what: '19 leases to expire' },
  )
  t.same(new Set(expired), new Set(ids.filter((id) => id !== kept)), 'every lease expired but the extended one')
  const again = await waitFor(() => (c.ops('message').length >= 39 ? c.ops('message').slice(20) : undefined), { timeoutMs: 15_000, what: '19 redeliveries' })
  t.ok(again.every((f) => f['redelivered'] === true), 'the expired ones came back redelivered')
  c.send({ op: 'ack', id: 'all', deliveryIds: [kept, ...idsOf(again)] })
  const settled = await c.next((f) => f.op === 'settled' && f['id'] === 'all', 'the batch ack')
  t.equal((settled['acked'] as string[]).length, 20, 'the extended lease and the redeliveries are acked')
  await c.close()
  await waitFor(() => sc.sidecar.consumers.status().subscriptions === 0, { timeoutMs: 5000, what: 'subscription gone' })
  t.equal(await amqp.depth(qExpiry), 0)
})
