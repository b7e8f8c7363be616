//! Redis lock servers over TLS and with ACL users, the way ElastiCache and hardened Redis
//! deployments run: a real redis-server started with `--tls-port` only (no plain port), a
//! certificate authority, server and client certificates this test makes (rcgen), and the
//! `default` user switched off in favour of an ACL user limited to the lock keys (`~sqs:*`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common;
use common::{Host, Scratch};
use iniesta::config::{LockConfig, LockTlsConfig};
use iniesta::lock::{key_for, LockError, Locks};
use iniesta::tasks::Tasks;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

const USER: &str = "iniesta";
const PASSWORD: &str = "s3cret-acl-password";

/// PEM files of one certificate authority and what it signed, in a scratch directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "iniesta test CA");
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        write("ca.pem", ca.pem());

        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write(
            "server.pem",
            server.signed_by(&server_key, &ca).expect("server").pem(),
        );
        write("server.key", server_key.serialize_pem());

        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "iniesta host");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write(
            "client.pem",
            client.signed_by(&client_key, &ca).expect("client").pem(),
        );
        write("client.key", client_key.serialize_pem());

        // A second, unrelated CA: the server's certificate does not chain to it.
        let other_key = KeyPair::generate().expect("other key");
        let mut other = CertificateParams::new(Vec::<String>::new()).expect("other params");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = CertifiedIssuer::self_signed(other, other_key).expect("other ca");
        write("other-ca.pem", other.pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A redis-server listening only on a TLS port, with the `default` user off and one ACL user.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// `mutual`: clients must present a certificate signed by the CA (`tls-auth-clients yes`).
    fn start(pki: &Pki, mutual: bool) -> TlsRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, port) = common::ports::spawn_listening("redis-server (TLS)", |port| {
            let mut cmd = Command::new(common::redis::redis_binary());
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .arg("--tls-cert-file")
                .arg(pki.path("server.pem"))
                .arg("--tls-key-file")
                .arg(pki.path("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.path("ca.pem"))
                .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
                // No anonymous access; the host's user may touch only the lock keys.
                .args(["--user", "default", "off"])
                .args([
                    "--user",
                    USER,
                    "on",
                    &format!(">{PASSWORD}"),
                    "~sqs:*",
                    "+@all",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        });
        TlsRedis {
            child,
            port,
            _dir: dir,
        }
    }

    /// `rediss://USER:PASSWORD@localhost:PORT` (optionally with a database).
    fn url(&self, password: &str, db: Option<u32>) -> String {
        let db = db.map(|d| format!("/{d}")).unwrap_or_default();
        format!("rediss://{USER}:{password}@localhost:{}{db}", self.port)
    }

    /// The server's answer to `args` as the ACL user over TLS (trusting the test CA and, for a
    /// mutual-TLS server, presenting the client certificate).
    fn cmd(&self, pki: &Pki, db: u32, args: &[&str]) -> redis::Value {
        let read = |name: &str| std::fs::read(pki.path(name)).expect("pem");
        let client = redis::Client::build_with_tls(
            self.url(PASSWORD, Some(db)),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read("client.pem"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.pem")),
            },
        )
        .expect("tls client");
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connects over TLS");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn).expect("answers")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls(pki: &Pki, ca: &str, client_certificate: bool) -> Option<LockTlsConfig> {
    Some(LockTlsConfig {
        ca_file: Some(pki.path(ca)),
        cert_file: client_certificate.then(|| pki.path("client.pem")),
        key_file: client_certificate.then(|| pki.path("client.key")),
    })
}

async fn locks(config: LockConfig) -> std::sync::Arc<dyn Locks> {
    iniesta::lock::from_config(&config, Path::new("."), &Tasks::new())
        .await
        .expect("the lock config is valid")
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD) && !text.contains("wr0ng-password"),
        "{what} shows a password: {text}"
    );
}

#[tokio::test]
async fn locks_over_tls_as_an_acl_user_on_one_server_and_on_the_python_layout() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, false);

    // One server.
    let single = locks(LockConfig {
        urls: vec![server.url(PASSWORD, None)],
        tls: tls(&pki, "ca.pem", false),
        ..LockConfig::default()
    })
    .await;
    single.check().await.expect("the TLS server answers");
    let id = uuid::Uuid::new_v4().to_string();
    let claims = single
        .try_acquire(std::slice::from_ref(&id), Duration::from_secs(10))
        .await
        .expect("decides");
    assert!(claims[0].is_some(), "the lock is taken");
    assert_eq!(
        server.cmd(&pki, 0, &["EXISTS", &key_for(&id)]),
        redis::Value::Int(1),
        "the lock key is on the TLS server"
    );

    // The Python iniesta's layout: databases 1, 2 and 3 of one rediss:// server, a Redlock
    // quorum; the ACL user may use every database.
    let python = locks(LockConfig {
        server: Some(server.url(PASSWORD, None)),
        tls: tls(&pki, "ca.pem", false),
        ..LockConfig::default()
    })
    .await;
    python.check().await.expect("all three nodes answer");
    let id = uuid::Uuid::new_v4().to_string();
    let claims = python
        .try_acquire(std::slice::from_ref(&id), Duration::from_secs(10))
        .await
        .expect("decides");
    assert!(claims[0].is_some());
    for db in [1, 2, 3] {
        assert_eq!(
            server.cmd(&pki, db, &["EXISTS", &key_for(&id)]),
            redis::Value::Int(1),
            "database {db} holds the lock"
        );
    }
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, true);
    let with = locks(LockConfig {
        urls: vec![server.url(PASSWORD, None)],
        tls: tls(&pki, "ca.pem", true),
        ..LockConfig::default()
    })
    .await;
    with.check().await.expect("a client certificate gets in");

    let without = locks(LockConfig {
        urls: vec![server.url(PASSWORD, None)],
        tls: tls(&pki, "ca.pem", false),
        ..LockConfig::default()
    })
    .await;
    let err = without
        .check()
        .await
        .expect_err("refused without a certificate");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert_no_password("the error", &err.to_string());
}

