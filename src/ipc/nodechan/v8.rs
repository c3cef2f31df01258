//! The part of V8's serialization format (`v8.serialize`, what Node's `'advanced'` channel
//! carries) that the core needs to read and write its own cluster messages: objects, dense
//! arrays, strings, numbers, booleans, null and undefined. Anything else (Buffers, Maps,
//! references to earlier objects...) makes `decode` return None, and the message goes to the
//! host as it came (the binding decodes it with `v8.deserialize`).
//!
//! Written from V8's format description (src/objects/value-serializer.cc's tag list), not
//! from its code.

use serde_json::{Map, Number, Value};

const VERSION: u8 = 15;

const PADDING: u8 = 0;
const BEGIN_OBJECT: u8 = b'o';
const END_OBJECT: u8 = b'{';
const BEGIN_DENSE_ARRAY: u8 = b'A';
const END_DENSE_ARRAY: u8 = b'$';
const ONE_BYTE_STRING: u8 = b'"';
const TWO_BYTE_STRING: u8 = b'c';
const UTF8_STRING: u8 = b'S';
const INT32: u8 = b'I';
const UINT32: u8 = b'U';
const DOUBLE: u8 = b'N';
const TRUE: u8 = b'T';
const FALSE: u8 = b'F';
const NULL: u8 = b'0';
const UNDEFINED: u8 = b'_';
const THE_HOLE: u8 = b'-';

/// Encodes `value` with the serializer's header.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = vec![0xff, VERSION];
    write_value(&mut out, value);
    out
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    if s.chars().all(|c| (c as u32) < 0x100) {
        out.push(ONE_BYTE_STRING);
        varint(out, s.chars().count() as u64);
        out.extend(s.chars().map(|c| c as u8));
    } else {
        let units: Vec<u16> = s.encode_utf16().collect();
        let bytes = units.len() * 2;
        // Two-byte strings start at an even offset (V8 pads to align them).
        if (out.len() + 1 + varint_len(bytes as u64)) & 1 == 1 {
            out.push(PADDING);
        }
        out.push(TWO_BYTE_STRING);
        varint(out, bytes as u64);
        for u in units {
            out.extend_from_slice(&u.to_le_bytes());
        }
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(true) => out.push(TRUE),
        Value::Bool(false) => out.push(FALSE),
        Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => {
                out.push(INT32);
                varint(out, ((i << 1) ^ (i >> 31)) as u32 as u64);
            }
            None => {
                out.push(DOUBLE);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
            }
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(BEGIN_DENSE_ARRAY);
            varint(out, items.len() as u64);
            for item in items {
                write_value(out, item);
            }
            out.push(END_DENSE_ARRAY);
            varint(out, 0);
            varint(out, items.len() as u64);
        }
        Value::Object(map) => {
            out.push(BEGIN_OBJECT);
            for (k, v) in map {
                write_string(out, k);
                write_value(out, v);
            }
            out.push(END_OBJECT);
            varint(out, map.len() as u64);
        }
    }
}

