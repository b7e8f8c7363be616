//! Loading one plugin file.
//!
//! Facts this code is built on (see DESIGN.md): abi_stable caches one module per root-module
//! type, so each plugin is loaded through its own library header; the same path cannot be
//! loaded twice, so every load goes through a private copy (in a fresh directory of its own,
//! with an unpredictable name and mode 0700); libraries are never unloaded; and a half-written
//! `.so` kills the process with SIGBUS, so the ELF file is checked for completeness before
//! `dlopen`. Before any of that, the file and every directory up its real path must be
//! writable only by this host's user or root ([`check_trusted`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::RStr;
use iniesta_plugin_api::export::EXPORT_NAME;
use iniesta_plugin_api::ffi::{
    EgressBox, HandlerBox, IngressBox, IngressSinkBox, PanicStrategy, PluginModRef,
};

/// The plugin-api version this host was built with.
pub const HOST_API_VERSION: &str = iniesta_plugin_api::ABI_VERSION;

/// The last generation handed out: a number is taken only by a load that succeeded, so a
/// refused file never uses one up (generations count what was really loaded).
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Load attempts, for the private copies' names (refused ones included).
static ATTEMPT: AtomicU64 = AtomicU64::new(0);

/// What identifies one version of a file on disk: device, inode, size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    /// The fingerprint of `path` now, if it can be read.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Fingerprint::from_metadata(&meta))
    }

    /// The fingerprint of a file whose metadata is at hand (e.g. of an open descriptor).
    pub fn from_metadata(meta: &std::fs::Metadata) -> Fingerprint {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Fingerprint {
            dev,
            ino,
            len: meta.len(),
            mtime_ns,
        }
    }
}

/// A loaded, checked plugin.
pub struct LoadedPlugin {
    /// Name used in bindings.
    pub name: String,
    /// The plugin crate's version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub abi_version: String,
    /// Handlers it can construct.
    pub handlers: Vec<String>,
    /// Egresses (publishers) it can construct.
    pub egresses: Vec<String>,
    /// Ingresses (consumers) it can start.
    pub ingresses: Vec<String>,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// The `plugins.dirs` entry the file was found in.
    pub origin_dir: PathBuf,
    /// Load generation, unique in this process (libraries are never unloaded): 1, 2, 3... in
    /// the order files loaded; a refused file takes no number.
    pub generation: u64,
    /// The file's identity when it was loaded; a different one means a new version.
    pub fingerprint: Option<Fingerprint>,
    /// Size of the loaded file: roughly what this generation keeps mapped forever.
    pub file_size: u64,
    /// When this generation was loaded.
    pub loaded_at: std::time::SystemTime,
    /// How long loading and checking took.
    pub load_time: std::time::Duration,
    /// The panic strategy it was compiled with: `Abort` runs only in an isolated worker.
    pub panic: PanicStrategy,
    module: PluginModRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("file", &self.file)
            .field("generation", &self.generation)
            .finish()
    }
}

impl LoadedPlugin {
    /// Why this plugin may not run inside the host process, if it may not: it was built with
    /// `panic = "abort"`, so its first panic would end the host. The text names both fixes.
    pub fn in_process_refusal(&self) -> Option<String> {
        (self.panic == PanicStrategy::Abort).then(|| {
            format!(
                "plugin `{}` ({}) was built with panic = \"abort\": its first panic would end the host process, so it cannot run in the host; rebuild it with panic = \"unwind\" (the default: remove `panic = \"abort\"` from its Cargo.toml profiles), or run it isolated by adding \"{}\" to plugins.isolate.names",
                self.name,
                self.file.display(),
                self.name
            )
        })
    }

    /// Construct handler `handler` with the binding's config (JSON text), to run in this
    /// process; refused for a plugin built with `panic = "abort"` ([`Self::in_process_refusal`]).
    pub fn new_handler(
        &self,
        handler: &str,
        config_json: &str,
    ) -> Result<HandlerBox, ConstructError> {
        if let Some(why) = self.in_process_refusal() {
            return Err(ConstructError::AbortsOnPanic(why));
        }
        self.new_handler_in_worker(handler, config_json)
    }

