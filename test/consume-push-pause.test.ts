/**
 * Safe push against the shared broker: the sidecar starts with a push
 * subscription whose app is not listening yet (connection refused), messages
 * are published, and the app starts 20 s later (the review's scenario: a
 * native sidecar is ready before its app). The subscription pauses instead of
 * spending attempts, /v1/status and amqp_sidecar_push_paused show it, and once
 * the app listens every message arrives; none is dead-lettered.
 */
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import { setTimeout as delay } from 'node:timers/promises'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'

const N = 8
/** How long the app stays away: the scenario itself, not a synchronisation. */
const APP_AWAY_MS = 20_000

// A free port nobody listens on yet: the app will take it later. Below the
// ephemeral range (freePort), so the sidecar's probes cannot take it first.
const port = await freePort()

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const q = amqp.name('push-pause')
const dlq = amqp.name('push-pause-dlq')
const sc = await startSidecar(t, {
  topology: {
    queues: [
      { name: dlq, durable: false },
      { name: q, durable: false, arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq } },
    ],
  },
  // Default retry schedule (5 attempts, 500 ms .. 30 s): before, 8 of 8 were gone within ~11 s.
  consume: { push: [{ queue: q, url: `http://127.0.0.1:${port}/hook`, concurrency: 4, timeoutMs: 2000 }] },
})
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const received = new Map<string, number>()
let app: Server | undefined
t.teardown(() => new Promise<void>((r) => (app ? app.close(() => r()) : r())))

const pushStatus = async () => {
  const body = (await (await fetch(`${sc.api}/v1/status`)).json()) as { consumers: { push: Record<string, unknown>[] } }
  return body.consumers.push[0] as Record<string, unknown>
}
const pausedGauge = async () => new RegExp(`amqp_sidecar_push_paused\\{queue="${q}"\\} (\\d)`).exec(await (await fetch(`${sc.ops}/metrics`)).text())?.[1]

t.test('an app that is not listening yet gets every message once it is, none dead-lettered', async (t) => {
  // Consuming means the topology (the queue) is declared: a message published before that would route nowhere.
  await waitFor(async () => (await pushStatus())['consuming'] === true, { timeoutMs: 15_000, what: 'the push subscription to consume' })
  const ch = await amqp.channel()
  const publishedAt = Date.now()
  for (let i = 0; i < N; i++) ch.sendToQueue(q, Buffer.from(`job-${i}`), { messageId: `job-${i}` })

  const paused = await waitFor(async () => {
    const s = await pushStatus()
    return s['paused'] === true ? s : undefined
  }, { timeoutMs: 15_000, what: 'the push subscription to pause' })
  t.equal(paused['pauseCause'], 'ECONNREFUSED', 'paused because the connection was refused')
  t.equal(await pausedGauge(), '1', 'amqp_sidecar_push_paused{queue} is 1')
  await waitFor(async () => ((await pushStatus())['probes'] as number) >= 2, { timeoutMs: 15_000, what: 'the URL to be probed again' })

  await delay(Math.max(0, publishedAt + APP_AWAY_MS - Date.now()))
  t.equal(await amqp.depth(dlq), 0, 'nothing dead-lettered while the app was away')
  app = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const id = String(req.headers['x-message-id'])
      received.set(id, (received.get(id) ?? 0) + 1)
      res.writeHead(204).end()
    })
  })
  app.listen(port, '127.0.0.1')
  await once(app, 'listening')

  await waitFor(() => received.size === N, { timeoutMs: 30_000, what: `all ${N} messages at the app` })
  await waitFor(async () => (await amqp.depth(q)) === 0 && sc.sidecar.consumers.leases.size === 0, { timeoutMs: 10_000, what: 'every message acked' })
  t.same([...received.keys()].sort(), Array.from({ length: N }, (_, i) => `job-${i}`).sort(), 'every message arrived')
  t.equal(await amqp.depth(dlq), 0, 'none dead-lettered')
  const s = await pushStatus()
  t.match(s, { paused: false, gaveUp: 0, delivered: N })
  t.equal(await pausedGauge(), '0', 'the gauge is back to 0')
  t.match(await (await fetch(`${sc.ops}/metrics`)).text(), /amqp_sidecar_push_attempts_total\{outcome="unreachable"\} [1-9]/)
})
