// The broker fixture's options: TLS, plugins on free ports, and clear failures.
import t from 'tap'
import { readFileSync } from 'node:fs'
import amqplib from 'amqplib'
import { brokerFor, startBroker } from '../fixtures/broker.js'
import { acceptsConnections } from '../fixtures/probes.js'
import { pkiFor } from '../fixtures/tls.js'

t.test('an unknown plugin is rejected before anything boots', async (t) => {
  await t.rejects(startBroker({ plugins: ['rabbitmq_no_such_plugin'] }), /unknown RabbitMQ plugin 'rabbitmq_no_such_plugin'/)
})

t.test('a node that dies at boot fails fast, with its log', async (t) => {
  const started = Date.now()
  await t.rejects(startBroker({ extraConfig: ['no_such_setting = 1'] }), /exited .* while booting[\s\S]*no_such_setting/)
  t.ok(Date.now() - started < 20_000, `failed in ${Date.now() - started} ms, not at the boot deadline`)
})

t.test('TLS, management and web_stomp on private ports', async (t) => {
  const pki = await pkiFor(t)
  const tls = { caFile: pki.caFile, certFile: pki.serverCertFile, keyFile: pki.serverKeyFile }
  const bootStarted = Date.now()
  const broker = await brokerFor(t, { tls, plugins: ['rabbitmq_management', 'rabbitmq_web_stomp'] })
  t.comment(`broker with TLS + 2 plugins booted in ${Date.now() - bootStarted} ms`)

  const defaults = [5671, 5672, 15672, 15674, 61613]
  const ports = [broker.port, broker.tlsPort, broker.managementPort, broker.webStompPort, broker.pluginPorts['stomp']]
  t.ok(ports.every((p) => p !== undefined && !defaults.includes(p)), `private ports ${ports.join(', ')}`)

  const conn = await amqplib.connect(broker.tlsUrl ?? '', { ca: [readFileSync(pki.caFile)] })
  t.teardown(() => conn.close().catch(() => {}))
  await conn.createChannel()
  t.pass('amqps connection verified against the test CA')

  const res = await fetch(`http://127.0.0.1:${broker.managementPort}/api/overview`, {
    headers: { authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
  })
  t.equal(res.status, 200)
  t.equal(((await res.json()) as { node?: string }).node, broker.nodeName)
  t.ok(await acceptsConnections(broker.webStompPort ?? 0), 'web_stomp listens')
})
