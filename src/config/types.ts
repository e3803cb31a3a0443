/** The validated, frozen configuration every module receives. Only src/config imports convict. */

export interface ExchangeDecl {
  name: string
  type: 'direct' | 'topic' | 'fanout' | 'headers' | string
  durable?: boolean
  autoDelete?: boolean
  internal?: boolean
  arguments?: Record<string, unknown>
}

export interface QueueDecl {
  name: string
  durable?: boolean
  exclusive?: boolean
  autoDelete?: boolean
  arguments?: Record<string, unknown>
}

export interface BindingDecl {
  exchange: string
  queue: string
  routingKey?: string
  arguments?: Record<string, unknown>
}

export interface PushSubscription {
  queue: string
  url: string
  concurrency: number
  timeoutMs: number
  retry: { maxAttempts: number; initialDelayMs: number; maxDelayMs: number }
  onGiveUp: 'dead-letter' | 'requeue'
}

export interface Config {
  amqp: {
    urls: string[]
    urlFile: string | null
    heartbeatSeconds: number
    adaptiveHeartbeat: { enabled: boolean; floorSeconds: number }
    keepAliveDelayMs: number
    unansweredWriteMs: number
    connectTimeoutMs: number
    reconnect: { initialDelayMs: number; maxDelayMs: number }
    connectionName: string
    tls: { caFile: string | null; certFile: string | null; keyFile: string | null; rejectUnauthorized: boolean }
  }
  api: {
    host: string
    port: number
    tokenFile: string | null
    bodyLimitBytes: number
    allowedHosts: string[]
    maxHeaderBytes: number
    headersTimeoutMs: number
    requestTimeoutMs: number
    keepAliveTimeoutMs: number
    maxConnections: number
  }
  ops: { host: string; port: number }
  publish: {
    timeoutMs: number
    maxBufferedMessages: number
    maxBufferedBytes: number
    mandatory: boolean
    persistent: boolean
    allowedExchanges: string[] | null
    nackRetryMs: number
    deadLetter: { exchange: string; routingKey: string } | null
    spool: { dir: string | null; maxBytes: number }
  }
  consume: {
    leaseMs: number
    maxLeaseMs: number
    defaultPrefetch: number
    allowedQueues: string[] | null
    push: PushSubscription[]
    pullIdleMs: number
    pushTokenFile: string | null
    connection: 'on-demand' | 'always' | 'shared'
    connectionIdleMs: number
  }
  rpc: { maxOutstanding: number }
  topology: { exchanges: ExchangeDecl[]; queues: QueueDecl[]; bindings: BindingDecl[] }
  shutdown: { drainMs: number }
  log: { level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' }
}

/** Deeply readonly view, so nothing downstream can mutate the validated config. */
export type Frozen<T> = T extends (infer U)[] ? readonly Frozen<U>[] : T extends object ? { readonly [K in keyof T]: Frozen<T[K]> } : T

export type SidecarConfig = Frozen<Config>
