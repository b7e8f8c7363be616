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
            format!("`{redacted}` is not a URL: write redis[s]://[[USER]:PASSWORD@]HOST[:PORT]"),
        ));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(Problem::new(
            "lock.server",
            format!("`{redacted}`: only redis:// and rediss:// (TLS) are supported"),
        ));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.is_empty() || !(tail.is_empty() || tail == "/") {
        return Err(Problem::new(
            "lock.server",
            format!("`{redacted}` must be redis[s]://[[USER]:PASSWORD@]HOST[:PORT] without a database: the databases come from lock.databases (default [1, 2, 3], the Python iniesta's)"),
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

/// Problems with the lock nodes: a malformed `server`/`databases`, two nodes (no quorum), or
/// `[lock.tls]` with no `rediss://` node to use it.
pub fn problems(config: &Config) -> Vec<Problem> {
    match node_urls(&config.lock) {
        Err(problem) => vec![problem],
        Ok(urls) if urls.len() == 2 => vec![Problem::new(
            "lock.urls",
            "two Redis servers cannot form a quorum: use none (in-process), one, or three or more",
        )],
        Ok(urls)
            if config.lock.tls.is_some() && !urls.iter().any(|u| super::tls::is_tls_url(u)) =>
        {
            vec![Problem::new(
                "lock.tls",
                "is set but no lock server is rediss:// (TLS): use rediss:// URLs or drop [lock.tls]",
            )]
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LockTlsConfig;

    #[test]
    fn rediss_servers_expand_and_tls_needs_a_rediss_node() {
        let mut lock = LockConfig {
            server: Some("rediss://iniesta:pw@h:6380".into()),
            ..LockConfig::default()
        };
        assert_eq!(
            node_urls(&lock).expect("valid"),
            [
                "rediss://iniesta:pw@h:6380/1",
                "rediss://iniesta:pw@h:6380/2",
                "rediss://iniesta:pw@h:6380/3"
            ]
        );
        lock.server = Some("http://h:1".into());
        let problem = node_urls(&lock).expect_err("not redis");
        assert!(problem.to_string().contains("rediss://"), "{problem}");

        let mut config: Config = toml::from_str("service = \"s\"").expect("config");
        config.lock = LockConfig {
            urls: vec!["redis://h:1".into()],
            tls: Some(LockTlsConfig::default()),
            ..LockConfig::default()
        };
        let found = problems(&config);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].to_string().contains("lock.tls"), "{}", found[0]);
        config.lock.urls = vec!["rediss://h:1".into()];
        assert!(problems(&config).is_empty());
    }
}
