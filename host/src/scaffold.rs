//! `iniesta new-plugin`: write a ready-to-build handler plugin crate.

use std::path::{Path, PathBuf};

/// Why a plugin crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a usable crate/plugin name.
    #[error("`{0}` is not a valid plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter")]
    BadName(String),
    /// The target directory exists and is not empty.
    #[error("{} already exists and is not empty; pick another --dir or name", .0.display())]
    Exists(PathBuf),
    /// `--api-path` does not name a plugin-api crate.
    #[error("no iniesta-plugin-api crate at {} (no Cargo.toml): name the plugin-api directory of an iniesta checkout, or leave --api-path out to use the copy this binary carries", .0.display())]
    NoApi(PathBuf),
    /// The carried plugin-api's manifest could not be made standalone (a build problem).
    #[error("cannot write the plugin-api copy's manifest: {0}")]
    Manifest(String),
    /// `--update-api` on a directory that has no vendored plugin-api.
    #[error("{} has no {VENDORED_API} to update (was it made with --api-path?)", .0.display())]
    NotVendored(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// The plugin-api this binary was built from, as source files carried in the binary: a new
/// plugin gets a copy (`vendor/iniesta-plugin-api`), so it builds anywhere, with no path into
/// the checkout the binary came from and no registry.
const API_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../plugin-api/src/lib.rs")),
    (
        "src/config.rs",
        include_str!("../../plugin-api/src/config.rs"),
    ),
    (
        "src/context.rs",
        include_str!("../../plugin-api/src/context.rs"),
    ),
    (
        "src/egress.rs",
        include_str!("../../plugin-api/src/egress.rs"),
    ),
    (
        "src/export.rs",
        include_str!("../../plugin-api/src/export.rs"),
    ),
    ("src/ffi.rs", include_str!("../../plugin-api/src/ffi.rs")),
    (
        "src/handler.rs",
        include_str!("../../plugin-api/src/handler.rs"),
    ),
    (
        "src/ingress.rs",
        include_str!("../../plugin-api/src/ingress.rs"),
    ),
    (
        "src/message.rs",
        include_str!("../../plugin-api/src/message.rs"),
    ),
    (
        "src/outcome.rs",
        include_str!("../../plugin-api/src/outcome.rs"),
    ),
    (
        "src/payload.rs",
        include_str!("../../plugin-api/src/payload.rs"),
    ),
    (
        "src/reactor.rs",
        include_str!("../../plugin-api/src/reactor.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../plugin-api/src/testing.rs"),
    ),
    ("GUIDE.md", include_str!("../../plugin-api/GUIDE.md")),
];

/// The plugin-api's manifest and the workspace's (its `workspace = true` entries come from the
/// latter), to write the copy's standalone manifest.
const API_MANIFEST: &str = include_str!("../../plugin-api/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// Where a new plugin keeps its copy of the plugin-api, relative to its crate.
pub const VENDORED_API: &str = "vendor/iniesta-plugin-api";

/// The version of the plugin-api this binary carries (and speaks).
pub fn api_version() -> String {
    iniesta_plugin_api::ABI_VERSION.to_string()
}

/// The copy's standalone `Cargo.toml`: the plugin-api's own, with every `workspace = true`
/// resolved from the workspace's tables (as `cargo package` does).
fn standalone_api_manifest() -> Result<String, String> {
    let api: toml::Table = toml::from_str(API_MANIFEST).map_err(|e| e.to_string())?;
    let workspace: toml::Table = toml::from_str(WORKSPACE_MANIFEST).map_err(|e| e.to_string())?;
    let ws = workspace.get("workspace").and_then(toml::Value::as_table);
    let inherited = |table: &str, key: &str| -> Option<toml::Value> {
        ws.and_then(|w| w.get(table))
            .and_then(toml::Value::as_table)
            .and_then(|t| t.get(key))
            .cloned()
    };
    let is_inherited = |value: &toml::Value| {
        value
            .as_table()
            .and_then(|t| t.get("workspace"))
            .and_then(toml::Value::as_bool)
            == Some(true)
    };
    let mut out = toml::Table::new();
    for (section, value) in api {
        let Some(table) = value.as_table() else {
            out.insert(section, value);
            continue;
        };
        let mut resolved = toml::Table::new();
        for (key, value) in table {
            let value = if !is_inherited(value) {
                value.clone()
            } else if section == "package" {
                inherited("package", key).ok_or(format!("workspace.package.{key} is missing"))?
            } else {
                inherited("dependencies", key)
                    .ok_or(format!("workspace.dependencies.{key} is missing"))?
            };
            resolved.insert(key.clone(), value);
        }
        if section == "package" {
            resolved.insert("publish".into(), toml::Value::Boolean(false));
        }
        out.insert(section, toml::Value::Table(resolved));
    }
    let text = toml::to_string(&out).map_err(|e| e.to_string())?;
    Ok(format!(
        "# iniesta-plugin-api {}, copied by `iniesta new-plugin` from the iniesta binary that speaks\n\
         # it. Do not edit: `iniesta new-plugin --update-api DIR` replaces it with the copy a newer\n\
         # host carries. A path dependency inside the plugin's crate: a member of its workspace.\n\n{text}",
        api_version()
    ))
}

/// Replace the plugin-api copy of the plugin crate at `crate_dir` with the one this binary
/// carries (after upgrading the host); its `Cargo.toml`'s pinned version is updated too.
pub fn update_api(crate_dir: &Path) -> Result<PathBuf, ScaffoldError> {
    if !crate_dir.join(VENDORED_API).join("Cargo.toml").exists() {
        return Err(ScaffoldError::NotVendored(crate_dir.to_path_buf()));
    }
    let manifest_path = crate_dir.join("Cargo.toml");
    let manifest =
        std::fs::read_to_string(&manifest_path).map_err(|cause| ScaffoldError::Write {
            path: manifest_path.clone(),
            cause,
        })?;
    let pin = format!(
        "version = \"={}\", path = \"{VENDORED_API}\"",
        api_version()
    );
    let updated: Vec<String> = manifest
        .lines()
        .map(|line| match line.strip_prefix("iniesta-plugin-api = ") {
            Some(_) => format!("iniesta-plugin-api = {{ {pin} }}"),
            None => line.to_string(),
        })
        .collect();
    write_file(&manifest_path, &(updated.join("\n") + "\n"))?;
    write_api(crate_dir)
}

/// Write the plugin-api copy into `crate_dir/vendor/iniesta-plugin-api`, replacing an older
/// one.
pub fn write_api(crate_dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let dir = crate_dir.join(VENDORED_API);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|cause| ScaffoldError::Write {
            path: dir.clone(),
            cause,
        })?;
    }
    let manifest = standalone_api_manifest().map_err(ScaffoldError::Manifest)?;
    write_file(&dir.join("Cargo.toml"), &manifest)?;
    for (path, text) in API_FILES {
        write_file(&dir.join(path), text)?;
    }
    Ok(dir)
}

