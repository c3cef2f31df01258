// IPC echo: the primary sends 64-byte messages to one worker, which sends each back; prints
// round trips per second, with 64 messages in flight.
//   node ipc_echo.js node|rcluster [seconds]
'use strict';
const which = process.argv[2];
const secs = Number(process.argv[3] || 3);
const rc = which === 'rcluster';
const cluster = rc ? require('../bindings/node') : require('node:cluster');
const WINDOW = 64;
if (cluster.isPrimary) {
  if (rc) cluster.setupPrimary({ listen: [] });
  const w = cluster.fork();
  // node:cluster's send() carries JSON: the same 64 bytes travel as a string there; rcluster
  // carries the Buffer raw.
  const payload = rc ? Buffer.alloc(64, 7) : 'x'.repeat(64);
  let done = 0;
  let inflight = 0;
  let end = 0;
  const send = () => { inflight++; w.send(payload); };
  w.on('message', () => {
    done++;
    inflight--;
    if (Date.now() < end) send();
    else if (inflight === 0) {
      console.log(`${which} ipc echo: ${Math.round(done / secs)} round trips/s`);
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
