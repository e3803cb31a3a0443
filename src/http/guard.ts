/**
 * The API's front door, run before any route (and before the WebSocket
 * upgrade on GET /v1/ws, which is routed like any request):
 *
 * 1. Browsers are refused. A request carrying an `Origin` header, or a
 *    `Sec-Fetch-Site` other than "none", comes from a web page: 403
 *    ORIGIN_NOT_ALLOWED. This stops cross-site requests and cross-site
 *    WebSocket hijacking; apps (HTTP clients, scripts) send neither header.
 * 2. The `Host` must be loopback (127.0.0.1, localhost, [::1], any port), the
 *    configured api.host, or a name in api.allowedHosts: else 403
 *    HOST_NOT_ALLOWED. This stops DNS rebinding, where a page on evil.example
 *    re-points its own name at 127.0.0.1 (the browser then sends
 *    `Host: evil.example`).
 * 3. With api.tokenFile set, `Authorization: Bearer <token>` is required:
 *    else 401 UNAUTHORIZED with `WWW-Authenticate: Bearer`.
 *
 * The operations listener (/livez, /readyz, /metrics) has none of this: probes
 * must work without a token.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { SidecarError } from '../errors.js'
import { sendError } from './errors.js'
import type { ApiToken } from './token.js'

export const LOOPBACK_HOSTS: readonly string[] = ['127.0.0.1', 'localhost', '[::1]']
const WILDCARD_ADDRESSES = new Set(['0.0.0.0', '::', '[::]'])
const AUTH_REALM = 'amqp-sidecar'

export interface GuardOptions {
  /** api.allowedHosts: extra Host names (no port). */
  allowedHosts: readonly string[]
  /** api.host: the listener's own address is a valid Host unless it is a wildcard. */
  apiHost: string
  /** null when api.tokenFile is not set. */
  token: ApiToken | null
}

/** Lower-cased, trailing dot removed, IPv6 literals bracketed: the form Host comparisons use. */
export function normalizeHostName(name: string): string {
  let n = name.trim().toLowerCase()
  if (n.endsWith('.')) n = n.slice(0, -1)
  if (n.includes(':') && !n.startsWith('[')) n = `[${n}]`
  return n
}

/** The host part of a Host header, or undefined when it is malformed (bad port, junk). */
export function hostOf(header: string): string | undefined {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(header.trim())
  if (!m?.[1]) return undefined
  if (m[2] !== undefined && Number(m[2]) > 65535) return undefined
  return normalizeHostName(m[1])
}

export function allowedHostSet(opts: Pick<GuardOptions, 'allowedHosts' | 'apiHost'>): Set<string> {
  const set = new Set(LOOPBACK_HOSTS)
  for (const h of opts.allowedHosts) set.add(normalizeHostName(h))
  const own = normalizeHostName(opts.apiHost)
  if (!WILDCARD_ADDRESSES.has(own)) set.add(own)
  return set
}

// Every request on a keep-alive pool carries the same Host: parse it once, not
// per request (the regex and normalisation showed in the publish profile).
let lastHostHeader: string | undefined
let lastHost: string | undefined

/** hostOf() with the last header's answer remembered. */
export function lastHostOf(header: string): string | undefined {
  if (header !== lastHostHeader) {
    lastHost = hostOf(header)
    lastHostHeader = header
  }
  return lastHost
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

/** Why a request must be refused before routing, or undefined to let it through. */
export function refusal(req: Pick<FastifyRequest, 'headers'>, hosts: ReadonlySet<string>, token: ApiToken | null): SidecarError | undefined {
  const h = req.headers
  if (h.origin !== undefined) return new SidecarError('ORIGIN_NOT_ALLOWED')
  const site = one(h['sec-fetch-site'])
  if (site !== undefined && site !== 'none') return new SidecarError('ORIGIN_NOT_ALLOWED', 'Requests from web pages (Sec-Fetch-Site) are refused')
  const host = h.host === undefined ? undefined : lastHostOf(h.host)
  if (host === undefined || !hosts.has(host)) return new SidecarError('HOST_NOT_ALLOWED')
  if (token && !token.verify(one(h.authorization))) return new SidecarError('UNAUTHORIZED')
  return undefined
}

export function installGuard(app: FastifyInstance, opts: GuardOptions): void {
  const hosts = allowedHostSet(opts)
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const error = refusal(req, hosts, opts.token)
    if (!error) return
    if (error.code === 'UNAUTHORIZED') {
      const presented = req.headers.authorization !== undefined
      reply.header('www-authenticate', presented ? `Bearer realm="${AUTH_REALM}", error="invalid_token"` : `Bearer realm="${AUTH_REALM}"`)
    }
    if (isUpgrade(req)) reply.header('connection', 'close')
    return sendError(reply, error)
  })
  // A socket that asked for an upgrade and was answered with anything else
  // belongs to nobody: Node's HTTP server no longer tracks it, so it would
  // stay open and hold close() for ever (@fastify/websocket only cleans up
  // requests its own hooks saw, and a refusal here comes before them).
  app.addHook('onResponse', async (req: FastifyRequest) => {
    if (isUpgrade(req)) req.raw.socket.destroy()
  })
}

function isUpgrade(req: FastifyRequest): boolean {
  return req.raw.headers.upgrade !== undefined
}