    /// Construct handler `handler` in an isolated worker process, where a plugin built with
    /// `panic = "abort"` may run: its abort ends only the worker.
    pub fn new_handler_in_worker(
        &self,
        handler: &str,
        config_json: &str,
    ) -> Result<HandlerBox, ConstructError> {
        let construct = self.module.new_handler();
        construct(RStr::from_str(handler), RStr::from_str(config_json))
            .into_result()
            .map_err(|e| ConstructError::Refused(e.into_string()))
    }

    /// Construct egress `egress` with its config (JSON text; may hold secrets: never log it).
    pub fn new_egress(&self, egress: &str, config_json: &str) -> Result<EgressBox, ConstructError> {
        if let Some(why) = self.in_process_refusal() {
            return Err(ConstructError::AbortsOnPanic(why));
        }
        let construct = self.module.new_egress();
        construct(RStr::from_str(egress), RStr::from_str(config_json))
            .into_result()
            .map_err(|e| ConstructError::Refused(e.into_string()))
    }

    /// Start ingress `ingress` with its config, submitting to `sink`.
    pub fn start_ingress(
        &self,
        ingress: &str,
        config_json: &str,
        sink: IngressSinkBox,
    ) -> Result<IngressBox, ConstructError> {
        if let Some(why) = self.in_process_refusal() {
            return Err(ConstructError::AbortsOnPanic(why));
        }
        let start = self.module.start_ingress();
        start(RStr::from_str(ingress), RStr::from_str(config_json), sink)
            .into_result()
            .map_err(|e| ConstructError::Refused(e.into_string()))
    }
}

/// Why a plugin could not construct a handler or an egress, or start an ingress. The message
/// is shown as is (config check, logs), so each variant carries the full sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstructError {
    /// Built with `panic = "abort"`: it may not run in the host process (only isolated).
    #[error("{0}")]
    AbortsOnPanic(String),
    /// The plugin's constructor refused, with its own reason (usually about its config).
    #[error("{0}")]
    Refused(String),
    /// An isolated plugin's worker could not be started or did not answer.
    #[error("{0}")]
    Worker(String),
}

