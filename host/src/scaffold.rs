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
    /// plugin-api could not be found.
    #[error("cannot find iniesta-plugin-api at {}: pass --api-path PATH to the plugin-api directory of an iniesta checkout", .0.display())]
    NoApi(PathBuf),
    /// Writing failed.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// The plugin-api this binary was built from.
pub fn default_api_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api")
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
    let api = api.map(Path::to_path_buf).unwrap_or_else(default_api_path);
    let api = std::fs::canonicalize(&api).map_err(|_| ScaffoldError::NoApi(api.clone()))?;
    if !api.join("Cargo.toml").exists() {
        return Err(ScaffoldError::NoApi(api));
    }
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
iniesta-plugin-api = {{ path = "{api}" }}
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
        api = api.display(),
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
    let write = |path: PathBuf, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|cause| ScaffoldError::Write {
                path: parent.to_path_buf(),
                cause,
            })?;
        }
        std::fs::write(&path, text).map_err(|cause| ScaffoldError::Write { path, cause })
    };
    write(dir.join("Cargo.toml"), &manifest)?;
    write(dir.join("src/lib.rs"), &source)?;
    write(dir.join(".gitignore"), "/target\n")?;
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
