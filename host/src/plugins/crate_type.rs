//! Why a plugin crate built nothing the host can load: a crate without
//! `crate-type = ["cdylib"]` builds "fine" — an `.rlib` only — and the host then finds no
//! plugin. Given the plugin directories and a bound plugin's name (or a path a user passed to
//! `iniesta plugins check`), this finds the crate's `Cargo.toml` (the directory holding the
//! `target/` a build directory is in, and the members its workspace names) and says what is
//! missing and the one-line fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// The line that makes cargo build the shared library the host loads (and keeps the rlib
/// `cargo test` links).
pub const FIX: &str = r#"crate-type = ["cdylib", "rlib"]"#;

/// A plugin crate that builds no shared library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingCdylib {
    /// The library name (`greeter` for `libgreeter.so`).
    pub lib: String,
    /// The crate's manifest, when it was found.
    pub manifest: Option<PathBuf>,
    /// The `.rlib` cargo built instead, when there is one.
    pub rlib: Option<PathBuf>,
}

impl fmt::Display for MissingCdylib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built = match &self.rlib {
            Some(rlib) => format!(
                "cargo built only {} (a Rust library, which the host cannot load) and no lib{}.so",
                rlib.display(),
                self.lib
            ),
            None => format!("cargo builds no lib{}.so from it", self.lib),
        };
        match &self.manifest {
            Some(manifest) => write!(
                f,
                "the crate {} has no `crate-type = [\"cdylib\", ...]`: {built}; fix: add `{FIX}` under `[lib]` in {} and rebuild",
                manifest.display(),
                manifest.display()
            ),
            None => write!(
                f,
                "the crate of `{}` was built without `crate-type = [\"cdylib\", ...]`: {built}; fix: add `{FIX}` under `[lib]` in its Cargo.toml and rebuild",
                self.lib
            ),
        }
    }
}

/// A package manifest read for its library: its name and crate types.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Library {
    manifest: PathBuf,
    lib: String,
    crate_types: Vec<String>,
}

impl Library {
    fn has_cdylib(&self) -> bool {
        self.crate_types
            .iter()
            .any(|t| t == "cdylib" || t == "dylib")
    }
}

/// The libraries of the manifest at `manifest`: its own package's, and those of the workspace
/// members it names literally (glob members are not expanded). Unreadable files are skipped.
fn libraries(manifest: &Path) -> Vec<Library> {
    let mut found = Vec::new();
    let Some(table) = read_manifest(manifest) else {
        return found;
    };
    if let Some(library) = library_of(manifest, &table) {
        found.push(library);
    }
    let members = table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array);
    let root = manifest.parent().unwrap_or_else(|| Path::new("."));
    for member in members
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
    {
        if member.contains('*') {
            continue;
        }
        let path = root.join(member).join("Cargo.toml");
        if let Some(library) = read_manifest(&path).and_then(|t| library_of(&path, &t)) {
            found.push(library);
        }
    }
    found
}

fn read_manifest(path: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(path).ok()?;
    text.parse::<toml::Table>().ok()
}

fn library_of(manifest: &Path, table: &toml::Table) -> Option<Library> {
    let package = table.get("package")?.get("name")?.as_str()?;
    let lib = table.get("lib");
    let name = lib
        .and_then(|l| l.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or(package)
        .replace('-', "_");
    let crate_types = lib
        .and_then(|l| l.get("crate-type").or_else(|| l.get("crate_type")))
        .and_then(toml::Value::as_array)
        .map(|types| {
            types
                .iter()
                .filter_map(toml::Value::as_str)
                .map(str::to_string)
                .collect()
        })
        // Cargo's default for a library: an rlib only.
        .unwrap_or_else(|| vec!["lib".to_string()]);
    Some(Library {
        manifest: manifest.to_path_buf(),
        lib: name,
        crate_types,
    })
}

/// The manifest of the crate (or workspace) whose build directory `path` is in:
/// `X/target/release/...` → `X/Cargo.toml`; a crate directory → its own `Cargo.toml`.
pub fn manifest_near(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join("Cargo.toml").is_file() {
        return Some(path.join("Cargo.toml"));
    }
    path.ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "target"))
        .filter_map(|target| target.parent())
        .map(|crate_dir| crate_dir.join("Cargo.toml"))
        .find(|manifest| manifest.is_file())
}

/// Why bound plugin `name` is not in `dirs`, when the reason is a crate built without
/// `cdylib`: an `lib{name}.rlib` with no shared library beside it, or the crate's manifest
/// near a plugin directory naming the library without `cdylib`.
pub fn diagnose_missing(dirs: &[PathBuf], name: &str) -> Option<MissingCdylib> {
    let lib = name.replace('-', "_");
    for dir in dirs {
        let rlib = dir.join(format!("lib{lib}.rlib"));
        let rlib = rlib.is_file().then_some(rlib);
        let shared = super::load::LIBRARY_EXTENSIONS
            .iter()
            .any(|ext| dir.join(format!("lib{lib}.{ext}")).exists());
        if shared {
            continue;
        }
        let manifest = manifest_near(dir).and_then(|m| {
            libraries(&m)
                .into_iter()
                .find(|l| l.lib == lib && !l.has_cdylib())
                .map(|l| l.manifest)
        });
        if rlib.is_some() || manifest.is_some() {
            return Some(MissingCdylib {
                lib,
                manifest,
                rlib,
            });
        }
    }
    None
}

