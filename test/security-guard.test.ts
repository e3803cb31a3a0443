// The API's front door (src/http/guard.ts, src/http/token.ts): browsers
// (Origin, Sec-Fetch-Site) and foreign Host names are refused with 403, a
// configured bearer token is required on every route and on the WebSocket
// upgrade, and the operations port stays open for probes.
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import WebSocket from 'ws'
import { createLogger } from '../src/observe/logger.js'
import { SecretRegistry } from '../src/observe/redact.js'
import { ApiToken, bearerToken, TokenFileError } from '../src/http/token.js'
import { hostOf } from '../src/http/guard.js'
import { errorCode, request } from './fixtures/http.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const TOKEN = 'tok-0123456789abcdef-ALPHA'
const ROTATED = 'tok-fedcba9876543210-BRAVO'

/** The status of a WebSocket upgrade: 101 when it opened, else the HTTP status the server answered. */
function upgradeStatus(url: string, headers: Record<string, string>, origin?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, ...(origin === undefined ? {} : { origin }), handshakeTimeout: 10_000 })
    ws.on('open', () => {
      ws.close()
      resolve(101)
    })
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0)
      res.resume()
      ws.terminate()
    })
    ws.on('error', (err) => reject(err))
  })
}

/** Writes `data` on a fresh socket and resolves with everything read until the server closes it. */
function rawExchange(port: number, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(data))
    let text = ''
    socket.setEncoding('utf8')
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')))
    socket.on('data', (chunk: string) => (text += chunk))
    socket.on('error', reject)
    socket.on('close', () => resolve(text))
  })
}

