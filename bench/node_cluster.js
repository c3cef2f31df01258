// Node's own cluster module in round-robin mode, serving the same response: the peer that
// rcluster is meant to replace.   node node_cluster.js PORT WORKERS
'use strict';
const cluster = require('node:cluster');
const net = require('node:net');
const RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok';
const [port, workers] = process.argv.slice(2).map(Number);
cluster.schedulingPolicy = cluster.SCHED_RR;
if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => { if (++ready === workers) console.log('ready'); });
} else {
  // A raw net server, like the C contestants: the comparison is the cluster, not http parsing.
  net.createServer((s) => {
    s.once('data', () => s.end(RESPONSE));
    s.on('error', () => {});
  }).listen(port, '127.0.0.1');
}
