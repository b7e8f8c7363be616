//! The book (docs/), the README and the plugin guide (plugin-api/GUIDE.md) checked against the
//! code:
//!
//! - every ```toml snippet parses as an `iniesta.toml` (a whole config, or a fragment with
//!   `service = "x"` put in front); ```toml,ignore snippets only need to be valid TOML;
//! - the CLI reference (docs/src/reference/cli.md) is the one clap generates from
//!   `iniesta::cli::Cli`: a stale page fails with a diff hint, and `INIESTA_BLESS=1` rewrites it;
//! - the config reference (docs/src/reference/config.md) lists exactly the keys the config
//!   parser accepts, table by table;
//! - the metrics reference (docs/src/reference/metrics.md) names exactly the metrics that
//!   host/src/ops/metrics.rs defines;
//! - the Grafana dashboard (examples/grafana/iniesta-dashboard.json) queries only the series
//!   that page lists, in the forms the exporter renders, and only their labels.
//!
//! docs/src/contributing.md says the same for people writing the docs.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// The repository's root (the host crate's parent).
fn repo_root() -> PathBuf {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    host.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| host.to_path_buf())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every Markdown file whose snippets are checked: README.md, plugin-api/GUIDE.md and the book.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md"), root.join("plugin-api/GUIDE.md")];
    let mut dirs = vec![root.join("docs/src")];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A fenced code block: its info string (`toml`, `toml,ignore`, ...), its text, and the line
/// its opening fence is on.
struct Snippet {
    info: String,
    text: String,
    line: usize,
}

/// The fenced code blocks of a Markdown text (``` fences, indented ones inside lists included).
fn snippets(markdown: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, usize, String)> = None; // info, indent, line, text
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((info.trim().to_string(), indent, index + 1, String::new()));
                }
            }
            Some((info, fence_indent, start, mut text)) => {
                if trimmed.starts_with("```") && trimmed.trim() == "```" {
                    out.push(Snippet {
                        info,
                        text,
                        line: start,
                    });
                } else {
                    let cut = indent.min(fence_indent);
                    text.push_str(&line[cut..]);
                    text.push('\n');
                    open = Some((info, fence_indent, start, text));
                }
            }
        }
    }
    out
}

