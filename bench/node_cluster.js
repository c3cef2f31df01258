// Node's own cluster module in round-robin mode, serving the same response: the peer that
// rcluster is meant to replace.   node node_cluster.js PORT WORKERS [keepalive|close] [none]
// A fourth argument "none": SCHED_NONE (the workers accept on the shared socket themselves).
'use strict';
const cluster = require('node:cluster');
const net = require('node:net');
const RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok';
const [port, workers] = process.argv.slice(2, 4).map(Number);
// A third argument "keepalive": many requests per connection (one response per request read).
const keepalive = process.argv[4] === 'keepalive';
const RESPONSE_KA = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';
const onData = (s, d) => {
  const n = Math.max(1, d.toString('latin1').split('\r\n\r\n').length - 1);
  s.write(RESPONSE_KA.repeat(n));
};
cluster.schedulingPolicy = process.argv[5] === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => { if (++ready === workers) console.log('ready'); });
} else {
  // A raw net server, like the C contestants: the comparison is the cluster, not http parsing.
  net.createServer((s) => {
    if (keepalive) s.on('data', (d) => onData(s, d));
    else s.once('data', () => s.end(RESPONSE));
    s.on('error', () => {});
  }).listen(port, '127.0.0.1');
}
