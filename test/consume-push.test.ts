/**
 * HTTP push against the shared broker and a real local HTTP server on port 0:
 * headers and token, retries after 500s, give-up to the dead-letter queue
 * (client error and exhausted retries), and onGiveUp "requeue".
 */
import { once } from 'node:events'
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { directAmqp } from './fixtures/amqp.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

interface Call {
  path: string
  headers: IncomingHttpHeaders
  body: string
}

/** Each path answers from its own script of statuses (the last one repeats). */
const scripts = new Map<string, number[]>()
const calls: Call[] = []
const held: import('node:http').ServerResponse[] = []
const server = createServer((req, res) => {
  const chunks: Buffer[] = []
  req.on('data', (c: Buffer) => chunks.push(c))
  req.on('end', () => {
    const path = req.url ?? '/'
    calls.push({ path, headers: req.headers, body: Buffer.concat(chunks).toString() })
    const script = scripts.get(path) ?? [200]
    const status = script.length > 1 ? (script.shift() as number) : (script[0] as number)
    if (status === 0) return void held.push(res) // answered later by the test, or never (timeout)
    res.writeHead(status).end()
  })
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
t.teardown(() => {
  for (const r of held) r.destroy()
  return new Promise((r) => server.close(r))
})
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

const dir = mkdtempSync(join(tmpdir(), 'push-token-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const tokenFile = join(dir, 'token')
writeFileSync(tokenFile, 's3cret\n')

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const dlq = amqp.name('dlq')
const [qRetry, qReject, qExhaust, qRequeue, qSlow, qTimeout] = ['retry', 'reject', 'exhaust', 'requeue', 'slow', 'timeout'].map((n) => amqp.name(`push-${n}`)) as [
  string,
  string,
  string,
  string,
  string,
  string,
]
const deadLettered = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq }
scripts.set('/retry', [500, 500, 200])
scripts.set('/reject', [400])
scripts.set('/exhaust', [503])
scripts.set('/requeue', [422, 422, 200])
scripts.set('/slow', [0])
scripts.set('/timeout', [0, 200])
const retry = { maxAttempts: 3, initialDelayMs: 10, maxDelayMs: 50 }

const sc = await startSidecar(t, {
  topology: {
    queues: [
      { name: dlq, durable: false },
      ...[qRetry, qReject, qExhaust, qRequeue, qSlow, qTimeout].map((name) => ({ name, durable: false, arguments: deadLettered })),
    ],
  },
  consume: {
    pushTokenFile: tokenFile,
    push: [
      { queue: qRetry, url: `${base}/retry`, concurrency: 2, timeoutMs: 2000, retry },
      { queue: qReject, url: `${base}/reject`, retry },
      { queue: qExhaust, url: `${base}/exhaust`, retry },
      { queue: qSlow, url: `${base}/slow`, concurrency: 2, timeoutMs: 30_000, retry },
      { queue: qTimeout, url: `${base}/timeout`, timeoutMs: 300, retry },
      { queue: qRequeue, url: `${base}/requeue`, retry: { maxAttempts: 1, initialDelayMs: 10, maxDelayMs: 10 }, onGiveUp: 'requeue' },
    ],
  },
})
await waitFor(() => sc.sidecar.consumeUpstream.state === 'connected', { timeoutMs: 15_000, what: 'consume connection' })

const put = async (queue: string, body: string, props: Record<string, unknown> = {}) => (await amqp.channel()).sendToQueue(queue, Buffer.from(body), props)
const callsTo = (path: string) => calls.filter((c) => c.path === path)

t.test('retries after two 500s, then delivers and acks', async (t) => {
  await put(qRetry, '{"order":1}', { messageId: 'push-1', contentType: 'application/json', headers: { tenant: 'acme' } })
  await waitFor(() => callsTo('/retry').length >= 3, { timeoutMs: 10_000, what: 'three attempts' })
  await waitFor(() => sc.sidecar.consumers.leases.size === 0, { timeoutMs: 5000, what: 'the delivery settled' })
  const [first, , third] = callsTo('/retry')
  t.equal(callsTo('/retry').length, 3, 'no attempt after the 200')
  t.equal(third?.body, '{"order":1}')
  t.match(first?.headers, {
    'x-message-id': 'push-1',
    'x-redelivered': 'false',
    'x-routing-key': qRetry,
    'x-queue': qRetry,
    'x-header-tenant': 'acme',
    'content-type': 'application/json',
    'x-sidecar-token': 's3cret',
    'x-attempt': '1',
  })
  t.equal(third?.headers['x-attempt'], '3')
  t.equal(await amqp.depth(qRetry), 0, 'acked: not back in the queue')
  const metrics = await (await fetch(`${sc.ops}/metrics`)).text()
  t.match(metrics, /amqp_sidecar_push_attempts_total\{outcome="server-error"\} 2/)
  t.match(metrics, /amqp_sidecar_deliveries_total\{via="push"\} \d+/)
})

t.test('a 4xx gives up at once: the message is in the dead-letter queue', async (t) => {
  await put(qReject, 'bad', { messageId: 'push-2' })
  const [m] = await amqp.drainUntil(dlq, 1)
  t.equal(m?.content.toString(), 'bad')
  t.equal(m?.properties.messageId, 'push-2')
  t.equal(callsTo('/reject').length, 1, 'no retry for a client error')
})

t.test('exhausted retries give up to the dead-letter queue', async (t) => {
  await put(qExhaust, 'down', { messageId: 'push-3' })
  const [m] = await amqp.drainUntil(dlq, 1)
  t.equal(m?.properties.messageId, 'push-3')
  t.equal(callsTo('/exhaust').length, 3, 'maxAttempts attempts')
})

t.test('onGiveUp "requeue" puts it back; it is delivered later (redelivered)', async (t) => {
  await put(qRequeue, 'again', { messageId: 'push-4' })
  await waitFor(() => callsTo('/requeue').length >= 3, { timeoutMs: 10_000, what: 'three deliveries' })
  const last = callsTo('/requeue')[2]
  t.equal(last?.headers['x-redelivered'], 'true')
  await waitFor(() => sc.sidecar.consumers.leases.size === 0, { timeoutMs: 5000, what: 'settled' })
  t.equal(await amqp.depth(qRequeue), 0)
  t.equal(await amqp.depth(dlq), 0, 'nothing dead-lettered')
})

t.test('concurrency: never more calls in flight than configured', async (t) => {
  await put(qSlow, 's1')
  await put(qSlow, 's2')
  await put(qSlow, 's3')
  await put(qSlow, 's4')
  await waitFor(() => callsTo('/slow').length === 2, { timeoutMs: 5000, what: 'two calls in flight' })
  // The broker holds back the rest: the prefetch is the concurrency.
  await waitFor(async () => (await amqp.depth(qSlow)) === 2, { timeoutMs: 5000, what: 'two left in the queue' })
  t.equal(callsTo('/slow').length, 2)
  scripts.set('/slow', [200])
  for (const r of held.splice(0)) r.writeHead(200).end()
  await waitFor(() => callsTo('/slow').length === 4, { timeoutMs: 5000, what: 'the other two pushed' })
  await waitFor(async () => (await amqp.depth(qSlow)) === 0 && sc.sidecar.consumers.leases.size === 0, { timeoutMs: 5000, what: 'all acked' })
  t.pass('four delivered, two at a time')
})

t.test('a call that times out is retried', async (t) => {
  await put(qTimeout, 'tick', { messageId: 'push-5' })
  await waitFor(() => callsTo('/timeout').length === 2, { timeoutMs: 10_000, what: 'a retry after the timeout' })
  await waitFor(() => sc.sidecar.consumers.leases.size === 0, { timeoutMs: 5000, what: 'settled' })
  t.equal(await amqp.depth(qTimeout), 0)
  t.match(await (await fetch(`${sc.ops}/metrics`)).text(), /amqp_sidecar_push_attempts_total\{outcome="timeout"\} 1/)
})
