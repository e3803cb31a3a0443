// amqps to the broker (amqp.tls.*), against a private RabbitMQ node with a TLS
// listener that requires client certificates (mutual TLS). Certificates are
// generated here with openssl. Checked: the right CA plus a client cert
// connects; a wrong CA fails with cause `tls` in /v1/status and in the logs;
// a missing client cert is refused by the broker; rejectUnauthorized=false is
// what lets an unverifiable broker through; and rotated CA files apply on the
// next reconnect without a restart.
import t from 'tap'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { brokerFor } from './fixtures/broker.js'
import { startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { pkiFor } from './fixtures/tls.js'
import { waitFor } from './fixtures/wait.js'

const CONNECT_TIMEOUT_MS = 30_000

interface UpstreamStatus {
  state: string
  url: string | null
  lastConnectError: { cause: string; message: string } | null
}

async function upstreamOf(s: RunningSidecar): Promise<UpstreamStatus> {
  const res = await fetch(`${s.api}/v1/status`)
  return ((await res.json()) as { upstream: UpstreamStatus }).upstream
}

function connected(s: RunningSidecar): Promise<UpstreamStatus> {
  return waitFor(async () => {
    const up = await upstreamOf(s)
    return up.state === 'connected' ? up : undefined
  }, { timeoutMs: CONNECT_TIMEOUT_MS, what: 'the sidecar to connect over amqps' })
}

function failedWith(s: RunningSidecar): Promise<UpstreamStatus> {
  return waitFor(async () => {
    const up = await upstreamOf(s)
    return up.lastConnectError ? up : undefined
  }, { timeoutMs: CONNECT_TIMEOUT_MS, what: 'a connect error in /v1/status' })
}

const pki = await pkiFor(t)
const broker = await brokerFor(t, {
  tls: { caFile: pki.caFile, certFile: pki.serverCertFile, keyFile: pki.serverKeyFile, verifyPeer: true },
})
const tlsUrl = broker.tlsUrl
if (tlsUrl === undefined) throw new Error('the broker fixture gave no TLS URL')

const clientCert = { certFile: pki.clientCertFile, keyFile: pki.clientKeyFile }

t.test('the right CA and a client certificate connect over amqps', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [tlsUrl], tls: { caFile: pki.caFile, ...clientCert } } })
  const up = await connected(s)
  t.match(up.url, /^amqps:\/\/guest:\*\*\*@127\.0\.0\.1:\d+\//)
  // Readiness needs both connections (publish and consume); the second may follow a moment later.
  t.ok(await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'ready over TLS' }), 'ready over TLS')
  const res = await fetch(`${s.api}/v1/publish/amq.fanout/k`, { method: 'POST', headers: { 'x-mandatory': 'false' }, body: 'over tls' })
  t.equal(res.status, 200, 'a publish is confirmed over TLS')
})

t.test('a wrong CA fails with cause tls in /v1/status and the logs', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [tlsUrl], tls: { caFile: pki.otherCaFile, ...clientCert } } })
  const up = await failedWith(s)
  t.not(up.state, 'connected')
  t.equal(up.lastConnectError?.cause, 'tls')
  const line = s.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'could not connect to the broker')
  t.equal(line?.cause, 'tls', 'the log line names the cause')
  t.equal((await fetch(`${s.ops}/readyz`)).status, 503)
})

t.test('without a client certificate the broker refuses the handshake (mutual TLS)', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [tlsUrl], tls: { caFile: pki.caFile } } })
  const up = await failedWith(s)
  t.not(up.state, 'connected')
  t.ok(['tls', 'econnreset', 'unexpected-close'].includes(up.lastConnectError?.cause ?? ''), `cause ${up.lastConnectError?.cause}: ${up.lastConnectError?.message}`)
})

t.test('rejectUnauthorized=false is what lets an unverifiable broker through', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [tlsUrl], tls: { caFile: pki.otherCaFile, ...clientCert, rejectUnauthorized: false } } })
  await connected(s)
  t.pass('connected without verifying the broker (never do this in production)')
})

t.test('a rotated CA file applies on the next reconnect, without a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sidecar-ca-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const caFile = join(dir, 'ca.pem')
  copyFileSync(pki.otherCaFile, caFile)
  const s = await startSidecar(t, { amqp: { urls: [tlsUrl], tls: { caFile, ...clientCert } } })
  t.equal((await failedWith(s)).lastConnectError?.cause, 'tls', 'the wrong CA is refused first')
  copyFileSync(pki.caFile, caFile)
  await connected(s)
  t.pass('connected once the CA file held the right CA')
})
