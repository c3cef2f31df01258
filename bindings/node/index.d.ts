// Type declarations for rcluster: node:cluster's API on the rcluster library.
/// <reference types="node" />

import { EventEmitter } from 'events';
import { Socket } from 'net';

declare namespace rcluster {
  /** A message: Buffers (and any TypedArray/ArrayBuffer) travel raw, strings as UTF-8, anything
   * else as JSON. The receiver gets a Buffer, a string, or the parsed JSON value back. */
  type Message = unknown;

  /** An fd to pass with a message, or an object holding one (net.Socket, net.Server, FileHandle). */
  type Handle = number | { fd: number } | { _handle: { fd: number } };

  interface ListenSpec {
    /** IPv4/IPv6 literal or host name (resolved once). Default '0.0.0.0'. */
    host?: string;
    /** 0 picks a free port (read it with cluster.port(i)). */
    port?: number;
    /** A Unix socket path instead of host/port. */
    path?: string;
    /** chmod bits of the Unix socket file (e.g. 0o660). */
    mode?: number;
    /** The sockets systemd passed (LISTEN_FDS). */
    systemd?: boolean;
  }

  type Policy = 'rr' | 'round_robin' | 'least' | 'least_connections' | 'sticky' | 'shared' | 'none' | 'reuseport' | number;

  interface ClusterSettings {
    /** Script the workers run (default process.argv[1]). */
    exec?: string;
    /** Its arguments (default process.argv.slice(2)). */
    args?: readonly string[];
    /** Node flags for the workers (default process.execArgv). */
    execArgv?: readonly string[];
    /** Workers' working directory. */
    cwd?: string;
    /** Added to the workers' environment (which is the primary's). */
    env?: Record<string, string | number | boolean | undefined>;
    /** Workers' stdin/stdout/stderr on /dev/null (default false: inherited). */
    silent?: boolean;
    /** What to listen on: a port, "host:port", a Unix path, "systemd", or specs. */
    listen?: number | string | ListenSpec | Array<number | string | ListenSpec>;
    /** How connections reach workers (default 'rr'). */
    policy?: Policy;
    /** Start the cluster now with this many workers (0: one per CPU). */
    workers?: number;
    /** Grace period (ms) of a graceful stop before what is left is killed (default 30000). */
    grace?: number;
    /** Handle SIGTERM/SIGINT (graceful stop, then exit 0) and SIGHUP (reload). Default true. */
    signals?: boolean;
    /** Replace workers that die unasked (default true). */
    restart?: boolean;
    /** A worker that was ready and lived this long (ms, default 1000) is replaced at once; one that dies sooner waits the backoff. */
    minUptime?: number;
    /** Restart backoff in ms for workers that die young (defaults 100, 15000, 30000). */
    backoff?: { min: number; max: number; reset: number } | [number, number, number];
    /** Crash-loop detection: young deaths (before READY, or by their own exit or crash within minUptime of it) within a window (defaults 5 in 10000 ms). */
    crashLoop?: { deaths: number; window: number } | [number, number];
    /** A worker not ready this long after it started is killed (ms, 0: no limit; default 30000). */
    startupTimeout?: number;
    /** Heartbeat interval and timeout in ms (defaults 1000, 10000; 0 turns it off). */
    heartbeat?: { interval: number; timeout: number } | [number, number];
    /** Recycle a worker after this many connections (plus jitter). */
    maxRequests?: number | { requests: number; jitter: number } | [number, number];
    /** READY only when the worker calls cluster.worker.ready(). */
    manualReady?: boolean;
    /** The primary's thread under SCHED_BATCH while it hands off connections (default: then). */
    schedBatch?: boolean;
    /** Largest message in bytes (default 64 MiB). */
    maxMessage?: number;
    /** Send queue bounds (defaults 8 MiB, 4096 messages). */
    sendQueue?: { bytes: number; messages: number } | [number, number];
    /** Drop workers to this user / group after binding. */
    uid?: number;
    gid?: number;
    groups?: readonly number[];
  }

