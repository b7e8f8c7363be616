//! `iniesta plugins [check FILE]`: the merged plugin view and what running hosts serve, or
//! one file checked the way the host would load it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::Output;
use crate::plugins::PluginSet;

/// `iniesta plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load one file the way the host would, without starting anything: print its name,
    /// version, plugin-api version and handlers, or why it is refused (exit 1).
    Check {
        /// The shared library (`target/release/libNAME.so`), or the plugin's crate directory.
        /// A crate built without `crate-type = ["cdylib", "rlib"]` (only an `.rlib`, no `.so`)
        /// is named with that fix.
        file: PathBuf,
    },
}

/// `iniesta plugins`: the table, the configured egresses, the running hosts; exit 1 when a
/// file was refused.
pub async fn run(
    path: &Path,
    command: Option<PluginsCommand>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        Some(PluginsCommand::Check { file }) => Ok(check(&file)),
        None => {
            let config = crate::validate::load(path)?;
            let set = PluginSet::scan(&config.plugin_dirs());
            let hosts = crate::plugins::watch::running_hosts(&config);
            let status = if set.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            if output == Output::Json {
                println!("{}", to_json(&config, &set, &hosts));
                return Ok(status);
            }
            print!("{}", render_plugins(&set, &hosts));
            for plugin in bound_but_missing(&config, &set) {
                match crate::plugins::crate_type::diagnose_missing(&set.dirs, &plugin) {
                    Some(why) => println!("MISSING `{plugin}` (bound in the config): {why}"),
                    None => println!(
                        "MISSING `{plugin}` (bound in the config): no plugin of that name in plugins.dirs; build it, or fix the binding's `plugin`"
                    ),
                }
            }
            print!("{}", crate::egress::render_configured(&config).await);
            print!("{}", render_running(&hosts));
            // Non-zero when a file was refused, so deploy scripts notice.
            Ok(status)
        }
    }
}

/// `iniesta plugins --output json`: the same facts as the table, one object.
fn to_json(
    config: &crate::config::Config,
    set: &PluginSet,
    hosts: &[crate::plugins::watch::HostState],
) -> serde_json::Value {
    let plugin = |p: &crate::plugins::LoadedPlugin| {
        serde_json::json!({
            "name": p.name,
            "version": p.version,
            "api": p.abi_version,
            "handlers": p.handlers,
            "egresses": p.egresses,
            "ingresses": p.ingresses,
            "file": p.file,
            "origin_dir": p.origin_dir,
            "panic": if p.in_process_refusal().is_some() { "abort" } else { "unwind" },
            "serving_generations": serving(hosts, &p.name),
        })
    };
    let missing: Vec<serde_json::Value> = bound_but_missing(config, set)
        .into_iter()
        .map(|name| {
            let why = crate::plugins::crate_type::diagnose_missing(&set.dirs, &name)
                .map(|why| why.to_string())
                .unwrap_or_else(|| "no plugin of that name in plugins.dirs".into());
            serde_json::json!({ "plugin": name, "why": why })
        })
        .collect();
    serde_json::json!({
        "plugins": set.plugins.values().map(|p| plugin(p)).collect::<Vec<_>>(),
        "overridden": set.overridden.iter().map(|p| plugin(p)).collect::<Vec<_>>(),
        "refused": set.refused.iter().map(|r| serde_json::json!({
            "file": r.file,
            "error": r.error.to_string(),
        })).collect::<Vec<_>>(),
        "missing": missing,
        "running_hosts": hosts,
    })
}

