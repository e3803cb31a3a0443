/**
 * Consuming through broker faults, on a private broker: acks across a
 * connection loss answer stale and the message comes back redelivered; a
 * deleted queue is re-declared and consumed again; a memory alarm blocks
 * publishing but not acks (separate consume connection); shutdown requeues
 * everything it holds and dead-letters nothing.
 */
import { once } from 'node:events'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { brokerFor } from './fixtures/broker.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const broker = await brokerFor(t)
const amqp = await directAmqp(t, broker.url)
const [qWs, qPull, qDel, qAlarm] = ['ws', 'pull', 'del', 'alarm'].map((n) => amqp.name(`fault-${n}`)) as [string, string, string, string]
const sc = await startSidecar(t, {
  amqp: { urls: [broker.url] },
  topology: { queues: [qWs, qPull, qDel, qAlarm].map((name) => ({ name, durable: true })) },
})
const connected = (what: string) =>
  waitFor(() => sc.sidecar.consumeUpstream.state === 'connected' && sc.sidecar.upstream.state === 'connected', { timeoutMs: 20_000, what })
await connected('both connections')

const put = async (queue: string, bodies: string[]) => {
  const ch = await amqp.channel()
  for (const b of bodies) ch.sendToQueue(queue, Buffer.from(b), { messageId: `m-${b}` })
}
const post = async (path: string, body?: unknown) => {
  const res = await fetch(`${sc.api}${path}`, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  })
  return { status: res.status, body: res.status === 204 ? null : ((await res.json()) as unknown) }
}

t.test('WebSocket: an ack after close_all_connections answers stale; the message comes back redelivered', async (t) => {
  const c = await wsClient(t, sc.api)
  await put(qWs, ['w'])
  c.send({ op: 'subscribe', queue: qWs, prefetch: 1 })
  const [m] = await c.count('message', 1)
  const mark = c.frames.length
  await broker.closeAllConnections()
  const stale = await c.next((f) => f.op === 'stale', 'stale frame for the lost channel', { from: mark })
  t.same(stale['deliveryIds'], [m?.['deliveryId']])
  t.equal(stale['reason'], 'channel-closed')
  c.send({ op: 'ack', deliveryId: m?.['deliveryId'], id: 'late' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'late', 'late ack'))['result'], 'stale')
  await c.next((f) => f.op === 'status' && f['upstream'] === 'reconnecting', 'status: reconnecting', { from: mark })
  await c.next((f) => f.op === 'status' && f['upstream'] === 'connected', 'status: connected', { from: mark })
  // Re-subscribed on the new connection without the client asking.
  const again = await c.next((f) => f.op === 'message' && f['redelivered'] === true, 'redelivery', { from: mark })
  t.equal(again['body'], 'w')
  c.send({ op: 'ack', deliveryId: again['deliveryId'], id: 'ok' })
  t.equal((await c.next((f) => f.op === 'result' && f['id'] === 'ok', 'ack'))['result'], 'acked')
  await c.close()
  t.equal(await amqp.depth(qWs), 0)
})

t.test('pull: a late ack is stale (409 single), the message is pulled again redelivered', async (t) => {
  await connected('reconnected')
  await put(qPull, ['p'])
  const first = await waitFor(async () => {
    const r = await post(`/v1/queues/${qPull}/pull?waitMs=2000`)
    return r.status === 200 ? (r.body as { deliveryId: string }[]) : undefined
  }, { timeoutMs: 10_000, what: 'the pulled message' })
  const id = first[0]?.deliveryId
  await broker.closeAllConnections()
  await waitFor(() => sc.sidecar.consumers.leases.size === 0, { timeoutMs: 10_000, what: 'the lease dropped with its channel' })
  t.same((await post('/v1/ack', { deliveryIds: [id] })).body, { results: [{ deliveryId: id, result: 'stale' }] })
  t.match(await post('/v1/ack', { deliveryId: id }), { status: 409, body: { error: { code: 'DELIVERY_STALE' } } })
  await connected('reconnected after the second close')
  const again = await waitFor(async () => {
    const r = await post(`/v1/queues/${qPull}/pull?waitMs=2000`)
    return r.status === 200 ? (r.body as { deliveryId: string; redelivered: boolean; body: string }[]) : undefined
  }, { timeoutMs: 10_000, what: 'the redelivered message' })
  t.match(again[0], { body: 'p', redelivered: true })
  t.same((await post('/v1/ack', { deliveryIds: [again[0]?.deliveryId] })).body, { results: [{ deliveryId: again[0]?.deliveryId, result: 'acked' }] })
})

t.test('a deleted queue is re-declared from the topology and consumed again', async (t) => {
  await connected('connected')
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue: qDel, prefetch: 1 })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  await broker.deleteQueue(qDel)
  await c.next((f) => f.op === 'status' && f['subscription'] === 'cancelled', 'told about the cancel')
  await c.next((f) => f.op === 'status' && f['subscription'] === 'active', 'consuming again')
  await put(qDel, ['after'])
  const m = await c.next((f) => f.op === 'message', 'a message from the re-declared queue')
  t.equal(m['body'], 'after')
  c.send({ op: 'ack', deliveryId: m['deliveryId'] })
})