/// Why a file was not loaded as a plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// Not an iniesta plugin at all (no root module); skipped quietly.
    #[error("{}: not an iniesta plugin ({reason})", file.display())]
    NotAPlugin {
        /// The file.
        file: PathBuf,
        /// Why we think so.
        reason: String,
    },
    /// The file is still being written (truncated ELF); try again once it is complete.
    #[error("{}: incomplete shared library ({reason}); it is probably still being written", file.display())]
    Incomplete {
        /// The file.
        file: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Built against an incompatible plugin-api version.
    #[error("{}: refused: built against iniesta-plugin-api {plugin_api}, but this host uses {host_api}; rebuild the plugin against iniesta-plugin-api {host_api} (point its dependency at this host's plugin-api and run `cargo build --release`)", file.display())]
    IncompatibleVersion {
        /// The file.
        file: PathBuf,
        /// The plugin's plugin-api version.
        plugin_api: String,
        /// The host's plugin-api version.
        host_api: String,
    },
    /// Same version but different type layouts (or a different abi_stable).
    #[error("{}: refused: its plugin-api types do not match this host's (iniesta-plugin-api {host_api}); rebuild the plugin against this host's plugin-api. Detail: {detail}", file.display())]
    IncompatibleLayout {
        /// The file.
        file: PathBuf,
        /// The host's plugin-api version.
        host_api: String,
        /// abi_stable's explanation (shortened).
        detail: String,
    },
    /// The file, or a directory up its real path, is writable by (or belongs to) another user:
    /// they could swap in code.
    #[error("{}: refused: {problem}; another user could replace the code this host runs", file.display())]
    Insecure {
        /// The file (as found in the plugin directory).
        file: PathBuf,
        /// The file or directory at fault, what is wrong with it, and the fix.
        problem: String,
    },
    /// Anything else: unreadable file, missing shared-library dependency, failing root module.
    #[error("{}: cannot load: {reason}", file.display())]
    Broken {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

impl LoadError {
    /// Whether this is a quiet skip rather than a refusal worth an error line.
    pub fn is_not_a_plugin(&self) -> bool {
        matches!(self, LoadError::NotAPlugin { .. })
    }

    /// The file refused.
    pub fn file(&self) -> &Path {
        match self {
            LoadError::NotAPlugin { file, .. }
            | LoadError::Incomplete { file, .. }
            | LoadError::IncompatibleVersion { file, .. }
            | LoadError::IncompatibleLayout { file, .. }
            | LoadError::Insecure { file, .. }
            | LoadError::Broken { file, .. } => file,
        }
    }

    /// A short code for metrics and state files: `not_a_plugin`, `incomplete`,
    /// `incompatible_version`, `incompatible_layout`, `insecure` or `broken`.
    pub fn reason(&self) -> &'static str {
        match self {
            LoadError::NotAPlugin { .. } => "not_a_plugin",
            LoadError::Incomplete { .. } => "incomplete",
            LoadError::IncompatibleVersion { .. } => "incompatible_version",
            LoadError::IncompatibleLayout { .. } => "incompatible_layout",
            LoadError::Insecure { .. } => "insecure",
            LoadError::Broken { .. } => "broken",
        }
    }
}

/// Whether a file name looks like a shared library on this platform.
pub fn is_library_name(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    LIBRARY_EXTENSIONS.contains(&ext)
}

/// The endings of a shared library file.
pub const LIBRARY_EXTENSIONS: [&str; 3] = ["so", "dylib", "dll"];

/// Check an ELF file is complete and exports the iniesta root module.
///
/// Complete means: the headers parse, the section header table lies inside the file, and
/// every `PT_LOAD` segment's file bytes lie inside the file.
pub fn inspect_elf(file: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    use object::{Object, ObjectSymbol};

    let incomplete = |reason: String| LoadError::Incomplete {
        file: file.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(LoadError::NotAPlugin {
            file: file.to_path_buf(),
            reason: "not an ELF shared library".into(),
        });
    }
    let elf = ElfFile64::<object::Endianness>::parse(bytes)
        .map_err(|e| incomplete(format!("ELF headers do not parse: {e}")))?;
    let endian = elf.endian();
    let header = elf.elf_header();
    let len = bytes.len() as u64;
    let sh_end = header.e_shoff(endian)
        + u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
    if sh_end > len {
        return Err(incomplete(format!(
            "section headers end at byte {sh_end} but the file has {len}"
        )));
    }
    for segment in elf.elf_program_headers() {
        if segment.p_type(endian) == object::elf::PT_LOAD {
            let end = segment.p_offset(endian) + segment.p_filesz(endian);
            if end > len {
                return Err(incomplete(format!(
                    "a loadable segment ends at byte {end} but the file has {len}"
                )));
            }
        }
    }
    let exported = elf
        .dynamic_symbols()
        .any(|s| s.name().map(|n| n == EXPORT_NAME).unwrap_or(false));
    if !exported {
        return Err(LoadError::NotAPlugin {
            file: file.to_path_buf(),
            reason: "no iniesta root module exported (not built with export_plugin!)".into(),
        });
    }
    Ok(())
}

/// A fresh private directory under `$TMPDIR` named `{prefix}` + random characters, mode 0700.
/// An existing directory is never reused (another user may have made it); removed on drop.
pub fn private_tempdir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    // tempfile makes directories with the default mode (0777 less the umask): ask for 0700.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir()
}

