'use strict';
// Misuse from Node: the wrong role, null/undefined and wrong types for every argument kind,
// bad fds, calls before the start and after the end (also against the next run), a second
// start, listeners and a logger that call back in, a worker_threads thread and a process a
// worker spawns. Each gives a documented error (README "Misuse"), never a crash or a hang, and
// the cluster still works afterwards. This process is the primary; the worker's side runs in
// fixtures/misuse_worker.js and reports back by message (or, after its end, in a file).
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { once } = require('node:events');
// These tests drive rcluster's own channel (the Node-channel primary is tested in node_*.test.js).
process.env.RCLUSTER_CHANNEL = 'rcluster';
const cluster = require('..');
const native = require('../lib/native');
const { outcome, fuzzNative } = require('../fixtures/outcome');
const { waitGone } = require('../fixtures/harness');

const misuseWorker = path.join(__dirname, '..', 'fixtures', 'misuse_worker.js');
const echoWorker = path.join(__dirname, '..', 'fixtures', 'echo_worker.js');
const outBase = path.join(os.tmpdir(), `rcluster-misuse-${process.pid}`);

const E = (code) => `Error:${code}`;
const TYPE = 'TypeError:ERR_INVALID_ARG_TYPE';
const PRIMARY_ONLY = ['setupPrimary', 'setupMaster', 'fork', 'disconnect', 'shutdown', 'reload', 'scale', 'port', 'stats', 'broadcast'];

/** Arguments that make each addon call fail anyway (no such worker, a tag over 255, a grace
 * that is not a number...), so that fuzzing one argument at a time never acts on a cluster. */
const NATIVE_GOOD = {
  send: [99, 2, 'x', undefined],
  broadcast: [256, {}],
  kill: [99, 0],
  disconnect: [99],
  workerInfo: [99],
  scale: [100000],
  shutdown: [{}],
  localPort: [7],
  setRef: [true],
  strerror: [-1],
  setLogger: [5],
};

/** The next message from `w` that `pred` accepts, within `ms`. */
function nextMessage(w, pred, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      w.removeListener('message', on);
      reject(new Error(`no matching message from worker ${w.id} within ${ms} ms`));
    }, ms);
    function on(m) {
      if (!pred(m)) return;
      clearTimeout(timer);
      w.removeListener('message', on);
      resolve(m);
    }
    w.on('message', on);
  });
}

/** Compares every check and names the ones that differ. */
function expectAll(got, expected) {
  const wrong = {};
  for (const [k, v] of Object.entries(expected)) if (JSON.stringify(got[k]) !== JSON.stringify(v)) wrong[k] = { got: got[k], expected: v };
  const extra = Object.keys(got).filter((k) => !(k in expected));
  assert.deepEqual({ wrong, extra }, { wrong: {}, extra: [] });
}

function openFds() {
  return fs.readdirSync('/proc/self/fd').length;
}

function closedFd() {
  const fd = fs.openSync('/dev/null', 'r');
  fs.closeSync(fd);
  return fd;
}

function stopped() {
  return new Promise((resolve) => cluster.shutdown(0, resolve));
}

/** Leaves nothing behind if a test fails half-way. */
async function cleanup() {
  if (cluster.running) await stopped();
}

test('before any start: the primary calls are CLUSTER_E_STATE, the worker calls CLUSTER_E_ROLE', async () => {
  assert.equal(cluster.running, false);
  for (const name of ['port', 'stats', 'reload']) assert.equal(outcome(() => cluster[name]()), E('CLUSTER_E_STATE'), name);
  assert.equal(outcome(() => cluster.scale(1)), E('CLUSTER_E_STATE'));
  assert.equal(outcome(() => cluster.broadcast('x')), E('CLUSTER_E_STATE'));
  assert.equal(outcome(() => native.send(1, 2, 'x')), E('CLUSTER_E_STATE'));
  assert.equal(outcome(() => native.workerInfo(1)), E('CLUSTER_E_STATE'));
  // Not running: a stop only calls back.
  await new Promise((resolve) => cluster.shutdown(0, resolve));
  // The worker's side, in the primary.
  assert.equal(cluster.worker, undefined);
  assert.equal(outcome(() => native.workerStart()), E('CLUSTER_E_ROLE'));
  assert.equal(outcome(() => native.ready()), E('CLUSTER_E_ROLE'));
  assert.equal(outcome(() => native.connDone()), E('CLUSTER_E_ROLE'));
  assert.equal(cluster.isPrimary, true);
});

