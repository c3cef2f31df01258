//! Large payloads: written once into a sealed memfd and passed as an fd, so a 64 MiB message
//! is carried whole without fragmenting it over the channel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{Code, Error, Result};
use crate::sys::{cvt, owned};

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
    // SAFETY: fcntl with integer arguments.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) })?;
    Ok(fd)
}

/// Reads a sealed memfd of announced length `len` (checked against its real size and seals).
pub fn unseal(fd: &OwnedFd, len: u64) -> Result<Vec<u8>> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl with integer arguments; a non-memfd gives EINVAL.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    if seals < 0 || seals & needed != needed {
        return Err(Error::new(Code::Inval, "large-message fd is not a sealed memfd"));
    }
    // SAFETY: an all-zero stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    cvt(unsafe { libc::fstat(raw, &mut st) }).map_err(|e| Error::sys("fstat(memfd)", e))?;
    if st.st_size as u64 != len {
        return Err(Error::new(Code::Inval, format!("memfd holds {} bytes, frame announces {len}", st.st_size)));
    }
    let mut out = vec![0u8; len as usize];
    let mut off = 0usize;
    while off < out.len() {
        let rest = &mut out[off..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::pread(raw, rest.as_mut_ptr().cast(), rest.len(), off as libc::off_t) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::sys("read(memfd)", err));
        }
        if n == 0 {
            return Err(Error::new(Code::Inval, "memfd shorter than announced"));
        }
        off += n as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payload_round_trips() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let fd = seal(&data).unwrap();
        assert_eq!(unseal(&fd, data.len() as u64).unwrap(), data);
        assert!(unseal(&fd, data.len() as u64 + 1).is_err(), "a lying length is refused");
    }

    #[test]
    fn unsealed_fds_are_refused() {
        let fd = crate::sys::eventfd().unwrap();
        assert_eq!(unseal(&fd, 8).unwrap_err().code, Code::Inval);
    }
}
