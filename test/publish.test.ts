/**
 * Publishing against the shared broker: what a 200 promises, and every
 * documented refusal. Messages are read back directly with amqplib.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const exchange = amqp.name('ex')
const queue = amqp.name('q')
const unboundExchange = amqp.name('unbound')
// The sidecar declares the topology itself, as in production.
const sc = await startSidecar(t, {
  topology: {
    exchanges: [
      { name: exchange, type: 'topic', durable: false, autoDelete: false },
      { name: unboundExchange, type: 'fanout', durable: false },
    ],
    queues: [{ name: queue, durable: false }],
    bindings: [{ exchange, queue, routingKey: 'order.#' }],
  },
  publish: { allowedExchanges: null },
  api: { bodyLimitBytes: 1024 },
})
t.teardown(async () => {
  await (await amqp.channel()).deleteExchange(exchange).catch(() => {})
  await (await amqp.channel()).deleteExchange(unboundExchange).catch(() => {})
})
await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 15_000, what: 'sidecar ready' })

const post = (path: string, body: string | Uint8Array, headers: Record<string, string> = {}) =>
  fetch(`${sc.api}${path}`, { method: 'POST', body: body as BodyInit, headers })

t.test('a 200 publish lands in the queue with its properties and headers', async (t) => {
  const res = await post(`/v1/publish/${exchange}/order.created`, '{"id":1}', {
    'content-type': 'application/json',
    'content-encoding': 'identity',
    'x-message-id': 'm-1',
    'x-correlation-id': 'c-1',
    'x-reply-to': 'replies',
    'x-type': 'order.created',
    'x-app-id': 'shop',
    'x-priority': '5',
    'x-expiration': '60000',
    'x-header-tenant': 'acme',
    'x-header-trace-id': 'abc',
  })
  t.equal(res.status, 200)
  t.same(await res.json(), { messageId: 'm-1', status: 'confirmed' })
  const [m] = await amqp.drainUntil(queue, 1)
  t.ok(m, 'the message is in the queue')
  if (!m) return
  t.equal(m.content.toString(), '{"id":1}')
  t.equal(m.fields.routingKey, 'order.created')
  t.match(m.properties, {
    messageId: 'm-1',
    correlationId: 'c-1',
    replyTo: 'replies',
    type: 'order.created',
    appId: 'shop',
    priority: 5,
    expiration: '60000',
    contentType: 'application/json',
    contentEncoding: 'identity',
    deliveryMode: 2,
  })
  t.match(m.properties.headers, { tenant: 'acme', 'trace-id': 'abc' })
})

t.test('a message id is generated when the app gives none, and returned', async (t) => {
  const res = await post(`/v1/publish/${exchange}/order.x`, 'x', { 'x-persistent': 'false' })
  t.equal(res.status, 200)
  const body = (await res.json()) as { messageId: string }
  t.match(body.messageId, /^[0-9a-f-]{36}$/)
  const [m] = await amqp.drainUntil(queue, 1)
  t.equal(m?.properties.messageId, body.messageId)
  t.equal(m?.properties.deliveryMode, 1, 'X-Persistent: false publishes transient')
})

t.test('the JSON envelope route, each body encoding, and the default exchange', async (t) => {
  const envelopes = [
    { exchange, routingKey: 'order.a', body: 'plain text', properties: { messageId: 'e-utf8' } },
    { exchange, routingKey: 'order.b', body: Buffer.from([0, 1, 2, 255]).toString('base64'), bodyEncoding: 'base64', properties: { messageId: 'e-b64' } },
    { exchange, routingKey: 'order.c', body: { n: 1, s: 'x' }, properties: { messageId: 'e-json' }, headers: { n: 2, ok: true } },
    { exchange: 'amq.default', routingKey: queue, body: 'direct to the queue', properties: { messageId: 'e-default' } },
  ]
  for (const env of envelopes) {
    const res = await post('/v1/publish', JSON.stringify(env), { 'content-type': 'application/json' })
    t.equal(res.status, 200, env.properties.messageId)
  }
  const got = await amqp.drainUntil(queue, 4)
  const byId = new Map(got.map((m) => [m.properties.messageId as string, m]))
  t.equal(byId.get('e-utf8')?.content.toString(), 'plain text')
  t.same([...(byId.get('e-b64')?.content ?? [])], [0, 1, 2, 255])
  t.same(JSON.parse(byId.get('e-json')?.content.toString() ?? 'null'), { n: 1, s: 'x' })
  t.equal(byId.get('e-json')?.properties.contentType, 'application/json')
  t.match(byId.get('e-json')?.properties.headers, { n: 2, ok: true })
  t.equal(byId.get('e-default')?.content.toString(), 'direct to the queue')
})

t.test('a batch answers per message, in order, and 207 when one fails', async (t) => {
  const batch = [
    { exchange, routingKey: 'order.1', body: '1', properties: { messageId: 'b-1' } },
    { exchange, routingKey: 'nomatch', body: '2', properties: { messageId: 'b-2' } },
    { exchange, routingKey: 'order.3', body: '3', properties: { messageId: 'b-3' } },
  ]
  const res = await post('/v1/publish', JSON.stringify(batch), { 'content-type': 'application/json' })
  t.equal(res.status, 207)
  const body = (await res.json()) as { results: Array<{ messageId: string; status: string; error?: { code: string; httpStatus: number } }>; failed: number }
  t.equal(body.failed, 1)
  t.same(body.results.map((r) => r.messageId), ['b-1', 'b-2', 'b-3'])
  t.match(body.results[1], { status: 'error', error: { code: 'UNROUTABLE', httpStatus: 422 } })
  t.same(body.results.filter((r) => r.status === 'confirmed').length, 2)
  const got = await amqp.drainUntil(queue, 2)
  t.same(got.map((m) => m.properties.messageId).sort(), ['b-1', 'b-3'])
  const ok = await post('/v1/publish', JSON.stringify([batch[0], batch[2]]), { 'content-type': 'application/json' })
  t.equal(ok.status, 200, 'an all-confirmed batch is 200')
  await amqp.drainUntil(queue, 2)
})

t.test('an unroutable publish answers 422 UNROUTABLE, never 200', async (t) => {
  const res = await post(`/v1/publish/${unboundExchange}`, 'lost?', { 'x-message-id': 'u-1' })
  t.equal(res.status, 422)
  t.same(await res.json(), { error: { code: 'UNROUTABLE', message: `No queue is bound for exchange "${unboundExchange}" with routing key ""`, messageId: 'u-1' } })
  const notMandatory = await post(`/v1/publish/${unboundExchange}`, 'dropped on purpose', { 'x-mandatory': 'false' })
  t.equal(notMandatory.status, 200, 'X-Mandatory: false accepts the broker dropping it')
})

t.test('a missing exchange answers 404 while 40 concurrent good publishes all answer 200 and land', async (t) => {
  const missing = amqp.name('missing')
  const good = Array.from({ length: 40 }, (_, i) => post(`/v1/publish/${exchange}/order.c${i}`, `g${i}`, { 'x-message-id': `g-${i}` }))
  const bad = Array.from({ length: 5 }, () => post(`/v1/publish/${missing}/x`, 'nowhere'))
  const [goodRes, badRes] = await Promise.all([Promise.all(good), Promise.all(bad)])
  t.same(goodRes.map((r) => r.status), Array(40).fill(200))
  t.same(badRes.map((r) => r.status), Array(5).fill(404))
  t.match(await badRes[0]?.json(), { error: { code: 'EXCHANGE_NOT_FOUND' } })
  const got = await amqp.drainUntil(queue, 40)
  t.equal(got.length, 40, 'all 40 landed')
  t.same(new Set(got.map((m) => m.properties.messageId)).size, 40)
  const status = (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream: { connects: number } }
  t.equal(status.upstream.connects, 1, 'the connection was not dropped')
})

t.test('bad input answers 400 INVALID_REQUEST and 413 PAYLOAD_TOO_LARGE', async (t) => {
  const cases: Array<[string, string, Record<string, string>, number, string]> = [
    ['bad exchange name', '/v1/publish/bad%20name/x', {}, 400, 'INVALID_REQUEST'],
    ['bad priority', `/v1/publish/${exchange}/x`, { 'x-priority': 'high' }, 400, 'INVALID_REQUEST'],
    ['bad X-Persistent', `/v1/publish/${exchange}/x`, { 'x-persistent': 'yes' }, 400, 'INVALID_REQUEST'],
    ['bad X-Timeout-Ms', `/v1/publish/${exchange}/x`, { 'x-timeout-ms': '-5' }, 400, 'INVALID_REQUEST'],
    ['bad X-Ack', `/v1/publish/${exchange}/x`, { 'x-ack': 'maybe' }, 400, 'INVALID_REQUEST'],
    ['bad X-Expiration', `/v1/publish/${exchange}/x`, { 'x-expiration': 'soon' }, 400, 'INVALID_REQUEST'],
  ]
  for (const [what, path, headers, status, code] of cases) {
    const res = await post(path, 'x', headers)
    t.equal(res.status, status, what)
    t.match(await res.json(), { error: { code } }, what)
  }
  const json = (b: string) => post('/v1/publish', b, { 'content-type': 'application/json' })
  for (const [what, body] of [
    ['malformed JSON', '{"exchange":'],
    ['no exchange', '{"body":"x"}'],
    ['unknown key', `{"exchange":"${exchange}","bogus":1}`],
    ['wrong type', `{"exchange":"${exchange}","routingKey":5}`],
    ['bad base64', `{"exchange":"${exchange}","body":"***","bodyEncoding":"base64"}`],
    ['empty batch', '[]'],
  ] as const) {
    const res = await json(body)
    t.equal(res.status, 400, what)
    t.match(await res.json(), { error: { code: 'INVALID_REQUEST' } }, what)
  }
  const big = await post(`/v1/publish/${exchange}/order.big`, Buffer.alloc(2048, 1))
  t.equal(big.status, 413)
  t.match(await big.json(), { error: { code: 'PAYLOAD_TOO_LARGE' } })
  t.same(await amqp.drain(queue), [], 'nothing refused reached the queue')
})

t.test('unknown routes answer 404 NOT_FOUND in the error shape', async (t) => {
  const res = await fetch(`${sc.api}/v1/nope`)
  t.equal(res.status, 404)
  t.match(await res.json(), { error: { code: 'NOT_FOUND' } })
})

t.test('X-Ack: accepted answers 202 and the message is confirmed later', async (t) => {
  const res = await post(`/v1/publish/${exchange}/order.acc`, 'later', { 'x-ack': 'accepted', 'x-message-id': 'acc-1' })
  t.equal(res.status, 202)
  t.same(await res.json(), { messageId: 'acc-1', status: 'accepted' })
  const [m] = await amqp.drainUntil(queue, 1)
  t.equal(m?.properties.messageId, 'acc-1')
})

t.test('metrics count outcomes', async (t) => {
  const text = await (await fetch(`${sc.ops}/metrics`)).text()
  t.match(text, /amqp_sidecar_published_total\{outcome="confirmed"\} \d+/)
  t.match(text, /amqp_sidecar_published_total\{outcome="unroutable"\} [1-9]/)
  t.match(text, /amqp_sidecar_upstream_connected\{connection="publish"\} 1/)
  t.match(text, /amqp_sidecar_publish_duration_seconds_bucket/)
  t.match(text, /amqp_sidecar_buffered_messages 0/)
})

t.test('a message amqplib cannot encode is refused alone and does not stall the others', async (t) => {
  const longName = 'k'.repeat(300)
  const env = { exchange, routingKey: 'order.h', body: 'x', headers: { [longName]: 'v' } }
  const bad = await post('/v1/publish', JSON.stringify(env), { 'content-type': 'application/json', 'x-ack': 'accepted' })
  t.equal(bad.status, 400, 'an over-long header name is a bad request, even in accepted mode')
  const huge = { exchange, routingKey: 'order.h', body: 'x', headers: Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`h${i}`, 'v'.repeat(500)])) }
  // This file's sidecar has a 1 KiB body limit; a second one with the default takes the big table.
  const roomy = await startSidecar(t, {})
  const tooBig = await fetch(`${roomy.api}/v1/publish`, { method: 'POST', body: JSON.stringify(huge), headers: { 'content-type': 'application/json' } })
  t.equal(tooBig.status, 400, 'an oversized header table is a bad request')
  t.match(await tooBig.json(), { error: { code: 'INVALID_REQUEST', message: /headers are too large/ } })
  const userId = await post('/v1/publish', JSON.stringify({ exchange, routingKey: 'order.h', body: 'x', properties: { userId: 'mallory' } }), { 'content-type': 'application/json' })
  t.equal(userId.status, 400, 'userId is refused: the broker would close the channel for a mismatch')
  const good = await post(`/v1/publish/${exchange}/order.after`, 'fine', { 'x-message-id': 'after-bad' })
  t.equal(good.status, 200, 'the next publish is confirmed at once')
  const got = await amqp.drainUntil(queue, 1)
  t.same(got.map((m) => m.properties.messageId), ['after-bad'])
})
