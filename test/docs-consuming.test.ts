/**
 * Every runnable example of docs/consuming.md, run as written against a
 * sidecar with the shipped demo topology (config/default.json) on a fresh
 * private broker. The examples leave "your code" to the reader (handle(),
 * quote(), ./handle-order, ./run-job); the test supplies those and nothing
 * else, and rewrites only what a parallel run must not share: the ports
 * (127.0.0.1:8672, the push app's :8080) and the push token's path.
 *
 * Every ```sh and ```js block of the doc must be run here or named in
 * NOT_RUN with the reason, so a new example cannot go untested unnoticed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, chmodSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { brokerFor } from './fixtures/broker.js'
import { directAmqp } from './fixtures/amqp.js'
import { ROOT } from './fixtures/dist.js'
import { startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'

/** How long an example gets to show its effect on a busy machine (a hang check, not a performance bound). */
const EXAMPLE_DEADLINE_MS = 60_000

interface Block {
  lang: string
  line: number
  code: string
}

const DOC = 'docs/consuming.md'
const blocks: Block[] = []
{
  const text = readFileSync(join(ROOT, DOC), 'utf8')
  for (const m of text.matchAll(/^( *)```(\w*)\n([\s\S]*?)^\1```/gm)) {
    const lang = m[2] ?? ''
    if (lang !== 'sh' && lang !== 'js') continue
    blocks.push({ lang, line: text.slice(0, m.index).split('\n').length, code: m[3] ?? '' })
  }
}
const taken = new Set<Block>()
/** The one block the marker picks; fails the run if the doc lost it. */
const block = (marker: string): Block => {
  const found = blocks.filter((b) => b.code.includes(marker))
  if (found.length !== 1) throw new Error(`${DOC}: expected one example containing ${JSON.stringify(marker)}, found ${found.length}`)
  taken.add(found[0] as Block)
  return found[0] as Block
}
/** Examples that are not whole programs, with where what they show is run. */
const NOT_RUN: Array<[string, string]> = [['function ackLater', 'a fragment (needs a socket); the batched ack it sends is run by test/consume-ws-batch.test.ts']]

const defaults = JSON.parse(readFileSync(join(ROOT, 'config/default.json'), 'utf8')) as {
  topology: { exchanges: unknown[]; queues: Array<{ name: string }>; bindings: unknown[] }
}
const broker = await brokerFor(t)
const amqp = await directAmqp(t, broker.url)
// The responder's queue: docs/consuming.md tells the responder to declare it in its topology.
const topology = { ...defaults.topology, queues: [...defaults.topology.queues, { name: 'pricing.requests', durable: true }] }
const sc = await startSidecar(t, { amqp: { urls: [broker.url] }, topology, log: { level: 'warn' } })
const apiPort = new URL(sc.api).port

const work = mkdtempSync(join(tmpdir(), 'docs-consuming-'))
// `import WebSocket from 'ws'` resolves from the example's own folder, as in an app with ws installed.
symlinkSync(join(ROOT, 'node_modules'), join(work, 'node_modules'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

const asWritten = (code: string) => code.replaceAll('127.0.0.1:8672', `127.0.0.1:${apiPort}`)

/** Runs an example in its own process group, killed (group and all) at teardown. */
function run(t: Test, file: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; out: () => string } {
  let out = ''
  const child = spawn(cmd, args, { cwd: work, detached: true, env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()))
  t.teardown(() => {
    try {
      process.kill(-(child.pid as number), 'SIGKILL')
    } catch {
      // Already gone.
    }
  })
  t.comment(`running ${DOC} example as ${file}`)
  return { child, out: () => out }
}
const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))))

const publish = async (routingKey: string, body: string) => {
  const res = await fetch(`${sc.api}/v1/publish/amq.default/${routingKey}`, { method: 'POST', body, headers: { 'content-type': 'application/json' } })
  if (res.status !== 200) throw new Error(`publish to ${routingKey}: ${res.status} ${await res.text()}`)
}
const acked = async () => {
  const text = await (await fetch(`${sc.ops}/metrics`)).text()
  return Number(/^amqp_sidecar_acks_total\{result="acked"\} (\d+)/m.exec(text)?.[1] ?? 0)
}
const lines = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : [])

