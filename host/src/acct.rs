//! Credential profiles for egress and ingress plugins, kept in a Fernet-encrypted file.
//!
//! As pop-evbus's `acct` did: a TOML file holds one table per plugin and one sub-table per
//! profile (`[nats.prod] url = "…" user = "…" password = "…"`); `iniesta acct encrypt FILE`
//! writes `FILE.fernet` and prints a new key; the host reads the encrypted file with the key
//! (`INIESTA_ACCT_FILE` / `INIESTA_ACCT_KEY`, or `--acct-file` / `--acct-key`). Tokens are
//! standard Fernet, so Python's `cryptography.fernet.Fernet(key).decrypt(...)` reads them too.
//!
//! Profile values are secrets: they go to a plugin's constructor and nowhere else. Nothing
//! here implements `Display` or `Debug` over values; [`Profiles::redacted`] shows the keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A secret text (the Fernet key) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself; use it, never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Where the profiles come from: the encrypted file and its key.
#[derive(Debug, Clone, Default)]
pub struct AcctSource {
    /// The `.fernet` file.
    pub file: Option<PathBuf>,
    /// Its key.
    pub key: Option<Secret>,
}

/// Why the profiles could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AcctError {
    /// A file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The key is not a Fernet key at all.
    #[error("the acct key is not a Fernet key (32 bytes, URL-safe base64, as `iniesta acct encrypt` prints it); check INIESTA_ACCT_KEY / --acct-key")]
    BadKey,
    /// The HMAC did not verify: wrong key, or the file changed after encryption.
    #[error("{}: cannot decrypt with this key: either the key is not the one the file was encrypted with, or the file was changed after encryption (check INIESTA_ACCT_KEY / --acct-key, or re-encrypt the plaintext with `iniesta acct encrypt`)", path.display())]
    Decrypt {
        /// The file.
        path: PathBuf,
    },
    /// The plaintext is not the expected TOML.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value).
        message: String,
    },
    /// A profile is named but no acct file is configured.
    #[error("profiles are used (`profile = \"…\"` in [[egress]]/[[ingress]]) but no acct file is set: set INIESTA_ACCT_FILE and INIESTA_ACCT_KEY (or pass --acct-file and --acct-key)")]
    NoFile,
    /// A file without a key.
    #[error("the acct file {} needs its key: set INIESTA_ACCT_KEY (or pass --acct-key)", file.display())]
    NoKey {
        /// The file.
        file: PathBuf,
    },
}

/// Every profile, by plugin and profile name.
#[derive(Default, Clone)]
pub struct Profiles {
    plugins: BTreeMap<String, BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
}

impl Profiles {
    /// Parse the plaintext TOML: `[plugin.profile]` tables of settings.
    pub fn parse(text: &str, path: &Path) -> Result<Profiles, AcctError> {
        let format = |message: String| AcctError::Format {
            path: path.to_path_buf(),
            message,
        };
        // The parser's message may quote the offending line, which may hold a secret.
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            format(format!(
                "not valid TOML{} (expected `[plugin.profile]` tables of settings)",
                e.span()
                    .map(|s| format!(" at byte {}", s.start))
                    .unwrap_or_default()
            ))
        })?;
        let mut plugins = BTreeMap::new();
        for (plugin, profiles) in table {
            let toml::Value::Table(profiles) = profiles else {
                return Err(format(format!(
                    "`{plugin}` must be a table of profiles, e.g. [{plugin}.default]"
                )));
            };
            let mut named = BTreeMap::new();
            for (profile, settings) in profiles {
                let toml::Value::Table(settings) = settings else {
                    return Err(format(format!(
                        "`{plugin}.{profile}` must be a table of settings, e.g. [{plugin}.{profile}] url = \"…\""
                    )));
                };
                let value = serde_json::to_value(&settings).map_err(|_| {
                    format(format!("`{plugin}.{profile}` has a value JSON cannot hold"))
                })?;
                let serde_json::Value::Object(map) = value else {
                    return Err(format(format!("`{plugin}.{profile}` is not a table")));
                };
                named.insert(profile, map);
            }
            plugins.insert(plugin, named);
        }
        Ok(Profiles { plugins })
    }

    /// Decrypt and parse `file` with `key`.
    pub fn load(file: &Path, key: &Secret) -> Result<Profiles, AcctError> {
        let plain = decrypt_file(file, key)?;
        let text = String::from_utf8(plain).map_err(|_| AcctError::Format {
            path: file.to_path_buf(),
            message: "the decrypted file is not UTF-8 text".into(),
        })?;
        Profiles::parse(&text, file)
    }

    /// The profiles a source names: none without a file; an error for a file without a key.
    pub fn from_source(source: &AcctSource) -> Result<Option<Profiles>, AcctError> {
        match (&source.file, &source.key) {
            (None, _) => Ok(None),
            (Some(file), None) => Err(AcctError::NoKey { file: file.clone() }),
            (Some(file), Some(key)) => Profiles::load(file, key).map(Some),
        }
    }

    /// One profile's settings.
    pub fn get(
        &self,
        plugin: &str,
        profile: &str,
    ) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.plugins.get(plugin).and_then(|p| p.get(profile))
    }

    /// `plugin.profile` for every profile.
    pub fn names(&self) -> Vec<String> {
        self.plugins
            .iter()
            .flat_map(|(plugin, profiles)| profiles.keys().map(move |p| format!("{plugin}.{p}")))
            .collect()
    }

    /// The profiles with every value replaced by `***`: what `iniesta acct show` prints.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        for (plugin, profiles) in &self.plugins {
            for (profile, settings) in profiles {
                out.push_str(&format!("[{plugin}.{profile}]\n"));
                for key in settings.keys() {
                    out.push_str(&format!("{key} = \"***\"\n"));
                }
                out.push('\n');
            }
        }
        out
    }
}

