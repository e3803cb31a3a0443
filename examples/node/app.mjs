#!/usr/bin/env node
// amqp-sidecar from Node with no AMQP client: publish with fetch, consume and
// ack over one WebSocket (and publish over it too, with a confirm per message).
//   SIDECAR_URL=http://127.0.0.1:8672 EXCHANGE=orders ROUTING_KEY=order.created \
//   QUEUE=orders.created COUNT=3 node app.mjs
// Optional: SIDECAR_TOKEN or SIDECAR_TOKEN_FILE. Uses the `ws` package when it
// is installed (Node 20 has no global WebSocket), else Node 22+'s WebSocket.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'

const SIDECAR = (process.env.SIDECAR_URL ?? 'http://127.0.0.1:8672').replace(/\/$/, '')
const EXCHANGE = process.env.EXCHANGE ?? 'orders'
const ROUTING_KEY = process.env.ROUTING_KEY ?? 'order.created'
const QUEUE = process.env.QUEUE ?? 'orders.created'
const COUNT = Number(process.env.COUNT ?? 3)
const DEADLINE_MS = Number(process.env.DEADLINE_MS ?? 30_000)
const token = process.env.SIDECAR_TOKEN ?? (process.env.SIDECAR_TOKEN_FILE ? readFileSync(process.env.SIDECAR_TOKEN_FILE, 'utf8').trim() : undefined)
const auth = token ? { authorization: `Bearer ${token}` } : {}

const log = (step, fields = {}) => console.log(JSON.stringify({ step, ...fields }))

async function openSocket() {
  const url = `${SIDECAR.replace(/^http/, 'ws')}/v1/ws`
  let WebSocketImpl
  try {
    WebSocketImpl = (await import('ws')).default
  } catch {
    WebSocketImpl = globalThis.WebSocket
  }
  if (!WebSocketImpl) throw new Error('no WebSocket: npm install ws, or use Node 22+')
  // Both `ws` and Node's built-in WebSocket take extra headers in the second argument.
  const ws = new WebSocketImpl(url, { headers: auth })
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve, { once: true })
    ws.addEventListener('error', (e) => reject(e.error ?? new Error('WebSocket error')), { once: true })
  })
  return ws
}

/** Resolves with the first frame `match` accepts; rejects on an error frame carrying `id`. */
function nextFrame(ws, match, what, id) {
  return new Promise((resolve, reject) => {
    const onMessage = (event) => {
      const frame = JSON.parse(String(event.data))
      if (frame.op === 'error' && id !== undefined && frame.id === id) done(new Error(`${what}: ${frame.code} ${frame.message}`))
      else if (match(frame)) done(null, frame)
    }
    const timer = setTimeout(() => done(new Error(`timed out waiting for ${what}`)), DEADLINE_MS)
    const done = (err, frame) => {
      clearTimeout(timer)
      ws.removeEventListener('message', onMessage)
      if (err) reject(err)
      else resolve(frame)
    }
    ws.addEventListener('message', onMessage)
  })
}

async function main() {
  const ws = await openSocket()
  const received = new Map() // messageId -> deliveryId
  const acked = new Set() // deliveryIds the sidecar acked
  let onAcked = () => {}
  ws.addEventListener('message', (event) => {
    const frame = JSON.parse(String(event.data))
    if (frame.op === 'message') {
      const payload = frame.bodyEncoding === 'utf8' ? JSON.parse(frame.body) : frame.body
      log('received', { messageId: frame.properties.messageId, redelivered: frame.redelivered, payload })
      received.set(frame.properties.messageId, frame.deliveryId)
      // Work done: ack. The id asks for a `result` frame (acked, stale, unknown);
      // stale means the broker redelivers it, so it arrives again.
      ws.send(JSON.stringify({ op: 'ack', id: `ack-${frame.deliveryId}`, deliveryId: frame.deliveryId }))
    } else if (frame.op === 'result') {
      log('ack', { deliveryId: frame.deliveryId, result: frame.result })
      if (frame.result === 'acked') acked.add(frame.deliveryId)
      onAcked()
    }
  })
  const allAcked = (messageIds) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out waiting for the messages')), DEADLINE_MS)
      onAcked = () => {
        if (messageIds.every((m) => acked.has(received.get(m)))) {
          clearTimeout(timer)
          resolve()
        }
      }
      onAcked()
    })

  ws.send(JSON.stringify({ op: 'subscribe', id: 'sub-1', queue: QUEUE, prefetch: 10 }))
  await nextFrame(ws, (f) => f.op === 'subscribed' && f.queue === QUEUE, `subscribe ${QUEUE}`, 'sub-1')
  log('subscribed', { queue: QUEUE })

  // Publish COUNT messages as JSON envelopes in one batch over HTTP...
  const envelopes = Array.from({ length: COUNT }, (_, i) => ({
    exchange: EXCHANGE,
    routingKey: ROUTING_KEY,
    body: { orderId: i, source: 'app.mjs (fetch)' },
    bodyEncoding: 'json',
    properties: { messageId: randomUUID(), contentType: 'application/json' },
  }))
  const res = await fetch(`${SIDECAR}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify(envelopes) })
  const batch = await res.json()
  if (res.status !== 200) throw new Error(`batch publish answered ${res.status}: ${JSON.stringify(batch)}`)
  log('published', { via: 'fetch', messageIds: batch.results.map((r) => r.messageId) })

  // ...and one more over the WebSocket, answered by a confirm frame.
  const id = 'pub-1'
  ws.send(JSON.stringify({ op: 'publish', id, exchange: EXCHANGE, routingKey: ROUTING_KEY, body: JSON.stringify({ orderId: COUNT, source: 'app.mjs (ws)' }), bodyEncoding: 'utf8', properties: { contentType: 'application/json' } }))
  const confirm = await nextFrame(ws, (f) => f.op === 'confirm' && f.id === id, 'publish confirm', id)
  log('published', { via: 'ws', messageId: confirm.messageId })

  const expected = [...batch.results.map((r) => r.messageId), confirm.messageId]
  await allAcked(expected)
  ws.send(JSON.stringify({ op: 'unsubscribe', id: 'unsub-1', queue: QUEUE }))
  await nextFrame(ws, (f) => f.op === 'unsubscribed', 'unsubscribe', 'unsub-1')
  ws.close(1000)
  log('done', { published: expected.length, acked: acked.size, ok: true })
}

main().catch((err) => {
  console.error(`app.mjs: ${err.message}`)
  // exit() rather than exitCode: an open WebSocket would keep the process alive for ever.
  process.exit(1)
})
