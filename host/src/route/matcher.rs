//! The match DSL: `match = { ... }` in a `[[bindings]]` entry, a port of sqs-mega's
//! pattern matching.
//!
//! Each key of the table is a dotted path into the message and each value a condition; every
//! condition must hold for the binding to take the message:
//!
//! | condition | holds when the value at the path |
//! |---|---|
//! | `"user"`, `5`, `true`, `[1, 2]` | equals it (numbers compare by value: `5` equals `5.0`) |
//! | a TOML datetime, e.g. `2020-05-04T15:53:27Z` | is a datetime text naming the same instant |
//! | `{ match = "user:(.*)" }` | is text (or a number) the regex matches in full |
//! | `{ one_of = ["a", 2] }` | equals one of the values |
//! | `{ gt = 0 }`, `gte`, `lt`, `lte` | compares so with a number (numbers in text, like `"19.99"`, count) or, when the bound is a datetime (`2020-01-01`, `"2020-01-01T00:00:00Z"`), with a datetime text |
//! | `{ not = <condition> }` | does not satisfy the condition (a missing value satisfies any `not` except `not = { empty = true }`) |
//! | `{ empty = true }` | is missing, `null`, `""`, `[]` or `{}` (`empty = false`: the opposite) |
//!
//! Several operators in one table must all hold (`{ gte = 1, lte = 5 }`). A table of field
//! names instead of operators nests paths: `object = { current = { user_id = 5 } }` is
//! `"object.current.user_id" = 5`. A path segment that is a number indexes an array. A
//! missing value fails every condition except `empty = true` and `not`.
//!
//! What a path starts from: for a JSON body, its root. For a MEGA event, the `event` section,
//! and when the event has no such field, `event.attributes` (so `email` finds
//! `event.attributes.email`, as in sqs-mega); paths starting with `event.`, `object.` or
//! `extra.` start from the payload's root instead. Text and binary bodies never match a
//! binding with a `match` table.
//!
//! Everything is compiled when the config loads: a bad regex, path or operand is a config
//! problem naming its key (`bindings[2].match.object.current.user_id`).

use std::cmp::Ordering;
use std::fmt;

use iniesta_plugin_api::payload::{Payload, PayloadKind};
use regex::Regex;
use serde_json::Value;

/// A compiled `match` table: every field's condition must hold.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    fields: Vec<Field>,
}

/// A problem compiling a `match` table, with the dotted key it concerns (relative to `match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchError {
    /// The key, e.g. `object.current.user_id`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The result of one field's condition on one message, for `iniesta route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The path as written, e.g. `subject`.
    pub path: String,
    /// Where the value was found (`event.attributes.email`), or looked for first if missing.
    pub resolved: String,
    /// The condition, e.g. `match "\d+"`.
    pub condition: String,
    /// The value found, as compact JSON (shortened), or `None` if missing.
    pub actual: Option<String>,
    /// Whether the condition holds.
    pub holds: bool,
}

#[derive(Debug, Clone)]
struct Field {
    path: Vec<String>,
    condition: Condition,
}

#[derive(Debug, Clone)]
enum Condition {
    Equals(Literal),
    Regex(Regex, String),
    OneOf(Vec<Literal>),
    Compare(Op, Bound),
    Not(Box<Condition>),
    Empty(bool),
    All(Vec<Condition>),
    Fields(Vec<Field>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
enum Literal {
    Json(Value),
    Instant(Instant, String),
}

#[derive(Debug, Clone)]
enum Bound {
    Number(f64),
    Instant(Instant, String),
}

/// A point in time: seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    secs: i64,
    nanos: u32,
}

const OPERATORS: [&str; 8] = ["match", "one_of", "gt", "gte", "lt", "lte", "not", "empty"];

/// Path prefixes that start from a MEGA payload's root instead of its event.
const MEGA_ROOTS: [&str; 3] = ["event", "object", "extra"];

/// Longest rendering of a value in a [`Check`].
const SHOWN: usize = 80;

impl Matcher {
    /// Compile a `match` table; every problem is reported with its key.
    pub fn compile(table: &toml::Table) -> Result<Matcher, Vec<MatchError>> {
        let mut fields = Vec::new();
        let mut errors = Vec::new();
        compile_fields(table, &[], false, &mut fields, &mut errors);
        if errors.is_empty() {
            Ok(Matcher { fields })
        } else {
            Err(errors)
        }
    }

