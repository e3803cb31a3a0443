/**
 * FAULTS.md rows 16, 17 and 18: the SIDECAR process fails (kill -9, SIGSTOP,
 * SIGTERM under load). Each sidecar is the real entry point, `node
 * dist/main.js`, as a child process (test/fixtures/child-sidecar.ts), against
 * the shared broker; queues are this file's own. Invariants: L (confirmed
 * publishes are in the queue, read directly), D, H (every request ends: an
 * answer, or a refused connection once the process is gone), S, R.
 *
 * See also test/shutdown.test.ts (SIGTERM drain, second signal) and
 * test/consume-faults.test.ts (shutdown requeues and dead-letters nothing).
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { startChildSidecar, type ChildSidecar } from './fixtures/child-sidecar.js'
import { checkH, checkLD, checkR, getStatus, publishOnce, publishStream, readQueue, readyzStatus, type Outcome } from './fixtures/faults.js'
import { SHARED_BROKER_URL } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'
import { wsClient } from './fixtures/ws-client.js'

const run = promisify(execFile)
const amqp = await directAmqp(t, SHARED_BROKER_URL)
const ready = (sc: ChildSidecar, what: string) => waitFor(async () => (await readyzStatus(sc.ops)) === 200, { timeoutMs: 30_000, what })
const base = { amqp: { urls: [SHARED_BROKER_URL], reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 } } }
/** No password in anything the child wrote. */
const noSecret = (t: Test, sc: ChildSidecar) => t.notOk(/:guest@/.test(sc.output()), 'S: the URL password never appears unredacted in the output')

t.test('row 16: sidecar crash (kill -9) under load — confirmed publishes kept, unacked deliveries redelivered', async (t) => {
  const q = amqp.name('faults-crash')
  const qc = amqp.name('faults-crash-consume')
  const config = { ...base, topology: { queues: [{ name: q, durable: true }, { name: qc, durable: true }] } }
  const sc = await startChildSidecar(t, config)
  await ready(sc, 'the child ready')
  const ch = await amqp.channel()
  for (let i = 0; i < 10; i++) ch.sendToQueue(qc, Buffer.from(`c${i}`), { messageId: `r16c-${i}` })
  const ws = await wsClient(t, sc.api)
  ws.send({ op: 'subscribe', queue: qc, prefetch: 5 })
  await ws.count('message', 5)
  const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
  const stream = publishStream(t, target, { prefix: 'r16', deadlineMs: 2_000 })
  await stream.advance(30)

  sc.child.kill('SIGKILL')
  const { signal } = await sc.exited
  t.equal(signal, 'SIGKILL', 'the sidecar died by SIGKILL')
  const outcomes = await stream.stop()
  // Requests in flight at the kill, and any sent after, see the connection fail: they end, they do not hang.
  checkH(t, outcomes, { allowClientErrors: true })
  t.ok(outcomes.filter((o) => o.status === 200).length >= 20, 'publishes were confirmed before the crash')
  await checkLD(t, amqp, q, outcomes)
  // The broker sees the dead sockets at once (the kernel closes them): the 5 held deliveries are requeued.
  await waitFor(async () => (await amqp.depth(qc)) === 10, { timeoutMs: 15_000, what: 'the held deliveries back in the queue' })
  const back = await readQueue(amqp, qc)
  t.equal(back.length, 10, 'all ten consume-side messages are still there')
  t.equal(back.filter((m) => m.fields.redelivered).length, 5, 'D: exactly the five unacked deliveries come back redelivered')
  noSecret(t, sc)

  // Started again, the sidecar works at once.
  const again = await startChildSidecar(t, config)
  await ready(again, 'the restarted child ready')
  await checkR(t, amqp, { ...target, api: again.api })
})

