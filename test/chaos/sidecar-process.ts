/**
 * The sidecar under test as a separate process (`node dist/main.js`), so the
 * checker's own load never shares an event loop with it (and on a 2-core box
 * the two can use both cores). No tap dependency: the CLI uses this too.
 * The child leads its own process group, tracked by fixtures/children.ts, so
 * it dies with us however we end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { trackProcessGroup } from '../fixtures/children.js'
import { GiveUpError, waitFor } from '../fixtures/wait.js'

const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 30_000

/** The repository root: the nearest directory up with amqp-sidecar's package.json (works from test/ and dist-chaos/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const pkg = join(dir, 'package.json')
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'amqp-sidecar') return dir
    const up = dirname(dir)
    if (up === dir) throw new Error('cannot find the amqp-sidecar repository root')
    dir = up
  }
}

/** dist/main.js, built first if missing (npm test and npm run chaos build it anyway). */
export function sidecarMain(): string {
  const root = repoRoot()
  const main = join(root, 'dist', 'main.js')
  if (!existsSync(main)) {
    const r = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' })
    if (r.status !== 0) throw new Error('building dist/ failed')
  }
  return main
}

export interface SidecarProcess {
  readonly pid: number
  /** http://127.0.0.1:<port> */
  readonly api: string
  readonly ops: string
  readonly logFile: string
  /** Log lines (parsed JSON) whose level is warn or above, so far. */
  readonly warnings: Array<Record<string, unknown>>
  /** SIGTERM (drain, clean AMQP close), SIGKILL after a deadline; resolves with how it exited. */
  stop(): Promise<string>
  /** SIGKILL at once (a crash); resolves when it is gone. */
  kill(): Promise<string>
}

export async function startSidecarProcess(dir: string, config: Record<string, unknown>): Promise<SidecarProcess> {
  const file = join(dir, 'sidecar.json')
  const logFile = join(dir, 'sidecar.log')
  // The checker watches both connections from the start: open the consume one at start, not at the first subscription.
  const consume = { connection: 'always', ...(config['consume'] as Record<string, unknown> | undefined) }
  writeFileSync(file, JSON.stringify({ api: { port: 0 }, ops: { host: '127.0.0.1', port: 0 }, ...config, consume }, null, 2))
  // A restart (--spool's sidecar-kill) appends to the same log.
  if (!existsSync(logFile)) writeFileSync(logFile, '')
  const child: ChildProcess = spawn(process.execPath, [sidecarMain(), '--config', file], {
    env: { PATH: process.env.PATH },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const untrack = trackProcessGroup(child)
  let exitStatus: string | undefined
  const exited = new Promise<string>((resolve) =>
    child.once('exit', (code, signal) => {
      exitStatus = signal ?? `exit code ${code}`
      untrack()
      resolve(exitStatus)
    }),
  )
  const warnings: Array<Record<string, unknown>> = []
  let listening: { api: { port: number }; ops: { port: number } } | undefined
  let partial = ''
  child.stdout?.on('data', (d: Buffer) => {
    const text = d.toString()
    appendFileSync(logFile, text)
    partial += text
    const parts = partial.split('\n')
    partial = parts.pop() ?? ''
    for (const p of parts) {
      let line: Record<string, unknown>
      try {
        line = JSON.parse(p) as Record<string, unknown>
      } catch {
        continue
      }
      if (line['msg'] === 'amqp-sidecar listening') listening = line as unknown as typeof listening
      if (typeof line['level'] === 'number' && line['level'] >= 40 && warnings.length < 100_000) warnings.push(line)
    }
  })
  child.stderr?.on('data', (d: Buffer) => appendFileSync(logFile, d.toString()))

  let stopping: Promise<string> | undefined
  const stop = (): Promise<string> => {
    stopping ??= (async () => {
      if (exitStatus !== undefined) return exitStatus
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
      const how = await exited
      clearTimeout(timer)
      return how
    })()
    return stopping
  }
  const kill = async (): Promise<string> => {
    if (exitStatus === undefined) child.kill('SIGKILL')
    return exited
  }
  try {
    const l = await waitFor(
      () => {
        if (exitStatus !== undefined) throw new GiveUpError(`the sidecar exited at start (${exitStatus}); log: ${readFileSync(logFile, 'utf8').slice(-2000)}`)
        return listening
      },
      { timeoutMs: START_TIMEOUT_MS, what: 'the sidecar process to listen' },
    )
    return { pid: child.pid as number, api: `http://127.0.0.1:${l.api.port}`, ops: `http://127.0.0.1:${l.ops.port}`, logFile, warnings, stop, kill }
  } catch (err) {
    await stop()
    throw err
  }
}
