/**
 * The CLI as operators run it: `node dist/main.js` as a real child process.
 * --help, --version, check-config (valid, masked, unknown keys, bad values,
 * unknown options), and a real run: listens, answers /livez, drains and exits
 * 0 on SIGTERM, exits at once on a second signal.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { ensureBuilt, ROOT } from './fixtures/dist.js'
import { waitForEvent } from './fixtures/wait.js'

const MAIN = ensureBuilt()
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
/** Connection refused at once: these tests need the process, not a broker. */
const NOWHERE = 'amqp://guest:guest@127.0.0.1:1/%2F'

/** The parent's environment minus anything that would configure the child. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AMQP_')) env[k] = v
  return { ...env, ...extra }
}

interface Result {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

function start(t: Test, args: string[], env = cleanEnv()): ChildProcess {
  const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return child
}

async function run(t: Test, args: string[], env?: NodeJS.ProcessEnv): Promise<Result> {
  const child = start(t, args, env)
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
  const [code, signal] = await waitForEvent<[number | null, NodeJS.Signals | null]>(child, 'close', { timeoutMs: 20_000, what: `amqp-sidecar ${args.join(' ')}` })
  return { code, signal, stdout, stderr }
}

function tempConfig(t: Test, config: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), 'cli-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'config.json')
  writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config))
  return file
}

t.test('--help and -h print usage and exit 0', async (t) => {
  for (const flag of ['--help', '-h']) {
    const r = await run(t, [flag])
    t.equal(r.code, 0)
    t.match(r.stdout, /Usage:/)
    t.match(r.stdout, /check-config/)
    t.match(r.stdout, /--config <file>/)
  }
})

t.test('--version prints the package version', async (t) => {
  const r = await run(t, ['--version'])
  t.equal(r.code, 0)
  t.equal(r.stdout, `${VERSION}\n`)
})

t.test('check-config prints the effective config with secrets masked', async (t) => {
  const file = tempConfig(t, { amqp: { urls: ['amqp://app:s3cret-pass@broker.example:5672/%2F'] }, api: { port: 9000 } })
  const r = await run(t, ['check-config', '--config', file, '--ops.port', '9001'], cleanEnv({ AMQP_SIDECAR_LOG_LEVEL: 'warn' }))
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout + r.stderr, /s3cret-pass/, 'the password never appears')
  const effective = JSON.parse(r.stdout) as { amqp: { urls: unknown }; api: { port: number }; ops: { port: number }; log: { level: string } }
  t.same(effective.amqp.urls, ['amqp://app:***@broker.example:5672/%2F'], 'amqp.urls shown as user:***@host, like /v1/status')
  t.equal(effective.api.port, 9000, 'from the file')
  t.equal(effective.ops.port, 9001, 'from the flag')
  t.equal(effective.log.level, 'warn', 'from the environment')
  t.match(r.stderr, /configuration OK/)
  t.match(r.stderr, file)
})

t.test('check-config masks a URL given in AMQP_URL', async (t) => {
  const r = await run(t, ['check-config', '--config', tempConfig(t, {})], cleanEnv({ AMQP_URL: 'amqp://u:env-s3cret@h:5672/%2F' }))
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout, /env-s3cret/)
})

t.test('check-config refuses unknown keys and bad values with a clear message', async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ['unknown top-level key', { amqp: {}, nope: 1 }, /nope/],
    ['unknown nested key', { api: { prot: 8672 } }, /api\.prot/],
    ['bad port', { ops: { port: 99999 } }, /ops\.port/],
    ['bad log level', { log: { level: 'loud' } }, /log\.level/],
    ['bad broker URL', { amqp: { urls: ['http://not-amqp'] } }, /amqp\.urls/],
    ['unknown topology key', { topology: { queues: [{ name: 'q', durabel: true }] } }, /durabel/],
    ['invalid JSON', '{ "amqp": ', /invalid configuration/],
  ]
  for (const [name, config, message] of cases) {
    const r = await run(t, ['check-config', '--config', tempConfig(t, config)])
    t.equal(r.code, 2, `${name}: exit code 2`)
    t.match(r.stderr, /^amqp-sidecar: /, `${name}: says who is talking`)
    t.match(r.stderr, message, `${name}: names the problem`)
    t.equal(r.stdout, '', `${name}: prints no config`)
  }
})

t.test('a missing config file, an unknown option or command exits 2', async (t) => {
  const missing = await run(t, ['check-config', '--config', join(tmpdir(), 'no-such-dir-amqp-sidecar', 'x.json')])
  t.equal(missing.code, 2)
  t.match(missing.stderr, /config file not found/)
  const option = await run(t, ['--api.prot', '0'])
  t.equal(option.code, 2)
  t.match(option.stderr, /unknown option --api\.prot/)
  const command = await run(t, ['chek-config'])
  t.equal(command.code, 2)
  t.match(command.stderr, /unexpected argument "chek-config"/)
  const url = await run(t, ['check-config', '--amqp.urls', 'amqp://u:p@h/'])
  t.equal(url.code, 2, 'broker URLs are refused on the command line')
  t.notMatch(url.stderr, /u:p@h/, 'and not echoed')
})

/** Reads the child's JSON log lines until one has `msg`. */
async function logLine(child: ChildProcess, msg: string, lines: string[]): Promise<Record<string, unknown>> {
  const rl = createInterface({ input: child.stdout! })
  try {
    for await (const line of rl) {
      lines.push(line)
      const parsed = JSON.parse(line) as Record<string, unknown>
      if (parsed.msg === msg) return parsed
    }
  } finally {
    rl.close()
  }
  throw new Error(`the process ended before logging "${msg}": ${lines.join('\n')}`)
}

