//! Listening sockets owned by the primary, and accepting on them.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::ListenSpec;
use crate::error::{fail, Code, Error, Result};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, UnixAddr};

use crate::sys;

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

/// The port a socket is bound to (0 for a socket of another family than IPv4/IPv6).
pub fn bound_port(fd: impl AsFd) -> nix::Result<u16> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_fd().as_raw_fd())?;
    Ok(addr.as_sockaddr_in().map(|a| a.port()).or_else(|| addr.as_sockaddr_in6().map(|a| a.port())).unwrap_or(0))
}

/// Binds and listens on `spec`. Errors name the address: "bind 127.0.0.1:80: Permission
/// denied". With `reserve_only` (REUSEPORT: the workers bind their own sockets), a TCP socket
/// is bound with SO_REUSEPORT, to hold the port and learn it, but does not listen.
pub fn bind(spec: &ListenSpec, backlog: i32, reserve_only: bool) -> Result<Listener> {
    match spec {
        ListenSpec::Tcp { addr, .. } => {
            let fd =
                bind_tcp(addr, backlog, reserve_only).map_err(|(what, e)| Error::sys(format!("{what} {addr}"), e))?;
            let port = bound_port(&fd).map_err(|e| Error::sys(format!("getsockname {addr}"), e))?;
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
            sys::set_nonblocking(&owned, true)
                .map_err(|e| Error::sys(format!("fcntl(inherited fd {fd} {name:?})"), e))?;
            let port = bound_port(&owned).unwrap_or(0);
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
) -> std::result::Result<OwnedFd, (&'static str, Errno)> {
    let fd = tcp_socket(addr, reserve_only)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr)).map_err(|e| ("bind", e))?;
    if !reserve_only {
        listen(&fd, backlog).map_err(|e| ("listen", e))?;
    }
    Ok(fd)
}

/// listen(2) with `backlog` (a negative one means the kernel's largest, as for listen(2)).
fn listen(fd: &OwnedFd, backlog: i32) -> nix::Result<()> {
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    socket::listen(fd, backlog)
}

/// A non-blocking, CLOEXEC socket of `family` and `ty`, numbered above stdio.
fn new_socket(family: AddressFamily, ty: SockType) -> nix::Result<OwnedFd> {
    sys::above_stdio(socket::socket(family, ty, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?)
}

fn tcp_socket(addr: &SocketAddr, reuseport: bool) -> std::result::Result<OwnedFd, (&'static str, Errno)> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = new_socket(family, SockType::Stream).map_err(|e| ("socket", e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| ("setsockopt(SO_REUSEADDR)", e))?;
    if reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(|e| ("setsockopt(SO_REUSEPORT)", e))?;
    }
    if addr.is_ipv6() {
        // One family per socket: "::" means IPv6 only, so an IPv4 listener on the same port works.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| ("setsockopt(IPV6_V6ONLY)", e))?;
    }
    Ok(fd)
}

/// A worker's own SO_REUSEPORT listener on `addr` (REUSEPORT policy).
pub fn bind_reuseport(addr: &SocketAddr, backlog: i32) -> Result<OwnedFd> {
    let fd = tcp_socket(addr, true).map_err(|(what, e)| Error::sys(format!("{what} {addr}"), e))?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr))
        .map_err(|e| Error::sys(format!("bind {addr} (SO_REUSEPORT)"), e))?;
    listen(&fd, backlog).map_err(|e| Error::sys(format!("listen {addr}"), e))?;
    Ok(fd)
}

fn unix_addr(path: &Path) -> Result<UnixAddr> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= 108 || bytes.contains(&0) {
        return fail(Code::Inval, format!("unix socket path {} is empty, too long or has a NUL", path.display()));
    }
    UnixAddr::new(path).map_err(|e| Error::sys(format!("unix socket path {}", path.display()), e))
}

