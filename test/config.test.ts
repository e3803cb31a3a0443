/** Configuration: precedence, strictness, secrets, and the shipped files. */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { DEFAULT_CONFIG_FILE, loadConfig } from '../src/config/index.js'

const dir = mkdtempSync(join(tmpdir(), 'sidecar-config-'))
const file = (name: string, content: unknown) => {
  const p = join(dir, name)
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content))
  return p
}

t.test('defaults match DESIGN.md section 4', async (t) => {
  const { config } = loadConfig({ file: null, env: {} })
  t.same(config.amqp.urls, ['amqp://guest:guest@127.0.0.1:5672/%2F'])
  t.equal(config.amqp.heartbeatSeconds, 15)
  t.same(config.amqp.reconnect, { initialDelayMs: 500, maxDelayMs: 30000 })
  t.match(config.api, { host: '127.0.0.1', port: 8672, tokenFile: null, bodyLimitBytes: 4194304 })
  t.same(config.ops, { host: '0.0.0.0', port: 8673 })
  t.same(config.publish, { timeoutMs: 10000, maxBufferedMessages: 10000, maxBufferedBytes: 67108864, mandatory: true, persistent: true, allowedExchanges: null, nackRetryMs: 5000, deadLetter: null, spool: { dir: null, maxBytes: 1073741824 } })
  t.same(config.topology, { exchanges: [], queues: [], bindings: [] })
  t.ok(Object.isFrozen(config.amqp), 'the config is frozen')
})

t.test('precedence: CLI > env > file > defaults', async (t) => {
  const f = file('p.json', { publish: { timeoutMs: 1111, maxBufferedMessages: 7 }, api: { port: 1000 } })
  const env = { AMQP_SIDECAR_PUBLISH_TIMEOUT_MS: '2222', AMQP_SIDECAR_API_PORT: '2000' }
  const { config } = loadConfig({ args: ['--config', f, '--publish.timeoutMs', '3333'], env })
  t.equal(config.publish.timeoutMs, 3333, 'CLI wins')
  t.equal(config.api.port, 2000, 'env beats the file')
  t.equal(config.publish.maxBufferedMessages, 7, 'the file beats defaults')
  t.equal(config.publish.persistent, true, 'defaults fill the rest')
})

t.test('AMQP_URL takes a comma-separated list; AMQP_SIDECAR_CONFIG names the file', async (t) => {
  const f = file('e.json', { log: { level: 'warn' } })
  const { config, file: used } = loadConfig({ env: { AMQP_URL: 'amqp://a:1@h1/%2F, amqps://b:2@h2/v', AMQP_SIDECAR_CONFIG: f } })
  t.same(config.amqp.urls, ['amqp://a:1@h1/%2F', 'amqps://b:2@h2/v'])
  t.equal(used, f)
  t.equal(config.log.level, 'warn')
})

t.test('unknown keys and bad values are refused with a message naming the key', async (t) => {
  t.throws(() => loadConfig({ file: file('u.json', { publish: { timeotMs: 1 } }), env: {} }), /timeotMs/)
  t.throws(() => loadConfig({ file: file('v.json', { amqp: { heartbeatSeconds: -1 } }), env: {} }), /heartbeatSeconds/)
  t.throws(() => loadConfig({ file: file('w.json', { topology: { queues: [{ name: 'q', durabel: true }] } }), env: {} }), /queues\[0\]: unknown key "durabel"/)
  t.throws(() => loadConfig({ file: file('x.json', { topology: { exchanges: [{ name: 'e', type: 'nope' }] } }), env: {} }), /exchanges\[0\]\.type/)
  t.throws(() => loadConfig({ file: file('y.json', { amqp: { reconnect: { initialDelayMs: 5000, maxDelayMs: 100 } } }), env: {} }), /initialDelayMs must not exceed/)
  t.throws(() => loadConfig({ file: join(dir, 'missing.json'), env: {} }), /config file not found/)
  t.throws(() => loadConfig({ file: null, env: { AMQP_SIDECAR_LOG_LEVEL: 'loud' } }), /log\.level/)
})

t.test('broker URLs never come from the command line', async (t) => {
  t.throws(() => loadConfig({ file: null, env: {}, args: ['--amqp.urls', 'amqp://x:y@h/'] }))
})

t.test('describe() masks the sensitive URL list', async (t) => {
  const loaded = loadConfig({ file: null, env: { AMQP_URL: 'amqp://u:topsecretpw@h/%2F' } })
  t.notMatch(loaded.describe(), /topsecretpw/)
})

t.test('the shipped config files are valid', async (t) => {
  t.ok(loadConfig({ file: DEFAULT_CONFIG_FILE, env: {} }).config)
  const example = loadConfig({ file: join(DEFAULT_CONFIG_FILE, '..', 'example.jsonc'), env: {} }).config
  t.equal(example.topology.queues[0]?.name, 'orders.created', 'the annotated example parses, comments and all')
})

t.test('minimums are enforced (convict ignores min on its own nat format)', async (t) => {
  t.throws(() => loadConfig({ file: file('m1.json', { amqp: { connectTimeoutMs: 0 } }), env: {} }), /connectTimeoutMs: must be at least 1/)
  t.throws(() => loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_MAX_BUFFERED_MESSAGES: '0' } }), /maxBufferedMessages: must be at least 1/)
  t.throws(() => loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_TIMEOUT_MS: '1.5' } }), /timeoutMs: must be an integer/)
  t.equal(loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_TIMEOUT_MS: '2500' } }).config.publish.timeoutMs, 2500, 'env strings are coerced')
})