    /// Whether every condition holds for this payload.
    pub fn matches(&self, payload: &Payload) -> bool {
        let Some(root) = payload.json.as_ref() else {
            return self.fields.is_empty();
        };
        self.fields.iter().all(|field| {
            let (value, _) = resolve(payload.kind, root, &field.path);
            field.condition.holds(value)
        })
    }

    /// Every condition's result on this payload (empty for text and binary bodies, which
    /// [`Matcher::matches`] refuses whenever there is a condition).
    pub fn explain(&self, payload: &Payload) -> Vec<Check> {
        let Some(root) = payload.json.as_ref() else {
            return Vec::new();
        };
        self.fields
            .iter()
            .map(|field| {
                let (value, resolved) = resolve(payload.kind, root, &field.path);
                Check {
                    path: field.path.join("."),
                    resolved,
                    condition: field.condition.to_string(),
                    actual: value.map(show),
                    holds: field.condition.holds(value),
                }
            })
            .collect()
    }

    /// Whether the table has no condition (it then matches everything JSON or not).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// How many conditions the table has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }
}

/// The value at `path` and where it was found, following the MEGA rules for MEGA payloads.
fn resolve<'v>(kind: PayloadKind, root: &'v Value, path: &[String]) -> (Option<&'v Value>, String) {
    let dotted = path.join(".");
    let from_root = kind != PayloadKind::Mega
        || path
            .first()
            .is_some_and(|first| MEGA_ROOTS.contains(&first.as_str()));
    if from_root {
        return (lookup(root, path), dotted);
    }
    let Some(event) = root.get("event") else {
        return (None, format!("event.{dotted}"));
    };
    if let Some(value) = lookup(event, path) {
        return (Some(value), format!("event.{dotted}"));
    }
    match event.get("attributes").and_then(|a| lookup(a, path)) {
        Some(value) => (Some(value), format!("event.attributes.{dotted}")),
        None => (None, format!("event.{dotted}")),
    }
}

fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, segment| {
        iniesta_plugin_api::payload::step(v, segment)
    })
}

fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= SHOWN {
        return text;
    }
    let mut short: String = text.chars().take(SHOWN).collect();
    short.push('…');
    short
}

fn key_of(path: &[String]) -> String {
    path.join(".")
}

/// Compile a table of field names. `nested`: inside another key, where a misspelt operator
/// (`oneOf`) is more likely than a field of that name; at the top level every key is a field.
fn compile_fields(
    table: &toml::Table,
    prefix: &[String],
    nested: bool,
    out: &mut Vec<Field>,
    errors: &mut Vec<MatchError>,
) {
    for (key, value) in table {
        let mut path = prefix.to_vec();
        match parse_path(key) {
            Ok(segments) => path.extend(segments),
            Err(message) => {
                let mut shown = prefix.to_vec();
                shown.push(key.clone());
                errors.push(MatchError {
                    key: key_of(&shown),
                    message,
                });
                continue;
            }
        }
        if let Some(message) = nested.then(|| near_miss(key)).flatten() {
            errors.push(MatchError {
                key: key_of(&path),
                message,
            });
            continue;
        }
        match value {
            toml::Value::Table(inner) if !has_operator(inner) => {
                if inner.is_empty() {
                    errors.push(MatchError {
                        key: key_of(&path),
                        message: "is an empty table: give a value or a condition such as { empty = false }".into(),
                    });
                } else {
                    compile_fields(inner, &path, true, out, errors);
                }
            }
            _ => match compile_condition(value, &path) {
                Ok(condition) => out.push(Field { path, condition }),
                Err(e) => errors.push(e),
            },
        }
    }
}

fn parse_path(key: &str) -> Result<Vec<String>, String> {
    if key.is_empty() {
        return Err("an empty key is not a path".into());
    }
    let segments: Vec<String> = key.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!(
            "`{key}` is not a path: segments between dots must not be empty (e.g. \"object.current.user_id\")"
        ));
    }
    Ok(segments)
}

fn has_operator(table: &toml::Table) -> bool {
    table.keys().any(|k| OPERATORS.contains(&k.as_str()))
}

