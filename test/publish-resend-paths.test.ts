// At-least-once on every publish path (issue 11 item 1, DESIGN.md section 2):
// a confirm-mode message written but not confirmed when a reset kills its
// channel is re-sent on the next channel within its deadline and answered as
// confirmed, with the same message_id, for a JSON envelope, a batch of
// envelopes and a WebSocket publish. The raw route's twin is in
// publish-refusals.test.ts; the rig and the shared checks are in fixtures/resend.ts.
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { request } from './fixtures/http.js'
import {
  ANSWER_WAIT_MS,
  CONFIRMED,
  RESEND_DEADLINE_MS,
  checkResentAndConfirmed,
  httpAnswer,
  publishUnderResets,
  startResetRig,
  type Answer,
} from './fixtures/resend.js'
import { SHARED_BROKER_URL } from './fixtures/sidecar.js'
import { wsClient } from './fixtures/ws-client.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const TOTAL = 400
/** Two resets, each in the middle of the load. */
const RESETS_AFTER = [100, 250]

const envelope = (queue: string, id: string) => ({ exchange: 'amq.default', routingKey: queue, body: id, properties: { messageId: id } })
const postJson = (api: string, body: unknown) =>
  request(api, '/v1/publish', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-timeout-ms': String(RESEND_DEADLINE_MS) },
    body: JSON.stringify(body),
    timeoutMs: ANSWER_WAIT_MS,
  })

t.test('envelope publishes (POST /v1/publish, one envelope) in flight at a reset are re-sent and answered 200, not 504', async (t) => {
  const rig = await startResetRig(t, amqp)
  const answers = await publishUnderResets(rig, {
    total: TOTAL,
    workers: 32,
    resetsAfter: RESETS_AFTER,
    send: async ([id = '']) => new Map([[id, httpAnswer(await postJson(rig.sc.api, envelope(rig.queue, id)))]]),
  })
  await checkResentAndConfirmed(t, amqp, rig, answers)
})

t.test('batch publishes in flight at a reset are re-sent: the batch answers 200 and every result is confirmed, none 504', async (t) => {
  const rig = await startResetRig(t, amqp)
  const answers = await publishUnderResets(rig, {
    total: TOTAL,
    workers: 8,
    perRequest: 10,
    resetsAfter: RESETS_AFTER,
    send: async (ids) => {
      const r = await postJson(rig.sc.api, ids.map((id) => envelope(rig.queue, id)))
      type Item = { messageId: string; status: string; error?: { code: string; httpStatus: number } }
      const results = (r.json as { results?: Item[] } | undefined)?.results ?? []
      const out = new Map<string, Answer>()
      for (const [i, id] of ids.entries()) {
        const item = results[i]
        // A confirmed item of a 207 batch still fails the test: the batch said something failed.
        if (item?.status === 'confirmed' && item.messageId === id) out.set(id, r.status === 200 ? CONFIRMED : `confirmed in a ${r.status} batch`)
        else out.set(id, item?.error ? `${item.error.httpStatus} ${item.error.code}` : `${r.status} ${r.text.slice(0, 80)}`)
      }
      return out
    },
  })
  await checkResentAndConfirmed(t, amqp, rig, answers)
})

t.test('WebSocket publishes in flight at a reset are re-sent and answered with confirm frames, no error frames', async (t) => {
  // A WebSocket publish takes its deadline from publish.timeoutMs.
  const rig = await startResetRig(t, amqp, { publish: { timeoutMs: RESEND_DEADLINE_MS } })
  const ws = await wsClient(t, rig.sc.api)
  const answers = await publishUnderResets(rig, {
    total: TOTAL,
    workers: 32,
    resetsAfter: RESETS_AFTER,
    send: async ([id = '']) => {
      const from = ws.frames.length
      ws.send({ op: 'publish', id, ...envelope(rig.queue, id) })
      const f = await ws.next((f) => f.id === id && (f.op === 'confirm' || f.op === 'error'), `the answer to publish ${id}`, { from, timeoutMs: ANSWER_WAIT_MS })
      return new Map([[id, f.op === 'confirm' && f.messageId === id ? CONFIRMED : `${f.op} ${String(f.code)}`]])
    },
  })
  t.same(
    ws.ops('error').map((f) => `${String(f.id)} ${String(f.code)}`),
    [],
    'no error frame at all',
  )
  await checkResentAndConfirmed(t, amqp, rig, answers)
})
