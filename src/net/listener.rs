//! Listening sockets owned by the primary, and accepting on them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::ListenSpec;
use crate::error::{fail, Code, Error, Result};
use crate::sys::{self, cvt, owned};

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub fd: OwnedFd,
    /// What it was asked to listen on.
    pub spec: ListenSpec,
    /// The bound port (the real one when 0 was asked), 0 for Unix sockets.
    pub port: u16,
    /// A Unix socket file's (device, inode), to remove it only if it is still ours.
    pub unix_inode: Option<(u64, u64)>,
}

/// Resolves `host` (an IP literal or a name, looked up once, now) with `port`: the
/// configuration owns it, since a listen spec is resolved when it is added.
pub use crate::config::resolve;

/// A `sockaddr` for `addr`, and its length.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The port a socket is bound to.
pub fn bound_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable for `len` bytes.
    cvt(unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    Ok(match ss.ss_family as libc::c_int {
        // SAFETY: the family says which sockaddr the kernel wrote.
        libc::AF_INET => {
            u16::from_be(unsafe { (*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port })
        }
        // SAFETY: as above.
        libc::AF_INET6 => {
            u16::from_be(unsafe { (*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()).sin6_port })
        }
        _ => 0,
    })
}

/// Binds and listens on `spec`. Errors name the address: "bind 127.0.0.1:80: Permission
/// denied". With `reserve_only` (REUSEPORT: the workers bind their own sockets), a TCP socket
/// is bound with SO_REUSEPORT, to hold the port and learn it, but does not listen.
pub fn bind(spec: &ListenSpec, backlog: i32, reserve_only: bool) -> Result<Listener> {
    match spec {
        ListenSpec::Tcp { addr, .. } => {
            let fd =
                bind_tcp(addr, backlog, reserve_only).map_err(|(what, e)| Error::sys(format!("{what} {addr}"), e))?;
            let port = bound_port(fd.as_raw_fd()).map_err(|e| Error::sys(format!("getsockname {addr}"), e))?;
            Ok(Listener { fd, spec: spec.clone(), port, unix_inode: None })
        }
        _ if reserve_only => {
            fail(Code::Inval, format!("REUSEPORT works with TCP listeners only, not {}", describe(spec)))
        }
        ListenSpec::Unix { path, mode } => {
            let (fd, inode) = bind_unix(path, *mode, backlog)?;
            Ok(Listener { fd, spec: spec.clone(), port: 0, unix_inode: Some(inode) })
        }
        ListenSpec::Inherited { fd, name } => {
            crate::net::activation::claim(*fd)?;
            // SAFETY: systemd passed this fd to us, and `claim` lets one listener take it,
            // once per process: the primary owns it from here.
            let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) };
            sys::set_nonblocking(*fd, true).map_err(|e| Error::sys(format!("fcntl(inherited fd {fd} {name:?})"), e))?;
            let port = bound_port(*fd).unwrap_or(0);
            Ok(Listener { fd: owned, spec: spec.clone(), port, unix_inode: None })
        }
    }
}

/// A listener for messages: "127.0.0.1:8080", "unix:/run/app.sock", "fd 3 (web)".
pub fn describe(spec: &ListenSpec) -> String {
    match spec {
        ListenSpec::Tcp { addr, .. } => addr.to_string(),
        ListenSpec::Unix { path, .. } => format!("unix:{}", path.display()),
        ListenSpec::Inherited { fd, name } => format!("fd {fd} ({name})"),
    }
}

fn bind_tcp(
    addr: &SocketAddr,
    backlog: i32,
    reserve_only: bool,
) -> std::result::Result<OwnedFd, (&'static str, io::Error)> {
    let fd = tcp_socket(addr, reserve_only)?;
    let (ss, len) = to_sockaddr(addr);
    // SAFETY: `ss` holds a valid sockaddr of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })
        .map_err(|e| ("bind", e))?;
    if !reserve_only {
        // SAFETY: listen(2) takes integers.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(|e| ("listen", e))?;
    }
    Ok(fd)
}

fn tcp_socket(addr: &SocketAddr, reuseport: bool) -> std::result::Result<OwnedFd, (&'static str, io::Error)> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes integers.
    let fd = owned(unsafe { libc::socket(family, ty, 0) }).map_err(|e| ("socket", e))?;
    let raw = fd.as_raw_fd();
    sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|e| ("setsockopt(SO_REUSEADDR)", e))?;
    if reuseport {
        sys::set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|e| ("setsockopt(SO_REUSEPORT)", e))?;
    }
    if addr.is_ipv6() {
        // One family per socket: "::" means IPv6 only, so an IPv4 listener on the same port works.
        sys::set_int_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).map_err(|e| ("setsockopt(IPV6_V6ONLY)", e))?;
    }
    Ok(fd)
}