/// A key that is an operator spelled differently (`oneOf`, `one-of`, `Match`).
fn near_miss(key: &str) -> Option<String> {
    let normal: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    OPERATORS
        .iter()
        .find(|op| op.replace('_', "") == normal && **op != key)
        .map(|op| {
            format!(
                "`{key}` is not an operator; did you mean `{op}`? (to match a field named `{key}`, write the whole dotted path as one quoted key)"
            )
        })
}

fn compile_condition(value: &toml::Value, path: &[String]) -> Result<Condition, MatchError> {
    let err = |message: String| MatchError {
        key: key_of(path),
        message,
    };
    match value {
        toml::Value::Table(table) if has_operator(table) => {
            let unknown: Vec<&str> = table
                .keys()
                .map(String::as_str)
                .filter(|k| !OPERATORS.contains(k))
                .collect();
            if !unknown.is_empty() {
                return Err(err(format!(
                    "mixes operators with field names ({}); the operators are {}. Put field conditions in a table of their own",
                    unknown.join(", "),
                    OPERATORS.join(", ")
                )));
            }
            let mut all = Vec::new();
            for (op, operand) in table {
                all.push(compile_operator(op, operand, path)?);
            }
            Ok(if all.len() == 1 {
                all.remove(0)
            } else {
                Condition::All(all)
            })
        }
        toml::Value::Table(table) => {
            let mut fields = Vec::new();
            let mut errors = Vec::new();
            compile_fields(table, &[], true, &mut fields, &mut errors);
            match errors.into_iter().next() {
                Some(first) => {
                    let mut key = path.to_vec();
                    key.push(first.key);
                    Err(MatchError {
                        key: key_of(&key),
                        message: first.message,
                    })
                }
                None if fields.is_empty() => Err(err(
                    "is an empty table: give a value or a condition such as { empty = false }"
                        .into(),
                )),
                None => Ok(Condition::Fields(fields)),
            }
        }
        other => literal(other).map(Condition::Equals).map_err(err),
    }
}

