/**
 * The derived docs are API: docs/openapi.json, docs/configuration.md and
 * docs/metrics.md must equal what the code generates now, and the OpenAPI
 * document must name every route the API server registers.
 *
 * Stale? `npm run docs` (builds, then writes all three), or without a build:
 * `npx tap --snapshot test/docs.test.ts` (tap sets TAP_SNAPSHOT=1).
 */
import { readFileSync, writeFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { ERROR_CODES } from '../src/errors.js'
import { renderConfigReference } from '../src/docs/config-reference.js'
import { renderMetricsReference } from '../src/docs/metrics-reference.js'
import { renderOpenApi } from '../src/docs/openapi.js'
import { OPENAPI_PATH } from '../src/http/openapi.js'
import { recordRoutes } from './fixtures/routes.js'
import { startSidecar } from './fixtures/sidecar.js'

const UPDATE = process.env.TAP_SNAPSHOT === '1'
const docPath = (name: string) => new URL(`../docs/${name}`, import.meta.url)

function checkUpToDate(t: Test, name: string, fresh: string, how: string): void {
  if (UPDATE) writeFileSync(docPath(name), fresh)
  const committed = readFileSync(docPath(name), 'utf8')
  t.equal(committed, fresh, `docs/${name} is up to date (regenerate: ${how})`)
}

t.test('docs/configuration.md matches the config schema', async (t) => {
  checkUpToDate(t, 'configuration.md', renderConfigReference(), 'npm run docs:config')
})

t.test('docs/metrics.md matches the metrics registry', async (t) => {
  checkUpToDate(t, 'metrics.md', renderMetricsReference(), 'npm run docs:metrics')
})

t.test('docs/openapi.json matches what the sidecar serves', async (t) => {
  checkUpToDate(t, 'openapi.json', await renderOpenApi(), 'npm run openapi')
})

t.test('every API route is in the OpenAPI document', async (t) => {
  const recorder = recordRoutes()
  t.teardown(() => recorder.stop())
  // The broker URL points nowhere: this test needs the routes, not a broker.
  const s = await startSidecar(t, { amqp: { urls: ['amqp://guest:guest@127.0.0.1:1/%2F'] }, log: { level: 'silent' } })
  const res = await fetch(`${s.api}${OPENAPI_PATH}`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type') ?? '', /application\/json/)
  const doc = (await res.json()) as { openapi: string; paths: Record<string, Record<string, unknown>> }
  t.match(doc.openapi, /^3\./)

  const api = recorder.instances.find((routes) => routes.some((r) => r.url === OPENAPI_PATH))
  if (!api) throw new Error('no fastify instance registered the OpenAPI route')
  const routes = api.filter((r) => r.method !== 'HEAD')
  t.ok(routes.length >= 4, `the API registers routes (${routes.length})`)
  for (const route of routes) {
    t.notOk(route.hidden, `${route.method} ${route.url} is not hidden from the document`)
    // :name -> {name}; a trailing wildcard is documented as a named parameter.
    const pattern = new RegExp(`^${route.url.replace(/[.]/g, '\\.').replace(/:([A-Za-z0-9_]+)/g, '\\{$1\\}').replace(/\*$/, '\\{[^}]+\\}')}$`)
    const path = Object.keys(doc.paths).find((p) => pattern.test(p))
    t.ok(path !== undefined && doc.paths[path]?.[route.method.toLowerCase()] !== undefined, `${route.method} ${route.url} is documented`)
  }
})

t.test('response schemas keep the documented error shape', async (t) => {
  const s = await startSidecar(t, { amqp: { urls: ['amqp://guest:guest@127.0.0.1:1/%2F'] }, log: { level: 'silent' } })
  const res = await fetch(`${s.api}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"nope": 1}' })
  t.equal(res.status, 400)
  const body = (await res.json()) as { error: { code: string; message: string } }
  t.equal(body.error.code, 'INVALID_REQUEST')
  t.type(body.error.message, 'string')
  const status = (await (await fetch(`${s.api}/v1/status`)).json()) as Record<string, unknown>
  // The status schema is open: nothing the code reports is stripped.
  t.ok('diagnosis' in status && 'buffer' in status && 'upstream' in status, 'status keeps its fields')
})

t.test('docs/api.md lists every code of the error registry with its status', async (t) => {
  const api = readFileSync(new URL('../docs/api.md', import.meta.url), 'utf8')
  for (const [code, { status }] of Object.entries(ERROR_CODES)) {
    t.match(api, new RegExp(`\\| ${status} \\| [^\\n]*\`${code}\``), `${code} (${status}) is documented`)
  }
})
