//! `[lock]`: idempotency locks (the node URLs are worked out by `lock::nodes`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[lock]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// Redis URLs: none = in-process locks. `rediss://` for TLS, `USER:PASSWORD@` for an ACL
    /// user.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The shortcut for the Python iniesta's lock layout: one Redis server
    /// (`redis://[:PASSWORD@]HOST[:PORT]`, no database) whose `databases` are the Redlock
    /// nodes. Instead of `urls`.
    #[serde(default)]
    pub server: Option<String>,
    /// With `server`: its databases used as nodes (default [`PYTHON_INIESTA_LOCK_DATABASES`]).
    #[serde(default)]
    pub databases: Option<Vec<u32>>,
    /// Attempts to take a lock, as aioredlock counts them (1 = one try, 0 is treated as 1),
    /// with a random 100–300 ms pause between attempts, before leaving the message.
    #[serde(default = "default_lock_retry")]
    pub retry_count: u32,
    /// Lock validity (s).
    #[serde(default = "default_lock_timeout")]
    pub timeout_secs: u64,
    /// How long a completion record (message id, binding) is kept after the binding acked,
    /// so a redelivered duplicate skips it (s); 0 turns completion records off.
    #[serde(default = "default_completion_ttl")]
    pub completion_ttl_secs: u64,
    /// `[lock.tls]`: trusted roots and a client certificate for `rediss://` servers.
    #[serde(default)]
    pub tls: Option<LockTlsConfig>,
}

/// `[lock.tls]`: PEM files for `rediss://` lock servers (paths relative to the config file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockTlsConfig {
    /// The CA certificate(s) to trust instead of the system's roots (a private CA, a
    /// self-signed server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain to present (Redis `tls-auth-clients yes`); with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key; with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// The Redis databases the Python iniesta takes its locks in, on one server
/// (`INIESTA_CACHES`: `iniesta1`..`iniesta3` are DBs 1, 2 and 3 of localhost:6379, the nodes
/// of its aioredlock).
pub const PYTHON_INIESTA_LOCK_DATABASES: [u32; 3] = [1, 2, 3];

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            server: None,
            databases: None,
            retry_count: default_lock_retry(),
            timeout_secs: default_lock_timeout(),
            completion_ttl_secs: default_completion_ttl(),
            tls: None,
        }
    }
}

fn default_lock_retry() -> u32 {
    1
}
fn default_lock_timeout() -> u64 {
    10
}
fn default_completion_ttl() -> u64 {
    3600
}

impl LockConfig {
    /// The section's own shape (the nodes and their quorum are checked by `lock::nodes`).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.timeout_secs == 0 {
            problems.push(Problem::new("lock.timeout_secs", "must be at least 1"));
        }
        if let Some(why) = self.tls.as_ref().and_then(LockTlsConfig::pairing_problem) {
            problems.push(Problem::new("lock.tls", why));
        }
        problems
    }
}

impl LockTlsConfig {
    /// Why the client certificate is half configured, if it is.
    pub fn pairing_problem(&self) -> Option<&'static str> {
        (self.cert_file.is_some() != self.key_file.is_some())
            .then_some("cert_file and key_file go together (a client certificate and its key)")
    }
}
