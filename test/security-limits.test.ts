// Resource limits of the API listener (src/http/limits.ts), driven by real
// slow and oversized clients over raw sockets: a client that connects and
// sends nothing, one that trickles its headers (slowloris), one that trickles
// its body, an idle keep-alive connection, an oversized head and body. Each
// must be answered with a registry error and lose its socket within a bound.
// The broker URL points at a closed port: none of this needs a broker, and a
// publish then waits for its whole deadline (used to show that waiting for
// the answer is not cut by the request timeout).
import t from 'tap'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import WebSocket from 'ws'
import { errorCode, request } from './fixtures/http.js'
import { startSidecar } from './fixtures/sidecar.js'
import { freePort } from './fixtures/wait.js'

const HEADERS_TIMEOUT_MS = 500
const REQUEST_TIMEOUT_MS = 1_000
const KEEP_ALIVE_TIMEOUT_MS = 500
const MAX_HEADER_BYTES = 4_096
const BODY_LIMIT_BYTES = 1_024
/** Node checks deadlines on an interval, and CI machines are slow: the margin a close may be late by. */
const SLACK_MS = 2_000
const TRICKLE_MS = 100
const KEEP_ALIVE_TIMEOUT_BUFFER_MS = 1_000

interface Exchange {
  /** Everything the server wrote before it closed the socket. */
  text: string
  /** From connect to the server closing the socket. */
  elapsedMs: number
}

/**
 * Connects, lets `drive` write to the socket, and resolves when the server
 * closes it. The test fails (never hangs) if the server holds the socket past
 * `giveUpMs`: that is exactly the bug these tests look for.
 */
function exchange(port: number, drive: (socket: Socket) => (() => void) | void, giveUpMs = 15_000): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    let text = ''
    let stop: (() => void) | void
    const socket = connect(port, '127.0.0.1', () => (stop = drive(socket)))
    socket.setEncoding('utf8')
    const guard = setTimeout(() => {
      socket.destroy()
      reject(new Error(`the server still held the socket after ${giveUpMs} ms`))
    }, giveUpMs)
    socket.on('data', (chunk: string) => (text += chunk))
    socket.on('error', () => {}) // a reset after the answer still counts as closed
    socket.on('close', () => {
      clearTimeout(guard)
      if (stop) stop()
      resolve({ text, elapsedMs: Date.now() - started })
    })
  })
}

/** Writes `chunk` every TRICKLE_MS until stopped: the slow client. */
function trickle(socket: Socket, chunk: string): () => void {
  const timer = setInterval(() => {
    if (!socket.destroyed) socket.write(chunk)
  }, TRICKLE_MS)
  return () => clearInterval(timer)
}

function timeout(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms).unref())
}

function bodyOf(text: string): unknown {
  const at = text.indexOf('\r\n\r\n')
  return at < 0 ? undefined : JSON.parse(text.slice(at + 4))
}

const deadPort = await freePort()
const s = await startSidecar(t, {
  amqp: { urls: [`amqp://guest:guest@127.0.0.1:${deadPort}/%2F`] },
  api: {
    headersTimeoutMs: HEADERS_TIMEOUT_MS,
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    keepAliveTimeoutMs: KEEP_ALIVE_TIMEOUT_MS,
    maxHeaderBytes: MAX_HEADER_BYTES,
    bodyLimitBytes: BODY_LIMIT_BYTES,
  },
})
const port = Number(new URL(s.api).port)

t.test('a client that connects and sends nothing is cut at api.headersTimeoutMs', async (t) => {
  const res = await exchange(port, () => {})
  t.ok(res.elapsedMs < HEADERS_TIMEOUT_MS + SLACK_MS, `closed after ${res.elapsedMs} ms`)
  t.match(res.text, /^HTTP\/1\.1 408 /)
  t.match(bodyOf(res.text), { error: { code: 'REQUEST_TIMEOUT' } })
})

t.test('slowloris: headers trickled byte by byte are cut at api.headersTimeoutMs', async (t) => {
  const res = await exchange(port, (socket) => {
    socket.write('GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n')
    return trickle(socket, 'X-Slow: a\r\n')
  })
  t.ok(res.elapsedMs < HEADERS_TIMEOUT_MS + SLACK_MS, `closed after ${res.elapsedMs} ms although bytes kept arriving`)
  t.match(res.text, /^HTTP\/1\.1 408 /)
  t.match(bodyOf(res.text), { error: { code: 'REQUEST_TIMEOUT' } })
})

t.test('a trickled body is cut at api.requestTimeoutMs', async (t) => {
  const res = await exchange(port, (socket) => {
    socket.write('POST /v1/publish/amq.fanout/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n')
    return trickle(socket, 'a')
  })
  t.ok(res.elapsedMs < REQUEST_TIMEOUT_MS + SLACK_MS, `closed after ${res.elapsedMs} ms`)
  t.match(res.text, /^HTTP\/1\.1 408 /)
})

