/**
 * The Dockerfile, linted offline (there is no Docker engine here):
 * dockerfile-utils (the validator behind the Docker language server / VS Code)
 * for syntax and instruction errors, then our own rules on the parsed file
 * (dockerfile-ast): pinned multi-stage build, production dependencies only,
 * non-root user, node as the process, a HEALTHCHECK that runs a node script.
 * The health check script itself is run against a real ops listener.
 */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { DockerfileParser, type Instruction } from 'dockerfile-ast'
import { validate, ValidationSeverity } from 'dockerfile-utils'
import t from 'tap'
import { startSidecar } from './fixtures/sidecar.js'
import { freePort } from './fixtures/wait.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const text = readFileSync(`${root}/Dockerfile`, 'utf8')
const dockerfile = DockerfileParser.parse(text)
const stages = dockerfile.getFROMs()
const final = dockerfile.getContainingImage(stages[stages.length - 1]!.getRange().start)!
const runtime = dockerfile.getInstructions().filter((i) => i.getRange().start.line >= stages[stages.length - 1]!.getRange().start.line)
const args = (i: Instruction) => i.getArguments().map((a) => a.getValue())
/** The stage a COPY takes from (--from=...), or null for the build context. */
const copyFrom = (i: Instruction) => (i as unknown as { getFromFlag(): { getValue(): string | null } | null }).getFromFlag()?.getValue() ?? null
const json = (i: Instruction) => (i as unknown as { getJSONStrings(): { getJSONValue(): string }[] }).getJSONStrings().map((s) => s.getJSONValue())
const image = (() => {
  const arg = dockerfile.getInitialARGs().find((a) => a.getProperty()?.getName() === 'NODE_IMAGE')
  return arg?.getProperty()?.getValue() ?? ''
})()

t.test('dockerfile-utils finds no problem, with every check set to error', async (t) => {
  const all = ValidationSeverity.ERROR
  const problems = validate(text, {
    deprecatedMaintainer: all,
    directiveCasing: all,
    emptyContinuationLine: all,
    instructionCasing: all,
    instructionCmdMultiple: all,
    instructionEntrypointMultiple: all,
    instructionHealthcheckMultiple: all,
    instructionJSONInSingleQuotes: all,
    instructionWorkdirRelative: all,
  })
  t.same(problems.map((p) => `line ${p.range.start.line + 1}: ${p.message}`), [])
  // The linter is live: a broken file is reported.
  t.ok(validate('FROM node:24\nRUNN echo\nCMD node x\nCMD node y\n', { instructionCmdMultiple: all }).length >= 2, 'a broken Dockerfile is flagged')
})

t.test('multi-stage build on a pinned Node LTS slim image', async (t) => {
  t.ok(stages.length >= 2, 'at least a build and a runtime stage')
  t.match(image, /^node:(22|24)\.\d+\.\d+-(bookworm|trixie)-slim(@sha256:[0-9a-f]{64})?$/, `exact LTS version tag (${image})`)
  for (const from of stages) {
    t.equal(from.getImage(), '${NODE_IMAGE}', `stage ${from.getBuildStage()} uses the one pinned image`)
    t.ok(from.getBuildStage(), 'every stage is named')
  }
  const scriptVersionSource = readFileSync(`${root}/scripts/test-node-image.sh`, 'utf8')
  t.match(scriptVersionSource, /ARG NODE_IMAGE=node:/, 'the CI leg reads its Node version from this Dockerfile')
})