fn write_file(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|cause| ScaffoldError::Write {
            path: parent.to_path_buf(),
            cause,
        })?;
    }
    std::fs::write(path, text).map_err(|cause| ScaffoldError::Write {
        path: path.to_path_buf(),
        cause,
    })
}

/// What was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The crate directory.
    pub dir: PathBuf,
    /// The library file `cargo build --release` produces.
    pub library: PathBuf,
    /// The plugin (and handler) name.
    pub name: String,
}

fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Create crate `name` in `dir` (default `./NAME`) against the plugin-api at `api`.
pub fn create(
    name: &str,
    dir: Option<&Path>,
    api: Option<&Path>,
) -> Result<Created, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ScaffoldError::Exists(dir));
    }
    // `--api-path`: a plugin-api checkout the user chose, named as given; by default the copy
    // this binary carries, inside the new crate.
    let api = match api {
        Some(api) => {
            // Absolute: cargo reads a relative path from the new crate's directory, not from
            // where this command ran.
            let api =
                std::fs::canonicalize(api).map_err(|_| ScaffoldError::NoApi(api.to_path_buf()))?;
            if !api.join("Cargo.toml").exists() {
                return Err(ScaffoldError::NoApi(api));
            }
            api.display().to_string()
        }
        None => VENDORED_API.to_string(),
    };
    let version = api_version();
    let lib = name.replace('-', "_");
    let ty = type_name(name);
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the file the iniesta host loads; rlib: lets `cargo test` link the tests.
{fix}

[dependencies]
# The plugin-api this host speaks: version {version}, from {api}
# (`iniesta new-plugin --update-api .` refreshes a vendored copy for a newer host).
iniesta-plugin-api = {{ version = "={version}", path = "{api}" }}
serde_json = "1"

# A panic must unwind so the plugin boundary can catch it and the host retries the message.
# Never set panic = "abort" in a plugin.
[profile.dev]
panic = "unwind"

[profile.release]
panic = "unwind"

