// Proves the cluster fixture: three private nodes in one cluster, each in its
// own namespace; a real amqplib client sees each fault; the connection's node
// and a quorum queue's leader are read from the broker; stop() leaves nothing.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import amqplib, { type ChannelModel } from 'amqplib'
import { startCluster } from '../fixtures/cluster.js'
import { netnsAvailable } from '../fixtures/netns-path.js'
import { waitFor, waitForEvent } from '../fixtures/wait.js'

const EVENT_TIMEOUT_MS = 60_000
const CLOSE_DEADLINE_MS = 5_000
const Q = 'cluster-selftest'

t.setTimeout(20 * 60_000) // a cluster boot alone takes minutes on a busy machine
const skip = netnsAvailable()
if (skip !== null) {
  t.plan(0, skip)
} else {
  const booted = Date.now()
  const cluster = await startCluster()
  t.teardown(() => cluster.stop())
  t.comment(`3-node cluster booted and joined in ${Date.now() - booted} ms`)

  async function connect(i: number, name: string, heartbeat = 0): Promise<ChannelModel> {
    const conn = await amqplib.connect(`${cluster.urls[i] as string}?heartbeat=${heartbeat}`, { clientProperties: { connection_name: name } })
    conn.on('error', () => {})
    return conn
  }

  /**
   * A node that is frozen, blocked or already gone never answers close-ok, and
   * a socket to a deleted namespace sits in FIN-WAIT-1 for minutes, keeping the
   * test process alive: close with a deadline, then drop the socket.
   */
  async function closeConn(conn: ChannelModel): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([conn.close().catch(() => {}), new Promise<void>((r) => (timer = setTimeout(r, CLOSE_DEADLINE_MS)))])
    clearTimeout(timer)
    ;(conn.connection as unknown as { stream?: { destroy(): void } }).stream?.destroy()
  }

  t.test('three nodes, own addresses, one cluster', async (t) => {
    const names = cluster.nodes.map((n) => n.name)
    t.equal(new Set(cluster.nodes.map((n) => n.host)).size, 3, 'three addresses')
    t.ok(names.every((n) => /^rabbit@10\.\d+\.\d+\.\d+$/.test(n)))
    const status = JSON.parse(await cluster.ctl(2, '-q', 'cluster_status', '--formatter', 'json')) as { running_nodes: string[] }
    t.same([...status.running_nodes].sort(), [...names].sort())
  })

  t.test('connection node and quorum leader come from the broker', async (t) => {
    const conn = await connect(1, 'selftest-on-1')
    t.teardown(() => closeConn(conn))
    t.equal(await cluster.nodeOfConnection('selftest-on-1'), 1)
    t.equal(await cluster.nodeOfConnection('no-such-connection'), undefined)
    const ch = await conn.createConfirmChannel()
    await ch.assertQueue(Q, { durable: true, arguments: { 'x-queue-type': 'quorum' } })
    ch.sendToQueue(Q, Buffer.from('m1'))
    await ch.waitForConfirms()
    const info = await waitFor(async () => {
      const q = await cluster.queue(Q)
      return q?.leader !== undefined && q.online.length === 3 ? q : undefined
    }, { timeoutMs: EVENT_TIMEOUT_MS, what: 'the quorum queue online on 3 nodes' })
    t.equal(info.type, 'quorum')
    t.ok(cluster.indexOf(info.leader) !== undefined, `leader ${info.leader} is a node of ours`)
  })

  t.test('kill -9 the leader: another node serves the queue; restart rejoins', async (t) => {
    t.teardown(() => cluster.heal([Q]))
    const leader = cluster.indexOf((await cluster.queue(Q))?.leader) as number
    const other = (leader + 1) % 3
    const pid = cluster.nodes[leader]?.beamPid as number
    await cluster.kill9(leader)
    t.notOk(cluster.nodes[leader]?.running, 'killed node not running')
    t.throws(() => process.kill(pid, 0), 'its beam.smp is gone')
    // A new connection per try: until a new leader is known, 3.10 answers a
    // basic.get with a connection-level 541 "nodedown".
    const msg = await waitFor(async () => {
      const conn = await connect(other, 'selftest-survivor')
      try {
        const ch = await conn.createChannel()
        return await ch.get(Q, { noAck: true })
      } finally {
        await closeConn(conn)
      }
    }, { timeoutMs: EVENT_TIMEOUT_MS, intervalMs: 200, what: 'a read from the survivors' })
    t.equal(msg.content.toString(), 'm1')
    const newLeader = await waitFor(async () => (await cluster.queue(Q))?.leader, { timeoutMs: EVENT_TIMEOUT_MS, what: 'a new leader' })
    t.not(cluster.indexOf(newLeader), leader, 'a new leader elsewhere')
    await cluster.start(leader)
    await cluster.heal([Q])
    t.ok(cluster.nodes[leader]?.running)
  })

  t.test('partition: a client on the cut node hears nothing; the node pauses, then rejoins', async (t) => {
    t.teardown(() => cluster.heal([Q]))
    const conn = await connect(2, 'selftest-cut', 2)
    // Its heartbeat timeout ends the socket while the link is down: the FIN is never acked.
    t.teardown(() => closeConn(conn))
    const closed = waitForEvent(conn, 'close', { timeoutMs: EVENT_TIMEOUT_MS, what: 'the cut client to close' })
    cluster.partition(2, true)
    t.notOk(cluster.net.linkUp(2))
    // The majority drops the cut node from its running nodes after net_ticktime.
    await waitFor(async () => {
      const status = JSON.parse(await cluster.ctl(0, '-q', 'cluster_status', '--formatter', 'json')) as { running_nodes: string[] }
      return !status.running_nodes.includes(cluster.nodes[2]?.name as string)
    }, { timeoutMs: EVENT_TIMEOUT_MS, intervalMs: 500, what: 'the majority to drop the cut node' })
    t.pass('majority saw the partition')
    cluster.partition(2, false)
    await cluster.heal([Q])
    // Its link silent, the client's heartbeats time out.
    await closed
    t.pass('the client on the cut node was disconnected')
  })

  t.test('freeze / thaw, memory alarm', async (t) => {
    t.teardown(() => cluster.heal([Q]))
    cluster.freeze(1)
    await t.rejects(cluster.ctl(1, 'status'), /frozen/)
    cluster.thaw(1)
    await cluster.setMemoryAlarm(0, true)
    const conn = await connect(2, 'selftest-blocked')
    t.teardown(() => closeConn(conn))
    const ch = await conn.createChannel()
    const blocked = waitForEvent(conn, 'blocked', { timeoutMs: EVENT_TIMEOUT_MS, what: 'connection.blocked on another node' })
    ch.sendToQueue(Q, Buffer.from('x'))
    await blocked
    t.pass('an alarm on node 0 blocks a publisher on node 2')
    await cluster.setMemoryAlarm(0, false)
  })

  t.test('stop() leaves no namespace, bridge, process or directory', async (t) => {
    const { namespaces, bridge } = cluster.net
    const dirs = cluster.nodes.map((n) => n.dir)
    await cluster.stop()
    await cluster.stop() // idempotent
    const ns = execFileSync('ip', ['netns', 'list']).toString()
    for (const n of namespaces) t.notOk(ns.includes(n), `${n} deleted`)
    t.notOk(execFileSync('ip', ['-o', 'link']).toString().includes(bridge), 'bridge deleted')
    t.ok(dirs.every((d) => !existsSync(d)), 'directories removed')
  })
}
