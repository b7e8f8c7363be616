//! What a worker process gets from the host: a cleared environment with only the basics and
//! the variables its config names, its own process group, and resource limits.

use std::process::Command;

use super::Settings;

/// Variables every worker keeps (when the host has them): locale, time zone, search path,
/// home and temporary directory, and Rust's backtrace switch. Nothing else is inherited.
pub const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "RUST_BACKTRACE",
];

/// The environment for `plugin`'s worker: [`BASE_ENV`], every `LC_*`, then
/// `plugins.isolate.env` and `plugins.isolate.plugin_env.<plugin>`.
pub fn environment(settings: &Settings, plugin: &str) -> Vec<(String, String)> {
    let host = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    select(settings, plugin, host)
}

/// The variables of `host` a worker of `plugin` gets.
fn select(
    settings: &Settings,
    plugin: &str,
    host: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let extra = settings.plugin_env.get(plugin);
    let wanted = |name: &str| {
        BASE_ENV.contains(&name)
            || name.starts_with("LC_")
            || settings.env.iter().any(|e| e == name)
            || extra.is_some_and(|names| names.iter().any(|e| e == name))
    };
    host.filter(|(k, _)| wanted(k)).collect()
}

/// Clear the environment, set the worker's, and apply the limits in the child before exec.
pub fn apply(command: &mut Command, settings: &Settings, plugin: &str) {
    command.env_clear().envs(environment(settings, plugin));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C at the terminal goes to the host, which then
        // retires its workers in order, instead of killing them mid-call.
        command.process_group(0);
        let memory = settings
            .memory_limit_mb
            .map(|mb| mb.saturating_mul(1024 * 1024));
        let files = settings.open_files;
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                // No core files from crashing plugins.
                set_limit(libc::RLIMIT_CORE, 0)?;
                if let Some(bytes) = memory {
                    set_limit(libc::RLIMIT_AS, bytes)?;
                }
                if let Some(files) = files {
                    set_limit(libc::RLIMIT_NOFILE, files)?;
                }
                Ok(())
            });
        }
    }
}

#[cfg(unix)]
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_basics_and_named_variables_pass() {
        let settings = Settings {
            env: vec!["ISOLATE_TEST_SHARED".into()],
            plugin_env: [("risky".to_string(), vec!["ISOLATE_TEST_RISKY".to_string()])]
                .into_iter()
                .collect(),
            ..Settings::for_tests()
        };
        let host = [
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C.UTF-8"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("ISOLATE_TEST_SHARED", "1"),
            ("ISOLATE_TEST_RISKY", "2"),
            ("ISOLATE_TEST_SECRET", "3"),
        ];
        let names = |plugin: &str| -> Vec<String> {
            let vars = host.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            select(&settings, plugin, vars)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let risky = names("risky");
        assert!(risky.contains(&"ISOLATE_TEST_SHARED".to_string()));
        assert!(risky.contains(&"ISOLATE_TEST_RISKY".to_string()));
        assert!(!risky.contains(&"ISOLATE_TEST_SECRET".to_string()));
        assert!(!risky.contains(&"AWS_SECRET_ACCESS_KEY".to_string()));
        assert!(risky.contains(&"PATH".to_string()) && risky.contains(&"LC_ALL".to_string()));
        let other = names("other");
        assert!(other.contains(&"ISOLATE_TEST_SHARED".to_string()));
        assert!(!other.contains(&"ISOLATE_TEST_RISKY".to_string()));
        assert!(other.iter().all(|k| BASE_ENV.contains(&k.as_str())
            || k.starts_with("LC_")
            || k == "ISOLATE_TEST_SHARED"));
    }
}
