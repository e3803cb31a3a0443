/**
 * HTTP long-poll pull and list ack/nack against the shared broker: 204 on
 * nothing, long-poll wake-up, results per id, lease expiry, validation,
 * the allow-list, and a pull that takes off the queue only what it hands out.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

interface Delivered {
  deliveryId: string
  queue: string
  body: string
  bodyEncoding: string
  redelivered: boolean
  properties: Record<string, unknown>
}

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const queues = Array.from({ length: 6 }, (_, i) => amqp.name(`pull${i}`))
const [qBasic, qPoll, qLease, qNack, qIdle, qBad] = queues as [string, string, string, string, string, string]
const sc = await startSidecar(t, { topology: { queues: queues.map((name) => ({ name, durable: false })) }, consume: { pullIdleMs: 500, defaultPrefetch: 10 } })
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const put = async (queue: string, bodies: string[]) => {
  const ch = await amqp.channel()
  for (const b of bodies) ch.sendToQueue(queue, Buffer.from(b), { messageId: `m-${b}` })
}
const pull = (queue: string, query = '') => fetch(`${sc.api}/v1/queues/${queue}/pull?${query}`, { method: 'POST' })
const post = async (path: string, body: unknown) => {
  const res = await fetch(`${sc.api}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}
/** Pulls until n messages arrived (a pull answers as soon as one is there). */
const pullN = async (queue: string, n: number, query = 'waitMs=2000') => {
  const out: Delivered[] = []
  await waitFor(
    async () => {
      const res = await pull(queue, query)
      if (res.status === 200) out.push(...((await res.json()) as Delivered[]))
      return out.length >= n
    },
    { timeoutMs: 10_000, what: `${n} pulled messages` },
  )
  return out
}

t.test('nothing there: 204 after waitMs', async (t) => {
  const started = Date.now()
  const res = await pull(qBasic, 'waitMs=200')
  t.equal(res.status, 204)
  t.ok(Date.now() - started >= 190, 'waited')
})

t.test('pull, then ack the list: a result per id', async (t) => {
  await put(qBasic, ['a', 'b', 'c'])
  const got = await pullN(qBasic, 3, 'max=10&waitMs=2000')
  t.same(got.map((m) => m.body).sort(), ['a', 'b', 'c'])
  t.match(got[0], { queue: qBasic, bodyEncoding: 'utf8', redelivered: false, properties: { headers: {} } })
  const ids = got.map((m) => m.deliveryId)
  const acked = await post('/v1/ack', { deliveryIds: [...ids, 'nope'] })
  t.equal(acked.status, 200)
  t.same(acked.body, { results: [...ids.map((deliveryId) => ({ deliveryId, result: 'acked' })), { deliveryId: 'nope', result: 'unknown' }] })
  const single = await post('/v1/ack', { deliveryId: ids[0] })
  t.equal(single.status, 404)
  t.match(single.body, { error: { code: 'DELIVERY_UNKNOWN' } })
})

t.test('a waiting pull wakes up when a message arrives', async (t) => {
  // Subscribe first (an empty pull), so the next pull is a pure long-poll.
  t.equal((await pull(qPoll, 'waitMs=0')).status, 204)
  const started = Date.now()
  const pending = pull(qPoll, 'waitMs=20000')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === qPoll && p.waiting === 1), { timeoutMs: 5000, what: 'the pull to wait' })
  await put(qPoll, ['late'])
  const res = await pending
  t.equal(res.status, 200)
  const [m] = (await res.json()) as Delivered[]
  t.equal(m?.body, 'late')
  t.ok(Date.now() - started < 10_000, 'answered long before waitMs')
  t.equal((await post('/v1/ack', { deliveryId: m?.deliveryId })).status, 200)
})

t.test('a pull whose client went away takes nothing', async (t) => {
  const ac = new AbortController()
  const pending = pull(qPoll, 'waitMs=20000')
  void pending.catch(() => {})
  const aborted = fetch(`${sc.api}/v1/queues/${qPoll}/pull?waitMs=20000`, { method: 'POST', signal: ac.signal }).catch(() => 'aborted')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === qPoll && p.waiting === 2), { timeoutMs: 5000, what: 'two waiting pulls' })
  ac.abort()
  t.equal(await aborted, 'aborted')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === qPoll && p.waiting === 1), { timeoutMs: 5000, what: 'the aborted pull forgotten' })
  await put(qPoll, ['for-the-live-one'])
  const res = await pending
  t.equal(res.status, 200)
  const [m] = (await res.json()) as Delivered[]
  t.equal(m?.body, 'for-the-live-one')
  t.equal(sc.sidecar.consumers.leases.size, 1, 'only the live pull holds a lease')
  await post('/v1/ack', { deliveryIds: [m?.deliveryId] })
})

t.test('an expired lease is requeued; a late ack answers stale (409 for a single id)', async (t) => {
  await put(qLease, ['x'])
  const [m] = await pullN(qLease, 1, 'leaseMs=200&waitMs=2000')
  const [again] = await pullN(qLease, 1, 'waitMs=5000')
  t.equal(again?.body, 'x')
  t.equal(again?.redelivered, true)
  const late = await post('/v1/ack', { deliveryIds: [m?.deliveryId] })
  t.same(late.body, { results: [{ deliveryId: m?.deliveryId, result: 'stale' }] })
  const single = await post('/v1/ack', { deliveryId: m?.deliveryId })
  t.equal(single.status, 409)
  t.match(single.body, { error: { code: 'DELIVERY_STALE' } })
  t.same((await post('/v1/ack', { deliveryIds: [again?.deliveryId] })).body, { results: [{ deliveryId: again?.deliveryId, result: 'acked' }] })
})