fn compile_operator(
    op: &str,
    operand: &toml::Value,
    path: &[String],
) -> Result<Condition, MatchError> {
    let err = |message: String| MatchError {
        key: key_of(path),
        message,
    };
    match op {
        "match" => {
            let toml::Value::String(pattern) = operand else {
                return Err(err(format!(
                    "`match` takes a regex as text, e.g. {{ match = \"\\\\d+\" }}; got {}",
                    operand.type_str()
                )));
            };
            // Check the regex as written (for its error message), then anchor it.
            if let Err(e) = Regex::new(pattern) {
                let text = e.to_string();
                let reason = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                return Err(err(format!("invalid regex `{pattern}`: {reason}")));
            }
            Regex::new(&format!("^(?:{pattern})$"))
                .map(|re| Condition::Regex(re, pattern.clone()))
                .map_err(|e| err(format!("invalid regex `{pattern}`: {e}")))
        }
        "one_of" => {
            let toml::Value::Array(items) = operand else {
                return Err(err(format!(
                    "`one_of` takes a list, e.g. {{ one_of = [1, 2] }}; got {}",
                    operand.type_str()
                )));
            };
            if items.is_empty() {
                return Err(err("`one_of` needs at least one value".into()));
            }
            items
                .iter()
                .map(|item| match item {
                    toml::Value::Table(_) => {
                        Err(err("`one_of` takes plain values, not conditions".into()))
                    }
                    other => literal(other).map_err(&err),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Condition::OneOf)
        }
        "gt" | "gte" | "lt" | "lte" => {
            let op = match op {
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "lt" => Op::Lt,
                _ => Op::Lte,
            };
            bound(operand)
                .map(|b| Condition::Compare(op, b))
                .map_err(err)
        }
        "not" => compile_condition(operand, path).map(|c| Condition::Not(Box::new(c))),
        "empty" => match operand {
            toml::Value::Boolean(b) => Ok(Condition::Empty(*b)),
            other => Err(err(format!(
                "`empty` takes true or false; got {}",
                other.type_str()
            ))),
        },
        other => Err(err(format!("`{other}` is not an operator"))),
    }
}

fn literal(value: &toml::Value) -> Result<Literal, String> {
    if let toml::Value::Datetime(dt) = value {
        let text = dt.to_string();
        return parse_datetime(&text)
            .map(|instant| Literal::Instant(instant, text.clone()))
            .ok_or_else(|| format!("`{text}` needs a date: a time of day alone is no instant"));
    }
    to_json(value).map(Literal::Json)
}

fn bound(value: &toml::Value) -> Result<Bound, String> {
    let hint = "needs a number or an RFC 3339 datetime (e.g. 0, 2.5, 2020-01-01, \"2020-01-01T00:00:00Z\")";
    match value {
        toml::Value::Integer(i) => Ok(Bound::Number(*i as f64)),
        toml::Value::Float(f) if f.is_finite() => Ok(Bound::Number(*f)),
        toml::Value::Datetime(dt) => {
            let text = dt.to_string();
            parse_datetime(&text)
                .map(|instant| Bound::Instant(instant, text.clone()))
                .ok_or_else(|| format!("`{text}` {hint}"))
        }
        toml::Value::String(text) => parse_datetime(text)
            .map(|instant| Bound::Instant(instant, text.clone()))
            .ok_or_else(|| format!("\"{text}\" {hint}")),
        other => Err(format!("{} {hint}", other.type_str())),
    }
}

fn to_json(value: &toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a finite number"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(dt) => Value::String(dt.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

impl Condition {
    fn holds(&self, value: Option<&Value>) -> bool {
        match self {
            Condition::Equals(literal) => value.is_some_and(|v| literal.equals(v)),
            Condition::Regex(re, _) => match value {
                Some(Value::String(text)) => re.is_match(text),
                Some(Value::Number(n)) => re.is_match(&n.to_string()),
                _ => false,
            },
            Condition::OneOf(literals) => {
                value.is_some_and(|v| literals.iter().any(|l| l.equals(v)))
            }
            Condition::Compare(op, bound) => value
                .and_then(|v| bound.compare(v))
                .is_some_and(|ordering| op.accepts(ordering)),
            Condition::Not(inner) => !inner.holds(value),
            Condition::Empty(want) => is_empty(value) == *want,
            Condition::All(all) => all.iter().all(|c| c.holds(value)),
            Condition::Fields(fields) => {
                value.is_some_and(|v| fields.iter().all(|f| f.condition.holds(lookup(v, &f.path))))
            }
        }
    }
}

impl Op {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Op::Gt => ordering == Ordering::Greater,
            Op::Gte => ordering != Ordering::Less,
            Op::Lt => ordering == Ordering::Less,
            Op::Lte => ordering != Ordering::Greater,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
        }
    }
}

impl Literal {
    fn equals(&self, value: &Value) -> bool {
        match self {
            Literal::Json(expected) => json_eq(expected, value),
            Literal::Instant(instant, _) => value
                .as_str()
                .and_then(parse_datetime)
                .is_some_and(|found| found == *instant),
        }
    }
}

impl Bound {
    /// How `value` compares with the bound, if they are comparable.
    fn compare(&self, value: &Value) -> Option<Ordering> {
        match self {
            Bound::Number(bound) => number_of(value)?.partial_cmp(bound),
            Bound::Instant(bound, _) => Some(parse_datetime(value.as_str()?)?.cmp(bound)),
        }
    }
}

/// A JSON number, or text that is a plain decimal number (`"19.99"`, `"-3"`, `"1e3"`).
fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => {
            let plain = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
                && text.bytes().any(|b| b.is_ascii_digit());
            if plain {
                text.parse::<f64>().ok().filter(|f| f.is_finite())
            } else {
                None
            }
        }
        _ => None,
    }
}

fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Bool(_) | Value::Number(_)) => false,
    }
}

/// JSON equality where numbers compare by value (`5` equals `5.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64().zip(y.as_f64()).is_some_and(|(i, j)| i == j),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(i, j)| json_eq(i, j))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Equals(literal) => write!(f, "= {literal}"),
            // As TOML would write it: a literal string unless it holds a quote.
            Condition::Regex(_, pattern) if !pattern.contains('\'') => {
                write!(f, "match '{pattern}'")
            }
            Condition::Regex(_, pattern) => write!(f, "match {}", Value::from(pattern.as_str())),
            Condition::OneOf(literals) => {
                let items: Vec<String> = literals.iter().map(ToString::to_string).collect();
                write!(f, "one_of [{}]", items.join(", "))
            }
            Condition::Compare(op, bound) => write!(f, "{} {bound}", op.as_str()),
            Condition::Not(inner) => write!(f, "not ({inner})"),
            Condition::Empty(want) => write!(f, "empty = {want}"),
            Condition::All(all) => {
                let parts: Vec<String> = all.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(" and "))
            }
            Condition::Fields(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|field| format!("{} {}", field.path.join("."), field.condition))
                    .collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Json(value) => f.write_str(&show(value)),
            Literal::Instant(_, text) => f.write_str(text),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Number(n) => write!(f, "{n}"),
            Bound::Instant(_, text) => f.write_str(text),
        }
    }
}

