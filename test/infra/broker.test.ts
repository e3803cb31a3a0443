// Proves the private-broker fixture works, and that each fault it offers is
// visible to a real amqplib client. One node for the whole file: boots cost seconds.
import t from 'tap'
import amqplib, { type ChannelModel } from 'amqplib'
import { brokerFor } from '../fixtures/broker.js'
import { waitFor, waitForEvent } from '../fixtures/wait.js'

// Most events follow a rabbitmqctl call, which alone has taken over 10 s beside
// stress-ng --cpu 2; a wait ends as soon as its event comes.
const EVENT_TIMEOUT_MS = 60_000

const bootStarted = Date.now()
const broker = await brokerFor(t)
t.comment(`private broker ${broker.nodeName} booted in ${Date.now() - bootStarted} ms`)

/** A connection whose errors are captured, so the test sees them via 'close'. */
async function connect(name: string, heartbeat?: number): Promise<ChannelModel> {
  const url = heartbeat === undefined ? broker.url : `${broker.url}?heartbeat=${heartbeat}`
  const conn = await amqplib.connect(url, { clientProperties: { connection_name: name } })
  conn.on('error', () => {}) // surfaced again as the 'close' argument
  return conn
}

async function closeQuietly(conn: ChannelModel): Promise<void> {
  await conn.close().catch(() => {})
}

t.test('a real client can publish and get; listConnections shows its name', async (t) => {
  t.match(broker.url, /^amqp:\/\/guest:guest@127\.0\.0\.1:\d+\/%2F$/)
  t.not(broker.port, 5672, 'never the shared broker')
  t.ok(broker.beamPid, 'beam pid known')
  const conn = await connect('infra-roundtrip')
  t.teardown(() => closeQuietly(conn))
  const ch = await conn.createChannel()
  const { queue } = await ch.assertQueue('', { exclusive: true })
  ch.sendToQueue(queue, Buffer.from('hello'))
  const msg = await waitFor(() => ch.get(queue, { noAck: true }), { timeoutMs: 5_000, what: 'the message' })
  t.equal(msg.content.toString(), 'hello')
  const mine = (await broker.listConnections()).find((c) => c.connectionName === 'infra-roundtrip')
  t.ok(mine, 'connection listed by connection_name')
  t.equal(mine?.user, 'guest')
  t.equal(mine?.vhost, '/')
  t.ok(mine !== undefined && mine.peerPort > 0)
})

t.test('closeAllConnections: the client sees 320 CONNECTION_FORCED', async (t) => {
  const conn = await connect('infra-forced')
  const closed = waitForEvent<[Error & { code?: number }]>(conn, 'close', { timeoutMs: EVENT_TIMEOUT_MS, what: 'forced close' })
  await broker.closeAllConnections('infra test')
  const [err] = await closed
  t.equal(err.code, 320)
  t.match(err.message, /CONNECTION_FORCED - infra test/)
})

t.test('freeze: a heartbeat=1 client times out; thaw: the node answers again', async (t) => {
  const conn = await connect('infra-frozen', 1)
  const closed = waitForEvent<[Error]>(conn, 'close', { timeoutMs: EVENT_TIMEOUT_MS, what: 'heartbeat timeout' })
  const frozenAt = Date.now()
  broker.freeze()
  t.teardown(() => broker.thaw())
  const [err] = await closed
  t.match(err.message, /heartbeat/i)
  t.comment(`heartbeat timeout after ${Date.now() - frozenAt} ms`)
  await t.rejects(broker.ctl('status'), /frozen/, 'ctl refuses fast instead of hanging')
  broker.thaw()
  await closeQuietly(await connect('infra-thawed'))
})

t.test('memory and disk alarms block publishers and clear', async (t) => {
  const conn = await connect('infra-alarms')
  t.teardown(() => closeQuietly(conn))
  // Cleared even when the test fails, so no later test runs under an alarm.
  t.teardown(async () => {
    await broker.setMemoryAlarm(false)
    await broker.setDiskAlarm(false)
  })
  const ch = await conn.createChannel()
  const blocked = waitForEvent<[string]>(conn, 'blocked', { timeoutMs: EVENT_TIMEOUT_MS, what: 'connection.blocked' })
  await broker.setMemoryAlarm(true) // resolves once the node reports the alarm
  ch.sendToQueue('amq.no-such-queue-needed', Buffer.from('x')) // blocking happens on publish
  t.match((await blocked)[0], /memory/i)
  const unblocked = waitForEvent(conn, 'unblocked', { timeoutMs: EVENT_TIMEOUT_MS, what: 'connection.unblocked' })
  await broker.setMemoryAlarm(false)
  await unblocked
  await broker.setDiskAlarm(true)
  await broker.setDiskAlarm(false)
  t.same(await broker.alarms(), [], 'both alarms cleared')
})

t.test('changePassword refuses logins; deleteQueue cancels consumers', async (t) => {
  // After the freeze above, on a loaded machine, the node has answered that its app was not running yet.
  await broker.ctl('await_startup')
  t.teardown(() => broker.changePassword('guest', 'guest'))
  await broker.changePassword('guest', 'other')
  await t.rejects(connect('infra-refused'), /ACCESS_REFUSED|403/)
  await broker.changePassword('guest', 'guest')

  const conn = await connect('infra-cancel')
  t.teardown(() => closeQuietly(conn))
  const ch = await conn.createChannel()
  await ch.assertQueue('infra-doomed')
  const cancelled = new Promise<null>((resolve) => void ch.consume('infra-doomed', (msg) => msg === null && resolve(msg)))
  await broker.deleteQueue('infra-doomed')
  t.equal(await cancelled, null, 'consumer got basic.cancel')
})

t.test('stopApp refuses connections; startApp brings AMQP back', async (t) => {
  let stopped = false
  t.teardown(() => (stopped ? broker.startApp() : undefined))
  await broker.stopApp()
  stopped = true
  await t.rejects(connect('infra-stopped'), /ECONNREFUSED/)
  await broker.startApp()
  stopped = false
  await closeQuietly(await connect('infra-restarted'))
})

t.test('kill9 drops clients; start() boots the same node with its data', async (t) => {
  const conn = await connect('infra-crash')
  const ch = await conn.createChannel()
  await ch.assertQueue('infra-durable', { durable: true })
  // Mnesia writes its transaction log lazily: a kill -9 a few ms after the declare can lose
  // it (seen once in CI). Dump the log to the table files first, so the check below tests
  // the fixture's data-dir reuse, not mnesia's write-behind.
  await broker.ctl('eval', 'mnesia:dump_log().')
  const closed = waitForEvent<[Error]>(conn, 'close', { timeoutMs: EVENT_TIMEOUT_MS, what: 'close after kill -9' })
  const oldPid = broker.beamPid
  await broker.kill9()
  t.ok((await closed)[0], 'client saw the connection die')
  t.equal(broker.beamPid, undefined)
  await t.rejects(connect('infra-dead'), /ECONNREFUSED/)
  const restartAt = Date.now()
  await broker.start()
  t.comment(`restart after kill -9 took ${Date.now() - restartAt} ms`)
  t.not(broker.beamPid, oldPid)
  const again = await connect('infra-after-crash')
  t.teardown(() => closeQuietly(again))
  const ch2 = await again.createChannel()
  await ch2.checkQueue('infra-durable') // throws (404) if the data dir was not reused
  t.pass('durable queue survived the crash')
})
