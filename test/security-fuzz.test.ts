// Property-based fuzzing of the HTTP API with fast-check, against a real
// sidecar connected to a private broker as a user with a unique password, with
// an API token configured. Generated requests: malformed and wrongly typed
// JSON, huge and odd unicode exchange / routing key / header names, bad query
// values, wrong and odd content types, odd header values, unknown paths and
// methods. For every request:
//   - the connection is never dropped: a complete HTTP answer always comes back;
//   - the status is a documented one, never 500; error bodies carry a registry
//     code whose status is the one answered;
//   - neither the broker password nor the API token appears in the answer;
// and after the run: the sidecar still serves, and no log line holds a secret.
// Bounded for CI: at most NUM_RUNS requests and TIME_BUDGET_MS of generation.
import t from 'tap'
import fc from 'fast-check'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { ERROR_CODES, type ErrorCode } from '../src/errors.js'
import { brokerFor } from './fixtures/broker.js'
import { request, type RawResponse } from './fixtures/http.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitFor } from './fixtures/wait.js'

const NUM_RUNS = Number(process.env.FUZZ_RUNS ?? 1500)
const TIME_BUDGET_MS = Number(process.env.FUZZ_BUDGET_MS ?? 30_000)
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED)

/** Statuses the API documents (DESIGN.md sections 2-3 and the error registry). */
const DOCUMENTED = new Set([200, 202, 204, 207, ...Object.values(ERROR_CODES).map((e) => e.status)].filter((s) => s !== 500))

