//! Which Redis servers are the lock nodes: `lock.urls`, or the Python iniesta's layout of one
//! server's databases (`lock.server` + `lock.databases`), and whether they can form a quorum.

use crate::config::{Config, LockConfig, Problem, PYTHON_INIESTA_LOCK_DATABASES};

/// The lock nodes' URLs: `urls`, or `server` with each of `databases` appended
/// (`redis://host:6379` → `redis://host:6379/1`, `/2`, `/3`). A problem names the key.
pub fn node_urls(config: &LockConfig) -> Result<Vec<String>, Problem> {
    let Some(server) = &config.server else {
        if config.databases.is_some() {
            return Err(Problem::new(
                "lock.databases",
                "is only used with lock.server (the databases of that server are the lock nodes)",
            ));
        }
        return Ok(config.urls.clone());
    };
    if !config.urls.is_empty() {
        return Err(Problem::new(
            "lock.server",
            "set lock.server or lock.urls, not both",
        ));
    }
    let redacted = super::url::redact(server);
    let Some((scheme, rest)) = server.split_once("://") else {
        return Err(Problem::new(
            "lock.server",
            format!("`{redacted}` is not a URL: write redis://[:PASSWORD@]HOST[:PORT]"),
        ));
    };
    if scheme != "redis" {
        return Err(Problem::new(
            "lock.server",
            format!("`{redacted}`: only redis:// is supported"),
        ));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.is_empty() || !(tail.is_empty() || tail == "/") {
        return Err(Problem::new(
            "lock.server",
            format!("`{redacted}` must be redis://[:PASSWORD@]HOST[:PORT] without a database: the databases come from lock.databases (default [1, 2, 3], the Python iniesta's)"),
        ));
    }
    let databases = config
        .databases
        .clone()
        .unwrap_or_else(|| PYTHON_INIESTA_LOCK_DATABASES.to_vec());
    let mut seen = std::collections::BTreeSet::new();
    if databases.is_empty() || databases.len() == 2 || !databases.iter().all(|d| seen.insert(*d)) {
        return Err(Problem::new(
            "lock.databases",
            "must list one database or three or more distinct ones (two cannot form a quorum)",
        ));
    }
    Ok(databases
        .iter()
        .map(|db| format!("{scheme}://{authority}/{db}"))
        .collect())
}

/// Problems with the lock nodes: a malformed `server`/`databases`, or two nodes (no quorum).
pub fn problems(config: &Config) -> Vec<Problem> {
    match node_urls(&config.lock) {
        Err(problem) => vec![problem],
        Ok(urls) if urls.len() == 2 => vec![Problem::new(
            "lock.urls",
            "two Redis servers cannot form a quorum: use none (in-process), one, or three or more",
        )],
        Ok(_) => Vec::new(),
    }
}

impl LockConfig {
    /// The lock nodes' URLs (see [`node_urls`]); defined here, beside the lock layout it
    /// knows, so `config` stays plain data.
    pub fn node_urls(&self) -> Result<Vec<String>, Problem> {
        node_urls(self)
    }
}
