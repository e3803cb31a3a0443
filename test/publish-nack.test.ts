// A basic.nack is re-sent, on a fresh channel with a backoff, for at most
// publish.nackRetryMs and never past the deadline, then answered 502 (issue
// 15). The nacks here are real: a queue with x-overflow reject-publish that is
// full nacks every publish until a message leaves it.
import amqplib from 'amqplib'
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { errorCode, request } from './fixtures/http.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const post = (api: string, path: string, headers: Record<string, string>, body: string) =>
  request(api, path, { method: 'POST', headers: { 'content-type': 'text/plain', ...headers }, body, timeoutMs: 90_000 })
const metric = async (ops: string, line: string) => {
  const text = await (await fetch(`${ops}/metrics`)).text()
  return text
    .split('\n')
    .filter((l) => l.startsWith(line))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0)
}
const NACK_RESENDS = 'amqp_sidecar_publish_resends_total{cause="nacked"}'

/** A queue that holds one message and nacks every publish while it does; filled. */
async function fullQueue(tt: Test): Promise<string> {
  const ch = await amqp.channel()
  const q = amqp.name('full')
  await ch.assertQueue(q, { durable: false, arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' } })
  const conn = await amqplib.connect(SHARED_BROKER_URL)
  try {
    const cc = await conn.createConfirmChannel()
    cc.sendToQueue(q, Buffer.from('filler'))
    await cc.waitForConfirms()
  } finally {
    await conn.close()
  }
  tt.equal(await amqp.depth(q), 1, 'the queue is full')
  return q
}

t.test('a nacked message is re-sent and answered 200 once the queue takes it', async (t) => {
  const q = await fullQueue(t)
  const sc = await startSidecar(t, { publish: { nackRetryMs: 60_000 } })
  const answer = post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-timeout-ms': '60000', 'x-message-id': 'nacked-then-taken' }, 'payload')
  // The broker has nacked it at least once (the sidecar counts the re-send); now make room.
  await waitFor(async () => (await metric(sc.ops, NACK_RESENDS)) >= 1, { timeoutMs: 30_000, what: 'a re-send after a nack' })
  const filler = await (await amqp.channel()).get(q, { noAck: true })
  t.equal(filler && filler.content.toString(), 'filler', 'room made in the queue')
  const r = await answer
  t.equal(r.status, 200, 'confirmed: the re-sent copy was taken (the old code answered the first nack with 502)')
  const got = await (await amqp.channel()).get(q, { noAck: true })
  t.equal(got && got.properties.messageId, 'nacked-then-taken', 'the message is in the queue, once')
  t.equal(await amqp.depth(q), 0)
  t.ok(sc.logs.some((l) => l.includes('re-sending on a fresh channel')), 'the nack moved publishing to a fresh channel')
})

t.test('a queue that keeps nacking is answered 502 after publish.nackRetryMs, and the messages behind it flow', async (t) => {
  const q = await fullQueue(t)
  const okq = amqp.name('ok')
  await (await amqp.channel()).assertQueue(okq, { durable: false })
  const sc = await startSidecar(t, { publish: { nackRetryMs: 1_000 } })
  const nacked = post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-timeout-ms': '60000' }, 'x')
  const behind = await post(sc.api, `/v1/publish/amq.default/${okq}`, { 'x-timeout-ms': '60000' }, 'behind')
  t.equal(behind.status, 200, 'a publish to another queue is confirmed meanwhile')
  const r = await nacked
  t.equal(r.status, 502)
  t.equal(errorCode(r), 'PUBLISH_NACKED')
  t.match(r.text, /nacked the message \d+ times/, 'the answer says it was re-sent')
  t.ok((await metric(sc.ops, NACK_RESENDS)) >= 1, 're-sends after a nack are counted')
  t.equal(await amqp.depth(q), 1, 'nothing got in')
})

t.test('the deadline ends the re-sends: 502, not 504, when the last copy was nacked', async (t) => {
  const q = await fullQueue(t)
  const sc = await startSidecar(t, { publish: { nackRetryMs: 600_000 } })
  const r = await post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-timeout-ms': '2000' }, 'x')
  t.equal(r.status, 502)
  t.equal(errorCode(r), 'PUBLISH_NACKED')
  t.ok((await metric(sc.ops, NACK_RESENDS)) >= 1, 'it was re-sent before the deadline')
})

t.test('nackRetryMs 0 answers the first nack', async (t) => {
  const q = await fullQueue(t)
  const sc = await startSidecar(t, { publish: { nackRetryMs: 0 } })
  const r = await post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-timeout-ms': '20000' }, 'x')
  t.equal(r.status, 502)
  t.equal(errorCode(r), 'PUBLISH_NACKED')
  t.equal(await metric(sc.ops, NACK_RESENDS), 0, 'no re-send')
})

t.test('a 202 message nacked past the window goes to publish.deadLetter', async (t) => {
  const q = await fullQueue(t)
  const dlq = amqp.name('dlq')
  await (await amqp.channel()).assertQueue(dlq, { durable: false })
  const sc = await startSidecar(t, { publish: { nackRetryMs: 500, deadLetter: { exchange: '', routingKey: dlq } } })
  const r = await post(sc.api, `/v1/publish/amq.default/${q}`, { 'x-ack': 'accepted', 'x-message-id': 'nacked-202' }, 'x')
  t.equal(r.status, 202)
  const dead = await amqp.drainUntil(dlq, 1, 30_000)
  t.equal(dead[0]?.properties.messageId, 'nacked-202')
  t.match(String(dead[0]?.properties.headers?.['x-sidecar-error']), /PUBLISH_NACKED/)
})