t.test('the WebSocket consumer example handles and acks what is published', async (t) => {
  const b = block("op: 'subscribe', queue: 'orders.created', prefetch: 20")
  const file = join(work, 'ws-consumer.mjs')
  // Your code: handle() and reconnect().
  writeFileSync(file, `${asWritten(b.code)}\nasync function handle(order) { console.log('handled ' + JSON.stringify(order)) }\nfunction reconnect() { process.exit(0) }\n`)
  const before = await acked()
  const ex = run(t, 'ws-consumer.mjs', process.execPath, [file])
  for (const id of [1, 2, 3]) await publish('orders.created', JSON.stringify({ id }))
  await waitFor(() => /handled \{"id":3\}/.test(ex.out()), { timeoutMs: EXAMPLE_DEADLINE_MS, what: `the example to handle 3 orders (${ex.out()})` })
  t.match(ex.out(), /handled \{"id":1\}[\s\S]*handled \{"id":2\}[\s\S]*handled \{"id":3\}/, 'handled in order')
  await waitFor(async () => (await acked()) - before >= 3, { timeoutMs: EXAMPLE_DEADLINE_MS, what: 'its 3 acks' })
  t.equal((await acked()) - before, 3, 'each acked once')
  t.notMatch(ex.out(), /sidecar (socket )?error/, 'no error frame or socket error')
  // Gone before the next example reads the same queue, or its subscription could take their messages.
  process.kill(-(ex.child.pid as number), 'SIGKILL')
  await waitFor(async () => (await (await amqp.channel()).checkQueue('orders.created')).consumerCount === 0, {
    timeoutMs: EXAMPLE_DEADLINE_MS,
    what: 'the example\'s subscription to end',
  })
})

t.test('the pull loop handles each message with ./handle-order and acks the batch', async (t) => {
  const b = block('while :; do')
  const handled = join(work, 'handled-orders')
  writeFileSync(join(work, 'handle-order'), `#!/bin/sh\n# your work\ncat >> '${handled}'; echo >> '${handled}'\n`)
  chmodSync(join(work, 'handle-order'), 0o755)
  writeFileSync(join(work, 'pull-loop.sh'), asWritten(b.code))
  for (const id of [4, 5, 6]) await publish('orders.created', JSON.stringify({ id }))
  const before = await acked()
  const ex = run(t, 'pull-loop.sh', '/bin/sh', ['pull-loop.sh'])
  await waitFor(() => lines(handled).length >= 3, { timeoutMs: EXAMPLE_DEADLINE_MS, what: `./handle-order to get 3 orders (${ex.out()})` })
  t.same(lines(handled).sort(), ['{"id":4}', '{"id":5}', '{"id":6}'], 'each body reached ./handle-order once')
  await waitFor(async () => (await acked()) - before >= 3, { timeoutMs: EXAMPLE_DEADLINE_MS, what: `the batch ack (${ex.out()})` })
  t.match(ex.out(), /"result":"acked"/, 'the ack answered acked')
  t.equal(await amqp.depth('orders.created'), 0, 'nothing left in the queue')
})

t.test('the long-job worker extends its lease while ./run-job runs, then acks', async (t) => {
  const b = block('/v1/leases/extend')
  const ran = join(work, 'jobs-run')
  // Your job: here, long enough for one extension at the example's interval, shortened below.
  writeFileSync(join(work, 'run-job'), `#!/bin/sh\nprintf '%s\\n' "$1" >> '${ran}'\nsleep 3\n`)
  chmodSync(join(work, 'run-job'), 0o755)
  // The example extends every 120 s; a test cannot wait that long, so only the interval is shortened.
  const code = asWritten(b.code).replace('while sleep 120', 'while sleep 1')
  t.not(code, asWritten(b.code), 'the example still extends on a timer (while sleep 120)')
  writeFileSync(join(work, 'long-job.sh'), code)
  await publish('orders.created', JSON.stringify({ id: 7 }))
  const ex = run(t, 'long-job.sh', '/bin/sh', ['long-job.sh'])
  const code0 = await Promise.race([exited(ex.child), new Promise<'hung'>((r) => setTimeout(() => r('hung'), EXAMPLE_DEADLINE_MS).unref())])
  t.equal(code0, 0, `the worker exits 0 (${ex.out()})`)
  t.match(lines(ran)[0] ?? '', /"body":"\{\\"id\\":7\}"/, './run-job got the pulled message')
  t.match(ex.out(), /"result":"acked"/, 'the message was acked after the job')
  const text = await (await fetch(`${sc.ops}/metrics`)).text()
  t.match(text, /amqp_sidecar_lease_extensions_total\{result="extended"\} [1-9]/, 'the lease was extended while the job ran')
})

