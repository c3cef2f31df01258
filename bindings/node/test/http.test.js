'use strict';
// An http server in each worker, fed through cluster.worker 'connection' (a net.Socket);
// requests from the primary with http.get are spread over the workers.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('http requests to 127.0.0.1 are served by more than one worker', { timeout: 30000 }, async (t) => {
  const fx = runFixture('http.js', { args: ['30'] });
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('ready');
  const { answers } = await fx.waitFor('answers', 20000);
  assert.equal(answers.length, 30);
  for (const a of answers) {
    assert.equal(a.status, 200);
    assert.equal(a.body.peer, '127.0.0.1');
    assert.ok(pids.includes(a.body.pid), `answered by a worker of this cluster (${a.body.pid})`);
  }
  const byWorker = {};
  for (const a of answers) byWorker[a.body.id] = (byWorker[a.body.id] || 0) + 1;
  assert.ok(Object.keys(byWorker).length >= 2, `more than one worker answered: ${JSON.stringify(byWorker)}`);
  // Round-robin: every worker took a share.
  assert.equal(Object.keys(byWorker).length, 3, `all 3 workers answered: ${JSON.stringify(byWorker)}`);

  // Keep-alive connections must not hold up a graceful stop (idle ones are closed).
  const ka = await fx.waitFor('keepalive');
  assert.equal(ka.answers.length, 3);
  const { ms } = await fx.waitFor('stopped', 10000);
  assert.ok(ms < 3000, `stopped in ${ms} ms with keep-alive clients`);
  for (const e of fx.all('exit')) assert.deepEqual([e.code, e.signal, e.eAD], [0, null, true]);
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone(pids), []);
});

for (const policy of ['least', 'sticky', 'shared', 'reuseport']) {
  test(`policy ${policy}: every request answered through 'connection'`, { timeout: 20000 }, async (t) => {
    const fx = runFixture('http.js', { args: ['12', policy] });
    t.after(() => fx.kill());
    const { pids } = await fx.waitFor('ready');
    const { answers } = await fx.waitFor('answers', 15000);
    assert.equal(answers.length, 12);
    for (const a of answers) assert.equal(a.status, 200);
    if (policy === 'sticky') {
      // One client address: one worker slot.
      assert.equal(new Set(answers.map((a) => a.body.id)).size, 1, JSON.stringify(answers.map((a) => a.body.id)));
    }
    await fx.waitFor('stopped', 10000);
    assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
    assert.deepEqual(await waitGone(pids), []);
  });
}

test('a Unix socket listener (mode applied, file removed at the end)', { timeout: 20000 }, async (t) => {
  const os = require('node:os');
  const path = require('node:path');
  const sock = path.join(os.tmpdir(), `rcluster-test-${process.pid}.sock`);
  const fx = runFixture('unix.js', { args: [sock] });
  t.after(() => fx.kill());
  const { answers, mode, pids } = await fx.waitFor('answers', 15000);
  assert.equal(answers.length, 6);
  assert.deepEqual([...new Set(answers.map((a) => a.id))].sort(), [1, 2]);
  assert.equal(mode, 0o600);
  assert.equal((await fx.waitFor('done')).exists, false);
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone(pids), []);
});
