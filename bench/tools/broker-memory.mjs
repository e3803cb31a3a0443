#!/usr/bin/env node
/**
 * The broker's side of the tax: how much broker memory each sidecar costs,
 * with consume.connection "on-demand" (publish-only app), "on-demand" with a
 * consumer, "always" and "shared". Boots a private RabbitMQ node (the test
 * fixture), starts N sidecars as child processes (node dist/main.js) per mode,
 * and reads the node's memory_breakdown (connection_* categories) and
 * erlang:memory(total) before and after. Not part of `npm run bench` (it
 * needs N processes and a quiet broker; about two minutes).
 *
 *   npm run build && tsc -p bench && node bench/tools/broker-memory.mjs [N]
 */
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'

const root = new URL('../../', import.meta.url)
const { startBroker } = await import(new URL('dist-bench/test/fixtures/broker.js', root).href)
const N = Number(process.argv[2] ?? 8)
const QUEUE = 'broker-memory.q'

const broker = await startBroker({})
const children = []
const stopAll = async () => {
  for (const c of children.splice(0)) {
    c.kill('SIGTERM')
    await new Promise((r) => (c.exitCode !== null ? r() : c.once('exit', r)))
  }
}
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')))

async function memory() {
  await broker.ctl('eval', 'erlang:garbage_collect(), [erlang:garbage_collect(P) || P <- erlang:processes()], ok.')
  await sleep(500)
  const total = Number((await broker.ctl('-q', 'eval', 'erlang:memory(total).')).trim())
  const erl = (await broker.ctl('-q', 'eval', 'erlang:memory().')).replace(/\s/g, '')
  const cat = (k) => Number(new RegExp(`\\{${k},(\\d+)\\}`).exec(erl)?.[1] ?? NaN)
  const out = await broker.ctl('-q', 'eval', 'rabbit_vm:memory().')
  const pick = (k) => Number(new RegExp(`\\{${k},(\\d+)\\}`).exec(out.replace(/\s/g, ''))?.[1] ?? NaN)
  const conns = pick('connection_readers') + pick('connection_writers') + pick('connection_channels') + pick('connection_other')
  return { total, conns, processes: cat('processes'), binary: cat('binary'), ets: cat('ets'), system: cat('system') }
}

async function startSidecar(mode) {
  const args = [new URL('dist/main.js', root).pathname, '--api.port', '0', '--ops.port', '0', '--ops.host', '127.0.0.1', '--log.level', 'info', '--consume.connection', mode, '--consume.pullIdleMs', '600000', '--consume.connectionIdleMs', '600000']
  const child = spawn(process.execPath, args, { env: { PATH: process.env.PATH, AMQP_URL: broker.url }, stdio: ['ignore', 'pipe', 'inherit'] })
  children.push(child)
  const api = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout })
    lines.on('line', (l) => {
      try {
        const rec = JSON.parse(l)
        if (rec.msg === 'amqp-sidecar listening') resolve(`http://127.0.0.1:${rec.api.port}`)
      } catch {}
    })
    child.once('exit', () => reject(new Error('sidecar exited')))
  })
  for (const until = Date.now() + 30_000; Date.now() < until; await sleep(100)) {
    const s = await (await fetch(`${api}/v1/status`)).json()
    if (s.upstream.state === 'connected') return api
  }
  throw new Error('sidecar did not connect')
}

try {
  const admin = await (await import('amqplib')).connect(broker.url)
  const ch = await admin.createChannel()
  await ch.assertQueue(QUEUE, { durable: false })
  await admin.close()
  const base = await memory()
  const rows = []
  for (const [mode, consume] of [['on-demand', false], ['on-demand', true], ['always', false], ['shared', true]]) {
    const apis = []
    for (let i = 0; i < N; i++) apis.push(await startSidecar(mode))
    if (consume) await Promise.all(apis.map((a) => fetch(`${a}/v1/queues/${QUEUE}/pull?max=1&waitMs=1000`, { method: 'POST' }).then((r) => r.arrayBuffer())))
    // Publish a message through each, so each publish channel exists (the publisher opens it on connect anyway).
    await Promise.all(apis.map((a) => fetch(`${a}/v1/publish/amq.default/${QUEUE}`, { method: 'POST', body: 'x' }).then((r) => r.arrayBuffer())))
    await sleep(2000)
    const conns = (await broker.listConnections()).length
    const m = await memory()
    const row = { mode: `${mode}${consume ? ' + consumer' : ''}`, sidecars: N, connections: conns, perSidecarConnections: conns / N, perSidecarKiB: Math.round((m.total - base.total) / N / 1024), perSidecarConnectionProcessesKiB: Math.round((m.conns - base.conns) / N / 1024), perSidecarErlangKiB: Object.fromEntries(['processes', 'binary', 'ets', 'system'].map((k) => [k, Math.round((m[k] - base[k]) / N / 1024)])) }
    rows.push(row)
    process.stdout.write(`${JSON.stringify(row)}\n`)
    await stopAll()
    await ch.purgeQueue?.(QUEUE).catch?.(() => {})
    await sleep(2000)
  }
  process.stdout.write(`\n| consume.connection | connections per sidecar | broker memory per sidecar (KiB, total) | of which connection processes (KiB) |\n|---|---:|---:|---:|\n`)
  for (const r of rows) process.stdout.write(`| ${r.mode} | ${r.perSidecarConnections} | ${r.perSidecarKiB} | ${r.perSidecarConnectionProcessesKiB} |\n`)
} finally {
  await stopAll()
  await broker.stop()
}
