/**
 * FAULTS.md rows 12, 13 and 19: faults on the consuming side (queue deleted
 * under a consumer, a delivery held past its lease, an app that goes away
 * mid-delivery), through the real consume API (WebSocket /v1/ws and HTTP
 * pull), against the shared broker (deleting this file's own queue does not
 * hurt it). Invariants: L (every confirmed id is either handed to the app and
 * acked, or still in the queue, read directly), D (redeliveries bounded by
 * what was outstanding), H (every request answers in time), R.
 *
 * See also test/consume-faults.test.ts (stale acks across a forced close,
 * re-declare after delete on WebSocket, acks during a memory alarm, shutdown
 * requeue) and test/consume-pull.test.ts (lease expiry, abandoned pulls).
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { checkH, checkLD, checkR, getStatus, publishOnce, publishStream, readQueue, type Outcome } from './fixtures/faults.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient, type Frame } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
// One queue per consumer kind, so one kind never takes another's messages.
const [q12, q13, q13w, q19, q19p] = ['r12', 'r13', 'r13w', 'r19', 'r19p'].map((n) => amqp.name(`faults-${n}`)) as [string, string, string, string, string]
const sc = await startSidecar(t, {
  topology: { queues: [q12, q13, q13w, q19, q19p].map((name) => ({ name, durable: false })) },
  log: { level: 'info' },
})
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected' && sc.sidecar.upstream.state === 'connected', { timeoutMs: 20_000, what: 'both connections' })
const to = (queue: string) => ({ api: sc.api, exchange: '', routingKey: queue, queue })
const post = async (path: string, body?: unknown) => {
  const res = await fetch(`${sc.api}${path}`, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  })
  return { status: res.status, body: res.status === 204 ? null : ((await res.json()) as unknown) }
}
interface Delivered {
  deliveryId: string
  body: string
  redelivered: boolean
  properties: { messageId?: string }
}
const idOf = (f: Frame) => String((f['properties'] as { messageId?: string } | undefined)?.messageId)
const channelErrors = () => sc.logs.filter((l) => l.includes('the broker closed a consumer channel'))

t.test('row 12: consumer cancelled (queue deleted) — basic.cancel handled, queue re-declared, re-subscribed, nothing lost', async (t) => {
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: q12, prefetch: 5 })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  // Everything the app receives is acked at once; the ids are the app's view of L.
  const received: string[] = []
  const autoAck = setInterval(() => {
    for (const f of c.frames.splice(0)) {
      if (f.op !== 'message') continue
      received.push(idOf(f))
      c.send({ op: 'ack', deliveryId: f['deliveryId'] })
    }
  }, 20)
  t.teardown(() => clearInterval(autoAck))
  const seen: Frame[] = []
  let activeAt = Infinity
  c.ws.on('message', (d) => {
    const f = JSON.parse(d.toString()) as Frame
    seen.push(f)
    if (f.op === 'status' && f['subscription'] === 'active') activeAt = Math.min(activeAt, Date.now())
  })

  const stream = publishStream(t, to(q12), { prefix: 'r12', workers: 2, deadlineMs: 2_000 })
  await stream.advance(10)
  await (await amqp.channel()).deleteQueue(q12) // what `rabbitmqctl delete_queue` does
  await waitFor(() => seen.some((f) => f.op === 'status' && f['subscription'] === 'cancelled'), { timeoutMs: 10_000, what: 'the app told about the cancel' })
  await waitFor(() => seen.some((f) => f.op === 'status' && f['subscription'] === 'active'), { timeoutMs: 15_000, what: 'consuming again' })
  await t.resolves(async () => (await amqp.channel()).checkQueue(q12), 'the queue was re-declared from the topology')
  await stream.advance(20)
  const outcomes = await stream.stop()
  checkH(t, outcomes)
  // While the queue was gone a mandatory publish had nowhere to go: 422, never a silent 200.
  const codes = new Set(outcomes.filter((o) => o.status !== 200).map((o) => `${o.status} ${o.code}`))
  t.ok([...codes].every((c) => c === '422 UNROUTABLE' || c === '504 PUBLISH_OUTCOME_UNKNOWN'), `refusals are documented (${[...codes].join(', ') || 'none'})`)
  const confirmed = outcomes.filter((o) => o.status === 200).map((o) => o.id)
  t.ok(confirmed.length > 10, `publishes were confirmed around the delete (${confirmed.length})`)
  // L: confirmed messages published BEFORE the delete went down with the queue (deleting a
  // queue deletes its messages: the operator's act, not a loss by the sidecar); every one
  // confirmed after the re-declare reaches the app.
  const afterward = outcomes.filter((o) => o.status === 200 && o.at > activeAt).map((o) => o.id)
  t.ok(afterward.length >= 10, `${afterward.length} publishes confirmed after the consumer was active again`)
  await waitFor(() => afterward.every((id) => received.includes(id)), { timeoutMs: 15_000, what: 'every message confirmed after the re-subscribe delivered over the WebSocket' }).catch(() => undefined)
  t.same(afterward.filter((id) => !received.includes(id)), [], 'L: every message confirmed after the re-subscribe reached the app')
  t.comment(`row 12: ${confirmed.length} confirmed, ${afterward.length} after the re-subscribe, ${received.length} delivered; refusals: ${[...codes].join(', ') || 'none'}`)
  const unexpected = received.filter((id) => !outcomes.some((o) => o.id === id))
  t.same(unexpected, [], 'L: nothing delivered that was never published')
  const dupes = received.length - new Set(received).size
  t.ok(dupes <= 5, `D: ${dupes} duplicate deliveries <= prefetch 5`)
  t.same(channelErrors().filter((l) => !l.includes('NOT_FOUND') && !l.includes('404')), [], 'no consumer channel killed by anything but the delete')
  // R: a new message reaches the re-subscribed consumer.
  const r = await publishOnce(to(q12), 'r12-after', { deadlineMs: 5_000 })
  t.equal(r.status, 200)
  await waitFor(() => received.includes('r12-after'), { timeoutMs: 10_000, what: 'R: the new message delivered to the app' })
  t.pass('R: a new message round-trips to the re-subscribed WebSocket consumer')
})

t.test('row 13: a delivery held past its lease is requeued; a late ack answers 409 stale; no channel-killing 406', async (t) => {
  const consumeConnects = (await getStatus(sc.api)).consumeUpstream.connects
  const pubs: Outcome[] = []
  for (const id of ['r13-a', 'r13-b']) pubs.push(await publishOnce(to(q13), id, { deadlineMs: 5_000 }))
  t.same(pubs.map((o) => o.status), [200, 200])
  // Pull one with a short lease (it will expire) and one with a long lease (acked in time).
  const pullOne = (leaseMs: number, what: string) =>
    waitFor(async () => {
      const r = await post(`/v1/queues/${q13}/pull?max=1&waitMs=2000&leaseMs=${leaseMs}`)
      return r.status === 200 ? (r.body as Delivered[])[0] : undefined
    }, { timeoutMs: 10_000, what })
  const expired = await pullOne(500, 'the first delivery')
  t.equal(expired.properties.messageId, 'r13-a', 'first in, first out')
  const kept = await pullOne(60_000, 'the second delivery')
  t.equal(kept.properties.messageId, 'r13-b')
  t.same((await post('/v1/ack', { deliveryId: kept.deliveryId })).status, 200, 'acked within its lease')
  // "expired" comes back, redelivered.
  const again = await waitFor(async () => {
    const r = await post(`/v1/queues/${q13}/pull?max=10&waitMs=2000&leaseMs=30000`)
    return r.status === 200 ? (r.body as Delivered[]).find((m) => m.properties.messageId === 'r13-a') : undefined
  }, { timeoutMs: 10_000, what: 'the expired delivery requeued and pulled again' })
  t.equal(again.redelivered, true, 'requeued: it comes back redelivered')
  const late = await post('/v1/ack', { deliveryId: expired.deliveryId })
  t.equal(late.status, 409, 'the late ack answers 409')
  t.match(late.body, { error: { code: 'DELIVERY_STALE' } })
  t.same((await post('/v1/ack', { deliveryIds: [expired.deliveryId] })).body, { results: [{ deliveryId: expired.deliveryId, result: 'stale' }] }, 'list form: result stale')
  // The channel that delivered it is still alive: the requeued copy is acked on it.
  t.same((await post('/v1/ack', { deliveryId: again.deliveryId })).status, 200, 'the redelivered copy acks fine')

  // The WebSocket side: a lease-expired frame, then the late ack is stale, not a 406.
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: q13w, prefetch: 2, leaseMs: 300 })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  t.equal((await publishOnce(to(q13w), 'r13-ws', { deadlineMs: 5_000 })).status, 200)
  const m1 = await c.next((f) => f.op === 'message' && idOf(f) === 'r13-ws', 'the WebSocket delivery')
  const st = await c.next((f) => f.op === 'stale' && f['reason'] === 'lease-expired', 'the lease-expired frame')
  t.same(st['deliveryIds'], [m1['deliveryId']], 'the app is told which delivery expired')
  const m2 = await c.next((f) => f.op === 'message' && idOf(f) === 'r13-ws' && f['redelivered'] === true, 'the redelivery on the same socket')
  c.send({ op: 'ack', deliveryId: m1['deliveryId'], id: 'late' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'late', 'late ack result'))['result'], 'stale', 'late WebSocket ack: stale')
  c.send({ op: 'ack', deliveryId: m2['deliveryId'], id: 'ok' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ok', 'ack result'))['result'], 'acked', 'the redelivered copy is acked')
  await c.close()

  t.same(channelErrors(), [], 'no consumer channel was closed by the broker (no 406 PRECONDITION_FAILED from a wrong tag)')
  t.equal((await getStatus(sc.api)).consumeUpstream.connects, consumeConnects, 'the consume connection never dropped')
  await waitFor(async () => (await amqp.depth(q13)) === 0 && (await amqp.depth(q13w)) === 0, { timeoutMs: 5_000, what: 'the queues empty: everything acked exactly where it should be' })
  checkH(t, pubs)
})

t.test('row 19: an app that drops mid-delivery — its unacked deliveries are requeued', async (t) => {
  // WebSocket: 5 deliveries held unacked with a long lease, then the socket dies.
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: q19, prefetch: 5, leaseMs: 600_000 })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  const pubs: Outcome[] = []
  for (let i = 0; i < 8; i++) pubs.push(await publishOnce(to(q19), `r19-${i}`, { deadlineMs: 5_000 }))
  t.same(pubs.map((o) => o.status), Array(8).fill(200), 'all confirmed')
  const held = await c.count('message', 5)
  t.equal(held.length, 5, 'the app holds a prefetch-full of deliveries')
  await waitFor(() => sc.sidecar.consumers.leases.size === 5, { timeoutMs: 5_000, what: 'five leases' })
  const droppedAt = Date.now()
  c.ws.terminate() // no close frame: the app just vanished
  await waitFor(async () => sc.sidecar.consumers.leases.size === 0 && (await amqp.depth(q19)) === 8, { timeoutMs: 10_000, what: 'all eight back in the queue' })
  const requeueMs = Date.now() - droppedAt
  t.comment(`row 19: WebSocket deliveries requeued ${requeueMs} ms after the socket died (lease was 600 s)`)
  t.ok(requeueMs < 10_000, 'requeued because the socket closed, not because a lease expired')
  // L: every confirmed message is in the queue; the 5 held ones come back redelivered.
  const read = await readQueue(amqp, q19)
  t.equal(read.filter((m) => m.fields.redelivered).length, 5, 'D: exactly the 5 held deliveries are redelivered')
  await checkLD(t, amqp, q19, pubs)

  // Pull: a request aborted while waiting takes nothing; one that got messages and then
  // vanished holds them only until its lease ends.
  t.equal((await post(`/v1/queues/${q19p}/pull?waitMs=0`)).status, 204, 'pull consumer started')
  const ac = new AbortController()
  const aborted = fetch(`${sc.api}/v1/queues/${q19p}/pull?waitMs=20000`, { method: 'POST', signal: ac.signal }).catch(() => 'aborted')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === q19p && p.waiting === 1), { timeoutMs: 5_000, what: 'the pull waiting' })
  ac.abort()
  t.equal(await aborted, 'aborted')
  await waitFor(() => sc.sidecar.consumers.status().pull.some((p) => p.queue === q19p && p.waiting === 0), { timeoutMs: 5_000, what: 'the aborted pull forgotten' })
  const pp = await publishOnce(to(q19p), 'r19p-0', { deadlineMs: 5_000 })
  t.equal(pp.status, 200)
  t.equal(sc.sidecar.consumers.leases.size, 0, 'nothing leased to the aborted pull')
  const got = await waitFor(async () => {
    const r = await post(`/v1/queues/${q19p}/pull?waitMs=2000&leaseMs=300`)
    return r.status === 200 ? (r.body as Delivered[]) : undefined
  }, { timeoutMs: 10_000, what: 'the message pulled' })
  t.equal(got[0]?.redelivered, false, 'the next pull gets it first-hand')
  // This app now "dies" holding it: the lease expiry requeues it.
  const back = await waitFor(async () => {
    const r = await post(`/v1/queues/${q19p}/pull?waitMs=2000`)
    return r.status === 200 ? (r.body as Delivered[]) : undefined
  }, { timeoutMs: 10_000, what: 'the abandoned pull delivery requeued' })
  t.match(back[0], { redelivered: true, properties: { messageId: 'r19p-0' } }, 'an abandoned pulled delivery returns after its lease')
  t.same((await post('/v1/ack', { deliveryIds: [back[0]?.deliveryId] })).body, { results: [{ deliveryId: back[0]?.deliveryId, result: 'acked' }] })
  checkH(t, [...pubs, pp])
  await checkR(t, amqp, to(q19))
})