/// True when a server listens on the Unix socket at `addr`: a non-blocking connect that is
/// not refused. Never a blocking connect: a server whose backlog is full (a worker that asked
/// for this path may hold such a server) would stall the primary's loop; with O_NONBLOCK that
/// is EAGAIN, which also means someone listens there.
fn unix_server_listens(addr: &UnixAddr) -> bool {
    let Ok(probe) = new_socket(AddressFamily::Unix, SockType::Stream) else {
        // Cannot tell: say it is taken rather than unlink a live server's socket file.
        return true;
    };
    match socket::connect(probe.as_raw_fd(), addr) {
        Ok(()) => true,
        Err(e) => !matches!(e, Errno::ECONNREFUSED | Errno::ENOENT),
    }
}

/// Binds a Unix listener. A socket file left by a dead server (connect refused) is replaced;
/// one with a live server, or a file that is not a socket, is an error naming the path.
fn bind_unix(path: &Path, mode: Option<u32>, backlog: i32) -> Result<(OwnedFd, (u64, u64))> {
    let addr = unix_addr(path)?;
    let name = format!("unix:{}", path.display());
    let fd = new_socket(AddressFamily::Unix, SockType::Stream).map_err(|e| Error::sys(format!("socket {name}"), e))?;
    let do_bind = || socket::bind(fd.as_raw_fd(), &addr);
    if let Err(e) = do_bind() {
        if e != Errno::EADDRINUSE {
            return Err(Error::sys(format!("bind {name}"), e));
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::sys(format!("stat {name}"), e))?;
        if !meta.file_type().is_socket() {
            let e = Error::new(Code::Sys, format!("bind {name}: the path exists and is not a socket"));
            return Err(Error { os: Some(libc::EADDRINUSE), ..e });
        }
        if unix_server_listens(&addr) {
            let e = Error::new(Code::Sys, format!("bind {name}: another server is listening there"));
            return Err(Error { os: Some(libc::EADDRINUSE), ..e });
        }
        log::info!("{name}: replacing a stale socket file");
        std::fs::remove_file(path).map_err(|e| Error::sys(format!("unlink stale {name}"), e))?;
        do_bind().map_err(|e| Error::sys(format!("bind {name}"), e))?;
    }
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::sys(format!("chmod {mode:o} {name}"), e))?;
    }
    listen(&fd, backlog).map_err(|e| Error::sys(format!("listen {name}"), e))?;
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
pub fn accept(listener: impl AsFd) -> nix::Result<Option<Accepted>> {
    loop {
        match sys::raw::accept_with_peer(listener.as_fd()) {
            Ok((fd, peer)) => return Ok(Some(Accepted { fd: sys::above_stdio(fd)?, peer })),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPERM | Errno::EPROTO) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// True when `fd` is a connected stream socket whose peer address is `peer` (the bytes
/// accept(2) gave): how the primary checks a connection a worker gives back.
pub fn is_connection_from(fd: impl AsFd, peer: &[u8]) -> bool {
    socket::getsockopt(&fd.as_fd(), sockopt::SockType).is_ok_and(|t| t == SockType::Stream)
        && sys::raw::peer_address(fd.as_fd()).is_ok_and(|got| got == peer)
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
        assert!(accept(&l.fd).unwrap().is_none());
        let _c = std::net::TcpStream::connect(("::1", l.port)).unwrap();
        let mut got = None;
        for _ in 0..1000 {
            got = accept(&l.fd).unwrap();
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let a = got.expect("the connection was accepted");
        use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
        let fl = OFlag::from_bits_retain(fcntl(&a.fd, FcntlArg::F_GETFL).unwrap());
        let fd_fl = FdFlag::from_bits_retain(fcntl(&a.fd, FcntlArg::F_GETFD).unwrap());
        assert!(!fl.contains(OFlag::O_NONBLOCK));
        assert!(fd_fl.contains(FdFlag::FD_CLOEXEC));
        assert_eq!(a.peer.len(), std::mem::size_of::<libc::sockaddr_in6>());
    }
}
