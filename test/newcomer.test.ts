/**
 * What a newcomer hit on a first try (issue 13, items 4 and 5), each pinned:
 * a failed start exits non-zero with one clear line; text booleans are refused,
 * not read as true; config errors blame the flag, variable or file the value
 * came from and name a line and column; a file holding [] is refused; comments
 * work in .json; amqp.urls [] is fine when amqp.urlFile is set; `npm start`
 * passes SIGTERM through instead of orphaning the sidecar.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { ConfigError, loadConfig } from '../src/config/index.js'
import { ensureBuilt, ROOT } from './fixtures/dist.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const MAIN = ensureBuilt()
const NOWHERE = 'amqp://guest:guest@127.0.0.1:1/%2F'

function tempFile(t: Test, name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'newcomer-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

function configError(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err.message
    throw err
  }
  throw new Error('no ConfigError was thrown')
}

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AMQP_') && !k.startsWith('npm_')) env[k] = v
  return env
}

t.test('a start that fails (API port in use) exits 1 with one clear line', async (t) => {
  const blocker: Server = createServer()
  await new Promise<void>((res) => blocker.listen(0, '127.0.0.1', res))
  t.teardown(() => blocker.close())
  const port = (blocker.address() as { port: number }).port
  const file = tempFile(t, 'c.json', JSON.stringify({ amqp: { urls: [NOWHERE] }, api: { port }, ops: { host: '127.0.0.1', port: 0 } }))
  const child = spawn(process.execPath, [MAIN, '--config', file], { cwd: ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')))
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const [code] = await waitForEvent<[number | null]>(child, 'close', { timeoutMs: 60_000, what: 'the failed start to exit' })
  t.equal(code, 1, 'a failed start is not a clean exit')
  t.equal(stderr, `amqp-sidecar: could not start: 127.0.0.1:${port} is already in use (api.port / ops.port)\n`, 'one clear line on stderr')
  const fatal = stdout.split('\n').filter((l) => l.includes('"level":60'))
  t.equal(fatal.length, 1, 'one fatal log line')
  t.match(fatal[0], `could not start: 127.0.0.1:${port} is already in use`)
  t.notMatch(stdout, /signal received/, 'not logged as if a signal had come')
})

t.test('booleans: only true and false, from the file, the environment and the command line', async (t) => {
  const file = tempFile(t, 'c.json', JSON.stringify({ publish: { mandatory: 'no' } }))
  t.match(configError(() => loadConfig({ file, env: {} })), `publish.mandatory: must be true or false: value was "no" (set by ${file})`)
  for (const value of ['0', 'off', 'no', 'yes', '1']) {
    t.match(
      configError(() => loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_MANDATORY: value } })),
      `publish.mandatory: must be true or false: value was "${value}" (set by environment AMQP_SIDECAR_PUBLISH_MANDATORY)`,
      `AMQP_SIDECAR_PUBLISH_MANDATORY=${value} is refused`,
    )
  }
  t.match(configError(() => loadConfig({ file: null, env: {}, args: ['--publish.mandatory', 'nope'] })), 'publish.mandatory: must be true or false: value was "nope" (set by flag --publish.mandatory)')
  t.equal(loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_MANDATORY: 'false' } }).config.publish.mandatory, false)
  t.equal(loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_MANDATORY: 'FALSE' } }).config.publish.mandatory, false)
  t.equal(loadConfig({ file: null, env: {}, args: ['--publish.persistent', 'false'] }).config.publish.persistent, false)
  t.equal(loadConfig({ file: null, env: { AMQP_SIDECAR_PUBLISH_MANDATORY: 'true' } }).config.publish.mandatory, true)
})

t.test('config errors name the source of the bad value', async (t) => {
  const file = tempFile(t, 'c.json', JSON.stringify({ api: { port: 8000 } }))
  t.match(configError(() => loadConfig({ file, env: {}, args: ['--api.port', '99999'] })), 'api.port: ports must be within range 0 - 65535: value was 99999 (set by flag --api.port)')
  t.match(configError(() => loadConfig({ file, env: { AMQP_SIDECAR_API_PORT: '70000' } })), '(set by environment AMQP_SIDECAR_API_PORT)')
  const url = configError(() => loadConfig({ file, env: { AMQP_URL: 'http://u:pw-in-url@h/' } }))
  t.match(url, 'amqp.urls: [0]: must use amqp:// or amqps:// (set by environment AMQP_URL)')
  t.notMatch(url, 'pw-in-url', 'the URL is never echoed')
  const bad = tempFile(t, 'bad.json', JSON.stringify({ api: { port: 'http' } }))
  t.match(configError(() => loadConfig({ file: bad, env: {} })), `(set by ${bad})`)
})

t.test('a JSON syntax error names the line and column; [] and scalars are refused; comments are fine', async (t) => {
  const broken = tempFile(t, 'broken.json', '{\n  "api": { "port": 1 },\n  "log": { "level": "info" }\n  "ops": {}\n}\n')
  t.match(configError(() => loadConfig({ file: broken, env: {} })), `${broken}: syntax error at line 4, column 3`)
  for (const [text, what] of [['[]', 'an array'], ['42', 'a number'], ['null', 'null'], ['"x"', 'a string']] as const) {
    const f = tempFile(t, 'odd.json', text)
    t.match(configError(() => loadConfig({ file: f, env: {} })), `${f}: must hold a JSON object`, `${text} is refused`)
    t.match(configError(() => loadConfig({ file: f, env: {} })), what)
  }
  const commented = tempFile(t, 'c.json', '{\n  // the API port\n  "api": { "port": 9123 } /* block */\n}\n')
  t.equal(loadConfig({ file: commented, env: {} }).config.api.port, 9123, 'comments in a .json file')
})

