#!/usr/bin/env node
// prepack: copies the repository's include/rcluster.h into the package (include/), so that a
// packed tarball still builds away from the repository (scripts/build.js looks there third).
'use strict';
const fs = require('fs');
const path = require('path');
const src = path.join(__dirname, '..', '..', '..', 'include', 'rcluster.h');
const dst = path.join(__dirname, '..', 'include', 'rcluster.h');
fs.mkdirSync(path.dirname(dst), { recursive: true });
fs.copyFileSync(src, dst);
process.stderr.write(`rcluster: packed ${path.relative(process.cwd(), dst)}\n`);