/// A worker's own SO_REUSEPORT listener on `addr` (REUSEPORT policy).
pub fn bind_reuseport(addr: &SocketAddr, backlog: i32) -> Result<OwnedFd> {
    let fd = tcp_socket(addr, true).map_err(|(what, e)| Error::sys(format!("{what} {addr}"), e))?;
    let (ss, len) = to_sockaddr(addr);
    // SAFETY: `ss` holds a valid sockaddr of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })
        .map_err(|e| Error::sys(format!("bind {addr} (SO_REUSEPORT)"), e))?;
    // SAFETY: listen(2) takes integers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(|e| Error::sys(format!("listen {addr}"), e))?;
    Ok(fd)
}

fn unix_addr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
        return fail(Code::Inval, format!("unix socket path {} is empty, too long or has a NUL", path.display()));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((sun, len as libc::socklen_t))
}

/// True when a server listens on the Unix socket at `sun`: a non-blocking connect that is
/// not refused. Never a blocking connect: a server whose backlog is full (a worker that asked
/// for this path may hold such a server) would stall the primary's loop; with O_NONBLOCK that
/// is EAGAIN, which also means someone listens there.
fn unix_server_listens(sun: &libc::sockaddr_un, len: libc::socklen_t) -> bool {
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes integers.
    let Ok(probe) = owned(unsafe { libc::socket(libc::AF_UNIX, ty, 0) }) else {
        // Cannot tell: say it is taken rather than unlink a live server's socket file.
        return true;
    };
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    match cvt(unsafe { libc::connect(probe.as_raw_fd(), (sun as *const libc::sockaddr_un).cast(), len) }) {
        Ok(_) => true,
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ENOENT)),
    }
}

/// Binds a Unix listener. A socket file left by a dead server (connect refused) is replaced;
/// one with a live server, or a file that is not a socket, is an error naming the path.
fn bind_unix(path: &Path, mode: Option<u32>, backlog: i32) -> Result<(OwnedFd, (u64, u64))> {
    let (sun, len) = unix_addr(path)?;
    let name = format!("unix:{}", path.display());
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes integers.
    let fd =
        owned(unsafe { libc::socket(libc::AF_UNIX, ty, 0) }).map_err(|e| Error::sys(format!("socket {name}"), e))?;
    let do_bind = || {
        // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&sun as *const libc::sockaddr_un).cast(), len) })
    };
    if let Err(e) = do_bind() {
        if e.raw_os_error() != Some(libc::EADDRINUSE) {
            return Err(Error::sys(format!("bind {name}"), e));
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::sys(format!("stat {name}"), e))?;
        if !meta.file_type().is_socket() {
            return fail(Code::Sys, format!("bind {name}: the path exists and is not a socket"));
        }
        if unix_server_listens(&sun, len) {
            return fail(Code::Sys, format!("bind {name}: another server is listening there"));
        }
        log::info!("{name}: replacing a stale socket file");
        std::fs::remove_file(path).map_err(|e| Error::sys(format!("unlink stale {name}"), e))?;
        do_bind().map_err(|e| Error::sys(format!("bind {name}"), e))?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::sys(format!("chmod {mode:o} {name}"), e))?;
    }
    // SAFETY: listen(2) takes integers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map_err(|e| Error::sys(format!("listen {name}"), e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::sys(format!("stat {name}"), e))?;
    Ok((fd, (meta.dev(), meta.ino())))
}

impl Listener {
    /// Removes a Unix listener's socket file if it is still the one we bound (the primary
    /// calls this once, when the cluster stops; never from a forked worker).
    pub fn unlink_socket_file(&self) {
        if let (ListenSpec::Unix { path, .. }, Some(inode)) = (&self.spec, self.unix_inode) {
            if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == inode) {
                std::fs::remove_file(path).ok();
            }
        }
    }
}

/// One accepted connection: blocking and CLOEXEC, as accept(2) gives it, with its peer address.
pub struct Accepted {
    /// The connection.
    pub fd: OwnedFd,
    /// The peer `sockaddr` bytes.
    pub peer: Vec<u8>,
}

