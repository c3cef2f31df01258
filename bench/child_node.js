// The Node peers of bench/child_c.c (bench/full.sh, [children]):
//   node bench/child_node.js spawn N     N child_process.spawn('/bin/true') in a row, each
//                                        started from the previous one's 'close': children/s
//   node bench/child_node.js threads N   N postMessage round trips with one worker_threads
//                                        Worker echoing: round trips/s
// Prints one line: "<mode> <rate>".
'use strict';
const { spawn } = require('child_process');
const { Worker, isMainThread, parentPort } = require('worker_threads');

if (!isMainThread) {
  parentPort.on('message', (m) => {
    if (m === 'stop') process.exit(0);
    parentPort.postMessage(m);
  });
} else {
  const [mode, nText] = process.argv.slice(2);
  const n = Number(nText);
  const t0 = process.hrtime.bigint();
  const report = () => {
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`${mode} ${Math.round(n / secs)}`);
  };
  if (mode === 'spawn') {
    let done = 0;
    const next = () => {
      const c = spawn('/bin/true');
      c.on('close', (code) => {
        if (code !== 0) throw new Error(`/bin/true exited ${code}`);
        if (++done < n) next();
        else report();
      });
    };
    next();
  } else if (mode === 'threads') {
    const w = new Worker(__filename);
    let done = 0;
    const payload = new Uint8Array(8);
    w.on('message', (m) => {
      if (++done < n) w.postMessage(m);
      else {
        report();
        w.postMessage('stop');
      }
    });
    w.postMessage(payload);
  } else {
    console.error('usage: child_node.js spawn|threads N');
    process.exit(2);
  }
}
