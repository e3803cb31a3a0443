/**
 * Request/reply over direct reply-to (DESIGN.md section 3), against the shared
 * broker: a responder app that consumes THROUGH the sidecar (WebSocket) and
 * answers to replyTo through it too, concurrent requests matched to their own
 * replies (and responders that consume by HTTP pull and by push, answering
 * with plain HTTP publishes), a queue nobody answers (504 RPC_TIMEOUT), no queue bound (422), the
 * bound on waiting requests (503 RPC_BUSY), the WebSocket rpc op, and a reset
 * of the sidecar's link while a request waits (504 RPC_OUTCOME_UNKNOWN, at
 * once: the code says it was not the deadline). The reset goes through a fault
 * proxy, so only this file's own connections are hurt.
 */
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { metric } from './fixtures/faults.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { errorCode, request } from './fixtures/http.js'
import { SHARED_BROKER_URL, startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient, type Frame, type WsClient } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const qEcho = amqp.name('rpc-echo')
const qSilent = amqp.name('rpc-silent')
const qBusy = amqp.name('rpc-busy')
const qReset = amqp.name('rpc-reset')
const qPull = amqp.name('rpc-pull')
const qPush = amqp.name('rpc-push')
const declare = (names: string[]) => ({ topology: { queues: names.map((name) => ({ name, durable: false })) } })

async function ready(sc: RunningSidecar): Promise<void> {
  await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'sidecar ready' })
}

/**
 * A responder app with no AMQP client: it subscribes to `queue` over the
 * sidecar's WebSocket and answers each request by publishing, through the
 * same socket, to amq.default with the delivery's replyTo as the routing key
 * and its correlationId. `hold` requests are collected first and then answered
 * in reverse order, so a reply never arrives in the order its request left.
 */
async function responder(t: Test, api: string, queue: string, opts: { hold?: number } = {}): Promise<WsClient> {
  const ws = await wsClient(t, api)
  const held: Frame[] = []
  let seq = 0
  const answer = (m: Frame) => {
    const props = m['properties'] as { replyTo: string; correlationId: string; headers: Record<string, unknown> }
    ws.send({
      op: 'publish',
      id: `reply-${seq++}`,
      exchange: 'amq.default',
      routingKey: props.replyTo,
      body: `echo:${String(m['body'])}`,
      properties: { correlationId: props.correlationId, contentType: 'text/plain', type: 'echo' },
      headers: { served: 'yes', attempt: 1 },
    })
    ws.send({ op: 'ack', deliveryId: m['deliveryId'] })
  }
  ws.ws.on('message', (data) => {
    const f = JSON.parse(data.toString()) as Frame
    if (f.op !== 'message') return
    if (!opts.hold) return answer(f)
    held.push(f)
    if (held.length === opts.hold) for (const m of held.splice(0).reverse()) answer(m)
  })
  ws.send({ op: 'subscribe', queue, prefetch: Math.max(10, opts.hold ?? 0) })
  await ws.next((f) => f.op === 'subscribed', `the responder subscribed to ${queue}`)
  return ws
}

const sc = await startSidecar(t, declare([qEcho, qSilent, qPull]))
await ready(sc)

t.test('a responder behind the sidecar answers; the reply comes back as body and X- headers', async (t) => {
  const r = await responder(t, sc.api, qEcho)
  const res = await request(sc.api, `/v1/rpc/amq.default/${qEcho}`, {
    method: 'POST',
    headers: { 'content-type': 'text/plain', 'x-correlation-id': 'order-7', 'x-header-tenant': 'acme' },
    body: 'hello',
  })
  t.equal(res.status, 200, res.text)
  t.equal(res.text, 'echo:hello', 'the reply body, byte for byte')
  t.equal(res.headers['x-correlation-id'], 'order-7', "the app's correlation id went out and came back")
  t.match(res.headers['content-type'], /^text\/plain/)
  t.equal(res.headers['x-type'], 'echo')
  t.equal(res.headers['x-header-served'], 'yes', 'reply headers as X-Header-<name>')
  t.equal(res.headers['x-header-attempt'], '1')
  // The request as the responder saw it: reply_to rewritten by the broker, an expiration from the deadline.
  await r.next((f) => f.op === 'confirm' && f['id'] === 'reply-0', "the responder's reply publish confirmed")
  t.same(r.ops('error'), [], 'the reply publish was not refused (no false 422 UNROUTABLE for a direct reply-to address)')
  const seen = r.ops('message')[0]?.['properties'] as { replyTo?: string; expiration?: string; headers?: Record<string, unknown> }
  t.match(seen.replyTo, /^amq\.rabbitmq\.reply-to\./, 'reply_to is direct reply-to')
  t.equal(seen.expiration, '10000', 'the request expires with its deadline (publish.timeoutMs)')
  t.equal(seen.headers?.['tenant'], 'acme')
  t.equal(await metric(sc.ops, 'amqp_sidecar_rpc_total', 'outcome="replied"'), 1, 'counted as replied')
  t.ok((await metric(sc.ops, 'amqp_sidecar_rpc_duration_seconds_count')) >= 1, 'its duration observed')
})

