/**
 * k8s/ validated offline (no cluster here, and kubectl --dry-run=client needs
 * one): every manifest against the Kubernetes JSON schemas shipped by the
 * kubernetes-models package, then the wiring between the manifests and the
 * sidecar: the ConfigMap's config passes the real loadConfig(), the probes hit
 * the ops routes on the configured ops port, the Secret is mounted where
 * amqp.urlFile and api.tokenFile point, the security context is locked down,
 * and the grace period fits the drain.
 *
 * The Kubernetes schemas accept unknown fields (the API server drops them, or
 * refuses them only with --validate=strict), so a misspelt key would pass.
 * The manifests are therefore also type-checked as object literals against
 * kubernetes-models' TypeScript types, where an unknown field is an error.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Deployment } from 'kubernetes-models/apps/v1'
import { ConfigMap, Secret } from 'kubernetes-models/v1'
import type { IContainer } from 'kubernetes-models/v1/Container'
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec'
import { Registry } from 'prom-client'
import t from 'tap'
import ts from 'typescript'
import { parseAllDocuments } from 'yaml'
import { loadConfig, type SidecarConfig } from '../src/config/index.js'
import { buildOpsServer } from '../src/http/ops.js'
import { createLogger } from '../src/observe/logger.js'
import { SecretRegistry } from '../src/observe/redact.js'

const dir = fileURLToPath(new URL('../k8s/', import.meta.url))
const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()

interface Manifest {
  file: string
  apiVersion: string
  kind: string
  metadata: { name: string }
  [key: string]: unknown
}

const manifests: Manifest[] = files.flatMap((file) =>
  parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`)
    return { ...(doc.toJS() as Omit<Manifest, 'file'>), file } as Manifest
  }),
)

/** The schema-validating model for each kind k8s/ may contain. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment as never,
  'v1/ConfigMap': ConfigMap as never,
  'v1/Secret': Secret as never,
}

/** The TypeScript type of each kind, for the strict (unknown-field) check. */
const TYPES: Record<string, { module: string; type: string }> = {
  'apps/v1/Deployment': { module: 'kubernetes-models/apps/v1/Deployment', type: 'IDeployment' },
  'v1/ConfigMap': { module: 'kubernetes-models/v1/ConfigMap', type: 'IConfigMap' },
  'v1/Secret': { module: 'kubernetes-models/v1/Secret', type: 'ISecret' },
}

/** Type errors of `value` as a literal of the kind's type: unknown fields, wrong types. */
function strictTypeErrors(items: { label: string; key: string; value: unknown }[]): string[] {
  // A virtual file next to the tests (never written), so node_modules resolves.
  const file = join(dirname(fileURLToPath(import.meta.url)), '__k8s_manifests__.ts')
  const lines = items.flatMap(({ label, key, value }, i) => {
    const t = TYPES[key]
    if (!t) return [`// ${label}: no type for ${key}`]
    return [`import type { ${t.type} as T${i} } from '${t.module}'`, `// ${label}`, `export const m${i}: T${i} = ${JSON.stringify(value)}`]
  })
  const source = lines.join('\n')
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  }
  const host = ts.createCompilerHost(options)
  const getSourceFile = host.getSourceFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  host.getSourceFile = (name, language, ...rest) => (name === file ? ts.createSourceFile(name, source, language) : getSourceFile(name, language, ...rest))
  host.fileExists = (name) => name === file || fileExists(name)
  const program = ts.createProgram([file], options, host)
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1
    const label = line >= 0 ? (source.split('\n')[line - 1] ?? '').replace(/^\/\/ /, '') : ''
    return `${label}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`
  })
}

const byKind = (kind: string) => manifests.filter((m) => m.kind === kind)
const configMap = byKind('ConfigMap')[0] as unknown as { metadata: { name: string }; data: Record<string, string> }
const secret = byKind('Secret')[0] as unknown as { metadata: { name: string }; stringData?: Record<string, string>; data?: Record<string, string> }
const deployments = byKind('Deployment') as unknown as (Manifest & { spec: { template: { spec: IPodSpec } } })[]

t.test('every manifest validates against the Kubernetes schemas', async (t) => {
  t.ok(files.length >= 5, `k8s/ has the manifests (${files.join(', ')})`)
  for (const m of manifests) {
    if (m.kind === 'Kustomization') continue
    const Model = MODELS[`${m.apiVersion}/${m.kind}`]
    if (!Model) {
      t.fail(`${m.file}: no schema for ${m.apiVersion} ${m.kind}`)
      continue
    }
    const { file: _file, ...data } = m
    t.doesNotThrow(() => new Model(data as never).validate(), `${m.file}: ${m.kind} ${m.metadata.name} is valid`)
  }
  // The validation is live: a wrong type is caught.
  t.throws(() => new Deployment({ metadata: { name: 'x' }, spec: { selector: {}, template: { spec: { containers: [{ name: 'x', ports: [{ containerPort: 'ops' as never }] }] } } } }).validate())
})

