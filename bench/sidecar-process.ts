/**
 * The sidecar under test as a child process (`node dist/main.js`), the way it
 * runs in production, so its RSS and CPU are measured apart from the load
 * generator. It gets free ports (port 0) and announces them in its log.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { trackProcessGroup } from '../test/fixtures/children.js'

/** How the child is started: node arguments before the entry point, and the entry point. */
export interface SidecarCommand {
  nodeArgs: string[]
  entry: string
}

export interface SidecarProcess {
  readonly pid: number
  /** http://127.0.0.1:<port> */
  readonly api: string
  readonly ops: string
  /** SIGTERM, then SIGKILL after a deadline. Idempotent. */
  stop(): Promise<void>
}

const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 15_000
const READY_POLL_MS = 50

export async function startSidecarProcess(cmd: SidecarCommand, brokerUrl: string, extraArgs: string[] = []): Promise<SidecarProcess> {
  const args = [
    ...cmd.nodeArgs,
    cmd.entry,
    '--api.port', '0',
    '--ops.host', '127.0.0.1',
    '--ops.port', '0',
    '--shutdown.drainMs', '0',
    '--log.level', 'info',
    ...extraArgs,
  ]
  const env: NodeJS.ProcessEnv = {}
  // The parent's AMQP_SIDECAR_* settings must not change what is measured.
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AMQP_SIDECAR_') && k !== 'AMQP_URL') env[k] = v
  env['AMQP_URL'] = brokerUrl
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env })
  const untrack = trackProcessGroup(child)
  const exited = new Promise<void>((resolve) => child.once('exit', () => (untrack(), resolve())))
  const stderr: string[] = []
  child.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()))
  let stopping: Promise<void> | undefined
  const stop = () =>
    (stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      let timer: NodeJS.Timeout | undefined
      const late = await Promise.race([exited.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), STOP_TIMEOUT_MS)))])
      clearTimeout(timer)
      if (late) {
        child.kill('SIGKILL')
        await exited
      }
    })())
  try {
    const ports = await listeningPorts(child, exited, stderr)
    const api = `http://127.0.0.1:${ports.api}`
    const ops = `http://127.0.0.1:${ports.ops}`
    await waitReady(ops)
    return { pid: child.pid as number, api, ops, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/** Reads the child's JSON log until the "listening" line names both ports. */
function listeningPorts(child: ChildProcess, exited: Promise<void>, stderr: string[]): Promise<{ api: number; ops: number }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the sidecar did not start within ${START_TIMEOUT_MS} ms\n${stderr.join('')}`)), START_TIMEOUT_MS)
    void exited.then(() => {
      clearTimeout(timer)
      reject(new Error(`the sidecar exited while starting (${child.exitCode ?? child.signalCode})\n${stderr.join('')}`))
    })
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
    lines.on('line', (line) => {
      let rec: { msg?: string; api?: { port?: number }; ops?: { port?: number } }
      try {
        rec = JSON.parse(line) as typeof rec
      } catch {
        return
      }
      if (rec.msg === 'amqp-sidecar listening' && rec.api?.port && rec.ops?.port) {
        clearTimeout(timer)
        resolve({ api: rec.api.port, ops: rec.ops.port })
      }
    })
  })
}

async function waitReady(ops: string): Promise<void> {
  const until = Date.now() + START_TIMEOUT_MS
  let last = ''
  while (Date.now() < until) {
    try {
      const res = await fetch(`${ops}/readyz`)
      last = await res.text()
      if (res.ok) return
    } catch (err) {
      last = (err as Error).message
    }
    await new Promise((r) => setTimeout(r, READY_POLL_MS))
  }
  throw new Error(`the sidecar did not become ready: ${last}`)
}
