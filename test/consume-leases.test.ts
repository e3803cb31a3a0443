/**
 * Long jobs against the shared broker: POST /v1/leases/extend and the WebSocket
 * extend op keep a delivery past its first expiry; a stale delivery answers
 * stale; consume.maxLeaseMs caps every lease (initial, extended, config).
 * "Past the first expiry" is shown by events, not sleeps: a second delivery
 * handed out later with the same short lease is seen expiring first.
 */
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config/index.js'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const CAP_MS = 5000
const SHORT_MS = 1000

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const queues = Array.from({ length: 3 }, (_, i) => amqp.name(`lease${i}`))
const [qHttp, qWs, qCap] = queues as [string, string, string]
const sc = await startSidecar(t, { topology: { queues: queues.map((name) => ({ name, durable: false })) }, consume: { maxLeaseMs: CAP_MS, leaseMs: SHORT_MS } })
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const put = async (queue: string, body: string) => (await amqp.channel()).sendToQueue(queue, Buffer.from(body), { messageId: `m-${body}` })
const post = async (path: string, body?: unknown) => {
  const res = await fetch(`${sc.api}${path}`, { method: 'POST', ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) })
  return { status: res.status, body: res.status === 204 ? null : ((await res.json()) as Record<string, unknown> & { error?: { code: string; message: string } }) }
}
const pullOne = async (queue: string, leaseMs: number) => {
  const r = await post(`/v1/queues/${queue}/pull?max=1&waitMs=5000&leaseMs=${leaseMs}`)
  if (r.status !== 200) throw new Error(`pull answered ${r.status}`)
  return (r.body as unknown as { deliveryId: string; body: string }[])[0] as { deliveryId: string; body: string }
}

t.test('HTTP: a lease extended past its first expiry is not redelivered; a stale one answers stale', async (t) => {
  await put(qHttp, 'a')
  const a = await pullOne(qHttp, SHORT_MS)
  const ext = await post('/v1/leases/extend', { deliveryIds: [a.deliveryId, 'nope.1.1'], leaseMs: 4000 })
  t.equal(ext.status, 200)
  t.match(ext.body, { results: [{ deliveryId: a.deliveryId, result: 'extended', expiresAt: String }, { deliveryId: 'nope.1.1', result: 'unknown' }] })
  // b is handed out after a, with the same short lease, and never extended: once it has expired, a's first expiry is past too.
  await put(qHttp, 'b')
  const b = await pullOne(qHttp, SHORT_MS)
  await waitFor(() => sc.sidecar.consumers.leases.get(b.deliveryId) === undefined, { timeoutMs: 15_000, what: "b's lease to expire" })
  const acked = await post('/v1/ack', { deliveryIds: [a.deliveryId] })
  t.same(acked.body, { results: [{ deliveryId: a.deliveryId, result: 'acked' }] }, 'the extended delivery is still ours to ack')
  const stale = await post('/v1/leases/extend', { deliveryIds: [b.deliveryId], leaseMs: 4000 })
  t.same(stale.body, { results: [{ deliveryId: b.deliveryId, result: 'stale' }] }, 'an expired (requeued) delivery cannot be extended')
  const again = await pullOne(qHttp, 4000)
  t.equal(again.body, 'b', 'only b came back; a was never requeued')
  t.equal((await post('/v1/ack', { deliveryIds: [again.deliveryId] })).status, 200)
})

