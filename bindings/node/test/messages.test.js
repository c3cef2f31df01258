'use strict';
// Primary + 3 workers: messages both ways keep their type (Buffer, string, JSON), 1 MiB
// payloads, an fd passed with a message, worker-to-worker relays with the true sender.
const test = require('node:test');
const assert = require('node:assert/strict');
const { runFixture, waitGone } = require('../fixtures/harness');

test('messages round-trip between the primary and 3 workers, and between workers', { timeout: 30000 }, async (t) => {
  const fx = runFixture('messages.js');
  t.after(() => fx.kill());
  const { ids, pids } = await fx.waitFor('forked');
  assert.deepEqual(ids, [1, 2, 3]);
  await fx.waitFor('exchanged', 20000);

  for (const id of ids) {
    const seen = fx.all((m) => m.kind === 'seen' && m.worker === id).map((m) => m.seen);
    const echoes = fx.all((m) => m.kind === 'echo' && m.worker === id).map((m) => m.got);
    for (const got of [seen, echoes]) {
      // In order, each with its own type, in the worker (seen) and back in the primary (echo).
      assert.deepEqual(got.slice(0, 4), [
        { type: 'buffer', len: 4, hex: '000102ff', sum: 258 },
        { type: 'string', value: 'héllo ✓ wörld' },
        { type: 'object', value: { a: 1, b: [true, null, 'x'], c: { d: 'e' } } },
        { type: 'number', value: 42 },
      ]);
      assert.equal(got[4].type, 'buffer');
      assert.equal(got[4].len, 1 << 20);
      assert.equal(got[4].sum, 22401, 'the 1 MiB payload arrives intact');
    }
  }

  // Worker-to-worker: relayed by the primary, which stamps the real sender.
  const relayed = fx.all('relayed').map((m) => `${m.from}->${m.by}:${m.msg.type}:${m.msg.value ?? m.msg.hex}`).sort();
  assert.deepEqual(relayed, ['1->2:string:hello from 1', '1->3:string:hello from 1', '2->3:buffer:020707', '3->1:buffer:030707']);

  // A send to a worker that does not exist comes back as an error event in the sender.
  const err = await fx.waitFor('worker-error');
  assert.equal(err.worker, 1);
  assert.equal(err.code, 'CLUSTER_EVENT_ERROR');
  assert.match(err.message, /999/);

  // An fd passed along with a message is usable by the receiver.
  assert.equal((await fx.waitFor('fd-content')).content, 'through the channel');

  await fx.waitFor('disconnected');
  assert.deepEqual(await fx.waitExit(), { code: 0, signal: null });
  assert.deepEqual(await waitGone(pids), [], 'no worker left behind');
});
