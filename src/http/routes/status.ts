/** GET /v1/status: everything an operator needs to explain the link, passwords redacted. */
import type { FastifyInstance } from 'fastify'

export async function statusRoutes(app: FastifyInstance, deps: { status: () => Record<string, unknown> }): Promise<void> {
  app.get('/v1/status', async () => deps.status())
}
