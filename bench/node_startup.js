// Startup and memory of node:cluster: time from before the first fork() until N workers are
// 'online' (they listen on nothing), then, after 300 ms idle, the primary's and one worker's
// VmRSS.   node node_startup.js [workers]
// Prints: startup node MS PRIMARY_RSS_KB WORKER_RSS_KB
'use strict';
const cluster = require('node:cluster');
const fs = require('node:fs');
const n = Number(process.argv[2] || 8);
const rss = (pid) => {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : -1;
};
if (cluster.isPrimary) {
  const t0 = process.hrtime.bigint();
  let online = 0;
  let last;
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('online', (w) => {
    last = w;
    if (++online < n) return;
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    setTimeout(() => {
      console.log(`startup node ${ms.toFixed(2)} ${rss(process.pid)} ${rss(last.process.pid)}`);
      for (const id in cluster.workers) cluster.workers[id].kill();
      setTimeout(() => process.exit(0), 50);
    }, 300);
  });
} else {
  setInterval(() => {}, 1 << 30); // stay alive, idle
}
