/**
 * A newcomer's first run, exactly as the README and docs/ write it, on a fresh
 * broker (a private node: nothing declared yet). The sidecar is the production
 * command with the shipped config/default.json (`node dist/main.js`, what
 * `npm start` runs); only the broker URL and the ports differ (AMQP_URL and
 * port 0, so parallel runs cannot clash): the test rewrites 127.0.0.1:8672 and
 * :8673 in each command to the ports it got. Every shell command of the README
 * and docs/api.md runs in order through /bin/sh; a command must exit 0, print
 * no error body, and print what the doc says it prints.
 */
import { spawn, spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t from 'tap'
import { brokerFor } from './fixtures/broker.js'
import { ensureBuilt, ROOT } from './fixtures/dist.js'
import { waitFor, waitForEvent } from './fixtures/wait.js'

const MAIN = ensureBuilt()

interface DocCommand {
  doc: string
  line: number
  command: string
  /** Text the doc shows as this command's output (a `# {...}` comment after it, or lines without `$ `). */
  expect: string[]
}

/**
 * The runnable commands of a doc's ```sh blocks (and the `$ `-prompted lines of
 * untagged blocks): comments dropped, continuation lines joined.
 */
function commandsOf(doc: string, filter: (cmd: string) => boolean): DocCommand[] {
  const text = readFileSync(join(ROOT, doc), 'utf8')
  const out: DocCommand[] = []
  for (const m of text.matchAll(/```(\w*)\n([\s\S]*?)```/g)) {
    const lang = m[1] ?? ''
    const body = m[2] ?? ''
    const firstLine = text.slice(0, m.index).split('\n').length + 1
    if (lang !== 'sh' && lang !== '') continue
    const prompted = lang === '' && /^\$ /m.test(body)
    if (lang === '' && !prompted) continue
    const lines = body.split('\n')
    for (let i = 0; i < lines.length; i++) {
      let line = lines[i] as string
      if (prompted && !line.startsWith('$ ')) {
        const last = out.at(-1)
        if (last && last.doc === doc && line.trim().startsWith('{')) last.expect.push(line.trim())
        continue
      }
      if (prompted) line = line.slice(2)
      if (line.trim().startsWith('# {')) {
        out.at(-1)?.expect.push(line.trim().slice(2))
        continue
      }
      if (!line.trim() || line.trim().startsWith('#')) continue
      const start = i
      let command = line
      while (command.endsWith('\\') && i + 1 < lines.length) command = `${command}\n${lines[++i] as string}`
      // A multi-line quoted argument (the batch envelope) continues on the next line.
      while ((command.split("'").length - 1) % 2 === 1 && i + 1 < lines.length) command = `${command}\n${lines[++i] as string}`
      command = command.replace(/\s+#[^'"\n]*$/, '')
      if (filter(command)) out.push({ doc, line: firstLine + start, command, expect: [] })
    }
  }
  return out
}

const isCurl = (c: string) => c.trimStart().startsWith('curl ')

t.test('every command of the README and docs/api.md works on a fresh broker, as written', async (t) => {
  const broker = await brokerFor(t)
  // The production command with the shipped default config; only URL and ports differ.
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, LANG: 'C.UTF-8' }
  Object.assign(env, { AMQP_URL: broker.url, AMQP_SIDECAR_API_PORT: '0', AMQP_SIDECAR_OPS_PORT: '0', AMQP_SIDECAR_OPS_HOST: '127.0.0.1' })
  const child = spawn(process.execPath, [MAIN], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')))
  const logs: string[] = []
  let listening: { api: { port: number }; ops: { port: number } } | undefined
  const lines = createInterface({ input: child.stdout })
  const listened = new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      logs.push(line)
      if (!listening && line.includes('"amqp-sidecar listening"')) {
        listening = JSON.parse(line) as typeof listening
        resolve()
      }
    })
    child.once('exit', () => reject(new Error(`the sidecar exited: ${logs.join('\n')}`)))
  })
  await listened
  const api = `127.0.0.1:${listening!.api.port}`
  const ops = `127.0.0.1:${listening!.ops.port}`
  await waitFor(async () => (await fetch(`http://${ops}/readyz`)).status === 200, { timeoutMs: 60_000, what: 'readiness on a fresh broker' })

  const commands = [...commandsOf('README.md', isCurl), ...commandsOf('docs/api.md', isCurl)]
  t.ok(commands.length >= 9, `${commands.length} commands found`)
  let deliveryId: string | undefined
  for (const c of commands) {
    let command = c.command.replaceAll('127.0.0.1:8672', api).replaceAll('127.0.0.1:8673', ops)
    if (command.includes('<deliveryId>')) {
      t.ok(deliveryId, `${c.doc}:${c.line}: an earlier command pulled a delivery to ack`)
      command = command.replace('<deliveryId>', deliveryId ?? 'none')
    }
    const r = spawnSync('/bin/sh', ['-c', `set -e; ${command}`], { encoding: 'utf8', timeout: 60_000 })
    const where = `${c.doc}:${c.line}: ${c.command.split('\n')[0]}`
    t.equal(r.status, 0, `${where} exits 0 ${r.stderr}`)
    t.notMatch(r.stdout, /"error":\s*\{/, `${where} answers no error: ${r.stdout.slice(0, 300)}`)
    t.notMatch(r.stdout, /^HTTP\/1\.1 [45]\d\d/m, `${where} answers no 4xx/5xx`)
    for (const e of c.expect) t.match(r.stdout, e, `${where} prints ${e}`)
    const id = /"deliveryId":"([^"]+)"/.exec(r.stdout)?.[1]
    if (id) deliveryId = id
  }
  t.ok(deliveryId, 'the pull command returned a message')

  // The 202 (X-Ack: accepted) was confirmed in the background, not dropped.
  const metrics = await (await fetch(`http://${ops}/metrics`)).text()
  t.notMatch(metrics, /amqp_sidecar_accepted_dropped_total\{[^}]*\} [1-9]/, 'no accepted message was dropped')
  const exited = waitForEvent<[number | null]>(child, 'exit', { timeoutMs: 60_000, what: 'the sidecar to exit after SIGTERM' })
  child.kill('SIGTERM')
  const [code] = await exited
  t.equal(code, 0)
})