/// Decodes a serializer's output (header included) when it holds only what this module
/// knows; None otherwise. `undefined` properties are left out, as JSON would.
pub fn decode(bytes: &[u8]) -> Option<Value> {
    let mut r = Reader { bytes, pos: 0, depth: 0 };
    if r.byte()? != 0xff {
        return None;
    }
    r.varint()?;
    let v = r.value()?;
    v.map(Some).unwrap_or(Some(Value::Null))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

/// Deepest nesting read: a hostile message cannot overflow the stack.
const MAX_DEPTH: usize = 64;

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn tag(&mut self) -> Option<u8> {
        loop {
            match self.byte()? {
                PADDING => continue,
                t => return Some(t),
            }
        }
    }

    fn string_of(&mut self, tag: u8) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        let raw = self.take(len)?;
        match tag {
            ONE_BYTE_STRING => Some(raw.iter().map(|&b| b as char).collect()),
            UTF8_STRING => String::from_utf8(raw.to_vec()).ok(),
            TWO_BYTE_STRING if len % 2 == 0 => {
                let units: Vec<u16> = raw.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                String::from_utf16(&units).ok()
            }
            _ => None,
        }
    }

    /// A value; Some(None) for undefined.
    fn value(&mut self) -> Option<Option<Value>> {
        let tag = self.tag()?;
        Some(Some(match tag {
            NULL => Value::Null,
            UNDEFINED | THE_HOLE => return Some(None),
            TRUE => Value::Bool(true),
            FALSE => Value::Bool(false),
            INT32 => {
                let z = self.varint()? as u32;
                Value::from(((z >> 1) as i32) ^ -((z & 1) as i32))
            }
            UINT32 => Value::from(self.varint()? as u32),
            DOUBLE => {
                let d = f64::from_le_bytes(self.take(8)?.try_into().ok()?);
                match Number::from_f64(d) {
                    Some(_) if d.fract() == 0.0 && d.abs() < 9.0e15 => Value::from(d as i64),
                    Some(n) => Value::Number(n),
                    None => Value::Null, // NaN and the infinities are null in JSON too
                }
            }
            ONE_BYTE_STRING | TWO_BYTE_STRING | UTF8_STRING => Value::String(self.string_of(tag)?),
            BEGIN_OBJECT => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return None;
                }
                let mut map = Map::new();
                loop {
                    let t = self.tag()?;
                    if t == END_OBJECT {
                        self.varint()?;
                        break;
                    }
                    let key = match t {
                        ONE_BYTE_STRING | TWO_BYTE_STRING | UTF8_STRING => self.string_of(t)?,
                        INT32 => {
                            let z = self.varint()? as u32;
                            (((z >> 1) as i32) ^ -((z & 1) as i32)).to_string()
                        }
                        UINT32 => self.varint()?.to_string(),
                        _ => return None,
                    };
                    if let Some(v) = self.value()? {
                        map.insert(key, v);
                    }
                }
                self.depth -= 1;
                Value::Object(map)
            }
            BEGIN_DENSE_ARRAY => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return None;
                }
                let len = usize::try_from(self.varint()?).ok()?;
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(self.value()?.unwrap_or(Value::Null));
                }
                if self.tag()? != END_DENSE_ARRAY {
                    return None; // extra properties on an array: not ours to read
                }
                self.varint()?;
                self.varint()?;
                self.depth -= 1;
                Value::Array(items)
            }
            _ => return None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_online_message_an_unchanged_worker_sends() {
        // Captured from Node 20 (docs/node-dropin.md, section 1), without its length prefix.
        let mut wire = vec![0xff, 0x0f, b'o', b'"', 3];
        wire.extend_from_slice(b"cmd");
        wire.extend_from_slice(&[b'"', 12]);
        wire.extend_from_slice(b"NODE_CLUSTER");
        wire.extend_from_slice(&[b'"', 3]);
        wire.extend_from_slice(b"act");
        wire.extend_from_slice(&[b'"', 6]);
        wire.extend_from_slice(b"online");
        wire.extend_from_slice(&[b'"', 3]);
        wire.extend_from_slice(b"seq");
        wire.extend_from_slice(&[b'I', 0, b'{', 3]);
        assert_eq!(decode(&wire).unwrap(), json!({"cmd": "NODE_CLUSTER", "act": "online", "seq": 0}));
        // serde_json orders keys; Node reads properties in any order.
        let ours = encode(&json!({"cmd": "NODE_CLUSTER", "act": "online", "seq": 0}));
        assert_eq!(ours.len(), wire.len());
        assert_eq!(decode(&ours), decode(&wire));
    }

    #[test]
    fn round_trips_and_refuses_what_it_does_not_know() {
        let v = json!({"a": [1, -2, 3.5, "x", null, true, false], "key": "ü:0:4", "snow": "☃", "big": 4294967296u64, "o": {}});
        assert_eq!(decode(&encode(&v)).unwrap(), v);
        assert!(decode(&[0xff, 0x0f, b'B', 1, 2]).is_none(), "a host object (Buffer) is the host's to read");
        assert!(decode(&[0xff, 0x0f, b'o', b'"', 200]).is_none(), "a truncated string");
        let deep: Vec<u8> = [0xff, 0x0f].into_iter().chain(std::iter::repeat_n(b'o', 10_000)).collect();
        assert!(decode(&deep).is_none(), "nesting is bounded");
    }
}
