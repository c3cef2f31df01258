'use strict';
// A finished program exits by itself: no process.exit, exit code 0.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('a primary that disconnects its workers exits by itself with code 0', { timeout: 20000 }, async (t) => {
  const fx = runFixture('natural_exit.js');
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('forked');
  await fx.waitFor('disconnect-called', 15000);
  assert.deepEqual(await fx.waitExit(10000), { code: 0, signal: null });
  assert.deepEqual(fx.all('message').map((m) => m.m), ['pong', 'pong']);
  assert.equal(fx.all('exit').length, 2);
  // Workers write to the primary's stdout (Node marks fds 0-2 close-on-exec; see README).
  assert.deepEqual(fx.all('worker-stdout').map((m) => m.id).sort(), [1, 2]);
  assert.deepEqual(fx.all('worker-stdout').map((m) => m.pid).sort(), [...pids].sort());
  assert.deepEqual(await waitGone(pids), []);
});

test('the end of the cluster is noticed at once, with no library timer running', { timeout: 20000 }, async (t) => {
  // The library becomes "finished" in a turn that leaves its fd silent; only the binding's
  // extra dispatch turn notices it (a heartbeat timer would otherwise wake it up to 1 s late).
  const fx = runFixture('natural_exit.js', { args: ['no-heartbeat'] });
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('forked');
  await fx.waitFor('disconnect-called', 15000);
  const t0 = Date.now();
  assert.deepEqual(await fx.waitExit(10000), { code: 0, signal: null });
  assert.ok(Date.now() - t0 < 900, `exited ${Date.now() - t0} ms after disconnect()`);
  assert.deepEqual(await waitGone(pids), []);
});
