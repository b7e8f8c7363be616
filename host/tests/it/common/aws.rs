//! A real moto server (SNS + SQS) per test, a TCP proxy to cut the network, SDK clients.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The moto_server binary: `$INIESTA_MOTO_SERVER`, else the venv scripts/test.sh installs.
pub fn moto_binary() -> PathBuf {
    let path = std::env::var_os("INIESTA_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::workspace_root().join("target/moto-venv/bin/moto_server"));
    assert!(
        path.exists(),
        "{} not found: run scripts/test.sh, which installs moto into target/moto-venv (or set INIESTA_MOTO_SERVER)",
        path.display()
    );
    path
}

/// A moto server on its own port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Start on a port of its own (common/ports.rs: a candidate, retried until the listener
    /// is this moto's).
    pub fn start() -> Moto {
        let binary = moto_binary();
        let (child, port) = super::ports::spawn_listening("moto_server", |port| {
            let mut cmd = Command::new(&binary);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        Moto { child, port }
    }

    /// Start one that checks every request's SigV4 signature (with botocore, as AWS would)
    /// and IAM permissions after the first `free_actions` requests, which it serves unsigned.
    pub fn start_authenticating(free_actions: u32) -> Moto {
        let binary = moto_binary();
        let (child, port) = super::ports::spawn_listening("moto_server", |port| {
            let mut cmd = Command::new(&binary);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("INITIAL_NO_AUTH_ACTION_COUNT", free_actions.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        Moto { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment every `iniesta` child needs against moto (dummy static credentials).
pub fn aws_env(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
}

pub fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

pub fn sns(endpoint: &str) -> aws_sdk_sns::Client {
    let conf = aws_sdk_sns::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_sns::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sns::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_sns::Client::from_conf(conf)
}

/// Create the SNS topic `name`; its ARN.
pub async fn create_topic(endpoint: &str, name: &str) -> String {
    sns(endpoint)
        .create_topic()
        .name(name)
        .send()
        .await
        .expect("topic")
        .topic_arn()
        .unwrap_or_default()
        .to_string()
}

/// The URL of a queue, failing the test (with the SDK's error) when it does not exist.
pub async fn queue_url(endpoint: &str, name: &str) -> String {
    sqs(endpoint)
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "queue {name}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })
        .queue_url()
        .unwrap_or_default()
        .to_string()
}

/// The approximate counts `which` of a queue (`ApproximateNumberOf…`), each read from one
/// `GetQueueAttributes` call, in the order asked for.
pub async fn approximate_counts(
    endpoint: &str,
    name: &str,
    which: &[aws_sdk_sqs::types::QueueAttributeName],
) -> Vec<u64> {
    let url = queue_url(endpoint, name).await;
    let out = sqs(endpoint)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("attributes");
    let attrs = out.attributes().cloned().unwrap_or_default();
    which
        .iter()
        .map(|k| {
            attrs
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Visible + in-flight messages on a queue.
pub async fn depth(endpoint: &str, name: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    approximate_counts(
        endpoint,
        name,
        &[
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ],
    )
    .await
    .iter()
    .sum()
}

/// A loopback TCP proxy that can be cut and restored on the same port.
pub struct Proxy {
    pub port: u16,
    target: u16,
    runtime: tokio::runtime::Runtime,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    /// Start on a port the OS picks (the first listener is kept, never closed and rebound).
    pub fn start(target: u16) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (listener, port) = super::ports::listener();
        listener.set_nonblocking(true).expect("nonblocking");
        let proxy = Proxy {
            port,
            target,
            runtime,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let listener = {
            let _guard = proxy.runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };
        proxy.serve(listener);
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Accept connections again, on the same port (the outage ends where it began).
    pub fn up(&self) {
        let port = self.port;
        let listener = self.runtime.block_on(async move {
            let start = Instant::now();
            loop {
                match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "cannot rebind proxy port: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        self.serve(listener);
    }

    /// Forward every connection `listener` accepts to the target.
    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, tasks) = (self.target, self.tasks.clone());
        let inner = tasks.clone();
        let accept = self.runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                inner.lock().expect("lock").push(conn);
            }
        });
        tasks.lock().expect("lock").push(accept);
    }

    /// Refuse new connections and cut every open one.
    pub fn down(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
        // Let the aborted tasks drop their sockets.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
}

/// `iniesta -c CONFIG ARGS...` with test AWS credentials, to completion.
pub fn iniesta(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    aws_env(Command::new(super::bin()).arg("-c").arg(config).args(args))
        .env("INIESTA_LOG", "info")
        .output()
        .expect("iniesta runs")
}

/// Like [`iniesta`], failing the test unless it exits 0; its stdout.
pub fn ok(config: &std::path::Path, args: &[&str]) -> String {
    let out = iniesta(config, args);
    assert!(
        out.status.success(),
        "iniesta {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `iniesta run` with test AWS credentials, its stderr in `log`; returns once it consumes.
pub fn start_host(config: &std::path::Path, log: PathBuf) -> super::Host {
    let file = std::fs::File::create(&log).expect("log");
    let child = aws_env(Command::new(super::bin()).arg("-c").arg(config).arg("run"))
        .env("INIESTA_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("host starts");
    let host = super::Host { child, log };
    let start = Instant::now();
    while !host.log_text().contains("consuming") {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "host did not start:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    host
}

/// An S3 client for moto (path-style: moto's buckets are not DNS names here).
pub fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The keys of every object in `bucket`.
pub async fn s3_keys(endpoint: &str, bucket: &str) -> Vec<String> {
    s3(endpoint)
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// `iniesta -c CONFIG ARGS...` with `stdin` written to its standard input, to completion.
pub fn iniesta_with_stdin(
    config: &std::path::Path,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = aws_env(Command::new(super::bin()).arg("-c").arg(config).args(args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write");
    child.wait_with_output().expect("ends")
}

/// The Python of the moto venv (scripts/test.sh installs the Amazon SQS and SNS Extended
/// Client Libraries there, beside moto's boto3).
pub fn moto_python() -> PathBuf {
    moto_binary()
        .parent()
        .map(|bin| bin.join("python"))
        .expect("moto_server is in a venv's bin")
}

/// Drain a queue with the SDK: (body, attributes) of every message.
pub async fn drain(
    endpoint: &str,
    name: &str,
) -> Vec<(
    String,
    std::collections::HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>,
)> {
    let client = sqs(endpoint);
    let url = queue_url(endpoint, name).await;
    let mut out = Vec::new();
    for _ in 0..5 {
        let got = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in got.messages() {
            out.push((
                m.body().unwrap_or_default().to_string(),
                m.message_attributes().cloned().unwrap_or_default(),
            ));
            let _ = client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await;
        }
    }
    out
}