/// `iniesta plugins check FILE`.
fn check(file: &Path) -> ExitCode {
    // A crate directory, an rlib or a .so that was never built: say what is missing.
    let found = match crate::plugins::crate_type::library_for(file) {
        Ok(found) => found,
        Err(why) => {
            println!("not loadable: {why}");
            return ExitCode::FAILURE;
        }
    };
    let file = found.as_deref().unwrap_or(file);
    let origin = file.parent().unwrap_or_else(|| Path::new("."));
    match crate::plugins::load::load_file(file, origin) {
        Ok(plugin) => {
            println!("ok: {}", file.display());
            println!("  plugin    {}", plugin.name);
            println!("  version   {}", plugin.version);
            println!(
                "  api       iniesta-plugin-api {} (this host: {})",
                plugin.abi_version,
                crate::plugins::load::HOST_API_VERSION
            );
            println!("  handlers  {}", plugin.handlers.join(", "));
            println!("  load      {} ms", plugin.load_time.as_millis());
            match plugin.in_process_refusal() {
                None => {
                    println!("  panic     unwind (a panic is caught at the boundary)");
                    ExitCode::SUCCESS
                }
                Some(why) => {
                    println!("  panic     abort");
                    println!("REFUSED in the host process: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) if e.is_not_a_plugin() => {
            println!("not an iniesta plugin: {e}");
            println!("  fix: build it as a cdylib that calls iniesta_plugin_api::export_plugin!");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("REFUSED {e}");
            ExitCode::FAILURE
        }
    }
}

/// The generations of plugin `name` the running `hosts` serve (`2`, or `2,3` when hosts
/// differ), `-` when no running host serves it.
fn serving_generations(hosts: &[crate::plugins::watch::HostState], name: &str) -> String {
    let generations = serving(hosts, name);
    if generations.is_empty() {
        return "-".to_string();
    }
    generations
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The generations of plugin `name` the running `hosts` serve, ascending, without repeats.
fn serving(hosts: &[crate::plugins::watch::HostState], name: &str) -> Vec<u64> {
    let mut generations: Vec<u64> = hosts
        .iter()
        .flat_map(|h| h.plugins.iter())
        .filter(|p| p.name == name)
        .map(|p| p.generation)
        .collect();
    generations.sort_unstable();
    generations.dedup();
    generations
}

/// Plugins the config's bindings name that no directory has.
fn bound_but_missing(config: &crate::config::Config, set: &PluginSet) -> Vec<String> {
    let mut names: Vec<String> = config
        .bindings
        .iter()
        .map(|b| b.plugin.clone())
        .filter(|p| !set.plugins.contains_key(p))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `plugins` table. `GEN` is the generation the running hosts of this config serve (from
/// their state files, so it follows their hot reloads), `-` where none runs: this command's
/// own load of the files is not what any host serves.
pub fn render_plugins(set: &PluginSet, hosts: &[crate::plugins::watch::HostState]) -> String {
    let mut out = super::table::render(
        &[
            "name",
            "version",
            "api",
            "gen",
            "handlers",
            "file",
            "origin dir",
        ],
        set.plugins.values().map(|plugin| {
            vec![
                plugin.name.clone(),
                plugin.version.clone(),
                plugin.abi_version.clone(),
                serving_generations(hosts, &plugin.name),
                crate::egress::exports(plugin),
                plugin.file.display().to_string(),
                plugin.origin_dir.display().to_string(),
            ]
        }),
    );
    out.push('\n');
    for plugin in &set.overridden {
        out.push_str(&format!(
            "overridden: {} {} from {} (a later directory has a plugin of the same name)\n",
            plugin.name,
            plugin.version,
            plugin.file.display()
        ));
    }
    for refusal in &set.refused {
        out.push_str(&format!("REFUSED {}\n", refusal.error));
    }
    for plugin in set.plugins.values() {
        if plugin.in_process_refusal().is_some() {
            out.push_str(&format!(
                "panic = \"abort\": {} {} from {} runs only isolated (plugins.isolate.names); rebuild it with panic = \"unwind\" to run it in the host\n",
                plugin.name,
                plugin.version,
                plugin.file.display()
            ));
        }
    }
    if set.plugins.is_empty() {
        out.push_str(
            "no plugins loaded: check plugins.dirs and build the plugins (cargo build --release)\n",
        );
    }
    out
}

/// What running hosts of this config serve, from their state files.
pub fn render_running(hosts: &[crate::plugins::watch::HostState]) -> String {
    let mut out = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for host in hosts {
        out.push_str(&format!(
            "\nrunning host pid {} ({}), updated {}s ago: {} refused load(s), ~{:.1} MB kept by {} old generation(s) (libraries are never unloaded)\n",
            host.pid,
            host.config.display(),
            now.saturating_sub(host.updated_at),
            host.refusals,
            host.retained_bytes as f64 / 1e6,
            host.retained_generations
        ));
        for p in &host.plugins {
            let loaded =
                aws_smithy_types::DateTime::from_secs(i64::try_from(p.loaded_at).unwrap_or(0))
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .unwrap_or_default();
            out.push_str(&format!(
                "  {} {} generation {} loaded {} in {} ms, reloaded {} time(s), from {}\n",
                p.name,
                p.version,
                p.generation,
                loaded,
                p.load_ms,
                p.reloads,
                p.file.display()
            ));
        }
        for f in &host.load_failures {
            let serving = match f.serving_generation {
                Some(g) => format!("generation {g} keeps serving"),
                None => "nothing loaded from it".to_string(),
            };
            out.push_str(&format!(
                "  LOAD FAILED {} ({}; {serving}): {}\n",
                f.plugin, f.reason, f.error
            ));
        }
        for warning in host.loop_warnings() {
            out.push_str(&format!("  WARNING {warning}\n"));
        }
        out.push_str(&crate::isolate::render_status(&host.workers));
        for c in &host.circuits {
            let left = c
                .open_for_secs()
                .map(|s| format!(" for another {s} s"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  CIRCUIT {} {}{left}: its messages wait on the queue\n",
                c.state.as_str().to_uppercase(),
                c.binding
            ));
        }
    }
    out
}