t.test('dependencies: npm ci to build, npm ci --omit=dev to run', async (t) => {
  const runs = dockerfile.getInstructions().filter((i) => i.getKeyword() === 'RUN').map((i) => i.getArgumentsContent() ?? '')
  t.notOk(runs.some((r) => /\bnpm (install|i)\b/.test(r)), 'never npm install (not reproducible)')
  t.ok(runs.some((r) => /\bnpm ci\b(?!.*--omit=dev)/.test(r)), 'the build stage installs everything with npm ci')
  const runtimeRuns = runtime.filter((i) => i.getKeyword() === 'RUN').map((i) => i.getArgumentsContent() ?? '')
  t.ok(runtimeRuns.some((r) => /\bnpm ci\b.*--omit=dev/.test(r)), 'the runtime stage installs production dependencies only')
  t.ok(runtime.some((i) => i.getKeyword() === 'COPY' && copyFrom(i) === 'build' && args(i).includes('/app/dist')), 'dist comes from the build stage')
  t.notOk(runtime.some((i) => i.getKeyword() === 'COPY' && args(i).includes('src')), 'no TypeScript sources in the runtime image')
})

t.test('runs as a non-root user, node as the process, exec form', async (t) => {
  const users = runtime.filter((i) => i.getKeyword() === 'USER')
  t.ok(users.length > 0, 'USER is set in the runtime stage')
  const user = args(users[users.length - 1]!)[0] ?? ''
  t.notMatch(user, /^(root|0)(:|$)/, 'not root')
  t.match(user, /^\d+(:\d+)?$/, 'numeric, so Kubernetes runAsNonRoot can verify it')
  const entrypoints = final.getENTRYPOINTs()
  const cmds = final.getCMDs()
  const command = [...(entrypoints.length ? json(entrypoints[entrypoints.length - 1]!) : []), ...(cmds.length ? json(cmds[cmds.length - 1]!) : [])]
  t.same(command.slice(0, 2), ['node', 'dist/main.js'], 'the process is node dist/main.js (exec form, no shell)')
  t.notOk(command.includes('npm'), 'never npm (it swallows SIGTERM)')
  for (const i of [...entrypoints, ...cmds]) t.match(i.getArgumentsContent() ?? '', /^\[/, `${i.getKeyword()} is in exec form`)
})

t.test('a HEALTHCHECK runs a node script that the image contains', async (t) => {
  const checks = final.getHEALTHCHECKs()
  t.equal(checks.length, 1)
  const content = checks[0]!.getArgumentsContent() ?? ''
  t.match(content, /CMD \["node", "scripts\/healthcheck\.mjs"\]/)
  t.ok(runtime.some((i) => i.getKeyword() === 'COPY' && args(i).includes('scripts/healthcheck.mjs')), 'the script is copied')
  t.ok(existsSync(`${root}/scripts/healthcheck.mjs`))
})

t.test('.dockerignore keeps the context to what the Dockerfile copies', async (t) => {
  const ignore = readFileSync(`${root}/.dockerignore`, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))
  t.equal(ignore[0], '*', 'everything is excluded by default')
  const allowed = ignore.filter((l) => l.startsWith('!')).map((l) => l.slice(1).replace(/\/$/, ''))
  const sources = dockerfile
    .getInstructions()
    .filter((i) => i.getKeyword() === 'COPY' && copyFrom(i) === null)
    .flatMap((i) => args(i).slice(0, -1))
  for (const src of sources) t.ok(allowed.includes(src.replace(/\/$/, '')), `${src} is in the build context`)
  for (const a of ['node_modules', 'dist', '.git', 'test']) t.notOk(allowed.includes(a), `${a} stays out of the context`)
})

function runHealthcheck(port: number): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`${root}/scripts/healthcheck.mjs`], { env: { ...process.env, AMQP_SIDECAR_OPS_PORT: String(port) }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', reject)
    child.on('exit', (code) => resolve({ code, stderr }))
  })
}

t.test('scripts/healthcheck.mjs: 0 when /livez answers, 1 when nothing listens', async (t) => {
  // /livez never depends on the broker, so an unreachable one is fine here.
  const s = await startSidecar(t, { amqp: { urls: ['amqp://guest:guest@127.0.0.1:1/%2F'] }, log: { level: 'silent' } })
  const ok = await runHealthcheck(Number(new URL(s.ops).port))
  t.equal(ok.code, 0, ok.stderr)
  const down = await runHealthcheck(await freePort())
  t.equal(down.code, 1)
  t.match(down.stderr, /healthcheck:/)
})