test('bad arguments to the primary API are TypeErrors, and a refused setupPrimary keeps nothing', () => {
  const before = JSON.stringify(cluster.settings);
  const badSettings = [
    null,
    5,
    'x',
    { workers: -1 },
    { workers: '2' },
    { workers: 1.5 },
    { workers: null },
    { listen: [null] },
    { listen: 'no port' },
    { listen: [{ port: 70000 }] },
    { listen: [{ port: '80' }] },
    { policy: null },
    { policy: 'fastest' },
    { grace: -1 },
    { grace: 'x' },
    { grace: null },
    { exec: 5 },
    { exec: '' },
    { exec: 'a\0b' },
    { args: 'x' },
    { args: [1] },
    { execArgv: [null] },
    { env: null },
    { env: ['A=b'] },
    { env: { 'A=B': 'c' } },
    { cwd: 5 },
    { maxMessage: -1 },
    { startupTimeout: 1.5 },
    { sendQueue: [1] },
    { backoff: { min: 1 } },
    { heartbeat: 'x' },
    { crashLoop: [1, -1] },
    { minUptime: -1 },
    { maxRequests: -1 },
    { uid: -1 },
    { groups: [-1] },
    { groups: 'wheel' },
  ];
  for (const s of badSettings) {
    assert.equal(outcome(() => cluster.setupPrimary(s)), TYPE, JSON.stringify(s));
  }
  assert.equal(JSON.stringify(cluster.settings), before, 'a refused setupPrimary changed the settings');
  assert.equal(cluster.running, false);
  assert.equal(outcome(() => cluster.fork({ ROLE: 'x' })), 'Error:ERR_RCLUSTER_FORK_ENV');
  const bad = {
    'shutdown.string': () => cluster.shutdown('x'),
    'shutdown.negative': () => cluster.shutdown(-1),
    'shutdown.callback': () => cluster.shutdown(0, 5),
    'disconnect.callback': () => cluster.disconnect('x'),
    'reload.callback': () => cluster.reload(5),
    'scale.null': () => cluster.scale(null),
    'scale.negative': () => cluster.scale(-1),
    'scale.fraction': () => cluster.scale(1.5),
    'port.string': () => cluster.port('a'),
    'port.negative': () => cluster.port(-1),
    'port.null': () => cluster.port(null),
    'broadcast.undefined': () => cluster.broadcast(undefined),
    'setLogger.number': () => cluster.setLogger(5),
  };
  for (const [name, fn] of Object.entries(bad)) assert.equal(outcome(fn), TYPE, name);
  assert.equal(cluster.running, false);
  // The addon itself, every argument of every wrong kind: a TypeError or the library's error.
  const ST = E('CLUSTER_E_STATE');
  expectAll(fuzzNative(NATIVE_GOOD), {
    send: [ST, TYPE],
    broadcast: [TYPE],
    kill: [ST, TYPE],
    disconnect: [TYPE],
    workerInfo: [TYPE],
    scale: [TYPE],
    shutdown: [TYPE],
    localPort: [TYPE],
    setRef: [TYPE, 'ok'],
    strerror: [TYPE, 'ok:invalid argument'],
    setLogger: [TYPE, 'ok'],
  });
  cluster.setLogger(undefined);
  assert.equal(cluster.running, false);
});


