'use strict';
// Loads the compiled addon (build/rcluster.node, made by scripts/build.js at install time).

const path = require('path');

const file = path.join(__dirname, '..', 'build', 'rcluster.node');
let native;
try {
  native = require(file);
} catch (err) {
  const hint =
    err.code === 'MODULE_NOT_FOUND'
      ? 'the addon is not built: run `npm install` (or `node scripts/build.js`) in the rcluster package'
      : 'the addon could not be loaded (is librcluster.so where it was at build time? ' +
        'rebuild with RCLUSTER_LIB_DIR=<dir of librcluster.so> node scripts/build.js)';
  const e = new Error(`rcluster: ${hint}: ${err.message}`);
  e.code = 'ERR_RCLUSTER_ADDON';
  e.cause = err;
  throw e;
}
module.exports = native;
