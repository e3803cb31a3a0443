/**
 * A rotated API token (api.tokenFile rewritten) ends the WebSocket sessions the
 * old token opened: each is closed with code 4401 soon after the rotation, with
 * no request needed to notice it, and a socket opened with the new token stays.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { WS_CLOSE_TOKEN_ROTATED } from '../src/http/api.js'
import { startSidecar } from './fixtures/sidecar.js'
import { waitForEvent } from './fixtures/wait.js'

const newToken = () => randomBytes(24).toString('hex')

async function open(t: { teardown(fn: () => void): void }, url: string, token: string): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } })
  t.teardown(() => ws.terminate())
  await waitForEvent(ws, 'open', { timeoutMs: 20_000, what: 'the WebSocket to open' })
  return ws
}

t.test('rotating api.tokenFile closes the WebSockets opened with the old token (4401)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'token-rotation-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const tokenFile = join(dir, 'token')
  const oldToken = newToken()
  writeFileSync(tokenFile, oldToken)
  const s = await startSidecar(t, { api: { tokenFile }, log: { level: 'info' } })
  const wsUrl = `${s.api.replace(/^http/, 'ws')}/v1/ws`

  const before = await open(t, wsUrl, oldToken)
  const closed = waitForEvent<[number, Buffer]>(before, 'close', { timeoutMs: 30_000, what: 'the old-token WebSocket to be closed' })
  const rotated = newToken()
  writeFileSync(tokenFile, rotated)
  // No request is made: the sidecar notices the rotation by itself.
  const [code, reason] = await closed
  t.equal(code, WS_CLOSE_TOKEN_ROTATED, 'close code 4401')
  t.equal(code, 4401)
  t.equal(reason.toString(), 'API token rotated')

  const after = await open(t, wsUrl, rotated)
  const refused = await fetch(`${s.api}/v1/status`, { headers: { authorization: `Bearer ${oldToken}` } })
  t.equal(refused.status, 401, 'the old token is refused')
  t.equal(after.readyState, WebSocket.OPEN, 'a socket opened with the new token stays open')
  t.ok(s.logs.some((l) => l.includes('closed the WebSockets opened with the previous API token')), 'logged')
  t.notOk(s.logs.some((l) => l.includes(oldToken) || l.includes(rotated)), 'neither token is logged')
})
