'use strict';
// The primary's side of the cluster object: settings, Worker objects, and the events of the
// library turned into node:cluster's.

const EventEmitter = require('events');
const path = require('path');

const codec = require('./codec');
const {
  invalidArg,
  clusterError,
  checkCallback,
  checkUint,
  signalNumber,
  signalName,
  toFd,
  withCallback,
  rethrowLater,
  report,
} = require('./util');

const kConnected = Symbol('connected');
const kDead = Symbol('dead');
const kRun = Symbol('run');

const POLICIES = {
  rr: 'CLUSTER_POLICY_ROUND_ROBIN',
  round_robin: 'CLUSTER_POLICY_ROUND_ROBIN',
  roundrobin: 'CLUSTER_POLICY_ROUND_ROBIN',
  least: 'CLUSTER_POLICY_LEAST_CONNECTIONS',
  least_connections: 'CLUSTER_POLICY_LEAST_CONNECTIONS',
  sticky: 'CLUSTER_POLICY_STICKY',
  shared: 'CLUSTER_POLICY_SHARED',
  none: 'CLUSTER_POLICY_SHARED', // node:cluster's SCHED_NONE: the OS balances
  reuseport: 'CLUSTER_POLICY_REUSEPORT',
};

function policyNumber(K, policy) {
  if (Number.isInteger(policy)) return policy;
  const name = typeof policy === 'string' ? POLICIES[policy.toLowerCase().replace(/-/g, '_')] : undefined;
  if (!name) throw invalidArg('policy', `one of ${Object.keys(POLICIES).join(', ')}`);
  return K[name];
}

/** Listeners as [{host, port} | {path, mode} | {systemd: true}]. */
function normalizeListen(listen) {
  if (listen === undefined || listen === null) return [];
  const list = Array.isArray(listen) ? listen : [listen];
  return list.map((l) => {
    if (Number.isInteger(l)) return { host: '0.0.0.0', port: l };
    if (typeof l === 'string') {
      if (l === 'systemd') return { systemd: true };
      if (l.includes('/')) return { path: l };
      const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(l);
      if (m) return { host: m[1] || '0.0.0.0', port: Number(m[2]) };
      throw invalidArg('listen', `"host:port", a port, a Unix socket path or "systemd" (got ${JSON.stringify(l)})`);
    }
    if (l && typeof l === 'object') {
      if (l.systemd) return { systemd: true };
      if (typeof l.path === 'string') return { path: l.path, mode: l.mode };
      const port = l.port === undefined ? 0 : l.port;
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw invalidArg('listen[].port', 'an integer 0..65535');
      return { host: l.host || '0.0.0.0', port };
    }
    throw invalidArg('listen', 'a port, "host:port", {host, port}, {path} or an array of them');
  });
}

/** Every setting checked, so that a bad one is refused by setupPrimary() itself (and never
 * poisons a later fork(), disconnect() or signal handler). Throws TypeError
 * ERR_INVALID_ARG_TYPE. */
function validateSettings(s) {
  normalizeListen(s.listen);
  const str = (v, name) => {
    if (typeof v !== 'string' || v.length === 0 || v.includes('\0')) throw invalidArg(name, 'a non-empty string without NUL');
  };
  const strings = (v, name) => {
    if (!Array.isArray(v) || !v.every((a) => typeof a === 'string' && !a.includes('\0'))) throw invalidArg(name, 'an array of strings');
  };
  if (s.exec !== undefined) str(s.exec, 'settings.exec');
  if (s.args !== undefined) strings(s.args, 'settings.args');
  if (s.execArgv !== undefined) strings(s.execArgv, 'settings.execArgv');
  if (s.cwd !== undefined) str(s.cwd, 'settings.cwd');
  if (s.env !== undefined) {
    if (!s.env || typeof s.env !== 'object' || Array.isArray(s.env)) throw invalidArg('settings.env', 'an object of strings');
    for (const [k, v] of Object.entries(s.env)) {
      if (k === '' || k.includes('=') || k.includes('\0') || String(v).includes('\0')) {
        throw invalidArg('settings.env', `names without '=' and values without NUL (got ${JSON.stringify(k)})`);
      }
    }
  }
  if (s.grace !== undefined) checkUint(s.grace, 'settings.grace');
  if (s.startupTimeout !== undefined) checkUint(s.startupTimeout, 'settings.startupTimeout');
  if (s.minUptime !== undefined) checkUint(s.minUptime, 'settings.minUptime');
  if (s.maxMessage !== undefined) checkUint(s.maxMessage, 'settings.maxMessage', Number.MAX_SAFE_INTEGER);
  if (s.uid !== undefined) checkUint(s.uid, 'settings.uid');
  if (s.gid !== undefined) checkUint(s.gid, 'settings.gid');
  if (s.groups !== undefined) {
    if (!Array.isArray(s.groups)) throw invalidArg('settings.groups', 'an array of group ids');
    s.groups.forEach((g) => checkUint(g, 'settings.groups[]'));
  }
  if (s.sendQueue !== undefined) numbers(s.sendQueue, ['bytes', 'messages'], 'settings.sendQueue');
  if (s.backoff !== undefined) numbers(s.backoff, ['min', 'max', 'reset'], 'settings.backoff');
  if (s.crashLoop !== undefined) numbers(s.crashLoop, ['deaths', 'window'], 'settings.crashLoop');
  if (s.heartbeat !== undefined) numbers(s.heartbeat, ['interval', 'timeout'], 'settings.heartbeat');
  if (s.maxRequests !== undefined && !Number.isInteger(s.maxRequests)) numbers(s.maxRequests, ['requests', 'jitter'], 'settings.maxRequests');
  if (Number.isInteger(s.maxRequests)) checkUint(s.maxRequests, 'settings.maxRequests', Number.MAX_SAFE_INTEGER);
}

