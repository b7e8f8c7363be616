//! Ports without races.
//!
//! The old `free_port` bound port 0, read the port, closed the socket and handed the number on:
//! between the close and the other process's bind, anyone (another test of this binary,
//! another helper's suite on the same machine) could take it, and the test then talked to a
//! stranger or its server failed to start. Now:
//!
//! - **In-process servers** bind port 0 and keep the bound listener (`listener`), passing the
//!   listener or its address on.
//! - **The host under test** is configured with `listen = "127.0.0.1:0"`: the OS picks, the
//!   host binds before it starts consuming, and the test reads the port the host's own process
//!   is listening on from `/proc` (`listening_port`, `Host::port`). No hook in the host.
//! - **External servers** (redis-server, moto_server, nats-server, chromedriver) are started by
//!   `spawn_listening` on a candidate port, with a retry: it waits until the socket listening
//!   on that port belongs to *our* child (the socket's inode in `/proc/net/tcp` is one of the
//!   child's fds), and on "address in use" (the child exits) or a listener that is someone
//!   else's, it stops the child and tries another port. Why not let each pick its own and
//!   report it: redis-server has no "any port" (`--port 0` turns TCP off), moto_server
//!   (werkzeug) does not print the port it bound for 0, and one mechanism for all of them is
//!   simpler to trust than four log formats. A restart on the *same* port (a broker outage
//!   that ends) goes through `wait_listening` too, so it also fails loudly rather than talking
//!   to a stranger.
//! - `unused_port` is for a port that must refuse connections (nothing is started on it), and
//!   for one exception: the Python conformance peer's HTTP port, which nothing connects to but
//!   which Sanic cannot take as 0 (it turns 0 into its default 8000). A taken port makes that
//!   peer exit with "address already in use" and the test fail saying so; it is not retried.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long an external server may take to listen (moto imports a lot of Python).
const START_LIMIT: Duration = Duration::from_secs(60);

/// How many candidate ports `spawn_listening` tries before failing.
const ATTEMPTS: usize = 8;

/// A loopback listener on a port the OS chose, kept open; its port.
pub fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// A loopback port nothing listens on right now: only for tests that need a refused
/// connection. Nothing may be started on it (use `spawn_listening` or `listener` for that).
pub fn unused_port() -> u16 {
    listener().1
}

/// A candidate port for an external server (`spawn_listening` checks who got it). Never 6379
/// or 4222, where a developer's own Redis or NATS may be listening.
fn candidate() -> u16 {
    loop {
        let port = unused_port();
        if port != 6379 && port != 4222 {
            return port;
        }
    }
}

/// The inodes of the TCP sockets in LISTEN state on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> HashSet<u64> {
    listening_sockets()
        .into_iter()
        .filter(|&(p, _)| p == port)
        .map(|(_, inode)| inode)
        .collect()
}

/// Every listening TCP socket on the machine: (port, inode).
fn listening_sockets() -> Vec<(u16, u64)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let Some((_, port_hex)) = fields[1].rsplit_once(':') else {
                continue;
            };
            if let (Ok(port), Ok(inode)) =
                (u16::from_str_radix(port_hex, 16), fields[9].parse::<u64>())
            {
                sockets.push((port, inode));
            }
        }
    }
    sockets
}

/// The inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse().ok())
        })
        .collect()
}

/// Whether process `pid` itself holds the socket listening on `port`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let listening = listening_inodes(port);
    !listening.is_empty() && !socket_inodes(pid).is_disjoint(&listening)
}

/// The ports process `pid` is listening on.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mine = socket_inodes(pid);
    let mut ports: Vec<u16> = listening_sockets()
        .into_iter()
        .filter(|(_, inode)| mine.contains(inode))
        .map(|(port, _)| port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The one port process `pid` listens on, waiting for it (up to `limit`); fails the test when
/// it listens on none or on several.
pub fn listening_port(pid: u32, what: &str, limit: Duration) -> u16 {
    let start = Instant::now();
    loop {
        let ports = listening_ports(pid);
        match ports.as_slice() {
            [port] => return *port,
            [] => assert!(
                start.elapsed() < limit,
                "{what} (pid {pid}) listens on no port"
            ),
            several => panic!("{what} (pid {pid}) listens on several ports: {several:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why a started server is not serving on its port.
#[derive(Debug)]
pub enum NotListening {
    /// The process exited (most often: the port was taken).
    Exited(std::process::ExitStatus),
    /// Someone else listens on the port.
    Stranger,
    /// Nothing listened within the limit.
    Timeout,
}

/// Wait until `child` itself listens on `port`.
pub fn wait_listening(child: &mut Child, port: u16, limit: Duration) -> Result<(), NotListening> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotListening::Exited(status));
        }
        if listens_on(child.id(), port) {
            return Ok(());
        }
        if start.elapsed() >= limit {
            // Give a slow start the benefit of the doubt only while nobody else holds the port.
            return Err(if listening_inodes(port).is_empty() {
                NotListening::Timeout
            } else {
                NotListening::Stranger
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the server `command(port)` builds on a candidate port and wait until the child itself
/// listens there; on a taken port, try another (up to `ATTEMPTS`). The child and its port.
pub fn spawn_listening(what: &str, mut command: impl FnMut(u16) -> Command) -> (Child, u16) {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let port = candidate();
        let mut child = command(port)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        match wait_listening(&mut child, port, START_LIMIT) {
            Ok(()) => return (child, port),
            Err(NotListening::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not listen on port {port} within {START_LIMIT:?}");
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                last = Some((port, why));
            }
        }
    }
    panic!("{what} could not get a port in {ATTEMPTS} attempts; the last: {last:?}")
}