/// Load a plugin file found in `origin_dir`.
///
/// The file is read once, checked, copied into a fresh private directory, loaded from the
/// copy, and the directory removed (the mapping stays). The original can then be replaced
/// freely.
pub fn load_file(file: &Path, origin_dir: &Path) -> Result<LoadedPlugin, LoadError> {
    let started = std::time::Instant::now();
    let broken = |reason: String| LoadError::Broken {
        file: file.to_path_buf(),
        reason,
    };
    // Read from the real path that was checked, never through `file`'s links again: a link on
    // the way (in a directory another user can write) could be repointed after the check.
    let real = check_trusted(file)?;
    let (fingerprint, bytes) = read_checked(file, &real)?;
    let fingerprint = Some(fingerprint);
    if cfg!(target_os = "linux") {
        inspect_elf(file, &bytes)?;
    }
    let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed) + 1;
    let private_dir = private_tempdir(&format!("iniesta-plugins-{}-", std::process::id()))
        .map_err(|e| {
            broken(format!(
                "cannot create a private directory in {}: {e}",
                std::env::temp_dir().display()
            ))
        })?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "plugin.so".into());
    let private = private_dir.path().join(format!("a{attempt}-{file_name}"));
    std::fs::write(&private, &bytes)
        .map_err(|e| broken(format!("cannot copy to {}: {e}", private.display())))?;
    let loaded = lib_header_from_path(&private).and_then(|header| {
        // Compare plugin-api versions first: abi_stable would report a version bump as a
        // layout difference, and "rebuild against X.Y" is the message a user can act on.
        let theirs = header.version_strings();
        let ours = <PluginModRef as abi_stable::library::RootModule>::VERSION_STRINGS;
        if let (Ok(theirs), Ok(ours)) = (theirs.parsed(), ours.parsed()) {
            if !ours.is_compatible(theirs) {
                return Err(LibraryError::IncompatibleVersionNumber {
                    library_name: "iniesta_plugin",
                    expected_version: ours,
                    actual_version: theirs,
                });
            }
        }
        header.init_root_module::<PluginModRef>()
    });
    // The library stays mapped after its file is gone; never leave copies behind.
    if let Err(e) = private_dir.close() {
        tracing::debug!(error = %e, "cannot remove a private plugin copy");
    }
    let module = loaded.map_err(|e| classify(file, e))?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    let handlers = module
        .handlers()
        .iter()
        .map(|h| h.as_str().to_string())
        .collect();
    let names = |list: abi_stable::std_types::RSlice<'static, RStr<'static>>| {
        list.iter().map(|h| h.as_str().to_string()).collect()
    };
    Ok(LoadedPlugin {
        name: module.name().as_str().to_string(),
        version: module.version().as_str().to_string(),
        abi_version: module.abi_version().as_str().to_string(),
        handlers,
        egresses: names(module.egresses()),
        ingresses: names(module.ingresses()),
        file: file.to_path_buf(),
        origin_dir: origin_dir.to_path_buf(),
        generation,
        fingerprint,
        file_size: bytes.len() as u64,
        loaded_at: std::time::SystemTime::now(),
        load_time: started.elapsed(),
        panic: module.panic(),
        module,
    })
}

/// Read the checked real path `real` of plugin `file`: opened without following a link
/// (`O_NOFOLLOW`; `O_NONBLOCK` so a FIFO cannot hang the host), then the open descriptor is
/// checked again (a regular file, owned by this host's user or root, not writable by others)
/// and the bytes are read from that same descriptor, so what is loaded is what was checked.
pub fn read_checked(file: &Path, real: &Path) -> Result<(Fingerprint, Vec<u8>), LoadError> {
    use std::io::Read;
    let broken = |reason: String| LoadError::Broken {
        file: file.to_path_buf(),
        reason,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    }
    let mut handle = options.open(real).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            broken(format!(
                "{} changed into a symbolic link after it was checked; not loaded",
                real.display()
            ))
        } else {
            broken(format!("cannot open {}: {e}", real.display()))
        }
    })?;
    let meta = handle
        .metadata()
        .map_err(|e| broken(format!("cannot stat {}: {e}", real.display())))?;
    if !meta.file_type().is_file() {
        return Err(broken(format!(
            "{} is not a regular file (a directory, FIFO, socket or device); put the plugin's .so there, or remove the entry to unbind the plugin",
            real.display()
        )));
    }
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        judge_entry(&meta, real, Place::File, euid).map_err(|problem| LoadError::Insecure {
            file: file.to_path_buf(),
            problem,
        })?;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    handle
        .read_to_end(&mut bytes)
        .map_err(|e| broken(format!("cannot read {}: {e}", real.display())))?;
    Ok((Fingerprint::from_metadata(&meta), bytes))
}

