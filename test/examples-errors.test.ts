/**
 * Every example in examples/ fails loudly when the sidecar answers an error: it
 * exits non-zero within its deadline and prints the sidecar's error code. The
 * broker has neither the exchange nor the queue the example is pointed at (names
 * made up for this run), as on a fresh broker before any topology is declared.
 */
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const EXAMPLES = fileURLToPath(new URL('../examples/', import.meta.url))
/** The examples' own deadline is 30 s; this one only catches a hang. */
const HANG_MS = 90_000

const examples = [
  { name: 'python', command: 'python3', args: [join(EXAMPLES, 'python/legacy_app.py')] },
  { name: 'shell', command: 'sh', args: [join(EXAMPLES, 'shell/publish-pull-ack.sh')] },
  { name: 'node', command: process.execPath, args: [join(EXAMPLES, 'node/app.mjs')] },
  { name: 'php', command: 'php', args: [join(EXAMPLES, 'php/legacy_app.php')] },
]

const installed = (command: string) => spawnSync('/bin/sh', ['-c', 'command -v "$1"', 'sh', command], { stdio: 'ignore' }).status === 0

for (const ex of examples) {
  t.test(`${ex.name}: an error answer exits non-zero and prints the error`, async (t) => {
    if (!installed(ex.command) || (ex.command === 'sh' && !installed('curl'))) return t.plan(0, `${ex.command} is not installed here`)
    const s = await startSidecar(t, { log: { level: 'warn' } })
    await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the sidecar to be ready' })
    const id = `missing.${randomBytes(4).toString('hex')}`
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      LANG: 'C.UTF-8',
      SIDECAR_URL: s.api,
      EXCHANGE: `${id}.x`,
      ROUTING_KEY: 'order.created',
      QUEUE: `${id}.q`,
      COUNT: '1',
      DEADLINE_S: '30',
      DEADLINE_MS: '30000',
    }
    const child = spawn(ex.command, ex.args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')))
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    const [code] = await waitForEvent<[number | null]>(child, 'close', { timeoutMs: HANG_MS, what: `the ${ex.name} example to exit (it must not hang on an error)` })
    t.not(code, 0, 'exits non-zero')
    t.match(out, /EXCHANGE_NOT_FOUND|QUEUE_NOT_FOUND/, 'prints the error code the sidecar answered')
  })
}
