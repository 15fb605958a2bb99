//! Telling systemd how the server is doing (`sd_notify`), for units of
//! `Type=notify` and `Type=notify-reload`: `READY=1` once it listens,
//! `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1` around a reload, and
//! `STOPPING=1` when it shuts down.
//!
//! Messages go to the datagram socket `NOTIFY_SOCKET` names (a path, or an
//! abstract name starting with `@`); without it they go nowhere. No child
//! process ever sees `NOTIFY_SOCKET` (see
//! [`session::SpawnOptions`](crate::session::SpawnOptions)).

use std::io;
use std::os::unix::net::UnixDatagram;

/// The server listens: `READY=1` (also after a reload).
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// A reload begins: `RELOADING=1` with the monotonic clock in microseconds,
/// as `Type=notify-reload` asks.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    send(&format!("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={usec}"));
}

/// Shutdown begins: `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// Sends `state` to `NOTIFY_SOCKET`, when set; a failure is logged, never
/// fatal (the service manager may be gone).
fn send(state: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(err) = send_to(&addr, state) {
        tracing::warn!(cause = %err, "cannot notify the service manager");
    }
}

fn send_to(addr: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = addr.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ws-subprocess-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