t.test('amqp.urls [] is fine with amqp.urlFile set, refused without', async (t) => {
  const urlFile = tempFile(t, 'url', `${NOWHERE}\n`)
  const withFile = tempFile(t, 'a.json', JSON.stringify({ amqp: { urls: [], urlFile } }))
  t.same(loadConfig({ file: withFile, env: {} }).config.amqp.urls, [])
  const without = tempFile(t, 'b.json', JSON.stringify({ amqp: { urls: [] } }))
  t.match(configError(() => loadConfig({ file: without, env: {} })), 'amqp.urls: must be a non-empty list of amqp:// or amqps:// URLs (or set amqp.urlFile)')
})

t.test('`npm start` passes SIGTERM to the sidecar: nothing is left holding the port', async (t) => {
  const file = tempFile(t, 'c.json', JSON.stringify({ amqp: { urls: [NOWHERE] }, api: { port: 0 }, ops: { host: '127.0.0.1', port: 0 }, shutdown: { drainMs: 0 } }))
  // npm runs prestart (a build) first; detached so teardown can kill whatever is left.
  const npm = spawn('npm', ['start', '--silent', '--', '--config', file], { cwd: ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'inherit'], detached: true })
  t.teardown(() => {
    try {
      process.kill(-npm.pid!, 'SIGKILL')
    } catch {
      // already gone
    }
  })
  let listening: { api: { port: number } } | undefined
  for await (const line of createInterface({ input: npm.stdout })) {
    if (line.includes('"amqp-sidecar listening"')) {
      listening = JSON.parse(line) as { api: { port: number } }
      break
    }
  }
  if (!listening) throw new Error('npm start ended before the sidecar listened')
  npm.stdout.resume()
  const port = listening.api.port
  const exited = waitForEvent<[number | null]>(npm, 'exit', { timeoutMs: 60_000, what: 'npm to exit after SIGTERM' })
  npm.kill('SIGTERM') // npm only, as a process manager or a terminal's kill would
  const [code] = await exited
  t.equal(code, 0, 'npm start exits 0 after a clean drain')
  const refused = await waitFor(
    () =>
      new Promise<boolean>((res) => {
        const s = connect(port, '127.0.0.1')
        s.once('connect', () => (s.destroy(), res(false)))
        s.once('error', () => res(true))
      }),
    { timeoutMs: 30_000, what: `port ${port} to be released (the sidecar gone, not orphaned)` },
  )
  t.ok(refused, 'the API port is closed: the sidecar exited with npm')
})