#[tokio::test]
async fn an_untrusted_server_or_a_wrong_password_is_refused_without_leaking_it() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, false);
    // The server's certificate does not chain to this CA.
    let untrusted = locks(LockConfig {
        urls: vec![server.url(PASSWORD, None)],
        tls: tls(&pki, "other-ca.pem", false),
        ..LockConfig::default()
    })
    .await;
    let err = untrusted.check().await.expect_err("untrusted certificate");
    assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
    assert_no_password("the error", &err.to_string());

    // The system's roots do not know the test CA either.
    let system_roots = locks(LockConfig {
        urls: vec![server.url(PASSWORD, None)],
        ..LockConfig::default()
    })
    .await;
    assert!(system_roots.check().await.is_err());

    let wrong = locks(LockConfig {
        urls: vec![server.url("wr0ng-password", None)],
        tls: tls(&pki, "ca.pem", false),
        ..LockConfig::default()
    })
    .await;
    let err = wrong.check().await.expect_err("wrong password");
    assert_no_password("the error", &err.to_string());

    // Files that are missing or not PEM are refused up front, naming the key.
    std::fs::write(pki.path("not.pem"), "hello").expect("write");
    for (ca, why) in [
        ("missing.pem", "No such file"),
        ("not.pem", "not a PEM file"),
    ] {
        let config = LockConfig {
            urls: vec![server.url(PASSWORD, None)],
            tls: tls(&pki, ca, false),
            ..LockConfig::default()
        };
        let err = iniesta::lock::from_config(&config, Path::new("."), &Tasks::new())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("lock.tls.ca_file") && err.contains(why),
            "{ca}: {err}"
        );
    }
}

/// `iniesta run` end to end with its lock server on TLS with an ACL user, `[lock.tls]` paths
/// relative to the config file, at trace level: messages are handled once, and no log line
/// shows the password.
#[test]
fn a_host_runs_with_its_locks_on_tls_and_never_logs_the_password() {
    let pki = Pki::new();
    let server = TlsRedis::start(&pki, true);
    let s = Scratch::new();
    for name in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(pki.path(name), s.path(name)).expect("copy pem");
    }
    let ledger = s.path("ledger.jsonl");
    let config = s.config(
        "",
        &format!(
            "[lock]\nurls = [\"{}\"]\n[lock.tls]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            server.url(PASSWORD, None),
            ledger.display()
        ),
    );
    let host = Host::start_with_env(&config, s.path("host.log"), &[("INIESTA_LOG", "trace")]);
    for i in 0..5 {
        common::publish(&config, &["Order.tls", &format!("{{\"n\":{i}}}")]);
    }
    s.wait_for("5 ledger lines", Duration::from_secs(60), || {
        s.ledger("ledger.jsonl").len() >= 5
    });
    let text = host.stop();
    assert!(
        text.contains("idempotency locks ready"),
        "the TLS lock server answered at start:\n{text}"
    );
    assert_eq!(s.ledger("ledger.jsonl").len(), 5, "each message once");
    assert_no_password("the host's log", &text);
}
