/**
 * Every example in examples/ runs against a live sidecar (startSidecar, the
 * shared broker) with its own exchange and queue declared through topology
 * overrides, and must finish with exit 0: published, pulled (or received over
 * the WebSocket) and acked. Interpreters that are not installed skip their
 * example with the reason; CI installs php-cli for the PHP one.
 */
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const EXAMPLES = fileURLToPath(new URL('../examples/', import.meta.url))
const RUN_TIMEOUT_MS = 60_000

interface Example {
  name: string
  command: string
  args: string[]
  /** Use an API token (api.tokenFile) for this one. */
  token: boolean
  /** Programs that must be on PATH besides the command. */
  needs?: string[]
}

const examples: Example[] = [
  { name: 'python (urllib, publish/pull/ack)', command: 'python3', args: [join(EXAMPLES, 'python/legacy_app.py')], token: true },
  { name: 'shell (curl, publish/pull/ack)', command: 'sh', args: [join(EXAMPLES, 'shell/publish-pull-ack.sh')], token: true, needs: ['curl'] },
  { name: 'node (fetch + WebSocket)', command: process.execPath, args: [join(EXAMPLES, 'node/app.mjs')], token: true },
  { name: 'php (streams, publish/pull/ack)', command: 'php', args: [join(EXAMPLES, 'php/legacy_app.php')], token: false },
]

function installed(command: string): boolean {
  return spawnSync('/bin/sh', ['-c', 'command -v "$1"', 'sh', command], { stdio: 'ignore' }).status === 0
}

async function runExample(t: Test, ex: Example, env: NodeJS.ProcessEnv) {
  const child = spawn(ex.command, ex.args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const [code] = await waitForEvent<[number | null]>(child, 'close', { timeoutMs: RUN_TIMEOUT_MS, what: `example ${ex.name}` })
  return { code, stdout, stderr }
}

for (const ex of examples) {
  t.test(ex.name, async (t) => {
    const missing = [ex.command, ...(ex.needs ?? [])].find((c) => !installed(c))
    if (missing !== undefined) return t.plan(0, `${missing} is not installed here`)
    const id = `examples.${randomBytes(4).toString('hex')}`
    const exchange = `${id}.x`
    const queue = `${id}.q`
    const routingKey = 'order.created'
    const overrides: Record<string, unknown> = {
      topology: {
        exchanges: [{ name: exchange, type: 'topic', durable: false, autoDelete: true }],
        // x-expires: the shared broker forgets the queue a minute after the test.
        queues: [{ name: queue, durable: false, arguments: { 'x-expires': 60_000 } }],
        bindings: [{ exchange, queue, routingKey }],
      },
      log: { level: 'warn' },
    }
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, LANG: 'C.UTF-8' }
    if (ex.token) {
      const dir = mkdtempSync(join(tmpdir(), 'examples-'))
      t.teardown(() => rmSync(dir, { recursive: true, force: true }))
      const tokenFile = join(dir, 'token')
      writeFileSync(tokenFile, `${randomBytes(24).toString('hex')}\n`)
      overrides.api = { tokenFile }
      env.SIDECAR_TOKEN_FILE = tokenFile
    }
    const s = await startSidecar(t, overrides)
    await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'the sidecar to be ready (broker connected, topology declared)' })
    const probe = await fetch(`${s.api}/v1/queues/${queue}/pull?max=1&waitMs=0`, { method: 'POST', headers: ex.token ? { authorization: `Bearer ${'x'.repeat(48)}` } : {} })
    if (probe.status === 404 && ((await probe.json()) as { error?: { code?: string } }).error?.code === 'NOT_FOUND') {
      return t.plan(0, 'POST /v1/queues/{queue}/pull is not merged yet')
    }

    const r = await runExample(t, ex, { ...env, SIDECAR_URL: s.api, EXCHANGE: exchange, ROUTING_KEY: routingKey, QUEUE: queue, COUNT: '3', DEADLINE_S: '30', DEADLINE_MS: '30000' })
    t.equal(r.code, 0, `${ex.name} exits 0`, { stdout: r.stdout, stderr: r.stderr })
    if (ex.command === 'sh') {
      t.match(r.stdout, /published: \{"messageId"/)
      t.match(r.stdout, /"result":"acked"/)
    } else {
      const last = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { step?: string; ok?: boolean }
      t.same({ step: last.step, ok: last.ok }, { step: 'done', ok: true }, 'everything published was acked')
    }
    t.notOk(r.stdout.includes('"result":"stale"'), 'no stale acks on a healthy link')
  })
}
