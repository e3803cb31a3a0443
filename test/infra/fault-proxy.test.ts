// Proves the fault proxy forwards bytes intact under every delaying toxic and
// that each breaking mode is what a client actually observes.
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect, createServer, type Server, type Socket } from 'node:net'
import amqplib from 'amqplib'
import { startFaultProxy, type FaultProxy } from '../fixtures/fault-proxy.js'
import { acceptsConnections } from '../fixtures/probes.js'
import { waitFor, waitForEvent } from '../fixtures/wait.js'

const TIMEOUT_MS = 10_000
// How long "nothing happens" is watched for. An observation window, not a sync.
const QUIET_WINDOW_MS = 300

interface Teardown {
  teardown(fn: () => unknown): void
}

interface Upstream {
  server: Server
  port: number
  sockets: Socket[]
  received: () => Buffer
  /** 'data' events seen upstream: shows whether slicing reached the wire. */
  reads: () => number
}

/** An upstream that echoes (default) or only records what it receives. */
async function startUpstream(t: Teardown, mode: 'echo' | 'record' = 'echo'): Promise<Upstream> {
  const sockets: Socket[] = []
  const chunks: Buffer[] = []
  let reads = 0
  const server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.push(s)
    s.on('error', () => {})
    s.on('data', () => reads++)
    if (mode === 'echo') s.pipe(s)
    else s.on('data', (d: Buffer) => chunks.push(d))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { server, port: address.port, sockets, received: () => Buffer.concat(chunks), reads: () => reads }
}

async function proxyTo(t: Teardown, port: number): Promise<FaultProxy> {
  const proxy = await startFaultProxy({ upstreamHost: '127.0.0.1', upstreamPort: port })
  t.teardown(() => proxy.close())
  return proxy
}

async function dial(t: Teardown, port: number): Promise<{ socket: Socket; received: () => Buffer }> {
  const socket = connect({ host: '127.0.0.1', port })
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  socket.on('error', () => {}) // asserted through 'close' / explicit listeners
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  return { socket, received: () => Buffer.concat(chunks) }
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

async function echoThrough(t: Teardown, proxy: FaultProxy, payload: Buffer): Promise<Buffer> {
  const { socket, received } = await dial(t, proxy.port)
  socket.write(payload)
  await waitFor(() => received().length >= payload.length, { timeoutMs: 30_000, what: `${payload.length} echoed bytes` })
  socket.end()
  return received()
}

t.test('slicer + latency + jitter: 200 KB echo arrives byte-identical', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  proxy.setSlicer(1, 64)
  proxy.setLatency(20, 15)
  const payload = randomBytes(200 * 1024)
  const started = Date.now()
  const echoed = await echoThrough(t, proxy, payload)
  t.comment(`200 KB sliced 1-64 B each way in ${Date.now() - started} ms`)
  t.equal(echoed.length, payload.length)
  t.equal(sha256(echoed), sha256(payload))
  t.ok(proxy.stats().every((s) => s.bytesUpstream === payload.length || s.bytesUpstream === 0))
})

t.test('slicer 1-7 bytes with bandwidth: intact and throttled', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  proxy.setSlicer(1, 7)
  proxy.setBandwidth(50_000, 'downstream')
  const payload = randomBytes(20 * 1024)
  const started = Date.now()
  const echoed = await echoThrough(t, proxy, payload)
  const elapsed = Date.now() - started
  t.equal(sha256(echoed), sha256(payload))
  t.ok(elapsed >= 300, `20 KB at 50 KB/s took ${elapsed} ms (>= 300)`)
  t.ok(upstream.reads() > 500, `upstream saw ${upstream.reads()} reads of 20 KB: slices reach the wire`)
})

t.test('latency applies per direction and clear() removes it', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  proxy.setLatency(150)
  const rtt = async (): Promise<number> => {
    const started = Date.now()
    await echoThrough(t, proxy, Buffer.from('ping'))
    return Date.now() - started
  }
  const slow = await rtt()
  t.ok(slow >= 300, `round trip with 150 ms each way: ${slow} ms`)
  await proxy.clear()
  const fast = await rtt()
  t.ok(fast < 150, `round trip after clear: ${fast} ms`)
})

t.test('resetPeers: the client gets ECONNRESET', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  const { socket } = await dial(t, proxy.port)
  await waitFor(() => proxy.connections === 1, { timeoutMs: TIMEOUT_MS, what: 'proxied connection' })
  const errored = waitForEvent<[NodeJS.ErrnoException]>(socket, 'error', { timeoutMs: TIMEOUT_MS, what: 'reset' })
  proxy.resetPeers()
  t.equal((await errored)[0].code, 'ECONNRESET')
  await waitFor(() => proxy.connections === 0, { timeoutMs: TIMEOUT_MS, what: 'link removed' })
})

t.test('blackhole forwards nothing either way, keeps sockets, releases intact', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  const { socket, received } = await dial(t, proxy.port)
  await waitFor(() => proxy.connections === 1, { timeoutMs: TIMEOUT_MS, what: 'proxied connection' })
  proxy.setBlackhole(true)
  const payload = randomBytes(4096)
  socket.write(payload)
  await new Promise((resolve) => setTimeout(resolve, QUIET_WINDOW_MS))
  t.equal(received().length, 0, 'nothing came back')
  t.equal(proxy.stats()[0]?.bytesUpstream, 0, 'nothing went upstream')
  t.ok((proxy.stats()[0]?.idleMs ?? 0) >= QUIET_WINDOW_MS - 50, 'idle time tracked')
  t.notOk(socket.destroyed, 'client socket still open')
  t.equal(proxy.connections, 1)
  proxy.setBlackhole(false)
  await waitFor(() => received().length === payload.length, { timeoutMs: TIMEOUT_MS, what: 'held bytes' })
  t.equal(sha256(received()), sha256(payload))
})

