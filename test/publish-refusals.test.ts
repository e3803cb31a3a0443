// The honest 202 path and at-least-once re-send (issues 10 and 11): a 202
// message the broker refuses for good is dead-lettered or logged and never
// blocks what is behind it; the bound counts headers; returns are matched to
// the exact copy; a WebSocket publish obeys the body limit; and a reset turns
// in-flight confirm-mode publishes into re-sends answered 200, not 504
// (the envelope, batch and WebSocket paths: publish-resend-paths.test.ts).
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { startFaultProxy } from './fixtures/fault-proxy.js'
import { errorCode, request } from './fixtures/http.js'
import { metricTotal } from './fixtures/metrics.js'
import { ANSWER_WAIT_MS, RESEND_DEADLINE_MS, checkResentAndConfirmed, httpAnswer, publishUnderResets, startResetRig } from './fixtures/resend.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const post = (api: string, path: string, headers: Record<string, string>, body: string) =>
  request(api, path, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body, timeoutMs: 30_000 })

/** An internal exchange: the broker closes the channel (403) on any publish to it. */
async function internalExchange(tt: Test): Promise<string> {
  const ch = await amqp.channel()
  const name = amqp.name('internal')
  await ch.assertExchange(name, 'fanout', { internal: true, durable: false, autoDelete: false })
  tt.teardown(async () => (await amqp.channel()).deleteExchange(name).catch(() => {}))
  return name
}

t.test('a 202 message the broker refuses (403) goes to publish.deadLetter, and the messages behind it flow', async (t) => {
  const internal = await internalExchange(t)
  const ch = await amqp.channel()
  const dlq = amqp.name('dlq')
  const okq = amqp.name('ok')
  await ch.assertQueue(dlq, { durable: false })
  await ch.assertQueue(okq, { durable: false })
  const sc = await startSidecar(t, { publish: { deadLetter: { exchange: '', routingKey: dlq } } })

  const refused = await post(sc.api, `/v1/publish/${internal}/k`, { 'x-ack': 'accepted', 'x-message-id': 'refused-1' }, 'hello')
  t.equal(refused.status, 202, 'accepted: the sidecar cannot know before the broker answers')
  for (let i = 0; i < 5; i++) {
    const r = await post(sc.api, `/v1/publish/amq.default/${okq}`, { 'x-timeout-ms': '8000' }, `ok-${i}`)
    t.equal(r.status, 200, `publish ${i} behind the refused one is confirmed`)
  }
  const dead = await amqp.drainUntil(dlq, 1, 15_000)
  t.equal(dead.length, 1, 'the refused message reached the dead-letter queue')
  t.equal(dead[0]?.properties.messageId, 'refused-1')
  t.match(String(dead[0]?.properties.headers?.['x-sidecar-error']), /EXCHANGE_ACCESS_REFUSED/)
  t.equal(dead[0]?.properties.headers?.['x-sidecar-original-exchange'], internal)
  t.equal(dead[0]?.content.toString(), 'hello')
  t.equal((await amqp.drainUntil(okq, 5)).length, 5)
  const again = await post(sc.api, `/v1/publish/${internal}/k`, { 'x-ack': 'accepted' }, 'again')
  t.equal(again.status, 403, 'the next publish to the refused exchange is refused at once')
  t.equal(errorCode(again), 'EXCHANGE_ACCESS_REFUSED')
  t.ok((await metricTotal(sc.ops, 'amqp_sidecar_publish_dead_lettered_total')) >= 1, 'counted as dead-lettered')
})

t.test('without publish.deadLetter a refused 202 message is logged with its message_id and counted', async (t) => {
  const internal = await internalExchange(t)
  const okq = amqp.name('ok')
  await (await amqp.channel()).assertQueue(okq, { durable: false })
  const sc = await startSidecar(t)
  t.equal((await post(sc.api, `/v1/publish/${internal}/k`, { 'x-ack': 'accepted', 'x-message-id': 'refused-2' }, 'x')).status, 202)
  const line = await waitFor(() => sc.logs.find((l) => l.includes('"refused-2"') && l.includes('was not published')), {
    timeoutMs: 15_000,
    what: 'the error log line naming refused-2',
  })
  t.match(JSON.parse(line), { level: 50, messageId: 'refused-2', code: 'EXCHANGE_ACCESS_REFUSED' })
  t.equal(await metricTotal(sc.ops, 'amqp_sidecar_accepted_dropped_total'), 1)
  t.equal((await post(sc.api, `/v1/publish/amq.default/${okq}`, { 'x-timeout-ms': '8000' }, 'behind')).status, 200, 'what comes after flows')
})

