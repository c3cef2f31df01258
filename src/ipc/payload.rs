//! Large payloads: written once into a sealed memfd and passed as an fd, so a 64 MiB message
//! is carried whole without fragmenting it over the channel.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::sys;

/// Further attempts at sealing a memfd that the kernel reports busy.
const SEAL_RETRIES: u32 = 20;

const SEALS: SealFlag =
    SealFlag::F_SEAL_SEAL.union(SealFlag::F_SEAL_SHRINK).union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_WRITE);

/// A new sealable, CLOEXEC memfd numbered above stdio.
fn new_memfd(name: &std::ffi::CStr) -> nix::Result<OwnedFd> {
    sys::above_stdio(memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?)
}

/// Copies `data` into a new memfd and seals it: the receiver can trust its size and contents
/// not to change under it.
pub fn seal(data: &[u8]) -> nix::Result<OwnedFd> {
    let fd = new_memfd(c"rcluster-msg")?;
    sys::write_all(&fd, data)?;
    // F_SEAL_WRITE fails with EBUSY while the kernel still holds extra references to the
    // pages just written (a per-CPU LRU batch of another CPU, under load: seen in a benchmark
    // once in a few thousand 1 MiB sends). They go away by themselves: try again a few times.
    for attempt in 0.. {
        match fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS)) {
            Ok(_) => break,
            Err(Errno::EBUSY) if attempt < SEAL_RETRIES => {
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
    ptr: NonNull<u8>,
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
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing borrows them now.
        unsafe { munmap(self.ptr.cast(), self.len) }.ok();
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
    // Shrinking would make the mapping fault (SIGBUS); writing would change it under the reader.
    let needed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE;
    // A non-memfd gives EINVAL.
    let sealed = fcntl(&fd, FcntlArg::F_GET_SEALS).is_ok_and(|s| SealFlag::from_bits_retain(s).contains(needed));
    if !sealed {
        // Not a memfd: it may be anything, a lingering socket too.
        crate::sys::close_untrusted(fd);
        return Err(NOT_SEALED);
    }
    let Ok(st) = nix::sys::stat::fstat(&fd) else { return Err(NOT_SEALED) };
    if st.st_size as u64 != len {
        return Err(NOT_SEALED);
    }
    if (st.st_blocks.max(0) as u64).saturating_mul(512) < len {
        return Err(SPARSE);
    }
    let Ok(len) = usize::try_from(len) else {
        return Err("large message does not fit the address space");
    };
    let Some(size) = NonZeroUsize::new(len) else {
        return Ok(Payload::default());
    };
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a file we hold; the kernel
    // picks the address, so no existing memory is touched.
    let ptr: NonNull<u8> = match unsafe { mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, &fd, 0) } {
        Ok(ptr) => ptr.cast(),
        Err(e) => {
            log::warn!("mmap of a {len}-byte message memfd: {e}");
            return Err("large-message memfd cannot be mapped");
        }
    };
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
            let fd = new_memfd(c"sparse").unwrap();
            sys::write_all(&fd, write).unwrap();
            nix::unistd::ftruncate(&fd, size as libc::off_t).unwrap();
            fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS)).unwrap();
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
