//! systemd's readiness protocol (`sd_notify`) without libsystemd: when `NOTIFY_SOCKET`
//! is set (a `Type=notify` unit), state lines go to that datagram socket — `READY=1`
//! once the pools are up and their self-tests passed (the same moment `/readyz` turns
//! 200), `RELOADING=1` … `READY=1` around a SIGHUP reconfiguration, `STOPPING=1` on
//! shutdown. Without the variable nothing is sent.

/// Send `state` (newline-separated `KEY=value` lines); whether it was delivered.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    send(&path, state).is_ok()
}

#[cfg(unix)]
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // an abstract socket name (Linux)
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    }
    sock.send_to(state.as_bytes(), path)?;
    Ok(())
}

#[cfg(not(unix))]
fn send(_path: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Err(std::io::Error::other("sd_notify needs a Unix socket"))
}
