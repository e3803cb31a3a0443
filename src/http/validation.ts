/**
 * Request validation at the edge. Bodies are checked strictly: no type
 * coercion (a routingKey of 5 is an error, not "5") and unknown keys are
 * refused rather than silently dropped. Query strings and headers arrive as
 * text, so there numbers are coerced from strings.
 *
 * Compiled at first use, not at start (issue 12, footprint): fastify compiles
 * every route's validators and response serializers when the route is
 * registered, which loaded ajv, fast-json-stringify and their compiled code
 * into every idle sidecar whether or not a route is ever called. Here each
 * compiler hands fastify a stub that loads the library and compiles its schema
 * on its first call. The answers are the same; the first request of a route
 * pays the compile (milliseconds) once. `compiled()` counts what was compiled,
 * for test/footprint.test.ts.
 */
import { createRequire } from 'node:module'
import type { Ajv as AjvClass, ErrorObject, Options } from 'ajv'
import type { FastifyInstance, FastifySchema, FastifyServerOptions } from 'fastify'

const load = createRequire(import.meta.url)

// strict: false lets schemas carry documentation keywords (description, example) for OpenAPI.
const common: Options = { allErrors: false, allowUnionTypes: true, useDefaults: true, strict: false }

/** An ajv instance made (and ajv loaded) at its first compile. */
export function lazyAjv(options: Options): () => AjvClass {
  let ajv: AjvClass | undefined
  return () => (ajv ??= new (load('ajv') as typeof import('ajv')).Ajv(options))
}

const counts = { validators: 0, serializers: 0 }
/** How many validators and serializers were compiled in this process so far. */
export function compiled(): Readonly<typeof counts> {
  return { ...counts }
}

type Validate = ((data: unknown, ctx?: object) => unknown) & { errors?: unknown; schemaEnv?: unknown }

/** A validator that compiles on its first call; fastify reads `.errors` after a false result. */
function lazyValidator(compile: () => Validate): Validate {
  let real: Validate | undefined
  const stub: Validate = (data, ctx) => {
    if (!real) {
      real = compile()
      counts.validators++
    }
    const ok = real(data, ctx)
    stub.errors = real.errors
    return ok
  }
  // Tells fastify to pass { parentData, parentDataProperty } as it does to an ajv
  // validator, so ajv may still replace a root value (coercion, defaults).
  stub.schemaEnv = true
  return stub
}

/**
 * A headers schema that only documents: an object whose properties are all
 * plain strings, none required, any others allowed. Node gives every such
 * header as a string, so it cannot fail, and running it per request only costs
 * (fastify's headers getter allocates for it). The publish code checks values.
 */
export function documentsOnly(schema: unknown): boolean {
  const s = schema as { type?: unknown; properties?: Record<string, Record<string, unknown>>; [k: string]: unknown }
  if (s.type !== 'object' || !s.properties) return false
  if (Object.keys(s).some((k) => k !== 'type' && k !== 'properties' && k !== 'description')) return false
  return Object.values(s.properties).every((p) => p.type === 'string' && Object.keys(p).every((k) => k === 'type' || k === 'description'))
}

type SerializerCompiler = (route: { schema: unknown; method: string; url: string; httpStatus: string; contentType?: string }) => (data: unknown) => string
type SerializerBuilder = (externalSchemas: unknown, options: unknown) => SerializerCompiler

/** fastify's own serializer builder (fast-json-stringify), loaded where fastify would load it. */
function defaultSerializerBuilder(): SerializerBuilder {
  const fromFastify = createRequire(load.resolve('fastify'))
  return (fromFastify('@fastify/fast-json-stringify-compiler') as () => SerializerBuilder)()
}

/**
 * The `schemaController` option for Fastify(): custom validator and serializer
 * builders, so fastify neither loads @fastify/ajv-compiler nor compiles anything
 * at route registration.
 */
export function lazySchemaCompilers(): Pick<FastifyServerOptions, 'schemaController'> {
  const strictBodies = lazyAjv({ ...common, coerceTypes: false, removeAdditional: false })
  const textParts = lazyAjv({ ...common, coerceTypes: true, removeAdditional: false })
  const buildValidator = () =>
    ({ schema, httpPart }: { schema: FastifySchema; httpPart?: string }) => {
      if (httpPart === 'headers' && documentsOnly(schema)) return undefined as never
      return lazyValidator(() => (httpPart === 'body' ? strictBodies() : textParts()).compile(schema as object) as Validate) as never
    }
  const buildSerializer: SerializerBuilder = (externalSchemas, options) => {
    let compiler: SerializerCompiler | undefined
    return (route) => {
      let serialize: ((data: unknown) => string) | undefined
      return (data) => {
        if (!serialize) {
          compiler ??= defaultSerializerBuilder()(externalSchemas, options)
          serialize = compiler(route)
          counts.serializers++
        }
        return serialize(data)
      }
    }
  }
  return { schemaController: { compilersFactory: { buildValidator, buildSerializer } } } as unknown as Pick<FastifyServerOptions, 'schemaController'>
}

export function installValidation(app: FastifyInstance): void {
  app.setSchemaErrorFormatter((errors, dataVar) => new Error(describeValidation(errors as ErrorObject[], dataVar)))
}

/** Errors that only say "some branch failed": the branch's own error says more. */
const VAGUE = new Set(['anyOf', 'oneOf', 'if'])

/**
 * One message that names what is wrong. A schema with alternatives (one envelope
 * or an array of them) otherwise yields "body must NOT have additional properties,
 * body must be array, body must match a schema in anyOf", which names no key.
 */
export function describeValidation(errors: readonly ErrorObject[], dataVar: string): string {
  // "must be array" on the root is the other alternative not matching: drop it
  // when a more specific error exists.
  const specific = errors.filter((e) => !VAGUE.has(e.keyword) && !(e.keyword === 'type' && e.instancePath === '' && errors.length > 1))
  if (specific.length === 0) {
    // Only the root's type failed, once per alternative: "body must be object or array".
    const types = errors.filter((e) => e.keyword === 'type').map((e) => (e.params as { type: string }).type)
    if (types.length > 0) return `${dataVar} must be ${[...new Set(types)].join(' or ')}`
  }
  const chosen = specific.length > 0 ? specific : errors
  const parts = chosen.map((e) => {
    const where = `${dataVar}${e.instancePath}`
    if (e.keyword === 'additionalProperties') return `${where} has an unknown key "${String((e.params as { additionalProperty: string }).additionalProperty)}"`
    if (e.keyword === 'required') return `${where} needs "${String((e.params as { missingProperty: string }).missingProperty)}"`
    if (e.keyword === 'enum') return `${where} must be one of ${((e.params as { allowedValues: unknown[] }).allowedValues ?? []).map((v) => JSON.stringify(v)).join(', ')}`
    return `${where} ${e.message ?? 'is invalid'}`
  })
  return [...new Set(parts)].join('; ')
}