t.test('an envelope with an unknown key is refused naming the key', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [NOWHERE] }, log: { level: 'silent' } })
  const cases: [unknown, string][] = [
    [{ exchange: 'x', mandatroy: true }, 'body has an unknown key "mandatroy"'],
    [[{ exchange: 'x' }, { exchange: 'x', bodyy: 1 }], 'body/1 has an unknown key "bodyy"'],
    [{ exchange: 'x', properties: { messageid: 'a' } }, 'body/properties has an unknown key "messageid"'],
    [{ routingKey: 'k' }, 'body needs "exchange"'],
    [{ exchange: 'x', bodyEncoding: 'hex' }, 'body/bodyEncoding must be one of "utf8", "base64", "json"'],
    ['just a string', 'body must be object or array'],
  ]
  for (const [body, message] of cases) {
    const res = await fetch(`${s.api}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    t.equal(res.status, 400)
    t.same(await res.json(), { error: { code: 'INVALID_REQUEST', message } }, message)
  }
})

t.test('gauges documented with "0: none" have a sample from the start, before any connection', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: [NOWHERE] }, log: { level: 'silent' } })
  const text = await (await fetch(`${s.ops}/metrics`)).text()
  for (const connection of ['publish', 'consume']) {
    for (const name of ['amqp_sidecar_upstream_idle_timeout_detected_seconds', 'amqp_sidecar_upstream_connected', 'amqp_sidecar_upstream_blocked']) {
      t.match(text, `\n${name}{connection="${connection}"} 0\n`, `${name}{connection="${connection}"} 0`)
    }
  }
})

t.test('the docs/api.md status sample shows every field /v1/status has', async (t) => {
  const s = await startSidecar(t, { log: { level: 'silent' } })
  const status = (await (await fetch(`${s.api}/v1/status`)).json()) as Record<string, unknown>
  const doc = readFileSync(join(ROOT, 'docs', 'api.md'), 'utf8')
  const sampleText = /`GET \/v1\/status`[^\n]*\n\n```json\n([\s\S]*?)```/.exec(doc)?.[1]
  if (!sampleText) throw new Error('no status sample in docs/api.md')
  const sample = JSON.parse(sampleText) as Record<string, unknown>
  const keys = (o: unknown) => Object.keys(o as object).sort()
  t.same(keys(sample), keys(status), 'top-level fields')
  for (const part of ['sidecar', 'upstream', 'consumeUpstream', 'buffer', 'consumers']) {
    t.same(keys(sample[part]), keys(status[part]), `${part} fields`)
  }
})

t.test('docs/consuming.md: the WebSocket snippet handles errors', async (t) => {
  const doc = readFileSync(join(ROOT, 'docs', 'consuming.md'), 'utf8')
  const snippet = /```js\n([\s\S]*?new WebSocket[\s\S]*?)```/.exec(doc)?.[1] ?? ''
  t.match(snippet, /ws\.on\('error', /, 'an error listener (a ws without one throws on a refused connection)')
})

t.test('logs say that the topology was declared and that the connections closed', async (t) => {
  const queue = `newcomer.${randomBytes(4).toString('hex')}`
  const s = await startSidecar(t, { topology: { queues: [{ name: queue, durable: false, arguments: { 'x-expires': 60_000 } }] }, log: { level: 'info' } })
  await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'readiness' })
  const parsed = () => s.logs.map((l) => JSON.parse(l) as { msg: string; connection?: string; queues?: number })
  t.same(
    parsed().filter((l) => l.msg === 'topology declared').map((l) => [l.connection, l.queues]).sort(),
    [['consume', 1], ['publish', 1]],
    'topology declared, on each connection',
  )
  await s.stop()
  t.same(parsed().filter((l) => l.msg === 'AMQP connection closed').map((l) => l.connection).sort(), ['consume', 'publish'], 'both connections closed cleanly')
})
