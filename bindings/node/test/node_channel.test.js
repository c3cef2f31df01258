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

/** Runs scenario `name` on both modules; `check(run, label)` per module. */
async function scenario(name, check, env = {}) {
  for (const [label, mod] of Object.entries(MODULES)) {
    const run = runFixture(path.join('node', 'scenarios.js'), {
      env: { CLUSTER_MODULE: mod, SCENARIO: name, RCLUSTER_CHANNEL: '', ...env },
    });
    try {
      await check(run, label);
      assert.deepEqual(await waitGone(run.messages.map((m) => m.pid)), [], `${label}: nothing left behind`);
    } finally {
      await run.kill();
    }
  }
}

test('worker.kill() sends SIGTERM, the worker is not replaced, exitedAfterDisconnect is false', () =>
  scenario('kill', async (run, label) => {
    const e = await run.waitFor('exit');
    assert.deepEqual([e.code, e.signal, e.exitedAfterDisconnect, e.workers], [null, 'SIGTERM', false, 0], label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test('a worker that exits by itself keeps its code and is not restarted', () =>
  scenario('selfExit', async (run, label) => {
    const e = await run.waitFor('exit');
    assert.deepEqual([e.code, e.signal, e.exitedAfterDisconnect], [3, null, false], label);
    assert.equal((await run.waitFor('workers')).n, 0, label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test('fork(env), settings.args; the channel variables are gone from the worker environment', () =>
  scenario('env', async (run, label) => {
    const m = await run.waitFor('worker-env');
    assert.deepEqual(
      [m.greeting, m.uniqueId, m.channelFd, m.args, m.id, m.connected],
      ['hi', true, true, ['--flag'], 1, true],
      label
    );
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test("serialization 'advanced' carries Buffers, Maps, typed arrays and circular values", () =>
  scenario('advanced', async (run, label) => {
    const m = await run.waitFor('echo');
    assert.deepEqual([m.buf, m.map, m.u16, m.circular], ['ab', [['k', 1]], [7, 8], true], label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test("'json': a circular message fails as process.send fails", () =>
  scenario('jsonCircular', async (run, label) => {
    const m = await run.waitFor('send');
    assert.deepEqual(m.error, { name: 'TypeError', circular: true }, label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test('a net.Socket sent to a worker arrives as a net.Socket and comes back as one', () =>
  scenario('handles', async (run, label) => {
    const c = await run.waitFor('client');
    assert.equal(c.got, 'hello from worker\nand back\n', label);
    const b = await run.waitFor('back');
    assert.deepEqual([b.m, b.isSocket], ['back to you', true], label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test('SCHED_NONE: the workers share the listening socket and both serve', () =>
  scenario('schedNone', async (run, label) => {
    const a = await run.waitFor('answers');
    assert.equal(a.total, 40, label);
    assert.ok(a.workers >= 1, label); // the kernel balances: usually both, never guaranteed
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test('messages keep their order both ways', () =>
  scenario('ordering', async (run, label) => {
    assert.equal((await run.waitFor('order')).inOrder, true, label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test("when the primary dies, its workers see the channel close, run their 'exit' handlers and leave", async () => {
  const fs = require('fs');
  const os = require('os');
  for (const [label, mod] of Object.entries(MODULES)) {
    const mark = path.join(os.tmpdir(), `rcluster-primary-dies-${process.pid}-${label.replace(/:/g, '')}`);
    for (const f of [mark, `${mark}.disconnect`]) fs.rmSync(f, { force: true });
    const run = runFixture(path.join('node', 'scenarios.js'), {
      env: { CLUSTER_MODULE: mod, SCENARIO: 'primaryDies', RCLUSTER_CHANNEL: '', EXIT_MARK: mark },
    });
    try {
      const { pid } = await run.waitFor('worker');
      run.child.kill('SIGKILL');
      await run.waitExit();
      assert.deepEqual(await waitGone([pid], 10000), [], `${label}: the worker left by itself`);
      assert.match(fs.readFileSync(mark, 'utf8'), /exit handler ran/, label);
      assert.equal(fs.readFileSync(`${mark}.disconnect`, 'utf8'), 'x', `${label}: 'disconnect' in the worker`);
    } finally {
      await run.kill();
      for (const f of [mark, `${mark}.disconnect`]) fs.rmSync(f, { force: true });
    }
  }
});

test('setupPrimary() between forks: the next worker starts with the new cwd and args', () =>
  scenario('settingsChange', async (run, label) => {
    const { seen } = await run.waitFor('settings');
    assert.deepEqual(seen[0], { id: 1, cwd: process.cwd(), args: [] }, label);
    assert.deepEqual(seen[1], { id: 2, cwd: require('fs').realpathSync(require('os').tmpdir()), args: ['second'] }, label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));

test("rcluster's extra setupPrimary({ restart: true }) replaces a worker that exits unasked", async () => {
  const run = runFixture(path.join('node', 'scenarios.js'), {
    env: { CLUSTER_MODULE: MODULES.rcluster, SCENARIO: 'restart', RCLUSTER_CHANNEL: '' },
  });
  try {
    const r = await run.waitFor('restart');
    assert.deepEqual(r.forks, [1, 2]);
    assert.deepEqual(r.exits, [[1, 5], [2, 0]]);
    assert.equal((await run.waitExit()).code, 0);
    assert.deepEqual(await waitGone(run.messages.map((m) => m.pid)), [], 'nothing left behind');
  } finally {
    await run.kill();
  }
});

test('silent: true gives the worker pipes for stdin, stdout and stderr', () =>
  scenario('silent', async (run, label) => {
    const m = await run.waitFor('silent');
    assert.deepEqual([m.code, m.stdout, m.stderr], [0, 'got ping\n', 'to stderr\n'], label);
    assert.equal((await run.waitExit()).code, 0, label);
  }));