t.test('the push app example verifies the token and acks with 204', async (t) => {
  const b = block("timingSafeEqual")
  const appPort = await freePort()
  const tokenFile = join(work, 'push-token')
  writeFileSync(tokenFile, 's3cret-push-token\n')
  const code = b.code.replace('/var/run/secrets/sidecar/push-token', tokenFile).replace('.listen(8080,', `.listen(${appPort},`)
  t.not(code, b.code, 'the example reads the token file and listens on 8080')
  writeFileSync(join(work, 'push-app.mjs'), `${code}\nasync function handle(body, messageId) { console.log('pushed ' + JSON.stringify(body) + ' ' + messageId) }\n`)
  const ex = run(t, 'push-app.mjs', process.execPath, [join(work, 'push-app.mjs')])
  const queue = amqp.name('docs-push')
  const pusher = await startSidecar(t, {
    amqp: { urls: [broker.url] },
    topology: { queues: [{ name: queue, durable: true }] },
    log: { level: 'warn' },
    consume: { pushTokenFile: tokenFile, push: [{ queue, url: `http://127.0.0.1:${appPort}/hooks/order-created` }] },
  })
  const res = await fetch(`${pusher.api}/v1/publish/amq.default/${queue}`, { method: 'POST', body: '{"id":8}', headers: { 'x-message-id': 'push-8' } })
  t.equal(res.status, 200)
  await waitFor(() => /pushed \{"id":8\} push-8/.test(ex.out()), { timeoutMs: EXAMPLE_DEADLINE_MS, what: `the app to get the push (${ex.out()})` })
  const metrics = await (await fetch(`${pusher.ops}/metrics`)).text()
  t.match(metrics, /amqp_sidecar_push_attempts_total\{outcome="delivered"\} 1\b/, 'delivered at the first attempt: the token was accepted')
  await waitFor(async () => (await amqp.depth(queue)) === 0, { timeoutMs: EXAMPLE_DEADLINE_MS, what: 'the queue to be empty' })
  t.pass('acked: nothing left in the queue')
})

t.test('the request/reply responder answers the curl caller', async (t) => {
  const responder = block("queue: 'pricing.requests'")
  const caller = block('/v1/rpc/amq.default/pricing.requests')
  writeFileSync(join(work, 'responder.mjs'), `${asWritten(responder.code)}\nfunction quote(req) { return { ...req, price: 1299 } }\n`)
  const ex = run(t, 'responder.mjs', process.execPath, [join(work, 'responder.mjs')])
  // The responder is subscribed once the broker shows a consumer on the request queue.
  await waitFor(async () => (await (await amqp.channel()).checkQueue('pricing.requests')).consumerCount === 1, {
    timeoutMs: EXAMPLE_DEADLINE_MS,
    what: `the responder's subscription (${ex.out()})`,
  })
  const command = asWritten(caller.code)
    .split('\n')
    .filter((l) => !l.trim().startsWith('#'))
    .join('\n')
  const call = run(t, 'rpc caller', '/bin/sh', ['-c', `set -e; ${command}`])
  t.equal(await exited(call.child), 0, 'curl exits 0')
  const shown = /^# (\{.*?\})/m.exec(caller.code)?.[1]
  t.ok(shown, 'the doc shows the reply')
  t.equal(call.out().trim(), shown, 'the reply is what the doc shows')
})

t.test('every sh and js example of docs/consuming.md is run here or says why not', async (t) => {
  const skipped = new Set(NOT_RUN.map(([marker, why]) => {
    const b = block(marker)
    t.comment(`not run: ${DOC}:${b.line} ${why}`)
    return b
  }))
  const left = blocks.filter((b) => !taken.has(b) && !skipped.has(b))
  t.same(left.map((b) => `${DOC}:${b.line}`), [], 'no example left unrun')
})
