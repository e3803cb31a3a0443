/**
 * The broker's side of the tax (issue 12, item 5): a sidecar with no consumer
 * holds one connection (publish); the consume connection opens with the first
 * subscription (WebSocket, pull) and closes consume.connectionIdleMs after
 * the last one ends; readiness follows the connections that exist; and
 * consume.connection "shared" never opens a second one. Connections are
 * counted on the broker side (rabbitmqctl list_connections on a private node),
 * by the connection_name each sidecar sends.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { brokerFor, type PrivateBroker } from './fixtures/broker.js'
import { directAmqp } from './fixtures/amqp.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const broker = await brokerFor(t)
const amqp = await directAmqp(t, broker.url)
const queue = amqp.name('cc')

/** The roles ("publish", "consume") of the broker's connections named `name:<role>`, sorted. */
async function rolesOnBroker(b: PrivateBroker, name: string): Promise<string[]> {
  const conns = await b.listConnections()
  return conns.flatMap((c) => (c.connectionName?.startsWith(`${name}:`) ? [c.connectionName.slice(name.length + 1)] : [])).sort()
}

// Each probe is a rabbitmqctl call, which takes over 10 s on a busy 2-core machine
// (seen beside stress-ng --cpu 2): the wait is long, and ends as soon as the roles match.
const ROLES_TIMEOUT_MS = 90_000

const readyz = async (ops: string) => {
  const res = await fetch(`${ops}/readyz`)
  return { status: res.status, body: (await res.json()) as { reasons: string[] } }
}

async function sidecarWith(t: Parameters<typeof startSidecar>[0], name: string, consume: Record<string, unknown>) {
  return startSidecar(t, {
    amqp: { urls: [broker.url], connectionName: name },
    topology: { queues: [{ name: queue, durable: false }] },
    consume,
  })
}

t.test('on-demand: one connection while publishing only; the consume one comes with the first subscription and goes after idle', async (t) => {
  const name = `cc-ondemand-${process.pid}`
  const sc = await sidecarWith(t, name, { connection: 'on-demand', connectionIdleMs: 500, pullIdleMs: 300 })
  await waitFor(async () => (await readyz(sc.ops)).status === 200, { timeoutMs: 20_000, what: 'ready with the publish connection alone' })
  const pub = await fetch(`${sc.api}/v1/publish/amq.default/${queue}`, { method: 'POST', body: 'one' })
  t.equal(pub.status, 200, 'publishing works')
  t.same(await rolesOnBroker(broker, name), ['publish'], 'the broker sees one connection from a publish-only sidecar')
  t.equal(sc.sidecar.consumeUpstream.state, 'idle', 'the consume connection was never opened')
  t.equal((await (await fetch(`${sc.api}/v1/status`)).json()).consumeUpstream.state, 'idle', '/v1/status says so')

  // A WebSocket subscription opens it, and its first answer already says "active".
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue, prefetch: 5 })
  const sub = await c.next((f) => f.op === 'subscribed', 'subscribed')
  t.equal(sub['active'], true, 'the subscription is active once the connection opened')
  const [m] = await c.count('message', 1)
  t.equal(m?.['body'], 'one', 'the message published before arrives')
  c.send({ op: 'ack', deliveryId: m?.['deliveryId'], id: 'a1' })
  await c.next((f) => f.op === 'result' && f['id'] === 'a1', 'acked')
  await waitFor(async () => (await rolesOnBroker(broker, name)).join() === 'consume,publish', { timeoutMs: ROLES_TIMEOUT_MS, what: 'two connections on the broker' })
  t.equal((await readyz(sc.ops)).status, 200, 'ready with both connections up')

  // The last subscription ends: the connection closes after consume.connectionIdleMs.
  c.send({ op: 'unsubscribe', queue })
  await c.next((f) => f.op === 'unsubscribed', 'unsubscribed')
  await waitFor(async () => (await rolesOnBroker(broker, name)).join() === 'publish', { timeoutMs: ROLES_TIMEOUT_MS, what: 'the consume connection to close after idle' })
  t.equal(sc.sidecar.consumeUpstream.state, 'idle', 'back to idle')
  const metrics = await (await fetch(`${sc.ops}/metrics`)).text()
  t.match(metrics, /amqp_sidecar_upstream_connected\{connection="publish"\} 1/, 'the publish connection is reported up')
  t.notMatch(metrics, /amqp_sidecar_upstream_connected\{connection="consume"\}/, 'an idle consume connection has no series (a "connected == 0" alert must not fire)')
  t.equal((await readyz(sc.ops)).status, 200, 'still ready: readiness follows the connections that exist')
  t.equal(sc.sidecar.consumeUpstream.status().disconnectsByCause['econnreset'], undefined, 'closing on purpose is not a disconnect')
  t.same(sc.sidecar.consumeUpstream.status().disconnectsByCause, {}, 'no disconnect recorded')

  // A pull opens it again.
  await amqp.channel().then((ch) => ch.sendToQueue(queue, Buffer.from('two')))
  const pulled = await fetch(`${sc.api}/v1/queues/${queue}/pull?max=1&waitMs=10000`, { method: 'POST' })
  t.equal(pulled.status, 200, 'a pull gets the message')
  const [d] = (await pulled.json()) as Array<{ deliveryId: string; body: string }>
  t.equal(d?.body, 'two')
  t.equal((await rolesOnBroker(broker, name)).join(), 'consume,publish', 'the pull reopened the consume connection')
  const ack = await fetch(`${sc.api}/v1/ack`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ deliveryIds: [d?.deliveryId] }) })
  t.equal(ack.status, 200)
  // The pull consumer is cancelled after pullIdleMs, then the connection closes after connectionIdleMs.
  await waitFor(async () => (await rolesOnBroker(broker, name)).join() === 'publish', { timeoutMs: ROLES_TIMEOUT_MS, what: 'the consume connection to close after the pull queue went idle' })
  await c.close()
})