t.test('concurrent requests each get their own reply, whatever order the replies come in', async (t) => {
  const n = 20
  await responder(t, sc.api, qEcho, { hold: n })
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) => request(sc.api, `/v1/rpc/amq.default/${qEcho}`, { method: 'POST', headers: { 'x-timeout-ms': '30000' }, body: `req-${i}`, timeoutMs: 40_000 })),
  )
  results.forEach((res, i) => t.equal(`${res.status} ${res.text}`, `200 echo:req-${i}`, `request ${i} got its own reply`))
  const ids = new Set(results.map((r) => r.headers['x-correlation-id']))
  t.equal(ids.size, n, 'every request had its own generated correlation id')
  t.equal(await metric(sc.ops, 'amqp_sidecar_rpc_outstanding'), 0, 'nothing left waiting')
})

t.test('a responder that pulls over HTTP and answers with an HTTP publish', async (t) => {
  let stop = false
  t.teardown(() => void (stop = true))
  const served = (async () => {
    while (!stop) {
      const pulled = await request(sc.api, `/v1/queues/${qPull}/pull?max=10&waitMs=1000`, { method: 'POST' })
      if (pulled.status === 204) continue
      if (pulled.status !== 200) throw new Error(`pull answered ${pulled.status} ${pulled.text}`)
      const batch = JSON.parse(pulled.text) as Array<{ deliveryId: string; body: string; properties: { replyTo: string; correlationId: string } }>
      for (const m of batch) {
        // The JSON envelope: the reply-to address is a routing key like any other, no URL encoding needed.
        const reply = await request(sc.api, '/v1/publish', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ exchange: 'amq.default', routingKey: m.properties.replyTo, body: `pulled:${m.body}`, properties: { correlationId: m.properties.correlationId } }),
        })
        if (reply.status !== 200) throw new Error(`the reply publish answered ${reply.status} ${reply.text}`)
      }
      await request(sc.api, '/v1/ack', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ deliveryIds: batch.map((m) => m.deliveryId) }) })
      return batch.length
    }
    return 0
  })()
  const res = await request(sc.api, `/v1/rpc/amq.default/${qPull}`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-timeout-ms': '20000' }, body: 'q1', timeoutMs: 30_000 })
  t.equal(`${res.status} ${res.text}`, '200 pulled:q1', 'the reply published by the pulling responder came back')
  t.equal(await served, 1, 'the responder pulled, answered and acked one request')
  await waitFor(async () => (await amqp.depth(qPull)) === 0 && sc.sidecar.consumers.leases.size === 0, { timeoutMs: 15_000, what: 'the request acked' })
  t.pass('nothing left on the request queue')
})

t.test('a responder that gets requests by push and answers with a raw HTTP publish to the URL-encoded reply-to address', async (t) => {
  // The pushed request carries X-Reply-To and X-Correlation-Id; the app answers through its sidecar's raw route.
  let pusher: RunningSidecar | undefined
  const seen: string[] = []
  const replies: number[] = []
  const app = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const replyTo = String(req.headers['x-reply-to'])
      seen.push(replyTo)
      void request((pusher as RunningSidecar).api, `/v1/publish/amq.default/${encodeURIComponent(replyTo)}`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain', 'x-correlation-id': String(req.headers['x-correlation-id']) },
        body: `pushed:${Buffer.concat(chunks).toString()}`,
      }).then((reply) => {
        replies.push(reply.status)
        res.writeHead(reply.status === 200 ? 204 : 503).end()
      })
    })
  })
  app.listen(0, '127.0.0.1')
  await once(app, 'listening')
  t.teardown(() => new Promise<void>((r) => app.close(() => r())))
  pusher = await startSidecar(t, {
    ...declare([qPush]),
    consume: { push: [{ queue: qPush, url: `http://127.0.0.1:${(app.address() as AddressInfo).port}/rpc` }] },
  })
  await ready(pusher)
  const res = await request(sc.api, `/v1/rpc/amq.default/${qPush}`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-timeout-ms': '20000' }, body: 'q2', timeoutMs: 30_000 })
  t.equal(`${res.status} ${res.text}`, '200 pushed:q2', 'the reply published by the pushed-to app came back')
  t.match(seen[0], /^amq\.rabbitmq\.reply-to\./, 'the app saw the direct reply-to address in X-Reply-To')
  await waitFor(() => replies.length > 0, { timeoutMs: 15_000, what: "the app's reply publish answered" })
  t.same(replies, [200], 'the reply publish answered 200, once (no false 422, so no retried push)')
  await waitFor(async () => (await amqp.depth(qPush)) === 0 && pusher!.sidecar.consumers.leases.size === 0, { timeoutMs: 15_000, what: 'the pushed request acked' })
  t.pass('the pushed request was acked')
})