/// `NAME` of a `libNAME.EXT` path.
fn lib_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().trim_start_matches("lib").to_string())
        .unwrap_or_default()
}

/// The `libLIB.EXT` files cargo built under the crate directory `dir`, release first.
fn built<'a>(dir: &'a Path, lib: &'a str, ext: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    ["release", "debug"]
        .into_iter()
        .map(move |profile| {
            dir.join("target")
                .join(profile)
                .join(format!("lib{lib}.{ext}"))
        })
        .filter(|file| file.is_file())
}

/// For `iniesta plugins check PATH` when PATH is not a library file: a crate directory, an
/// `.rlib`, or a `.so` path that was never built. `Err` says what is missing (a crate without
/// `cdylib`, or one not built yet); `Ok(file)` is the shared library to check instead.
pub fn library_for(path: &Path) -> Result<Option<PathBuf>, String> {
    let is_rlib = path.extension().is_some_and(|e| e == "rlib");
    if !path.is_dir() && !is_rlib && path.exists() {
        return Ok(None);
    }
    // The library asked for: a file's name (`libNAME.rlib`, `libNAME.so` never built), not a
    // crate directory's.
    let wanted = (!path.is_dir()).then(|| lib_stem(path));
    // A directory counts only as a crate directory (its own Cargo.toml), not as a place in
    // some crate's build tree.
    let near = if path.is_dir() {
        Some(path.join("Cargo.toml")).filter(|m| m.is_file())
    } else {
        manifest_near(path)
    };
    let Some(manifest) = near else {
        if is_rlib {
            return Err(MissingCdylib {
                lib: lib_stem(path),
                manifest: None,
                rlib: Some(path.to_path_buf()),
            }
            .to_string());
        }
        return Ok(None);
    };
    let libraries = libraries(&manifest);
    let candidates: Vec<&Library> = match &wanted {
        Some(lib) => libraries.iter().filter(|l| &l.lib == lib).collect(),
        None => libraries.iter().collect(),
    };
    if let Some(bad) = candidates.iter().find(|l| !l.has_cdylib()) {
        let dir = manifest.parent().unwrap_or_else(|| Path::new("."));
        let rlib = built(dir, &bad.lib, "rlib").next();
        return Err(MissingCdylib {
            lib: bad.lib.clone(),
            manifest: Some(bad.manifest.clone()),
            rlib: if is_rlib {
                Some(path.to_path_buf())
            } else {
                rlib
            },
        }
        .to_string());
    }
    if path.exists() && !path.is_dir() {
        return Ok(None);
    }
    // A crate with `cdylib`: its built library, else "build it".
    let dir = manifest.parent().unwrap_or_else(|| Path::new("."));
    for library in &candidates {
        if let Some(file) = built(dir, &library.lib, "so").find(|f| path.is_dir() || f == path) {
            return Ok(Some(file));
        }
    }
    match candidates.first() {
        Some(library) => Err(format!(
            "lib{}.so is not built yet: run `cargo build --release` in {} (its Cargo.toml has crate-type cdylib)",
            library.lib,
            dir.display()
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_crate_without_cdylib_is_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let krate = dir.path().join("greeter");
        write(
            &krate.join("Cargo.toml"),
            "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\n",
        );
        let release = krate.join("target/release");
        write(&release.join("libgreeter.rlib"), "");
        let found = diagnose_missing(std::slice::from_ref(&release), "greeter").expect("diagnosed");
        assert_eq!(found.manifest, Some(krate.join("Cargo.toml")));
        let text = found.to_string();
        assert!(text.contains(FIX), "{text}");
        assert!(text.contains("libgreeter.rlib"), "{text}");
        // Another plugin's name: nothing to say.
        assert_eq!(
            diagnose_missing(std::slice::from_ref(&release), "other"),
            None
        );
        // plugins check: the crate directory, the .so never built, the rlib.
        for path in [
            krate.clone(),
            release.join("libgreeter.so"),
            release.join("libgreeter.rlib"),
        ] {
            let why = library_for(&path).expect_err("missing cdylib");
            assert!(why.contains(FIX), "{}: {why}", path.display());
        }
        // With cdylib but not built: "build it".
        write(
            &krate.join("Cargo.toml"),
            "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n",
        );
        let why = library_for(&krate).expect_err("not built");
        assert!(why.contains("not built yet"), "{why}");
        assert_eq!(
            diagnose_missing(&[release], "greeter"),
            Some(MissingCdylib {
                lib: "greeter".into(),
                manifest: None,
                rlib: Some(krate.join("target/release/libgreeter.rlib")),
            })
        );
    }
}
