/**
 * Consume-side leaks found in review, against the shared broker:
 * - a WebSocket unsubscribed with deliveries outstanding, then closed: its
 *   deliveries are requeued at once and its channel closed (not left until the
 *   lease expires, and then never closed);
 * - pulls of a missing queue leave no subscription behind;
 * - a WebSocket client that stops reading is cut once a lease expires before its
 *   message was even written, instead of the sidecar buffering every redelivery.
 */
import type { Socket } from 'node:net'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const queues = Array.from({ length: 2 }, (_, i) => amqp.name(`leak${i}`))
const [qUnsub, qSlow] = queues as [string, string]
const sc = await startSidecar(t, { topology: { queues: queues.map((name) => ({ name, durable: false })) } })
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

t.test('unsubscribe with a delivery outstanding, then close the socket: requeued at once, channel closed', async (t) => {
  const ch = await amqp.channel()
  ch.sendToQueue(qUnsub, Buffer.from('u'))
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: qUnsub, prefetch: 1, leaseMs: 600_000 })
  await c.count('message', 1)
  c.send({ op: 'unsubscribe', queue: qUnsub })
  const unsub = await c.next((f) => f.op === 'unsubscribed', 'unsubscribed')
  t.equal(unsub['outstanding'], 1, 'the delivery is still leased')
  await c.close()
  // Well before the 10-minute lease: the socket's close gives it back.
  const [m] = await amqp.drainUntil(qUnsub, 1, 5_000)
  t.equal(m?.content.toString(), 'u', 'the message is back in the queue')
  t.equal(m?.fields.redelivered, true)
  await waitFor(() => sc.sidecar.consumers.status().subscriptions === 0, { timeoutMs: 5_000, what: 'no subscription left' })
  t.equal(sc.sidecar.consumers.leases.size, 0, 'no lease left')
})

t.test('pulls of a missing queue leave no subscription behind', async (t) => {
  const missing = amqp.name('leak-missing')
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${sc.api}/v1/queues/${missing}/pull?waitMs=0`, { method: 'POST' })
    t.equal(res.status, 404)
    t.match(await res.json(), { error: { code: 'QUEUE_NOT_FOUND' } })
  }
  t.equal(sc.sidecar.consumers.status().subscriptions, 0, 'the registry forgot every failed pull subscription')
  t.equal(sc.sidecar.consumers.status().pull.length, 0, 'no pull queue kept for the missing queue')
})

t.test('a WebSocket client that stops reading is cut, not buffered for without bound', async (t) => {
  const ch = await amqp.channel()
  // Big enough that a few copies fill the loopback socket buffers.
  ch.sendToQueue(qSlow, Buffer.alloc(2 * 1024 * 1024, 'a'))
  const c = await wsClient(t, sc.api)
  // The app stops reading its socket (event loop stuck, or just slow).
  ;(c.ws as unknown as { _socket: Socket })._socket.pause()
  c.send({ op: 'subscribe', queue: qSlow, prefetch: 1, leaseMs: 100 })
  // Without the cut, every 100 ms another 2 MiB copy is queued behind the unread ones
  // until the server's ping notices, 30-60 s later.
  await waitFor(() => sc.sidecar.consumers.status().websocketClients === 0, { timeoutMs: 15_000, what: 'the sidecar to drop the client that does not read' })
  c.ws.terminate()
  const [m] = await amqp.drainUntil(qSlow, 1, 10_000)
  t.equal(m?.content.length, 2 * 1024 * 1024, 'the message is back in the queue')
  await waitFor(() => sc.sidecar.consumers.leases.size === 0, { timeoutMs: 5_000, what: 'no lease left' })
})
