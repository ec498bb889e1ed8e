//! Sockets passed by systemd (socket activation, SPEC B1): `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` name listening sockets starting at fd 3. A listener whose name (`proxy`,
//! `public`, `admin`) was passed serves on that socket instead of binding its `listen` address.
//!
//! A passed socket outlives this process: systemd (or whoever passed it) keeps its own copy, so
//! connections that arrive while one process drains and the next starts wait in the kernel's
//! backlog instead of being refused.

use std::collections::HashMap;
use std::os::fd::FromRawFd as _;

/// The listener names a socket may be passed for.
pub const NAMES: [&str; 3] = ["proxy", "public", "admin"];

/// The passed sockets not yet taken by a listener.
#[derive(Debug, Default)]
pub struct Passed {
    sockets: HashMap<String, std::net::TcpListener>,
}

impl Passed {
    /// No passed sockets: every listener binds its address.
    pub fn none() -> Passed {
        Passed::default()
    }

    /// Takes the sockets systemd passed to this process and unsets the variables (a child
    /// process must not take them too); each becomes close-on-exec. Call it before other
    /// threads run: it changes the environment. Sockets of unknown names are closed and logged;
    /// a malformed environment is logged and ignored (every listener then binds).
    pub fn from_env() -> Passed {
        let fds = match sd_notify::listen_fds_with_names(true) {
            Ok(fds) => fds,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the sockets systemd passed");
                return Passed::none();
            }
        };
        let mut sockets = HashMap::new();
        for (fd, name) in fds {
            // Safety: systemd hands these descriptors to this process, which owns them from
            // here on; `listen_fds_with_names` returns each once, and only when LISTEN_PID
            // names this process.
            let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            if !NAMES.contains(&name.as_str()) {
                tracing::warn!(fd, name, "a passed socket has an unknown name (expected proxy, public or admin); closing it");
                continue;
            }
            if let Err(e) = socket.local_addr() {
                tracing::warn!(fd, name, error = %e, "a passed descriptor is not a socket; ignoring it");
                continue;
            }
            sockets.insert(name, socket);
        }
        Passed { sockets }
    }

    /// Adds `socket` under `name` (tests pass sockets without systemd).
    pub fn insert(&mut self, name: &str, socket: std::net::TcpListener) {
        self.sockets.insert(name.to_owned(), socket);
    }

    /// The socket passed for listener `name`, ready for tokio; `None` when none was passed.
    pub fn take(&mut self, name: &str) -> std::io::Result<Option<tokio::net::TcpListener>> {
        match self.sockets.remove(name) {
            None => Ok(None),
            Some(socket) => {
                socket.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(socket).map(Some)
            }
        }
    }

    /// Names passed but not taken (e.g. `public` while the public listener is off).
    pub fn unused(&self) -> Vec<&str> {
        self.sockets.keys().map(String::as_str).collect()
    }
}