t.test('on-demand: readiness reports a consume connection that exists and is down', async (t) => {
  const name = `cc-ready-${process.pid}`
  const sc = await sidecarWith(t, name, { connection: 'on-demand', connectionIdleMs: 60_000 })
  await waitFor(async () => (await readyz(sc.ops)).status === 200, { timeoutMs: 20_000, what: 'ready' })
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue, prefetch: 1 })
  await c.next((f) => f.op === 'subscribed', 'subscribed')
  await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 10_000, what: 'consume connection' })
  // Only the consume connection is made to reconnect, and the broker refuses it (wrong password):
  // the publish connection stays up, so what readiness says now comes from the consume one.
  await broker.changePassword('guest', 'not-guest')
  t.teardown(() => broker.changePassword('guest', 'guest'))
  sc.sidecar.consumeUpstream.reconnect()
  await waitFor(async () => (await readyz(sc.ops)).status === 503, { timeoutMs: 20_000, what: 'readiness to report the consume connection' })
  const down = await readyz(sc.ops)
  t.match(down.body.reasons.join('; '), /consume upstream (reconnecting|connecting)/, `the reason names the consume connection (${down.body.reasons.join('; ')})`)
  t.equal(sc.sidecar.upstream.state, 'connected', 'the publish connection is fine')
  await broker.changePassword('guest', 'guest')
  await waitFor(async () => (await readyz(sc.ops)).status === 200, { timeoutMs: 30_000, what: 'ready again once the consume connection is back' })
  t.equal(sc.sidecar.consumeUpstream.state, 'connected')
  await c.close()
})

t.test('on-demand: a push subscription in the config opens the consume connection at start', async (t) => {
  const name = `cc-push-${process.pid}`
  const pushQueue = amqp.name('cc-push')
  const bodies: string[] = []
  const app = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      bodies.push(Buffer.concat(chunks).toString())
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((r) => app.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => app.close(() => r())))
  const url = `http://127.0.0.1:${(app.address() as AddressInfo).port}/hook`
  const sc = await startSidecar(t, {
    amqp: { urls: [broker.url], connectionName: name },
    topology: { queues: [{ name: pushQueue, durable: false }] },
    consume: { connection: 'on-demand', connectionIdleMs: 500, push: [{ queue: pushQueue, url }] },
  })
  await waitFor(async () => (await rolesOnBroker(broker, name)).join() === 'consume,publish', { timeoutMs: ROLES_TIMEOUT_MS, what: 'both connections for a sidecar with a push subscription' })
  await amqp.channel().then((ch) => ch.sendToQueue(pushQueue, Buffer.from('pushed')))
  await waitFor(() => bodies.length > 0, { timeoutMs: 20_000, what: 'the push to the app' })
  t.match(bodies[0], /pushed/, 'the message was pushed over the consume connection')
  t.equal((await readyz(sc.ops)).status, 200)
})

t.test('shared: consumers use the publish connection; the broker never sees a second one', async (t) => {
  const name = `cc-shared-${process.pid}`
  const sc = await sidecarWith(t, name, { connection: 'shared' })
  await waitFor(async () => (await readyz(sc.ops)).status === 200, { timeoutMs: 20_000, what: 'ready' })
  t.equal(sc.sidecar.consumeUpstream, sc.sidecar.upstream, 'one Upstream for both')
  await amqp.channel().then((ch) => ch.sendToQueue(queue, Buffer.from('three')))
  const c = await wsClient(t, sc.api)
  c.send({ op: 'subscribe', queue, prefetch: 5 })
  const sub = await c.next((f) => f.op === 'subscribed', 'subscribed')
  t.equal(sub['active'], true)
  const [m] = await c.count('message', 1)
  t.equal(m?.['body'], 'three', 'delivered over the shared connection')
  c.send({ op: 'ack', deliveryId: m?.['deliveryId'], id: 'a1' })
  t.match(await c.next((f) => f.op === 'result' && f['id'] === 'a1', 'acked'), { result: 'acked' })
  t.same(await rolesOnBroker(broker, name), ['publish'], 'one connection on the broker while consuming')
  const status = (await (await fetch(`${sc.api}/v1/status`)).json()) as { consumeUpstream: { shared?: boolean } }
  t.equal(status.consumeUpstream.shared, true, '/v1/status says the consume connection is the shared one')
  await c.close()
})
