/**
 * The idle meter on real sockets (issue 11 item 2): the idle time before a
 * cut is the gap the write that met the RST ended, not "now minus the last
 * byte" (which that very write makes ~0 ms); idle periods ended by a read are
 * survived ones. The peer is a real TCP server that answers "ping" with "pong"
 * and a "cut" with a kernel RST (resetAndDestroy), like a middlebox that
 * evicted the flow.
 *
 * Idle periods are real waiting (time is the fault); every other step waits on
 * a socket event. Bounds are relative to the idle periods the test itself
 * measured, with a margin of half a period for a loaded machine.
 */
import { once } from 'node:events'
import { connect, createServer, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { ARM_IDLE_MS, IdleMeter } from '../src/upstream/idle-meter.js'
import { delay, waitFor, waitForEvent } from './fixtures/wait.js'

const SURVIVED_MS = 400
const CUT_MS = 2000

async function peer(t: Test, closeAfterIdleMs?: number) {
  const server = createServer((s) => {
    s.on('error', () => {})
    // The middlebox's own timer: it ends the flow after an idle period (a bare FIN, as haproxy does).
    if (closeAfterIdleMs !== undefined) s.setTimeout(closeAfterIdleMs, () => s.end())
    s.on('data', (d) => {
      const text = d.toString()
      if (text.includes('cut')) s.resetAndDestroy()
      else if (text.includes('ping')) s.write('pong')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  const client = connect(port, '127.0.0.1')
  client.on('error', () => {})
  await once(client, 'connect')
  t.teardown(() => {
    client.destroy()
    server.close()
  })
  return client
}

/** Sends "ping", resolves when "pong" is read; returns when that was. */
async function pingPong(c: Socket): Promise<number> {
  c.write('ping')
  await waitForEvent(c, 'data', { timeoutMs: 10_000, what: 'pong' })
  return Date.now()
}

t.test('an RST met by a write after an idle period: the idle period is the gap that write ended', async (t) => {
  const c = await peer(t)
  const meter = new IdleMeter()
  t.teardown(() => meter.stop())
  meter.start(c)
  let last = await pingPong(c)
  await delay(SURVIVED_MS)
  const survived = Date.now() - last
  last = await pingPong(c) // this idle period ended with a read: the flow survived it
  await delay(CUT_MS)
  const idle = Date.now() - last
  const closed = waitForEvent(c, 'close', { timeoutMs: 10_000, what: 'the RST' })
  c.write('cut')
  await closed
  const r = meter.readCut()
  t.ok(r, 'a reading')
  t.comment(`measured by the test: survived ${survived} ms, idle before the cut ${idle} ms; meter: ${JSON.stringify(r)}`)
  t.ok((r?.idleMsBefore ?? 0) >= idle / 2 && (r?.idleMsBefore ?? Infinity) <= idle + CUT_MS / 2, `idle before the cut ~${idle} ms, not ~0 (${r?.idleMsBefore} ms)`)
  t.ok((r?.longestSurvivedIdleMs ?? 0) >= survived / 2, `the survived idle period is the lower bound (${r?.longestSurvivedIdleMs} ms)`)
  t.ok((r?.longestSurvivedIdleMs ?? Infinity) < (r?.idleMsBefore ?? 0), 'survived < cut')
})

t.test('a cut met by no write of ours: the middlebox timer (FIN) or a keepalive probe', async (t) => {
  const c = await peer(t, CUT_MS)
  const meter = new IdleMeter()
  t.teardown(() => meter.stop())
  meter.start(c)
  const ended = waitForEvent(c, 'end', { timeoutMs: 10_000 + CUT_MS, what: 'the idle FIN' })
  const last = await pingPong(c)
  await ended
  const idle = Date.now() - last
  const byPeer = meter.readCut()
  t.comment(`idle before the FIN ${idle} ms (test), meter ${JSON.stringify(byPeer)}`)
  t.ok((byPeer?.idleMsBefore ?? 0) >= idle / 2 && (byPeer?.idleMsBefore ?? Infinity) <= idle + CUT_MS / 2, `no write met it: the idle time is up to the close (${byPeer?.idleMsBefore} ms)`)
  // TCP keepalive: its first probe leaves probeAfterMs after the last byte, and that probe met the cut.
  t.equal(meter.readCut(250)?.idleMsBefore, 250, 'a keepalive cut is the probe delay, not the time until the probes gave up')
})

t.test('a proxy that times what the client sends: a late reply does not make the flow younger', async (t) => {
  const REPLY_AFTER_MS = 600
  const server = createServer((s) => {
    s.on('error', () => {})
    let timer: NodeJS.Timeout | undefined
    // Like haproxy's `timeout client`: counted from the last byte the client SENT.
    s.on('data', () => {
      clearTimeout(timer)
      timer = setTimeout(() => s.end(), CUT_MS)
      setTimeout(() => s.writable && s.write('late pong'), REPLY_AFTER_MS)
    })
    s.on('close', () => clearTimeout(timer))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const c = connect((server.address() as { port: number }).port, '127.0.0.1')
  c.on('error', () => {})
  t.teardown(() => {
    c.destroy()
    server.close()
  })
  await once(c, 'connect')
  c.resume() // read (and drop) the late reply, so the FIN after it is seen
  const meter = new IdleMeter()
  t.teardown(() => meter.stop())
  meter.start(c)
  const ended = waitForEvent(c, 'end', { timeoutMs: 10_000 + CUT_MS, what: 'the proxy to close' })
  const wroteAt = Date.now()
  c.write('ping')
  await ended
  const sinceWrite = Date.now() - wroteAt
  const r = meter.readCut()
  t.comment(`since our write ${sinceWrite} ms, the reply came ${REPLY_AFTER_MS} ms after it; meter ${JSON.stringify(r)}`)
  t.ok((r?.idleMsBefore ?? 0) >= sinceWrite - REPLY_AFTER_MS / 2, `the idle time is read from our last write (${r?.idleMsBefore} ms of ${sinceWrite}), not from the late reply`)
})

t.test('no reading before start', async (t) => {
  t.equal(new IdleMeter().readCut(), null)
})

t.test('a write after an idle spell that gets no byte back is reported once; busy or answered writes are not', async (t) => {
  const c = await peer(t)
  const meter = new IdleMeter()
  t.teardown(() => meter.stop())
  const UNANSWERED_MS = 500
  const calls: number[] = []
  meter.start(c, { ms: UNANSWERED_MS, call: (waited) => calls.push(waited) })
  const idle = () => delay(ARM_IDLE_MS + 300) // the fault here is time itself

  // Answered: after an idle spell, a ping comes back as a pong.
  await idle()
  c.write('ping')
  meter.expectAnswer()
  await waitForEvent(c, 'data', { timeoutMs: 10_000, what: 'pong' })
  // Not idle: a write right after the pong that nobody answers does not arm the check.
  c.write('hush')
  meter.expectAnswer()
  await delay(UNANSWERED_MS * 3)
  t.same(calls, [], 'neither the answered write nor one on a busy flow was reported')

  // After an idle spell, a write the peer never answers: a dead flow.
  await idle()
  const wroteAt = Date.now()
  c.write('hush')
  meter.expectAnswer()
  meter.expectAnswer() // more writes before the answer keep the first one's clock
  await waitFor(() => calls.length > 0, { timeoutMs: 10_000, what: 'the unanswered write to be reported' })
  t.equal(calls.length, 1, 'reported once')
  t.ok((calls[0] as number) >= UNANSWERED_MS, `after ${calls[0]} ms without a byte back (>= ${UNANSWERED_MS})`)
  t.ok(Date.now() - wroteAt >= UNANSWERED_MS, 'not before its time')
})
