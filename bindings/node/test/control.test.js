'use strict';
// Backpressure, broadcast, scale, a worker leaving by itself, stats.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('backpressure, broadcast, scale up/down, a worker that leaves, stats', { timeout: 30000 }, async (t) => {
  const fx = runFixture('control.js');
  t.after(() => fx.kill());
  const again = await fx.waitFor('again');
  assert.equal(again.code, 'CLUSTER_E_AGAIN');
  assert.equal(again.errno, -4);
  assert.ok(again.sent >= 64, `the queue took ${again.sent} first`);
  await fx.waitFor('drain');
  const counted = await fx.waitFor('counted');
  assert.equal(counted.counted, counted.expected, 'every accepted message arrived, none of the refused one');
  assert.equal((await fx.waitFor('broadcast')).to, 2);
  assert.equal((await fx.waitFor('scaled-up', 15000)).workers.length, 4);
  assert.deepEqual((await fx.waitFor('scaled-down', 15000)).workers, [1, 2], 'the newest workers were stopped');
  const left = await fx.waitFor('left', 15000);
  assert.deepEqual(left.workers, [2], 'a worker that leaves on purpose is not replaced');
  assert.equal(left.total.workers, 1);
  const exits = fx.all('exit');
  assert.deepEqual(exits.map((e) => [e.worker, e.code, e.signal, e.eAD]).slice(0, 3).sort(), [[1, 0, null, true], [3, 0, null, true], [4, 0, null, true]]);
  const { pids } = await fx.waitFor('done');
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone(pids), []);
});
