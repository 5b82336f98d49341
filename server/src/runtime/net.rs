//! Socket helpers for the client and peer ports.

use std::net::SocketAddr;
use std::time::Duration;

/// A listening socket with SO_REUSEADDR (so connections a predecessor left in TIME_WAIT do
/// not block the port) and, for the client port's shards, SO_REUSEPORT (every shard listens
/// on the port; glommio's own `bind` sets only that one). Must run on the executor that
/// will accept on it.
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let socket = bind_socket(addr, reuse_port)?;
    // SAFETY: a bound, listening socket whose only owner becomes the listener.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// As [`bind_listener`], with a second handle on the same socket (a dup) through which its
/// owner can shut it down while the listener is held elsewhere.
pub fn bind_listener_with_handle(addr: SocketAddr) -> std::io::Result<(glommio::net::TcpListener, socket2::Socket)> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let socket = bind_socket(addr, false)?;
    let handle = socket.try_clone()?;
    // SAFETY: a bound, listening socket whose only owner becomes the listener (the handle
    // is a separate descriptor).
    Ok((unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) }, handle))
}

/// A socket bound by [`bind_socket`] as a glommio listener: run on the executor that will
/// accept on it.
pub fn listener_from(socket: socket2::Socket) -> glommio::net::TcpListener {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    // SAFETY: a bound, listening socket whose only owner becomes the listener.
    unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) }
}

/// A bound, listening socket (any thread may bind it; see [`listener_from`]).
pub fn bind_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// SO_REUSEPORT (for the shards of this process) would also let a second server process
/// share the port and split the clients between two trees. So refuse to start if something
/// already accepts connections there. (A plain bind is no test: it also fails on
/// connections a killed predecessor left in FIN_WAIT.)
pub fn refuse_if_served(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    // A killed predecessor's listening socket can keep accepting for a moment while the
    // kernel tears down its io_uring instance: only a port that stays served for 3 s counts.
    let mut tries = 0;
    while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
        tries += 1;
        if tries >= 30 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{addr} is already served by another process"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