t.test('nack requeues by default; requeue=false drops', async (t) => {
  await put(qNack, ['n'])
  const [m] = await pullN(qNack, 1)
  t.same((await post('/v1/nack', { deliveryIds: [m?.deliveryId] })).body, { results: [{ deliveryId: m?.deliveryId, result: 'nacked' }] })
  const [again] = await pullN(qNack, 1)
  t.equal(again?.redelivered, true)
  t.equal((await post('/v1/nack', { deliveryIds: [again?.deliveryId], requeue: false })).status, 200)
  t.equal((await pull(qNack, 'waitMs=300')).status, 204)
})

t.test('encoding=base64 forces base64 bodies', async (t) => {
  await put(qBasic, ['plain'])
  const [m] = await pullN(qBasic, 1, 'encoding=base64&waitMs=2000')
  t.equal(m?.bodyEncoding, 'base64')
  t.equal(Buffer.from(m?.body ?? '', 'base64').toString(), 'plain')
  await post('/v1/ack', { deliveryIds: [m?.deliveryId] })
})

t.test('a pull takes only what it hands out: another consumer of the queue gets the rest at once, not redelivered', async (t) => {
  await put(qIdle, ['1', '2', '3', '4', '5'])
  const [m] = await pullN(qIdle, 1, 'max=1&waitMs=2000')
  // Nothing prefetched for nobody: the four others are still ready in the queue (a pull that timed out
  // on a loaded machine may hold a late basic.get answer for a moment before giving it back).
  await waitFor(async () => (await amqp.depth(qIdle)) === 4, { timeoutMs: 5000, what: 'the four others ready in the queue' })
  const other = await amqp.channel()
  const seen: { body: string; redelivered: boolean }[] = []
  await other.prefetch(10)
  const { consumerTag } = await other.consume(qIdle, (msg) => {
    if (!msg) return
    seen.push({ body: msg.content.toString(), redelivered: msg.fields.redelivered })
    other.ack(msg)
  })
  t.teardown(() => other.cancel(consumerTag).catch(() => {}))
  await waitFor(() => seen.length === 4, { timeoutMs: 10_000, what: 'the other consumer to get the four others' })
  t.same(seen.map((x) => x.body).sort(), ['2', '3', '4', '5'])
  t.ok(seen.every((x) => !x.redelivered), 'none was held and given back (redelivered=false)')
  t.same((await post('/v1/ack', { deliveryIds: [m?.deliveryId] })).body, { results: [{ deliveryId: m?.deliveryId, result: 'acked' }] })
  await other.cancel(consumerTag)
})

t.test('a pull that timed out while the waiting consumer delivered gives the message back', async (t) => {
  // Two waiting pulls share a consumer of prefetch 2; when both are done nothing is left with the sidecar.
  const a = pull(qIdle, 'max=1&waitMs=20000')
  const b = pull(qIdle, 'max=1&waitMs=20000')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === qIdle && p.waiting === 2), { timeoutMs: 5000, what: 'two waiting pulls' })
  await put(qIdle, ['w1', 'w2', 'w3'])
  const got = [...((await (await a).json()) as Delivered[]), ...((await (await b).json()) as Delivered[])]
  t.equal(got.length, 2)
  await waitFor(async () => (await amqp.depth(qIdle)) === 1, { timeoutMs: 10_000, what: 'the third message ready in the queue' })
  t.equal(sc.sidecar.consumers.leases.size, 2, 'only the two handed out are leased')
  await post('/v1/ack', { deliveryIds: got.map((m) => m.deliveryId) })
  const [last] = await pullN(qIdle, 1, 'max=10&waitMs=0')
  t.equal(last?.body, 'w3')
  await post('/v1/ack', { deliveryIds: [last?.deliveryId] })
})

t.test('waitMs=0 answers what the queue holds now', async (t) => {
  await put(qBasic, ['now1', 'now2'])
  await waitFor(async () => (await amqp.depth(qBasic)) === 2, { timeoutMs: 5000, what: 'two messages ready' })
  const res = await pull(qBasic, 'max=10&waitMs=0')
  t.equal(res.status, 200)
  const got = (await res.json()) as Delivered[]
  t.same(got.map((m) => m.body), ['now1', 'now2'])
  await post('/v1/ack', { deliveryIds: got.map((m) => m.deliveryId) })
})

t.test('query values are validated and bounded', async (t) => {
  for (const q of ['max=0', 'max=101', 'waitMs=-1', 'waitMs=60001', 'leaseMs=5', 'max=abc', 'encoding=hex', 'bogus=1']) {
    const res = await pull(qBad, q)
    t.equal(res.status, 400, q)
    t.match(await res.json(), { error: { code: 'INVALID_REQUEST' } }, q)
  }
  const missing = await pull(`no-such-queue-${Date.now()}`, 'waitMs=0')
  t.equal(missing.status, 404)
  t.match(await missing.json(), { error: { code: 'QUEUE_NOT_FOUND' } })
  t.equal((await pull('bad name!', 'waitMs=0')).status, 400)
  t.equal((await post('/v1/ack', { deliveryIds: [] })).status, 400)
  t.equal((await post('/v1/ack', {})).status, 400)
  t.equal((await post('/v1/nack', { deliveryIds: ['x'], requeue: 'yes' })).status, 400)
})

t.test('consume.allowedQueues refuses other queues with 403', async (t) => {
  const restricted = await startSidecar(t, { consume: { allowedQueues: [qBasic] } })
  const res = await fetch(`${restricted.api}/v1/queues/${qBad}/pull?waitMs=0`, { method: 'POST' })
  t.equal(res.status, 403)
  t.match(await res.json(), { error: { code: 'QUEUE_NOT_ALLOWED' } })
})