# Its own workspace, so it builds wherever it was generated. To make it a member of an
# enclosing workspace instead, delete this table and add the crate to that workspace's members.
[workspace]
"#,
        fix = crate::plugins::crate_type::FIX
    );
    let source = format!(
        r#"//! `{name}`: an iniesta handler plugin.

use iniesta_plugin_api::{{export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome}};

/// Handles the events its bindings route to it.
pub struct {ty} {{
    greeting: String,
}}

impl {ty} {{
    /// Built once per binding, with the binding's `config = {{ ... }}` table.
    pub fn new(config: Config) -> Result<Self, String> {{
        Ok(Self {{
            greeting: config.get_str("greeting").unwrap_or("handled").to_string(),
        }})
    }}
}}

impl Handler for {ty} {{
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {{
        // A body that is not JSON will never succeed: dead-letter it with the reason.
        let body: serde_json::Value = match message.json() {{
            Ok(body) => body,
            Err(e) => return Ok(Outcome::dead_letter(format!("body is not JSON: {{e}}"))),
        }};
        ctx.info(&format!("{{}}: {{}} {{}}", self.greeting, message.event(), body));
        // Return Ok(Outcome::retry(30)) to try again later, or Err(..) (e.g. with `?`) to
        // have the message redelivered after the queue's visibility timeout.
        Ok(Outcome::Ack)
    }}
}}

export_plugin! {{
    name: "{name}",
    handlers: {{
        "{name}" => {ty}::new,
    }},
}}

#[cfg(test)]
mod tests {{
    use super::*;
    use iniesta_plugin_api::testing::{{Harness, TestMessage, TestOutcome}};

    #[test]
    fn acks_json_and_dead_letters_the_rest() {{
        let harness = Harness::from_config({ty}::new, serde_json::json!({{ "greeting": "hi" }}))
            .expect("the config is valid");
        let ok = harness.call(&TestMessage::new("Order.Created.shop").json(serde_json::json!({{ "id": 1 }})));
        assert_eq!(ok.outcome, TestOutcome::Ack);
        assert!(ok.logged("hi: Order.Created.shop"));
        let bad = harness.call(&TestMessage::new("Order.Created.shop").text("not json"));
        assert!(matches!(bad.outcome, TestOutcome::DeadLetter {{ .. }}));
    }}
}}
"#
    );
    write_file(&dir.join("Cargo.toml"), &manifest)?;
    write_file(&dir.join("src/lib.rs"), &source)?;
    write_file(&dir.join(".gitignore"), "/target\n")?;
    if api == VENDORED_API {
        write_api(&dir)?;
    }
    Ok(Created {
        library: dir.join("target/release").join(format!("lib{lib}.so")),
        dir,
        name: name.to_string(),
    })
}

/// The next steps printed after `new-plugin`.
pub fn next_steps(created: &Created) -> String {
    let dir = created.dir.display();
    format!(
        "created plugin `{name}` in {dir}\n\n\
         1. build it (and run its test):\n     cd {dir} && cargo test && cargo build --release\n\n\
         2. bind it: in iniesta.toml, add its build directory to the `dirs` list the `[plugins]`\n     \
         table already has (relative paths are read from the config file's directory), e.g.\n     \
         dirs = [\"target/release\", \"{dir}/target/release\"]\n     \
         and add a binding:\n\n     \
         [[bindings]]\n     # One event name, not a glob such as \"Order.*\": a glob also takes what the handler\n     # publishes itself (ctx.publish(\"Order.Greeted\") goes out as Order.Greeted.SERVICE), a loop.\n     events = [\"Order.Created.*\"]\n     plugin = \"{name}\"\n     config = {{ greeting = \"hi\" }}\n\n\
         3. watch it run:\n     iniesta plugins check {lib} && iniesta config check && iniesta run\n     \
         (then in another terminal: iniesta publish Order.Created '{{\"id\": 1}}')\n",
        name = created.name,
        lib = created.library.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_carries_every_source_file_of_the_plugin_api() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&src)
            .expect("plugin-api/src")
            .filter_map(|e| e.ok())
            .map(|e| format!("src/{}", e.file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut carried: Vec<String> = API_FILES
            .iter()
            .map(|(path, _)| path.to_string())
            .filter(|p| p.starts_with("src/"))
            .collect();
        carried.sort();
        assert_eq!(
            carried, on_disk,
            "API_FILES must list every file in plugin-api/src"
        );
    }

    #[test]
    fn names_and_type_names() {
        assert_eq!(type_name("my-handler"), "MyHandler");
        assert_eq!(type_name("order_shipper2"), "OrderShipper2");
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            create("Bad Name", Some(dir.path()), None),
            Err(ScaffoldError::BadName(_))
        ));
        assert!(matches!(
            create("9lives", Some(dir.path()), None),
            Err(ScaffoldError::BadName(_))
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            create("ok", Some(&dir.path().join("x")), Some(&missing)),
            Err(ScaffoldError::NoApi(_))
        ));
        let created = create("ok-plugin", Some(&dir.path().join("x")), None).expect("creates");
        assert!(created.library.ends_with("target/release/libok_plugin.so"));
        // The one line without which cargo builds no loadable library (issue 24).
        let manifest =
            std::fs::read_to_string(created.dir.join("Cargo.toml")).expect("the manifest");
        assert!(
            manifest.contains("[lib]\n") && manifest.contains(crate::plugins::crate_type::FIX),
            "{manifest}"
        );
        assert!(matches!(
            create("ok-plugin", Some(&dir.path().join("x")), None),
            Err(ScaffoldError::Exists(_))
        ));
        // The suggested binding cannot take what the handler would publish (issue 24: it
        // suggested `Order.*`, which also matches `Order.Greeted.SERVICE`).
        let steps = next_steps(&created);
        assert!(steps.contains("events = [\"Order.Created.*\"]"), "{steps}");
        assert!(!steps.contains("events = [\"Order.*\"]"), "{steps}");
    }
}