t.test('WebSocket: extend keeps a delivery past its first expiry; stale and over-cap answers', async (t) => {
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: qWs, prefetch: 2, leaseMs: SHORT_MS, id: 's' })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  await put(qWs, 'a')
  const [a] = await c.count('message', 1)
  c.send({ op: 'extend', id: 'x1', deliveryIds: [a?.['deliveryId']], leaseMs: 4000 })
  const ext = await c.next((f) => f.op === 'extended' && f['id'] === 'x1', 'extended answer')
  t.match(ext['results'], [{ deliveryId: a?.['deliveryId'], result: 'extended' }])
  await put(qWs, 'b')
  const [, b] = await c.count('message', 2)
  const stale = await c.next((f) => f.op === 'stale' && f['reason'] === 'lease-expired', "b's lease expired")
  t.same(stale['deliveryIds'], [b?.['deliveryId']], 'only the unextended delivery expired')
  c.send({ op: 'extend', id: 'x2', deliveryIds: [b?.['deliveryId']], leaseMs: 1000 })
  t.match((await c.next((f) => f.op === 'extended' && f['id'] === 'x2', 'stale extend answer'))['results'], [{ result: 'stale' }])
  c.send({ op: 'extend', id: 'x3', deliveryIds: [a?.['deliveryId']], leaseMs: CAP_MS + 1 })
  const over = await c.next((f) => f.op === 'error' && f['id'] === 'x3', 'over-cap error')
  t.equal(over['code'], 'INVALID_REQUEST')
  t.match(over['message'], /consume\.maxLeaseMs \(5000\)/)
  c.send({ op: 'ack', id: 'ack-a', deliveryId: a?.['deliveryId'] })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ack-a', 'ack of a'))['result'], 'acked')
  t.notOk(c.frames.some((f) => f.op === 'message' && f['body'] === 'a' && f['redelivered'] === true), 'a was never redelivered')
  c.send({ op: 'subscribe', queue: qCap, leaseMs: CAP_MS + 1, id: 's2' })
  const refused = await c.next((f) => f.op === 'error' && f['id'] === 's2', 'subscribe over the cap')
  t.match(refused, { code: 'INVALID_REQUEST', message: /maxLeaseMs/ })
})

t.test('consume.maxLeaseMs caps pulls and extensions, counted from the delivery', async (t) => {
  const over = await post(`/v1/queues/${qCap}/pull?waitMs=0&leaseMs=${CAP_MS + 1}`)
  t.equal(over.status, 400)
  t.match(over.body?.error, { code: 'INVALID_REQUEST', message: /consume\.maxLeaseMs \(5000\)/ })
  await put(qCap, 'c')
  const c = await pullOne(qCap, SHORT_MS)
  const handedAt = Date.now()
  await waitFor(() => Date.now() > handedAt, { timeoutMs: 1000, what: 'the clock to move' })
  // From the delivery, the full cap is no longer left: the request is refused whole, nothing extended.
  const capped = await post('/v1/leases/extend', { deliveryIds: [c.deliveryId], leaseMs: CAP_MS })
  t.equal(capped.status, 400)
  t.match(capped.body?.error?.message, /can be extended by at most \d+ ms/)
  const tooLong = await post('/v1/leases/extend', { deliveryIds: [c.deliveryId], leaseMs: CAP_MS + 1 })
  t.equal(tooLong.status, 400)
  t.equal((await post('/v1/ack', { deliveryIds: [c.deliveryId] })).status, 200)
  const bad = await post('/v1/leases/extend', { deliveryIds: [], leaseMs: 1000 })
  t.equal(bad.status, 400, 'an empty list is refused')
})

t.test('config: leases and push schedules are checked against consume.maxLeaseMs at load', async (t) => {
  const load = (consume: Record<string, unknown>) => () => loadConfig({ file: null, env: {}, overrides: { consume } })
  t.equal(load({})().config.consume.maxLeaseMs, 25 * 60_000, 'default 25 min')
  t.throws(load({ leaseMs: 120_000, maxLeaseMs: 60_000 }), ConfigError)
  t.throws(load({ leaseMs: 120_000, maxLeaseMs: 60_000 }), /consume\.leaseMs \(120000\) must not exceed consume\.maxLeaseMs \(60000\)/)
  const push = (p: Record<string, unknown>) => ({ push: [{ queue: 'q', url: 'http://127.0.0.1:1/', ...p }] })
  // 5 x 10 s + 4 x 30 s = 170 s: fine under 25 min, over a 60 s cap.
  t.doesNotThrow(load(push({})))
  t.throws(load({ ...push({}), maxLeaseMs: 60_000, leaseMs: 30_000 }), /can hold a message unacked for 170000 ms/)
  t.throws(load(push({ retry: { maxAttempts: 101 } })), /maxAttempts: must be an integer from 1 to 100/)
  t.throws(load(push({ retry: { maxDelayMs: 600_001 } })), /maxDelayMs: must be an integer from 0 to 600000/)
  t.throws(load(push({ retry: { initialDelayMs: 5000, maxDelayMs: 1000 } })), /initialDelayMs must not exceed/)
  t.throws(load(push({ timeoutMs: 15 * 60_000 + 1 })), /timeoutMs: must be an integer from 1 to 900000/)
})