/** Two or three numbers from an array or an object with these keys. */
function numbers(value, keys, name) {
  const arr = Array.isArray(value) ? value : keys.map((k) => value && value[k]);
  if (arr.length !== keys.length || !arr.every((n) => Number.isInteger(n) && n >= 0)) {
    throw invalidArg(name, `{ ${keys.join(', ')} } or [${keys.join(', ')}] of non-negative integers`);
  }
  return arr;
}

module.exports = function installPrimary(cluster, native) {
  const K = native.constants;

  const settings = {};
  cluster.settings = settings;
  cluster.workers = {};

  let running = false; // a runtime is started and not yet finished
  let runId = 0; // which run (a Worker object belongs to one)
  let stopping = false; // a graceful stop is under way
  let exitWhenStopped = false; // a signal asked for the stop: exit(0) at the end
  let termSignals = 0;
  let respawnsPending = 0; // unasked deaths the library will replace (keep the process alive)
  let listeners = []; // the normalized listeners of the running cluster
  const stopCallbacks = [];
  const reloadCallbacks = [];

  // ---- Worker objects -------------------------------------------------------------------

  class Worker extends EventEmitter {
    constructor(id, pid) {
      super();
      const worker = this;
      /** Worker id (>= 1, never reused while the cluster runs). */
      this.id = id;
      /** 'none' | 'online' | 'listening' | 'disconnected' | 'dead' (as node:cluster). */
      this.state = 'none';
      /** true once it was asked to stop (disconnect, kill, shutdown) rather than dying. */
      this.exitedAfterDisconnect = undefined;
      /** A small stand-in for node:cluster's ChildProcess. */
      this.process = {
        pid,
        exitCode: null,
        signalCode: null,
        get connected() {
          return worker[kConnected];
        },
        kill: (signal) => worker.kill(signal),
      };
      this[kConnected] = true;
      this[kDead] = false;
      this[kRun] = runId;
    }

    /** CLUSTER_E_CLOSED once the run this worker belonged to has ended: its id may belong to
     * a worker of the next run by then, which must not get what was meant for this one. */
    checkRun() {
      if (this[kRun] !== runId || !running) {
        throw clusterError('CLUSTER_E_CLOSED', K.CLUSTER_E_CLOSED, `rcluster: worker ${this.id} belonged to a cluster that has stopped`);
      }
    }

    /** Sends a message (Buffer, string, or JSON value), optionally with an fd to pass. */
    send(message, handle, callback) {
      // The common case (a string or a Buffer, no fd, no callback) in one native call.
      const tag = handle === undefined && callback === undefined ? codec.plainTag(message) : 0;
      if (tag !== 0) {
        this.checkRun();
        native.send(this.id, tag, message, undefined);
        return true;
      }
      if (typeof handle === 'function') [handle, callback] = [undefined, handle];
      return withCallback(() => {
        const [tag, payload] = codec.encode(message);
        const fd = toFd(handle);
        this.checkRun();
        native.send(this.id, tag, payload, fd);
      }, callback);
    }

    /** Sends bytes as they are, with no type tag (for C or Python workers). */
    sendRaw(bytes, handle, callback) {
      if (typeof handle === 'function') [handle, callback] = [undefined, handle];
      return withCallback(() => {
        const fd = toFd(handle);
        this.checkRun();
        native.send(this.id, codec.RAW, bytes, fd);
      }, callback);
    }

    /** Sends `signal` (default SIGTERM) to the worker; it is not replaced. */
    kill(signal = 'SIGTERM') {
      if (this[kDead]) return;
      const num = signalNumber(signal);
      if (num !== 0) this.exitedAfterDisconnect = true;
      try {
        native.kill(this.id, num);
      } catch (err) {
        if (err.code !== 'CLUSTER_E_NOWORKER') throw err;
      }
    }

    destroy(signal) {
      this.kill(signal);
    }

    /** Graceful stop: it finishes the connections it holds, then exits; it is not replaced. */
    disconnect() {
      if (this[kDead]) return this;
      this.exitedAfterDisconnect = true;
      try {
        native.disconnect(this.id);
      } catch (err) {
        if (err.code !== 'CLUSTER_E_NOWORKER' && err.code !== 'CLUSTER_E_CLOSED') throw err;
      }
      return this;
    }

    isConnected() {
      return this[kConnected];
    }

    isDead() {
      return this[kDead];
    }

    /** A snapshot from the library: { id, pid, state, connections, messagesIn, ... }. */
    info() {
      this.checkRun();
      return native.workerInfo(this.id);
    }
  }
  cluster.Worker = Worker;

  function ensureWorker(id, pid) {
    let w = cluster.workers[id];
    if (!w) {
      if (!pid) {
        try {
          pid = native.workerInfo(id).pid;
        } catch {
          pid = 0;
        }
      }
      w = new Worker(id, pid);
      cluster.workers[id] = w;
    }
    return w;
  }

  // ---- Starting ---------------------------------------------------------------------------

  function buildOps(workers) {
    const s = settings;
    const exec = s.exec === undefined ? process.argv[1] : s.exec;
    if (!exec) throw invalidArg('settings.exec', 'the script workers run (no process.argv[1] here)');
    const execArgv = s.execArgv === undefined ? process.execArgv : s.execArgv;
    const args = s.args === undefined ? process.argv.slice(2) : s.args;
    if (!Array.isArray(execArgv) || !Array.isArray(args)) throw invalidArg('settings.args/execArgv', 'arrays of strings');
    // EXEC mode only: fork(2) is unsafe in a V8 process. The worker runs the same Node with
    // the same flags on the script, and knows it is a worker from its environment.
    const argv = [process.execPath, ...execArgv, path.resolve(String(exec)), ...args].map(String);
    const ops = [
      ['mode', K.CLUSTER_MODE_EXEC],
      ['exec', process.execPath, argv],
      ['signals', false], // the host's own handlers (process.on) drive shutdown and reload
      ['workers', workers],
    ];
    if (s.policy !== undefined) ops.push(['policy', policyNumber(K, s.policy)]);
    for (const l of listeners) {
      if (l.systemd) ops.push(['listen_systemd']);
      else if (l.path !== undefined) ops.push(['listen_unix', l.path, l.mode]);
      else ops.push(['listen_tcp', l.host, l.port]);
    }
    if (s.grace !== undefined) ops.push(['grace', s.grace]);
    if (s.cwd !== undefined) ops.push(['cwd', String(s.cwd)]);
    if (s.env !== undefined) {
      if (!s.env || typeof s.env !== 'object') throw invalidArg('settings.env', 'an object of strings');
      for (const [k, v] of Object.entries(s.env)) if (v !== undefined) ops.push(['env', `${k}=${v}`]);
    }
    if (s.silent !== undefined) ops.push(['silent', Boolean(s.silent)]);
    if (s.maxMessage !== undefined) ops.push(['max_message', s.maxMessage]);
    if (s.sendQueue !== undefined) ops.push(['send_queue', ...numbers(s.sendQueue, ['bytes', 'messages'], 'settings.sendQueue')]);
    if (s.manualReady !== undefined) ops.push(['manual_ready', Boolean(s.manualReady)]);
    if (s.schedBatch !== undefined) ops.push(['sched_batch', Boolean(s.schedBatch)]);
    if (s.restart !== undefined) ops.push(['restart', Boolean(s.restart)]);
    if (s.backoff !== undefined) ops.push(['backoff', ...numbers(s.backoff, ['min', 'max', 'reset'], 'settings.backoff')]);
    if (s.crashLoop !== undefined) ops.push(['crash_loop', ...numbers(s.crashLoop, ['deaths', 'window'], 'settings.crashLoop')]);
    if (s.startupTimeout !== undefined) ops.push(['startup_timeout', s.startupTimeout]);
    if (s.minUptime !== undefined) ops.push(['min_uptime', s.minUptime]);
    if (s.heartbeat !== undefined) ops.push(['heartbeat', ...numbers(s.heartbeat, ['interval', 'timeout'], 'settings.heartbeat')]);
    if (s.maxRequests !== undefined) {
      const mr = Number.isInteger(s.maxRequests) ? [s.maxRequests, 0] : numbers(s.maxRequests, ['requests', 'jitter'], 'settings.maxRequests');
      ops.push(['max_requests', ...mr]);
    }
    if (s.uid !== undefined || s.gid !== undefined) ops.push(['user', s.uid, s.gid === undefined ? s.uid : s.gid]);
    if (s.groups !== undefined) ops.push(['groups', s.groups]);
    return ops;
  }

  function start(workers) {
    listeners = normalizeListen(settings.listen);
    const ops = buildOps(workers);
    native.primaryStart(ops);
    runId += 1;
    running = true;
    stopping = false;
    exitWhenStopped = false;
    termSignals = 0;
    respawnsPending = 0;
    installSignals();
    for (const id of native.workers()) ensureWorker(id);
    updateRef();
  }

  // ---- Keeping the process alive ---------------------------------------------------------
  // Like node:cluster, the primary lives while it has workers (or is stopping them, or the
  // library is about to replace one); with none and nothing pending, a finished program exits.

  function updateRef() {
    if (running) native.setRef(stopping || respawnsPending > 0 || Object.keys(cluster.workers).length > 0);
  }

  // ---- Signals: SIGTERM/SIGINT stop gracefully then exit(0); SIGHUP reloads ---------------

  let signalsInstalled = false;
  function onStopSignal() {
    if (!running) return;
    termSignals += 1;
    exitWhenStopped = true;
    stopping = true;
    // A second signal: stop now (kill what is left), still exiting 0 once done.
    native.shutdown(termSignals > 1 ? 0 : graceMs());
    updateRef();
  }
  function onHup() {
    if (!running) return;
    try {
      native.reload();
    } catch (err) {
      process.emitWarning(`rcluster: SIGHUP: reload refused: ${err.message}`, { code: err.code });
    }
  }
  function installSignals() {
    if (signalsInstalled || settings.signals === false) return;
    process.on('SIGTERM', onStopSignal);
    process.on('SIGINT', onStopSignal);
    process.on('SIGHUP', onHup);
    signalsInstalled = true;
  }
  function uninstallSignals() {
    if (!signalsInstalled) return;
    process.removeListener('SIGTERM', onStopSignal);
    process.removeListener('SIGINT', onStopSignal);
    process.removeListener('SIGHUP', onHup);
    signalsInstalled = false;
  }

  function graceMs() {
    return settings.grace === undefined ? 30000 : settings.grace;
  }

  // ---- Events -----------------------------------------------------------------------------

  function listenAddress() {
    const l = listeners[0];
    if (!l) return null;
    if (l.path !== undefined) return { address: l.path, port: -1, addressType: -1 };
    let port = l.port;
    try {
      port = native.localPort(0);
    } catch {
      // stopped meanwhile
    }
    if (l.systemd) return { address: null, port, addressType: null };
    return { address: l.host, port, addressType: l.host.includes(':') ? 6 : 4 };
  }

  function text(ev) {
    return ev.data ? ev.data.toString('utf8') : '';
  }

  function finished(failure) {
    running = false;
    stopping = false;
    respawnsPending = 0;
    for (const id of Object.keys(cluster.workers)) {
      const w = cluster.workers[id];
      w[kConnected] = false; // normally an EXIT said so already
      w[kDead] = true;
      w.state = 'dead';
      delete cluster.workers[id];
    }
    uninstallSignals();
    for (const cb of stopCallbacks.splice(0)) {
      try {
        cb(failure || undefined);
      } catch (err) {
        rethrowLater(err);
      }
    }
    for (const cb of reloadCallbacks.splice(0)) {
      const err = new Error('rcluster: the cluster stopped before the reload ended');
      err.code = 'CLUSTER_E_CLOSED';
      try {
        cb(err);
      } catch (e) {
        rethrowLater(e);
      }
    }
    if (exitWhenStopped) {
      exitWhenStopped = false;
      process.exit(0);
    }
  }

  function handle(ev) {
    const id = ev.workerId;
    switch (ev.kind) {
      case K.CLUSTER_EVENT_FORK: {
        const known = Boolean(cluster.workers[id]);
        const w = ensureWorker(id, ev.pid);
        if (!known && respawnsPending > 0) respawnsPending -= 1; // a replacement started
        cluster.emit('fork', w);
        break;
      }
      case K.CLUSTER_EVENT_ONLINE: {
        const w = ensureWorker(id, ev.pid);
        w.state = 'online';
        w.emit('online');
        cluster.emit('online', w);
        break;
      }
      case K.CLUSTER_EVENT_READY: {
        const w = ensureWorker(id, ev.pid);
        const address = listenAddress();
        w.state = 'listening';
        w.emit('listening', address);
        cluster.emit('listening', w, address);
        w.emit('ready');
        cluster.emit('ready', w);
        break;
      }
      case K.CLUSTER_EVENT_MESSAGE:
        onMessage(id, codec.decode(ev.data), ev.fd >= 0 ? ev.fd : undefined);
        break;
      case K.CLUSTER_EVENT_DISCONNECT: {
        const w = cluster.workers[id];
        if (!w || !w[kConnected]) break;
        w[kConnected] = false;
        if (w.state !== 'dead') w.state = 'disconnected';
        w.emit('disconnect');
        cluster.emit('disconnect', w);
        break;
      }
      case K.CLUSTER_EVENT_EXIT: {
        const w = cluster.workers[id] || new Worker(id, ev.pid);
        delete cluster.workers[id];
        const signal = ev.signal ? signalName(ev.signal) : null;
        const code = ev.signal ? null : ev.exitCode;
        w[kConnected] = false;
        w[kDead] = true;
        w.state = 'dead';
        w.exitedAfterDisconnect = ev.exitedAfterDisconnect;
        w.process.exitCode = code;
        w.process.signalCode = signal;
        if (!ev.exitedAfterDisconnect && !stopping && settings.restart !== false) respawnsPending += 1;
        w.emit('exit', code, signal);
        cluster.emit('exit', w, code, signal);
        break;
      }
      case K.CLUSTER_EVENT_SHUTDOWN:
        stopping = true;
        cluster.emit('shutdown');
        break;
      case K.CLUSTER_EVENT_DRAIN: {
        const w = cluster.workers[id];
        if (w) w.emit('drain');
        cluster.emit('drain', w);
        break;
      }
      case K.CLUSTER_EVENT_ERROR: {
        const err = new Error(text(ev) || 'rcluster: error');
        err.code = 'CLUSTER_EVENT_ERROR';
        err.workerId = id;
        report(cluster, err);
        break;
      }
      case K.CLUSTER_EVENT_SLOT_FAILED: {
        if (respawnsPending > 0) respawnsPending -= 1;
        const reason = text(ev);
        if (cluster.listenerCount('slotFailed') > 0) cluster.emit('slotFailed', id, reason);
        else process.emitWarning(`rcluster: ${reason}`, { code: 'CLUSTER_SLOT_FAILED' });
        break;
      }
      case K.CLUSTER_EVENT_RELOADED: {
        const ok = ev.exitCode === 0;
        const reason = text(ev);
        for (const cb of reloadCallbacks.splice(0)) {
          let err = null;
          if (!ok) {
            err = new Error(reason);
            err.code = 'CLUSTER_RELOAD_ABORTED';
          }
          try {
            cb(err);
          } catch (e) {
            rethrowLater(e);
          }
        }
        cluster.emit('reloaded', ok, reason);
        break;
      }
      case K.EV_CLOSED:
        finished();
        break;
      case K.EV_FAILED: {
        const err = new Error(text(ev));
        err.code = 'ERR_RCLUSTER_LOOP';
        report(cluster, err);
        finished(err);
        break;
      }
      default:
        break; // a kind this version does not know: ignored, as the header asks
    }
  }

  function onMessage(id, message, fd) {
    const w = cluster.workers[id];
    if (w) w.emit('message', message, fd);
    cluster.emit('message', w, message, fd);
  }

  // A batch (see the addon's deliver()): packed plain messages in meta/data, the rest in list.
  native.setHandler(function onEvents(list, meta, data) {
    const n = list ? list.length : meta.length / 3;
    for (let i = 0, j = 0; i < n; i++) {
      const ev = list ? list[i] : undefined;
      try {
        if (ev !== undefined) handle(ev);
        else {
          j += 3;
          onMessage(meta[j - 3], codec.decodeAt(data, meta[j - 2], meta[j - 1]), undefined);
        }
      } catch (err) {
        rethrowLater(err);
      }
    }
    updateRef();
  });

  // ---- The API ----------------------------------------------------------------------------

  /** Settings for the next start (see README). `workers: n` starts the cluster at once. */
  cluster.setupPrimary = function setupPrimary(options) {
    if (options !== undefined && (options === null || typeof options !== 'object')) throw invalidArg('options', 'an object');
    const opts = options || {};
    if (opts.workers !== undefined && running) {
      throw clusterError(
        'CLUSTER_E_STATE',
        K.CLUSTER_E_STATE,
        'rcluster: the cluster is already running (setupPrimary({ workers }) starts it): use fork() or scale(n)'
      );
    }
    const merged = {
      args: process.argv.slice(2),
      exec: process.argv[1],
      execArgv: process.execArgv,
      silent: false,
      ...settings,
      ...opts,
    };
    // Validate now rather than at the first fork, and keep nothing of a bad call.
    validateSettings(merged);
    if (merged.policy !== undefined) policyNumber(K, merged.policy);
    if (opts.workers !== undefined && (!Number.isInteger(opts.workers) || opts.workers < 0)) {
      throw invalidArg('workers', 'a non-negative integer (0: one per CPU)');
    }
    Object.assign(settings, merged);
    delete settings.workers; // a start request, not a setting
    cluster.emit('setup', settings);
    if (opts.workers !== undefined && !running) start(opts.workers);
  };
  cluster.setupMaster = cluster.setupPrimary;

  /** Starts one more worker (the first call starts the cluster) and returns it. */
  cluster.fork = function fork(env) {
    if (env !== undefined && env !== null && Object.keys(env).length > 0) {
      const err = new Error(
        'rcluster: per-worker environments are not supported (every worker of a cluster shares one ' +
          'configuration): use setupPrimary({ env })'
      );
      err.code = 'ERR_RCLUSTER_FORK_ENV';
      throw err;
    }
    if (!running) {
      start(1);
      const ids = Object.keys(cluster.workers);
      if (ids.length === 0) {
        const err = new Error('rcluster: the first worker failed to start (see the error event)');
        err.code = 'CLUSTER_E_SYS';
        throw err;
      }
      return cluster.workers[ids[ids.length - 1]];
    }
    const w = ensureWorker(native.fork());
    updateRef();
    return w;
  };

  /** Stops every worker gracefully (grace: settings.grace, default 30 s); cb once done. */
  cluster.disconnect = function disconnect(callback) {
    return cluster.shutdown(graceMs(), callback);
  };

  /** Like disconnect, with an explicit grace period in ms (0: kill now). Not running: the
   * callback is called (next tick), nothing else happens. */
  cluster.shutdown = function shutdown(grace, callback) {
    if (typeof grace === 'function') [grace, callback] = [graceMs(), grace];
    if (grace === undefined) grace = graceMs();
    checkUint(grace, 'grace');
    checkCallback(callback);
    if (!running) {
      if (typeof callback === 'function') process.nextTick(callback);
      return;
    }
    if (typeof callback === 'function') stopCallbacks.push(callback);
    native.shutdown(grace);
    stopping = true;
    updateRef();
  };

  /** Rolling restart of every worker; callback(err) when it ended ('reloaded' too). */
  cluster.reload = function reload(callback) {
    checkCallback(callback);
    native.reload();
    if (typeof callback === 'function') reloadCallbacks.push(callback);
    for (const id of native.workers()) ensureWorker(id);
    updateRef();
  };

  /** Sets the number of workers: starts more, or stops the newest gracefully. */
  cluster.scale = function scale(n) {
    if (!Number.isInteger(n) || n < 0) throw invalidArg('n', 'a non-negative integer');
    native.scale(n);
    for (const id of native.workers()) ensureWorker(id);
    updateRef();
  };

  /** The port listener `index` is bound to (the real one when 0 was asked). */
  cluster.port = function port(index = 0) {
    return native.localPort(index);
  };

  /** Counters of the library as an object (per worker and totals). */
  cluster.stats = function stats() {
    return JSON.parse(native.stats());
  };

  /** Sends to every worker; returns how many. */
  cluster.broadcast = function broadcast(message) {
    const [tag, payload] = codec.encode(message);
    return native.broadcast(tag, payload);
  };

  Object.defineProperty(cluster, 'running', { enumerable: true, get: () => running });
};