t.test('a request no queue takes is 422 UNROUTABLE; refused headers are 400', async (t) => {
  const res = await request(sc.api, '/v1/rpc/amq.default/no-such-queue-for-rpc', { method: 'POST', body: 'x' })
  t.equal(res.status, 422)
  t.equal(errorCode(res), 'UNROUTABLE')
  const missing = await request(sc.api, '/v1/rpc/no-such-exchange-rpc/k', { method: 'POST', body: 'x' })
  t.equal(missing.status, 404)
  t.equal(errorCode(missing), 'EXCHANGE_NOT_FOUND')
  for (const [name, value] of [['x-reply-to', 'q'], ['x-ack', 'accepted'], ['x-mandatory', 'false']] as const) {
    const bad = await request(sc.api, `/v1/rpc/amq.default/${qEcho}`, { method: 'POST', headers: { [name]: value }, body: 'x' })
    t.equal(`${bad.status} ${errorCode(bad)}`, '400 INVALID_REQUEST', `${name} is refused`)
  }
  t.ok((await metric(sc.ops, 'amqp_sidecar_rpc_total', 'outcome="unroutable"')) >= 1, 'counted as unroutable')
})

t.test('a responder that never answers: 504 RPC_TIMEOUT; its late reply is dropped and counted', async (t) => {
  const res = await request(sc.api, `/v1/rpc/amq.default/${qSilent}`, { method: 'POST', headers: { 'x-timeout-ms': '1500', 'x-message-id': 'silent-1', 'x-expiration': '60000' }, body: 'anyone?' })
  t.equal(res.status, 504)
  t.equal(errorCode(res), 'RPC_TIMEOUT')
  t.match((res.json as { error: { messageId: string } }).error.messageId, 'silent-1')
  // The request is in the queue (X-Expiration outlives the deadline); answer it now, too late.
  const [req] = await amqp.drainUntil(qSilent, 1)
  t.ok(req, 'the request reached the queue')
  const ch = await amqp.channel()
  ch.publish('', String(req?.properties.replyTo), Buffer.from('too late'), { correlationId: req?.properties.correlationId })
  await waitFor(async () => (await metric(sc.ops, 'amqp_sidecar_rpc_late_replies_total')) >= 1, { timeoutMs: 10_000, what: 'the late reply to be counted' })
  t.pass('the late reply was dropped and counted')
  t.equal(await metric(sc.ops, 'amqp_sidecar_rpc_total', 'outcome="timeout"'), 1)
})

t.test('the WebSocket rpc op answers with a reply frame, or an error frame', async (t) => {
  await responder(t, sc.api, qEcho)
  const c = await wsClient(t, sc.api)
  c.send({ op: 'rpc', id: 'r1', exchange: 'amq.default', routingKey: qEcho, body: { a: 1 }, headers: { h: 'v' } })
  const reply = await c.next((f) => f.op === 'reply' && f['id'] === 'r1', 'the reply frame', { timeoutMs: 15_000 })
  t.match(reply, { op: 'reply', id: 'r1', body: 'echo:{"a":1}', bodyEncoding: 'utf8', properties: { contentType: 'text/plain', type: 'echo', headers: { served: 'yes' } } })
  c.send({ op: 'rpc', id: 'r2', exchange: 'amq.default', routingKey: 'no-such-queue-for-rpc', body: 'x' })
  const err = await c.next((f) => f.op === 'error' && f['id'] === 'r2', 'the error frame')
  t.equal(err['code'], 'UNROUTABLE')
  c.send({ op: 'rpc', id: 'r3', exchange: 'amq.default', routingKey: qEcho, body: 'x', bogus: true })
  t.equal((await c.next((f) => f.op === 'error' && f['id'] === 'r3', 'an invalid frame refused'))['code'], 'INVALID_REQUEST')
  c.send({ op: 'rpc', id: 'r4', exchange: 'amq.default', routingKey: qSilent, body: 'x', timeoutMs: 500 })
  t.equal((await c.next((f) => f.op === 'error' && f['id'] === 'r4', 'the timeout frame'))['code'], 'RPC_TIMEOUT')
})