t.test('--config runs the sidecar; SIGTERM drains and exits 0', async (t) => {
  const file = tempConfig(t, { amqp: { urls: [NOWHERE] }, api: { port: 0 }, ops: { host: '127.0.0.1', port: 0 }, shutdown: { drainMs: 0 } })
  const child = start(t, ['--config', file])
  const lines: string[] = []
  const listening = (await logLine(child, 'amqp-sidecar listening', lines)) as { ops: { port: number }; api: { port: number } }
  const live = await fetch(`http://127.0.0.1:${listening.ops.port}/livez`)
  t.equal(live.status, 200, '/livez: the process is alive')
  const ready = await fetch(`http://127.0.0.1:${listening.ops.port}/readyz`)
  t.equal(ready.status, 503, '/readyz: not ready without a broker')
  const exited = waitForEvent<[number | null]>(child, 'exit', { timeoutMs: 20_000, what: 'exit after SIGTERM' })
  const rest = (async () => {
    for await (const line of createInterface({ input: child.stdout! })) lines.push(line)
  })()
  child.kill('SIGTERM')
  const [code] = await exited
  await rest
  t.equal(code, 0)
  t.ok(lines.some((l) => l.includes('"amqp-sidecar stopped"')), 'logs a clean stop')
})

t.test('a second signal during the drain exits at once', async (t) => {
  const file = tempConfig(t, { amqp: { urls: [NOWHERE] }, api: { port: 0 }, ops: { host: '127.0.0.1', port: 0 }, shutdown: { drainMs: 60_000 } })
  const child = start(t, ['--config', file])
  const lines: string[] = []
  await logLine(child, 'amqp-sidecar listening', lines)
  const draining = logLine(child, 'shutting down: readiness is 503, still serving publishes during the drain (signal again to exit now)', lines)
  child.kill('SIGTERM')
  await draining
  child.stdout?.resume()
  const startedAt = Date.now()
  const exited = waitForEvent<[number | null]>(child, 'exit', { timeoutMs: 10_000, what: 'exit after the second signal' })
  child.kill('SIGTERM')
  const [code] = await exited
  t.ok(Date.now() - startedAt < 10_000, 'well before the 60 s drain ends')
  t.not(code, 0, 'an interrupted drain is not a clean exit')
})
