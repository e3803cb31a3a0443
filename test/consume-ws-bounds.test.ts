/**
 * The WebSocket send queue is bounded for every frame kind: a client that
 * sends ops but never reads the answers (here pings with large ids, each
 * answered by a pong echoing the id) is cut with close code 4008 once the
 * unwritten answers pass their bound, instead of growing the sidecar's memory.
 * The client is a raw TCP socket that does the upgrade and then never reads.
 */
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect } from 'node:net'
import t from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

/** One masked client text frame (RFC 6455 section 5.2); payloads here are < 64 KiB. */
function clientFrame(text: string): Buffer {
  const payload = Buffer.from(text)
  const mask = randomBytes(4)
  const head = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff])
  const masked = Buffer.alloc(payload.length)
  for (let i = 0; i < payload.length; i++) masked[i] = (payload[i] as number) ^ (mask[i % 4] as number)
  return Buffer.concat([head, mask, masked])
}

const sc = await startSidecar(t, {})
const port = Number(new URL(sc.api).port)
const cuts = async () => Number(/amqp_sidecar_websocket_cuts_total (\d+)/.exec(await (await fetch(`${sc.ops}/metrics`)).text())?.[1] ?? 0)

t.test('a client that sends ops but never reads is cut (4008), a reading one is not', async (t) => {
  const reader = await wsClient(t, sc.api)
  const socket = connect({ host: '127.0.0.1', port })
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  // Never read: everything the sidecar sends piles up in the kernel buffers, then in its own send queue.
  socket.pause()
  socket.on('error', () => {})
  const key = randomBytes(16).toString('base64')
  socket.write(`GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`)
  await waitFor(() => sc.sidecar.consumers.status().websocketClients === 2, { timeoutMs: 10_000, what: 'the raw client upgraded' })
  const id = 'x'.repeat(32 * 1024)
  // Up to 64 MiB of pongs owed: far past any socket buffer; the cut must come first.
  let sent = 0
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  const writeMore = async () => {
    while (sent < 2048 && !socket.destroyed) {
      sent++
      if (!socket.write(clientFrame(JSON.stringify({ op: 'ping', id })))) await Promise.race([once(socket, 'drain'), closed])
    }
  }
  void writeMore().catch(() => {})
  await waitFor(async () => (await cuts()) === 1, { timeoutMs: 60_000, what: 'the non-reading client to be cut' })
  await waitFor(() => sc.sidecar.consumers.status().websocketClients === 1, { timeoutMs: 10_000, what: 'only the reading client left' })
  t.ok(sc.logs.some((l) => l.includes('does not read the answers')), 'the cut is logged')
  socket.resume()
  await closed
  t.pass('the sidecar closed the connection')
  reader.send({ op: 'ping', id: 'still-here' })
  await reader.next((f) => f.op === 'pong' && f['id'] === 'still-here', 'the reading client is served')
})
