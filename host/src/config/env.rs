//! Environment overrides for every config key, layered over the file: `INIESTA_<KEY>` for a
//! top-level key (`INIESTA_SERVICE=orders`) and `INIESTA_<SECTION>__<KEY>` for a key of a
//! section, `__` between levels (`INIESTA_SQS__MAX_IN_FLIGHT=256`,
//! `INIESTA_ERRORS__SENTRY__DSN=…`). Names are case-insensitive; values are read as TOML-like
//! values (`256`, `true`, `["a", "b"]`, `{ a = 1 }`), anything else as a string. An array
//! (`INIESTA_LOCK__URLS`, `INIESTA_BINDINGS`) is replaced whole.
//!
//! A variable is an override when its first level is a top-level key of `iniesta.toml`; the
//! host's other variables (`INIESTA_LOG`, `INIESTA_CONFIG`, `INIESTA_ACCT_FILE`, …) are not.
//! One that names a key with a single `_` between levels (`INIESTA_SQS_MAX_IN_FLIGHT`) is
//! refused with the spelling that works (`INIESTA_CONSOLE_TOKEN` names no key: it is left
//! alone), and an unknown key
//! is refused like one in the file, naming the variable. figment merges the overrides over
//! the file's table and extracts the config.

use figment::providers::Serialized;
use figment::value::Value;
use figment::Figment;

/// What every override starts with.
pub const PREFIX: &str = "INIESTA_";

/// Between levels of a key in a variable's name.
pub const SEPARATOR: &str = "__";

/// The top-level keys of `iniesta.toml` (what a variable's first level must be).
pub const TOP_LEVEL: &[&str] = &[
    "service",
    "env",
    "initialization",
    "broker",
    "sns",
    "sqs",
    "lock",
    "plugins",
    "bindings",
    "metrics",
    "errors",
    "console",
    "egress",
    "ingress",
    "outbox",
    "publish",
    "payloads",
    "tracing",
];

/// One environment variable that overrides a config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable, as set (`INIESTA_SQS__MAX_IN_FLIGHT`).
    pub var: String,
    /// The dotted key it sets (`sqs.max_in_flight`).
    pub key: String,
}

/// The dotted key a variable name sets, if it is an override (see the module docs).
fn key_of(name: &str) -> Option<String> {
    let rest = name
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &name[PREFIX.len()..])?;
    let key = rest.to_ascii_lowercase().replace(SEPARATOR, ".");
    let first = key.split('.').next().unwrap_or_default();
    TOP_LEVEL.contains(&first).then_some(key)
}

/// The overrides among `vars` (names), in name order, and warnings; an error for a variable
/// with an empty level. A variable that names a key of `template` (the config with its
/// defaults) with a single `_` between levels (`INIESTA_SQS_MAX_IN_FLIGHT`, and the Python
/// iniesta's own settings such as `INIESTA_SQS_QUEUE_NAME_TEMPLATE`, which a mixed fleet's
/// environment may still carry) is not read: it gets a warning with the spelling iniesta
/// reads. Variables that merely share the prefix (`INIESTA_CONSOLE_TOKEN`, a team's own) are
/// not the config's business.
pub fn overrides_in<I>(
    vars: I,
    template: &toml::Table,
) -> Result<(Vec<Override>, Vec<String>), String>
where
    I: IntoIterator<Item = String>,
{
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    for var in vars {
        if let Some(key) = key_of(&var) {
            if key.split('.').any(str::is_empty) {
                return Err(format!(
                    "{var}: an empty level in the name (levels are separated by exactly `{SEPARATOR}`)"
                ));
            }
            found.push(Override { var, key });
            continue;
        }
        let Some(rest) = var
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| var[PREFIX.len()..].to_ascii_lowercase())
        else {
            continue;
        };
        let meant = TOP_LEVEL.iter().find_map(|section| {
            let tail = rest.strip_prefix(&format!("{section}_"))?;
            template
                .get(*section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(tail))
                .then_some((section, tail))
        });
        if let Some((section, tail)) = meant {
            warnings.push(format!(
                "{var} is not read (the Python iniesta's spelling, or a typo): iniesta reads {PREFIX}{}{SEPARATOR}{} for `{section}.{tail}`",
                section.to_ascii_uppercase(),
                tail.to_ascii_uppercase()
            ));
        }
    }
    found.sort_by(|a, b| a.var.cmp(&b.var));
    warnings.sort();
    Ok((found, warnings))
}

/// The overrides in this process's environment and warnings (see [`overrides_in`]); an empty
/// override is an error (an unset secret would otherwise quietly mean "none").
pub fn overrides(template: &toml::Table) -> Result<(Vec<Override>, Vec<String>), String> {
    let (found, warnings) = overrides_in(
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
        template,
    )?;
    for o in &found {
        if std::env::var_os(&o.var).is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
            return Err(format!(
                "{} is set but empty: give it a value, or unset it to keep `{}` from the file",
                o.var, o.key
            ));
        }
    }
    Ok((found, warnings))
}

