//! Credential profiles for egress and ingress plugins, kept in a Fernet-encrypted file.
//!
//! The file format is pop-evbus's `acct`: a YAML file holds one map per plugin and one map
//! per profile below it (`nats: prod: {url: …, user: …, password: …}`); `iniesta acct encrypt
//! FILE` writes `FILE.fernet`, a Fernet token around the msgpack encoding of that data (what
//! the real `acct encrypt` writes), and prints a new key. So the same files and keys work with
//! the real `acct decrypt` and with iniesta. A `.toml` plaintext (`[nats.prod]` tables) is
//! accepted too and encrypted the same way; files written by older iniesta versions (TOML
//! text inside the token) still load. The host reads the encrypted file with the key
//! (`INIESTA_ACCT_FILE` / `INIESTA_ACCT_KEY`, or `--acct-file` / `--acct-key`).
//!
//! Profile values are secrets: they go to a plugin's constructor and nowhere else. Nothing
//! here implements `Display` or `Debug` over values; [`Profiles::redacted`] shows the keys.
//! Parse errors name a position, never the text there.

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

/// Top-level keys `acct` itself reads (the default profile name, the backend key): skipped
/// when they hold a single value rather than profiles.
const ACCT_OWN_KEYS: [&str; 2] = ["default", "backend_key"];

/// How a plaintext profiles file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// `plugin: profile: settings` maps, as the real `acct` reads them (the default).
    Yaml,
    /// `[plugin.profile]` tables.
    Toml,
}

impl Plaintext {
    /// By the file's extension: `.toml` is TOML, anything else YAML (as `acct` assumes).
    pub fn of(path: &Path) -> Plaintext {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("toml") => Plaintext::Toml,
            _ => Plaintext::Yaml,
        }
    }
}

impl Profiles {
    /// Parse plaintext TOML: `[plugin.profile]` tables of settings.
    pub fn parse(text: &str, path: &Path) -> Result<Profiles, AcctError> {
        Profiles::from_value(toml_data(text, path)?, path)
    }

    /// Parse plaintext YAML: `plugin: profile: settings` maps.
    pub fn parse_yaml(text: &str, path: &Path) -> Result<Profiles, AcctError> {
        Profiles::from_value(yaml_data(text, path)?, path)
    }

    /// Profiles from decoded data: a map of plugins, each a map of profiles, each a map of
    /// settings. `default` and `backend_key` holding a single value are `acct`'s own and
    /// skipped.
    pub fn from_value(data: serde_json::Value, path: &Path) -> Result<Profiles, AcctError> {
        let format = |message: String| AcctError::Format {
            path: path.to_path_buf(),
            message,
        };
        let serde_json::Value::Object(data) = data else {
            return Err(format(
                "the profiles must be a map of plugins, e.g. `nats: {prod: {url: …}}` (YAML) or [nats.prod] (TOML)".into(),
            ));
        };
        let mut plugins = BTreeMap::new();
        for (plugin, profiles) in data {
            let profiles = match profiles {
                serde_json::Value::Object(profiles) => profiles,
                _ if ACCT_OWN_KEYS.contains(&plugin.as_str()) => continue,
                _ => {
                    return Err(format(format!(
                        "`{plugin}` must be a map of profiles, e.g. {plugin}: {{default: {{…}}}} (YAML) or [{plugin}.default] (TOML)"
                    )))
                }
            };
            let mut named = BTreeMap::new();
            for (profile, settings) in profiles {
                let serde_json::Value::Object(settings) = settings else {
                    return Err(format(format!(
                        "`{plugin}.{profile}` must be a map of settings, e.g. {plugin}: {{{profile}: {{url: …}}}} (YAML) or [{plugin}.{profile}] url = \"…\" (TOML)"
                    )));
                };
                named.insert(profile, settings);
            }
            plugins.insert(plugin, named);
        }
        Ok(Profiles { plugins })
    }

