import { PUBLISH_WINDOW, type BenchContext } from '../context.js'
import { closedLoop, type LoadResult } from '../load.js'
import { close, open, OPEN_TIMEOUT_MS } from '../sockets.js'

/**
 * (f) Web-STOMP: STOMP 1.2 frames over a WebSocket to RabbitMQ's own
 * rabbitmq_web_stomp listener. Each SEND asks for a receipt, which RabbitMQ
 * sends only once the broker has confirmed the message.
 */
export async function webStompPublish(ctx: BenchContext, onWindow?: (edge: 'start' | 'end') => void): Promise<LoadResult> {
  if (!ctx.webStompUrl) throw new Error('no Web-STOMP listener')
  const ws = await open(ctx.webStompUrl, ['v12.stomp'])
  const waiting = new Map<string, { resolve: (n: number) => void; reject: (e: Error) => void }>()
  let failure: Error | undefined
  let connected: (() => void) | undefined
  ws.on('message', (data) => {
    for (const frame of data.toString().split('\0')) {
      const text = frame.replace(/^\n+/, '')
      if (text === '') continue
      const command = text.slice(0, text.indexOf('\n'))
      if (command === 'CONNECTED') connected?.()
      else if (command === 'RECEIPT') {
        const id = /\nreceipt-id:([^\n]*)/.exec(text)?.[1]
        const w = id === undefined ? undefined : waiting.get(id)
        if (id !== undefined && w) {
          waiting.delete(id)
          w.resolve(1)
        }
      } else if (command === 'ERROR') {
        failure = new Error(`STOMP ERROR: ${text.slice(0, 300)}`)
        for (const w of waiting.values()) w.reject(failure)
        waiting.clear()
      }
    }
  })
  ws.on('close', () => {
    failure ??= new Error('Web-STOMP socket closed')
    for (const w of waiting.values()) w.reject(failure)
    waiting.clear()
  })
  try {
    await new Promise<void>((resolve, reject) => {
      connected = resolve
      setTimeout(() => reject(failure ?? new Error('no STOMP CONNECTED frame')), OPEN_TIMEOUT_MS).unref()
      ws.send('CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0')
    })
    const head = `SEND\ndestination:/exchange/${ctx.exchange}/${ctx.routingKey}\npersistent:true\ncontent-type:application/octet-stream\ncontent-length:${ctx.body.length}\nreceipt:`
    const tail = `\n\n${ctx.bodyText}\0`
    let seq = 0
    return await closedLoop({
      concurrency: PUBLISH_WINDOW,
      ...ctx.timing,
      op: () =>
        new Promise<number>((resolve, reject) => {
          if (failure) return reject(failure)
          const id = String(++seq)
          waiting.set(id, { resolve, reject })
          ws.send(`${head}${id}${tail}`)
        }),
      ...(onWindow ? { onWindow } : {}),
    })
  } finally {
    await close(ws)
  }
}
