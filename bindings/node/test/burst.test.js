'use strict';
// A burst of 600 mixed messages each way: packed plain messages and unpacked events (fds,
// payloads past the packing limit, raw bytes) keep their order, type and bytes, and Buffers
// received earlier never change.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('a burst of mixed messages keeps order, type and bytes both ways', { timeout: 30000 }, async (t) => {
  const fx = runFixture('burst.js');
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('forked');
  const echoed = await fx.waitFor('echoed', 20000);
  assert.equal(echoed.got, 600);
  assert.deepEqual(echoed.wrong, []);
  const retained = await fx.waitFor('retained');
  assert.equal(retained.count, 360, 'every Buffer the worker received (6 kinds in 10)');
  assert.equal(retained.changed, 0, 'no received Buffer changed afterwards');
  await fx.waitFor('disconnected');
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone(pids), [], 'no worker left behind');
});