/// The config `T` from `file` with `overrides` layered over it. A variable whose text was read
/// as a value (`2024`, `true`) for a key that wants a string (one `template` did not know, e.g.
/// an unset `sqs.queue_name`) is taken as text instead.
pub fn extract<T: serde::de::DeserializeOwned>(
    file: &toml::Table,
    template: &toml::Table,
    overrides: &[Override],
) -> Result<T, Box<figment::Error>> {
    let mut as_text = std::collections::BTreeSet::new();
    loop {
        match layered(file, template, overrides, &as_text).extract::<T>() {
            Ok(config) => return Ok(config),
            Err(e) => {
                let key = e.path.join(".");
                let wants_text = matches!(&e.kind, figment::error::Kind::InvalidType(_, expected) if expected.contains("string"));
                if wants_text && overrides.iter().any(|o| o.key == key) && as_text.insert(key) {
                    continue;
                }
                return Err(Box::new(e));
            }
        }
    }
}

/// `file` (the config file's table) with `overrides` merged over it, as figment layers them.
/// `template` is the file's config with every default filled in, which tells a variable's
/// text how to read:
/// - a key whose value there is a string takes the text as it is (`INIESTA_SERVICE=12` is the
///   service `"12"`);
/// - a key holding a list of strings takes comma-separated text as that list
///   (`INIESTA_SQS__FILTERS=Order.*,Invoice.*`), or a TOML array (`["a", "b"]`);
/// - any other key reads the text as a value (`256`, `true`, `["a"]`, `{ a = 1 }`), else as a
///   string. Quoting forces a string (`INIESTA_SQS__QUEUE_NAME='"123"'`).
fn layered(
    file: &toml::Table,
    template: &toml::Table,
    overrides: &[Override],
    as_text: &std::collections::BTreeSet<String>,
) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(file));
    for o in overrides {
        let Some(raw) = std::env::var_os(&o.var) else {
            continue;
        };
        let raw = raw.to_string_lossy().trim().to_string();
        let reading = if as_text.contains(&o.key) {
            Reading::Text
        } else {
            reading(template, &o.key, &raw)
        };
        let value = match reading {
            Reading::Text => Value::from(raw),
            Reading::TextList => Value::from(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::from(item.to_string()))
                    .collect::<Vec<_>>(),
            ),
            Reading::Value => raw.parse::<Value>().unwrap_or_else(|never| match never {}),
        };
        figment = figment.merge(Serialized::default(&o.key, value));
    }
    figment
}

/// How a variable's text is read for a key.
enum Reading {
    Text,
    TextList,
    Value,
}

/// How to read `raw` for `key`, from the key's value in `template`.
fn reading(template: &toml::Table, key: &str, raw: &str) -> Reading {
    let mut parts = key.split('.');
    let mut current = parts.next().and_then(|first| template.get(first));
    for part in parts {
        current = current.and_then(|v| v.get(part));
    }
    match current {
        Some(toml::Value::String(_)) if !raw.starts_with('"') => Reading::Text,
        Some(toml::Value::Array(items))
            if !raw.starts_with('[') && items.iter().all(toml::Value::is_str) =>
        {
            Reading::TextList
        }
        _ => Reading::Value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> toml::Table {
        toml::from_str("service = \"s\"\n[sqs]\nmax_in_flight = 16\n[console]\ntoken_env = \"T\"\n")
            .expect("toml")
    }

    fn names(vars: &[&str]) -> Result<Vec<Override>, String> {
        overrides_in(vars.iter().map(|v| v.to_string()), &template()).map(|(found, _)| found)
    }

    #[test]
    fn the_top_level_keys_are_the_configs() {
        // A new section of `Config` must be added to TOP_LEVEL, or its overrides are ignored.
        let config = crate::config::Config::parse("service = \"s\"", std::path::Path::new("."))
            .expect("parses");
        let table = toml::Table::try_from(&config).expect("serialises");
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut top: Vec<&str> = TOP_LEVEL.to_vec();
        keys.sort_unstable();
        top.sort_unstable();
        assert_eq!(keys, top);
    }

    #[test]
    fn overrides_are_the_variables_named_for_a_key() {
        let found = names(&[
            "INIESTA_SQS__MAX_IN_FLIGHT",
            "INIESTA_LOG",
            "INIESTA_CONFIG",
            "INIESTA_ACCT_FILE",
            "INIESTA_MOTO_SERVER",
            "PATH",
            "iniesta_service",
            "INIESTA_ERRORS__SENTRY__DSN",
        ])
        .expect("valid");
        let keys: Vec<_> = found.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["errors.sentry.dsn", "sqs.max_in_flight", "service"]);
    }

    #[test]
    fn a_single_underscore_before_a_known_key_is_not_read_but_warned_about() {
        let (found, warnings) =
            overrides_in(["INIESTA_SQS_MAX_IN_FLIGHT".to_string()], &template())
                .expect("not an error");
        assert!(found.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("INIESTA_SQS__MAX_IN_FLIGHT"),
            "{warnings:?}"
        );
        let err = names(&["INIESTA_SQS____X"]).expect_err("empty level");
        assert!(err.contains("empty level"), "{err}");
        // Variables that share the prefix but name no key are not the config's: the console's
        // token, a team's own, the host's; nothing is said about them.
        let (found, warnings) = overrides_in(
            [
                "INIESTA_CONSOLE_TOKEN",
                "INIESTA_SQS_QUEUE_URL_FOR_MY_SCRIPT",
                "INIESTA_ENV",
                "INIESTA_LOG_FORMAT",
            ]
            .map(String::from),
            &template(),
        )
        .expect("ok");
        assert_eq!(found.len(), 1, "only INIESTA_ENV: {found:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
