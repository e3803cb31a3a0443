/**
 * The upstream link as the broker sees it: connection names, negotiated
 * heartbeat, keepalive, and a topology mismatch (406) reported, not looped on.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const run = promisify(execFile)
const amqp = await directAmqp(t, SHARED_BROKER_URL)

t.test('connection name, heartbeat and TCP keepalive', async (t) => {
  const name = `sidecar-${Date.now()}`
  const sc = await startSidecar(t, { amqp: { connectionName: name, heartbeatSeconds: 7 } })
  await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 15_000, what: 'ready' })
  const status = (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream: { heartbeatSeconds: number; localAddress: string; remoteAddress: string } }
  t.equal(status.upstream.heartbeatSeconds, 7, 'the configured heartbeat was negotiated')
  t.match(status.upstream.remoteAddress, /:5672$/)
  // Read-only look at the shared broker: does it see our connection, named, with our heartbeat?
  const { stdout } = await run('rabbitmqctl', ['-q', 'list_connections', 'client_properties', 'timeout', 'peer_port'], { timeout: 30_000 })
  const port = status.upstream.localAddress.split(':').pop() as string
  const row = stdout.split('\n').find((l) => l.trim().endsWith(`\t${port}`))
  t.ok(row, 'the broker lists the connection')
  t.match(row ?? '', `${name}:publish`, 'connection_name is set')
  t.match(row ?? '', /\t7\t/, 'the broker agrees on the heartbeat')
  // The kernel shows a keepalive timer on the socket when SO_KEEPALIVE is on.
  const ss = await run('ss', ['-tnoH', 'state', 'established', `sport = :${port}`], { timeout: 10_000 })
  t.match(ss.stdout, /keepalive/, 'TCP keepalive is on')
})

t.test('an inequivalent topology (406) is reported in status, readiness and logs', async (t) => {
  const queue = amqp.name('mismatch')
  await (await amqp.channel()).assertQueue(queue, { durable: false, arguments: { 'x-max-length': 10 } })
  const sc = await startSidecar(t, { topology: { queues: [{ name: queue, durable: false, arguments: { 'x-max-length': 20 } }] } })
  const status = await waitFor(
    async () => {
      const s = (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream: { state: string; topologyError: string | null }; diagnosis: string }
      return s.upstream.topologyError ? s : undefined
    },
    { timeoutMs: 15_000, what: 'a topology error' },
  )
  t.match(status.upstream.topologyError, new RegExp(`queue "${queue.replace(/\./g, '\\.')}"`))
  t.match(status.upstream.topologyError, /PRECONDITION_FAILED|406/)
  t.equal(status.upstream.state, 'connected', 'the connection itself survives')
  t.match(status.diagnosis, /Topology declaration failed/)
  const readyz = (await (await fetch(`${sc.ops}/readyz`)).json()) as { status: string; reasons: string[] }
  t.equal(readyz.status, 'not-ready')
  t.match(readyz.reasons.join(' '), /topology/)
  t.ok(sc.logs.some((l) => l.includes('topology declaration failed')), 'logged at error')
  const connects = sc.sidecar.upstream.status().connects
  t.equal(connects, 1, 'no reconnect loop')
})
