'use strict';
// Messages on the wire: one tag byte, then the payload.
//
//   0x01  raw bytes   (sent: Buffer, any TypedArray, DataView, ArrayBuffer; received: Buffer)
//   0x02  UTF-8 text  (sent and received: string)
//   0x03  JSON text   (anything else JSON can carry; received: JSON.parse of it)
//
// A payload that is empty, or whose first byte is none of these, is delivered whole as a
// Buffer: a C or Python peer can send plain bytes (not starting with 0x01-0x03) and a Node
// receiver gets them as they are. To send to such a peer, prefix nothing and use sendRaw.

const TAG_BYTES = 0x01;
const TAG_STRING = 0x02;
const TAG_JSON = 0x03;
const RAW = -1; // no tag byte at all (sendRaw)

function invalid(message) {
  const err = new TypeError(message);
  err.code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

/** [tag, payload]: the payload is a string or bytes, as the addon takes them. */
function encode(value) {
  if (typeof value === 'string') return [TAG_STRING, value];
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return [TAG_BYTES, value];
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
    throw invalid(`rcluster: a message cannot be ${typeof value} (send a Buffer, a string, or a JSON value)`);
  }
  let json;
  try {
    json = JSON.stringify(value); // a BigInt, a cycle, a throwing toJSON: no JSON form
  } catch (e) {
    const err = invalid(`rcluster: this message has no JSON form: ${e.message}`);
    err.cause = e;
    throw err;
  }
  if (json === undefined) throw invalid('rcluster: this message has no JSON form');
  return [TAG_JSON, json];
}

/** The tag of a message sent as it is (a string or a Buffer), or 0 when it needs encode(). */
function plainTag(value) {
  if (typeof value === 'string') return TAG_STRING;
  if (Buffer.isBuffer(value)) return TAG_BYTES;
  return 0;
}

/** The value a sender's encode() carried; `buf` is a Buffer (or undefined for empty). */
function decode(buf) {
  return buf ? decodeAt(buf, 0, buf.length) : Buffer.alloc(0);
}

/**
 * The value carried by the `len` bytes of `buf` from `start` (a packed message of a batch:
 * Buffers come back as views into `buf`, like Node's own pooled Buffers).
 */
function decodeAt(buf, start, len) {
  if (len === 0) return Buffer.alloc(0);
  const end = start + len;
  switch (buf[start]) {
    case TAG_BYTES:
      return buf.subarray(start + 1, end);
    case TAG_STRING:
      return buf.toString('utf8', start + 1, end);
    case TAG_JSON:
      try {
        return JSON.parse(buf.toString('utf8', start + 1, end));
      } catch {
        return buf.subarray(start, end); // not ours after all: as it came
      }
    default:
      return buf.subarray(start, end);
  }
}

module.exports = { encode, decode, decodeAt, plainTag, TAG_BYTES, TAG_STRING, TAG_JSON, RAW };