t.test('row 17: sidecar frozen (SIGSTOP) — the broker drops it on missed heartbeats; after SIGCONT it reconnects', async (t) => {
  const q = amqp.name('faults-frozen')
  const sc = await startChildSidecar(t, { ...base, amqp: { ...base.amqp, heartbeatSeconds: 1 }, topology: { queues: [{ name: q, durable: false }] } })
  t.teardown(() => void sc.child.kill('SIGCONT'))
  await ready(sc, 'the child ready')
  const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
  const before = await getStatus(sc.api)
  const ports = [before.upstream, before.consumeUpstream].map((u) => Number(String((u as unknown as { localAddress: string }).localAddress).split(':').pop()))
  t.equal(before.upstream.heartbeatSeconds, 1, 'heartbeat 1 s negotiated')
  t.ok(ports.every((p) => Number.isInteger(p) && p > 0), `the local ports are known (${ports.join(', ')})`)

  sc.child.kill('SIGSTOP')
  const frozenAt = Date.now()
  // A request sent while frozen: the kernel accepts it; the sidecar answers once it runs again.
  const pending = publishOnce(target, 'r17-during', { deadlineMs: 3_000 })
  // The broker closes both connections on missed heartbeats (RabbitMQ resets them): our
  // sockets leave ESTABLISHED while the process cannot notice.
  await waitFor(
    async () => {
      const { stdout } = await run('ss', ['-tnH', 'state', 'established'], { timeout: 10_000 })
      return ports.every((p) => !new RegExp(`127\\.0\\.0\\.1:${p}\\s`).test(stdout))
    },
    { timeoutMs: 30_000, intervalMs: 250, what: 'the broker to drop the frozen sidecar\'s connections' },
  )
  const droppedMs = Date.now() - frozenAt
  t.comment(`row 17: the broker dropped the frozen sidecar (heartbeat 1 s) after ${droppedMs} ms`)
  t.ok(droppedMs < 15_000, `dropped within a few heartbeats (${droppedMs} ms)`)

  sc.child.kill('SIGCONT')
  const thawedAt = Date.now()
  const during = await pending
  t.ok(during.status === 200 || during.status === 504, `the request sent while frozen is answered (${during.status} ${during.code ?? ''})`)
  t.ok(Date.now() - thawedAt <= 3_000 + 5_000, 'and within its deadline of the sidecar running again')
  await waitFor(async () => {
    const s = await getStatus(sc.api)
    return s.upstream.connects > before.upstream.connects && s.consumeUpstream.connects > before.consumeUpstream.connects && (await readyzStatus(sc.ops)) === 200
  }, { timeoutMs: 30_000, what: 'both connections re-established' })
  t.comment(`row 17: reconnected ${Date.now() - thawedAt} ms after SIGCONT`)
  const s = await getStatus(sc.api)
  t.ok(s.upstream.lastDisconnect, `the loss was recorded (${s.upstream.lastDisconnect?.cause})`)
  t.ok(['heartbeat-timeout', 'unexpected-close', 'econnreset', 'epipe'].includes(String(s.upstream.lastDisconnect?.cause)), 'classified as a dead link')
  const outcomes: Outcome[] = [during]
  checkH(t, outcomes, { slackMs: Date.now() - frozenAt })
  await checkLD(t, amqp, q, outcomes)
  await checkR(t, amqp, target)
  noSecret(t, sc)
})

t.test('row 18: graceful shutdown (SIGTERM) under load — drains, closes cleanly, exits 0, dead-letters nothing', async (t) => {
  const q = amqp.name('faults-term')
  const qc = amqp.name('faults-term-consume')
  const dlq = amqp.name('faults-term-dlq')
  const dl = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq }
  const sc = await startChildSidecar(t, {
    ...base,
    topology: { queues: [{ name: q, durable: true }, { name: dlq, durable: true }, { name: qc, durable: true, arguments: dl }] },
    shutdown: { drainMs: 1_500 },
  })
  await ready(sc, 'the child ready')
  const ch = await amqp.channel()
  for (let i = 0; i < 6; i++) ch.sendToQueue(qc, Buffer.from(`c${i}`), { messageId: `r18c-${i}` })
  const ws = await wsClient(t, sc.api)
  ws.send({ op: 'subscribe', queue: qc, prefetch: 3 })
  await ws.count('message', 3)
  const target = { api: sc.api, exchange: '', routingKey: q, queue: q }
  const stream = publishStream(t, target, { prefix: 'r18', deadlineMs: 3_000 })
  await stream.advance(30)

  const termAt = Date.now()
  sc.child.kill('SIGTERM')
  await waitFor(async () => (await readyzStatus(sc.ops).catch(() => 0)) !== 200, { timeoutMs: 5_000, what: 'readiness to drop after SIGTERM' })
  const { code } = await sc.exited
  const exitMs = Date.now() - termAt
  const outcomes = await stream.stop()
  t.equal(code, 0, 'exit 0')
  t.comment(`row 18: exited ${exitMs} ms after SIGTERM (drainMs 1500)`)
  t.ok(exitMs < 1_500 + 10_000 + 5_000, 'within drain + confirm wait + close deadline')
  const msgs = sc.lines.map((l) => l.msg)
  t.ok(msgs.includes('amqp-sidecar stopped'), 'the shutdown completed')
  t.notOk(msgs.includes('the AMQP connection did not close in time; destroying the socket'), 'the AMQP connections closed cleanly (connection.close), not by dropping the socket')
  checkH(t, outcomes, { allowClientErrors: true })
  const during = outcomes.filter((o) => o.at >= termAt && o.status === 200)
  t.ok(during.length > 0, `publishes were still confirmed during the drain (${during.length})`)
  const refused = outcomes.filter((o) => o.status !== 200 && !o.clientError)
  t.ok(refused.every((o) => o.code === 'SHUTTING_DOWN' || o.code === 'PUBLISH_OUTCOME_UNKNOWN'), `late publishes are refused 503 SHUTTING_DOWN (${[...new Set(refused.map((o) => o.code))].join(', ') || 'none'})`)
  await checkLD(t, amqp, q, outcomes)
  t.equal(await amqp.depth(qc), 6, 'the held deliveries were requeued')
  t.equal(await amqp.depth(dlq), 0, 'nothing dead-lettered by the shutdown')
  noSecret(t, sc)
})
