/**
 * The WebSocket message frame built as text (messageFrame) is exactly the
 * JSON of the delivered-message shape (toDelivered), for every kind of body,
 * property and header; and Expiries (one timer per lease length) expires
 * entries in order, never one that was removed, and re-arms for what is left.
 */
import type { ConsumeMessage } from 'amqplib'
import t from 'tap'
import { messageFrame, needsNoEscape, toDelivered } from '../src/consume/delivery.js'
import { Expiries } from '../src/expiry.js'

// Expiry timers are unref()ed (they must not hold a closing sidecar open): hold the test process open while they run.
const keepAlive = setInterval(() => {}, 60_000)
t.teardown(() => clearInterval(keepAlive))

const message = (content: Buffer, fields: Partial<ConsumeMessage['fields']> = {}, properties: Record<string, unknown> = {}): ConsumeMessage =>
  ({
    content,
    fields: { deliveryTag: 1, redelivered: false, exchange: 'orders', routingKey: 'created', consumerTag: 'c', ...fields },
    properties: { headers: {}, ...properties },
  }) as unknown as ConsumeMessage

t.test('messageFrame is the JSON of {op: "message", ...toDelivered()}', async (t) => {
  const cases: [string, ConsumeMessage, boolean][] = [
    ['utf8 body', message(Buffer.from('{"a":1}')), false],
    ['text needing escapes', message(Buffer.from('quote " backslash \\ newline \n tab \t é 😀 \u2028'), { routingKey: 'r"k\\' }), false],
    ['binary body', message(Buffer.from([0xff, 0x00, 0xfe])), false],
    ['base64 forced', message(Buffer.from('plain')), true],
    ['empty body', message(Buffer.alloc(0)), false],
    ['redelivered, properties and headers', message(Buffer.from('x'), { redelivered: true, exchange: '' }, { messageId: 'm-1', correlationId: 'c', contentType: 'text/plain', priority: 3, timestamp: 1700000000, headers: { n: 5, big: 2n ** 60n, raw: Buffer.from([0xff]), nested: { d: new Date(0) }, list: [1, 'a'] } }), false],
    ['plain text at an odd offset', message(Buffer.from(' {"k":1} plain ascii text, long enough for whole words; é ü 😀 \u2028 \u007f'.repeat(9)).subarray(9)), false],
    ['plain text, every length', message(Buffer.from('abcdefg'.repeat(3)).subarray(1, 6)), false],
    ['a quote in the last bytes', message(Buffer.from('x'.repeat(37) + '"')), false],
    ['a control byte in a word', message(Buffer.from('abcd\u0001efgh')), false],
    ['quorum delivery count', message(Buffer.from('x'), { redelivered: true }, { headers: { 'x-delivery-count': 2 } }), false],
  ]
  for (const [name, msg, base64] of cases) {
    const text = messageFrame('p.1.7', 'q"1', msg, base64)
    t.equal(text, JSON.stringify({ op: 'message', ...toDelivered('p.1.7', 'q"1', msg, base64) }), name)
  }
})

t.test('needsNoEscape agrees with JSON.stringify on every byte in every position', async (t) => {
  let mismatches = 0
  for (let c = 0; c < 0x80; c++) {
    for (let len = 1; len <= 9; len++) {
      for (let off = 0; off < 4; off++) {
        for (let at = 0; at < len; at++) {
          const b = Buffer.alloc(len + off, 'a').subarray(off)
          b[at] = c
          const text = b.toString('utf8')
          if (needsNoEscape(b) !== (JSON.stringify(text) === `"${text}"`)) mismatches++
        }
      }
    }
  }
  t.equal(mismatches, 0)
})

t.test('Expiries: one list per length, in order, removed entries never expire', async (t) => {
  const expired: string[] = []
  let done: () => void = () => {}
  const all = new Promise<void>((r) => (done = r))
  const ex = new Expiries<string>((item) => {
    expired.push(item)
    if (expired.length === 4) done()
  })
  const a = ex.add('a', 5)
  const b = ex.add('b', 5)
  ex.add('c', 5)
  ex.add('x', 1)
  ex.add('d', 5)
  t.equal(ex.timers, 2, 'two lengths, two timers, whatever the number of entries')
  t.equal(ex.size, 5)
  ex.remove(b)
  ex.remove(b)
  t.equal(ex.size, 4, 'remove is idempotent')
  await all
  t.same(expired.filter((i) => i !== 'x'), ['a', 'c', 'd'], 'in the order added; b was removed')
  t.ok(expired.includes('x'))
  t.equal(ex.size, 0)
  ex.remove(a)
  t.equal(ex.size, 0, 'removing an expired entry changes nothing')
})

/**
 * Expiries on a clock the test moves: `clock.now` is what the lists read,
 * `expired` what has expired so far, and `next(n)` resolves once n have.
 */
function fakeClockExpiries(start: number) {
  const clock = { now: start }
  const expired: string[] = []
  let waiting: { n: number; resolve: () => void } | undefined
  const ex = new Expiries<string>(
    (item) => {
      expired.push(item)
      if (waiting && expired.length >= waiting.n) waiting.resolve()
    },
    () => clock.now,
  )
  const next = (n: number) => new Promise<void>((resolve) => (waiting = { n, resolve }))
  return { ex, clock, expired, next }
}

t.test('Expiries: a timer that fires before the head is due re-arms; clear stops everything', async (t) => {
  const { ex, clock, expired, next } = fakeClockExpiries(0)
  ex.add('early', 1)
  clock.now = 0.5 // the clock says it is not due yet when the timer fires
  const first = next(1)
  // The timer fires, finds nothing due, and must re-arm: moving the clock on lets the next firing expire it.
  setTimeout(() => (clock.now = 10), 20).unref()
  await first
  t.same(expired, ['early'])
  ex.add('never', 1)
  ex.clear()
  t.equal(ex.size, 0)
  t.equal(ex.timers, 0)
})

t.test('Expiries: a start taken before an await is put in order, and an earlier new head re-arms the timer', async (t) => {
  const { ex, clock, expired, next } = fakeClockExpiries(1_000)
  const start = ex.clock()
  clock.now = 1_040 // an await (a publish's exchange check) later
  ex.add('late', 60) // due 1100
  ex.add('first', 60, start) // due 1060: before the tail, and the new head
  ex.add('middle', 60, 1_010) // due 1070: between the two
  t.equal(ex.timers, 1, 'one length, one timer')
  clock.now = 1_065
  await next(1)
  t.same(expired, ['first'], 'the head started before the await expires first, on a timer re-armed for it (not the 60 ms of the first add)')
  clock.now = 1_200
  await next(3)
  t.same(expired, ['first', 'middle', 'late'], 'due order, not insertion order')
  t.equal(ex.size, 0)
})
