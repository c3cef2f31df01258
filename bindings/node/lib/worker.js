'use strict';
// The worker's side: cluster.worker, connections as net.Sockets, messages, graceful stop.

const EventEmitter = require('events');
const fs = require('fs');
const http = require('http');
const net = require('net');

const codec = require('./codec');
const { invalidArg, clusterError, toFd, withCallback, rethrowLater, report } = require('./util');

/** The primary's calls: in a worker each throws CLUSTER_E_ROLE (node:cluster leaves them
 * undefined, which only says "is not a function"). */
const PRIMARY_ONLY = ['setupPrimary', 'setupMaster', 'fork', 'disconnect', 'shutdown', 'reload', 'scale', 'port', 'stats', 'broadcast'];

const kConnected = Symbol('connected');
const kDead = Symbol('dead');

module.exports = function installWorker(cluster, native) {
  const K = native.constants;

  let running = false;
  let shutdownSeen = false;
  let disconnected = false;
  const live = new Set(); // sockets handed to this worker, still open
  const held = { connection: [], message: [] }; // arrived while nobody listened
  let heldWarned = false;
  let sweeper = null;
  const trackedServers = new WeakSet();

  class ClusterWorker extends EventEmitter {
    constructor() {
      super();
      /** This worker's id (>= 1). */
      this.id = native.workerId();
      /** This process (node:cluster's cluster.worker.process). */
      this.process = process;
      /** 'online' | 'disconnecting' | 'disconnected'. */
      this.state = 'online';
      /** true once the primary (or disconnect()) asked this worker to stop. */
      this.exitedAfterDisconnect = undefined;
      this[kConnected] = true;
      this[kDead] = false;
    }

    /** Sends to the primary: a Buffer, a string, or a JSON value (and optionally an fd). */
    send(message, handle, callback) {
      return this.sendTo(0, message, handle, callback);
    }

    /** Sends to worker `id` (0: the primary), relayed by the primary, which stamps the sender. */
    sendTo(id, message, handle, callback) {
      // The common case (a string or a Buffer, no fd, no callback) in one native call.
      const tag = handle === undefined && callback === undefined ? codec.plainTag(message) : 0;
      if (tag !== 0 && Number.isInteger(id) && id >= 0) {
        native.send(id, tag, message, undefined);
        return true;
      }
      if (typeof handle === 'function') [handle, callback] = [undefined, handle];
      return withCallback(() => {
        if (!Number.isInteger(id) || id < 0) throw invalidArg('id', 'a worker id (0: the primary)');
        const [tag, payload] = codec.encode(message);
        native.send(id, tag, payload, toFd(handle));
      }, callback);
    }

    /** Sends bytes as they are, with no type tag (for a C or Python primary or worker). */
    sendRaw(id, bytes, handle, callback) {
      if (typeof handle === 'function') [handle, callback] = [undefined, handle];
      return withCallback(() => native.send(id, codec.RAW, bytes, toFd(handle)), callback);
    }

    /** Sends to every other worker (through the primary). */
    broadcast(message) {
      const [tag, payload] = codec.encode(message);
      native.broadcast(tag, payload);
    }

    /** Reports READY (only with setupPrimary({ manualReady: true })). */
    ready() {
      native.ready();
    }

    /** Leaves on purpose: no new connections, the ones held finish, then the runtime ends
     * (and the process exits once nothing else keeps it alive). Not replaced. */
    disconnect() {
      if (running) {
        this.exitedAfterDisconnect = true;
        native.shutdown(0);
      }
      return this;
    }

    isConnected() {
      return this[kConnected];
    }

    isDead() {
      return this[kDead];
    }
  }

  const worker = new ClusterWorker();
  cluster.worker = worker;
  for (const name of PRIMARY_ONLY) {
    cluster[name] = function primaryOnly() {
      throw clusterError(
        'CLUSTER_E_ROLE',
        K.CLUSTER_E_ROLE,
        `rcluster: cluster.${name}() is for the primary, and this process is worker ${worker.id} (see cluster.worker)`
      );
    };
  }

  // Events that came while nobody listened are held, and delivered once someone does: a
  // server set up after an await still gets the first connections.
  worker.on('newListener', (name) => {
    if ((name === 'connection' || name === 'message') && held[name].length > 0) process.nextTick(flush, name);
  });

  function flush(name) {
    while (held[name].length > 0 && worker.listenerCount(name) > 0) {
      const item = held[name].shift();
      try {
        if (name === 'connection') emitConnection(item.fd, item.info);
        else worker.emit('message', ...item);
      } catch (err) {
        rethrowLater(err);
      }
    }
  }

  function hold(name, item) {
    held[name].push(item);
    if (!heldWarned && name === 'connection') {
      heldWarned = true;
      process.emitWarning(
        "rcluster: connections arrive but cluster.worker has no 'connection' listener; they are held until one is added",
        { code: 'RCLUSTER_NO_CONNECTION_LISTENER' }
      );
    }
  }

  // ---- Connections --------------------------------------------------------------------------

  function connDone() {
    try {
      native.connDone();
    } catch {
      // the runtime has ended: nobody counts any more
    }
  }

  /** http servers do some setup on 'listening', which a server fed with emit('connection')
   * never sees: connection tracking (closeIdleConnections, used for the graceful stop) and
   * the headers/request timeout checks. Run the server's own listener for it, once. */
  function adoptServer(server) {
    if (!server || trackedServers.has(server) || !(server instanceof http.Server)) return;
    trackedServers.add(server);
    for (const fn of server.listeners('listening')) {
      if (fn.name === 'setupConnectionsTracking') {
        try {
          fn.call(server);
        } catch {
          // an internal that moved: only the idle sweep below is lost
        }
      }
    }
  }

  function emitConnection(fd, info) {
    let socket;
    try {
      socket = new net.Socket({ fd, readable: true, writable: true });
    } catch (err) {
      try {
        fs.closeSync(fd);
      } catch {
        // already gone
      }
      connDone();
      throw err;
    }
    live.add(socket);
    socket.once('close', () => {
      live.delete(socket);
      connDone();
      if (live.size === 0 && sweeper) {
        clearInterval(sweeper);
        sweeper = null;
      }
    });
    worker.emit('connection', socket, info);
    // A socket a server accepted itself would carry the server's options (node:net does this
    // in its onconnection); do the same once we know which server took it.
    const server = socket.server;
    if (server) {
      if (typeof server.allowHalfOpen === 'boolean') socket.allowHalfOpen = server.allowHalfOpen;
      if (server.noDelay && typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
      if (server.keepAlive && typeof socket.setKeepAlive === 'function') {
        socket.setKeepAlive(true, server.keepAliveInitialDelay || 0);
      }
      adoptServer(server);
    }
  }

  /** Graceful stop: close keep-alive connections as soon as they are idle (what server.close()
   * does for a listening http server), until every connection is gone. */
  function startSweeping() {
    const sweep = () => {
      const servers = new Set();
      for (const s of live) {
        if (s.server) servers.add(s.server);
        // Served at least one response and none in flight: idle keep-alive, safe to close.
        if (s._httpMessage === null && !s.destroyed) s.destroy();
      }
      for (const srv of servers) {
        if (typeof srv.closeIdleConnections === 'function') srv.closeIdleConnections();
      }
    };
    sweep();
    if (live.size > 0 && !sweeper) {
      sweeper = setInterval(sweep, 100);
      sweeper.unref();
    }
  }

  // ---- Events -------------------------------------------------------------------------------

  function peerInfo(ev) {
    const p = ev.peer;
    return {
      listener: ev.listener,
      remoteAddress: p ? p.address : undefined,
      remotePort: p && p.family !== 'unix' ? p.port : undefined,
      remoteFamily: p ? p.family : undefined,
    };
  }

  function markDisconnected() {
    if (disconnected) return false;
    disconnected = true;
    worker[kConnected] = false;
    worker.state = 'disconnected';
    return true;
  }

  function finished() {
    running = false;
    uninstallSignals();
    if (markDisconnected()) worker.emit('disconnect');
  }

  function handle(ev) {
    switch (ev.kind) {
      case K.CLUSTER_EVENT_CONNECTION: {
        const info = peerInfo(ev);
        if (worker.listenerCount('connection') > 0) emitConnection(ev.fd, info);
        else hold('connection', { fd: ev.fd, info });
        break;
      }
      case K.CLUSTER_EVENT_MESSAGE:
        onMessage(codec.decode(ev.data), ev.workerId, ev.fd >= 0 ? ev.fd : undefined);
        break;
      case K.CLUSTER_EVENT_SHUTDOWN:
        shutdownSeen = true;
        worker.state = 'disconnecting';
        worker.exitedAfterDisconnect = true;
        worker.emit('shutdown');
        startSweeping();
        break;
      case K.CLUSTER_EVENT_DISCONNECT:
        // The channel to the primary closed without a SHUTDOWN first: the primary is gone.
        // Like node:cluster, an unasked disconnect ends the worker.
        if (markDisconnected()) worker.emit('disconnect');
        if (!shutdownSeen) process.nextTick(() => process.exit(0));
        break;
      case K.CLUSTER_EVENT_DRAIN:
        worker.emit('drain');
        break;
      case K.CLUSTER_EVENT_ERROR: {
        const err = new Error(ev.data ? ev.data.toString('utf8') : 'rcluster: error');
        err.code = 'CLUSTER_EVENT_ERROR';
        err.workerId = ev.workerId;
        report(worker, err);
        break;
      }
      case K.EV_CLOSED:
        finished();
        break;
      case K.EV_FAILED: {
        const err = new Error(ev.data ? ev.data.toString('utf8') : 'rcluster: loop failed');
        err.code = 'ERR_RCLUSTER_LOOP';
        report(worker, err);
        finished();
        break;
      }
      default:
        break;
    }
  }

  function onMessage(message, from, fd) {
    if (worker.listenerCount('message') > 0) worker.emit('message', message, from, fd);
    else hold('message', [message, from, fd]);
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
          onMessage(codec.decodeAt(data, meta[j - 2], meta[j - 1]), meta[j - 3], undefined);
        }
      } catch (err) {
        rethrowLater(err);
      }
    }
  });

  // ---- Signals: SIGTERM/SIGINT leave gracefully (a second one: the default action) ---------

  let signalsInstalled = false;
  let stopSignals = 0;
  function onStopSignal(signal) {
    stopSignals += 1;
    if (!running || stopSignals > 1) {
      uninstallSignals();
      process.kill(process.pid, signal); // the default action now
      return;
    }
    if (!worker.exitedAfterDisconnect) worker.disconnect(); // else already stopping
  }
  function installSignals() {
    process.on('SIGTERM', onStopSignal);
    process.on('SIGINT', onStopSignal);
    signalsInstalled = true;
  }
  function uninstallSignals() {
    if (!signalsInstalled) return;
    process.removeListener('SIGTERM', onStopSignal);
    process.removeListener('SIGINT', onStopSignal);
    signalsInstalled = false;
  }

  // Connect to the primary now (ONLINE, then READY unless manualReady): events only arrive
  // from the event loop, so the rest of the script sets its listeners up first.
  native.workerStart();
  running = true;
  installSignals();
};