/// Parse a datetime: RFC 3339 (`2020-05-04T15:53:27.823Z`, `...+02:00`), the same without an
/// offset (read as UTC, as sqs-mega does: `2020-05-04T15:53:27.823`), or a date alone
/// (midnight UTC). `T`, `t` or a space separates date and time; seconds are optional.
pub fn parse_datetime(text: &str) -> Option<Instant> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0i64, |acc, d| {
            acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
    };
    let year = num(0..4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = num(5..7)?;
    let day = num(8..10)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(Instant {
            secs: days * 86_400,
            nanos: 0,
        });
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let mut at = 16;
    let mut second = 0;
    if b.get(at) == Some(&b':') {
        second = num(17..19)?;
        at = 19;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = b.get(start..at)?;
        if digits.is_empty() {
            return None;
        }
        for (i, d) in digits.iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    let offset_secs = match b.get(at) {
        None => 0,
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() && b.get(at + 3) == Some(&b':') => {
            let hours = num(at + 1..at + 3)?;
            let minutes = num(at + 4..at + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    // A leap second (:60) counts as the last second of its minute.
    let second = second.min(59);
    Some(Instant {
        secs: days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs,
        nanos,
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use iniesta_plugin_api::payload::inspect;
    use serde_json::json;

    fn matcher(toml_text: &str) -> Matcher {
        let table: toml::Table = toml::from_str(toml_text).expect("toml");
        Matcher::compile(&table).expect("compiles")
    }

    fn errors(toml_text: &str) -> Vec<MatchError> {
        let table: toml::Table = toml::from_str(toml_text).expect("toml");
        Matcher::compile(&table).expect_err("refused")
    }

    fn payload(value: Value) -> Payload {
        inspect(value.to_string().as_bytes(), None)
    }

    fn holds(toml_text: &str, value: Value) -> bool {
        matcher(toml_text).matches(&payload(value))
    }

    #[test]
    fn literal_equality() {
        assert!(holds("a = \"x\"", json!({"a": "x"})));
        assert!(!holds("a = \"x\"", json!({"a": "y"})));
        assert!(
            !holds("a = \"5\"", json!({"a": 5})),
            "no text/number coercion"
        );
        assert!(holds("a = 5", json!({"a": 5.0})));
        assert!(!holds("a = 5", json!({"a": 6})));
        assert!(holds("a = true", json!({"a": true})));
        assert!(!holds("a = true", json!({"a": "true"})));
        assert!(holds("a = [1, \"b\"]", json!({"a": [1.0, "b"]})));
        assert!(!holds("a = [1, \"b\"]", json!({"a": ["b", 1]})));
        assert!(!holds("a = \"x\"", json!({})), "missing fails");
        assert!(holds(
            "a = 2020-05-04T15:53:27Z",
            json!({"a": "2020-05-04T17:53:27+02:00"})
        ));
        assert!(!holds(
            "a = 2020-05-04T15:53:27Z",
            json!({"a": "2020-05-04T15:53:28Z"})
        ));
    }

    #[test]
    fn regex_matches_whole_values() {
        let m = "subject = { match = '\\d+' }";
        assert!(holds(m, json!({"subject": "987650"})));
        assert!(holds(m, json!({"subject": 987650})), "numbers as text");
        assert!(!holds(m, json!({"subject": "abc123"})), "anchored");
        assert!(!holds(m, json!({"subject": null})));
        assert!(!holds(m, json!({})));
        assert!(holds(
            "name = { match = 'user:(.*)' }",
            json!({"name": "user:updated"})
        ));
        assert!(!holds(
            "name = { match = 'user:(.*)' }",
            json!({"name": "order:updated"})
        ));
    }

    #[test]
    fn one_of() {
        let m = "version = { one_of = [1, 2, 3] }";
        assert!(holds(m, json!({"version": 2})));
        assert!(!holds(m, json!({"version": 4})));
        assert!(!holds(m, json!({"version": "2"})));
        assert!(!holds(m, json!({})));
        assert!(holds("u = { one_of = ['a', 'b'] }", json!({"u": "b"})));
    }

    #[test]
    fn comparisons_on_numbers() {
        assert!(holds("q = { gt = 0 }", json!({"q": 5})));
        assert!(!holds("q = { gt = 0 }", json!({"q": 0})));
        assert!(holds("q = { gte = 0 }", json!({"q": 0})));
        assert!(!holds("q = { gte = 0 }", json!({"q": -1})));
        assert!(holds("q = { lt = 10 }", json!({"q": 9.5})));
        assert!(!holds("q = { lt = 10 }", json!({"q": 10})));
        assert!(holds("q = { lte = 10 }", json!({"q": 10})));
        assert!(!holds("q = { lte = 10 }", json!({"q": 10.01})));
        assert!(
            holds("price = { gt = 10 }", json!({"price": "19.99"})),
            "numeric text"
        );
        assert!(!holds("price = { gt = 10 }", json!({"price": "NaN"})));
        assert!(!holds("price = { gt = 10 }", json!({"price": "ten"})));
        assert!(!holds("q = { gt = 0 }", json!({"q": true})));
        assert!(!holds("q = { gt = 0 }", json!({})));
        assert!(holds("q = { gte = 1, lte = 5 }", json!({"q": 3})));
        assert!(!holds("q = { gte = 1, lte = 5 }", json!({"q": 6})));
    }

    #[test]
    fn comparisons_on_datetimes() {
        assert!(holds(
            "t = { gt = 2020-01-01 }",
            json!({"t": "2020-05-04T15:53:27.823"})
        ));
        assert!(!holds(
            "t = { gt = 2021-01-01 }",
            json!({"t": "2020-05-04T15:53:27.823"})
        ));
        assert!(holds(
            "t = { lt = '2020-05-04T16:00:00+00:00' }",
            json!({"t": "2020-05-04T17:53:27+02:00"})
        ));
        assert!(!holds(
            "t = { lt = '2020-05-04T15:00:00Z' }",
            json!({"t": "2020-05-04T17:53:27+02:00"})
        ));
        assert!(holds(
            "t = { gte = 2020-05-04T15:53:27.823Z }",
            json!({"t": "2020-05-04T15:53:27.823Z"})
        ));
        assert!(!holds(
            "t = { lte = 2020-05-04T15:53:27.822Z }",
            json!({"t": "2020-05-04T15:53:27.823Z"})
        ));
        assert!(!holds("t = { gt = 2020-01-01 }", json!({"t": "yesterday"})));
        assert!(!holds(
            "t = { gt = 2020-01-01 }",
            json!({"t": 1_700_000_000})
        ));
    }

    #[test]
    fn not_and_empty() {
        let m = "email = { not = { empty = true } }";
        assert!(holds(m, json!({"email": "a@b"})));
        assert!(!holds(m, json!({"email": ""})));
        assert!(!holds(m, json!({"email": null})));
        assert!(!holds(m, json!({})));
        assert!(holds("e = { empty = true }", json!({})));
        assert!(holds("e = { empty = true }", json!({"e": []})));
        assert!(holds("e = { empty = true }", json!({"e": {}})));
        assert!(!holds("e = { empty = true }", json!({"e": 0})));
        assert!(holds("e = { empty = false }", json!({"e": [1]})));
        assert!(!holds("e = { empty = false }", json!({"e": ""})));
        let m = "username = { not = { one_of = ['synthetic', 'test'] } }";
        assert!(holds(m, json!({"username": "john.doe"})));
        assert!(!holds(m, json!({"username": "test"})));
        assert!(holds(m, json!({})), "a missing value is not one of them");
        assert!(holds("a = { not = 'x' }", json!({"a": "y"})));
        assert!(!holds("a = { not = 'x' }", json!({"a": "x"})));
        assert!(holds(
            "o = { not = { type = 'cart', id = 1 } }",
            json!({"o": {"type": "cart", "id": 2}})
        ));
        assert!(!holds(
            "o = { not = { type = 'cart' } }",
            json!({"o": {"type": "cart"}})
        ));
    }

    #[test]
    fn nested_paths_and_array_indexes() {
        let v = json!({"object": {"current": {"user_id": 987650, "items": [{"quantity": 10}]}}});
        assert!(holds("'object.current.user_id' = 987650", v.clone()));
        assert!(
            holds("object.current.user_id = 987650", v.clone()),
            "TOML dotted keys"
        );
        assert!(holds(
            "object = { current = { user_id = 987650 } }",
            v.clone()
        ));
        assert!(holds(
            "'object.current.items.0.quantity' = { gt = 5 }",
            v.clone()
        ));
        assert!(!holds(
            "'object.current.items.1.quantity' = { gt = 5 }",
            v.clone()
        ));
        assert!(!holds("'object.current.user_id' = 1", v.clone()));
        assert!(holds("a = 1\nb = 2", json!({"a": 1, "b": 2})));
        assert!(
            !holds("a = 1\nb = 2", json!({"a": 1, "b": 3})),
            "all must hold"
        );
    }

    #[test]
    fn mega_paths_start_at_the_event_then_its_attributes() {
        let mega = json!({
            "protocol": "mega", "version": 1,
            "event": {"name": "user:updated", "version": 2, "attributes": {"email": "j@x"}},
            "object": {"current": {"id": 5}}
        });
        assert!(holds("name = 'user:updated'", mega.clone()));
        assert!(
            holds("version = 2", mega.clone()),
            "the event's version, not the protocol's"
        );
        assert!(
            holds("email = 'j@x'", mega.clone()),
            "falls back to event.attributes"
        );
        assert!(holds("'event.attributes.email' = 'j@x'", mega.clone()));
        assert!(holds("'object.current.id' = 5", mega.clone()));
        assert!(!holds("'current.id' = 5", mega.clone()));
        let checks = matcher("email = 'j@x'").explain(&payload(mega));
        assert_eq!(checks[0].resolved, "event.attributes.email");
        // The same paths on plain JSON start from the root.
        assert!(!holds("name = 'x'", json!({"event": {"name": "x"}})));
        assert!(holds("'event.name' = 'x'", json!({"event": {"name": "x"}})));
    }

    #[test]
    fn text_and_binary_never_match_a_condition() {
        let m = matcher("a = { empty = true }");
        assert!(!m.matches(&inspect(b"plain text", None)));
        assert!(!m.matches(&inspect(&[0xff], None)));
        assert!(Matcher::default().matches(&inspect(b"plain text", None)));
    }

    #[test]
    fn compile_errors_name_the_key() {
        let e = errors("'object.current.user_id' = { match = '(' }");
        assert_eq!(e[0].key, "object.current.user_id");
        assert!(e[0].message.contains("invalid regex"), "{e:?}");
        let e = errors("'a..b' = 1");
        assert!(e[0].message.contains("not a path"), "{e:?}");
        let e = errors("a = { oneOf = [1] }");
        assert!(e[0].message.contains("did you mean `one_of`"), "{e:?}");
        let e = errors("a = { gt = 'soon' }");
        assert!(e[0].message.contains("RFC 3339"), "{e:?}");
        let e = errors("a = { gt = 1, b = 2 }");
        assert!(e[0].message.contains("mixes operators"), "{e:?}");
        let e = errors("a = { one_of = [] }");
        assert!(e[0].message.contains("at least one"), "{e:?}");
        let e = errors("a = { empty = 'yes' }");
        assert!(e[0].message.contains("true or false"), "{e:?}");
        let e = errors("a = { match = 5 }");
        assert!(e[0].message.contains("regex as text"), "{e:?}");
        let e = errors("a = {}");
        assert!(e[0].message.contains("empty table"), "{e:?}");
        let e = errors("a = { gt = 07:32:00 }");
        assert!(e[0].message.contains("RFC 3339"), "{e:?}");
        assert!(
            holds("Match = 1", json!({"Match": 1})),
            "top-level keys are always fields"
        );
        let e = errors("x = { not = { Empty = true } }");
        assert!(e[0].message.contains("did you mean `empty`"), "{e:?}");
        let e = errors("x = { not = { 'b..c' = 1 } }");
        assert_eq!(e[0].key, "x.b..c");
        // Every bad key is reported, not just the first.
        assert_eq!(errors("a = { match = '(' }\nb = { match = '[' }").len(), 2);
    }

    #[test]
    fn explain_reports_each_condition() {
        let m = matcher("a = { gt = 1 }\nb = 'x'");
        let checks = m.explain(&payload(json!({"a": 5})));
        assert_eq!(checks.len(), 2);
        assert!(checks[0].holds);
        assert_eq!(checks[0].condition, "gt 1");
        assert_eq!(checks[0].actual.as_deref(), Some("5"));
        assert!(!checks[1].holds);
        assert_eq!(checks[1].actual, None);
        assert_eq!(checks[1].condition, "= \"x\"");
    }

    #[test]
    fn datetimes_parse() {
        let at = |s| parse_datetime(s).map(|i| (i.secs, i.nanos));
        assert_eq!(at("1970-01-01"), Some((0, 0)));
        assert_eq!(at("1970-01-01T00:00:01Z"), Some((1, 0)));
        assert_eq!(
            at("2020-05-04T15:53:27.823"),
            Some((1_588_607_607, 823_000_000))
        );
        assert_eq!(
            at("2020-05-04 17:53:27.823+02:00"),
            Some((1_588_607_607, 823_000_000))
        );
        assert_eq!(at("2020-05-04T15:53Z"), Some((1_588_607_580, 0)));
        assert_eq!(at("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(at("2024-02-29"), Some((1_709_164_800, 0)));
        for bad in [
            "",
            "2020",
            "2023-02-29",
            "2020-13-01",
            "2020-01-01T24:00",
            "2020-01-01T10:00+2",
            "2020-01-01T10:00:00.Z",
            "2020-01-01x",
            "2020-01-01T10:00:00Zx",
            "٢٠٢٠-01-01",
            "2020-01-01T10:00:00+24:00",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        /// Scalars biased towards what the operators look at: short keys' values, numbers,
        /// numeric and datetime-looking text, empties.
        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
                ".*".prop_map(Value::from),
                "[0-9]{1,6}(\\.[0-9]{1,3})?".prop_map(Value::from),
                "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,12})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
                    .prop_map(Value::from),
                Just(Value::from("")),
                Just(json!([])),
                Just(json!({})),
            ]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("a".to_string()),
                            Just("b".to_string()),
                            Just("0".to_string()),
                            Just("event".to_string()),
                            Just("attributes".to_string()),
                            Just("object".to_string()),
                            "[a-z]{1,3}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A matcher using every operator, on paths the generated values often have.
        fn every_operator() -> Matcher {
            matcher(
                r#"
                a = "x"
                b = 5
                "a.b" = [1, "b"]
                "a.0" = 2020-05-04T15:53:27Z
                "b.a" = { match = '\d+(\.\d+)?' }
                "a.a" = { one_of = [1, "a", true, 2020-01-01] }
                "b.b" = { gt = 0, lte = 1e6 }
                "b.0" = { gte = 2020-01-01, lt = "2030-01-01T00:00:00+02:00" }
                "0" = { not = { empty = true } }
                "0.a" = { not = { one_of = ["synthetic", "test"] } }
                "object.a" = { empty = true }
                "event.a" = { not = { a = { gt = -1 }, b = { match = ".*" } } }
                attributes = { a = { lt = 2 } }
                "#,
            )
        }

        proptest! {
            #[test]
            fn on_arbitrary_json(value in json_value(), wrapper in 0..3u8) {
                let body = match wrapper {
                    0 => value,
                    1 => json!({"protocol": "mega", "event": value.clone(), "object": value}),
                    _ => json!({"protocol": "mega", "event": {"attributes": value}}),
                };
                let payload = inspect(body.to_string().as_bytes(), None);
                let m = every_operator();
                let all = m.matches(&payload);
                let checks = m.explain(&payload);
                prop_assert_eq!(all, !checks.is_empty() && checks.iter().all(|c| c.holds));
            }

            #[test]
            fn on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let payload = inspect(&bytes, None);
                let _ = every_operator().matches(&payload);
                let _ = every_operator().explain(&payload);
            }

            #[test]
            fn datetime_parsing_on_arbitrary_text(text in ".{0,40}") {
                let _ = parse_datetime(&text);
            }
        }
    }
}