/// Refuse a plugin file unless only this host's user or root can change it (in the spirit of
/// OpenSSH's `StrictModes`; docs/src/guide/security.md says how it differs): links are resolved, then
/// the file and every directory up its real path to `/` (and up the real path of the directory
/// it was found in) must be owned by this host's user or root. The file and its own directory
/// must not be world-writable, nor group-writable unless the group is private to the owner
/// ([`group_is_private`], Debian's rule for `umask 002`); a sticky bit does not help there
/// (anyone could add a plugin). A directory further up may be writable by others only if it
/// has the sticky bit (like `/tmp`).
/// Returns the real path that was checked: load from it ([`read_checked`]), not from `file`.
pub fn check_trusted(file: &Path) -> Result<PathBuf, LoadError> {
    let real = std::fs::canonicalize(file).map_err(|e| LoadError::Broken {
        file: file.to_path_buf(),
        reason: format!("cannot resolve its path: {e}"),
    })?;
    #[cfg(unix)]
    {
        let insecure = |problem: String| LoadError::Insecure {
            file: file.to_path_buf(),
            problem,
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        trusted_entry(&real, Place::File, euid).map_err(insecure)?;
        let mut dirs: Vec<PathBuf> = real.parent().map(Path::to_path_buf).into_iter().collect();
        if let Some(found_in) = file.parent().and_then(|d| std::fs::canonicalize(d).ok()) {
            if !dirs.contains(&found_in) {
                dirs.push(found_in);
            }
        }
        for dir in dirs {
            trusted_entry(&dir, Place::PluginDir, euid).map_err(insecure)?;
            for above in dir.ancestors().skip(1) {
                trusted_entry(above, Place::Above, euid).map_err(insecure)?;
            }
        }
    }
    Ok(real)
}

#[cfg(unix)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    File,
    PluginDir,
    Above,
}

/// Check one resolved path; the problem and its fix if it is not safe.
#[cfg(unix)]
fn trusted_entry(path: &Path, place: Place, euid: u32) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot check {}: {e}", path.display()))?;
    judge_entry(&meta, path, place, euid)
}

/// Judge one entry's owner and mode; the problem and its fix if it is not safe.
#[cfg(unix)]
fn judge_entry(
    meta: &std::fs::Metadata,
    path: &Path,
    place: Place,
    euid: u32,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let what = match place {
        Place::File => format!("the file {}", path.display()),
        Place::PluginDir => format!("its directory {}", path.display()),
        Place::Above => format!("{}, a directory above it,", path.display()),
    };
    let uid = meta.uid();
    if uid != euid && uid != 0 {
        return Err(format!(
            "{what} is owned by uid {uid}, neither this host's user (uid {euid}) nor root; chown it to one of them"
        ));
    }
    let mode = meta.mode() & 0o7777;
    let world_writable = mode & 0o002 != 0;
    let group_writable = mode & 0o020 != 0;
    let sticky = mode & 0o1000 != 0;
    let exempt = place == Place::Above && sticky;
    // Group-writable is fine when the group is the owner's private group (user private groups
    // with umask 002, the Debian/Ubuntu/Fedora default): nobody else is in it.
    if group_writable && !world_writable && !exempt && !private_group(uid, meta.gid()) {
        let gid = meta.gid();
        return Err(format!(
            "{what} is writable by its group (gid {gid}, mode {mode:04o}), and that group is not private to its owner (another user is a member or has it as primary group); with `umask 002` (the default for user private groups) builds and clones come out group-writable: chmod g-w {} (or build with umask 022), or chgrp it to the owner's own private group",
            path.display()
        ));
    }
    if world_writable && !exempt {
        let why = match place {
            Place::File => String::new(),
            Place::PluginDir => {
                ", so anyone in it could add a plugin (a sticky bit does not prevent that)".into()
            }
            Place::Above => " without the sticky bit".into(),
        };
        return Err(format!(
            "{what} is writable by its group or other users (mode {mode:04o}){why}; chmod go-w {}",
            path.display()
        ));
    }
    Ok(())
}

/// What the user and group databases say about a file's owner and group, for the
/// private-group rule ([`group_is_private`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFacts {
    /// The owner's user name and primary gid, if the owner is in the user database.
    pub owner: Option<(String, u32)>,
    /// The names listed as the group's members, if the group is in the group database.
    pub members: Option<Vec<String>>,
    /// The uids of every user whose primary group it is.
    pub primary_of: Vec<u32>,
}