#[test]
fn every_toml_snippet_is_a_valid_config_or_fragment() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for snippet in snippets(&read(&file)) {
            let mut words = snippet.info.split(',').map(str::trim);
            if words.next() != Some("toml") {
                continue;
            }
            checked += 1;
            let at = format!("{name}:{}", snippet.line);
            let value: toml::Table = match toml::from_str(&snippet.text) {
                Ok(value) => value,
                Err(e) => {
                    problems.push(format!("{at}: not valid TOML: {e}"));
                    continue;
                }
            };
            if words.any(|w| w == "ignore") {
                continue;
            }
            let text = if value.contains_key("service") {
                snippet.text.clone()
            } else {
                format!("service = \"x\"\n{}", snippet.text)
            };
            if let Err(e) = iniesta::config::Config::parse(&text, Path::new(".")) {
                problems.push(format!(
                    "{at}: not a valid iniesta.toml or fragment (mark it ```toml,ignore if it is \
                     not meant to be one): {e}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked > 20,
        "only {checked} toml snippets found: is the scan broken?"
    );
}

const CLI_PAGE: &str = "docs/src/reference/cli.md";
const BEGIN: &str = "<!-- BEGIN GENERATED from iniesta::cli::Cli by host/tests/it/docs_book.rs; \
                     INIESTA_BLESS=1 cargo test -p iniesta --test it docs_book:: rewrites it -->";
const END: &str = "<!-- END GENERATED -->";

/// One table cell: no line breaks, `|` escaped.
fn cell(text: &str) -> String {
    text.trim()
        .replace("\n\n", "<br><br>")
        .replace('\n', " ")
        .replace('|', "\\|")
}

/// How an argument is written on the command line: `-c, --config <FILE>` or `<EVENT>`.
fn arg_form(arg: &clap::Arg) -> String {
    let values = arg
        .get_value_names()
        .map(|names| names.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>())
        .unwrap_or_else(|| vec![format!("<{}>", arg.get_id().as_str().to_uppercase())]);
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let repeated = matches!(
        arg.get_action(),
        clap::ArgAction::Append | clap::ArgAction::Count
    ) || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let mut form = if arg.is_positional() {
        values.join(" ")
    } else {
        let mut names = Vec::new();
        if let Some(short) = arg.get_short() {
            names.push(format!("-{short}"));
        }
        if let Some(long) = arg.get_long() {
            names.push(format!("--{long}"));
        }
        let mut form = names.join(", ");
        if takes_value {
            form.push(' ');
            form.push_str(&values.join(" "));
        }
        form
    };
    if repeated {
        form.push_str("...");
    }
    form
}

/// What an argument does: its help, possible values, default and environment variable.
fn arg_help(arg: &clap::Arg) -> String {
    let mut help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(h) => format!("`{}`: {}", v.get_name(), h),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if !possible.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
        let _ = write!(help, "\n\nValues: {}.", possible.join("; "));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
        let _ = write!(help, "\n\nDefault: `{}`.", defaults.join(" "));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(help, "\n\nEnvironment: `{}`.", env.to_string_lossy());
    }
    cell(&help)
}

/// The arguments of `cmd` as a Markdown table (global ones only where they are declared).
fn arg_table(cmd: &clap::Command, out: &mut String, top: bool) {
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter(|a| top || !a.is_global_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if args.is_empty() {
        return;
    }
    out.push_str("| argument | what it does |\n|---|---|\n");
    for arg in args {
        let _ = writeln!(out, "| `{}` | {} |", arg_form(arg), arg_help(arg));
    }
    if top {
        out.push_str(
            "| `-h, --help` | Print help (`iniesta COMMAND --help` for one command's) |\n\
             | `-V, --version` | Print the version |\n",
        );
    }
    out.push('\n');
}

/// One command's section, then its subcommands'.
fn command_section(cmd: &clap::Command, path: &str, out: &mut String) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_path = format!("{path} {}", sub.get_name());
        let _ = writeln!(out, "### `{sub_path}`\n");
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            let _ = writeln!(out, "{}\n", about.to_string().trim());
        }
        let mut usage_cmd = sub.clone();
        let usage = usage_cmd.render_usage().to_string();
        let usage = usage.trim().trim_start_matches("Usage:").trim();
        let _ = writeln!(out, "```text\n{usage}\n```\n");
        arg_table(sub, out, false);
        command_section(sub, &sub_path, out);
    }
}

/// The generated part of the CLI reference.
fn generated_cli_reference() -> String {
    let mut cmd = iniesta::cli::Cli::command();
    cmd.build();
    let mut out = String::new();
    let _ = writeln!(out, "## Global options\n");
    let _ = writeln!(out, "Accepted before or after the command.\n");
    let _ = writeln!(out, "```text\n{}\n```\n", {
        let usage = cmd.render_usage().to_string();
        usage.trim().trim_start_matches("Usage:").trim().to_string()
    });
    arg_table(&cmd, &mut out, true);
    let _ = writeln!(out, "## Commands\n");
    command_section(&cmd, "iniesta", &mut out);
    out
}

#[test]
fn the_cli_reference_is_the_one_clap_generates() {
    let path = repo_root().join(CLI_PAGE);
    let page = read(&path);
    let (Some(begin), Some(end)) = (page.find(BEGIN), page.find(END)) else {
        panic!("{CLI_PAGE} lacks the markers {BEGIN:?} ... {END:?}");
    };
    let current = &page[begin + BEGIN.len()..end];
    let generated = format!("\n\n{}", generated_cli_reference());
    if current == generated {
        return;
    }
    if std::env::var_os("INIESTA_BLESS").is_some_and(|v| v == "1") {
        let new = format!("{}{BEGIN}{generated}{}", &page[..begin], &page[end..]);
        std::fs::write(&path, new).unwrap_or_else(|e| panic!("writing {CLI_PAGE}: {e}"));
        return;
    }
    let first_difference = current
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| current.lines().count().min(generated.lines().count()));
    let around = |text: &str| {
        text.lines()
            .skip(first_difference)
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{CLI_PAGE} is stale (the CLI changed). First difference, generated-part line {}:\n\
         page:\n{}\nclap:\n{}\n\nRewrite it with: INIESTA_BLESS=1 cargo test -p iniesta --test it \
         docs_book::the_cli_reference",
        first_difference + 1,
        around(current),
        around(&generated)
    );
}