t.test('no manifest has an unknown or mistyped field (strict type check)', async (t) => {
  const items = manifests
    .filter((m) => m.kind !== 'Kustomization')
    .map(({ file, ...value }) => ({ label: `${file} ${value.kind} ${value.metadata.name}`, key: `${value.apiVersion}/${value.kind}`, value }))
  t.same(strictTypeErrors(items), [])
  // The check is live: a misspelt field is caught.
  const broken = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x', lables: {} }, data: {} }
  t.match(strictTypeErrors([{ label: 'broken', key: 'v1/ConfigMap', value: broken }]).join('\n'), /lables/)
})

t.test('kustomization lists every manifest and only existing files', async (t) => {
  const [k] = byKind('Kustomization') as unknown as { file: string; apiVersion: string; resources: string[]; images?: { name: string }[] }[]
  if (!k) throw new Error('no kustomization.yaml')
  t.equal(k.apiVersion, 'kustomize.config.k8s.io/v1beta1')
  t.same([...k.resources].sort(), files.filter((f) => f !== k.file).sort())
  const images = new Set(deployments.flatMap((d) => allContainers(d.spec.template.spec).map((c) => (c.image ?? '').split(':')[0])))
  for (const img of k.images ?? []) t.ok(images.has(img.name), `images: ${img.name} is used by a Deployment`)
})

function allContainers(spec: IPodSpec): IContainer[] {
  return [...(spec.initContainers ?? []), ...spec.containers]
}

function sidecarOf(spec: IPodSpec): { container: IContainer; native: boolean } {
  const native = spec.initContainers?.find((c) => c.name === 'amqp-sidecar')
  if (native) return { container: native, native: true }
  const classic = spec.containers.find((c) => c.name === 'amqp-sidecar')
  if (!classic) throw new Error('no amqp-sidecar container')
  return { container: classic, native: false }
}

