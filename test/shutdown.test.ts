/**
 * SIGTERM, as Kubernetes sends it, to the real entry point (dist/main.js):
 * readiness goes 503 at once, publishes are still served through the drain,
 * the AMQP connection is closed cleanly and the process exits 0. A second
 * signal exits at once.
 */
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { startChildSidecar } from './fixtures/child-sidecar.js'
import { SHARED_BROKER_URL } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)

t.test('SIGTERM drains: not ready, still publishing, clean close, exit 0', async (t) => {
  const queue = amqp.name('drain')
  const sc = await startChildSidecar(t, {
    amqp: { urls: [SHARED_BROKER_URL] },
    topology: { queues: [{ name: queue, durable: false }] },
    shutdown: { drainMs: 1500 },
  })
  await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 15_000, what: 'ready' })
  const publish = (id: string) => fetch(`${sc.api}/v1/publish/amq.default/${queue}`, { method: 'POST', body: id, headers: { 'x-message-id': id } })
  t.equal((await publish('before')).status, 200)

  sc.child.kill('SIGTERM')
  await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 503, { timeoutMs: 5_000, what: 'readiness 503 after SIGTERM' })
  const during = await publish('during-drain')
  t.equal(during.status, 200, 'a publish during the drain is still confirmed')

  const { code } = await sc.exited
  t.equal(code, 0, 'exit 0')
  const msgs = sc.lines.map((l) => l.msg)
  t.ok(msgs.includes('signal received'), 'the signal was logged')
  t.ok(msgs.includes('amqp-sidecar stopped'), 'the shutdown completed')
  t.notOk(sc.lines.some((l) => l.msg === 'the AMQP connection did not close in time; destroying the socket'), 'the AMQP connection closed cleanly, not by a dropped socket')
  const got = await amqp.drainUntil(queue, 2)
  t.same(got.map((m) => m.properties.messageId), ['before', 'during-drain'], 'both confirmed messages are in the queue')
})

t.test('a second signal exits at once', async (t) => {
  const sc = await startChildSidecar(t, { amqp: { urls: [SHARED_BROKER_URL] }, shutdown: { drainMs: 60_000 } })
  sc.child.kill('SIGTERM')
  await waitFor(() => sc.lines.some((l) => l.msg === 'signal received'), { timeoutMs: 5_000, what: 'the first signal to be handled' })
  sc.child.kill('SIGTERM')
  const { code } = await sc.exited
  t.equal(code, 1, 'exits with 1 long before the 60 s drain')
  t.match(sc.output(), /second SIGTERM/)
})
