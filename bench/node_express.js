// An unchanged Express app written for node:cluster, run on node:cluster or on rcluster (the
// issue's drop-in comparison: only the require differs).
//   node node_express.js cluster|rcluster PORT WORKERS
// NODE_CLUSTER_SCHED_POLICY=none gives either one's SCHED_NONE.
'use strict';
const [which, port, workers] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const cluster = which === 'rcluster' ? require('../bindings/node') : require('node:cluster');
if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready');
  });
  const stop = () => cluster.disconnect(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const express = require('../bindings/node/node_modules/express');
  const app = express();
  app.get('/', (req, res) => res.send('ok'));
  app.listen(port, '127.0.0.1');
}