t.test('a memory alarm blocks publishing, not acks (separate consume connection)', async (t) => {
  await connected('connected')
  await put(qAlarm, ['before-alarm'])
  await waitFor(async () => (await amqp.depth(qAlarm)) === 1, { timeoutMs: 5000, what: 'the message queued' })
  // Registered before raising it: a raise that times out may still be in effect.
  let alarmOn = true
  t.teardown(() => (alarmOn ? broker.setMemoryAlarm(false) : undefined))
  await broker.setMemoryAlarm(true)
  // The publishing connection is blocked once it publishes; nudge it.
  const nudge = fetch(`${sc.api}/v1/publish/amq.default/${qAlarm}`, { method: 'POST', body: 'nudge', headers: { 'x-timeout-ms': '1000' } }).catch(() => undefined)
  await waitFor(() => sc.sidecar.upstream.state === 'blocked', { timeoutMs: 15_000, what: 'the publish connection blocked' })
  const got = await waitFor(async () => {
    const r = await post(`/v1/queues/${qAlarm}/pull?waitMs=2000`)
    return r.status === 200 ? (r.body as { deliveryId: string; body: string }[]) : undefined
  }, { timeoutMs: 10_000, what: 'a pull during the alarm' })
  t.equal(got[0]?.body, 'before-alarm')
  t.same((await post('/v1/ack', { deliveryIds: [got[0]?.deliveryId] })).body, { results: [{ deliveryId: got[0]?.deliveryId, result: 'acked' }] })
  t.equal(sc.sidecar.consumeUpstream.state, 'connected', 'the consume connection is not blocked')
  await nudge
  await broker.setMemoryAlarm(false)
  alarmOn = false
  await waitFor(() => sc.sidecar.upstream.state === 'connected', { timeoutMs: 15_000, what: 'unblocked' })
  // The nudge publish went out after the alarm; make sure nothing unacked is left.
  await waitFor(async () => (await amqp.depth(qAlarm)) <= 1, { timeoutMs: 5000, what: 'queue settled' })
})

t.test('shutdown requeues prefetched and leased messages and dead-letters none (a pull prefetches nothing)', async (t) => {
  const dlq = amqp.name('shutdown-dlq')
  const dl = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq }
  const [qP, qW, qPush] = ['p', 'w', 'push'].map((n) => amqp.name(`shutdown-${n}`)) as [string, string, string]
  // A push endpoint that never answers: its call is in flight at shutdown.
  const hung: ServerResponse[] = []
  const server = createServer((_req, res) => void hung.push(res))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const r of hung) r.destroy()
    return new Promise((r) => server.close(r))
  })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`
  const s2 = await startSidecar(t, {
    amqp: { urls: [broker.url] },
    topology: { queues: [{ name: dlq, durable: true }, ...[qP, qW, qPush].map((name) => ({ name, durable: true, arguments: dl }))] },
    consume: { push: [{ queue: qPush, url, concurrency: 1, timeoutMs: 60_000 }] },
  })
  await waitFor(() => s2.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 20_000, what: 'second sidecar connected' })
  await put(qP, ['1', '2', '3', '4', '5'])
  await put(qW, ['1', '2', '3', '4', '5'])
  await put(qPush, ['1'])
  const pulled = await waitFor(async () => {
    const r = await fetch(`${s2.api}/v1/queues/${qP}/pull?max=1&waitMs=2000`, { method: 'POST' })
    return r.status === 200 ? ((await r.json()) as { deliveryId: string }[]) : undefined
  }, { timeoutMs: 10_000, what: 'one pulled' })
  // A pull takes off the queue only what it hands out: the other four stay in the queue (the sidecar's
  // consume.pullIdleMs is 30 s here: a sidecar that prefetched would hold them that long).
  await waitFor(async () => (await amqp.depth(qP)) === 4, { timeoutMs: 5000, what: 'the four not pulled ready in the queue' })
  const c = await wsClient(t, s2.api)
  c.send({ op: 'subscribe', queue: qW, prefetch: 2 })
  await c.count('message', 2)
  await waitFor(() => hung.length === 1, { timeoutMs: 10_000, what: 'the push call in flight' })

  const done = s2.sidecar.shutdown({ drainMs: 1500 })
  t.equal(await amqp.depth(qP), 4, 'the four never pulled are still in the queue')
  // Leases can still be acked while draining; new pulls are refused.
  const ack = await fetch(`${s2.api}/v1/ack`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ deliveryIds: [pulled[0]?.deliveryId] }) })
  t.same(await ack.json(), { results: [{ deliveryId: pulled[0]?.deliveryId, result: 'acked' }] })
  const refused = await fetch(`${s2.api}/v1/queues/${qP}/pull?waitMs=0`, { method: 'POST' })
  t.equal(refused.status, 503)
  await done

  t.equal(await amqp.depth(qP), 4, 'the acked one is gone, the four others never left')
  t.equal(await amqp.depth(qW), 5, 'the WebSocket leases were requeued')
  t.equal(await amqp.depth(qPush), 1, 'the push in flight was requeued')
  t.equal(await amqp.depth(dlq), 0, 'nothing dead-lettered by shutdown')
})
