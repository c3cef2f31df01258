'use strict';
// The API in this very process (a primary): roles, errors, settings checks, the message codec,
// and a real cluster started, stopped and started again from inside a node:test process.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { once } = require('node:events');
const { Worker: Thread } = require('node:worker_threads');
// These tests drive rcluster's own channel (the Node-channel primary is tested in node_*.test.js).
process.env.RCLUSTER_CHANNEL = 'rcluster';
const cluster = require('..');
const { waitGone } = require('../fixtures/harness');

const echoWorker = path.join(__dirname, '..', 'fixtures', 'echo_worker.js');
const noop = path.join(__dirname, '..', 'fixtures', 'noop.js');

test('roles', () => {
  assert.equal(cluster.isPrimary, true);
  assert.equal(cluster.isMaster, true);
  assert.equal(cluster.isWorker, false);
  assert.equal(cluster.worker, undefined);
  assert.deepEqual(cluster.workers, {});
  assert.equal(typeof cluster.constants.CLUSTER_E_STATE, 'number');
});

test('library errors are Errors with the CLUSTER_E_* code, its number and the library sentence', () => {
  assert.throws(() => cluster.port(0), (err) => {
    assert.ok(err instanceof Error);
    assert.equal(err.code, 'CLUSTER_E_STATE');
    assert.equal(err.errno, -8);
    assert.match(err.message, /not started/);
    return true;
  });
  assert.throws(() => cluster.stats(), { code: 'CLUSTER_E_STATE' });
});

test('a start that fails (port in use) throws the library sentence and starts nothing', async () => {
  const busy = net.createServer().listen(0, '127.0.0.1');
  await once(busy, 'listening');
  try {
    assert.throws(
      () => cluster.setupPrimary({ exec: noop, execArgv: [], listen: [{ host: '127.0.0.1', port: busy.address().port }], workers: 1 }),
      (err) => {
        assert.equal(err.code, 'CLUSTER_E_SYS');
        assert.equal(err.errno, -9);
        assert.match(err.message, /bind/i);
        return true;
      }
    );
    assert.equal(cluster.running, false);
    assert.deepEqual(cluster.workers, {});
  } finally {
    busy.close();
    cluster.setupPrimary({ listen: [] });
  }
});

test('settings are checked up front', () => {
  assert.throws(() => cluster.setupPrimary({ policy: 'fastest' }), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => cluster.setupPrimary({ listen: ['no port here'] }), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.throws(() => cluster.setupPrimary({ listen: [{ port: 70000 }] }), { code: 'ERR_INVALID_ARG_TYPE' });
  assert.equal(cluster.settings.policy, undefined, 'a refused call leaves the settings alone');
  assert.throws(() => cluster.fork({ ROLE: 'x' }), { code: 'ERR_RCLUSTER_FORK_ENV' });
  assert.throws(
    () => cluster.setupPrimary({ listen: [{ host: 'no-such-host.invalid', port: 0 }], workers: 1, exec: noop }),
    (err) => err.code.startsWith('CLUSTER_E_') && err.message.length > 0
  );
  cluster.setupPrimary({ listen: [] });
});

test('message codec: one tag byte, and foreign payloads come through untouched', () => {
  const rt = (v) => cluster.decodeMessage(cluster.encodeMessage(v));
  assert.deepEqual(rt(Buffer.from([1, 2, 3])), Buffer.from([1, 2, 3]));
  assert.deepEqual(rt(new Uint16Array([1, 0x0203])), Buffer.from([1, 0, 3, 2]));
  assert.equal(rt('hé'), 'hé');
  assert.equal(rt(''), '');
  assert.deepEqual(rt({ a: [1, 'b', null] }), { a: [1, 'b', null] });
  assert.equal(rt(null), null);
  assert.deepEqual([...cluster.encodeMessage('A')], [0x02, 0x41]);
  assert.deepEqual([...cluster.encodeMessage([1])], [0x03, 0x5b, 0x31, 0x5d]);
  assert.deepEqual(cluster.decodeMessage(Buffer.from('plain bytes')), Buffer.from('plain bytes'));
  assert.deepEqual(cluster.decodeMessage(Buffer.alloc(0)), Buffer.alloc(0));
  assert.throws(() => cluster.encodeMessage(undefined), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('in a worker thread the cluster is out of reach', async () => {
  const code = `
    const { parentPort } = require('worker_threads');
    const cluster = require(${JSON.stringify(path.join(__dirname, '..'))});
    let err;
    try { cluster.fork(); } catch (e) { err = e.code; }
    parentPort.postMessage({ isPrimary: cluster.isPrimary, err });`;
  const t = new Thread(code, { eval: true });
  const [msg] = await once(t, 'message');
  assert.deepEqual(msg, { isPrimary: true, err: 'ERR_RCLUSTER_THREAD' });
  await once(t, 'exit');
});

test('a cluster inside this process: start, messages, stop, and start again', { timeout: 30000 }, async () => {
  const pids = [];
  for (const round of [1, 2]) {
    cluster.setupPrimary({ exec: echoWorker, execArgv: [], args: [], listen: [] });
    const workers = [cluster.fork(), cluster.fork()];
    assert.deepEqual(workers.map((w) => w.id), [1, 2], 'ids start at 1 in each run');
    pids.push(...workers.map((w) => w.process.pid));
    assert.equal(cluster.running, true);
    const replies = workers.map((w) => once(w, 'message'));
    await Promise.all(workers.map((w) => once(w, 'online')));
    workers[0].send({ round });
    workers[1].send(Buffer.from([round]));
    const [[a], [b]] = await Promise.all(replies);
    assert.deepEqual(a, { round });
    assert.deepEqual(b, Buffer.from([round]));
    const info = workers[0].info();
    assert.equal(info.pid, workers[0].process.pid);
    assert.ok(info.messagesIn >= 1 && info.messagesOut >= 1);
    assert.equal(cluster.stats().total.workers, 2);
    await new Promise((resolve) => cluster.disconnect(resolve));
    assert.equal(cluster.running, false);
    assert.deepEqual(cluster.workers, {});
    assert.ok(workers.every((w) => w.isDead() && w.exitedAfterDisconnect === true));
  }
  assert.deepEqual(await waitGone(pids), []);
  assert.equal(process.listenerCount('SIGTERM'), 0, 'signal handlers removed once the cluster is done');
});
