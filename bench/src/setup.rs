//! Paths, configs and child processes: the host binary, plugins, redis-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The cargo profile directory this program runs from (`target/release` for the bench,
/// `target/debug` for tests): the host binary and the plugins are built there.
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?.to_path_buf();
    }
    Ok(dir)
}

/// The `target` directory (parent of the profile directory).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    Ok(profile_dir()?
        .parent()
        .context("profile dir has no parent")?
        .to_path_buf())
}

/// The `iniesta` binary next to this program.
pub fn host_binary() -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join("iniesta");
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p iniesta; the bench does it itself)",
            path.display()
        );
    }
    Ok(path)
}

/// A plugin library (`libecho.so`, ...) next to this program.
pub fn plugin_file(name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the plugins first (cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// A fresh plugin directory under `dir` holding copies of `libs`, so the host loads only those.
pub fn plugin_dir_with(dir: &Path, libs: &[&str]) -> anyhow::Result<PathBuf> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for lib in libs {
        std::fs::copy(plugin_file(lib)?, plugins.join(lib))
            .with_context(|| format!("cannot copy {lib}"))?;
    }
    Ok(plugins)
}

/// What an SQS-path host config holds.
#[derive(Debug, Clone)]
pub struct SqsHost {
    /// The canned endpoint.
    pub endpoint: String,
    /// The queue name.
    pub queue: String,
    /// `sqs.pollers`.
    pub pollers: usize,
    /// `sqs.max_in_flight`.
    pub max_in_flight: usize,
    /// `lock.urls`.
    pub lock_urls: Vec<String>,
    /// The plugins directory.
    pub plugins: PathBuf,
    /// `inline` on the echo binding: called on the async worker, no blocking-pool hand-off.
    pub inline: bool,
    /// An event the echo binding publishes (to the topic, SNS_PRODUCER) for every message.
    pub publish: Option<String>,
    /// `[tracing] otlp_endpoint`: tracing on, spans exported there.
    pub otlp_endpoint: Option<String>,
    /// A `[[bindings]]` entry (TOML) instead of the default one to the quiet echo.
    pub binding: Option<String>,
    /// `broker.sqs_client`: `lean` (the default) or `sdk`.
    pub sqs_client: &'static str,
}

impl SqsHost {
    /// The config text: QUEUE_POLLING on the AWS broker, one default binding to the quiet echo
    /// (inline when `inline`).
    pub fn config(&self) -> String {
        let urls: Vec<String> = self.lock_urls.iter().map(|u| format!("{u:?}")).collect();
        format!(
            r#"service = "bench"
env = "bench"
initialization = [{initialization}]

[broker]
kind = "aws"
region = "us-east-1"
endpoint_url = "{endpoint}"
sqs_client = "{sqs_client}"

[sqs]
queue_name = "{queue}"
max_messages = 10
wait_time_seconds = 20
visibility_timeout = 30
pollers = {pollers}
max_in_flight = {in_flight}
{sns}
[lock]
urls = [{urls}]

[plugins]
dirs = ["{plugins}"]
watch = false

{binding}
{tracing}"#,
            endpoint = self.endpoint,
            sqs_client = self.sqs_client,
            queue = self.queue,
            pollers = self.pollers,
            in_flight = self.max_in_flight,
            urls = urls.join(", "),
            plugins = self.plugins.display(),
            binding = self.binding.clone().unwrap_or_else(|| format!(
                "[[bindings]]\ndefault = true\nplugin = \"echo\"\ninline = {}\nconfig = {{ quiet = true{} }}",
                self.inline,
                self.publish
                    .as_ref()
                    .map(|e| format!(", publish = {e:?}"))
                    .unwrap_or_default()
            )),
            initialization = if self.publish.is_some() {
                r#""QUEUE_POLLING", "SNS_PRODUCER""#
            } else {
                r#""QUEUE_POLLING""#
            },
            sns = if self.publish.is_some() {
                "\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:123456789012:bench\"\n"
            } else {
                ""
            },
            tracing = self
                .otlp_endpoint
                .as_ref()
                .map(|e| format!("\n[tracing]\notlp_endpoint = {e:?}\n"))
                .unwrap_or_default(),
        )
    }
}

/// Environment for a child that talks to the canned endpoint: dummy static credentials, no
/// instance-metadata lookups, no profile.
pub fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
}

/// Spawn `iniesta -c CONFIG run --no-check` with stderr to `log`.
pub fn spawn_host(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(config)
        .args(["run", "--no-check"])
        .env("INIESTA_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(file);
    aws_env(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// Spawn any consumer command with output to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let err = file.try_clone()?;
    aws_env(cmd);
    cmd.stdout(file).stderr(err);
    cmd.spawn().context("cannot start the consumer")
}

/// SIGTERM, then wait up to `limit` (SIGKILL after that).
pub fn terminate(child: &mut Child, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(Some(status));
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill with a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A redis-server on a free loopback port (persistence off), killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// `$INIESTA_REDIS_SERVER`, else `redis-server` on PATH.
    pub fn binary() -> anyhow::Result<PathBuf> {
        if let Some(path) = std::env::var_os("INIESTA_REDIS_SERVER") {
            return Ok(PathBuf::from(path));
        }
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("redis-server"))
                    .find(|candidate| candidate.is_file())
            })
            .context("redis-server not found: install it (apt-get install redis-server, as scripts/test.sh does) or set INIESTA_REDIS_SERVER")
    }

    /// Start one and wait until it accepts connections.
    pub fn start() -> anyhow::Result<RedisServer> {
        let port = loop {
            let port = free_port()?;
            if port != 6379 {
                break port;
            }
        };
        let dir = tempfile::tempdir()?;
        let child = Command::new(Self::binary()?)
            .args([
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
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?;
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 7];
                    if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                        break;
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("redis-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The pid (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