const broker = await brokerFor(t)
const password = `fz-${randomBytes(12).toString('hex')}`
const token = `tk-${randomBytes(16).toString('hex')}`
await broker.ctl('add_user', 'fuzzer', password)
await broker.ctl('set_permissions', '-p', '/', 'fuzzer', '.*', '.*', '.*')
const dir = t.testdir({ token })
const s = await startSidecar(t, {
  amqp: { urls: [`amqp://fuzzer:${password}@127.0.0.1:${broker.port}/%2F`] },
  api: { tokenFile: join(dir, 'token'), bodyLimitBytes: 64 * 1024 },
  publish: { timeoutMs: 1_000 },
  topology: { queues: [{ name: 'fuzz.q', durable: false, autoDelete: false }], exchanges: [], bindings: [] },
  log: { level: 'debug' },
})
await waitFor(async () => (await fetch(`${s.ops}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the sidecar to be ready' })

// ---- generators -----------------------------------------------------------

const HEADER_VALUE_OK = /^[\t\x20-\x7e\x80-\xff]*$/
const TOKEN_CHARS = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyz-"

/** Short, huge, and odd unicode strings (astral planes, RTL, zero-width, combining marks). */
const oddString = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: 'grapheme', minLength: 200, maxLength: 600 }),
  fc.constantFrom('', ' ', '.', '..', 'amq.fanout', 'amq.direct', 'amq.default', 'no.such.exchange', 'fuzz.q', '\u202e\u0000x', '😀'.repeat(200), 'a'.repeat(256), '%', '%00', '../../etc/passwd'),
)
const headerValue = oddString.filter((v) => HEADER_VALUE_OK.test(v) && v.trim() === v && v.length < 4000)
const headerName = fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 40 })
const numberish = fc.oneof(fc.integer({ min: -5, max: 400 }).map(String), fc.constantFrom('', 'NaN', '1e3', '-0', '0x10', '99999999999999999999', '1.5', 'true', ' 5'), oddString)
/** X-Timeout-Ms that stays short when valid, so a run cannot wait for minutes. */
const timeoutHeader = fc.oneof(fc.integer({ min: 1, max: 300 }).map(String), fc.constantFrom('0', '-1', 'abc', '300001', '1e2', ''))
const contentType = fc.constantFrom(
  'application/json', 'application/json; charset=utf-8', 'application/json; charset=utf-16', 'text/plain', 'application/octet-stream',
  'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonx', '*/*', ';;;', 'application/json;;q=\u00ff',
)
const jsonish: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.record(
    {
      exchange: fc.oneof(oddString, fc.integer(), fc.constant(null), fc.array(fc.string(), { maxLength: 2 })),
      routingKey: fc.oneof(oddString, fc.integer(), fc.boolean()),
      body: fc.oneof(oddString, fc.jsonValue({ maxDepth: 2 })),
      bodyEncoding: fc.oneof(fc.constantFrom('utf8', 'base64', 'json'), oddString),
      properties: fc.oneof(fc.dictionary(fc.constantFrom('messageId', 'priority', 'expiration', 'contentType', 'timestamp', 'persistent', 'bogus'), fc.jsonValue({ maxDepth: 1 })), fc.jsonValue({ maxDepth: 1 })),
      headers: fc.oneof(fc.dictionary(oddString, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 5 }), fc.jsonValue({ maxDepth: 1 })),
      mandatory: fc.oneof(fc.boolean(), oddString),
      deliveryIds: fc.oneof(fc.array(oddString, { maxLength: 5 }), oddString),
      requeue: fc.oneof(fc.boolean(), oddString),
    },
    { requiredKeys: [] },
  ),
)
const jsonBody = fc.oneof(
  jsonish.map((v) => JSON.stringify(v) ?? ''),
  fc.array(jsonish, { maxLength: 5 }).map((v) => JSON.stringify(v)),
  fc.constantFrom('', '{', '[', '{"exchange":', 'null', '[]', '{"__proto__":{"x":1},"exchange":"amq.fanout"}', '{"constructor":{"prototype":{}}}', '\ufeff{}', '{"a":1}{"b":2}'),
  oddString,
)
/** TOKEN_SLOT stands for the token in generated values, so a counterexample printed by fast-check never shows it. */
const TOKEN_SLOT = '<token>'
const auth = fc.oneof(
  { weight: 8, arbitrary: fc.constant(`Bearer ${TOKEN_SLOT}`) },
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.constantFrom('Bearer', `Bearer ${TOKEN_SLOT}x`, `bearer  ${TOKEN_SLOT}`, `Basic ${TOKEN_SLOT}`, 'Bearer \u00ff') },
)
const extraHeaders = fc.dictionary(
  fc.oneof(
    fc.constantFrom('x-message-id', 'x-correlation-id', 'x-reply-to', 'x-expiration', 'x-priority', 'x-type', 'x-app-id', 'x-persistent', 'x-mandatory', 'x-ack', 'content-encoding', 'accept', 'accept-encoding', 'x-forwarded-for', 'x-forwarded-host'),
    headerName.map((n) => `x-header-${n}`),
  ),
  fc.oneof(headerValue, numberish.filter((v) => HEADER_VALUE_OK.test(v) && v.trim() === v)),
  { maxKeys: 6 },
)
const segment = oddString.map((v) => encodeURIComponent(v))

interface Req {
  method: string
  path: string
  headers: Record<string, string>
  body?: string | Buffer
}

const rawPublish = fc.record({ ex: segment, rk: fc.option(segment), body: fc.oneof(fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)), oddString), ct: fc.option(contentType), h: extraHeaders, to: fc.option(timeoutHeader) }).map(
  ({ ex, rk, body, ct, h, to }): Req => ({
    method: 'POST',
    path: `/v1/publish/${ex}${rk === null ? '' : `/${rk}`}`,
    headers: { ...h, ...(ct === null ? {} : { 'content-type': ct }), ...(to === null ? {} : { 'x-timeout-ms': to }) },
    body,
  }),
)
const envelopePublish = fc.record({ body: jsonBody, ct: contentType, h: extraHeaders, to: fc.option(timeoutHeader), path: fc.constantFrom('/v1/publish', '/v1/ack', '/v1/nack', '/v1/publish/') }).map(
  ({ body, ct, h, to, path }): Req => ({ method: 'POST', path, headers: { ...h, 'content-type': ct, ...(to === null ? {} : { 'x-timeout-ms': to }) }, body }),
)
const pull = fc.record({ q: segment, max: numberish, waitMs: fc.oneof(fc.integer({ min: 0, max: 200 }).map(String), numberish), leaseMs: numberish, encoding: oddString, ct: fc.option(contentType), body: fc.option(jsonBody) }).map(
  ({ q, max, waitMs, leaseMs, encoding, ct, body }): Req => {
    // A valid but long waitMs would only make the run slow: clamp numbers above 200.
    const wait = /^\d+$/.test(waitMs.trim()) && Number(waitMs) > 200 ? '200' : waitMs
    const qs = new URLSearchParams({ max, waitMs: wait, leaseMs, encoding })
    return { method: 'POST', path: `/v1/queues/${q}/pull?${qs}`, headers: ct === null ? {} : { 'content-type': ct }, ...(body === null ? {} : { body }) }
  },
)
const anything = fc.record({
  method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE'),
  path: fc.oneof(fc.constantFrom('/v1/status', '/v1/ws', '/v1/openapi.json', '/', '/livez', '/metrics', '/v1/queues//pull', '/v1/publish/%zz', '/v1/%2e%2e/status', '//v1//status'), segment.map((p) => `/v1/${p}`)),
  query: fc.option(fc.dictionary(fc.string({ maxLength: 10 }), oddString, { maxKeys: 3 })),
  h: extraHeaders,
}).map(({ method, path, query, h }): Req => ({ method, path: query === null ? path : `${path}?${new URLSearchParams(query)}`, headers: h }))

const anyRequest = fc.tuple(fc.oneof(rawPublish, envelopePublish, pull, anything), auth).map(([req, a]) => (a === undefined ? req : { ...req, headers: { ...req.headers, authorization: a } }))

// ---- the property ---------------------------------------------------------

/**
 * KNOWN GAP, reported to the lead (remove once fixed): @fastify/websocket answers
 * a plain GET /v1/ws (no Upgrade) with its own empty 404, not a registry body.
 * The fix belongs in src/http/ws.ts: a route `handler` that answers
 * INVALID_REQUEST next to the `wsHandler`.
 */

function check(req: Req, res: RawResponse): void {
  const where = `${req.method} ${req.path.slice(0, 120)} -> ${res.status} ${res.text.slice(0, 200)}`
  if (!DOCUMENTED.has(res.status)) throw new Error(`undocumented status: ${where}`)
  const everything = `${res.text}\n${JSON.stringify(res.headers)}`
  if (everything.includes(password)) throw new Error(`the broker password leaked: ${where}`)
  if (everything.includes(token)) throw new Error(`the API token leaked: ${where}`)
  if (res.status >= 400 && req.method !== 'HEAD') {
    const code = (res.json as { error?: { code?: string } } | undefined)?.error?.code
    if (code === undefined || !(code in ERROR_CODES)) throw new Error(`error without a registry code: ${where}`)
    if (ERROR_CODES[code as ErrorCode].status !== res.status) throw new Error(`code ${code} answered with status ${res.status}: ${where}`)
  }
}

t.test('fuzzed requests get documented answers, no drops, no leaks', async (t) => {
  const statuses = new Map<number, number>()
  const started = Date.now()
  await fc.assert(
    fc.asyncProperty(anyRequest, async (req) => {
      const headers: Record<string, string> = { host: '127.0.0.1', ...req.headers }
      if (headers.authorization !== undefined) headers.authorization = headers.authorization.replace(TOKEN_SLOT, token)
      const res = await request(s.api, req.path, { method: req.method, headers, ...(req.body === undefined ? {} : { body: req.body }), timeoutMs: 10_000 })
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
      check(req, res)
    }),
    { numRuns: NUM_RUNS, interruptAfterTimeLimit: TIME_BUDGET_MS, markInterruptAsFailure: false, endOnFailure: true, ...(SEED === undefined ? {} : { seed: SEED }) },
  )
  const total = [...statuses.values()].reduce((a, b) => a + b, 0)
  t.comment(`${total} requests in ${Date.now() - started} ms; statuses ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok(total >= Math.min(NUM_RUNS, 50), `ran at least ${Math.min(NUM_RUNS, 50)} requests (${total})`)
})

t.test('the sidecar still serves after the fuzzing, and no log line holds a secret', async (t) => {
  t.equal((await fetch(`${s.ops}/livez`)).status, 200)
  const ok = await request(s.api, '/v1/publish/amq.fanout/after', { method: 'POST', headers: { authorization: `Bearer ${token}`, 'x-mandatory': 'false' }, body: 'still here' })
  t.equal(ok.status, 200, 'a normal publish is confirmed')
  t.equal(s.sidecar.state, 'running')
  const logs = s.logs.join('')
  t.notOk(logs.includes(password), 'no broker password in the logs')
  t.notOk(logs.includes(token), 'no API token in the logs')
  const internal = s.logs.filter((l) => l.includes('unexpected error serving a request'))
  t.same(internal, [], 'no unexpected (500) errors were logged')
})
