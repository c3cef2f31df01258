//! Large payloads: written once into a sealed memfd and passed as an fd, so a 64 MiB message
//! is carried whole without fragmenting it over the channel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::sys::{cvt, owned};

/// Further attempts at sealing a memfd that the kernel reports busy.
const SEAL_RETRIES: u32 = 20;

const SEALS: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Copies `data` into a new memfd and seals it: the receiver can trust its size and contents
/// not to change under it.
pub fn seal(data: &[u8]) -> io::Result<OwnedFd> {
    let name = c"rcluster-msg";
    // SAFETY: `name` is a valid NUL-terminated string; flags are constants.
    let fd = owned(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
    let mut off = 0usize;
    while off < data.len() {
        let chunk = &data[off..];
        // SAFETY: `chunk` is valid for reads of its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        off += n as usize;
    }
    // F_SEAL_WRITE fails with EBUSY while the kernel still holds extra references to the
    // pages just written (a per-CPU LRU batch of another CPU, under load: seen in a benchmark
    // once in a few thousand 1 MiB sends). They go away by themselves: try again a few times.
    for attempt in 0.. {
        // SAFETY: fcntl with integer arguments.
        match cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) }) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < SEAL_RETRIES => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fd)
}

/// A message payload: bytes in memory, or (a large message) its sealed memfd mapped read-only,
/// so that receiving it copies nothing.
pub enum Payload {
    /// Inline bytes.
    Bytes(Vec<u8>),
    /// `len` bytes at `start` of a buffer shared with other payloads: the frames of one batch
    /// datagram, copied out of the read buffer once for all of them.
    Shared {
        /// The batch's bytes.
        buf: Arc<[u8]>,
        /// Where this payload starts in `buf`.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// A sealed memfd's contents, mapped.
    Mapped(Mapped),
}

impl Payload {
    /// An owned copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self[..].to_vec()
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::Bytes(Vec::new())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload::Bytes(v)
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Bytes(v) => v,
            Payload::Shared { buf, start, len } => &buf[*start..*start + *len],
            Payload::Mapped(m) => m.bytes(),
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Bytes(v) => write!(f, "Bytes({} bytes)", v.len()),
            Payload::Shared { len, .. } => write!(f, "Shared({len} bytes)"),
            Payload::Mapped(m) => write!(f, "Mapped({} bytes)", m.len),
        }
    }
}

/// A read-only mapping of a sealed memfd, unmapped on drop.
pub struct Mapped {
    ptr: *const u8,
    len: usize,
    /// The memfd itself: a relay passes it on instead of copying the bytes into a new one.
    memfd: Option<OwnedFd>,
}

// SAFETY: the mapping is read-only and nothing else in this process writes it (the memfd is
// sealed against writes, and its mapping is ours alone); sharing or moving it between threads
// is as safe as sharing a `&[u8]`.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The sealed memfd (taken: a relay passes it on), with its length.
    pub fn take_memfd(&mut self) -> Option<(OwnedFd, usize)> {
        self.memfd.take().map(|fd| (fd, self.len))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives; the memfd is
        // sealed against shrinking, so no access past its end can fault.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing borrows them now.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Why a large message's memfd is refused (a bad frame: the sender is dropped).
pub const NOT_SEALED: &str = "large-message memfd is not sealed or has the wrong size";
/// A memfd with holes: see [`unseal`].
pub const SPARSE: &str = "large-message memfd is sparse (holes its sender never wrote)";

/// Maps a sealed memfd of announced length `len` (checked against its real size, seals and
/// allocated blocks): the payload of a large message, without copying it. Refused with the
/// reason, to be reported as a bad frame.
///
/// A memfd whose size was set with `ftruncate` but never written is all holes, and reading a
/// hole of a memfd allocates a page, charged to the reader: a 64 MiB message its sender paid
/// nothing for would cost every receiver (and the host reading it in the primary) 64 MiB. So
/// every page must be there already (`st_blocks`), as it is for any memfd written in full
/// (`seal`); the seals keep holes from being punched afterwards.
pub fn unseal(fd: OwnedFd, len: u64) -> std::result::Result<Payload, &'static str> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl with integer arguments; a non-memfd gives EINVAL.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    // Shrinking would make the mapping fault (SIGBUS); writing would change it under the reader.
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    if seals < 0 || seals & needed != needed {
        // Not a memfd: it may be anything, a lingering socket too.
        crate::sys::close_untrusted(fd);
        return Err(NOT_SEALED);
    }
    // SAFETY: an all-zero stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    if unsafe { libc::fstat(raw, &mut st) } != 0 || st.st_size as u64 != len {
        return Err(NOT_SEALED);
    }
    if (st.st_blocks.max(0) as u64).saturating_mul(512) < len {
        return Err(SPARSE);
    }
    let Ok(len) = usize::try_from(len) else {
        return Err("large message does not fit the address space");
    };
    if len == 0 {
        return Ok(Payload::default());
    }
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a file we hold; the kernel
    // picks the address.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, raw, 0) };
    if ptr == libc::MAP_FAILED {
        log::warn!("mmap of a {len}-byte message memfd: {}", io::Error::last_os_error());
        return Err("large-message memfd cannot be mapped");
    }
    Ok(Payload::Mapped(Mapped { ptr: ptr.cast(), len, memfd: Some(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payload_round_trips() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let fd = seal(&data).unwrap();
        let dup = crate::sys::dup_cloexec(&fd).unwrap();
        assert!(unseal(dup, data.len() as u64 + 1).is_err(), "a lying length is refused");
        assert_eq!(&unseal(fd, data.len() as u64).unwrap()[..], &data[..]);
    }

    #[test]
    fn unsealed_fds_are_refused() {
        let fd = crate::sys::eventfd().unwrap();
        assert_eq!(unseal(fd, 8).unwrap_err(), NOT_SEALED);
    }

    #[test]
    fn sealed_memfds_with_holes_are_refused() {
        let size = 4u64 << 20;
        let sealed_sparse = |write: &[u8]| {
            // SAFETY: a constant name, constant flags.
            let fd = crate::sys::owned(unsafe {
                libc::memfd_create(c"sparse".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
            })
            .unwrap();
            // SAFETY: fd is ours; `write` is valid for reads of its length.
            unsafe {
                assert_eq!(libc::write(fd.as_raw_fd(), write.as_ptr().cast(), write.len()), write.len() as isize);
                assert_eq!(libc::ftruncate(fd.as_raw_fd(), size as libc::off_t), 0);
                assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS), 0);
            }
            fd
        };
        assert_eq!(unseal(sealed_sparse(&[]), size).unwrap_err(), SPARSE, "all holes");
        assert_eq!(unseal(sealed_sparse(&[7u8; 1 << 20]), size).unwrap_err(), SPARSE, "a quarter written");
        let full: Vec<u8> = vec![1; size as usize];
        assert_eq!(unseal(seal(&full).unwrap(), size).unwrap().len(), full.len(), "written in full");
        let odd: Vec<u8> = vec![2; 100_001];
        assert_eq!(&unseal(seal(&odd).unwrap(), 100_001).unwrap()[..], &odd[..], "a size that is no page multiple");
    }
}
