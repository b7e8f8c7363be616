//! Real redis-server processes on loopback ports of their own (common/ports.rs: a candidate,
//! retried until the listener is ours), one per node, killed on drop.
//!
//! The binary is `$INIESTA_REDIS_SERVER`, else `redis-server` on PATH (scripts/test.sh
//! installs it). A missing binary fails the test with that hint; nothing is skipped. The
//! machine's own Redis on 6379 is never used.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The redis-server binary.
pub fn redis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("INIESTA_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "INIESTA_REDIS_SERVER={} does not exist: install redis-server (scripts/test.sh does) or fix the variable",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found: run scripts/test.sh (it installs it with apt-get), or set INIESTA_REDIS_SERVER to the binary"
        )
    })
}

/// The command line of a redis-server on `port`, persistence off, files in `dir`.
fn command(port: u16, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(redis_binary());
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
        "--dir",
    ])
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// One redis-server on its own port and scratch directory.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start a server on a port of its own and wait until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, port) =
            super::ports::spawn_listening("redis-server", |port| command(port, dir.path()));
        let server = RedisServer {
            child: Some(child),
            port,
            dir,
        };
        server.wait_ping();
        server
    }

    /// Three servers for a Redlock quorum.
    pub fn three() -> Vec<RedisServer> {
        (0..3).map(|_| RedisServer::start()).collect()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, like a crash: nothing is saved (persistence is off).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)start on the same port, empty, and wait until this server listens there and
    /// answers (a restart cannot move: the clients were given this port).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = command(self.port, self.dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", redis_binary().display()));
        if let Err(why) =
            super::ports::wait_listening(&mut child, self.port, Duration::from_secs(30))
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server did not come back on port {}: {why:?}",
                self.port
            );
        }
        self.child = Some(child);
        self.wait_ping();
    }

    /// Wait until the server answers PING.
    fn wait_ping(&self) {
        let start = Instant::now();
        loop {
            if let Ok(reply) = self.try_cmd(&["PING"]) {
                if reply == "PONG" {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let value: redis::Value = cmd.query(&mut conn)?;
        Ok(render(&value))
    }

    /// Run one command and return its reply as text (nil as ""; arrays joined by newlines).
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Calls of one command since start (`INFO commandstats`), e.g. `calls("set")`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn render(value: &redis::Value) -> String {
    match value {
        redis::Value::Nil => String::new(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Okay => "OK".into(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(render).collect::<Vec<_>>().join("\n")
        }
        other => format!("{other:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
