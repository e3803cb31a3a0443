/**
 * Request validation at the edge. Bodies are checked strictly: no type
 * coercion (a routingKey of 5 is an error, not "5") and unknown keys are
 * refused rather than silently dropped. Query strings and headers arrive as
 * text, so there numbers are coerced from strings.
 */
import { Ajv, type ErrorObject, type Options } from 'ajv'
import type { FastifyInstance, FastifySchema } from 'fastify'

// strict: false lets schemas carry documentation keywords (description, example) for OpenAPI.
const common: Options = { allErrors: false, allowUnionTypes: true, useDefaults: true, strict: false }

export function installValidation(app: FastifyInstance): void {
  const strictBodies = new Ajv({ ...common, coerceTypes: false, removeAdditional: false })
  const textParts = new Ajv({ ...common, coerceTypes: true, removeAdditional: false })
  app.setValidatorCompiler(({ schema, httpPart }: { schema: FastifySchema; httpPart?: string }) =>
    (httpPart === 'body' ? strictBodies : textParts).compile(schema as object) as never,
  )
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
