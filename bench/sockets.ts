/** WebSocket helpers shared by the sidecar and Web-STOMP cases. */
import WebSocket from 'ws'

export const OPEN_TIMEOUT_MS = 10_000

export async function open(url: string, protocols?: string[]): Promise<WebSocket> {
  const ws = new WebSocket(url, protocols, { perMessageDeflate: false, handshakeTimeout: OPEN_TIMEOUT_MS })
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('unexpected-response', (_req, res) => reject(new Error(`WebSocket upgrade refused: HTTP ${res.statusCode}`)))
    ws.once('error', reject)
  })
  return ws
}

export async function close(ws: WebSocket): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()))
  ws.close()
  await closed
}
