// The same raw net handler as node_cluster.js, on rcluster (require('rcluster') instead of
// node:cluster): the "same JavaScript handler" comparison.   node node_rcluster.js PORT WORKERS [keepalive]
'use strict';
process.env.RCLUSTER_CHANNEL = 'rcluster'; // rcluster's own API (setupPrimary({ listen }), 'connection')
const cluster = require('../bindings/node');
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
if (cluster.isPrimary) {
  cluster.setupPrimary({ listen: [{ host: '127.0.0.1', port }], policy: 'rr' });
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => { if (++ready === workers) console.log('ready'); });
} else {
  const server = net.createServer((s) => {
    if (keepalive) s.on('data', (d) => onData(s, d));
    else s.once('data', () => s.end(RESPONSE));
    s.on('error', () => {});
  });
  cluster.worker.on('connection', (socket) => server.emit('connection', socket));
}