test('a running primary: misuse is refused, the worker\'s own checks hold, and the cluster still works', { timeout: 60000 }, async (t) => {
  t.after(cleanup);
  const settingsBefore = { exec: misuseWorker, execArgv: [], args: [], listen: [], env: { MISUSE_OUT: outBase } };
  cluster.setupPrimary(settingsBefore);
  const w = cluster.fork();
  const pid = w.process.pid;
  await once(w, 'ready');
  const unexpected = [];
  w.on('message', (m) => {
    if (!m || typeof m !== 'object' || !['checks', 'grandchild'].includes(m.kind)) {
      if (m !== 'pong' && m !== 'bye') unexpected.push(m);
    }
  });
  const fds = openFds();
  const circular = {};
  circular.self = circular;
  const gone = new net.Socket();
  gone.destroy();
  let callbackError;
  const viaCallback = new Promise((resolve) => {
    callbackError = resolve;
  });
  const bad = {
    'send.undefined': [() => w.send(undefined), TYPE],
    'send.symbol': [() => w.send(Symbol('s')), TYPE],
    'send.function': [() => w.send(() => 1), TYPE],
    'send.bigint': [() => w.send(10n), TYPE],
    'send.circular': [() => w.send(circular), TYPE],
    'send.fd_negative': [() => w.send('x', -1), TYPE],
    'send.fd_string': [() => w.send('x', 'abc'), TYPE],
    'send.fd_object': [() => w.send('x', {}), TYPE],
    'send.fd_fraction': [() => w.send('x', 1.5), TYPE],
    'send.fd_nan': [() => w.send('x', NaN), TYPE],
    'send.fd_2**40': [() => w.send('x', 2 ** 40), TYPE],
    'send.fd_destroyed_socket': [() => w.send('x', gone), TYPE],
    'send.fd_closed': [() => w.send('x', closedFd()), E('CLUSTER_E_SYS')],
    'send.fd_huge': [() => w.send('x', 2 ** 31 - 1), E('CLUSTER_E_SYS')],
    'send.callback_number': [() => w.send('x', undefined, 5), TYPE],
    'send.fd_negative_with_callback': [() => w.send('x', -1, callbackError), 'ok:false'],
    'sendRaw.undefined': [() => w.sendRaw(undefined), TYPE],
    'sendRaw.object': [() => w.sendRaw({}), TYPE],
    'sendRaw.number': [() => w.sendRaw(5), TYPE],
    'kill.unknown': [() => w.kill('SIGNOPE'), 'TypeError:ERR_UNKNOWN_SIGNAL'],
    'kill.negative': [() => w.kill(-1), 'TypeError:ERR_UNKNOWN_SIGNAL'],
    'kill.null': [() => w.kill(null), 'TypeError:ERR_UNKNOWN_SIGNAL'],
    'kill.fraction': [() => w.kill(1.5), 'TypeError:ERR_UNKNOWN_SIGNAL'],
    'kill.1000': [() => w.kill(1000), E('CLUSTER_E_INVAL')],
    'port.no_such_listener': [() => cluster.port(7), E('CLUSTER_E_INVAL')],
    'port.string': [() => cluster.port('a'), TYPE],
    'scale.too_many': [() => cluster.scale(100000), E('CLUSTER_E_INVAL')],
    'scale.null': [() => cluster.scale(null), TYPE],
    'broadcast.undefined': [() => cluster.broadcast(undefined), TYPE],
    'shutdown.string': [() => cluster.shutdown('now'), TYPE],
    'shutdown.callback': [() => cluster.shutdown(0, 'cb'), TYPE],
    'reload.callback': [() => cluster.reload(5), TYPE],
    'native.send_to_self': [() => native.send(0, 2, 'x'), E('CLUSTER_E_INVAL')],
    'native.send_to_nobody': [() => native.send(99, 2, 'x'), E('CLUSTER_E_NOWORKER')],
    'native.send_tag_too_big': [() => native.send(1, 256, 'x'), TYPE],
    'native.send_to_undefined': [() => native.send(undefined, 2, 'x'), TYPE],
    'native.kill_nobody': [() => native.kill(99, 0), E('CLUSTER_E_NOWORKER')],
    'native.info_nobody': [() => native.workerInfo(99), E('CLUSTER_E_NOWORKER')],
    'native.info_null': [() => native.workerInfo(null), TYPE],
    // A second start, in the running primary.
    'double_start.setupPrimary': [() => cluster.setupPrimary({ workers: 1 }), E('CLUSTER_E_STATE')],
    'double_start.native': [() => native.primaryStart([]), E('CLUSTER_E_STATE')],
    // The worker's calls, in the running primary.
    'role.native.workerStart': [() => native.workerStart(), E('CLUSTER_E_ROLE')],
    'role.native.ready': [() => native.ready(), E('CLUSTER_E_ROLE')],
  };
  const got = {};
  const expected = {};
  for (const [name, [fn, want]] of Object.entries(bad)) {
    got[name] = outcome(fn);
    expected[name] = want;
  }
  expectAll(got, expected);
  assert.equal((await viaCallback).code, 'ERR_INVALID_ARG_TYPE', 'the callback got the error');
  expectAll(fuzzNative({ ...NATIVE_GOOD, primaryStart: [{}] }), {
    send: [E('CLUSTER_E_NOWORKER'), TYPE],
    broadcast: [TYPE],
    kill: [E('CLUSTER_E_INVAL'), TYPE],
    disconnect: [TYPE],
    workerInfo: [TYPE],
    scale: [TYPE],
    shutdown: [TYPE],
    localPort: [TYPE],
    setRef: [TYPE, 'ok'],
    strerror: [TYPE, 'ok:invalid argument'],
    setLogger: [TYPE, 'ok'],
    primaryStart: [E('CLUSTER_E_STATE'), TYPE],
  });
  cluster.setLogger(undefined);
  // A second load of the module is the same cluster (a fresh one would steal the events).
  delete require.cache[require.resolve('..')];
  assert.equal(require('..'), cluster);
  // Nothing of all that reached the worker, started a worker, changed the settings or leaked
  // a descriptor; the worker answers.
  assert.equal(cluster.settings.exec, misuseWorker);
  assert.deepEqual(Object.keys(cluster.workers), ['1']);
  assert.equal(openFds(), fds, 'a refused call leaked a descriptor');
  assert.equal(w.info().messagesIn, 0, 'a refused send reached the worker');
  w.send('ping');
  assert.equal(await nextMessage(w, (m) => m === 'pong'), 'pong');
  assert.equal(w.info().messagesIn, 1);

  // The worker's side: primary-only calls, bad arguments and fds, a second start, from inside
  // its 'message' listener; and a worker_threads thread of it.
  w.send('checks');
  const { results } = await nextMessage(w, (m) => m && m.kind === 'checks');
  const want = {};
  for (const name of PRIMARY_ONLY) want[`role.cluster.${name}`] = E('CLUSTER_E_ROLE');
  for (const name of ['primaryStart', 'fork', 'workers', 'workerInfo', 'kill', 'disconnect', 'reload', 'scale', 'stats']) {
    want[`role.native.${name}`] = E('CLUSTER_E_ROLE');
  }
  // A worker has ports too (listeners it listens on, SHARED/REUSEPORT sockets): not this one.
  want['role.native.localPort'] = E('CLUSTER_E_INVAL');
  Object.assign(want, {
    'bad.send.undefined': TYPE,
    'bad.send.symbol': TYPE,
    'bad.send.function': TYPE,
    'bad.send.bigint': TYPE,
    'bad.send.circular': TYPE,
    'bad.send.fd_negative': TYPE,
    'bad.send.fd_string': TYPE,
    'bad.send.fd_object': TYPE,
    'bad.send.fd_fraction': TYPE,
    'bad.send.fd_2**40': TYPE,
    'bad.send.fd_destroyed_socket': TYPE,
    'bad.send.fd_closed': E('CLUSTER_E_SYS'),
    'bad.send.fd_huge': E('CLUSTER_E_SYS'),
    'bad.send.callback_number': TYPE,
    'bad.send.fd_negative_with_callback': 'ok:false',
    'bad.sendTo.null': TYPE,
    'bad.sendTo.negative': TYPE,
    'bad.sendTo.fraction': TYPE,
    'bad.sendTo.string': TYPE,
    'bad.sendTo.2**32': TYPE,
    'bad.sendTo.self': E('CLUSTER_E_INVAL'),
    'bad.sendTo.broadcast_id': E('CLUSTER_E_INVAL'),
    'bad.sendRaw.id_null': TYPE,
    'bad.sendRaw.undefined': TYPE,
    'bad.sendRaw.object': TYPE,
    'bad.broadcast.undefined': TYPE,
    'double_start.native': E('CLUSTER_E_STATE'),
    'double_start.require': 'same object',
    fuzz: {
      send: [E('CLUSTER_E_INVAL'), TYPE],
      broadcast: [TYPE],
      shutdown: [TYPE],
      kill: [E('CLUSTER_E_ROLE'), TYPE], // kill(1, -1): a well-formed call, in the wrong role
      localPort: [TYPE],
      primaryStart: [E('CLUSTER_E_ROLE'), TYPE],
    },
    isWorker: true,
    isPrimary: false,
    thread: { isWorker: true, worker: 'undefined', fork: 'Error:ERR_RCLUSTER_THREAD' },
  });
  expectAll(results, want);

  // A process the worker spawns inherits its environment, not its role: it is a primary of
  // its own, which can run a cluster; the worker still works after it.
  w.send('grandchild');
  const gc = (await nextMessage(w, (m) => m && m.kind === 'grandchild', 30000)).results;
  assert.deepEqual(gc, {
    inherited: true,
    isWorker: false,
    isPrimary: true,
    worker: 'undefined',
    workerId: 0,
    workerStart: E('CLUSTER_E_ROLE'),
    ready: E('CLUSTER_E_ROLE'),
    send: E('CLUSTER_E_STATE'),
    ownCluster: 'hello from the grandchild',
    exit: '0/null',
  });
  w.send('ping');
  await nextMessage(w, (m) => m === 'pong');
  assert.deepEqual(unexpected, [], 'a refused call in the worker sent something anyway');
  assert.deepEqual(Object.keys(cluster.workers), ['1']);

  // The worker leaves, from inside its 'message' listener (its 'shutdown' listener then
  // leaves again and still sends); then the cluster ends, and every call after it is refused.
  const bye = nextMessage(w, (m) => m === 'bye');
  const exited = once(w, 'exit');
  w.send('leave');
  await bye;
  assert.deepEqual(await exited, [0, null]);
  assert.equal(w.isDead(), true);
  assert.equal(w.exitedAfterDisconnect, true);
  assert.deepEqual(Object.keys(cluster.workers), [], 'the worker that left is gone');
  await new Promise((resolve) => cluster.disconnect(resolve));
  const after = {
    port: outcome(() => cluster.port(0)),
    stats: outcome(() => cluster.stats()),
    broadcast: outcome(() => cluster.broadcast('x')),
    reload: outcome(() => cluster.reload()),
    scale: outcome(() => cluster.scale(2)),
    'worker.send': outcome(() => w.send('x')),
    'worker.sendRaw': outcome(() => w.sendRaw(Buffer.from('x'))),
    'worker.info': outcome(() => w.info()),
    'worker.kill': outcome(() => w.kill()),
    'worker.disconnect': outcome(() => w.disconnect()),
    'native.send': outcome(() => native.send(1, 2, 'x')),
    'native.primaryStart.bad_ops': outcome(() => native.primaryStart('x')),
  };
  expectAll(after, {
    port: E('CLUSTER_E_CLOSED'),
    stats: E('CLUSTER_E_CLOSED'),
    broadcast: E('CLUSTER_E_CLOSED'),
    reload: E('CLUSTER_E_CLOSED'),
    scale: E('CLUSTER_E_CLOSED'),
    'worker.send': E('CLUSTER_E_CLOSED'),
    'worker.sendRaw': E('CLUSTER_E_CLOSED'),
    'worker.info': E('CLUSTER_E_CLOSED'),
    'worker.kill': 'ok', // dead: nothing to do
    'worker.disconnect': 'ok',
    'native.send': E('CLUSTER_E_CLOSED'),
    'native.primaryStart.bad_ops': TYPE,
  });
  await new Promise((resolve) => cluster.shutdown(0, resolve)); // not running: calls back
  const file = `${outBase}-1.json`;
  const workerAfter = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.unlinkSync(file);
  expectAll(workerAfter, {
    'shutdown.disconnect': 'ok:true',
    'shutdown.send': 'ok:true',
    send: E('CLUSTER_E_CLOSED'),
    sendTo: E('CLUSTER_E_CLOSED'),
    sendRaw: E('CLUSTER_E_CLOSED'),
    broadcast: E('CLUSTER_E_CLOSED'),
    ready: E('CLUSTER_E_CLOSED'),
    disconnect: 'ok',
    'native.workerStart': E('CLUSTER_E_STATE'),
    'native.send': E('CLUSTER_E_CLOSED'),
    'role.fork': E('CLUSTER_E_ROLE'),
    isConnected: false,
    isWorker: true,
  });
  assert.deepEqual(await waitGone([pid]), []);

  // The next run: worker 1 exists again, and the old Worker object must not reach it.
  const next = cluster.fork();
  await once(next, 'ready');
  assert.equal(next.id, 1);
  assert.equal(outcome(() => w.send('ping')), E('CLUSTER_E_CLOSED'));
  assert.equal(outcome(() => w.info()), E('CLUSTER_E_CLOSED'));
  w.kill('SIGKILL'); // the old worker is dead: this must not kill the new one
  assert.equal(next.info().messagesIn, 0);
  next.send('ping');
  await nextMessage(next, (m) => m === 'pong');
  const nextPid = next.process.pid;
  await new Promise((resolve) => cluster.disconnect(resolve));
  assert.equal(next.process.exitCode, 0, 'the new worker was not killed');
  fs.rmSync(`${outBase}-1.json`, { force: true });
  assert.deepEqual(await waitGone([nextPid]), []);
});

