/** GET /v1/status: everything an operator needs to explain the link, passwords redacted. */
import type { FastifyInstance } from 'fastify'
import { errorResponses, statusResponse } from '../responses.js'

export async function statusRoutes(app: FastifyInstance, deps: { status: () => Record<string, unknown> }): Promise<void> {
  app.get('/v1/status', { schema: { summary: 'The state of the broker link, explained', response: { 200: statusResponse, ...errorResponses } } }, async () => deps.status())
}
