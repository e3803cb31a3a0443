/**
 * api.maxConnections: with the cap reached, a new connection is answered one
 * 503 TOO_MANY_CONNECTIONS (with Retry-After) and closed, and the request it
 * carried is not served; once a connection closes, new ones are served again.
 */
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const NOWHERE = 'amqp://guest:guest@127.0.0.1:1/%2F'

/** A raw request on a fresh connection; resolves with everything read until the server closes it. */
async function exchange(t: { teardown(fn: () => void): void }, port: number, request: string): Promise<string> {
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  let text = ''
  socket.on('data', (d: Buffer) => (text += d.toString()))
  socket.write(request)
  await waitForEvent(socket, 'close', { timeoutMs: 20_000, what: 'the server to close the connection' })
  return text
}

async function held(t: { teardown(fn: () => void): void }, port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  await waitForEvent(socket, 'connect', { timeoutMs: 20_000, what: 'a connection' })
  return socket
}

t.test('a connection over api.maxConnections is refused with 503 TOO_MANY_CONNECTIONS', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [NOWHERE] }, api: { maxConnections: 2 }, log: { level: 'silent' } })
  const port = Number(new URL(s.api).port)
  const a = await held(t, port)
  await held(t, port)
  // A publish on the refused connection: it must not be served (no 404, no publish attempt).
  const refused = await exchange(t, port, 'POST /v1/publish/amq.default/nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi')
  t.match(refused, /^HTTP\/1\.1 503 Service Unavailable\r\n/, '503')
  t.match(refused, /\r\nRetry-After: 1\r\n/i)
  t.match(refused, /"code":"TOO_MANY_CONNECTIONS"/)
  t.equal(refused.match(/HTTP\/1\.1 /g)?.length, 1, 'one answer only: the request it carried was not served')

  a.destroy()
  const served = await waitFor(
    async () => {
      const text = await exchange(t, port, 'GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
      return text.startsWith('HTTP/1.1 200') ? text : undefined
    },
    { timeoutMs: 20_000, what: 'a new connection to be served once one closed' },
  )
  t.match(served, /"upstream"/, 'served again below the cap')
})
