/**
 * Publish deadlines are kept by one timer per deadline length (src/expiry.ts),
 * not a setTimeout per message: with the link down, many confirm-mode
 * publishes wait at once, and each still answers 504 at its own deadline,
 * a shorter deadline sent later before a longer one sent first.
 *
 * The link is down because the only URL is a port nothing listens on, so no
 * broker is hurt and the shared one is not needed.
 */
import t from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { freePort, waitFor } from './fixtures/wait.js'

/** No request may outlive its deadline by more than this (a hang check on a busy machine, not a performance bound). */
const HANG_SLACK_MS = 5_000
const WAITING = 40
const LONG_MS = 4_000
const SHORT_MS = 1_000

const deadPort = await freePort()
const sc = await startSidecar(t, { amqp: { urls: [`amqp://guest:guest@127.0.0.1:${deadPort}/%2F`] } })

const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
const held = async () => ((await (await fetch(`${sc.api}/v1/status`)).json()) as { buffer: { messages: number } }).buffer.messages

const publish = async (id: string, timeoutMs: number) => {
  const started = Date.now()
  const res = await fetch(`${sc.api}/v1/publish/amq.default/nowhere`, {
    method: 'POST',
    body: id,
    headers: { 'x-message-id': id, 'x-timeout-ms': String(timeoutMs) },
  })
  const body = (await res.json()) as { error?: { code: string } }
  return { id, status: res.status, code: body.error?.code, ms: Date.now() - started, at: Date.now() }
}

t.test('many waiting publishes hold one deadline timer per length, and each answers 504 at its own deadline', async (t) => {
  // Settle the sidecar's own timers (reconnect backoff, idle sockets) before counting.
  await waitFor(async () => (await held()) === 0, { timeoutMs: 10_000, what: 'an empty buffer' })
  const before = timeouts()
  const long = Array.from({ length: WAITING }, (_, i) => publish(`long-${i}`, LONG_MS))
  await waitFor(async () => (await held()) === WAITING, { timeoutMs: 20_000, what: `${WAITING} publishes held` })
  const grown = timeouts() - before
  // The old publisher armed one setTimeout per message: 40 more. Other timers
  // (the client's keep-alive sockets, reconnect backoff) may come and go, so
  // the bound is loose but far below one per message.
  t.ok(grown < WAITING / 4, `${WAITING} waiting publishes added ${grown} timers, not one each`)

  const short = publish('short', SHORT_MS)
  const answers = await Promise.all([...long, short])
  for (const a of answers) {
    t.equal(a.status, 504, `${a.id} answers 504`)
    t.equal(a.code, 'PUBLISH_OUTCOME_UNKNOWN')
  }
  const s = answers[WAITING] as (typeof answers)[number]
  const longs = answers.slice(0, WAITING)
  t.ok(s.ms >= SHORT_MS && s.ms < SHORT_MS + HANG_SLACK_MS, `the 1 s publish answered at its deadline (${s.ms} ms)`)
  t.ok(
    longs.every((a) => a.ms >= LONG_MS && a.ms < LONG_MS + HANG_SLACK_MS),
    `every 4 s publish answered at its deadline (${Math.min(...longs.map((a) => a.ms))}-${Math.max(...longs.map((a) => a.ms))} ms)`,
  )
  t.ok(
    longs.every((a) => a.at > s.at),
    'the shorter deadline, sent last, was answered before every longer one sent first',
  )
  t.equal(await held(), 0, 'nothing is held after the answers')
})
