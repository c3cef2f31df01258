'use strict';
// rcluster for Node.js: node:cluster's API on the rcluster library (librcluster.so).
//
//   const cluster = require('rcluster');
//   if (cluster.isPrimary) { cluster.setupPrimary({ listen: [{ host: '127.0.0.1', port: 8080 }] }); cluster.fork(); }
//   else { cluster.worker.on('connection', (socket) => server.emit('connection', socket)); }
//
// Workers are started in EXEC mode only (fork(2) is unsafe in a V8 process): the same Node,
// with the same flags, on the script (settings.exec, default process.argv[1]).

// A worker started on Node's own channel (the default, see lib/nodeprimary.js) runs Node's own
// cluster worker code: there, require('rcluster') is require('cluster').
const nodeCluster = require('cluster');
if (nodeCluster.isWorker) {
  module.exports = nodeCluster;
  return;
}

const EventEmitter = require('events');
const { isMainThread } = require('worker_threads');

const native = require('./lib/native');
const codec = require('./lib/codec');

// One cluster object per process (per thread): the runtime is process-global, so a second
// load of this module (another copy of the package, or after require.cache was cleared) gets
// the first one's object instead of a second set of handlers fighting over the runtime.
const kCluster = Symbol.for('rcluster.cluster');
if (process[kCluster]) {
  module.exports = process[kCluster];
  return;
}

const cluster = new EventEmitter();
const isWorker = native.isWorker();
Object.defineProperty(process, kCluster, { value: cluster });

cluster.isWorker = isWorker;
cluster.isPrimary = !isWorker;
cluster.isMaster = !isWorker;
cluster.constants = native.constants;
/** The message codec (tag byte + payload), for peers written in other languages. */
cluster.encodeMessage = (value) => {
  const [tag, payload] = codec.encode(value);
  let body;
  if (typeof payload === 'string') body = Buffer.from(payload, 'utf8');
  else if (ArrayBuffer.isView(payload)) body = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  else body = Buffer.from(payload); // an ArrayBuffer
  return Buffer.concat([Buffer.from([tag]), body]);
};
cluster.decodeMessage = (buf) => codec.decode(buf);

module.exports = cluster;

// The runtime is process-global: only the main thread drives it.
if (isMainThread && native.claim()) {
  const LEVELS = ['', 'ERROR', 'WARN', 'INFO', 'DEBUG', 'TRACE'];
  const role = isWorker ? `worker ${native.workerId()}` : 'primary';
  /** Default log sink: errors and warnings (everything RCLUSTER_LOG lets through when set). */
  const defaultLogger = (level, target, message) => {
    if (level > 2 && !process.env.RCLUSTER_LOG) return;
    process.stderr.write(`rcluster ${LEVELS[level] || level} [${role} ${process.pid}] ${target}: ${message}\n`);
  };
  /** Routes the library's log records to fn(level, target, message); null silences them. */
  cluster.setLogger = (fn) => native.setLogger(fn === undefined ? defaultLogger : fn);
  cluster.setLogger(defaultLogger);

  if (isWorker) require('./lib/worker')(cluster, native);
  // Node's channel by default (node:cluster's programs run unchanged); rcluster's own channel
  // (workers using this module's worker API, C and Python peers) with RCLUSTER_CHANNEL=rcluster.
  else if (process.env.RCLUSTER_CHANNEL === 'rcluster') require('./lib/primary')(cluster, native);
  else require('./lib/nodeprimary')(cluster, native);
} else {
  cluster.setLogger = () => {};
  const notHere = () => {
    const err = new Error('rcluster: the cluster runtime belongs to the main thread of the process');
    err.code = 'ERR_RCLUSTER_THREAD';
    throw err;
  };
  for (const name of ['setupPrimary', 'setupMaster', 'fork', 'disconnect', 'shutdown', 'reload', 'scale', 'port', 'stats', 'broadcast']) {
    cluster[name] = notHere;
  }
}
