/**
 * The broker password never appears in logs, /v1/status, metrics or error
 * bodies: not while connected, not when the broker refuses it, not in a
 * config error. Uses a private broker user with a unique password.
 */
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { loadConfig } from '../src/config/index.js'
import { brokerFor } from './fixtures/broker.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const broker = await brokerFor(t)
const password = `pw-${randomBytes(12).toString('hex')}`
await broker.ctl('add_user', 'app', password)
await broker.ctl('set_permissions', '-p', '/', 'app', '.*', '.*', '.*')
const url = `amqp://app:${password}@127.0.0.1:${broker.port}/%2F`

const sc = await startSidecar(t, { amqp: { urls: [url] } })
await waitFor(async () => (await fetch(`${sc.ops}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'ready' })

const everything = async () => {
  const status = await (await fetch(`${sc.api}/v1/status`)).text()
  const metrics = await (await fetch(`${sc.ops}/metrics`)).text()
  const readyz = await (await fetch(`${sc.ops}/readyz`)).text()
  const errors = await Promise.all([
    fetch(`${sc.api}/v1/publish/amq.default/nowhere`, { method: 'POST', body: 'x' }).then((r) => r.text()),
    fetch(`${sc.api}/v1/publish/no-such-exchange/x`, { method: 'POST', body: 'x' }).then((r) => r.text()),
    fetch(`${sc.api}/v1/publish`, { method: 'POST', body: '{', headers: { 'content-type': 'application/json' } }).then((r) => r.text()),
  ])
  return { status, metrics, readyz, errors: errors.join('\n'), logs: sc.logs.join('') }
}

t.test('connected: status shows the URL with the password redacted', async (t) => {
  const all = await everything()
  t.match(all.status, `amqp://app:***@127.0.0.1:${broker.port}/`)
  for (const [where, text] of Object.entries(all)) t.notOk(text.includes(password), `no password in ${where}`)
})

t.test('refused (password changed, connection forced): the error is explained, the password is not shown', async (t) => {
  await broker.changePassword('app', `other-${randomBytes(8).toString('hex')}`)
  await broker.closeAllConnections('rotate')
  const s = await waitFor(
    async () => {
      const body = (await (await fetch(`${sc.api}/v1/status`)).json()) as { upstream: { lastConnectError: { cause: string } | null } }
      return body.upstream.lastConnectError?.cause === 'access-refused' ? body : undefined
    },
    { timeoutMs: 20_000, what: 'an access-refused connect error' },
  )
  t.ok(s, 'the cause is access-refused')
  t.equal((await fetch(`${sc.ops}/readyz`)).status, 503, 'not ready while refused')
  const all = await everything()
  t.match(all.status, /ACCESS_REFUSED|access-refused/)
  for (const [where, text] of Object.entries(all)) t.notOk(text.includes(password), `no password in ${where}`)
})

t.test('a config error does not echo the URL', async (t) => {
  const secret = `s3cret-${randomBytes(6).toString('hex')}`
  t.throws(() => loadConfig({ file: null, env: { AMQP_URL: `http://u:${secret}@host/` } }), /must use amqp:\/\/ or amqps:\/\//)
  try {
    loadConfig({ file: null, env: { AMQP_URL: `http://u:${secret}@host/` } })
  } catch (err) {
    t.notOk((err as Error).message.includes(secret), 'the message has no password')
  }
})