/// `iniesta_...` names in backticks or quotes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("iniesta_") {
        let before = text[..start].chars().next_back();
        if !matches!(before, Some('`' | '"')) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let after = text[start + name.len()..].chars().next();
        if after == before {
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_metrics_reference_names_every_metric_and_no_other() {
    let root = repo_root();
    let code = metric_names(&read(&root.join("host/src/ops/metrics.rs")));
    let page_text = read(&root.join("docs/src/reference/metrics.md"));
    // The table's first column: rows that start with "| `iniesta_".
    let rows: String = page_text
        .lines()
        .filter(|l| l.starts_with("| `iniesta_"))
        .map(|l| l.split('|').nth(1).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let page = metric_names(&rows);
    assert!(
        code.len() > 20,
        "only {} metric names in metrics.rs",
        code.len()
    );
    let missing: Vec<_> = code.difference(&page).collect();
    let stale: Vec<_> = page.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/src/reference/metrics.md is out of date: missing (in host/src/ops/metrics.rs, not \
         on the page): {missing:?}; stale (on the page, not in the code): {stale:?}"
    );
}

/// The keys a config table accepts, read from the parser itself: a probe with an unknown key
/// is refused with "unknown field `zz_probe`, expected one of `a`, `b`, ..." (every config
/// struct denies unknown fields). `header` is the table's header line, or "" for the top level.
fn keys_in_code(header: &str) -> BTreeSet<String> {
    let text = format!("service = \"x\"\n{header}\nzz_probe = 1\n");
    let error = match iniesta::config::Config::parse(&text, Path::new(".")) {
        Ok(_) => panic!("{header:?} accepted an unknown key: cannot list its keys"),
        Err(e) => e.to_string(),
    };
    let Some(expected) = error.split("unknown field `zz_probe`, expected").nth(1) else {
        panic!("no list of keys in the error for {header:?}: {error}");
    };
    let expected = expected.lines().next().unwrap_or_default();
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_config_reference_lists_every_key_and_no_other() {
    let page = read(&repo_root().join("docs/src/reference/config.md"));
    // Section (TOML path; "" is the top level) -> keys in its tables' first column.
    let mut sections: Vec<(String, BTreeSet<String>)> = Vec::new();
    // Tables documented on another page (named in a heading with several tables).
    let mut elsewhere: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<usize> = None;
    let table_name = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.starts_with('['))
            .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_string())
            .collect()
    };
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let names = table_name(heading);
            current = None;
            if heading.trim() == "Top level" {
                sections.push((String::new(), BTreeSet::new()));
                current = Some(sections.len() - 1);
            } else if names.len() == 1 {
                sections.push((names[0].clone(), BTreeSet::new()));
                current = Some(sections.len() - 1);
            } else {
                elsewhere.extend(names);
            }
        } else if line.starts_with("`[") && current.is_some() {
            // "`[plugins.isolate]` (see ...):" opens a sub-table's key table.
            if let Some(name) = table_name(line).first() {
                sections.push((name.clone(), BTreeSet::new()));
                current = Some(sections.len() - 1);
            }
        } else if let (Some(index), Some(row)) = (current, line.strip_prefix("| `")) {
            if let Some(key) = row.split('`').next() {
                sections[index].1.insert(key.to_string());
            }
        }
    }
    let documented: BTreeSet<String> = sections.iter().map(|(name, _)| name.clone()).collect();
    assert!(
        documented.len() > 8,
        "only {documented:?} sections found: is the scan broken?"
    );
    let mut problems = Vec::new();
    for (name, on_page) in &sections {
        let header = match name.as_str() {
            "" => String::new(),
            "bindings" => "[[bindings]]".to_string(),
            // A binding's sub-table, under the last `[[bindings]]` entry.
            other if other.starts_with("bindings.") => format!("[[bindings]]\n[{other}]"),
            other => format!("[{other}]"),
        };
        let in_code = keys_in_code(&header);
        // A key that is itself a table documented in its own section counts as documented.
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}.")
        };
        let missing: Vec<&String> = in_code
            .iter()
            .filter(|k| !on_page.contains(*k))
            .filter(|k| {
                let path = format!("{prefix}{k}");
                !documented.contains(&path) && !elsewhere.contains(&path)
            })
            .collect();
        let stale: Vec<&String> = on_page.difference(&in_code).collect();
        if !missing.is_empty() || !stale.is_empty() {
            let shown = if name.is_empty() { "top level" } else { name };
            problems.push(format!(
                "[{shown}]: missing from the page: {missing:?}; on the page but not accepted: \
                 {stale:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/src/reference/config.md is out of date:\n{}",
        problems.join("\n")
    );
}

const DASHBOARD: &str = "examples/grafana/iniesta-dashboard.json";

/// Labels every scraped series may carry besides its own: Prometheus's target labels, and
/// the ones histograms (`le`) and summaries (`quantile`) are exported with.
const TARGET_LABELS: &[&str] = &["job", "instance", "le", "quantile"];

/// One metric as docs/src/reference/metrics.md describes it.
#[derive(Debug)]
struct Documented {
    /// `counter`, `gauge`, `histogram` or `summary`.
    kind: String,
    /// Its label names (not their values).
    labels: BTreeSet<String>,
}

/// The label names in a labels cell of the metrics table: "`binding`, `result`: `ack`, ..."
/// names `binding` and `result`. A backticked word followed by `:` is a label whose values
/// follow; the values run until a `;` or the next such label; other backticked words are labels.
fn documented_labels(cell: &str) -> BTreeSet<String> {
    let parts: Vec<&str> = cell.split('`').collect();
    let mut labels = BTreeSet::new();
    let mut in_values = false;
    for i in (1..parts.len()).step_by(2) {
        if parts[i - 1].contains(';') {
            in_values = false;
        }
        let after = parts.get(i + 1).copied().unwrap_or_default();
        if after.trim_start().starts_with(':') {
            labels.insert(parts[i].to_string());
            in_values = true;
        } else if !in_values {
            labels.insert(parts[i].to_string());
        }
    }
    labels
}

/// Every metric metrics.md documents: the table's `iniesta_*` rows (name, type, labels) and
/// the `process_*` names of its "Process metrics" paragraph (no labels of their own).
fn documented_metrics() -> std::collections::BTreeMap<String, Documented> {
    let page = read(&repo_root().join("docs/src/reference/metrics.md"));
    let mut metrics = std::collections::BTreeMap::new();
    for line in page.lines().filter(|l| l.starts_with("| `iniesta_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let documented = Documented {
            kind: cells[2].to_string(),
            labels: documented_labels(cells[3]),
        };
        metrics.insert(name, documented);
    }
    let process = page
        .split("**Process metrics**")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("metrics.md has a **Process metrics** paragraph");
    for name in process.split('`').skip(1).step_by(2) {
        if name.starts_with("process_") {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let documented = Documented {
                kind: kind.to_string(),
                labels: BTreeSet::new(),
            };
            metrics.insert(name.to_string(), documented);
        }
    }
    metrics
}

/// The names /metrics serves for each documented metric, mapped to the metric: histograms as
/// `_bucket`, `_sum` and `_count` (no bare name); summaries as the bare name (with
/// `quantile`), `_sum` and `_count`; counters and gauges by their name.
fn exported_series(
    metrics: &std::collections::BTreeMap<String, Documented>,
) -> std::collections::BTreeMap<String, String> {
    let mut series = std::collections::BTreeMap::new();
    for (name, documented) in metrics {
        let suffixes: &[&str] = match documented.kind.as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            series.insert(format!("{name}{suffix}"), name.clone());
        }
    }
    series
}