/// Whether group `gid` is private to the file's owner `owner_uid`, as Debian's OpenSSH
/// (`user-group-modes.patch`) decides before accepting a group-writable file: the group is the
/// owner's primary group, it lists no member but the owner, and no other user has it as
/// primary group. Unknown owner or group: not private.
pub fn group_is_private(owner_uid: u32, gid: u32, facts: &GroupFacts) -> bool {
    let (Some((name, primary)), Some(members)) = (&facts.owner, &facts.members) else {
        return false;
    };
    *primary == gid
        && members.iter().all(|m| m == name)
        && facts.primary_of.iter().all(|&uid| uid == owner_uid)
}

/// Look up [`GroupFacts`] and apply [`group_is_private`].
#[cfg(unix)]
fn private_group(owner_uid: u32, gid: u32) -> bool {
    let facts = GroupFacts {
        owner: user_name_and_gid(owner_uid),
        members: group_members(gid),
        primary_of: users_with_primary_gid(gid),
    };
    group_is_private(owner_uid, gid, &facts)
}

/// Run a `get*_r` lookup with a buffer that grows on `ERANGE`; `None` if not found or failed.
#[cfg(unix)]
fn with_lookup_buffer<T>(
    mut lookup: impl FnMut(&mut [libc::c_char]) -> (i32, Option<T>),
) -> Option<T> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let (rc, found) = lookup(&mut buf);
        if rc == libc::ERANGE && buf.len() < (1 << 22) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return if rc == 0 { found } else { None };
    }
}

#[cfg(unix)]
fn user_name_and_gid(uid: u32) -> Option<(String, u32)> {
    with_lookup_buffer(|buf| {
        // SAFETY: passwd is plain data; getpwuid_r writes it and the strings into `buf`, which
        // outlives the reads below; `result` is null when not found.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
                return (rc, None);
            }
            let name = std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
            (0, Some((name, pwd.pw_gid)))
        }
    })
}

#[cfg(unix)]
fn group_members(gid: u32) -> Option<Vec<String>> {
    with_lookup_buffer(|buf| {
        // SAFETY: group is plain data; getgrgid_r writes it and the member list into `buf`;
        // gr_mem is a null-terminated array of C strings.
        unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result);
            if rc != 0 || result.is_null() {
                return (rc, None);
            }
            let mut members = Vec::new();
            let mut at = grp.gr_mem;
            while !at.is_null() && !(*at).is_null() {
                members.push(std::ffi::CStr::from_ptr(*at).to_string_lossy().into_owned());
                at = at.add(1);
            }
            (0, Some(members))
        }
    })
}

/// Every user whose primary group is `gid` (the whole user database, as Debian's check reads it).
#[cfg(unix)]
fn users_with_primary_gid(gid: u32) -> Vec<u32> {
    // getpwent keeps one iteration per process: one walk at a time.
    static WALK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _walk = crate::mutex::lock(&WALK);
    let mut uids = Vec::new();
    // SAFETY: setpwent/getpwent/endpwent under the lock above; each entry is read before the
    // next call overwrites it.
    unsafe {
        libc::setpwent();
        loop {
            let entry = libc::getpwent();
            if entry.is_null() {
                break;
            }
            if (*entry).pw_gid == gid {
                uids.push((*entry).pw_uid);
            }
        }
        libc::endpwent();
    }
    uids
}

