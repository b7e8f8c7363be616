//! TLS for Redis lock servers: `rediss://` URLs (ElastiCache in-transit encryption, Redis with
//! `tls-port`) and `[lock.tls]`, the trusted roots and client certificate read once from the
//! files the config names.
//!
//! Without `[lock.tls]` a `rediss://` server's certificate is checked against the system's
//! trusted roots (as ElastiCache's are). `ca_file` trusts a private CA instead, and
//! `cert_file` + `key_file` present a client certificate (Redis `tls-auth-clients yes`).
//! Certificate and host name checks cannot be turned off.

use std::path::{Path, PathBuf};

use crate::config::LockTlsConfig;

use super::LockError;

/// The PEM files of `[lock.tls]`, read.
#[derive(Clone)]
pub struct TlsFiles {
    /// Trusted roots instead of the system's.
    root_cert: Option<Vec<u8>>,
    /// Client certificate chain and key, for mutual TLS.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key's bytes.
        f.debug_struct("TlsFiles")
            .field("ca", &self.root_cert.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, LockError> {
    let bytes = std::fs::read(path)
        .map_err(|e| LockError::Service(format!("lock.tls.{key} `{}`: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(LockError::Service(format!(
            "lock.tls.{key} `{}`: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl TlsFiles {
    /// Read the files `config` names, relative paths against `base_dir`; `None` without
    /// `[lock.tls]`.
    pub fn load(
        config: Option<&LockTlsConfig>,
        base_dir: &Path,
    ) -> Result<Option<TlsFiles>, LockError> {
        let Some(config) = config else {
            return Ok(None);
        };
        if let Some(why) = config.pairing_problem() {
            return Err(LockError::Service(format!("lock.tls: {why}")));
        }
        let resolve = |p: &PathBuf| crate::config::resolve_in(base_dir, p);
        let root_cert = match &config.ca_file {
            Some(path) => Some(read("ca_file", &resolve(path))?),
            None => None,
        };
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some((
                read("cert_file", &resolve(cert))?,
                read("key_file", &resolve(key))?,
            )),
            // Half a pair was refused above.
            _ => None,
        };
        Ok(Some(TlsFiles { root_cert, client }))
    }

    /// A client for a `rediss://` URL with these roots and client certificate.
    pub(super) fn client(&self, url: &str) -> ::redis::RedisResult<::redis::Client> {
        install_crypto_provider();
        ::redis::Client::build_with_tls(
            url,
            ::redis::TlsCertificates {
                client_tls: self
                    .client
                    .as_ref()
                    .map(|(cert, key)| ::redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                root_cert: self.root_cert.clone(),
            },
        )
    }
}

/// Make aws-lc-rs rustls' process-wide provider (the redis client builds its TLS config from
/// the process default, and a workspace build can enable a second provider, which would leave
/// none chosen). The first caller wins; an already installed provider is kept.
pub(super) fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Whether `url` asks for TLS.
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("valkeys://")
}
