'use strict';
// The Node drop-in (issue 15): unchanged node:cluster programs, run once on node:cluster and
// once on rcluster, must behave the same (as Node's cluster documentation describes).
const test = require('node:test');
const assert = require('node:assert');
const path = require('path');
const { runFixture, waitGone } = require('../fixtures/harness');

const MODULES = { 'node:cluster': 'cluster', rcluster: path.join(__dirname, '..') };

/** Runs fixtures/node/<name> on both modules; returns { module: run result }. */
async function both(name, check) {
  for (const [label, mod] of Object.entries(MODULES)) {
    const run = runFixture(path.join('node', name), { env: { CLUSTER_MODULE: mod, RCLUSTER_CHANNEL: '' } });
    try {
      await check(run, label);
    } finally {
      await run.kill();
    }
  }
}

test('an unchanged program shares a port, exchanges messages and leaves as under node:cluster', async () => {
  await both('basic.js', async (run, label) => {
    const forked = await run.waitFor('forked');
    assert.deepEqual(forked.ids, [1, 2], label);
    const answers = await run.waitFor('answers');
    assert.deepEqual(Object.keys(answers.by).sort(), ['worker 1', 'worker 2'], `${label}: both workers answer on one port`);
    const { events } = await run.waitFor('events');
    const exit = await run.waitExit();
    assert.equal(exit.code, 0, `${label}: the primary exits by itself once its workers are gone${run.describe()}`);
    for (const id of [1, 2]) {
      const mine = events.filter((e) => e.id === id);
      const names = mine.map((e) => e.name);
      assert.deepEqual(names.slice(0, 3), ['fork', 'online', 'listening'], `${label} worker ${id}: ${names}`);
      assert.ok(names.indexOf('disconnect') < names.indexOf('exit'), `${label} worker ${id}: 'disconnect' before 'exit': ${names}`);
      const listening = mine.find((e) => e.name === 'listening');
      assert.deepEqual([listening.address, listening.addressType, listening.port], ['127.0.0.1', 4, answers.port], label);
      const ex = mine.find((e) => e.name === 'exit');
      assert.deepEqual(
        [ex.code, ex.signal, ex.exitedAfterDisconnect, ex.dead, ex.connected],
        [0, null, true, true, false],
        `${label} worker ${id}`
      );
      assert.ok(mine.some((e) => e.name === 'message' && e.m.echoed), `${label} worker ${id} echoed`);
    }
    assert.equal(run.all('worker-disconnect').length, 2, label);
    const pids = run.messages.map((m) => m.pid);
    assert.deepEqual(await waitGone(pids), [], `${label}: nothing left behind`);
  });
});

for (const framework of ['express', 'fastify']) {
  test(`an unchanged ${framework} app shares its port across 2 workers as under node:cluster`, async () => {
    for (const [label, mod] of Object.entries(MODULES)) {
      const run = runFixture(path.join('node', 'frameworks.js'), {
        env: { CLUSTER_MODULE: mod, FRAMEWORK: framework, RCLUSTER_CHANNEL: '' },
      });
      try {
        const answers = await run.waitFor('answers');
        assert.deepEqual(Object.keys(answers.by).sort(), ['1', '2'], `${label}: both workers answer`);
        await run.waitFor('disconnected');
        const exit = await run.waitExit();
        assert.equal(exit.code, 0, `${label}${run.describe()}`);
        const exits = run.all('exit');
        assert.deepEqual(exits.map((e) => [e.code, e.signal]), [[0, null], [0, null]], label);
        assert.deepEqual(await waitGone(run.messages.map((m) => m.pid)), [], `${label}: nothing left behind`);
      } finally {
        await run.kill();
      }
    }
  });
}

test('garbage and an endless line on the channel: the worker is reported and dropped, the primary and the others carry on', async () => {
  const run = runFixture(path.join('node', 'hostile.js'), { env: { RCLUSTER_CHANNEL: '' } });
  try {
    const h = await run.waitFor('hostile-exit');
    assert.deepEqual([h.code, h.signal], [null, 'SIGKILL'], run.describe());
    assert.ok(h.errors.some((m) => /could not be decoded/.test(m)), `garbage reported: ${h.errors}`);
    assert.ok(h.errors.some((m) => /without a newline/.test(m)), `the endless line reported: ${h.errors}`);
    assert.equal((await run.waitFor('good-answers')).body, 'still here');
    const g = await run.waitFor('good-exit');
    assert.deepEqual([g.code, g.signal], [0, null]);
    assert.equal((await run.waitExit()).code, 0);
    assert.deepEqual(await waitGone(run.messages.map((m) => m.pid)), [], 'nothing left behind');
  } finally {
    await run.kill();
  }
});