t.test('the buffer bound counts the bytes a message holds: headers, not only the body', async (t) => {
  // Nothing listens on the broker port: every 202 message stays in the buffer.
  const port = await freePort()
  const sc = await startSidecar(t, { amqp: { urls: [`amqp://guest:guest@127.0.0.1:${port}/%2F`] }, publish: { maxBufferedBytes: 1_048_576 } })
  const envelope = JSON.stringify({ exchange: 'amq.default', routingKey: 'q', body: '', headers: { big: 'h'.repeat(30_000) } })
  let accepted = 0
  let full: Awaited<ReturnType<typeof request>> | undefined
  for (let i = 0; i < 200 && !full; i++) {
    const r = await request(sc.api, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json', 'x-ack': 'accepted' }, body: envelope })
    if (r.status === 202) accepted++
    else full = r
  }
  t.equal(full?.status, 503, 'the bound answers 503')
  t.equal(full && errorCode(full), 'BUFFER_FULL')
  t.ok(full?.headers['retry-after'], 'with Retry-After')
  t.ok(accepted > 0 && accepted <= Math.ceil(1_048_576 / 30_000), `${accepted} messages of 30 KB headers fit a 1 MiB bound`)
})

t.test('a WebSocket publish obeys api.bodyLimitBytes on the decoded body', async (t) => {
  const q = amqp.name('ws-limit')
  await (await amqp.channel()).assertQueue(q, { durable: false })
  const sc = await startSidecar(t, { api: { bodyLimitBytes: 1024 } })
  const ws = await wsClient(t, sc.api)
  ws.send({ op: 'publish', id: 'big', exchange: 'amq.default', routingKey: q, body: Buffer.alloc(1300, 7).toString('base64'), bodyEncoding: 'base64' })
  ws.send({ op: 'publish', id: 'small', exchange: 'amq.default', routingKey: q, body: Buffer.alloc(1000, 7).toString('base64'), bodyEncoding: 'base64' })
  const err = await ws.next((f) => f.op === 'error' && f.id === 'big', 'the error for the big publish')
  t.equal(err.code, 'PAYLOAD_TOO_LARGE')
  await ws.next((f) => f.op === 'confirm' && f.id === 'small', 'the confirm of the small publish')
  t.equal((await amqp.drainUntil(q, 1)).length, 1, 'only the small one reached the queue')
})

t.test('a basic.return is matched to the exact copy, even with two copies of one message id in flight', async (t) => {
  const ch = await amqp.channel()
  const hx = amqp.name('headers-x')
  const q = amqp.name('hq')
  await ch.assertExchange(hx, 'headers', { durable: false, autoDelete: false })
  t.teardown(async () => (await amqp.channel()).deleteExchange(hx).catch(() => {}))
  await ch.assertQueue(q, { durable: false })
  await ch.bindQueue(q, hx, '', { 'x-match': 'all', route: 'yes' })
  const sc = await startSidecar(t)
  const batch = [
    { exchange: hx, routingKey: 'k', body: 'routed', headers: { route: 'yes' }, properties: { messageId: 'dup-1' } },
    { exchange: hx, routingKey: 'k', body: 'unrouted', headers: { route: 'no' }, properties: { messageId: 'dup-1' } },
  ]
  const r = await request(sc.api, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(batch) })
  const results = (r.json as { results: Array<{ status: string; error?: { code: string } }> }).results
  t.equal(results[0]?.status, 'confirmed', 'the routed copy is confirmed')
  t.equal(results[1]?.error?.code, 'UNROUTABLE', 'the returned copy is 422')
  const read = await amqp.drainUntil(q, 1)
  t.same(
    read.map((m) => m.content.toString()),
    ['routed'],
  )
})

t.test('a reset under load: confirm-mode publishes in flight are re-sent and answered 200, not 504', async (t) => {
  const rig = await startResetRig(t, amqp)
  const answers = await publishUnderResets(rig, {
    total: 400,
    workers: 32,
    resetsAfter: [100, 250],
    send: async ([id = '']) => {
      const headers = { 'content-type': 'text/plain', 'x-message-id': id, 'x-timeout-ms': String(RESEND_DEADLINE_MS) }
      const r = await request(rig.sc.api, `/v1/publish/amq.default/${rig.queue}`, { method: 'POST', headers, body: id, timeoutMs: ANSWER_WAIT_MS })
      return new Map([[id, httpAnswer(r)]])
    },
  })
  await checkResentAndConfirmed(t, amqp, rig, answers)
})

t.test('a deadline that passes while the writer checks an unknown exchange drops that message only, never the one behind it', async (t) => {
  // Messages queued while disconnected have their exchange checked by the writer
  // after the reconnect. A slow link makes each check take a while, and spread
  // deadlines make some of them pass in the middle of their own check: the old
  // writer then dropped the queue's head, which was the 202 message behind it.
  const shared = new URL(SHARED_BROKER_URL)
  const proxy = await startFaultProxy({ upstreamHost: shared.hostname, upstreamPort: Number(shared.port || 5672) })
  t.teardown(() => proxy.close())
  const q = amqp.name('behind')
  await (await amqp.channel()).assertQueue(q, { durable: false })
  await proxy.setDown(true)
  const sc = await startSidecar(t, { amqp: { urls: [`amqp://guest:guest@127.0.0.1:${proxy.port}/%2F`] } })
  const PAIRS = 24
  const answers: Array<Promise<unknown>> = []
  for (let i = 0; i < PAIRS; i++) {
    // A confirm-mode publish to an exchange nobody declared, with its own deadline...
    answers.push(post(sc.api, `/v1/publish/test.missing.${i}.${Date.now()}/k`, { 'x-timeout-ms': String(1500 + i * 250) }, 'a'))
    // ...and a 202 message right behind it, which must arrive whatever happens to the first.
    const r = await post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-ack': 'accepted', 'x-message-id': `behind-${i}` }, 'b')
    t.equal(r.status, 202)
  }
  proxy.setLatency(150)
  await proxy.setDown(false)
  const statuses = (await Promise.all(answers)) as Array<{ status: number }>
  t.ok(
    statuses.every((r) => r.status === 404 || r.status === 504),
    'each message to a missing exchange is answered 404 or 504 by its deadline',
  )
  const read = await amqp.drainUntil(q, PAIRS, 60_000)
  t.same(
    read.map((m) => m.properties.messageId).sort(),
    Array.from({ length: PAIRS }, (_, i) => `behind-${i}`).sort(),
    'every 202 message behind them reached the queue',
  )
})
