//! A real nats-server per test on a free loopback port, stoppable and restartable on the same
//! port. `$INIESTA_NATS_SERVER` names the binary (scripts/test.sh installs and sets it); without
//! one the NATS tests fail, saying how to get it. They used to print why and pass as skipped,
//! which let a CI machine without nats-server report green on tests that never ran; a missing
//! external part fails everywhere (as redis-server, moto and chromium already did), not only
//! under `CI`, so a local run cannot claim coverage it did not have either.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary, or why there is none.
pub fn nats_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("INIESTA_NATS_SERVER").map(PathBuf::from) {
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "INIESTA_NATS_SERVER={} does not exist",
                path.display()
            ))
        };
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err("no nats-server binary (install it, e.g. apt-get install nats-server, or set INIESTA_NATS_SERVER)".into())
}

/// The nats-server binary; fails the test, saying how to get one, when there is none.
pub fn nats_server() -> PathBuf {
    nats_binary().unwrap_or_else(|reason| {
        panic!("{reason}: run scripts/test.sh, which installs nats-server (apt-get)")
    })
}

/// A nats-server process.
pub struct Nats {
    binary: PathBuf,
    pub port: u16,
    auth: Option<(String, String)>,
    jetstream: Option<PathBuf>,
    child: Option<Child>,
}

impl Nats {
    /// Start on a port of its own; `auth` requires that user and password.
    pub fn start(binary: PathBuf, auth: Option<(&str, &str)>) -> Nats {
        Nats::first_start(Nats {
            binary,
            port: 0,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            jetstream: None,
            child: None,
        })
    }

    /// Start with JetStream storing in `store` (kept across restarts).
    pub fn start_with_jetstream(binary: PathBuf, store: PathBuf) -> Nats {
        Nats::first_start(Nats {
            binary,
            port: 0,
            auth: None,
            jetstream: Some(store),
            child: None,
        })
    }

    /// The first start: a candidate port, retried until the listener is this server's
    /// (common/ports.rs).
    fn first_start(mut nats: Nats) -> Nats {
        let (child, port) = super::ports::spawn_listening("nats-server", |port| nats.command(port));
        nats.port = port;
        nats.child = Some(child);
        nats
    }

    /// The command line for a server on `port`.
    fn command(&self, port: u16) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((user, pass)) = &self.auth {
            cmd.args(["--user", user, "--pass", pass]);
        }
        if let Some(store) = &self.jetstream {
            cmd.arg("-js").arg("-sd").arg(store);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Restart on the same port (the outage ends where it began) and wait until this server
    /// listens there; one that exits at once (the port still in TIME_WAIT) is started again.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let start = Instant::now();
        loop {
            let mut child = self.command(self.port).spawn().expect("nats-server starts");
            match super::ports::wait_listening(&mut child, self.port, Duration::from_secs(30)) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "nats-server does not come back on port {}: {why:?}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Kill the server and wait until the port refuses connections.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A test-side NATS subscription collecting messages on its own runtime.
pub struct Subscription {
    runtime: tokio::runtime::Runtime,
    subscriber: Option<async_nats::Subscriber>,
    client: async_nats::Client,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // async-nats's Subscriber spawns its unsubscribe on drop: it needs the runtime.
        let _entered = self.runtime.enter();
        drop(self.subscriber.take());
    }
}

/// A received message: subject, headers (first value each), body.
#[derive(Debug, Clone)]
pub struct Got {
    pub subject: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Subscription {
    pub fn new(url: &str, auth: Option<(&str, &str)>, subject: &str) -> Subscription {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut options = async_nats::ConnectOptions::new();
        if let Some((u, p)) = auth {
            options = options.user_and_password(u.into(), p.into());
        }
        let (url, subject) = (url.to_string(), subject.to_string());
        let (client, subscriber) = runtime.block_on(async move {
            let client = options.connect(url).await.expect("test client connects");
            let subscriber = client.subscribe(subject).await.expect("subscribes");
            client.flush().await.expect("flush");
            (client, subscriber)
        });
        Subscription {
            runtime,
            subscriber: Some(subscriber),
            client,
        }
    }

    /// The next message, waiting up to `limit`.
    pub fn next(&mut self, limit: Duration) -> Option<Got> {
        use futures_util::StreamExt;
        let subscriber = self.subscriber.as_mut()?;
        self.runtime.block_on(async move {
            let message = tokio::time::timeout(limit, subscriber.next())
                .await
                .ok()??;
            let headers = message
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter_map(|(name, values)| {
                            values
                                .first()
                                .map(|v| (name.to_string(), v.as_str().to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(Got {
                subject: message.subject.to_string(),
                headers,
                body: message.payload.to_vec(),
            })
        })
    }

    /// A request (e.g. to the JetStream API): the reply's body as JSON.
    pub fn request(&self, subject: &str, body: &str) -> serde_json::Value {
        let (client, subject, body) = (
            self.client.clone(),
            subject.to_string(),
            bytes::Bytes::copy_from_slice(body.as_bytes()),
        );
        self.runtime.block_on(async move {
            let reply =
                tokio::time::timeout(Duration::from_secs(10), client.request(subject, body))
                    .await
                    .expect("a reply in time")
                    .expect("request");
            serde_json::from_slice(&reply.payload).expect("a JSON reply")
        })
    }

    /// Publish on this connection, with headers.
    pub fn publish(&self, subject: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        let (client, subject, body) = (
            self.client.clone(),
            subject.to_string(),
            bytes::Bytes::copy_from_slice(body),
        );
        self.runtime.block_on(async move {
            client
                .publish_with_headers(subject, map, body)
                .await
                .expect("publish");
            client.flush().await.expect("flush");
        });
    }
}
