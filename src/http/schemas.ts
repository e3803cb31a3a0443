/**
 * JSON schemas for request bodies. fastify validates with them at the edge,
 * and the same objects document the API.
 */

const shortString = { type: 'string', minLength: 1, maxLength: 255 } as const

export const propertiesSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    messageId: shortString,
    correlationId: shortString,
    replyTo: shortString,
    expiration: { anyOf: [{ type: 'string', pattern: '^[0-9]{1,10}$' }, { type: 'integer', minimum: 0 }] },
    priority: { type: 'integer', minimum: 0, maximum: 255 },
    type: shortString,
    appId: shortString,
    contentType: shortString,
    contentEncoding: shortString,
    persistent: { type: 'boolean' },
    timestamp: { type: 'integer', minimum: 0 },
  },
} as const

export const envelopeSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['exchange'],
  properties: {
    exchange: { type: 'string', maxLength: 255 },
    routingKey: { type: 'string', maxLength: 255 },
    body: {},
    bodyEncoding: { enum: ['utf8', 'base64', 'json'] },
    properties: propertiesSchema,
    headers: {
      type: 'object',
      maxProperties: 256,
      additionalProperties: { type: ['string', 'number', 'boolean', 'null'] },
    },
    mandatory: { type: 'boolean' },
  },
} as const

/** Largest batch accepted in one request. */
export const MAX_BATCH = 1000

export const publishBodySchema = {
  anyOf: [envelopeSchema, { type: 'array', minItems: 1, maxItems: MAX_BATCH, items: envelopeSchema }],
} as const

export const publishResultSchema = {
  type: 'object',
  properties: { messageId: { type: 'string' }, status: { enum: ['confirmed', 'accepted'] } },
} as const