    /// Decrypt and parse `file` with `key`: msgpack inside the token (what `acct encrypt`
    /// writes), or TOML text (what iniesta wrote before it wrote msgpack).
    pub fn load(file: &Path, key: &Secret) -> Result<Profiles, AcctError> {
        let plain = decrypt_file(file, key)?;
        match rmp_serde::from_slice::<serde_json::Value>(&plain) {
            Ok(data @ serde_json::Value::Object(_)) => Profiles::from_value(data, file),
            _ => match std::str::from_utf8(&plain) {
                Ok(text) if toml_data(text, file).is_ok() => Profiles::parse(text, file),
                _ => Err(AcctError::Format {
                    path: file.to_path_buf(),
                    message: "the decrypted data is not a msgpack map of profiles (as `acct encrypt` writes it) nor TOML profiles".into(),
                }),
            },
        }
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

/// The data of a TOML plaintext, as JSON values.
fn toml_data(text: &str, path: &Path) -> Result<serde_json::Value, AcctError> {
    // The parser's message may quote the offending line, which may hold a secret.
    let table: toml::Table = toml::from_str(text).map_err(|e| AcctError::Format {
        path: path.to_path_buf(),
        message: format!(
            "not valid TOML{} (expected `[plugin.profile]` tables of settings)",
            e.span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default()
        ),
    })?;
    serde_json::to_value(&table).map_err(|_| AcctError::Format {
        path: path.to_path_buf(),
        message: "holds a value JSON cannot hold".into(),
    })
}

/// The data of a YAML plaintext, as JSON values (an empty file is no profiles).
fn yaml_data(text: &str, path: &Path) -> Result<serde_json::Value, AcctError> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    // As for TOML: only the position, never the parser's message (it may quote a value).
    serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| AcctError::Format {
        path: path.to_path_buf(),
        message: format!(
            "not valid YAML{} (expected `plugin: profile: settings` maps; keys must be text)",
            e.location()
                .map(|l| format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or_default()
        ),
    })
}

/// Encrypt `plain` (a profiles file: YAML, or TOML for a `.toml` name) into `plain.fernet`
/// with a new key, the way the real `acct encrypt` does: a Fernet token around the msgpack
/// encoding of the file's data. Returns the written path and the key. The plaintext is
/// checked first, so a broken file is refused before anything is written.
pub fn encrypt_file(plain: &Path) -> Result<(PathBuf, Secret), AcctError> {
    let text = std::fs::read_to_string(plain).map_err(|cause| AcctError::Read {
        path: plain.to_path_buf(),
        cause,
    })?;
    let data = match Plaintext::of(plain) {
        Plaintext::Toml => toml_data(&text, plain)?,
        Plaintext::Yaml => yaml_data(&text, plain)?,
    };
    Profiles::from_value(data.clone(), plain)?;
    let packed = rmp_serde::to_vec_named(&data).map_err(|_| AcctError::Format {
        path: plain.to_path_buf(),
        message: "cannot be encoded as msgpack".into(),
    })?;
    let key = Secret(fernet::Fernet::generate_key());
    let token = fernet(&key)?.encrypt(&packed);
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
    fn yaml_profiles_skip_acct_own_keys_and_errors_show_no_values() {
        let p = Profiles::parse_yaml(
            "default: prod\nbackend_key: acct-backends\nnats:\n  prod:\n    url: nats://h:4222\n    max_reconnects: 5\n",
            Path::new("c.yml"),
        )
        .expect("parses");
        assert_eq!(p.names(), vec!["nats.prod"]);
        assert_eq!(
            p.get("nats", "prod").and_then(|m| m.get("max_reconnects")),
            Some(&serde_json::json!(5))
        );
        for bad in [
            "nats: s3cret\n",
            "nats:\n  prod: s3cret\n",
            "nats:\n  prod: {password: s3cret\n",
            "- s3cret\n",
        ] {
            let e = Profiles::parse_yaml(bad, Path::new("c.yml"))
                .err()
                .expect("refused");
            assert!(!e.to_string().contains("s3cret"), "{bad:?}: {e}");
        }
        assert!(Profiles::parse_yaml("", Path::new("c.yml"))
            .expect("empty")
            .names()
            .is_empty());
        assert_eq!(Plaintext::of(Path::new("a.toml")), Plaintext::Toml);
        assert_eq!(Plaintext::of(Path::new("a.yml")), Plaintext::Yaml);
        assert_eq!(Plaintext::of(Path::new("credentials")), Plaintext::Yaml);
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("k")), "Secret(***)");
    }
}