/// Accepts one connection if one is waiting. Errors that concern only that connection
/// (ECONNABORTED, EPERM from a firewall) are skipped; EMFILE/ENFILE come back as errors so the
/// caller can pause accepting.
pub fn accept(listener: RawFd) -> io::Result<Option<Accepted>> {
    loop {
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `ss` is writable for `len` bytes. The accepted socket is blocking (workers get
        // it as accept(2) would give it) and CLOEXEC.
        let ret = unsafe {
            libc::accept4(listener, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len, libc::SOCK_CLOEXEC)
        };
        match owned(ret) {
            Ok(fd) => {
                // SAFETY: the kernel wrote `len` <= sizeof(ss) bytes of address.
                let bytes = unsafe {
                    std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), len as usize)
                };
                return Ok(Some(Accepted { fd, peer: bytes.to_vec() }));
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) | Some(libc::ECONNABORTED) | Some(libc::EPERM) | Some(libc::EPROTO) => continue,
                _ => return Err(e),
            },
        }
    }
}

/// True when `fd` is a connected stream socket whose peer address is `peer` (the bytes
/// accept(2) gave): how the primary checks a connection a worker gives back.
pub fn is_connection_from(fd: RawFd, peer: &[u8]) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` is writable for `len` bytes.
    let ok = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut kind as *mut libc::c_int).cast(), &mut len)
    };
    if ok != 0 || kind != libc::SOCK_STREAM {
        return false;
    }
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is writable for `len` bytes.
    if unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) } != 0 {
        return false;
    }
    // SAFETY: the kernel wrote `len` <= sizeof(ss) bytes of address.
    let got = unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), len as usize) };
    got == peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_literals_and_names() {
        assert_eq!(resolve("127.0.0.1", 80).unwrap(), "127.0.0.1:80".parse().unwrap());
        assert_eq!(resolve("::1", 80).unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(resolve("[::1]", 81).unwrap(), "[::1]:81".parse().unwrap());
        assert!(resolve("localhost", 80).is_ok());
        assert!(resolve("", 80).is_err());
        assert_eq!(resolve("not an ip!!", 80).unwrap_err().code, Code::Inval);
        let e = resolve("no-such-host.invalid", 80).unwrap_err();
        assert!(e.message.contains("no-such-host.invalid"), "{}", e.message);
    }

    #[test]
    fn port_zero_gets_a_real_port_and_reuse_is_refused_with_the_address() {
        let spec = ListenSpec::Tcp { host: "127.0.0.1".into(), addr: "127.0.0.1:0".parse().unwrap() };
        let l = bind(&spec, 16, false).unwrap();
        assert_ne!(l.port, 0);
        let taken =
            ListenSpec::Tcp { host: "127.0.0.1".into(), addr: SocketAddr::new("127.0.0.1".parse().unwrap(), l.port) };
        let e = bind(&taken, 16, false).unwrap_err();
        assert_eq!(e.code, Code::Sys);
        assert!(e.message.starts_with(&format!("bind 127.0.0.1:{}", l.port)), "{}", e.message);
    }

    #[test]
    fn unix_listeners_replace_stale_files_refuse_live_ones_and_set_modes() {
        let dir = std::env::temp_dir().join(format!("rcluster-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let spec = ListenSpec::Unix { path: path.clone(), mode: Some(0o600) };
        let l = bind(&spec, 16, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let e = bind(&spec, 16, false).unwrap_err();
        assert!(e.message.contains("another server is listening"), "{}", e.message);
        drop(l); // the file stays: stale now
        let l2 = bind(&spec, 16, false).expect("a stale socket file is replaced");
        l2.unlink_socket_file();
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        let e = bind(&spec, 16, false).unwrap_err();
        assert!(e.message.contains("not a socket"), "{}", e.message);
        let missing = ListenSpec::Unix { path: dir.join("no/such/dir/s.sock"), mode: None };
        let e = bind(&missing, 16, false).unwrap_err();
        assert_eq!(e.code, Code::Sys);
        assert!(e.message.contains("no/such/dir/s.sock"), "{}", e.message);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn accept_gives_blocking_cloexec_sockets() {
        let spec = ListenSpec::Tcp { host: "::1".into(), addr: "[::1]:0".parse().unwrap() };
        let Ok(l) = bind(&spec, 16, false) else { return }; // no IPv6 on this host
        assert!(accept(l.fd.as_raw_fd()).unwrap().is_none());
        let _c = std::net::TcpStream::connect(("::1", l.port)).unwrap();
        let mut got = None;
        for _ in 0..1000 {
            got = accept(l.fd.as_raw_fd()).unwrap();
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let a = got.expect("the connection was accepted");
        // SAFETY: fcntl on a valid fd.
        let (fl, fd_fl) =
            unsafe { (libc::fcntl(a.fd.as_raw_fd(), libc::F_GETFL), libc::fcntl(a.fd.as_raw_fd(), libc::F_GETFD)) };
        assert_eq!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd_fl & libc::FD_CLOEXEC, 0);
        assert_eq!(a.peer.len(), std::mem::size_of::<libc::sockaddr_in6>());
    }
}