test('listeners and the logger that call back in: documented results, never a hang', { timeout: 60000 }, async (t) => {
  t.after(async () => {
    cluster.setLogger(undefined);
    cluster.removeAllListeners();
    await cleanup();
  });
  const fromLogger = [];
  cluster.setLogger((level, target, message) => {
    // Called after the library's turn, outside its lock: a call back in just works.
    if (cluster.running) fromLogger.push(outcome(() => cluster.stats().total.workers >= 0));
  });
  cluster.setupPrimary({ exec: echoWorker, execArgv: [], args: [], listen: [], env: {} });
  const seen = {};
  const done = new Promise((resolve, reject) => {
    let forked = 0;
    cluster.on('fork', () => {
      // A second worker, started from inside the 'fork' listener of the first.
      if (++forked === 1) seen['fork.fork'] = outcome(() => cluster.fork().id);
    });
    cluster.on('online', (w) => w.send(`hello ${w.id}`));
    cluster.on('message', (w, m) => {
      if (m !== 'hello 2') return;
      // A second start from a listener; then the stop, from a listener too.
      seen['message.setupPrimary'] = outcome(() => cluster.setupPrimary({ workers: 1 }));
      seen['message.primaryStart'] = outcome(() => native.primaryStart([]));
      cluster.shutdown(0, (err) => {
        // The run has ended; starting the next one from inside its last callback works.
        seen['stop.callback'] = err === undefined ? 'ok' : String(err);
        cluster.removeAllListeners();
        const w = cluster.fork();
        w.once('online', () => w.send('again'));
        w.once('message', (m2) => {
          seen['next.message'] = m2;
          cluster.disconnect(resolve);
        });
      });
    });
    cluster.on('shutdown', () => {
      seen['shutdown.fork'] = outcome(() => cluster.fork());
    });
    cluster.on('exit', () => {
      seen['exit.fork'] = outcome(() => cluster.fork());
      seen['exit.reload'] = outcome(() => cluster.reload());
      seen['exit.scale'] = outcome(() => cluster.scale(3));
    });
    setTimeout(() => reject(new Error(`stuck: ${JSON.stringify(seen)}`)), 40000).unref();
  });
  cluster.fork();
  await done;
  expectAll(seen, {
    'fork.fork': 'ok:2',
    'message.setupPrimary': E('CLUSTER_E_STATE'),
    'message.primaryStart': E('CLUSTER_E_STATE'),
    // While the cluster stops, nothing new starts: CLUSTER_E_STATE.
    'shutdown.fork': E('CLUSTER_E_STATE'),
    'exit.fork': E('CLUSTER_E_STATE'),
    'exit.reload': E('CLUSTER_E_STATE'),
    'exit.scale': E('CLUSTER_E_STATE'),
    'stop.callback': 'ok',
    'next.message': 'again',
  });
  assert.ok(fromLogger.length > 0, 'the logger was called while the cluster ran');
  assert.deepEqual([...new Set(fromLogger)], ['ok:true']);
  assert.equal(cluster.running, false);
});
