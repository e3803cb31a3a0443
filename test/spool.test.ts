// The durable spool (DESIGN.md section 9, issue 10): a 202 means on disk.
// Real files, a real broker behind a fault proxy for outages, and real child
// processes killed with SIGKILL at random moments.
import { spawnSync } from 'node:child_process'
import { appendFileSync, mkdtempSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { SegmentLog } from '../src/spool/segment-log.js'
import { encodeRecord } from '../src/spool/record.js'
import { directAmqp } from './fixtures/amqp.js'
import { MAIN, ensureBuilt, startChildSidecar } from './fixtures/child-sidecar.js'
import { errorCode, request } from './fixtures/http.js'
import { proxiedQueue } from './fixtures/spool-outage.js'
import { SHARED_BROKER_URL, startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'

const amqp = await directAmqp(t, SHARED_BROKER_URL)
const tmp = (t: Test) => {
  const dir = mkdtempSync(join(tmpdir(), 'spool-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}
const accepted = (api: string, q: string, id: string, body = id) =>
  request(api, `/v1/publish/amq.default/${q}`, { method: 'POST', headers: { 'x-ack': 'accepted', 'x-message-id': id, 'content-type': 'text/plain' }, body, timeoutMs: 20_000 })
const spoolStatus = async (api: string) => ((await (await fetch(`${api}/v1/status`)).json()) as { spool: { messages: number; bytes: number; oldestAgeSeconds: number } }).spool
const msg = (id: string) => ({ exchange: '', routingKey: 'q', content: Buffer.from(`body-${id}`), options: { messageId: id, mandatory: true, headers: { h: 1 } } })

t.test('recovery keeps every whole record and drops a torn or garbage tail', async (t) => {
  const dir = tmp(t)
  const { log } = await SegmentLog.open(dir)
  for (let i = 0; i < 10; i++) await log.append(encodeRecord(msg(`m${i}`), Date.now()))
  await log.close()
  const [seg] = readdirSync(dir).filter((n) => n.endsWith('.seg'))
  const path = join(dir, seg as string)
  const whole = statSync(path).size
  // A write cut by a crash: the last record loses its last 5 bytes; then garbage after it.
  truncateSync(path, whole - 5)
  appendFileSync(path, Buffer.from('garbage that is not a record'))
  const { log: again, recovery } = await SegmentLog.open(dir)
  t.equal(recovery.records, 9, 'nine whole records recovered')
  t.ok(recovery.droppedBytes > 0, `${recovery.droppedBytes} bytes dropped`)
  t.match(recovery.problems.join(' '), /torn record|checksum|impossible/)
  const read = await again.read(100, 1 << 20)
  t.same(
    read.map((r) => r.record.msg.options.messageId),
    Array.from({ length: 9 }, (_, i) => `m${i}`),
  )
  t.same(read[3]?.record.msg.content.toString(), 'body-m3')
  t.same(read[3]?.record.msg.options.headers, { h: 1 })
  // Released records are not read again after a restart (the ack file), and a fully released segment goes.
  for (const r of read.slice(0, 4)) again.release(r.ref)
  await again.close()
  const { log: third, recovery: r3 } = await SegmentLog.open(dir)
  t.equal(r3.records, 5, 'the four released records are skipped after a restart')
  await third.close()
})

t.test('a spool directory that cannot be used stops the start with a clear error and a non-zero exit', async (t) => {
  ensureBuilt()
  const dir = tmp(t)
  writeFileSync(join(dir, 'a-file'), 'not a directory')
  const config = join(dir, 'config.json')
  writeFileSync(config, JSON.stringify({ api: { port: 0 }, ops: { host: '127.0.0.1', port: 0 }, publish: { spool: { dir: join(dir, 'a-file', 'spool') } } }))
  const r = spawnSync(process.execPath, [MAIN, '--config', config], { env: { PATH: process.env.PATH }, encoding: 'utf8', timeout: 30_000 })
  t.not(r.status, 0, `exit code ${r.status}`)
  t.match(r.stdout + r.stderr, /could not start: publish\.spool\.dir \\?".*a-file\/spool\\?" cannot be used: ENOTDIR/)
})

t.test('the bound on disk answers 503 BUFFER_FULL with Retry-After', async (t) => {
  const port = await freePort()
  const sc = await startSidecar(t, { amqp: { urls: [`amqp://guest:guest@127.0.0.1:${port}/%2F`] }, publish: { spool: { dir: tmp(t), maxBytes: 65_536 } } })
  let ok = 0
  let full: Awaited<ReturnType<typeof request>> | undefined
  for (let i = 0; i < 100 && !full; i++) {
    const r = await accepted(sc.api, 'q', `full-${i}`, 'x'.repeat(4096))
    if (r.status === 202) ok++
    else full = r
  }
  t.equal(full?.status, 503)
  t.equal(full && errorCode(full), 'BUFFER_FULL')
  t.ok(full?.headers['retry-after'])
  t.ok(ok >= 10 && ok <= 16, `${ok} records of 4 KB fit 64 KiB`)
})

t.test('an outage longer than the memory buffer: 202s are spooled, then drained with no restart', async (t) => {
  const { proxy, q, url } = await proxiedQueue(t, amqp, 'spool-drain')
  await proxy.setDown(true)
  const sc = await startSidecar(t, {
    amqp: { urls: [url] },
    publish: { maxBufferedMessages: 10, spool: { dir: tmp(t) } },
  })
  const ids = Array.from({ length: 60 }, (_, i) => `d${i}`)
  for (const id of ids) t.equal((await accepted(sc.api, q, id)).status, 202, `${id} accepted`)
  const during = await spoolStatus(sc.api)
  t.equal(during.messages, 60, 'all 60 on disk while the broker is away (the memory bound is 10)')
  await waitFor(async () => (await spoolStatus(sc.api)).oldestAgeSeconds > 0, { timeoutMs: 10_000, what: 'the oldest age to show' })
  t.match(await (await fetch(`${sc.ops}/metrics`)).text(), /amqp_sidecar_spool_messages 60/)
  await proxy.setDown(false)
  const read = await amqp.drainUntil(q, 60, 60_000)
  t.same(new Set(read.map((m) => m.properties.messageId)), new Set(ids), 'every spooled message reached the queue')
  t.same(
    read.map((m) => m.properties.messageId),
    ids,
    'in order',
  )
  await waitFor(async () => (await spoolStatus(sc.api)).messages === 0, { timeoutMs: 30_000, what: 'the spool to empty' })
})

t.test('kill -9 at random moments while apps publish 202s through an outage and after it: every 202 reaches the queue', async (t) => {
  const { proxy, q, url } = await proxiedQueue(t, amqp, 'spool-kill')
  const dir = tmp(t)
  const config = {
    amqp: { urls: [url], reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } },
    publish: { spool: { dir } },
    shutdown: { drainMs: 0 },
    log: { level: 'info' },
  }
  const ok = new Set<string>()
  const ROUNDS = 5
  for (let round = 0; round < ROUNDS; round++) {
    // Rounds 0-2 run during an outage; 3-4 after it, with the spool draining while apps publish.
    await proxy.setDown(round < 3)
    const sc = await startChildSidecar(t, config)
    let n = 0
    let stop = false
    const killAfter = 20 + Math.floor(Math.random() * 80)
    const worker = async (w: number) => {
      while (!stop) {
        const id = `r${round}-w${w}-${n++}`
        const r = await accepted(sc.api, q, id).catch(() => undefined)
        if (r?.status === 202) ok.add(id)
        else if (r && r.status !== 202) throw new Error(`unexpected ${r.status} ${r.text}`)
        if (!r) return
        if (ok.size >= killAfter * (round + 1)) stop = true
      }
    }
    const workers = Array.from({ length: 8 }, (_, w) => worker(w))
    await waitFor(() => stop, { timeoutMs: 60_000, what: `round ${round}: ${killAfter} more 202s` })
    if (round === 1) {
      // One graceful stop among the crashes: SIGTERM leaves the spool consistent, exit 0.
      sc.child.kill('SIGTERM')
      t.equal((await sc.exited).code, 0, 'SIGTERM exits 0 with records on disk')
    } else {
      sc.child.kill('SIGKILL')
      await sc.exited
    }
    await Promise.allSettled(workers)
  }
  // A crash can also leave a torn tail: add garbage to the newest segment before the last start.
  const newest = readdirSync(dir).filter((f) => f.endsWith('.seg')).sort().pop()
  if (newest) appendFileSync(join(dir, newest), Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9]))
  await proxy.setDown(false)
  const last = await startChildSidecar(t, config)
  await waitFor(async () => (await spoolStatus(last.api)).messages === 0, { timeoutMs: 90_000, what: 'the spool to drain after the last start' })
  const read = await amqp.drainUntil(q, ok.size, 60_000)
  const ids = read.map((m) => m.properties.messageId as string)
  const got = new Set(ids)
  const lost = [...ok].filter((id) => !got.has(id))
  t.same(lost, [], `lost = 0 of ${ok.size} answered 202`)
  t.comment(`kill -9 rounds: ${ROUNDS - 1} kills + 1 SIGTERM; answered 202: ${ok.size}; read: ${ids.length}; duplicates: ${ids.length - got.size}`)
  t.match(last.output(), /torn or corrupt tail/, 'the torn tail was reported')
  last.child.kill('SIGTERM')
  t.equal((await last.exited).code, 0)
})
