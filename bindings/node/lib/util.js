'use strict';

const os = require('os');

const SIGNALS = os.constants.signals;
const NAMES = Object.fromEntries(Object.entries(SIGNALS).map(([name, num]) => [num, name]));

function invalidArg(name, what) {
  const err = new TypeError(`rcluster: ${name} must be ${what}`);
  err.code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

/** An Error like the addon's: code 'CLUSTER_E_*', errno the number, for misuse the JS side
 * catches before the library (a primary call in a worker, a Worker of a finished run). */
function clusterError(name, errno, message) {
  const err = new Error(message);
  err.code = name;
  err.errno = errno;
  return err;
}

/** undefined/null (no callback) or a function; anything else is a TypeError. */
function checkCallback(callback, name = 'callback') {
  if (callback !== undefined && callback !== null && typeof callback !== 'function') {
    throw invalidArg(name, `a function (got ${typeof callback})`);
  }
  return typeof callback === 'function' ? callback : undefined;
}

/** An integer in 0..max (default: a uint32_t). */
function checkUint(value, name, max = 0xffffffff) {
  if (!Number.isInteger(value) || value < 0 || value > max) throw invalidArg(name, `an integer 0..${max} (got ${String(value)})`);
  return value;
}

function signalNumber(signal) {
  if (signal === undefined) return SIGNALS.SIGTERM;
  if (Number.isInteger(signal) && signal >= 0) return signal;
  if (typeof signal === 'string' && Object.prototype.hasOwnProperty.call(SIGNALS, signal)) return SIGNALS[signal];
  const err = new TypeError(`rcluster: unknown signal: ${signal}`);
  err.code = 'ERR_UNKNOWN_SIGNAL';
  throw err;
}

function signalName(num) {
  return NAMES[num] || `SIG${num}`;
}

/** fd number from an fd, or an object holding one (net.Socket/Server, fs.FileHandle...). */
function toFd(handle) {
  if (handle === undefined || handle === null) return undefined;
  if (Number.isInteger(handle) && handle >= 0) return handle;
  if (typeof handle === 'object') {
    if (Number.isInteger(handle.fd) && handle.fd >= 0) return handle.fd;
    if (handle._handle && Number.isInteger(handle._handle.fd) && handle._handle.fd >= 0) return handle._handle.fd;
  }
  throw invalidArg('the handle to pass', 'an fd number or an object with an fd (net.Socket, net.Server, FileHandle)');
}

/** Calls fn(); with a callback the error goes to it (next tick), without one it is thrown. A
 * callback that is not a function (nor undefined/null) is a TypeError, thrown before fn runs. */
function withCallback(fn, callback) {
  callback = checkCallback(callback);
  let err = null;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (typeof callback === 'function') {
    process.nextTick(callback, err);
    return err === null;
  }
  if (err) throw err;
  return true;
}

/** Rethrows on the next tick: a listener's exception becomes uncaught without stopping the
 * delivery of the other events of the batch. */
function rethrowLater(err) {
  process.nextTick(() => {
    throw err;
  });
}

/** Emits 'error' when someone listens, else a process warning (never an unhandled throw:
 * these are reports, the runtime carries on). */
function report(emitter, err) {
  if (emitter.listenerCount('error') > 0) emitter.emit('error', err);
  else process.emitWarning(err.message, { code: err.code });
}

module.exports = {
  invalidArg,
  clusterError,
  checkCallback,
  checkUint,
  signalNumber,
  signalName,
  toFd,
  withCallback,
  rethrowLater,
  report,
};
