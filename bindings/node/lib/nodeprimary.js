'use strict';
// node:cluster's primary API over the rcluster primary speaking Node's own IPC channel to its
// workers (CLUSTER_CHANNEL_NODE_*): workers are started as node:cluster starts them and run
// Node's own, unchanged cluster worker code. The core answers the protocol messages it owns
// (online, queryServer, newconn, close, handles' ACKs); everything else reaches this file as
// the message body the worker wrote, and is turned into node:cluster's events here.
//
// Semantics follow Node 20's cluster documentation: no automatic restart (unless
// setupPrimary({ restart: true })), worker.disconnect() / cluster.disconnect() as Node,
// worker.kill() = worker.destroy(), 'disconnect' before 'exit', a ChildProcess-like
// worker.process.

const EventEmitter = require('events');
const net = require('net');
const dgram = require('dgram');
const path = require('path');
const v8 = require('v8');

const { invalidArg, signalNumber, signalName, rethrowLater, report } = require('./util');

const SCHED_NONE = 1;
const SCHED_RR = 2;

// ---- Node's channel encodings -----------------------------------------------------------

// 'advanced' as Node's child_process writes it: V8's serializer, with Buffers and typed
// arrays as host objects behind a tag, other host objects as plain copies.
class ChannelSerializer extends v8.DefaultSerializer {
  _writeHostObject(object) {
    if (ArrayBuffer.isView(object)) {
      this.writeUint32(0);
      return super._writeHostObject(object);
    }
    this.writeUint32(1);
    this.writeValue({ ...object });
    return undefined;
  }
}
class ChannelDeserializer extends v8.DefaultDeserializer {
  _readHostObject() {
    const tag = this.readUint32();
    if (tag === 0) return super._readHostObject();
    return this.readValue();
  }
}

function encodeAdvanced(message) {
  const ser = new ChannelSerializer();
  ser.writeHeader();
  ser.writeValue(message);
  return ser.releaseBuffer();
}

function decodeAdvanced(buf) {
  const des = new ChannelDeserializer(buf);
  des.readHeader();
  return des.readValue();
}

function isInternal(message) {
  return (
    message !== null &&
    typeof message === 'object' &&
    typeof message.cmd === 'string' &&
    message.cmd.length > 5 &&
    message.cmd.startsWith('NODE_')
  );
}

function ipcClosed() {
  const err = new Error('Channel closed');
  err.code = 'ERR_IPC_CHANNEL_CLOSED';
  return err;
}

