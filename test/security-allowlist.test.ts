// Allow-lists: publish.allowedExchanges answers 403 EXCHANGE_NOT_ALLOWED on
// every publish surface (raw, envelope, batch item, WebSocket), and
// consume.allowedQueues answers 403 QUEUE_NOT_ALLOWED on every consume
// surface (HTTP pull, WebSocket subscribe), before anything reaches the broker.
import t from 'tap'
import { once } from 'node:events'
import WebSocket from 'ws'
import { assertQueueAllowed, isQueueAllowed } from '../src/consume/allow.js'
import { SidecarError } from '../src/errors.js'
import { errorCode, request } from './fixtures/http.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const s = await startSidecar(t, {
  publish: { allowedExchanges: ['amq.fanout'] },
  consume: { allowedQueues: ['allowed.queue'] },
})
await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'the sidecar to be ready' })

const json = { 'content-type': 'application/json' }

t.test('publish.allowedExchanges', async (t) => {
  t.test('an allowed exchange is published to', async (t) => {
    const res = await request(s.api, '/v1/publish/amq.fanout/k', { method: 'POST', headers: { 'x-mandatory': 'false' }, body: 'ok' })
    t.equal(res.status, 200)
  })

  t.test('raw route: 403 EXCHANGE_NOT_ALLOWED', async (t) => {
    for (const exchange of ['amq.direct', 'amq.default', 'AMQ.FANOUT']) {
      const res = await request(s.api, `/v1/publish/${exchange}/k`, { method: 'POST', headers: { 'x-mandatory': 'false' }, body: 'no' })
      t.equal(res.status, 403, exchange)
      t.equal(errorCode(res), 'EXCHANGE_NOT_ALLOWED')
    }
  })

  t.test('JSON envelope: 403 EXCHANGE_NOT_ALLOWED', async (t) => {
    const res = await request(s.api, '/v1/publish', { method: 'POST', headers: json, body: JSON.stringify({ exchange: 'amq.topic', routingKey: 'k', body: 'no' }) })
    t.equal(res.status, 403)
    t.equal(errorCode(res), 'EXCHANGE_NOT_ALLOWED')
  })

  t.test('batch: the refused item says so, the allowed one is published', async (t) => {
    const res = await request(s.api, '/v1/publish', {
      method: 'POST',
      headers: json,
      body: JSON.stringify([
        { exchange: 'amq.fanout', routingKey: 'k', body: 'yes', mandatory: false },
        { exchange: 'amq.topic', routingKey: 'k', body: 'no', properties: { messageId: 'refused-1' } },
      ]),
    })
    t.equal(res.status, 207)
    t.match(res.json, {
      failed: 1,
      results: [{ status: 'confirmed' }, { status: 'error', messageId: 'refused-1', error: { code: 'EXCHANGE_NOT_ALLOWED', httpStatus: 403 } }],
    })
  })
})

t.test('WebSocket publish to a refused exchange: an error frame with EXCHANGE_NOT_ALLOWED', async (t) => {
  const ws = new WebSocket(`${s.api.replace('http', 'ws')}/v1/ws`)
  t.teardown(() => ws.terminate())
  await once(ws, 'open')
  const frames: Array<Record<string, unknown>> = []
  ws.on('message', (data: Buffer) => frames.push(JSON.parse(data.toString('utf8')) as Record<string, unknown>))
  ws.send(JSON.stringify({ op: 'publish', id: 'p-1', exchange: 'amq.topic', routingKey: 'k', body: 'no' }))
  const error = await waitFor(() => frames.find((f) => f.op === 'error' && f.id === 'p-1'), { timeoutMs: 10_000, what: 'an error frame for p-1' })
  t.equal(error.code, 'EXCHANGE_NOT_ALLOWED')
})

t.test('consume.allowedQueues', async (t) => {
  t.test('the helper every consume surface uses', async (t) => {
    t.ok(isQueueAllowed('any', null), 'null allows any queue')
    t.ok(isQueueAllowed('allowed.queue', ['allowed.queue']))
    t.notOk(isQueueAllowed('Allowed.Queue', ['allowed.queue']), 'names are case-sensitive')
    t.doesNotThrow(() => assertQueueAllowed('allowed.queue', ['allowed.queue']))
    const err = t.throws(() => assertQueueAllowed('other', ['allowed.queue'])) as SidecarError
    t.equal(err.code, 'QUEUE_NOT_ALLOWED')
    t.equal(err.status, 403)
  })

  t.test('HTTP pull: 403 QUEUE_NOT_ALLOWED', async (t) => {
    const res = await request(s.api, '/v1/queues/other.queue/pull?waitMs=0', { method: 'POST' })
    t.equal(res.status, 403)
    t.equal(errorCode(res), 'QUEUE_NOT_ALLOWED')
  })

  t.test('WebSocket subscribe: an error frame with QUEUE_NOT_ALLOWED', async (t) => {
    const ws = new WebSocket(`${s.api.replace('http', 'ws')}/v1/ws`)
    t.teardown(() => ws.terminate())
    await once(ws, 'open')
    const frames: Array<Record<string, unknown>> = []
    ws.on('message', (data: Buffer) => frames.push(JSON.parse(data.toString('utf8')) as Record<string, unknown>))
    ws.send(JSON.stringify({ op: 'subscribe', queue: 'other.queue' }))
    const error = await waitFor(() => frames.find((f) => f.op === 'error'), { timeoutMs: 10_000, what: 'an error frame' })
    t.equal(error.code, 'QUEUE_NOT_ALLOWED')
  })
})
