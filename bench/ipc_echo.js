// IPC echo: the primary sends SIZE-byte messages (default 64) to one worker, which sends each
// back; prints round trips per second, with 64 messages in flight (4 from 64 KiB up).
//   node ipc_echo.js node|rcluster [seconds] [size] [rtt]
// rtt: one message in flight; prints the median round-trip time in microseconds instead.
'use strict';
const which = process.argv[2];
const secs = Number(process.argv[3] || 3);
const rc = which === 'rcluster';
if (rc) process.env.RCLUSTER_CHANNEL = 'rcluster'; // rcluster's own channel: the binding's raw IPC
const cluster = rc ? require('../bindings/node') : require('node:cluster');
const size = Number(process.argv[4] || 64);
const rtt = process.argv[5] === 'rtt';
const WINDOW = rtt ? 1 : size >= 65536 ? 4 : 64;
const samples = [];
let sentAt = 0n;
if (cluster.isPrimary) {
  if (rc) cluster.setupPrimary({ listen: [] });
  const w = cluster.fork();
  // node:cluster's send() carries JSON: the same 64 bytes travel as a string there; rcluster
  // carries the Buffer raw.
  const payload = rc ? Buffer.alloc(size, 7) : 'x'.repeat(size);
  let done = 0;
  let inflight = 0;
  let end = 0;
  const send = () => { inflight++; if (rtt) sentAt = process.hrtime.bigint(); w.send(payload); };
  w.on('message', () => {
    if (rtt) samples.push(Number(process.hrtime.bigint() - sentAt) / 1000);
    done++;
    inflight--;
    if (Date.now() < end) send();
    else if (inflight === 0) {
      if (rtt) {
        samples.sort((a, b) => a - b);
        console.log(`${which} ipc rtt: ${samples[samples.length >> 1].toFixed(1)} us median (${size} B)`);
      } else {
        console.log(`${which} ipc echo: ${Math.round(done / secs)} round trips/s (${size} B)`);
      }
      w.kill();
      setTimeout(() => process.exit(0), 100);
    }
  });
  w.once(rc ? 'listening' : 'online', () => {
    end = Date.now() + secs * 1000;
    for (let i = 0; i < WINDOW; i++) send();
  });
} else if (rc) {
  cluster.worker.on('message', (m) => cluster.worker.send(m));
} else {
  process.on('message', (m) => process.send(m));
}