/** Loads the ConfigMap's config.json through the real config loader. */
function loadConfigMapConfig(key: string): SidecarConfig {
  const text = configMap.data[key]
  if (text === undefined) throw new Error(`ConfigMap has no key ${key}`)
  const tmp = mkdtempSync(join(tmpdir(), 'k8s-config-'))
  try {
    const file = join(tmp, key)
    writeFileSync(file, text)
    return loadConfig({ file, env: {} }).config
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}

t.test('the ConfigMap config passes the real config validation', async (t) => {
  const config = loadConfigMapConfig('config.json')
  t.equal(config.ops.host, '0.0.0.0', 'ops binds all interfaces: kubelet probes the pod IP')
  t.equal(config.api.host, '127.0.0.1', 'the API stays on loopback')
  t.ok(config.topology.queues.length > 0, 'the topology is declared from the ConfigMap')
})

t.test('the ops routes the probes use exist', async (t) => {
  const secrets = new SecretRegistry()
  const ops = buildOpsServer({ log: createLogger({ level: 'silent', secrets }), registry: new Registry(), readiness: () => ({ ready: true, reasons: [] }) })
  t.teardown(() => ops.close())
  for (const url of ['/livez', '/readyz', '/metrics']) t.ok(ops.hasRoute({ method: 'GET', url }), `GET ${url}`)
})

for (const d of deployments) {
  t.test(`${d.file}: wiring`, async (t) => {
    const pod = d.spec.template.spec
    const { container: sidecar, native } = sidecarOf(pod)
    if (d.file.includes('native')) {
      t.ok(native, 'the sidecar is an initContainers entry')
      t.equal(sidecar.restartPolicy, 'Always', 'restartPolicy: Always makes it a native sidecar')
    } else {
      t.notOk(native, 'the classic variant runs the sidecar in containers')
      t.equal(sidecar.restartPolicy, undefined)
    }

    // --config points into the ConfigMap volume, at a key the ConfigMap has.
    const args = sidecar.args ?? []
    const configPath = args[args.indexOf('--config') + 1]
    if (configPath === undefined || !args.includes('--config')) throw new Error('the sidecar gets no --config')
    const cmMount = sidecar.volumeMounts?.find((m) => m.mountPath === dirname(configPath))
    const cmVolume = pod.volumes?.find((v) => v.name === cmMount?.name)
    t.equal(cmVolume?.configMap?.name, configMap.metadata.name, `${configPath} is on the ConfigMap volume`)
    const item = cmVolume?.configMap?.items?.find((i) => i.path === basename(configPath))
    const key = item?.key ?? basename(configPath)
    const config = loadConfigMapConfig(key)

    // Probes: startup and readiness on /readyz, liveness on /livez, on ops.port.
    const opsPort = (sidecar.ports ?? []).find((p) => p.containerPort === config.ops.port)
    t.ok(opsPort, `a container port is ops.port ${config.ops.port}`)
    const probePort = (port: number | string | undefined) => (typeof port === 'string' ? sidecar.ports?.find((p) => p.name === port)?.containerPort : port)
    t.equal(sidecar.startupProbe?.httpGet?.path, '/readyz')
    t.equal(sidecar.readinessProbe?.httpGet?.path, '/readyz')
    t.equal(sidecar.livenessProbe?.httpGet?.path, '/livez')
    for (const probe of [sidecar.startupProbe, sidecar.readinessProbe, sidecar.livenessProbe]) {
      t.equal(probePort(probe?.httpGet?.port as number | string | undefined), config.ops.port, 'probe port resolves to ops.port')
    }

    // The Secret is mounted where amqp.urlFile and api.tokenFile point.
    const secretKeys = new Set([...Object.keys(secret.stringData ?? {}), ...Object.keys(secret.data ?? {})])
    for (const [name, path] of [['amqp.urlFile', config.amqp.urlFile], ['api.tokenFile', config.api.tokenFile]] as const) {
      if (path === null) {
        t.fail(`${name} is set in the ConfigMap`)
        continue
      }
      const mount = sidecar.volumeMounts?.find((m) => m.mountPath === dirname(path))
      const volume = pod.volumes?.find((v) => v.name === mount?.name)
      t.equal(volume?.secret?.secretName, secret.metadata.name, `${name} (${path}) is on the Secret volume`)
      t.notOk(mount?.subPath, 'no subPath, so rotated secrets reach the file')
      t.equal(volume?.secret?.defaultMode, 0o440, 'secret files are 0440: owner root, group fsGroup')
      t.ok(secretKeys.has(basename(path)), `the Secret has key ${basename(path)}`)
    }
    t.notOk(JSON.stringify(sidecar.env ?? []).includes('AMQP_URL'), 'the broker URL is not in the environment')

    // A container's NODE_OPTIONS replaces the image's: it must repeat the image's V8 flags
    // (docs/operations.md), else setting a heap cap silently drops the footprint tuning.
    const nodeOptions = sidecar.env?.find((e) => e.name === 'NODE_OPTIONS')
    if (nodeOptions) {
      const given = (nodeOptions.value ?? '').split(/\s+/).filter(Boolean)
      for (const flag of imageNodeOptions()) t.ok(given.includes(flag), `NODE_OPTIONS repeats the image's ${flag}`)
    }

    // The app reaches the API on loopback at api.port.
    const app = pod.containers.find((c) => c.name !== 'amqp-sidecar')
    t.match([...(app?.command ?? []), ...(app?.args ?? [])].join(' '), `http://127.0.0.1:${config.api.port}/v1/`, 'the app calls the sidecar on loopback')

    // Grace period: drain, then confirms (main.ts caps the confirm wait by publish.timeoutMs), plus slack.
    const grace = pod.terminationGracePeriodSeconds ?? 30
    t.ok(grace * 1000 >= config.shutdown.drainMs + config.publish.timeoutMs + 5000, `terminationGracePeriodSeconds ${grace} fits the drain`)

    // Locked down: every container.
    t.equal(pod.securityContext?.runAsNonRoot, true)
    for (const c of allContainers(pod)) {
      const sc = c.securityContext
      t.equal(sc?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot, true, `${c.name}: runAsNonRoot`)
      t.equal(sc?.readOnlyRootFilesystem, true, `${c.name}: readOnlyRootFilesystem`)
      t.equal(sc?.allowPrivilegeEscalation, false, `${c.name}: allowPrivilegeEscalation false`)
      t.same(sc?.capabilities?.drop, ['ALL'], `${c.name}: drop ALL capabilities`)
      t.equal((sc?.seccompProfile ?? pod.securityContext?.seccompProfile)?.type, 'RuntimeDefault', `${c.name}: seccomp RuntimeDefault`)
      t.ok(c.resources?.requests?.memory && c.resources?.limits?.memory && c.resources?.requests?.cpu, `${c.name}: resources set`)
      t.match(c.image ?? '', /:[0-9]/, `${c.name}: image has a version tag`)
    }
  })
}

/** The flags the Dockerfile's runtime stage puts in NODE_OPTIONS (ENV NODE_OPTIONS=... or ="..."). */
function imageNodeOptions(): string[] {
  const dockerfile = readFileSync(fileURLToPath(new URL('../Dockerfile', import.meta.url)), 'utf8')
  const m = /^ENV NODE_OPTIONS=(?:"([^"]*)"|(\S+))\s*$/m.exec(dockerfile)
  if (!m) throw new Error('the Dockerfile sets no NODE_OPTIONS')
  return (m[1] ?? m[2] ?? '').split(/\s+/).filter(Boolean)
}