fn fernet(key: &Secret) -> Result<fernet::Fernet, AcctError> {
    fernet::Fernet::new(key.expose().trim()).ok_or(AcctError::BadKey)
}

/// Encrypt `plain` (a profiles TOML file) into `plain.fernet` with a new key; returns the
/// written path and the key. The plaintext is parsed first, so a broken file is refused
/// before anything is written.
pub fn encrypt_file(plain: &Path) -> Result<(PathBuf, Secret), AcctError> {
    let text = std::fs::read_to_string(plain).map_err(|cause| AcctError::Read {
        path: plain.to_path_buf(),
        cause,
    })?;
    Profiles::parse(&text, plain)?;
    let key = Secret(fernet::Fernet::generate_key());
    let token = fernet(&key)?.encrypt(text.as_bytes());
    let mut out = plain.as_os_str().to_owned();
    out.push(".fernet");
    let out = PathBuf::from(out);
    write_private(&out, token.as_bytes())?;
    Ok((out, key))
}

/// Decrypt a `.fernet` file with `key`.
pub fn decrypt_file(file: &Path, key: &Secret) -> Result<Vec<u8>, AcctError> {
    let fernet = fernet(key)?;
    let token = std::fs::read_to_string(file).map_err(|cause| AcctError::Read {
        path: file.to_path_buf(),
        cause,
    })?;
    fernet
        .decrypt(token.trim())
        .map_err(|_| AcctError::Decrypt {
            path: file.to_path_buf(),
        })
}

/// Write a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcctError> {
    let err = |cause| AcctError::Write {
        path: path.to_path_buf(),
        cause,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(bytes).map_err(err)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_redact() {
        let p = Profiles::parse(
            "[nats.prod]\nurl = \"nats://h:4222\"\npassword = \"s3cret\"\n[jsonl.local]\npath = \"x\"\n",
            Path::new("p.toml"),
        )
        .expect("parses");
        assert_eq!(p.names(), vec!["jsonl.local", "nats.prod"]);
        assert_eq!(
            p.get("nats", "prod").and_then(|m| m.get("password")),
            Some(&serde_json::json!("s3cret"))
        );
        assert!(!p.redacted().contains("s3cret"));
        assert!(p.redacted().contains("password = \"***\""));
    }

    #[test]
    fn bad_shapes_are_refused_without_values() {
        let e = Profiles::parse("nats = \"s3cret\"\n", Path::new("p.toml"))
            .err()
            .expect("refused");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = Profiles::parse("[nats]\nprod = \"s3cret\"\n", Path::new("p.toml"))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("nats.prod"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = Profiles::parse("[nats.prod]\npassword = s3cret\n", Path::new("p.toml"))
            .err()
            .expect("refused");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("k")), "Secret(***)");
    }
}