fn classify(file: &Path, error: LibraryError) -> LoadError {
    let file = file.to_path_buf();
    match error {
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin {
            file,
            reason: "no iniesta root module exported".into(),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            file,
            plugin_api: actual_version.to_string(),
            host_api: expected_version.to_string(),
        },
        LibraryError::AbiInstability(detail) => LoadError::IncompatibleLayout {
            file,
            host_api: HOST_API_VERSION.into(),
            detail: shorten(&detail.to_string()),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::IncompatibleLayout {
            file,
            host_api: HOST_API_VERSION.into(),
            detail: format!("built with an incompatible abi_stable ({header:?})"),
        },
        other => LoadError::Broken {
            file,
            reason: shorten(&other.to_string()),
        },
    }
}

fn shorten(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect();
    let mut out = lines.join(" | ");
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A private scratch directory (0700, so the trust check passes whatever the umask).
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 0700");
        dir
    }

    fn write_0644(path: &std::path::Path, bytes: &[u8]) {
        std::fs::write(path, bytes).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    #[test]
    fn the_bytes_read_come_from_the_checked_real_path_even_if_the_link_is_repointed() {
        let dir = scratch();
        let (a, b) = (dir.path().join("a.so"), dir.path().join("b.so"));
        write_0644(&a, b"checked");
        write_0644(&b, b"swapped in after the check");
        let link = dir.path().join("libx.so");
        std::os::unix::fs::symlink(&a, &link).expect("symlink");
        let real = super::check_trusted(&link).expect("trusted");
        assert_eq!(real, std::fs::canonicalize(&a).expect("canonical"));
        // The attacker flips the link between the check and the read.
        std::fs::remove_file(&link).expect("rm link");
        std::os::unix::fs::symlink(&b, &link).expect("symlink again");
        let (_, bytes) = super::read_checked(&link, &real).expect("read");
        assert_eq!(bytes, b"checked");
    }

    #[test]
    fn a_checked_path_that_became_a_link_is_not_followed() {
        let dir = scratch();
        let target = dir.path().join("target.so");
        write_0644(&target, b"elsewhere");
        let real = dir.path().join("libx.so");
        std::os::unix::fs::symlink(&target, &real).expect("symlink");
        let err = super::read_checked(&real, &real).expect_err("O_NOFOLLOW refuses a link");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = scratch();
        let fifo = dir.path().join("libfifo.so");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("c path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let subdir = dir.path().join("libdir.so");
        std::fs::create_dir(&subdir).expect("mkdir");
        std::fs::set_permissions(&subdir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        for path in [fifo, subdir] {
            let (tx, rx) = std::sync::mpsc::channel();
            let origin = dir.path().to_path_buf();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(super::load_file(&p, &origin).map(|_| ()));
            });
            let result = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("loading {} blocked", path.display()));
            let err = result.expect_err("refused");
            assert_eq!(err.reason(), "broken", "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn a_group_is_private_only_to_its_sole_user() {
        use super::{group_is_private, GroupFacts};
        let alice = |members: &[&str], primary_of: &[u32]| GroupFacts {
            owner: Some(("alice".into(), 1000)),
            members: Some(members.iter().map(|m| m.to_string()).collect()),
            primary_of: primary_of.to_vec(),
        };
        // User private group: alice's primary group, nobody else in it.
        assert!(group_is_private(1000, 1000, &alice(&[], &[1000])));
        assert!(group_is_private(1000, 1000, &alice(&["alice"], &[1000])));
        // Another listed member, or another user's primary group too.
        assert!(!group_is_private(
            1000,
            1000,
            &alice(&["alice", "bob"], &[1000])
        ));
        assert!(!group_is_private(1000, 1000, &alice(&["bob"], &[1000])));
        assert!(!group_is_private(1000, 1000, &alice(&[], &[1000, 1001])));
        // Not the owner's primary group (e.g. a shared `users` or `staff` group).
        assert!(!group_is_private(1000, 100, &alice(&[], &[])));
        // Unknown owner or group.
        let unknown_owner = GroupFacts {
            owner: None,
            ..alice(&[], &[1000])
        };
        assert!(!group_is_private(1000, 1000, &unknown_owner));
        let unknown_group = GroupFacts {
            members: None,
            ..alice(&[], &[1000])
        };
        assert!(!group_is_private(1000, 1000, &unknown_group));
    }

    #[test]
    fn private_dirs_are_fresh_unpredictable_and_0700() {
        let prefix = format!("iniesta-plugins-{}-", std::process::id());
        let a = super::private_tempdir(&prefix).expect("a private dir");
        let b = super::private_tempdir(&prefix).expect("another");
        assert_ne!(a.path(), b.path(), "a fresh directory each time");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        for dir in [&a, &b] {
            let meta = std::fs::metadata(dir.path()).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "{dir:?}");
            assert_eq!(meta.uid(), euid);
            let name = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let random = name.strip_prefix(&prefix).unwrap_or_default();
            assert!(random.len() >= 6, "a random part after the pid: {name}");
        }
    }
}