/// Every PromQL expression of the dashboard: (where, expression) for each panel target (rows'
/// nested panels included) and each query variable.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(object) => {
                if let Some(targets) = object.get("targets").and_then(|t| t.as_array()) {
                    let title = object.get("title").and_then(|t| t.as_str()).unwrap_or("?");
                    for target in targets {
                        if let Some(expr) = target.get("expr").and_then(|e| e.as_str()) {
                            out.push((format!("panel {title:?}"), expr.to_string()));
                        }
                    }
                }
                for (key, inner) in object {
                    if key != "targets" {
                        walk(inner, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has templating.list");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let name = variable["name"].as_str().unwrap_or("?");
        let query = &variable["query"];
        let query = query
            .as_str()
            .or_else(|| query["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        out.push((format!("variable {name}"), query.to_string()));
    }
    out
}

#[test]
fn the_grafana_dashboard_uses_only_exported_series() {
    let metrics = documented_metrics();
    let handler_calls = &metrics["iniesta_handler_calls_total"].labels;
    assert_eq!(
        handler_calls.iter().map(String::as_str).collect::<Vec<_>>(),
        ["binding", "result"],
        "the labels column of metrics.md no longer parses: {handler_calls:?}"
    );
    assert!(
        metrics.contains_key("process_resident_memory_bytes"),
        "no process metrics found in metrics.md"
    );
    let series = exported_series(&metrics);

    let text = read(&repo_root().join(DASHBOARD));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"));
    assert_eq!(dashboard["schemaVersion"], 39, "{DASHBOARD}: schemaVersion");
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() > 20,
        "only {} queries found in {DASHBOARD}: is the scan broken?",
        queries.len()
    );

    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("regex");
    let names = regex::Regex::new(r"\b(?:iniesta|process)_[a-z0-9_]+\b").expect("regex");
    let selector =
        regex::Regex::new(r"\b((?:iniesta|process)_[a-z0-9_]+)\s*\{([^}]*)\}").expect("regex");
    let matcher = regex::Regex::new(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)").expect("regex");
    let grouping =
        regex::Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
            .expect("regex");
    let label_values =
        regex::Regex::new(r"label_values\((?:[^()]*,)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
            .expect("regex");

    let mut problems = Vec::new();
    let mut panels_of: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (at, expr) in &queries {
        // Label values and regexes say nothing about names: blank them out.
        let expr = strings.replace_all(expr, "\"\"");
        let mut used = BTreeSet::new();
        for name in names.find_iter(&expr).map(|m| m.as_str()) {
            match series.get(name) {
                Some(base) => {
                    used.insert(base.clone());
                    if at.starts_with("panel") {
                        panels_of
                            .entry(base.clone())
                            .or_default()
                            .insert(at.clone());
                    }
                }
                None => problems.push(format!(
                    "{at}: `{name}` is not a series /metrics exports (metrics.md lists the \
                     metrics; histograms are exported as _bucket/_sum/_count, summaries as the \
                     name with `quantile`, _sum and _count)"
                )),
            }
        }
        let allowed = |label: &str, metrics_used: &BTreeSet<String>| {
            TARGET_LABELS.contains(&label)
                || metrics_used
                    .iter()
                    .any(|m| metrics.get(m).is_some_and(|d| d.labels.contains(label)))
        };
        let mut selectors = 0;
        for found in selector.captures_iter(&expr) {
            selectors += 1;
            let Some(base) = series.get(&found[1]) else {
                continue; // reported above
            };
            let one = BTreeSet::from([base.clone()]);
            for label in matcher.captures_iter(&found[2]) {
                if !allowed(&label[1], &one) {
                    problems.push(format!(
                        "{at}: `{}` does not carry the label `{}` (metrics.md: {:?})",
                        &found[1], &label[1], metrics[base].labels
                    ));
                }
            }
        }
        if expr.matches('{').count() != selectors {
            problems.push(format!(
                "{at}: a label selector without a metric name in {expr}"
            ));
        }
        let clauses = grouping.captures_iter(&expr).map(|c| c[1].to_string());
        let label_args = label_values.captures_iter(&expr).map(|c| c[1].to_string());
        for list in clauses.chain(label_args) {
            for label in list.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                if !allowed(label, &used) {
                    problems.push(format!(
                        "{at}: `{label}` is not a label of {used:?} in {expr}"
                    ));
                }
            }
        }
    }
    for required in [
        "iniesta_messages_received_total",
        "iniesta_handler_calls_total",
        "iniesta_queue_messages",
        "iniesta_in_flight",
        "iniesta_lock_failures_total",
    ] {
        if !panels_of.contains_key(required) {
            problems.push(format!("no panel shows `{required}`"));
        }
    }
    assert!(
        problems.is_empty(),
        "{DASHBOARD} strays from the series /metrics exports \
         (docs/src/reference/metrics.md):\n{}",
        problems.join("\n")
    );
}
