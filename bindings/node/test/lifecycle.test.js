'use strict';
// Worker exit events (kill, disconnect, crash + replacement) and rolling reload.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('kill(), disconnect() and a crash give the right exit events', { timeout: 30000 }, async (t) => {
  const fx = runFixture('lifecycle.js');
  t.after(() => fx.kill());
  const { pids } = await fx.waitFor('forked');
  const replacement = await fx.waitFor('replacement', 20000);
  const exits = Object.fromEntries(fx.all('exit').map((e) => [e.worker, e]));
  const common = { dead: true, connected: false, listed: false, state: 'dead' };
  assert.deepEqual(pick(exits[1]), { code: null, signal: 'SIGKILL', eAD: true, ...common });
  assert.deepEqual(pick(exits[2]), { code: 0, signal: null, eAD: true, ...common });
  assert.deepEqual(pick(exits[3]), { code: 3, signal: null, eAD: false, ...common });
  // The crashed worker (and only it) was replaced by the library.
  assert.equal(replacement.worker, 4);
  assert.deepEqual(replacement.workers, [4]);

  const { events } = await fx.waitFor('done');
  // Each worker's own 'disconnect' comes before its 'exit'.
  for (const id of [1, 2, 3]) {
    assert.ok(events.indexOf(`disconnect ${id}`) >= 0 && events.indexOf(`disconnect ${id}`) < events.findIndex((e) => e.startsWith(`exit ${id} `)), events.join(', '));
  }
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone([...pids, replacement.pid]), []);
});

test('cluster.reload() replaces every worker', { timeout: 30000 }, async (t) => {
  const fx = runFixture('reload.js');
  t.after(() => fx.kill());
  const { ok, before, after } = await fx.waitFor('replaced', 25000);
  assert.equal(ok, true);
  assert.equal(before.length, 3);
  assert.equal(after.length, 3, 'as many workers after as before');
  const oldIds = new Set(before.map((w) => w.id));
  const oldPids = new Set(before.map((w) => w.pid));
  for (const w of after) {
    assert.ok(!oldIds.has(w.id) && !oldPids.has(w.pid), `worker ${w.id} (pid ${w.pid}) is new`);
  }
  assert.equal((await fx.waitFor('reload-callback')).err, null);
  for (const id of oldIds) {
    const e = fx.all('exit').find((x) => x.worker === id);
    assert.deepEqual([e.code, e.signal, e.eAD], [0, null, true], `old worker ${id} drained and exited`);
  }
  await fx.waitFor('done');
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone([...before, ...after].map((w) => w.pid)), []);
});

function pick(e) {
  assert.ok(e, 'exit event present');
  const { code, signal, eAD, dead, connected, listed, state } = e;
  return { code, signal, eAD, dead, connected, listed, state };
}