t.test('Origin and Host checks (no token configured)', async (t) => {
  const s = await startSidecar(t, { api: { allowedHosts: ['sidecar.internal'] } })
  const port = new URL(s.api).port

  t.test('loopback Host names, with and without a port, are served', async (t) => {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, 'localhost', 'LOCALHOST.', '127.0.0.1']) {
      const res = await request(s.api, '/v1/status', { headers: { host } })
      t.equal(res.status, 200, `Host: ${host}`)
    }
  })

  t.test('a configured api.allowedHosts name is served', async (t) => {
    t.equal((await request(s.api, '/v1/status', { headers: { host: `sidecar.internal:${port}` } })).status, 200)
    t.equal((await request(s.api, '/v1/status', { headers: { host: 'Sidecar.Internal' } })).status, 200)
  })

  t.test('any other Host is refused 403 HOST_NOT_ALLOWED (DNS rebinding)', async (t) => {
    for (const host of [`evil.example:${port}`, 'attacker.localhost', '127.0.0.2', 'localhost:99999', 'localhost:abc', '::1', `sidecar.internal.evil.example`]) {
      const res = await request(s.api, '/v1/status', { headers: { host } })
      t.equal(res.status, 403, `Host: ${JSON.stringify(host)}`)
      t.equal(errorCode(res), 'HOST_NOT_ALLOWED')
    }
    // Also before routing: a publish never reaches the broker, an unknown path is 403 not 404.
    const pub = await request(s.api, '/v1/publish/amq.fanout/k', { method: 'POST', headers: { host: 'rebind.example' }, body: 'x' })
    t.equal(pub.status, 403)
    t.equal((await request(s.api, '/no/such/route', { headers: { host: 'rebind.example' } })).status, 403)
  })

  t.test('a missing or empty Host is refused (raw socket: clients always fill it in)', async (t) => {
    for (const head of ['GET /v1/status HTTP/1.0\r\n\r\n', 'GET /v1/status HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n']) {
      const answer = await rawExchange(Number(port), head)
      t.match(answer, /^HTTP\/1\.1 403 /, JSON.stringify(head))
      t.match(answer, /HOST_NOT_ALLOWED/)
    }
  })

  t.test('a request with an Origin header is refused 403 ORIGIN_NOT_ALLOWED', async (t) => {
    for (const origin of ['https://evil.example', 'null', `http://127.0.0.1:${port}`, '']) {
      const res = await request(s.api, '/v1/status', { headers: { origin } })
      t.equal(res.status, 403, `Origin: ${JSON.stringify(origin)}`)
      t.equal(errorCode(res), 'ORIGIN_NOT_ALLOWED')
    }
    const pub = await request(s.api, '/v1/publish/amq.fanout/k', {
      method: 'POST',
      headers: { origin: 'https://evil.example', 'content-type': 'text/plain', 'x-mandatory': 'false' },
      body: 'x',
    })
    t.equal(pub.status, 403, 'a cross-site form POST is refused')
    t.equal(errorCode(pub), 'ORIGIN_NOT_ALLOWED')
  })

  t.test('a browser request without Origin but with Sec-Fetch-Site is refused', async (t) => {
    const res = await request(s.api, '/v1/status', { headers: { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' } })
    t.equal(res.status, 403)
    t.equal(errorCode(res), 'ORIGIN_NOT_ALLOWED')
    t.equal((await request(s.api, '/v1/status', { headers: { 'sec-fetch-site': 'none' } })).status, 200, 'typed into the address bar by the user')
  })

  t.test('cross-site WebSocket hijacking: an upgrade with an Origin is refused', async (t) => {
    t.equal(await upgradeStatus(`ws://127.0.0.1:${port}/v1/ws`, {}, 'https://evil.example'), 403)
    t.equal(await upgradeStatus(`ws://127.0.0.1:${port}/v1/ws`, { host: 'evil.example' }), 403)
  })
})

t.test('bearer token (api.tokenFile)', async (t) => {
  const dir = t.testdir({ token: `${TOKEN}\n` })
  const tokenFile = join(dir, 'token')
  const s = await startSidecar(t, { api: { tokenFile } })
  const port = new URL(s.api).port
  const auth = (token: string) => ({ authorization: `Bearer ${token}` })

  t.test('missing or wrong token: 401 UNAUTHORIZED with WWW-Authenticate: Bearer', async (t) => {
    const cases: Array<Record<string, string>> = [
      {},
      auth('wrong-token-0123456789'),
      auth(TOKEN.slice(0, -1)),
      auth(`${TOKEN}x`),
      { authorization: TOKEN },
      { authorization: `Basic ${Buffer.from(`user:${TOKEN}`).toString('base64')}` },
      { authorization: `Bearer ${TOKEN} extra` },
      { authorization: 'Bearer' },
    ]
    for (const headers of cases) {
      const res = await request(s.api, '/v1/status', { headers })
      t.equal(res.status, 401, `Authorization: ${headers.authorization ?? '(none)'}`)
      t.equal(errorCode(res), 'UNAUTHORIZED')
      t.match(res.headers['www-authenticate'], /^Bearer\b/)
    }
    const pub = await request(s.api, '/v1/publish/amq.fanout/k', { method: 'POST', headers: { 'x-mandatory': 'false' }, body: 'x' })
    t.equal(pub.status, 401, 'publish needs the token too')
    t.equal((await request(s.api, '/no/such/route')).status, 401, 'so does an unknown path: no route discovery')
  })

  t.test('the right token is served (scheme is case-insensitive)', async (t) => {
    t.equal((await request(s.api, '/v1/status', { headers: auth(TOKEN) })).status, 200)
    t.equal((await request(s.api, '/v1/status', { headers: { authorization: `bearer ${TOKEN}` } })).status, 200)
  })

  t.test('the operations port needs no token', async (t) => {
    t.equal((await request(s.ops, '/livez')).status, 200)
    t.equal((await request(s.ops, '/metrics')).status, 200)
    t.not((await request(s.ops, '/readyz')).status, 401)
  })

  t.test('the WebSocket upgrade needs the token', async (t) => {
    t.equal(await upgradeStatus(`ws://127.0.0.1:${port}/v1/ws`, {}), 401)
    t.equal(await upgradeStatus(`ws://127.0.0.1:${port}/v1/ws`, auth('wrong-token-0123456789')), 401)
    // With the token the guard lets it through: 101 once /v1/ws exists (404 before it does).
    const ok = await upgradeStatus(`ws://127.0.0.1:${port}/v1/ws`, auth(TOKEN))
    t.ok(ok === 101 || ok === 404, `upgrade with the token is not refused by the guard (got ${ok})`)
  })

  t.test('a rotated token file applies without a restart', async (t) => {
    writeFileSync(tokenFile, `${ROTATED}\n`)
    await waitFor(async () => (await request(s.api, '/v1/status', { headers: auth(ROTATED) })).status === 200, {
      timeoutMs: 10_000,
      what: 'the rotated token to be accepted',
    })
    t.equal((await request(s.api, '/v1/status', { headers: auth(TOKEN) })).status, 401, 'the old token is refused')
  })

  t.test('a broken token file keeps the last good token (fail closed, never open)', async (t) => {
    writeFileSync(tokenFile, '')
    // Wait until the sidecar has certainly re-read the empty file: its warning is logged.
    await waitFor(
      async () => {
        await request(s.api, '/v1/status', { headers: auth(ROTATED) })
        return s.logs.some((l) => l.includes('could not re-read api.tokenFile'))
      },
      { timeoutMs: 10_000, what: 'the token file re-read warning' },
    )
    t.equal((await request(s.api, '/v1/status', { headers: auth(ROTATED) })).status, 200)
    t.equal((await request(s.api, '/v1/status')).status, 401)
    t.equal((await request(s.api, '/v1/status', { headers: { authorization: 'Bearer ' } })).status, 401)
  })

  t.test('no token ever appears in a log line', async (t) => {
    const joined = s.logs.join('\n')
    t.notOk(joined.includes(TOKEN), 'first token')
    t.notOk(joined.includes(ROTATED), 'rotated token')
  })
})

t.test('refused WebSocket upgrades do not hold sockets: shutdown still completes', async (t) => {
  const dir = t.testdir({ token: TOKEN })
  const s = await startSidecar(t, { api: { tokenFile: join(dir, 'token') } })
  const url = `${s.api.replace('http', 'ws')}/v1/ws`
  t.equal(await upgradeStatus(url, {}, 'https://evil.example'), 403)
  t.equal(await upgradeStatus(url, {}), 401)
  // An upgrade asked of a plain route is answered as plain HTTP (200 here), then its socket is closed.
  t.not(await upgradeStatus(`${s.api.replace('http', 'ws')}/v1/status`, { authorization: `Bearer ${TOKEN}` }), 101, 'an upgrade on a plain route')
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), 10_000)))
  const outcome = await Promise.race([s.stop().then(() => 'stopped' as const), late])
  clearTimeout(timer)
  t.equal(outcome, 'stopped', 'the API closed without waiting on refused upgrade sockets')
})

