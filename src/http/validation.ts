/**
 * Request validation at the edge. Bodies are checked strictly: no type
 * coercion (a routingKey of 5 is an error, not "5") and unknown keys are
 * refused rather than silently dropped. Query strings and headers arrive as
 * text, so there numbers are coerced from strings.
 */
import { Ajv, type Options } from 'ajv'
import type { FastifyInstance, FastifySchema } from 'fastify'

// strict: false lets schemas carry documentation keywords (description, example) for OpenAPI.
const common: Options = { allErrors: false, allowUnionTypes: true, useDefaults: true, strict: false }

export function installValidation(app: FastifyInstance): void {
  const strictBodies = new Ajv({ ...common, coerceTypes: false, removeAdditional: false })
  const textParts = new Ajv({ ...common, coerceTypes: true, removeAdditional: false })
  app.setValidatorCompiler(({ schema, httpPart }: { schema: FastifySchema; httpPart?: string }) =>
    (httpPart === 'body' ? strictBodies : textParts).compile(schema as object) as never,
  )
}
