/**
 * What an idle sidecar holds (issue 12, footprint): a started sidecar has not
 * loaded ajv or fast-json-stringify, nor compiled a validator, a serializer or
 * the rpc frame schema; each is compiled at its first use, and the answers are
 * the ones eager compilation gave (a 400 names the bad key, responses are
 * serialized by their schema). Checked by what is loaded (require.cache) and
 * counted, never by memory or time.
 */
import { createRequire } from 'node:module'
import t from 'tap'
import { publishHeadersSchema } from '../src/http/responses.js'
import { compiled, documentsOnly } from '../src/http/validation.js'
import { frameSchemaCompiled } from '../src/rpc/request.js'
import { startSidecar } from './fixtures/sidecar.js'

const require = createRequire(import.meta.url)

/** Packages under node_modules that this process has loaded (CommonJS modules, as ajv and fast-json-stringify are). */
function loadedPackages(): Set<string> {
  const out = new Set<string>()
  for (const file of Object.keys(require.cache)) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?!.*node_modules\/)/.exec(file)
    if (m?.[1]) out.add(m[1])
  }
  return out
}

function fastJsonStringifyCompilerLoaded(): boolean {
  const fromFastify = createRequire(require.resolve('fastify'))
  return fromFastify.resolve('fast-json-stringify') in require.cache
}

t.test('a started sidecar has compiled nothing and loaded neither ajv nor fast-json-stringify', async (t) => {
  t.notOk(loadedPackages().has('ajv'), 'ajv is not loaded by importing the sidecar')
  const s = await startSidecar(t, { consume: { connection: 'always' } })
  const loaded = loadedPackages()
  t.ok(loaded.has('fastify'), 'the scan sees CommonJS packages (fastify is loaded)')
  for (const pkg of ['ajv', '@fastify/ajv-compiler', '@fastify/fast-json-stringify-compiler']) {
    t.notOk(loaded.has(pkg), `${pkg} is not loaded at start`)
  }
  // fastify's precompiled error serializer loads fast-json-stringify/lib/serializer (small); the compiler is index.js.
  t.notOk(fastJsonStringifyCompilerLoaded(), 'fast-json-stringify (the compiler) is not loaded at start')
  t.same(compiled(), { validators: 0, serializers: 0 }, 'no validator or serializer compiled at start')
  t.equal(frameSchemaCompiled(), false, 'the rpc frame schema is not compiled at start')

  // First use: the body validator is compiled, and its 400 names the key as before.
  const bad = await fetch(`${s.api}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ exchange: 'amq.direct', routingKey: 5 }) })
  t.equal(bad.status, 400)
  const err = (await bad.json()) as { error: { code: string; message: string } }
  t.equal(err.error.code, 'INVALID_REQUEST')
  t.match(err.error.message, /routingKey must be string/)
  const unknownKey = await fetch(`${s.api}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ exchange: 'amq.direct', nope: 1 }) })
  t.equal(unknownKey.status, 400)
  t.match(((await unknownKey.json()) as { error: { message: string } }).error.message, /unknown key "nope"/)
  t.ok(loadedPackages().has('ajv'), 'ajv is loaded at the first validation')
  t.ok(compiled().validators >= 1, 'the body validator was compiled at first use')
  const after = compiled().validators
  await fetch(`${s.api}/v1/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ exchange: 'amq.direct', routingKey: 5 }) })
  t.equal(compiled().validators, after, 'a route compiles its validator once, not per request')

  // A response with a schema is serialized by it (fast-json-stringify drops keys the schema does not name).
  const status = await fetch(`${s.api}/v1/status`)
  t.equal(status.status, 200)
  t.ok(compiled().serializers >= 1, 'the status response serializer was compiled at first use')
  t.ok(fastJsonStringifyCompilerLoaded(), 'fast-json-stringify is loaded at the first serialization')
})

t.test('header schemas that only document are not run per request', async (t) => {
  t.equal(documentsOnly(publishHeadersSchema), true, 'the raw publish headers schema only documents')
  t.equal(documentsOnly({ type: 'object', properties: { a: { type: 'string', minLength: 1 } } }), false, 'a constraint is validated')
  t.equal(documentsOnly({ type: 'object', required: ['a'], properties: { a: { type: 'string' } } }), false, 'a required header is validated')
  t.equal(documentsOnly({ type: 'object', properties: { a: { type: 'integer' } } }), false, 'a coerced type is validated')
})
