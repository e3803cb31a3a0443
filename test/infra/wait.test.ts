// The waiting helpers must both succeed and fail loudly, naming what they waited for.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { EventEmitter } from 'node:events'
import { createServer } from 'node:net'
import { freePort, freePorts, GiveUpError, waitFor, waitForEvent } from '../fixtures/wait.js'

t.test('waitFor resolves with the first truthy probe value', async (t) => {
  let calls = 0
  const value = await waitFor(() => (++calls >= 3 ? { calls } : undefined), { timeoutMs: 1_000, intervalMs: 5, what: 'x' })
  t.same(value, { calls: 3 })
})

t.test('waitFor accepts 0 and empty string as values; only undefined/false mean "not yet"', async (t) => {
  t.equal(await waitFor(() => 0, { timeoutMs: 100, what: 'zero' }), 0)
  t.equal(await waitFor(() => '', { timeoutMs: 100, what: 'empty' }), '')
})

t.test('waitFor times out naming what, with the last probe error', async (t) => {
  const started = Date.now()
  await t.rejects(
    waitFor(
      () => {
        throw new Error('still booting')
      },
      { timeoutMs: 200, intervalMs: 20, what: 'the unicorn' },
    ),
    /timed out after 200 ms waiting for the unicorn \(last error: still booting\)/,
  )
  t.ok(Date.now() - started < 1_000)
})

t.test('waitFor abandons a hanging probe at the deadline', async (t) => {
  await t.rejects(waitFor(() => new Promise<boolean>(() => {}), { timeoutMs: 100, what: 'a hang' }), /waiting for a hang/)
})

t.test('GiveUpError stops waiting at once', async (t) => {
  const started = Date.now()
  await t.rejects(
    waitFor(
      () => {
        throw new GiveUpError('process exited')
      },
      { timeoutMs: 5_000, what: 'never' },
    ),
    { name: 'GiveUpError', message: 'process exited' },
  )
  t.ok(Date.now() - started < 1_000)
})

t.test('waitForEvent resolves with the arguments; errors do not reject it', async (t) => {
  const e = new EventEmitter()
  e.on('error', () => {})
  const p = waitForEvent<[number, string]>(e, 'close', { timeoutMs: 1_000, what: 'close' })
  e.emit('error', new Error('first an error'))
  e.emit('close', 320, 'forced')
  t.same(await p, [320, 'forced'])
  await t.rejects(waitForEvent(e, 'never', { timeoutMs: 50, what: 'nothing' }), /waiting for nothing \('never' event\)/)
  t.equal(e.listenerCount('never'), 0, 'listener removed on timeout')
})

t.test('freePort/freePorts give distinct bindable ports', async (t) => {
  const ports = await freePorts(5)
  t.equal(new Set(ports).size, 5)
  const port = await freePort()
  const server = createServer().listen(port, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  t.teardown(() => server.close())
  t.pass(`bound ${port}`)
})

t.test('free ports are below the ephemeral range, so no client socket can take one while nothing listens', async (t) => {
  const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
  const ports = await freePorts(50)
  t.ok(
    ports.every((p) => p >= 1024 && p < (low as number)),
    `all 50 below ${low} (${Math.min(...ports)}-${Math.max(...ports)})`,
  )
})