t.test('a missing, empty or short token file stops the start (fail closed)', async (t) => {
  const dir = t.testdir({ short: 'abc\n', empty: '', spaces: 'has spaces in the token 0123456789' })
  for (const name of ['missing', 'short', 'empty', 'spaces']) {
    await t.rejects(startSidecar(t, { api: { tokenFile: join(dir, name) } }), TokenFileError, name)
  }
})

t.test('ApiToken registers the token (and a rotated one) as a secret', async (t) => {
  const dir = t.testdir({ token: TOKEN })
  const secrets = new SecretRegistry()
  const lines: string[] = []
  const log = createLogger({ level: 'info', secrets, destination: { write: (l: string) => void lines.push(l) } })
  const token = new ApiToken(join(dir, 'token'), secrets, log, 0)
  t.equal(secrets.scrub(`x ${TOKEN} y`), 'x *** y')
  writeFileSync(join(dir, 'token'), ROTATED)
  t.ok(token.verify(`Bearer ${ROTATED}`), 'recheck interval 0: the next request re-reads')
  t.notOk(token.verify(`Bearer ${TOKEN}`))
  log.info({ leaked: `${TOKEN} ${ROTATED}` }, `tokens ${TOKEN} ${ROTATED}`)
  t.notOk(lines.join('').includes(TOKEN))
  t.notOk(lines.join('').includes(ROTATED))
})

t.test('header parsing helpers', async (t) => {
  t.equal(bearerToken(`Bearer ${TOKEN}`), TOKEN)
  t.equal(bearerToken(`BEARER   ${TOKEN}  `), TOKEN)
  t.equal(bearerToken(`Bearer`), undefined)
  t.equal(bearerToken(`Token ${TOKEN}`), undefined)
  t.equal(bearerToken(undefined), undefined)
  t.equal(hostOf('[::1]:8672'), '[::1]')
  t.equal(hostOf('LocalHost.:1'), 'localhost')
  t.equal(hostOf('a:b:c'), undefined)
  t.equal(hostOf('host:65536'), undefined)
})