module.exports = function installNodePrimary(cluster, native) {
  const K = native.constants;

  cluster.isWorker = false;
  cluster.isPrimary = true;
  cluster.isMaster = true;
  cluster.SCHED_NONE = SCHED_NONE;
  cluster.SCHED_RR = SCHED_RR;
  cluster.settings = {};
  cluster.workers = {};

  const envPolicy = { none: SCHED_NONE, rr: SCHED_RR }[process.env.NODE_CLUSTER_SCHED_POLICY];
  cluster.schedulingPolicy = envPolicy || SCHED_RR;

  let initialized = false; // setupPrimary ran (the policy is frozen)
  let running = false; // the rcluster runtime is started
  let serialization = 'json';
  let started = null; // the argv and cwd the runtime was started with
  let stopping = false; // cluster.disconnect() or shutdown() was called
  const intercom = new EventEmitter();

  // ---- ChildProcess-like worker.process -------------------------------------------------

  class WorkerProcess extends EventEmitter {
    constructor(id, settings) {
      super();
      this.id = id;
      this.pid = undefined;
      this.exitCode = null;
      this.signalCode = null;
      this.killed = false;
      this.connected = true;
      this.spawnfile = process.execPath;
      this.spawnargs = [process.execPath, ...settings.execArgv, settings.exec, ...settings.args];
      this.stdin = null;
      this.stdout = null;
      this.stderr = null;
      this.stdio = [null, null, null];
      const proc = this;
      this.channel = {
        ref() {
          proc._ref = true;
          updateRef();
        },
        unref() {
          proc._ref = false;
          updateRef();
        },
      };
      this._ref = true;
    }

    /** Signals the worker (default SIGTERM); true when the signal was sent. */
    kill(sig) {
      const num = sig === undefined ? 15 : signalNumber(sig);
      if (this.exitCode !== null || this.signalCode !== null) return false;
      try {
        native.kill(this.id, num);
      } catch (err) {
        if (err.code === 'CLUSTER_E_NOWORKER') return false;
        throw err;
      }
      if (num !== 0) this.killed = true;
      return true;
    }

    /** Sends a message (and a handle) as ChildProcess#send does. */
    send(message, handle, options, callback) {
      if (typeof handle === 'function') {
        callback = handle;
        handle = undefined;
        options = undefined;
      } else if (typeof options === 'function') {
        callback = options;
        options = undefined;
      } else if (options !== undefined && (options === null || typeof options !== 'object')) {
        throw invalidArg('options', 'an object');
      }
      options = { swallowErrors: false, ...options };
      if (message === undefined) {
        const err = new TypeError('The "message" argument must be specified');
        err.code = 'ERR_MISSING_ARGS';
        throw err;
      }
      if (!['string', 'object', 'number', 'boolean'].includes(typeof message)) {
        throw invalidArg('message', 'of type string, object, number or boolean');
      }
      if (!this.connected) {
        const err = ipcClosed();
        if (typeof callback === 'function') process.nextTick(callback, err);
        else process.nextTick(() => this.emit('error', err));
        return false;
      }
      let fd;
      let body = message;
      if (handle !== undefined && handle !== null) {
        let type;
        if (handle instanceof net.Socket) type = 'net.Socket';
        else if (handle instanceof net.Server) type = 'net.Server';
        else if (handle instanceof dgram.Socket) type = 'dgram.Socket';
        else throw invalidArg('handle', 'a net.Socket, net.Server or dgram.Socket');
        fd = handle._handle && handle._handle.fd;
        if (!Number.isInteger(fd) || fd < 0) {
          const err = new Error('The handle is closed or has no file descriptor');
          err.code = 'ERR_INVALID_HANDLE_TYPE';
          throw err;
        }
        body = { cmd: 'NODE_HANDLE', type, msg: message };
        if (type === 'net.Socket' && !options.keepOpen) {
          // Sent: the receiver's copy serves the connection from here (Node closes the
          // sender's once the worker acknowledged it).
          process.nextTick(() => handle.destroy());
        }
      }
      const bytes = serialization === 'advanced' ? encodeAdvanced(body) : JSON.stringify(body);
      try {
        native.send(this.id, -1, bytes, fd);
      } catch (err) {
        if (err.code === 'CLUSTER_E_NOWORKER' || err.code === 'CLUSTER_E_CLOSED') {
          const e = ipcClosed();
          if (typeof callback === 'function') process.nextTick(callback, e);
          else process.nextTick(() => this.emit('error', e));
          return false;
        }
        throw err;
      }
      if (typeof callback === 'function') process.nextTick(callback, null);
      return true;
    }

    /** Sends a message as it is (internal messages included), no checks. */
    _send(message) {
      if (!this.connected) return false;
      const bytes = serialization === 'advanced' ? encodeAdvanced(message) : JSON.stringify(message);
      try {
        native.send(this.id, -1, bytes, undefined);
      } catch {
        return false;
      }
      return true;
    }

    /** A socket of a worker's server, received with its key: counted as Node's
     * SocketListReceive does, so that the worker's server.close() can learn when the
     * primary's copies are closed (NODE_SOCKET_NOTIFY_CLOSE / NODE_SOCKET_GET_COUNT). */
    _socketList(key) {
      if (!this._lists) this._lists = new Map();
      let list = this._lists.get(key);
      if (!list) {
        list = { connections: 0, waiting: false };
        this._lists.set(key, list);
      }
      return list;
    }

    _onSocketListMessage(msg) {
      const list = this._socketList(msg.key);
      if (msg.cmd === 'NODE_SOCKET_NOTIFY_CLOSE') {
        if (list.connections === 0) this._send({ cmd: 'NODE_SOCKET_ALL_CLOSED', key: msg.key });
        else list.waiting = true;
      } else if (msg.cmd === 'NODE_SOCKET_GET_COUNT') {
        this._send({ cmd: 'NODE_SOCKET_COUNT', key: msg.key, count: list.connections });
      }
    }

    _addSocket(key, socket) {
      const list = this._socketList(key);
      list.connections++;
      socket.once('close', () => {
        list.connections--;
        if (list.connections === 0 && list.waiting) {
          list.waiting = false;
          this._send({ cmd: 'NODE_SOCKET_ALL_CLOSED', key });
        }
      });
    }

    /** Closes the channel from this side; the worker sees it close. */
    disconnect() {
      if (!this.connected) {
        this.emit('error', ipcClosed());
        return;
      }
      try {
        native.closeChannel(this.id);
      } catch {
        // gone meanwhile
      }
    }

    ref() {
      this._ref = true;
      updateRef();
    }

    unref() {
      this._ref = false;
      updateRef();
    }
  }

  // ---- Worker -----------------------------------------------------------------------------

  // A function, as Node's: `cluster.Worker.call({}, options)` and `new cluster.Worker()` both work.
  function Worker(options) {
    if (!(this instanceof Worker)) return new Worker(options);
    EventEmitter.call(this);
    options = options || {};
    this.exitedAfterDisconnect = undefined;
    this.state = options.state || 'none';
    this.id = options.id | 0;
    if (options.process) {
      this.process = options.process;
      this.process.on('error', (code, signal) => this.emit('error', code, signal));
      this.process.on('message', (message, handle) => this.emit('message', message, handle));
    }
  }
  Object.setPrototypeOf(Worker.prototype, EventEmitter.prototype);
  Object.setPrototypeOf(Worker, EventEmitter);
  Object.defineProperty(Worker.prototype, 'suicide', {
    get() {
      return this.exitedAfterDisconnect;
    },
    set(v) {
      this.exitedAfterDisconnect = v;
    },
  });
  Worker.prototype.kill = function kill(...args) {
    return this.destroy(...args);
  };
  Worker.prototype.send = function send(...args) {
    return this.process.send(...args);
  };
  Worker.prototype.isDead = function isDead() {
    return this.process.exitCode != null || this.process.signalCode != null;
  };
  Worker.prototype.isConnected = function isConnected() {
    return this.process.connected;
  };
  /** Node's graceful stop: the worker closes its servers, then its channel, and leaves. */
  Worker.prototype.disconnect = function disconnect() {
    this.exitedAfterDisconnect = true;
    if (this.process.connected) {
      try {
        native.disconnect(this.id);
      } catch (err) {
        if (err.code !== 'CLUSTER_E_NOWORKER' && err.code !== 'CLUSTER_E_CLOSED') throw err;
      }
    }
    removeWorker(this);
    return this;
  };
  Worker.prototype.destroy = function destroy(signo) {
    this.process.kill(signo || 'SIGTERM');
  };
  cluster.Worker = Worker;

  function removeWorker(worker) {
    delete cluster.workers[worker.id];
    if (Object.keys(cluster.workers).length === 0) intercom.emit('disconnect');
  }

  // ---- Starting -----------------------------------------------------------------------------

  const byId = new Map(); // core id -> Worker (until its exit)

  // The channel's cluster messages are Node internals: pinned by test/node_channel.test.js and
  // Node's own cluster tests against the majors listed here. Another major is warned about
  // once (its workers run its own cluster code, which has kept this protocol for many majors).
  const TESTED_MAJORS = [20];

  function startRuntime() {
    const major = Number(process.versions.node.split('.')[0]);
    if (!TESTED_MAJORS.includes(major)) {
      process.emitWarning(
        `rcluster speaks Node's cluster protocol as tested with Node ${TESTED_MAJORS.join(', ')}; this is Node ${process.versions.node}`,
        { code: 'RCLUSTER_NODE_UNTESTED' }
      );
    }
    const s = cluster.settings;
    serialization = s.serialization === 'advanced' ? 'advanced' : 'json';
    const exec = s.exec;
    if (!exec) throw invalidArg('settings.exec', 'the script workers run (no process.argv[1] here)');
    const argv = [process.execPath, ...s.execArgv, path.resolve(String(exec)), ...s.args].map(String);
    const none = cluster.schedulingPolicy === SCHED_NONE;
    const ops = [
      ['mode', K.CLUSTER_MODE_EXEC],
      ['exec', process.execPath, argv],
      ['signals', false],
      ['workers', 1],
      ['channel', serialization === 'advanced' ? K.CLUSTER_CHANNEL_NODE_ADVANCED : K.CLUSTER_CHANNEL_NODE_JSON],
      ['restart', Boolean(s.restart)],
      ['policy', none ? K.CLUSTER_POLICY_SHARED : K.CLUSTER_POLICY_ROUND_ROBIN],
    ];
    if (s.policy !== undefined) ops.push(['policy', s.policy === 'reuseport' ? K.CLUSTER_POLICY_REUSEPORT : K.CLUSTER_POLICY_SHARED]);
    if (s.cwd !== undefined) ops.push(['cwd', String(s.cwd)]);
    if (s.silent) ops.push(['silent', true]);
    if (s.uid !== undefined || s.gid !== undefined) ops.push(['user', s.uid, s.gid === undefined ? s.uid : s.gid]);
    if (s.grace !== undefined) ops.push(['grace', s.grace]);
    if (s.maxMessage !== undefined) ops.push(['max_message', s.maxMessage]);
    native.primaryStart(ops);
    running = true;
    started = { argv, cwd: s.cwd };
  }

  /** This fork's argv and directory when setupPrimary() changed them since the start. */
  function ownExec() {
    const s = cluster.settings;
    const argv = [process.execPath, ...s.execArgv, path.resolve(String(s.exec)), ...s.args].map(String);
    const same = argv.length === started.argv.length && argv.every((a, i) => a === started.argv[i]);
    if (same && s.cwd === started.cwd) return null;
    return { argv, cwd: s.cwd === undefined ? null : String(s.cwd) };
  }

  function setupSettingsNT(settings) {
    cluster.emit('setup', settings);
  }

  cluster.setupPrimary = function setupPrimary(options) {
    if (options && (options.listen !== undefined || options.workers !== undefined)) {
      const err = new Error(
        "rcluster: setupPrimary({ listen, workers }) is rcluster's own API, whose workers use this module's " +
          "worker API ('connection' events): start the primary with RCLUSTER_CHANNEL=rcluster for it. By " +
          'default rcluster runs node:cluster programs unchanged: workers call server.listen() themselves.'
      );
      err.code = 'ERR_RCLUSTER_CHANNEL';
      throw err;
    }
    const settings = {
      args: process.argv.slice(2),
      exec: process.argv[1],
      execArgv: process.execArgv,
      silent: false,
      ...cluster.settings,
      ...options,
    };
    if (settings.execArgv.some((s) => s.startsWith('--prof')) && !settings.execArgv.some((s) => s.startsWith('--logfile='))) {
      settings.execArgv = [...settings.execArgv, '--logfile=v8-%p.log'];
    }
    cluster.settings = settings;
    if (initialized === true) {
      process.nextTick(setupSettingsNT, settings);
      return;
    }
    initialized = true;
    if (cluster.schedulingPolicy !== SCHED_NONE && cluster.schedulingPolicy !== SCHED_RR) {
      throw new Error(`Bad cluster.schedulingPolicy: ${cluster.schedulingPolicy}`);
    }
    process.nextTick(setupSettingsNT, settings);
  };
  cluster.setupMaster = cluster.setupPrimary;

  cluster.fork = function fork(env) {
    cluster.setupPrimary();
    const vars = [];
    for (const [k, v] of Object.entries({ ...cluster.settings.env, ...env })) if (v !== undefined) vars.push(`${k}=${v}`);
    if (!running) startRuntime();
    const own = ownExec();
    let id;
    if (own) id = native.forkExec(own.argv, vars, own.cwd);
    else id = vars.length > 0 ? native.fork(vars) : native.fork();
    const worker = adopt(id);
    try {
      worker.process.pid = native.workerInfo(id).pid; // started already (on this thread)
    } catch {
      // failed to start: its ERROR event says why
    }
    if (cluster.settings.silent) attachStdio(worker.process, id);
    process.nextTick(() => cluster.emit('fork', worker));
    updateRef();
    return worker;
  };

  /** silent: true: the worker's stdin, stdout and stderr are pipes, as ChildProcess gives. */
  function attachStdio(proc, id) {
    let fds;
    try {
      fds = native.takeStdio(id);
    } catch {
      return; // it failed to start
    }
    proc.stdin = new net.Socket({ fd: fds[0], readable: false, writable: true });
    proc.stdout = new net.Socket({ fd: fds[1], readable: true, writable: false });
    proc.stderr = new net.Socket({ fd: fds[2], readable: true, writable: false });
    proc.stdio = [proc.stdin, proc.stdout, proc.stderr];
  }

  /** A Worker object for worker `id` of the library, in cluster.workers. */
  function adopt(id) {
    const worker = new Worker({ id, process: new WorkerProcess(id, cluster.settings) });
    worker.on('message', function onMessage(message, handle) {
      cluster.emit('message', this, message, handle);
    });
    byId.set(id, worker);
    cluster.workers[worker.id] = worker;
    return worker;
  }

  cluster.disconnect = function disconnect(cb) {
    stopping = true;
    process.nextTick(updateRef);
    const workers = Object.values(cluster.workers);
    if (workers.length === 0) process.nextTick(() => intercom.emit('disconnect'));
    else for (const w of workers) if (w.isConnected()) w.disconnect();
    if (typeof cb === 'function') intercom.once('disconnect', cb);
  };

  // rcluster's extras on the same object.
  cluster.stats = function stats() {
    return JSON.parse(native.stats());
  };
  cluster.shutdown = function shutdown(grace = 30000, cb) {
    if (typeof grace === 'function') [grace, cb] = [30000, grace];
    if (!running) {
      if (typeof cb === 'function') process.nextTick(cb);
      return;
    }
    if (typeof cb === 'function') intercom.once('closed', cb);
    stopping = true;
    native.shutdown(grace);
  };

  // ---- Keeping the process alive ----------------------------------------------------------

  function updateRef() {
    if (!running) return;
    let want = false;
    for (const w of byId.values()) {
      if (w.process.connected && w.process._ref) want = true;
      if (!w.isDead() && w.process.connected) want = want || w.process._ref;
    }
    // A worker whose channel is closed but that still runs keeps node:cluster's primary alive
    // too (its ChildProcess handle is ref'd until it exits).
    for (const w of byId.values()) if (!w.isDead() && !w.process.connected) want = true;
    // With restarts on, a replacement may be on its way (after a backoff): stay up until
    // cluster.disconnect() or shutdown().
    if (cluster.settings.restart && !stopping) want = true;
    native.setRef(want);
  }

  // ---- Events -------------------------------------------------------------------------------

  function decode(buf) {
    if (serialization === 'advanced') return decodeAdvanced(buf);
    return JSON.parse(buf.toString('utf8'));
  }

  function toHandle(type, msg, fd) {
    switch (type) {
      case 'net.Socket':
        return new net.Socket({ fd, readable: true, writable: true });
      case 'net.Server': {
        const server = new net.Server();
        server.listen({ fd });
        return server;
      }
      case 'dgram.Socket': {
        const socket = dgram.createSocket(msg && msg.dgramType === 'udp6' ? 'udp6' : 'udp4');
        socket.bind({ fd });
        return socket;
      }
      default:
        return fd;
    }
  }

  function onWorkerMessage(id, data, fd) {
    const worker = byId.get(id);
    let message;
    try {
      message = decode(data);
    } catch (err) {
      if (fd !== undefined) require('fs').close(fd, () => {});
      const e = new Error(`rcluster: a message from worker ${id} could not be decoded: ${err.message}`);
      e.code = 'ERR_RCLUSTER_DECODE';
      report(cluster, e);
      return;
    }
    if (!worker) return;
    const proc = worker.process;
    let handle;
    if (message && message.cmd === 'NODE_HANDLE' && fd !== undefined) {
      handle = toHandle(message.type, message.msg, fd);
      if (message.type === 'net.Socket' && message.key) proc._addSocket(message.key, handle);
      message = message.msg;
    }
    if (message && (message.cmd === 'NODE_SOCKET_NOTIFY_CLOSE' || message.cmd === 'NODE_SOCKET_GET_COUNT')) {
      proc._onSocketListMessage(message);
    }
    if (isInternal(message)) {
      proc.emit('internalMessage', message, handle);
      if (message.cmd !== 'NODE_CLUSTER') return;
      if (message.act === 'listening') {
        const info = { addressType: message.addressType, address: message.address, port: message.port, fd: message.fd };
        worker.state = 'listening';
        worker.emit('listening', info);
        cluster.emit('listening', worker, info);
      } else if (message.act === 'exitedAfterDisconnect') {
        worker.exitedAfterDisconnect = true;
      }
      return;
    }
    proc.emit('message', message, handle);
  }

  function onDisconnect(worker) {
    const proc = worker.process;
    if (!proc.connected) return;
    proc.connected = false;
    proc.emit('disconnect');
    if (worker.isDead()) removeWorker(worker);
    worker.exitedAfterDisconnect = !!worker.exitedAfterDisconnect;
    worker.state = 'disconnected';
    worker.emit('disconnect');
    cluster.emit('disconnect', worker);
  }

  function onExit(worker, ev) {
    const proc = worker.process;
    const signal = ev.signal ? signalName(ev.signal) : null;
    const code = ev.signal ? null : ev.exitCode;
    proc.exitCode = code;
    proc.signalCode = signal;
    // The channel closes with the process: 'disconnect' first, as Node's ChildProcess does
    // when the exit is seen after the end of the channel.
    onDisconnect(worker);
    if (!proc.connected) removeWorker(worker);
    worker.exitedAfterDisconnect = !!worker.exitedAfterDisconnect;
    worker.state = 'dead';
    proc.emit('exit', code, signal);
    worker.emit('exit', code, signal);
    cluster.emit('exit', worker, code, signal);
    proc.emit('close', code, signal);
    byId.delete(worker.process.id);
  }

  function handle(ev) {
    const id = ev.workerId;
    const worker = byId.get(id);
    switch (ev.kind) {
      case K.CLUSTER_EVENT_FORK:
        if (worker) {
          worker.process.pid = ev.pid;
          worker.process.emit('spawn');
        } else {
          // A replacement the library started (setupPrimary({ restart: true })).
          const w = adopt(id);
          w.process.pid = ev.pid;
          cluster.emit('fork', w);
        }
        break;
      case K.CLUSTER_EVENT_ONLINE:
        if (worker) {
          worker.state = 'online';
          worker.emit('online');
          cluster.emit('online', worker);
        }
        break;
      case K.CLUSTER_EVENT_MESSAGE:
        onWorkerMessage(id, ev.data, ev.fd >= 0 ? ev.fd : undefined);
        break;
      case K.CLUSTER_EVENT_DISCONNECT:
        if (worker) onDisconnect(worker);
        break;
      case K.CLUSTER_EVENT_EXIT:
        if (worker) onExit(worker, ev);
        break;
      case K.CLUSTER_EVENT_ERROR: {
        const err = new Error(ev.data ? ev.data.toString('utf8') : 'rcluster: error');
        err.code = 'CLUSTER_EVENT_ERROR';
        err.workerId = id;
        if (worker && /failed to start/.test(err.message)) {
          worker.process.emit('error', err);
        } else if (cluster.listenerCount('error') > 0) {
          cluster.emit('error', err);
        } else {
          process.emitWarning(err.message, { code: err.code });
        }
        break;
      }
      case K.EV_CLOSED:
        running = false;
        intercom.emit('closed');
        break;
      case K.EV_FAILED: {
        const err = new Error(ev.data ? ev.data.toString('utf8') : 'rcluster: loop failed');
        err.code = 'ERR_RCLUSTER_LOOP';
        running = false;
        report(cluster, err);
        break;
      }
      default:
        break; // READY, LISTENING, DRAIN...: node:cluster has no such events
    }
  }

  native.setHandler(function onEvents(list, meta, data) {
    const n = list ? list.length : meta.length / 3;
    for (let i = 0, j = 0; i < n; i++) {
      const ev = list ? list[i] : undefined;
      try {
        if (ev !== undefined) handle(ev);
        else {
          j += 3;
          onWorkerMessage(meta[j - 3], data.subarray(meta[j - 2], meta[j - 2] + meta[j - 1]), undefined);
        }
      } catch (err) {
        rethrowLater(err);
      }
    }
    updateRef();
  });

  Object.defineProperty(cluster, 'running', { enumerable: true, get: () => running });
};
