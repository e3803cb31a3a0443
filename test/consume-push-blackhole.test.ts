/**
 * Safe push when the app's URL is a silent blackhole: every packet to it is
 * dropped (no RST, no ICMP), so a connect neither succeeds nor fails, it times
 * out. That is an app that cannot be reached, like a refused connection
 * (test/consume-push-pause.test.ts), not a slow answer: the subscription
 * pauses, requeues without counting attempts, probes, and resumes when the
 * path comes back. With maxAttempts 2, counting those timeouts as attempts
 * would dead-letter every message within two timeouts.
 *
 * The blackhole is real: the app sits behind a network namespace whose veth
 * end is taken down (test/fixtures/netns-path.ts; needs root).
 */
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { netnsAvailable, startNetnsPath } from './fixtures/netns-path.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const skip = netnsAvailable()
if (skip) t.plan(0, skip)
else {
  const N = 4
  /** Push timeout: short, so the test is quick; a connect into the dark path ends as a connect timeout. */
  const PUSH_TIMEOUT_MS = 1_500
  /** A hang check on a busy machine, not a performance bound. */
  const WAIT_MS = 60_000

  const received = new Map<string, string[]>()
  const app = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const id = String(req.headers['x-message-id'])
      received.set(id, [...(received.get(id) ?? []), String(req.headers['x-attempt'])])
      res.writeHead(204).end()
    })
  })
  app.listen(0, '127.0.0.1')
  await once(app, 'listening')
  t.teardown(() => new Promise<void>((r) => app.close(() => r())))
  const path = await startNetnsPath(t, { upstreamPort: (app.address() as AddressInfo).port })
  // Dark before anything is pushed; brought up again in the test, and at teardown whatever happens.
  path.down()
  let dark = true
  t.teardown(() => (dark ? path.up() : undefined))

  const amqp = await directAmqp(t, SHARED_BROKER_URL)
  const q = amqp.name('push-blackhole')
  const dlq = amqp.name('push-blackhole-dlq')
  const sc = await startSidecar(t, {
    topology: {
      queues: [
        { name: dlq, durable: false },
        { name: q, durable: false, arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq } },
      ],
    },
    consume: {
      push: [
        {
          queue: q,
          url: `http://${path.host}:${path.port}/hook`,
          concurrency: 2,
          timeoutMs: PUSH_TIMEOUT_MS,
          retry: { maxAttempts: 2, initialDelayMs: 100, maxDelayMs: 200 },
          onGiveUp: 'dead-letter',
        },
      ],
    },
  })
  const pushStatus = async () => {
    const body = (await (await fetch(`${sc.api}/v1/status`)).json()) as { consumers: { push: Record<string, unknown>[] } }
    return body.consumers.push[0] as Record<string, unknown>
  }

  t.test('a blackholed app URL pauses the push subscription on a connect timeout; nothing is dead-lettered; it resumes when the path is back', async (t) => {
    // The sidecar declares the queue (topology) and consumes it: publishing before that would route nowhere.
    await waitFor(async () => (await pushStatus())['consuming'] === true, { timeoutMs: WAIT_MS, what: 'the push subscription to consume' })
    const ch = await amqp.channel()
    for (let i = 0; i < N; i++) ch.sendToQueue(q, Buffer.from(`job-${i}`), { messageId: `job-${i}` })

    const paused = await waitFor(async () => {
      const s = await pushStatus()
      return s['paused'] === true ? s : undefined
    }, { timeoutMs: WAIT_MS, what: 'the push subscription to pause' })
    t.equal(paused['pauseCause'], 'connect-timeout', `paused because the connect timed out (${JSON.stringify(paused)})`)
    // Longer dark than the two timeouts and the backoff that would have dead-lettered a message.
    await waitFor(async () => ((await pushStatus())['probes'] as number) >= 3, { timeoutMs: WAIT_MS, what: 'three probes into the dark' })
    t.equal(await amqp.depth(dlq), 0, 'nothing dead-lettered while the path was dark')
    t.equal(received.size, 0, 'nothing reached the app through the blackhole')

    path.up()
    dark = false
    await waitFor(() => received.size === N, { timeoutMs: WAIT_MS, what: `all ${N} messages at the app (${[...received.keys()]})` })
    await waitFor(async () => (await amqp.depth(q)) === 0 && sc.sidecar.consumers.leases.size === 0, { timeoutMs: WAIT_MS, what: 'every message acked' })
    t.same([...received.keys()].sort(), Array.from({ length: N }, (_, i) => `job-${i}`), 'every message arrived')
    t.ok(
      [...received.values()].every((attempts) => attempts.at(-1) === '1'),
      `each delivered at X-Attempt 1: the timeouts into the dark were not counted (${JSON.stringify(Object.fromEntries(received))})`,
    )
    t.equal(await amqp.depth(dlq), 0, 'none dead-lettered')
    t.match(await pushStatus(), { paused: false, gaveUp: 0, delivered: N })
  })
}