t.test('half-open: client->server flows, server->client is held', async (t) => {
  const upstream = await startUpstream(t, 'record')
  const proxy = await proxyTo(t, upstream.port)
  const { socket, received } = await dial(t, proxy.port)
  await waitFor(() => upstream.sockets.length === 1, { timeoutMs: TIMEOUT_MS, what: 'upstream accept' })
  proxy.setHalfOpen(true)
  socket.write('to-server')
  upstream.sockets[0]?.write('to-client')
  await waitFor(() => upstream.received().toString() === 'to-server', { timeoutMs: TIMEOUT_MS, what: 'upstream bytes' })
  await new Promise((resolve) => setTimeout(resolve, QUIET_WINDOW_MS))
  t.equal(received().length, 0, 'server->client held')
  await proxy.clear()
  await waitFor(() => received().toString() === 'to-client', { timeoutMs: TIMEOUT_MS, what: 'released bytes' })
})

t.test('down refuses new connections and resets live ones; up accepts again', async (t) => {
  const upstream = await startUpstream(t)
  const proxy = await proxyTo(t, upstream.port)
  const { socket } = await dial(t, proxy.port)
  await waitFor(() => proxy.connections === 1, { timeoutMs: TIMEOUT_MS, what: 'proxied connection' })
  const errored = waitForEvent<[NodeJS.ErrnoException]>(socket, 'error', { timeoutMs: TIMEOUT_MS, what: 'reset' })
  await proxy.setDown(true)
  t.equal((await errored)[0].code, 'ECONNRESET')
  await t.rejects(acceptsConnections(proxy.port), { code: 'ECONNREFUSED' })
  await proxy.setDown(true, 'reset')
  const fresh = connect({ host: '127.0.0.1', port: proxy.port })
  const [err] = await waitForEvent<[NodeJS.ErrnoException]>(fresh, 'error', { timeoutMs: TIMEOUT_MS, what: 'reset' })
  t.match(err.code, /ECONNRESET|EPIPE/)
  await proxy.setDown(false)
  const echoed = await echoThrough(t, proxy, Buffer.from('back'))
  t.equal(echoed.toString(), 'back')
})

t.test('limitData ends the connection after exactly N bytes', async (t) => {
  const upstream = await startUpstream(t, 'record')
  const proxy = await proxyTo(t, upstream.port)
  proxy.setLimitData(100, 'upstream')
  const { socket } = await dial(t, proxy.port)
  const ended = waitForEvent(socket, 'close', { timeoutMs: TIMEOUT_MS, what: 'cut' })
  socket.write(randomBytes(1000))
  await ended
  await waitFor(() => upstream.sockets[0]?.readableEnded, { timeoutMs: TIMEOUT_MS, what: 'upstream FIN' })
  t.equal(upstream.received().length, 100)
})

t.test('slowClose delays passing the FIN on', async (t) => {
  const upstream = await startUpstream(t, 'record')
  const proxy = await proxyTo(t, upstream.port)
  proxy.setSlowClose(400)
  const { socket } = await dial(t, proxy.port)
  await waitFor(() => upstream.sockets.length === 1, { timeoutMs: TIMEOUT_MS, what: 'upstream accept' })
  const upstreamEnd = waitForEvent(upstream.sockets[0] as Socket, 'end', { timeoutMs: TIMEOUT_MS, what: 'FIN' })
  const started = Date.now()
  socket.end()
  await upstreamEnd
  t.ok(Date.now() - started >= 380, `FIN arrived after ${Date.now() - started} ms`)
})

t.test('upstream refusing: the client is reset; close() is idempotent', async (t) => {
  const upstream = await startUpstream(t)
  upstream.server.close()
  await once(upstream.server, 'close')
  const proxy = await proxyTo(t, upstream.port)
  const socket = connect({ host: '127.0.0.1', port: proxy.port })
  const [err] = await waitForEvent<[NodeJS.ErrnoException]>(socket, 'error', { timeoutMs: TIMEOUT_MS, what: 'reset' })
  t.equal(err.code, 'ECONNRESET')
  await proxy.close()
  await proxy.close()
  await t.rejects(acceptsConnections(proxy.port), { code: 'ECONNREFUSED' })
})

// A real AMQP conversation through the meanest settings (fault #20 of
// FAULTS.md), against the shared broker: harmless to it.
const shared = new URL(process.env['RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672')
const sharedPort = Number(shared.port || 5672)
const sharedUp = await acceptsConnections(sharedPort, shared.hostname).catch(() => false)

t.test(
  'amqplib survives slicer 1-7 B + latency through the proxy',
  { skip: sharedUp ? false : `no shared broker at ${shared.host}` },
  async (t) => {
    const proxy = await proxyTo(t, sharedPort)
    proxy.setSlicer(1, 7)
    proxy.setLatency(30, 20)
    const viaProxy = new URL(shared.href)
    viaProxy.hostname = '127.0.0.1'
    viaProxy.port = String(proxy.port)
    const conn = await amqplib.connect(viaProxy.href)
    t.teardown(() => conn.close().catch(() => {}))
    const ch = await conn.createChannel()
    const { queue } = await ch.assertQueue('', { exclusive: true })
    const body = randomBytes(10_000)
    ch.sendToQueue(queue, body)
    const msg = await waitFor(() => ch.get(queue, { noAck: true }), { timeoutMs: TIMEOUT_MS, what: 'message via proxy' })
    t.equal(sha256(msg.content), sha256(body))
  },
)
