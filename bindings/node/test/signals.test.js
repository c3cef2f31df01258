'use strict';
// A primary run as a child process: SIGHUP reloads, SIGTERM stops it gracefully (exit 0),
// and its workers are gone afterwards.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('SIGHUP reloads, SIGTERM stops gracefully with exit code 0 and no worker left', { timeout: 30000 }, async (t) => {
  const fx = runFixture('signals.js');
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('ready', 15000);
  assert.equal(pids.length, 3);

  fx.child.kill('SIGHUP');
  const reloaded = await fx.waitFor('reloaded', 15000);
  assert.equal(reloaded.ok, true);
  const newPids = reloaded.pids.filter((p) => !pids.includes(p));
  assert.equal(newPids.length, 3, 'three replacements');

  fx.child.kill('SIGTERM');
  await fx.waitFor('shutdown');
  assert.deepEqual(await fx.waitExit(15000), { code: 0, signal: null });
  assert.deepEqual(fx.all('primary-exit').map((m) => m.code), [0]);
  for (const e of fx.all('exit')) assert.equal(e.eAD, true, `worker ${e.worker} was asked to stop`);
  assert.deepEqual(await waitGone([...pids, ...newPids]), [], 'every worker is gone');
});

test('SIGINT stops gracefully too', { timeout: 20000 }, async (t) => {
  const fx = runFixture('signals.js');
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('ready', 15000);
  fx.child.kill('SIGINT');
  assert.deepEqual(await fx.waitExit(15000), { code: 0, signal: null });
  assert.deepEqual(fx.all('exit').map((e) => [e.code, e.signal]), [[0, null], [0, null], [0, null]]);
  assert.deepEqual(await waitGone(pids), []);
});
