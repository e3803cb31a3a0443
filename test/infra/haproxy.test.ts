// Proves the haproxy fixture reproduces a load balancer's idle cut: an idle
// connection is closed after timeoutMs, a chatty one is not, and with
// nolinger the backend (broker) side gets an RST while the client gets a FIN.
import t from 'tap'
import { once } from 'node:events'
import { connect, createServer, type Socket } from 'node:net'
import { startHaproxy, type Haproxy, type HaproxyOptions } from '../fixtures/haproxy.js'
import { acceptsConnections } from '../fixtures/probes.js'
import { waitForEvent } from '../fixtures/wait.js'

const IDLE_TIMEOUT_MS = 800

// One echo backend for the whole file.
const backendSockets = new Set<Socket>()
const backend = createServer((s) => {
  backendSockets.add(s)
  s.on('error', () => {})
  s.on('close', () => backendSockets.delete(s))
  s.pipe(s)
})
backend.listen(0, '127.0.0.1')
await once(backend, 'listening')
t.teardown(() => {
  for (const s of backendSockets) s.destroy()
  backend.close()
})
const backendPort = (backend.address() as { port: number }).port

async function haproxyFor(t: { teardown(fn: () => unknown): void }, opts: Partial<HaproxyOptions> = {}): Promise<Haproxy> {
  const haproxy = await startHaproxy({ backendPort, timeoutMs: IDLE_TIMEOUT_MS, ...opts })
  t.teardown(() => haproxy.stop())
  return haproxy
}

async function dial(port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port })
  socket.on('error', () => {}) // asserted via explicit waits
  await once(socket, 'connect')
  return socket
}

t.test('an idle connection is cut after the timeout; a chatty one survives', async (t) => {
  const haproxy = await haproxyFor(t)
  const idle = await dial(haproxy.port)
  const chatty = await dial(haproxy.port)
  t.teardown(() => chatty.destroy())
  const pinger = setInterval(() => chatty.write('.'), IDLE_TIMEOUT_MS / 4)
  t.teardown(() => clearInterval(pinger))
  let chattyClosed = false
  chatty.on('close', () => (chattyClosed = true))
  const started = Date.now()
  await waitForEvent(idle, 'end', { timeoutMs: IDLE_TIMEOUT_MS * 5, what: 'idle cut (FIN)' })
  const elapsed = Date.now() - started
  t.ok(elapsed >= IDLE_TIMEOUT_MS - 100, `cut after ${elapsed} ms (timeout ${IDLE_TIMEOUT_MS})`)
  // Watch the chatty one for another full timeout (an observation window).
  await new Promise((resolve) => setTimeout(resolve, IDLE_TIMEOUT_MS * 1.5))
  t.notOk(chattyClosed, 'traffic keeps the connection alive')
})

t.test('nolinger: the backend side of the idle cut is an RST', async (t) => {
  const haproxy = await haproxyFor(t, { nolinger: true })
  const accepted = waitForEvent<[Socket]>(backend, 'connection', { timeoutMs: 5_000, what: 'backend accept' })
  const idle = await dial(haproxy.port)
  const [backendSide] = await accepted
  const reset = waitForEvent<[NodeJS.ErrnoException]>(backendSide, 'error', {
    timeoutMs: IDLE_TIMEOUT_MS * 5,
    what: 'idle cut (RST) at the backend',
  })
  const clientEnd = waitForEvent(idle, 'end', { timeoutMs: IDLE_TIMEOUT_MS * 5, what: 'idle cut (FIN) at the client' })
  t.equal((await reset)[0].code, 'ECONNRESET')
  await clientEnd
})

t.test('stop() frees the port and is idempotent', async (t) => {
  const haproxy = await startHaproxy({ backendPort, timeoutMs: IDLE_TIMEOUT_MS })
  t.ok(await acceptsConnections(haproxy.port))
  await haproxy.stop()
  await haproxy.stop()
  await t.rejects(acceptsConnections(haproxy.port), { code: 'ECONNREFUSED' })
})

t.test('a missing haproxy is reported clearly', async (t) => {
  const path = process.env['PATH']
  process.env['PATH'] = '/nonexistent'
  t.teardown(() => void (process.env['PATH'] = path))
  await t.rejects(startHaproxy({ backendPort, timeoutMs: IDLE_TIMEOUT_MS }), /haproxy is not installed/)
})
