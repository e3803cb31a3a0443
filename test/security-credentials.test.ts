// Broker credentials come from files and rotate without a restart
// (amqp.urlFile is re-read on every reconnect round), and never from argv.
// Rotation runs against a private broker node: the user's password is changed
// with rabbitmqctl, every connection is force-closed, the sidecar is refused
// with the old password (still in the file), then the file is rewritten and the
// sidecar reconnects on its own. Neither password ever shows in logs, status
// or metrics.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError, loadConfig } from '../src/config/index.js'
import { brokerFor } from './fixtures/broker.js'
import { startSidecar, type RunningSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const TIMEOUT_MS = 30_000

interface Up {
  state: string
  connects: number
  lastConnectError: { cause: string } | null
}

t.test('a broker URL on the command line is refused, without echoing it', async (t) => {
  const secret = `argv-${randomBytes(8).toString('hex')}`
  const url = `amqp://app:${secret}@127.0.0.1:5672/%2F`
  for (const args of [['--amqp.urls', url], [`--amqp.urls=${url}`], ['--api.port', '0', '--amqp.urls', url]]) {
    const err = await t.throws(() => loadConfig({ file: null, env: {}, args }), ConfigError, args.map((a) => (a.includes(secret) ? a.replace(secret, '<secret>') : a)).join(' '))
    t.notOk(String((err as Error | undefined)?.message).includes(secret), 'the password is not in the error')
  }
  // The same URL from the environment or a file is fine.
  t.same(loadConfig({ file: null, env: { AMQP_URL: url }, args: [] }).config.amqp.urls, [url])
})

t.test('api.headersTimeoutMs above api.requestTimeoutMs is refused at load time', async (t) => {
  t.throws(() => loadConfig({ file: null, env: {}, overrides: { api: { headersTimeoutMs: 5000, requestTimeoutMs: 1000 } } }), ConfigError)
})

t.test('api.allowedHosts takes host names, not URLs or ports', async (t) => {
  const ok = loadConfig({ file: null, env: { AMQP_SIDECAR_API_ALLOWED_HOSTS: 'sidecar.local, 10.0.0.7,[fd00::1]' } })
  t.same(ok.config.api.allowedHosts, ['sidecar.local', '10.0.0.7', '[fd00::1]'])
  for (const bad of ['http://x', 'x:8672', 'a b', '']) {
    t.throws(() => loadConfig({ file: null, env: {}, overrides: { api: { allowedHosts: [bad] } } }), ConfigError, JSON.stringify(bad))
  }
})

t.test('amqp.urlFile rotation against a private broker', async (t) => {
  const broker = await brokerFor(t)
  // Characters that must be percent-encoded in a URL: scrubbing must catch both forms.
  const oldPassword = `old-${randomBytes(10).toString('hex')}@/x`
  const newPassword = `new-${randomBytes(10).toString('hex')}@/y`
  const urlFor = (password: string) => `amqp://rotor:${encodeURIComponent(password)}@127.0.0.1:${broker.port}/%2F`
  await broker.ctl('add_user', 'rotor', oldPassword)
  await broker.ctl('set_permissions', '-p', '/', 'rotor', '.*', '.*', '.*')

  const dir = t.testdir({})
  const urlFile = join(dir, 'amqp-url')
  writeFileSync(urlFile, `# rotated by the secret store\n${urlFor(oldPassword)}\n`)
  const s: RunningSidecar = await startSidecar(t, { amqp: { urlFile } })
  const up = async (): Promise<Up> => ((await (await fetch(`${s.api}/v1/status`)).json()) as { upstream: Up }).upstream
  const first = await waitFor(async () => ((await up()).state === 'connected' ? up() : undefined), { timeoutMs: TIMEOUT_MS, what: 'the first connection' })

  await broker.changePassword('rotor', newPassword)
  await broker.closeAllConnections('password rotated')
  const refused = await waitFor(async () => {
    const u = await up()
    return u.lastConnectError?.cause === 'access-refused' ? u : undefined
  }, { timeoutMs: TIMEOUT_MS, what: 'the old password to be refused' })
  t.not(refused.state, 'connected', 'the old password no longer works')

  writeFileSync(urlFile, `${urlFor(newPassword)}\n`)
  const after = await waitFor(async () => {
    const u = await up()
    return u.state === 'connected' ? u : undefined
  }, { timeoutMs: TIMEOUT_MS, what: 'a reconnect with the rotated password' })
  t.ok(after.connects > first.connects, `reconnected without a restart (connects ${first.connects} -> ${after.connects})`)
  // Readiness needs both connections; the consume one retries on its own backoff.
  t.ok(await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: TIMEOUT_MS, what: 'ready with the rotated password' }))
  const pub = await fetch(`${s.api}/v1/publish/amq.fanout/k`, { method: 'POST', headers: { 'x-mandatory': 'false' }, body: 'after rotation' })
  t.equal(pub.status, 200, 'publishing works with the rotated credentials')

  const surfaces = {
    logs: s.logs.join(''),
    status: await (await fetch(`${s.api}/v1/status`)).text(),
    metrics: await (await fetch(`${s.ops}/metrics`)).text(),
  }
  for (const [where, text] of Object.entries(surfaces)) {
    for (const [name, pw] of [['old', oldPassword], ['new', newPassword]] as const) {
      t.notOk(text.includes(pw), `no ${name} password in ${where}`)
      t.notOk(text.includes(encodeURIComponent(pw)), `no encoded ${name} password in ${where}`)
    }
  }
  t.match(surfaces.status, /amqp:\/\/rotor:\*\*\*@127\.0\.0\.1/, 'status shows the URL, redacted')
})
