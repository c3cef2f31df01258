// server_node_cluster.js: server.js on node:cluster, for comparison. Same program; only the
// require differs.
//
//   node server_node_cluster.js [port]      (default 8080; 0 picks a free port)
'use strict';
const http = require('http');
const cluster = require('node:cluster'); // <- the switch: require('rcluster')

const PORT = Number(process.argv[2] || process.env.PORT || 8080);
const WORKERS = 4;

if (cluster.isPrimary) {
  // node:cluster: nothing to bind here; each worker's server.listen() asks the primary.
  for (let i = 0; i < WORKERS; i++) cluster.fork();

  let listening = 0;
  cluster.on('listening', (worker, address) => {
    console.log(`primary: worker ${worker.id} (pid ${worker.process.pid}) is ready`);
    if (++listening === WORKERS) demo(address.port);
  });
  cluster.on('exit', (worker, code, signal) => console.log(`primary: worker ${worker.id} exited (${signal || `code ${code}`})`));
  console.log(`primary ${process.pid}: starting ${WORKERS} workers`);
} else {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`Hello from worker ${cluster.worker.id} (pid ${process.pid})\n`);
  });
  // node:cluster: listen in the worker; the primary owns the socket behind the scenes.
  server.listen(PORT, '127.0.0.1');
}

// Eight requests, one after the other, each on a new connection: who answered?
async function demo(port) {
  console.log(`primary: serving http://127.0.0.1:${port}/ (Ctrl-C stops)`);
  for (let i = 1; i <= 8; i++) {
    const body = await new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, agent: false }, (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve(text.trim()));
      }).on('error', reject);
    });
    console.log(`request ${i} -> ${body}`);
  }
}