t.test('past rpc.maxOutstanding waiting requests: 503 RPC_BUSY with Retry-After', async (t) => {
  const small = await startSidecar(t, { ...declare([qBusy]), rpc: { maxOutstanding: 2 } })
  await ready(small)
  const waiting = [0, 1].map((i) => request(small.api, `/v1/rpc/amq.default/${qBusy}`, { method: 'POST', headers: { 'x-timeout-ms': '20000' }, body: `w${i}`, timeoutMs: 30_000 }))
  await waitFor(async () => (await amqp.depth(qBusy)) === 2, { timeoutMs: 10_000, what: 'both requests in the queue' })
  const busy = await request(small.api, `/v1/rpc/amq.default/${qBusy}`, { method: 'POST', body: 'third' })
  t.equal(busy.status, 503)
  t.equal(errorCode(busy), 'RPC_BUSY')
  t.equal(busy.headers['retry-after'], '1')
  // Answer both waiting requests directly; then there is room again.
  const ch = await amqp.channel()
  for (const m of await amqp.drainUntil(qBusy, 2)) ch.publish('', String(m.properties.replyTo), Buffer.from('ok'), { correlationId: m.properties.correlationId })
  for (const res of await Promise.all(waiting)) t.equal(`${res.status} ${res.text}`, '200 ok')
  t.equal(await metric(small.ops, 'amqp_sidecar_rpc_outstanding'), 0)
})

t.test('the link drops while a request waits: 504 RPC_OUTCOME_UNKNOWN at once; the next request works; one sent during an outage waits for the reconnect', async (t) => {
  const shared = new URL(SHARED_BROKER_URL)
  const proxy = await startFaultProxy({ upstreamHost: shared.hostname, upstreamPort: Number(shared.port || 5672) })
  t.teardown(() => proxy.close())
  const via = new URL(SHARED_BROKER_URL)
  via.port = String(proxy.port)
  const behind = await startSidecar(t, { ...declare([qReset]), amqp: { urls: [via.toString()], reconnect: { initialDelayMs: 100, maxDelayMs: 500 } } })
  await ready(behind)
  // Answered at the deadline, this would be RPC_TIMEOUT: the code tells which one ended it.
  const pending = request(behind.api, `/v1/rpc/amq.default/${qReset}`, { method: 'POST', headers: { 'x-timeout-ms': '60000' }, body: 'are you there', timeoutMs: 90_000 })
  await waitFor(async () => (await amqp.depth(qReset)) === 1, { timeoutMs: 10_000, what: 'the request in the queue' })
  proxy.resetPeers('client')
  const res = await pending
  t.equal(res.status, 504)
  t.equal(errorCode(res), 'RPC_OUTCOME_UNKNOWN', 'answered because the link dropped, not at the deadline')
  t.equal(await metric(behind.ops, 'amqp_sidecar_rpc_total', 'outcome="unknown"'), 1)
  // After the reconnect a new channel serves requests again.
  await ready(behind)
  await amqp.drain(qReset)
  await responder(t, behind.api, qReset)
  const again = await request(behind.api, `/v1/rpc/amq.default/${qReset}`, { method: 'POST', body: 'again', headers: { 'x-timeout-ms': '20000' }, timeoutMs: 30_000 })
  t.equal(`${again.status} ${again.text}`, '200 echo:again')

  // A request that comes while the link is down waits for the reconnect, within its deadline.
  await proxy.setDown(true)
  await waitFor(() => behind.sidecar.upstream.state === 'reconnecting', { timeoutMs: 15_000, what: 'the sidecar to notice the outage' })
  const during = request(behind.api, `/v1/rpc/amq.default/${qReset}`, { method: 'POST', body: 'during the outage', headers: { 'x-timeout-ms': '60000' }, timeoutMs: 90_000 })
  await waitFor(async () => (await metric(behind.ops, 'amqp_sidecar_rpc_outstanding')) === 1, { timeoutMs: 10_000, what: 'the request waiting in the sidecar' })
  await proxy.setDown(false)
  const late = await during
  t.equal(`${late.status} ${late.text}`, '200 echo:during the outage', 'sent after the reconnect and answered')
})