  interface Address {
    address: string | null;
    port: number;
    addressType: 4 | 6 | -1 | null;
  }

  interface WorkerInfo {
    id: number;
    pid: number;
    state: number;
    connections: number;
    messagesIn: number;
    messagesOut: number;
    restarts: number;
    startedAt: number;
  }

  /** A worker, as the primary sees it. */
  interface Worker extends EventEmitter {
    readonly id: number;
    state: 'none' | 'online' | 'listening' | 'disconnected' | 'dead';
    exitedAfterDisconnect: boolean | undefined;
    readonly process: {
      readonly pid: number;
      readonly connected: boolean;
      exitCode: number | null;
      signalCode: NodeJS.Signals | string | null;
      kill(signal?: NodeJS.Signals | number): void;
    };
    /** Throws (or, with a callback, passes to it and returns false): a TypeError for a message
     * with no JSON form or a bad handle, CLUSTER_E_SYS for an fd that is not open,
     * CLUSTER_E_CLOSED once this worker's run has ended. A callback that is not a function
     * is a TypeError. */
    send(message: Message, callback?: (err: Error | null) => void): boolean;
    send(message: Message, handle: Handle | undefined, callback?: (err: Error | null) => void): boolean;
    sendRaw(bytes: string | ArrayBufferView | ArrayBuffer, handle?: Handle, callback?: (err: Error | null) => void): boolean;
    /** Does nothing once the worker is dead. */
    kill(signal?: NodeJS.Signals | number): void;
    destroy(signal?: NodeJS.Signals | number): void;
    disconnect(): this;
    isConnected(): boolean;
    isDead(): boolean;
    info(): WorkerInfo;

    on(event: 'online' | 'ready' | 'disconnect' | 'drain', listener: () => void): this;
    on(event: 'listening', listener: (address: Address | null) => void): this;
    on(event: 'message', listener: (message: any, fd: number | undefined) => void): this;
    on(event: 'exit', listener: (code: number | null, signal: string | null) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }

  interface ConnectionInfo {
    /** Index of the listener that accepted it. */
    listener: number;
    remoteAddress?: string;
    remotePort?: number;
    remoteFamily?: 'IPv4' | 'IPv6' | 'unix';
  }

  /** This process, in a worker (cluster.worker). */
  interface ClusterWorker extends EventEmitter {
    readonly id: number;
    readonly process: NodeJS.Process;
    state: 'online' | 'disconnecting' | 'disconnected';
    exitedAfterDisconnect: boolean | undefined;
    /** To the primary. */
    send(message: Message, callback?: (err: Error | null) => void): boolean;
    send(message: Message, handle: Handle | undefined, callback?: (err: Error | null) => void): boolean;
    /** To worker `id` (0: the primary), relayed by the primary. */
    sendTo(id: number, message: Message, callback?: (err: Error | null) => void): boolean;
    sendTo(id: number, message: Message, handle: Handle | undefined, callback?: (err: Error | null) => void): boolean;
    sendRaw(id: number, bytes: string | ArrayBufferView | ArrayBuffer, handle?: Handle, callback?: (err: Error | null) => void): boolean;
    /** To every other worker. */
    broadcast(message: Message): void;
    /** READY, with setupPrimary({ manualReady: true }). */
    ready(): void;
    /** Leave on purpose: held connections finish, nothing new comes; not replaced. */
    disconnect(): this;
    isConnected(): boolean;
    isDead(): boolean;

    /** A connection to serve: hand it to a server with server.emit('connection', socket). */
    on(event: 'connection', listener: (socket: Socket, info: ConnectionInfo) => void): this;
    /** senderId: 0 for the primary, else the sending worker's id. */
    on(event: 'message', listener: (message: any, senderId: number, fd: number | undefined) => void): this;
    on(event: 'shutdown' | 'disconnect' | 'drain', listener: () => void): this;
    on(event: 'error', listener: (err: Error & { code: string; workerId?: number }) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }

  interface Stats {
    workers: Array<{
      id: number;
      pid: number;
      slot: number;
      state: string;
      connections: number;
      in_flight: number;
      messages_in: number;
      messages_out: number;
      restarts: number;
      uptime_ms: number;
    }>;
    total: {
      workers: number;
      connections: number;
      messages_in: number;
      messages_out: number;
      restarts: number;
      dropped: number;
      waiting: number;
    };
    uptime_ms: number;
  }

  /** Errors from the library: code is the CLUSTER_E_* name, errno its number. Misuse (README
   * "Misuse"): bad argument types and ranges are TypeErrors with code 'ERR_INVALID_ARG_TYPE';
   * a primary call in a worker is 'CLUSTER_E_ROLE'; a second start 'CLUSTER_E_STATE'; a call
   * after the end (or on a Worker of an ended run) 'CLUSTER_E_CLOSED'; an fd that is not open
   * 'CLUSTER_E_SYS'. */
  interface ClusterError extends Error {
    code: string;
    errno?: number;
  }

  interface Cluster extends EventEmitter {
    readonly isPrimary: boolean;
    readonly isMaster: boolean;
    readonly isWorker: boolean;
    readonly constants: Record<string, number>;
    /** Primary: the workers by id. */
    readonly workers?: Record<number, Worker>;
    /** Worker: this process's side. */
    readonly worker?: ClusterWorker;
    readonly settings?: ClusterSettings;
    /** Primary: whether a cluster runtime is running. */
    readonly running?: boolean;

    /** Checks every setting (TypeError, settings unchanged); `workers` while running:
     * CLUSTER_E_STATE. In a worker, this and every primary call below: CLUSTER_E_ROLE. */
    setupPrimary(settings?: ClusterSettings): void;
    setupMaster(settings?: ClusterSettings): void;
    /** Starts one more worker (the first call starts the cluster). While the cluster stops:
     * CLUSTER_E_STATE. */
    fork(env?: undefined): Worker;
    /** Graceful stop of every worker (settings.grace); callback once all are gone. */
    disconnect(callback?: (err?: Error) => void): void;
    /** Not running: only calls back (next tick). */
    shutdown(graceMs?: number, callback?: (err?: Error) => void): void;
    reload(callback?: (err: Error | null) => void): void;
    scale(n: number): void;
    /** Before the start: CLUSTER_E_STATE; after the end (also stats, broadcast, reload, scale):
     * CLUSTER_E_CLOSED. */
    port(listener?: number): number;
    stats(): Stats;
    broadcast(message: Message): number;
    setLogger(fn: ((level: number, target: string, message: string) => void) | null | undefined): void;
    encodeMessage(value: Message): Buffer;
    decodeMessage(buf: Buffer): any;
    Worker?: new (id: number, pid: number) => Worker;

    on(event: 'fork' | 'online' | 'ready' | 'disconnect' | 'drain', listener: (worker: Worker) => void): this;
    on(event: 'listening', listener: (worker: Worker, address: Address | null) => void): this;
    on(event: 'message', listener: (worker: Worker, message: any, fd: number | undefined) => void): this;
    on(event: 'exit', listener: (worker: Worker, code: number | null, signal: string | null) => void): this;
    on(event: 'error', listener: (err: ClusterError & { workerId?: number }) => void): this;
    on(event: 'reloaded', listener: (ok: boolean, reason: string) => void): this;
    on(event: 'slotFailed', listener: (workerId: number, reason: string) => void): this;
    on(event: 'shutdown', listener: () => void): this;
    on(event: 'setup', listener: (settings: ClusterSettings) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;
  }
}

declare const rcluster: rcluster.Cluster;
export = rcluster;
