#!/usr/bin/env node
// Builds build/rcluster.node from src/addon.c with the system C compiler: no node-gyp,
// nothing downloaded. Run by `npm install` (the "install" script), or by hand:
//
//   node scripts/build.js            RCLUSTER_LIB_DIR=... RCLUSTER_INCLUDE_DIR=... CC=...
//
// Where things come from, in order:
//   node_api.h: <prefix of process.execPath>/include/node, /usr/include/node, then the
//     `node-api-headers` npm package if installed. uv.h: beside it, else /usr/include/node,
//     /usr/include, /usr/local/include (the system's libuv headers, e.g. libuv1-dev).
//   rcluster.h: $RCLUSTER_INCLUDE_DIR, ../../include (the repository), ./include (a packed
//     copy), then the compiler's default paths.
//   librcluster.so: $RCLUSTER_LIB_DIR, ../../target/release, ../../target/debug, then the
//     system's library path. A directory found here is also the addon's rpath.
'use strict';

const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const pkg = path.resolve(__dirname, '..');
const exists = (p) => {
  try {
    fs.accessSync(p);
    return true;
  } catch {
    return false;
  }
};
const say = (msg) => process.stderr.write(`rcluster build: ${msg}\n`);
const die = (msg) => {
  say(`error: ${msg}`);
  process.exit(1);
};

function nodeHeaders() {
  // node_api.h: the running Node's own headers first; uv.h: beside it, or the system's libuv
  // headers (Debian's libnode-dev has node_api.h, libuv1-dev has /usr/include/uv.h).
  const tried = [];
  const napiDirs = [
    path.join(path.dirname(path.dirname(process.execPath)), 'include', 'node'),
    '/usr/include/node',
  ];
  try {
    const nah = require('node-api-headers'); // optional: only if the user installed it
    if (nah.include_dir) napiDirs.push(nah.include_dir);
  } catch {
    tried.push('node-api-headers (not installed)');
  }
  const napi = napiDirs.find((d) => {
    tried.push(`${d}/node_api.h`);
    return exists(path.join(d, 'node_api.h'));
  });
  const uvDirs = [napi, '/usr/include/node', '/usr/include', '/usr/local/include'].filter(Boolean);
  const uv = uvDirs.find((d) => {
    tried.push(`${d}/uv.h`);
    return exists(path.join(d, 'uv.h'));
  });
  if (!napi || !uv) {
    return die(`Node headers not found (need node_api.h and uv.h); looked for:\n  ${tried.join('\n  ')}`);
  }
  return [...new Set([napi, uv])];
}

function rclusterInclude() {
  const candidates = [
    process.env.RCLUSTER_INCLUDE_DIR,
    path.join(pkg, '..', '..', 'include'),
    path.join(pkg, 'include'),
  ].filter(Boolean);
  for (const dir of candidates) {
    if (exists(path.join(dir, 'rcluster.h'))) return path.resolve(dir);
  }
  if (process.env.RCLUSTER_INCLUDE_DIR) die(`RCLUSTER_INCLUDE_DIR=${process.env.RCLUSTER_INCLUDE_DIR} has no rcluster.h`);
  say(`rcluster.h not in ${candidates.join(', ')}: relying on the compiler's default include path`);
  return null;
}

function rclusterLib() {
  if (process.env.RCLUSTER_LIB_DIR) {
    const dir = path.resolve(process.env.RCLUSTER_LIB_DIR);
    if (!exists(path.join(dir, 'librcluster.so'))) die(`RCLUSTER_LIB_DIR=${dir} has no librcluster.so`);
    return dir;
  }
  for (const profile of ['release', 'debug']) {
    const dir = path.join(pkg, '..', '..', 'target', profile);
    if (exists(path.join(dir, 'librcluster.so'))) return path.resolve(dir);
  }
  say('librcluster.so not in ../../target/{release,debug}: linking against the system library path');
  return null;
}

const headers = nodeHeaders();
const include = rclusterInclude();
const libDir = rclusterLib();
const out = path.join(pkg, 'build', 'rcluster.node');
fs.mkdirSync(path.dirname(out), { recursive: true });

const cc = process.env.CC || 'cc';
const args = [
  '-std=gnu11', '-O2', '-g',
  '-Wall', '-Wextra', '-Werror',
  '-fPIC', '-shared', '-fvisibility=hidden',
  ...headers.map((d) => `-I${d}`),
  ...(include ? [`-I${include}`] : []),
  path.join(pkg, 'src', 'addon.c'),
  '-o', out,
  ...(libDir ? [`-L${libDir}`, `-Wl,-rpath,${libDir}`] : []),
  '-lrcluster',
];
say(`${cc} ${args.join(' ')}`);
const r = spawnSync(cc, args, { stdio: 'inherit' });
if (r.error) die(`cannot run ${cc}: ${r.error.message} (set CC to your C compiler)`);
if (r.status !== 0) die(`${cc} failed (exit ${r.status})`);
say(`built ${path.relative(process.cwd(), out) || out}${libDir ? ` (librcluster.so from ${libDir})` : ''}`);