t.test('an idle keep-alive connection is closed at api.keepAliveTimeoutMs', async (t) => {
  let answeredAt = 0
  const res = await exchange(port, (socket) => {
    socket.on('data', () => (answeredAt ||= Date.now()))
    socket.write('GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n')
  })
  t.match(res.text, /^HTTP\/1\.1 200 /, 'the request itself was served')
  const idleMs = Date.now() - answeredAt
  // Node closes the socket about 1 s after the keepAliveTimeout it advertises (Keep-Alive: timeout=N),
  // so a client honouring the header never races the close (measured on Node 20.20).
  t.ok(idleMs < KEEP_ALIVE_TIMEOUT_MS + KEEP_ALIVE_TIMEOUT_BUFFER_MS + SLACK_MS, `closed ${idleMs} ms after the answer`)
})

t.test('a head over api.maxHeaderBytes is answered 431 HEADERS_TOO_LARGE', async (t) => {
  const res = await exchange(port, (socket) => {
    socket.write(`GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(MAX_HEADER_BYTES * 2)}\r\n\r\n`)
  })
  t.match(res.text, /^HTTP\/1\.1 431 /)
  t.match(bodyOf(res.text), { error: { code: 'HEADERS_TOO_LARGE' } })
})

t.test('a head just under the limit is served', async (t) => {
  const res = await request(s.api, '/v1/status', { headers: { 'x-pad': 'a'.repeat(MAX_HEADER_BYTES / 2) } })
  t.equal(res.status, 200)
})

t.test('a request that is not HTTP is answered 400 INVALID_REQUEST', async (t) => {
  const res = await exchange(port, (socket) => {
    socket.write('\x16\x03\x01 this is not http\r\n\r\n')
  })
  t.match(res.text, /^HTTP\/1\.1 400 /)
  t.match(bodyOf(res.text), { error: { code: 'INVALID_REQUEST' } })
})

t.test('bodies over api.bodyLimitBytes are refused 413 PAYLOAD_TOO_LARGE', async (t) => {
  const big = 'x'.repeat(BODY_LIMIT_BYTES + 1)
  const raw = await request(s.api, '/v1/publish/amq.fanout/k', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: big })
  t.equal(raw.status, 413, 'raw publish')
  t.equal(errorCode(raw), 'PAYLOAD_TOO_LARGE')
  const envelope = JSON.stringify({ exchange: 'amq.fanout', routingKey: 'k', body: big })
  const json = await request(s.api, '/v1/publish', { method: 'POST', headers: { 'content-type': 'application/json' }, body: envelope })
  t.equal(json.status, 413, 'JSON envelope')
  t.equal(errorCode(json), 'PAYLOAD_TOO_LARGE')
  // Without Content-Length the limit still applies while the body streams in.
  const chunked = await exchange(port, (socket) => {
    socket.write('POST /v1/publish/amq.fanout/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n')
    const chunk = 'y'.repeat(512)
    for (let i = 0; i < 4; i++) socket.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`)
    socket.write('0\r\n\r\n')
  })
  t.match(chunked.text, /^HTTP\/1\.1 413 /, 'chunked body')
})

t.test('waiting for the answer does not count against api.requestTimeoutMs', async (t) => {
  // No broker: the publish waits for its whole X-Timeout-Ms, longer than the request timeout.
  const started = Date.now()
  const res = await request(s.api, '/v1/publish/amq.fanout/k', {
    method: 'POST',
    headers: { 'content-type': 'text/plain', 'x-timeout-ms': String(REQUEST_TIMEOUT_MS * 2) },
    body: 'hello',
  })
  t.ok(Date.now() - started >= REQUEST_TIMEOUT_MS * 2 - 50, 'the publish waited for its deadline')
  t.not(res.status, 408)
  t.ok(errorCode(res), `answered with a registry error (${res.status} ${errorCode(res)})`)
})

t.test('a WebSocket message over the frame limit closes the socket with 1009', async (t) => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/ws`)
  ws.on('error', () => {})
  await once(ws, 'open')
  const closed = once(ws, 'close')
  // http/ws.ts derives the limit from api.bodyLimitBytes (base64 of a full body plus its envelope).
  ws.send('x'.repeat(BODY_LIMIT_BYTES * 1024))
  const [code] = (await Promise.race([closed, timeout(10_000, 'the server to close the WebSocket')])) as [number]
  t.equal(code, 1009, 'message too big')
})

t.test('path parameters: a 255-character exchange is routed; longer or malformed ones get registry errors', async (t) => {
  const longest = await request(s.api, `/v1/publish/${'e'.repeat(255)}/k`, { method: 'POST', headers: { 'x-timeout-ms': '50' }, body: 'x' })
  t.not(longest.status, 414, 'not refused by the router')
  t.ok(errorCode(longest), `answered by the route (${longest.status} ${errorCode(longest)})`)
  const tooLong = await request(s.api, `/v1/publish/${'e'.repeat(2000)}/k`, { method: 'POST', body: 'x' })
  t.equal(tooLong.status, 400)
  t.equal(errorCode(tooLong), 'INVALID_REQUEST')
  const badEncoding = await request(s.api, '/v1/publish/%zz/k', { method: 'POST', body: 'x' })
  t.equal(badEncoding.status, 400)
  t.equal(errorCode(badEncoding), 'INVALID_REQUEST')
})
