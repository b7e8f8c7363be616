//! The SNS subscription filter-policy language.
//!
//! One implementation, used by the embedded local broker to decide which subscriptions receive
//! a publish, and to predict what AWS SNS will deliver. A policy is parsed once into a small
//! tree (`FilterPolicy::parse`) and then evaluated per message, either against the message
//! attributes (`FilterPolicy::matches_attributes`, `FilterPolicyScope=MessageAttributes`, the
//! default) or against the JSON message body (`FilterPolicy::matches_body`,
//! `FilterPolicyScope=MessageBody`).
//!
//! Semantics follow AWS SNS (which uses the EventBridge "ruler" model):
//!
//! * the keys of a policy object are ANDed; the conditions in a key's array are ORed;
//! * `"$or": [{..}, {..}]` ORs whole sub-policies, ANDed with the sibling keys;
//! * conditions: exact string, exact number (compared numerically, `5 == 5.0`), `true`, `false`,
//!   `null`, `{"prefix"}`, `{"suffix"}`, `{"equals-ignore-case"}`, `{"anything-but"}` (a value,
//!   a list of values, or a `prefix`/`suffix`/`equals-ignore-case` pattern), `{"numeric"}`
//!   (`=`, `<`, `<=`, `>`, `>=`, or a `>`/`>=` lower bound followed by a `<`/`<=` upper bound),
//!   `{"exists": bool}` and `{"cidr": "10.0.0.0/24"}` (IPv4 or IPv6);
//! * values are typed: string conditions only match strings (`String` attributes) and numeric
//!   conditions only match numbers (`Number` attributes); an array value (`String.Array`
//!   attribute, JSON array in the body) matches when any element matches;
//! * a missing key matches only `{"exists": false}`; in particular `anything-but` does not match
//!   a missing key (combine it with `{"exists": false}` for that);
//! * with attribute scope, a message without any attributes matches no (non-empty) policy, as
//!   AWS counts it under `NumberOfNotificationsFilteredOut-NoMessageAttributes`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::wire::{Attribute, Attributes};

/// Match-type keywords; an `"$or"` whose objects use one of these as a field name is not an OR.
const RESERVED_KEYWORDS: &[&str] = &[
    "prefix",
    "suffix",
    "anything-but",
    "numeric",
    "exists",
    "equals-ignore-case",
    "cidr",
    "wildcard",
];

/// Why a filter policy (or a filter policy scope) could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The policy text is not valid JSON.
    #[error("filter policy is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The policy is valid JSON but not a JSON object.
    #[error("filter policy must be a JSON object, got {found}")]
    NotAnObject {
        /// The JSON type that was found instead (`array`, `string`, ...).
        found: &'static str,
    },
    /// A key's value or one of its conditions is malformed.
    #[error("filter policy key \"{key}\": {reason}")]
    InvalidKey {
        /// The policy key (nested keys joined with `.`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A condition object uses a match type this implementation (and SNS) does not know.
    #[error("filter policy key \"{key}\": unrecognized match type \"{operator}\"")]
    UnknownOperator {
        /// The policy key (nested keys joined with `.`).
        key: String,
        /// The unrecognized match type, e.g. `prefx`.
        operator: String,
    },
    /// A `FilterPolicyScope` value other than `MessageAttributes` or `MessageBody`.
    #[error("unknown filter policy scope \"{0}\" (expected MessageAttributes or MessageBody)")]
    UnknownScope(String),
}

/// What a subscription's filter policy is evaluated against (`FilterPolicyScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The message attributes (the AWS default).
    #[default]
    MessageAttributes,
    /// The JSON message body; nested policy objects follow nested JSON objects.
    MessageBody,
}

impl Scope {
    /// Parses an AWS `FilterPolicyScope` value: `MessageAttributes` or `MessageBody` (ASCII case
    /// and surrounding whitespace are ignored).
    pub fn parse(text: &str) -> Result<Scope, FilterError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("MessageAttributes") {
            Ok(Scope::MessageAttributes)
        } else if text.eq_ignore_ascii_case("MessageBody") {
            Ok(Scope::MessageBody)
        } else {
            Err(FilterError::UnknownScope(text.to_string()))
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::MessageAttributes => "MessageAttributes",
            Scope::MessageBody => "MessageBody",
        })
    }
}

/// A parsed SNS subscription filter policy, ready to be evaluated against messages.
#[derive(Debug, Clone)]
pub struct FilterPolicy {
    /// The policy as given, for [`FilterPolicy::to_json`].
    original: Value,
    /// The top-level nodes, ANDed.
    nodes: Vec<Node>,
}

impl FilterPolicy {
    /// Parses and validates a filter policy given as JSON.
    ///
    /// The empty object `{}` is accepted and matches every message.
    pub fn parse(policy: &Value) -> Result<Self, FilterError> {
        let Value::Object(object) = policy else {
            return Err(FilterError::NotAnObject {
                found: json_type(policy),
            });
        };
        let mut nodes = Vec::with_capacity(object.len());
        parse_object(object, "", &mut nodes)?;
        Ok(Self {
            original: policy.clone(),
            nodes,
        })
    }

    /// Parses and validates a filter policy given as JSON text (the `FilterPolicy` attribute).
    pub fn parse_str(text: &str) -> Result<Self, FilterError> {
        let value: Value = serde_json::from_str(text)?;
        Self::parse(&value)
    }

    /// Whether a message with these attributes passes the policy (`MessageAttributes` scope).
    ///
    /// Nested policy keys (only meaningful for the body scope) are looked up as attribute names
    /// joined with `.`. A message with no attributes at all matches only the empty policy.
    pub fn matches_attributes(&self, attributes: &Attributes) -> bool {
        if self.nodes.is_empty() {
            return true;
        }
        if attributes.is_empty() {
            return false;
        }
        all_match_attributes(&self.nodes, attributes)
    }

    /// Whether a message with this JSON body passes the policy (`MessageBody` scope).
    ///
    /// The body must be a JSON object; callers should treat a body that is not JSON as not
    /// matching (AWS filters it out as an invalid message body). Nested policy objects follow
    /// nested JSON objects, arrays along the way are searched element by element, and a key
    /// written with dots (`"a.b"`) also matches the nested path, as with AWS.
    pub fn matches_body(&self, body: &Value) -> bool {
        if self.nodes.is_empty() {
            return true;
        }
        if !body.is_object() {
            return false;
        }
        all_match_body(&self.nodes, body)
    }

    /// The policy JSON this was parsed from.
    pub fn to_json(&self) -> Value {
        self.original.clone()
    }
}

/// The policy the Python iniesta builds from `INIESTA_SQS_CONSUMER_FILTERS`.
///
/// Each filter name ending in `.*` becomes a prefix condition without the `*` (`"Order.*"` ->
/// `{"prefix": "Order."}`); any other name stays an exact string. The result is
/// `{event_key: [conditions in the given order]}`.
pub fn iniesta_policy(event_key: &str, filters: &[String]) -> Value {
    let conditions: Vec<Value> = filters
        .iter()
        .map(|name| match name.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') => {
                let mut condition = Map::new();
                condition.insert("prefix".to_string(), Value::String(prefix.to_string()));
                Value::Object(condition)
            }
            _ => Value::String(name.clone()),
        })
        .collect();
    let mut policy = Map::new();
    policy.insert(event_key.to_string(), Value::Array(conditions));
    Value::Object(policy)
}

/// Why a filter name from [`python_unbuildable`] is warned about.
pub const PYTHON_UNBUILDABLE: &str = "a Python iniesta service cannot build a filter policy from this name (its builder takes exactly two dotted parts, `Event.service` or `Event.*`, and refuses to start otherwise); iniesta builds it";

/// The filter names the Python iniesta's policy builder refuses, in config order: it splits
/// each name on `.` and asserts two parts (`filter_list_to_filter_policies`), so
/// `Order.Created.shop`, `Order.Created.*` and `single` stop a Python service that is configured
/// with them. [`iniesta_policy`] builds a policy from any name.
pub fn python_unbuildable(filters: &[String]) -> Vec<&str> {
    filters
        .iter()
        .filter(|name| name.split('.').count() != 2)
        .map(String::as_str)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The parsed tree.

/// One ANDed element of a policy object.
#[derive(Debug, Clone)]
enum Node {
    /// A key with its ORed conditions.
    Leaf(Leaf),
    /// `"$or"`: any alternative whose nodes all match.
    Or(Vec<Vec<Node>>),
}

/// A policy key (nested keys joined with `.`) and its ORed conditions.
#[derive(Debug, Clone)]
struct Leaf {
    path: String,
    conditions: Vec<Condition>,
    /// Some condition is `exists`.
    has_exists: bool,
    /// Some condition is not `exists` (so the values have to be looked at).
    has_value_conditions: bool,
}

/// One condition of a key's array.
#[derive(Debug, Clone)]
enum Condition {
    /// An exact string.
    Exact(String),
    /// An exact number.
    Number(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// `{"prefix": ..}`.
    Prefix(String),
    /// `{"suffix": ..}`.
    Suffix(String),
    /// `{"equals-ignore-case": ..}`, holding the lower-cased pattern.
    EqualsIgnoreCase(String),
    /// `{"anything-but": ..}`.
    AnythingBut(AnythingBut),
    /// `{"numeric": [..]}`.
    Numeric(NumericRange),
    /// `{"exists": ..}`.
    Exists(bool),
    /// `{"cidr": ..}`.
    Cidr(IpNet),
}

/// The forms of `anything-but`.
#[derive(Debug, Clone)]
enum AnythingBut {
    /// Any value except these strings and numbers.
    Values {
        strings: Vec<String>,
        numbers: Vec<f64>,
    },
    /// Any value that is not a string with this prefix.
    Prefix(String),
    /// Any value that is not a string with this suffix.
    Suffix(String),
    /// Any value that is not one of these strings, ignoring case (lower-cased patterns).
    EqualsIgnoreCase(Vec<String>),
}

/// One end of a numeric range.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Unbounded,
    Inclusive(f64),
    Exclusive(f64),
}

/// A numeric range; `=` is a range with equal inclusive ends.
#[derive(Debug, Clone, Copy)]
struct NumericRange {
    lower: Bound,
    upper: Bound,
}

impl NumericRange {
    fn contains(&self, n: f64) -> bool {
        let above = match self.lower {
            Bound::Unbounded => true,
            Bound::Inclusive(low) => n >= low,
            Bound::Exclusive(low) => n > low,
        };
        let below = match self.upper {
            Bound::Unbounded => true,
            Bound::Inclusive(high) => n <= high,
            Bound::Exclusive(high) => n < high,
        };
        above && below
    }
}

/// A CIDR block, network bits already masked.
#[derive(Debug, Clone, Copy)]
enum IpNet {
    V4 { network: u32, mask: u32 },
    V6 { network: u128, mask: u128 },
}

impl IpNet {
    fn contains(&self, text: &str) -> bool {
        match *self {
            IpNet::V4 { network, mask } => text
                .parse::<Ipv4Addr>()
                .is_ok_and(|ip| u32::from(ip) & mask == network),
            IpNet::V6 { network, mask } => text
                .parse::<Ipv6Addr>()
                .is_ok_and(|ip| u128::from(ip) & mask == network),
        }
    }
}

/// A single value a condition is tested against (one element of an array value).
#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

impl<'a> Scalar<'a> {
    /// The scalar view of a JSON value; `None` for arrays and objects.
    fn from_json(value: &'a Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Scalar::Str(s)),
            Value::Number(n) => n.as_f64().map(Scalar::Num),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Null => Some(Scalar::Null),
            Value::Array(_) | Value::Object(_) => None,
        }
    }
}

impl Condition {
    /// Whether this (non-`exists`) condition accepts one value.
    fn matches(&self, value: Scalar<'_>) -> bool {
        match (self, value) {
            (Condition::Exact(want), Scalar::Str(s)) => want == s,
            (Condition::Number(want), Scalar::Num(n)) => *want == n,
            (Condition::Bool(want), Scalar::Bool(b)) => *want == b,
            (Condition::Null, Scalar::Null) => true,
            (Condition::Prefix(prefix), Scalar::Str(s)) => s.starts_with(prefix.as_str()),
            (Condition::Suffix(suffix), Scalar::Str(s)) => s.ends_with(suffix.as_str()),
            (Condition::EqualsIgnoreCase(lower), Scalar::Str(s)) => eq_lowercase(s, lower),
            (Condition::AnythingBut(but), value) => but.matches(value),
            (Condition::Numeric(range), Scalar::Num(n)) => range.contains(n),
            (Condition::Cidr(net), Scalar::Str(s)) => net.contains(s),
            _ => false,
        }
    }
}

impl AnythingBut {
    fn matches(&self, value: Scalar<'_>) -> bool {
        match (self, value) {
            // A null is treated like a missing value, which anything-but never matches.
            (_, Scalar::Null) => false,
            (AnythingBut::Values { strings, .. }, Scalar::Str(s)) => {
                !strings.iter().any(|excluded| excluded == s)
            }
            (AnythingBut::Values { numbers, .. }, Scalar::Num(n)) => !numbers.contains(&n),
            (AnythingBut::Prefix(prefix), Scalar::Str(s)) => !s.starts_with(prefix.as_str()),
            (AnythingBut::Suffix(suffix), Scalar::Str(s)) => !s.ends_with(suffix.as_str()),
            (AnythingBut::EqualsIgnoreCase(lowers), Scalar::Str(s)) => {
                !lowers.iter().any(|lower| eq_lowercase(s, lower))
            }
            // A value of another type is never one of the excluded values.
            _ => true,
        }
    }
}

/// Lower-cases a pattern char by char, the same way [`eq_lowercase`] lower-cases values.
fn lowercase(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Whether `text` lower-cased equals `lower` (already lower-cased), without allocating.
fn eq_lowercase(text: &str, lower: &str) -> bool {
    text.chars().flat_map(char::to_lowercase).eq(lower.chars())
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

fn all_match_attributes(nodes: &[Node], attributes: &Attributes) -> bool {
    nodes.iter().all(|node| match node {
        Node::Leaf(leaf) => leaf_matches_attributes(leaf, attributes),
        Node::Or(alternatives) => alternatives
            .iter()
            .any(|alternative| all_match_attributes(alternative, attributes)),
    })
}

fn leaf_matches_attributes(leaf: &Leaf, attributes: &Attributes) -> bool {
    let attribute = attributes.get(leaf.path.as_str());
    if leaf.has_exists {
        let present = attribute.is_some();
        let exists_matched = leaf
            .conditions
            .iter()
            .any(|c| matches!(c, Condition::Exists(want) if *want == present));
        if exists_matched {
            return true;
        }
    }
    match attribute {
        Some(attribute) if leaf.has_value_conditions => any_attribute_value(attribute, |value| {
            leaf.conditions.iter().any(|c| c.matches(value))
        }),
        _ => false,
    }
}

/// Calls `test` on each value of an attribute (each element for an array type) until it
/// returns true. Binary attributes and unknown types have no values.
fn any_attribute_value(attribute: &Attribute, mut test: impl FnMut(Scalar<'_>) -> bool) -> bool {
    if attribute.data_type == "String.Array" || attribute.data_type == "Number.Array" {
        return match serde_json::from_str::<Value>(&attribute.value) {
            Ok(value) => {
                any_leaf_value(&value, &mut |v| Scalar::from_json(v).is_some_and(&mut test))
            }
            Err(_) => false,
        };
    }
    match attribute.base_type() {
        "String" => test(Scalar::Str(&attribute.value)),
        "Number" => match attribute.value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => test(Scalar::Num(n)),
            _ => false,
        },
        _ => false,
    }
}

fn all_match_body(nodes: &[Node], body: &Value) -> bool {
    nodes.iter().all(|node| match node {
        Node::Leaf(leaf) => leaf_matches_body(leaf, body),
        Node::Or(alternatives) => alternatives
            .iter()
            .any(|alternative| all_match_body(alternative, body)),
    })
}

fn leaf_matches_body(leaf: &Leaf, body: &Value) -> bool {
    if leaf.has_exists {
        let present = visit_path(body, &leaf.path, &mut |v| !v.is_null());
        let exists_matched = leaf
            .conditions
            .iter()
            .any(|c| matches!(c, Condition::Exists(want) if *want == present));
        if exists_matched {
            return true;
        }
    }
    leaf.has_value_conditions
        && visit_path(body, &leaf.path, &mut |v| {
            Scalar::from_json(v).is_some_and(|s| leaf.conditions.iter().any(|c| c.matches(s)))
        })
}

/// Calls `test` on each scalar leaf value found at the dotted `path` below `value`, until it
/// returns true. Arrays along the path are searched element by element, and a body key that
/// itself contains dots matches the corresponding run of path segments (as AWS flattens both
/// the policy and the body to dotted keys).
fn visit_path(value: &Value, path: &str, test: &mut dyn FnMut(&Value) -> bool) -> bool {
    match value {
        Value::Object(map) => {
            map.iter()
                .any(|(key, child)| match path.strip_prefix(key.as_str()) {
                    Some("") => any_leaf_value(child, test),
                    Some(rest) => match rest.strip_prefix('.') {
                        Some(rest) => visit_path(child, rest, test),
                        None => false,
                    },
                    None => false,
                })
        }
        Value::Array(items) => items.iter().any(|item| visit_path(item, path, test)),
        _ => false,
    }
}

/// Calls `test` on a scalar value, or on each scalar inside a (nested) array. Objects are not
/// leaves and are skipped.
fn any_leaf_value(value: &Value, test: &mut dyn FnMut(&Value) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| any_leaf_value(item, test)),
        Value::Object(_) => false,
        scalar => test(scalar),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> FilterError {
    FilterError::InvalidKey {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Whether `"$or": value` is an OR (as opposed to a key literally named `$or`): an array of
/// objects none of which uses a match-type keyword as a field name.
fn is_or_operator(value: &Value) -> bool {
    match value {
        Value::Array(items) => {
            !items.is_empty()
                && items.iter().all(|item| match item {
                    Value::Object(object) => object
                        .keys()
                        .all(|key| !RESERVED_KEYWORDS.contains(&key.as_str())),
                    _ => false,
                })
        }
        _ => false,
    }
}

/// Parses the keys of one policy object (at `prefix`) into ANDed nodes.
fn parse_object(
    object: &Map<String, Value>,
    prefix: &str,
    nodes: &mut Vec<Node>,
) -> Result<(), FilterError> {
    for (key, value) in object {
        let path = join_path(prefix, key);
        if key == "$or" && is_or_operator(value) {
            nodes.push(parse_or(value, prefix, &path)?);
            continue;
        }
        match value {
            Value::Array(items) => nodes.push(Node::Leaf(parse_leaf(path, items)?)),
            Value::Object(inner) => {
                if inner.is_empty() {
                    return Err(invalid(&path, "nested policy object must not be empty"));
                }
                parse_object(inner, &path, nodes)?;
            }
            other => {
                return Err(invalid(
                    &path,
                    format!(
                        "must be an array of conditions or a nested object, got {}",
                        json_type(other)
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn parse_or(value: &Value, prefix: &str, path: &str) -> Result<Node, FilterError> {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.len() < 2 {
        return Err(invalid(path, "$or needs at least two policy objects"));
    }
    let mut alternatives = Vec::with_capacity(items.len());
    for item in items {
        let object = match item {
            Value::Object(object) if !object.is_empty() => object,
            _ => {
                return Err(invalid(
                    path,
                    "each $or alternative must be a non-empty object",
                ))
            }
        };
        let mut nodes = Vec::with_capacity(object.len());
        parse_object(object, prefix, &mut nodes)?;
        alternatives.push(nodes);
    }
    Ok(Node::Or(alternatives))
}

fn parse_leaf(path: String, items: &[Value]) -> Result<Leaf, FilterError> {
    if items.is_empty() {
        return Err(invalid(&path, "condition array must not be empty"));
    }
    let conditions = items
        .iter()
        .map(|item| parse_condition(&path, item))
        .collect::<Result<Vec<_>, _>>()?;
    let has_exists = conditions.iter().any(|c| matches!(c, Condition::Exists(_)));
    let has_value_conditions = conditions
        .iter()
        .any(|c| !matches!(c, Condition::Exists(_)));
    Ok(Leaf {
        path,
        conditions,
        has_exists,
        has_value_conditions,
    })
}

fn parse_number(key: &str, value: &Value, what: &str) -> Result<f64, FilterError> {
    match value.as_f64() {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(invalid(
            key,
            format!("{what} must be a number, got {}", json_type(value)),
        )),
    }
}

fn parse_string<'a>(key: &str, value: &'a Value, operator: &str) -> Result<&'a str, FilterError> {
    value.as_str().ok_or_else(|| {
        invalid(
            key,
            format!(
                "{operator} match pattern must be a string, got {}",
                json_type(value)
            ),
        )
    })
}

fn parse_condition(key: &str, item: &Value) -> Result<Condition, FilterError> {
    match item {
        Value::String(s) => Ok(Condition::Exact(s.clone())),
        Value::Number(_) => Ok(Condition::Number(parse_number(key, item, "number")?)),
        Value::Bool(b) => Ok(Condition::Bool(*b)),
        Value::Null => Ok(Condition::Null),
        Value::Array(_) => Err(invalid(
            key,
            "a condition must be a string, number, true, false, null or an object, got a nested array",
        )),
        Value::Object(object) => {
            let mut entries = object.iter();
            let (operator, operand) = match (entries.next(), entries.next()) {
                (Some(entry), None) => entry,
                (None, _) => return Err(invalid(key, "condition object must not be empty")),
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key,
                        "condition object must have exactly one match type",
                    ))
                }
            };
            parse_operator(key, operator, operand)
        }
    }
}

fn parse_operator(key: &str, operator: &str, operand: &Value) -> Result<Condition, FilterError> {
    match operator {
        "prefix" => Ok(Condition::Prefix(
            parse_string(key, operand, operator)?.to_string(),
        )),
        "suffix" => Ok(Condition::Suffix(
            parse_string(key, operand, operator)?.to_string(),
        )),
        "equals-ignore-case" => Ok(Condition::EqualsIgnoreCase(lowercase(parse_string(
            key, operand, operator,
        )?))),
        "exists" => match operand {
            Value::Bool(b) => Ok(Condition::Exists(*b)),
            other => Err(invalid(
                key,
                format!("exists must be true or false, got {}", json_type(other)),
            )),
        },
        "anything-but" => Ok(Condition::AnythingBut(parse_anything_but(key, operand)?)),
        "numeric" => Ok(Condition::Numeric(parse_numeric(key, operand)?)),
        "cidr" => Ok(Condition::Cidr(parse_cidr(
            key,
            parse_string(key, operand, operator)?,
        )?)),
        other => Err(FilterError::UnknownOperator {
            key: key.to_string(),
            operator: other.to_string(),
        }),
    }
}

fn parse_anything_but(key: &str, operand: &Value) -> Result<AnythingBut, FilterError> {
    let mut strings = Vec::new();
    let mut numbers = Vec::new();
    let mut push = |value: &Value| -> Result<(), FilterError> {
        match value {
            Value::String(s) => strings.push(s.clone()),
            Value::Number(_) => numbers.push(parse_number(key, value, "anything-but value")?),
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "anything-but values must be strings or numbers, got {}",
                        json_type(other)
                    ),
                ))
            }
        }
        Ok(())
    };
    match operand {
        Value::String(_) | Value::Number(_) => push(operand)?,
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(key, "anything-but list must not be empty"));
            }
            for item in items {
                push(item)?;
            }
        }
        Value::Object(object) => {
            let mut entries = object.iter();
            let (operator, pattern) = match (entries.next(), entries.next()) {
                (Some(entry), None) => entry,
                _ => {
                    return Err(invalid(
                        key,
                        "anything-but object must have exactly one of prefix, suffix or equals-ignore-case",
                    ))
                }
            };
            return match operator.as_str() {
                "prefix" => Ok(AnythingBut::Prefix(
                    parse_string(key, pattern, "anything-but prefix")?.to_string(),
                )),
                "suffix" => Ok(AnythingBut::Suffix(
                    parse_string(key, pattern, "anything-but suffix")?.to_string(),
                )),
                "equals-ignore-case" => {
                    let lowers = match pattern {
                        Value::Array(items) if !items.is_empty() => items
                            .iter()
                            .map(|item| {
                                parse_string(key, item, "anything-but equals-ignore-case")
                                    .map(lowercase)
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        other => vec![lowercase(parse_string(
                            key,
                            other,
                            "anything-but equals-ignore-case",
                        )?)],
                    };
                    Ok(AnythingBut::EqualsIgnoreCase(lowers))
                }
                other => Err(invalid(
                    key,
                    format!("unsupported anything-but pattern \"{other}\""),
                )),
            };
        }
        other => {
            return Err(invalid(
                key,
                format!(
                    "anything-but needs a string, a number, a list or a pattern object, got {}",
                    json_type(other)
                ),
            ))
        }
    }
    Ok(AnythingBut::Values { strings, numbers })
}

const NUMERIC_SHAPE: &str = "numeric range needs an operator followed by a number";

fn parse_numeric(key: &str, operand: &Value) -> Result<NumericRange, FilterError> {
    let Value::Array(items) = operand else {
        return Err(invalid(
            key,
            format!(
                "numeric needs an array such as [\">\", 0, \"<=\", 150], got {}",
                json_type(operand)
            ),
        ));
    };
    if items.is_empty() || items.len() % 2 != 0 {
        return Err(invalid(key, NUMERIC_SHAPE));
    }
    if items.len() > 4 {
        return Err(invalid(key, "numeric range has too many terms"));
    }
    let mut terms = Vec::with_capacity(2);
    for pair in items.chunks(2) {
        let (Some(operator), Some(number)) = (pair[0].as_str(), pair[1].as_f64()) else {
            return Err(invalid(key, NUMERIC_SHAPE));
        };
        if !number.is_finite() {
            return Err(invalid(key, NUMERIC_SHAPE));
        }
        terms.push((operator, number));
    }
    let bound = |operator: &str, number: f64| -> Result<NumericRange, FilterError> {
        let unbounded = NumericRange {
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
        };
        Ok(match operator {
            "=" => NumericRange {
                lower: Bound::Inclusive(number),
                upper: Bound::Inclusive(number),
            },
            ">" => NumericRange {
                lower: Bound::Exclusive(number),
                ..unbounded
            },
            ">=" => NumericRange {
                lower: Bound::Inclusive(number),
                ..unbounded
            },
            "<" => NumericRange {
                upper: Bound::Exclusive(number),
                ..unbounded
            },
            "<=" => NumericRange {
                upper: Bound::Inclusive(number),
                ..unbounded
            },
            other => {
                return Err(invalid(
                    key,
                    format!("unrecognized numeric operator \"{other}\" (use =, <, <=, > or >=)"),
                ))
            }
        })
    };
    match terms.as_slice() {
        [(operator, number)] => bound(operator, *number),
        [(low_op, low), (high_op, high)] => {
            let lower = bound(low_op, *low)?;
            let upper = bound(high_op, *high)?;
            if !matches!(*low_op, ">" | ">=") || !matches!(*high_op, "<" | "<=") {
                return Err(invalid(
                    key,
                    "a numeric range is a lower bound (> or >=) followed by an upper bound (< or <=)",
                ));
            }
            if low >= high {
                return Err(invalid(
                    key,
                    "numeric range bottom must be less than its top",
                ));
            }
            Ok(NumericRange {
                lower: lower.lower,
                upper: upper.upper,
            })
        }
        _ => Err(invalid(key, NUMERIC_SHAPE)),
    }
}

fn parse_cidr(key: &str, text: &str) -> Result<IpNet, FilterError> {
    let malformed = |why: &str| invalid(key, format!("malformed CIDR \"{text}\": {why}"));
    let Some((address, bits)) = text.split_once('/') else {
        return Err(malformed("one '/' required"));
    };
    let bits: u32 = bits
        .parse()
        .map_err(|_| malformed("mask bits must be an integer"))?;
    if let Ok(ip) = address.parse::<Ipv4Addr>() {
        if bits > 32 {
            return Err(malformed("IPv4 mask bits must be at most 32"));
        }
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        return Ok(IpNet::V4 {
            network: u32::from(ip) & mask,
            mask,
        });
    }
    if let Ok(ip) = address.parse::<Ipv6Addr>() {
        if bits > 128 {
            return Err(malformed("IPv6 mask bits must be at most 128"));
        }
        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
        return Ok(IpNet::V6 {
            network: u128::from(ip) & mask,
            mask,
        });
    }
    Err(malformed("not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attr(data_type: &str, value: &str) -> Attribute {
        Attribute {
            data_type: data_type.to_string(),
            value: value.to_string(),
        }
    }

    fn s(value: &str) -> Option<Attribute> {
        Some(attr("String", value))
    }

    fn n(value: &str) -> Option<Attribute> {
        Some(attr("Number", value))
    }

    fn arr(value: &str) -> Option<Attribute> {
        Some(attr("String.Array", value))
    }

    fn bin(value: &str) -> Option<Attribute> {
        Some(attr("Binary", value))
    }

    fn attrs(items: &[(&str, Option<Attribute>)]) -> Attributes {
        items
            .iter()
            .filter_map(|(name, a)| a.clone().map(|a| (name.to_string(), a)))
            .collect()
    }

    fn policy(value: Value) -> FilterPolicy {
        match FilterPolicy::parse(&value) {
            Ok(p) => p,
            Err(e) => panic!("policy {value} should parse: {e}"),
        }
    }

    /// Checks the conditions `conditions` (the array under key "k") against attribute "k" in
    /// each case; `None` means the attribute is missing. Another attribute is always present,
    /// so the no-attributes rule does not interfere.
    fn check_attr(conditions: Value, cases: &[(Option<Attribute>, bool)]) {
        let p = policy(json!({ "k": conditions }));
        for (attribute, expected) in cases {
            let attributes = attrs(&[("k", attribute.clone()), ("other", s("present"))]);
            assert_eq!(
                p.matches_attributes(&attributes),
                *expected,
                "policy {} vs {attribute:?}",
                p.to_json()
            );
        }
    }

    /// Checks a whole policy against message bodies.
    fn check_body(p: Value, cases: &[(Value, bool)]) {
        let p = policy(p);
        for (body, expected) in cases {
            assert_eq!(
                p.matches_body(body),
                *expected,
                "policy {} vs body {body}",
                p.to_json()
            );
        }
    }

    #[test]
    fn exact_string() {
        check_attr(
            json!(["abc"]),
            &[(s("abc"), true), (s("abcd"), false), (None, false)],
        );
        check_attr(json!(["abc", "xyz"]), &[(s("xyz"), true), (s("x"), false)]);
        check_attr(
            json!(["abc"]),
            &[(Some(attr("String.custom", "abc")), true)],
        );
        check_attr(json!(["5"]), &[(n("5"), false), (s("5"), true)]);
        check_attr(json!(["YWJj"]), &[(bin("YWJj"), false)]);
    }

    #[test]
    fn exact_number() {
        check_attr(
            json!([5]),
            &[
                (n("5"), true),
                (n("5.0"), true),
                (n("5e0"), true),
                (Some(attr("Number.float", "5.00")), true),
                (n("6"), false),
                (s("5"), false),
                (n("not-a-number"), false),
                (None, false),
            ],
        );
        check_attr(json!([5.0]), &[(n("5"), true)]);
        check_attr(json!([301.5]), &[(n("3.015e2"), true)]);
    }

    #[test]
    fn prefix_suffix_equals_ignore_case() {
        let prefix = json!([{"prefix": "bas"}]);
        check_attr(
            prefix,
            &[(s("baseball"), true), (s("rugby"), false), (None, false)],
        );
        check_attr(json!([{"prefix": "1"}]), &[(n("12"), false)]);
        let suffix = json!([{"suffix": "ball"}]);
        check_attr(suffix, &[(s("baseball"), true), (s("rugby"), false)]);
        check_attr(
            json!([{"equals-ignore-case": "ReD"}]),
            &[
                (s("rEd"), true),
                (s("red"), true),
                (s("reds"), false),
                (None, false),
            ],
        );
        check_attr(json!([{"equals-ignore-case": "ÉTÉ"}]), &[(s("été"), true)]);
    }

    #[test]
    fn anything_but() {
        check_attr(
            json!([{"anything-but": "x"}]),
            &[(s("y"), true), (s("x"), false), (None, false)],
        );
        check_attr(
            json!([{"anything-but": ["rugby", "tennis"]}]),
            &[
                (s("baseball"), true),
                (s("rugby"), false),
                (s("tennis"), false),
                (None, false),
                (bin("cnVnYnk="), false),
                (arr(r#"["rugby", "baseball"]"#), true),
                (arr(r#"["rugby", "tennis"]"#), false),
            ],
        );
        check_attr(
            json!([{"anything-but": [100, 500]}]),
            &[
                (n("101"), true),
                (n("100.1"), true),
                (n("100"), false),
                (n("1e2"), false),
                (None, false),
                (Some(attr("Number.Array", "[100, 50]")), true),
            ],
        );
        check_attr(
            json!([{"anything-but": 5}]),
            &[(n("5.0"), false), (n("4"), true)],
        );
        check_attr(
            json!([{"anything-but": {"prefix": "order-"}}]),
            &[
                (s("order-return"), false),
                (s("data-entry"), true),
                (None, false),
            ],
        );
        check_attr(
            json!([{"anything-but": {"suffix": "-test"}}]),
            &[(s("a-test"), false), (s("a-prod"), true)],
        );
        check_attr(
            json!([{"anything-but": {"equals-ignore-case": ["A", "b"]}}]),
            &[(s("B"), false), (s("a"), false), (s("c"), true)],
        );
        check_attr(
            json!([{"anything-but": {"equals-ignore-case": "A"}}]),
            &[(s("a"), false), (s("c"), true)],
        );
        // Combined with exists:false it also accepts a missing attribute.
        check_attr(
            json!([{"anything-but": "x"}, {"exists": false}]),
            &[(None, true), (s("x"), false), (s("y"), true)],
        );
    }

    #[test]
    fn numeric_single_operators() {
        let eq = json!([{"numeric": ["=", 301.5]}]);
        check_attr(
            eq,
            &[
                (n("301.5"), true),
                (n("3.015e2"), true),
                (n("301.6"), false),
            ],
        );
        let gt = json!([{"numeric": [">", 100]}]);
        check_attr(
            gt,
            &[(n("100"), false), (n("100.0001"), true), (None, false)],
        );
        let ge = json!([{"numeric": [">=", 100]}]);
        check_attr(ge, &[(n("100"), true), (n("99.99"), false)]);
        let lt = json!([{"numeric": ["<", 0]}]);
        check_attr(lt, &[(n("-0.5"), true), (n("0"), false)]);
        let le = json!([{"numeric": ["<=", 0]}]);
        check_attr(le, &[(n("0"), true), (n("0.1"), false)]);
        let gt1 = json!([{"numeric": [">", 1]}]);
        check_attr(
            gt1,
            &[(s("5"), false), (n("inf"), false), (n("NaN"), false)],
        );
    }

    #[test]
    fn numeric_ranges() {
        check_attr(
            json!([{"numeric": [">", 0, "<=", 150]}]),
            &[
                (n("0"), false),
                (n("0.01"), true),
                (n("150"), true),
                (n("150.01"), false),
                (n("-1"), false),
            ],
        );
        check_attr(
            json!([{"numeric": [">=", 0, "<", 150]}]),
            &[
                (n("0"), true),
                (n("149.999"), true),
                (n("150"), false),
                (n("-1"), false),
            ],
        );
        check_attr(
            json!([{"numeric": [">", 100, "<", 200]}, {"numeric": [">", 300]}]),
            &[
                (n("150"), true),
                (n("301"), true),
                (n("250"), false),
                (n("100"), false),
            ],
        );
    }

    #[test]
    fn exists() {
        check_attr(
            json!([{"exists": true}]),
            &[
                (s("fans"), true),
                (bin("AAEC"), true),
                (arr("[]"), true),
                (None, false),
            ],
        );
        check_attr(
            json!([{"exists": false}]),
            &[(s("fans"), false), (None, true)],
        );
    }

    #[test]
    fn cidr() {
        check_attr(
            json!([{"cidr": "10.0.0.0/24"}]),
            &[
                (s("10.0.0.0"), true),
                (s("10.0.0.255"), true),
                (s("10.0.1.0"), false),
                (s("not-an-ip"), false),
                (None, false),
            ],
        );
        check_attr(json!([{"cidr": "10.0.0.7/24"}]), &[(s("10.0.0.1"), true)]);
        check_attr(json!([{"cidr": "0.0.0.0/0"}]), &[(s("192.168.1.1"), true)]);
        check_attr(
            json!([{"cidr": "10.1.2.3/32"}]),
            &[(s("10.1.2.3"), true), (s("10.1.2.4"), false)],
        );
        check_attr(
            json!([{"cidr": "2001:db8::/32"}]),
            &[(s("2001:db8::1"), true), (s("2001:db9::1"), false)],
        );
    }

    #[test]
    fn string_array_matches_any_element() {
        check_attr(
            json!(["rugby", "tennis"]),
            &[
                (arr(r#"["rugby", "tennis"]"#), true),
                (arr(r#"["soccer", "tennis"]"#), true),
                (arr(r#"["baseball"]"#), false),
                (arr("[]"), false),
                (arr("not json"), false),
                (arr(r#""rugby""#), true),
            ],
        );
        check_attr(
            json!([{"prefix": "bas"}]),
            &[(arr(r#"["rugby", "basketball"]"#), true)],
        );
        check_attr(
            json!([{"numeric": [">", 10]}]),
            &[
                (arr(r#"[1, "20", 30]"#), true),
                (arr(r#"[1, "20"]"#), false),
            ],
        );
        check_attr(
            json!([5]),
            &[(arr(r#"["5", 5.0]"#), true), (arr(r#"["5"]"#), false)],
        );
        check_attr(
            json!([true]),
            &[(arr("[false, true]"), true), (arr("[false]"), false)],
        );
        check_attr(
            json!([null]),
            &[(arr(r#"["a", null]"#), true), (s("null"), false)],
        );
    }

    #[test]
    fn and_across_keys() {
        let p = policy(json!({
            "customer_interests": ["rugby"],
            "price_usd": [{"numeric": [">", 100]}]
        }));
        let both = attrs(&[
            ("customer_interests", s("rugby")),
            ("price_usd", n("210.75")),
        ]);
        let cheap = attrs(&[("customer_interests", s("rugby")), ("price_usd", n("99"))]);
        let missing = attrs(&[("customer_interests", s("rugby"))]);
        assert!(p.matches_attributes(&both));
        assert!(!p.matches_attributes(&cheap));
        assert!(!p.matches_attributes(&missing));
    }

    #[test]
    fn aws_example_policy() {
        let p = policy(json!({
            "store": ["example_corp"],
            "event": [{"anything-but": "order_cancelled"}],
            "customer_interests": ["rugby", "football", "baseball"],
            "price_usd": [{"numeric": [">=", 100]}]
        }));
        let mut message = attrs(&[
            (
                "customer_interests",
                arr(r#"["soccer", "rugby", "hockey"]"#),
            ),
            ("store", s("example_corp")),
            ("event", s("order_placed")),
            ("price_usd", n("210.75")),
        ]);
        assert!(p.matches_attributes(&message));
        message.insert("event".into(), attr("String", "order_cancelled"));
        assert!(!p.matches_attributes(&message));
    }

    #[test]
    fn or_operator() {
        // "source" && ("metricName" || "namespace")
        let p = policy(json!({
            "source": ["aws.cloudwatch"],
            "$or": [
                {"metricName": ["CPUUtilization"]},
                {"namespace": ["AWS/EC2"]}
            ]
        }));
        let cases = [
            (s("aws.cloudwatch"), s("CPUUtilization"), None, true),
            (s("aws.cloudwatch"), None, s("AWS/EC2"), true),
            (s("aws.cloudwatch"), None, s("AWS/RDS"), false),
            (s("aws.cloudwatch"), None, None, false),
            (s("aws.other"), s("CPUUtilization"), None, false),
            (None, s("CPUUtilization"), s("AWS/EC2"), false),
        ];
        for (source, metric, namespace, expected) in cases {
            let message = attrs(&[
                ("source", source),
                ("metricName", metric),
                ("namespace", namespace),
            ]);
            assert_eq!(p.matches_attributes(&message), expected, "{message:?}");
        }

        // Nested $or inside an alternative, each alternative ANDing several keys.
        let p = policy(json!({
            "$or": [
                {"a": ["1"], "b": ["2"]},
                {"$or": [{"c": ["3"]}, {"d": [{"exists": true}]}]}
            ]
        }));
        assert!(p.matches_attributes(&attrs(&[("a", s("1")), ("b", s("2"))])));
        assert!(!p.matches_attributes(&attrs(&[("a", s("1")), ("b", s("x"))])));
        assert!(p.matches_attributes(&attrs(&[("c", s("3"))])));
        assert!(p.matches_attributes(&attrs(&[("d", n("0"))])));
        assert!(!p.matches_attributes(&attrs(&[("e", s("3"))])));
    }

    #[test]
    fn dollar_or_with_reserved_keywords_is_a_plain_key() {
        // Per AWS, this is not an OR: "$or" is an ordinary attribute name here.
        let p = policy(json!({"$or": [{"prefix": "abc"}, {"suffix": "xyz"}]}));
        assert!(p.matches_attributes(&attrs(&[("$or", s("abcd"))])));
        assert!(p.matches_attributes(&attrs(&[("$or", s("wxyz"))])));
        assert!(!p.matches_attributes(&attrs(&[("other", s("abcd"))])));
    }

    #[test]
    fn empty_attributes_and_empty_policy() {
        let empty = Attributes::new();
        assert!(!policy(json!({"k": [{"exists": false}]})).matches_attributes(&empty));
        assert!(!policy(json!({"k": [{"anything-but": "x"}]})).matches_attributes(&empty));
        assert!(policy(json!({})).matches_attributes(&empty));
        assert!(policy(json!({})).matches_body(&json!({})));
        assert!(policy(json!({})).matches_body(&json!("not an object")));
    }

    #[test]
    fn nested_policy_in_attribute_scope_uses_dotted_names() {
        let p = policy(json!({"a": {"b": ["x"]}}));
        assert!(p.matches_attributes(&attrs(&[("a.b", s("x"))])));
        assert!(!p.matches_attributes(&attrs(&[("a", s("x"))])));
    }

    #[test]
    fn body_scope_nesting() {
        let p = json!({
            "store": ["example_corp"],
            "customer_interests": [{"prefix": "rug"}],
            "price_usd": [{"numeric": [">", 100, "<=", 300]}],
            "order": {"details": {"size": ["large"], "gift": [true]}}
        });
        let body = json!({
            "store": "example_corp",
            "customer_interests": ["soccer", "rugby"],
            "price_usd": 210.75,
            "order": {"details": {"size": "large", "gift": true, "extra": 1}}
        });
        let mut wrong_size = body.clone();
        wrong_size["order"]["details"]["size"] = json!("small");
        let mut flat_order = body.clone();
        flat_order["order"] = json!("large");
        let mut price_as_string = body.clone();
        price_as_string["price_usd"] = json!("210.75");
        let mut no_gift = body.clone();
        no_gift["order"]["details"] = json!({"size": "large"});
        check_body(
            p,
            &[
                (body, true),
                (wrong_size, false),
                (flat_order, false),
                (price_as_string, false),
                (no_gift, false),
                (json!(["not", "an", "object"]), false),
                (json!("text"), false),
            ],
        );
    }

    #[test]
    fn body_values() {
        check_body(
            json!({"a": ["x"]}),
            &[
                (json!({"a": "x"}), true),
                (json!({"a": ["y", "x"]}), true),
                (json!({"a": [["x"]]}), true),
                (json!({"a": {"x": 1}}), false),
                (json!({"b": "x"}), false),
            ],
        );
        check_body(
            json!({"a": [5]}),
            &[(json!({"a": 5.0}), true), (json!({"a": "5"}), false)],
        );
        check_body(json!({"a": [3.018e2]}), &[(json!({"a": 301.8}), true)]);
        check_body(
            json!({"a": [null]}),
            &[(json!({"a": null}), true), (json!({}), false)],
        );
        check_body(
            json!({"a": [false]}),
            &[(json!({"a": false}), true), (json!({"a": 0}), false)],
        );
        check_body(
            json!({"a": [{"suffix": ".png"}]}),
            &[(json!({"a": "i.png"}), true)],
        );
        check_body(
            json!({"a": [{"equals-ignore-case": "X"}]}),
            &[(json!({"a": "x"}), true)],
        );
        check_body(
            json!({"a": [{"cidr": "10.0.0.0/8"}]}),
            &[(json!({"a": "10.1.2.3"}), true)],
        );
        check_body(
            json!({"a": [{"numeric": [">=", 1, "<", 2]}]}),
            &[
                (json!({"a": 1}), true),
                (json!({"a": 2}), false),
                (json!({"a": [0, 1.5]}), true),
            ],
        );
        check_body(
            json!({"a": [{"anything-but": "x"}]}),
            &[
                (json!({"a": "y"}), true),
                (json!({"a": "x"}), false),
                (json!({"b": "y"}), false),
                (json!({"a": null}), false),
            ],
        );
        check_body(
            json!({"a": [{"anything-but": [100, 500]}]}),
            &[(json!({"a": [100, 50]}), true), (json!({"a": 100}), false)],
        );
    }

    #[test]
    fn body_exists() {
        check_body(
            json!({"a": [{"exists": true}]}),
            &[
                (json!({"a": 0}), true),
                (json!({"a": ""}), true),
                (json!({"a": null}), false),
                (json!({"a": []}), false),
                (json!({"a": {"b": 1}}), false),
                (json!({"b": 1}), false),
            ],
        );
        check_body(
            json!({"a": [{"exists": false}]}),
            &[(json!({"b": 1}), true), (json!({"a": "v"}), false)],
        );
        check_body(
            json!({"a": {"b": [{"exists": true}]}}),
            &[
                (json!({"a": {"b": "v"}}), true),
                (json!({"a": {"c": "v"}}), false),
            ],
        );
        check_body(
            json!({"a": {"b": [{"exists": false}]}}),
            &[
                (json!({"a": {"c": "v"}}), true),
                (json!({"a": {"b": "v"}}), false),
            ],
        );
    }

    #[test]
    fn body_paths() {
        // Arrays of objects along the path are searched element by element.
        check_body(
            json!({"a": {"b": ["x"]}}),
            &[
                (json!({"a": [{"b": "y"}, {"b": "x"}]}), true),
                (json!({"a": [{"b": "y"}, {"c": "x"}]}), false),
            ],
        );
        // Dotted keys match nested paths either way round, as AWS flattens both sides.
        check_body(json!({"a.b": ["x"]}), &[(json!({"a": {"b": "x"}}), true)]);
        check_body(
            json!({"a": {"b": ["x"]}}),
            &[(json!({"a.b": "x"}), true), (json!({"ab": "x"}), false)],
        );
        // $or at a nested level keeps the nesting.
        check_body(
            json!({"a": {"$or": [{"b": ["1"]}, {"c": ["2"]}]}}),
            &[
                (json!({"a": {"c": "2"}}), true),
                (json!({"a": {"b": "1"}}), true),
                (json!({"c": "2"}), false),
            ],
        );
        // Top-level $or ANDed with a sibling key, in body scope.
        check_body(
            json!({"kind": ["order"], "$or": [{"total": [{"numeric": [">", 10]}]}, {"vip": [true]}]}),
            &[
                (json!({"kind": "order", "total": 11}), true),
                (json!({"kind": "order", "total": 5, "vip": true}), true),
                (json!({"kind": "order", "total": 5}), false),
                (json!({"kind": "refund", "total": 50}), false),
            ],
        );
    }

    #[test]
    fn parse_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(["a"]), "must be a JSON object"),
            (json!("a"), "must be a JSON object"),
            (
                json!({"k": []}),
                r#"key "k": condition array must not be empty"#,
            ),
            (
                json!({"k": "abc"}),
                r#"key "k": must be an array of conditions"#,
            ),
            (
                json!({"k": 5}),
                r#"key "k": must be an array of conditions"#,
            ),
            (
                json!({"k": {}}),
                r#"key "k": nested policy object must not be empty"#,
            ),
            (
                json!({"k": [{"prefx": "a"}]}),
                r#"key "k": unrecognized match type "prefx""#,
            ),
            (json!({"k": [{}]}), "condition object must not be empty"),
            (
                json!({"k": [{"prefix": "a", "suffix": "b"}]}),
                "exactly one match type",
            ),
            (json!({"k": [["a"]]}), "nested array"),
            (
                json!({"k": [{"prefix": 5}]}),
                "prefix match pattern must be a string",
            ),
            (
                json!({"k": [{"suffix": null}]}),
                "suffix match pattern must be a string",
            ),
            (
                json!({"k": [{"equals-ignore-case": []}]}),
                "must be a string",
            ),
            (
                json!({"k": [{"exists": "yes"}]}),
                "exists must be true or false",
            ),
            (
                json!({"price": [{"numeric": [">"]}]}),
                r#"key "price": numeric range needs an operator followed by a number"#,
            ),
            (
                json!({"p": [{"numeric": []}]}),
                "needs an operator followed by a number",
            ),
            (
                json!({"p": [{"numeric": [5, ">"]}]}),
                "needs an operator followed by a number",
            ),
            (
                json!({"p": [{"numeric": [">", "5"]}]}),
                "needs an operator followed by a number",
            ),
            (
                json!({"p": [{"numeric": [">", 0, "<"]}]}),
                "needs an operator followed by a number",
            ),
            (json!({"p": [{"numeric": 5}]}), "numeric needs an array"),
            (
                json!({"p": [{"numeric": ["!=", 5]}]}),
                r#"unrecognized numeric operator "!=""#,
            ),
            (json!({"p": [{"numeric": ["<", 5, ">", 1]}]}), "lower bound"),
            (
                json!({"p": [{"numeric": ["=", 5, "<", 10]}]}),
                "lower bound",
            ),
            (
                json!({"p": [{"numeric": [">", 10, "<", 5]}]}),
                "bottom must be less than its top",
            ),
            (
                json!({"p": [{"numeric": [">", 5, "<", 5]}]}),
                "bottom must be less than its top",
            ),
            (
                json!({"p": [{"numeric": [">", 0, "<", 5, "<", 6]}]}),
                "too many terms",
            ),
            (
                json!({"k": [{"anything-but": []}]}),
                "anything-but list must not be empty",
            ),
            (
                json!({"k": [{"anything-but": [true]}]}),
                "must be strings or numbers",
            ),
            (json!({"k": [{"anything-but": null}]}), "anything-but needs"),
            (
                json!({"k": [{"anything-but": {"wildcard": "*x"}}]}),
                r#"unsupported anything-but pattern "wildcard""#,
            ),
            (
                json!({"k": [{"anything-but": {"prefix": 1}}]}),
                "anything-but prefix match pattern must be a string",
            ),
            (
                json!({"k": [{"anything-but": {}}]}),
                "exactly one of prefix",
            ),
            (json!({"k": [{"cidr": "10.0.0.0"}]}), "one '/' required"),
            (
                json!({"k": [{"cidr": "10.0.0.0/x"}]}),
                "mask bits must be an integer",
            ),
            (json!({"k": [{"cidr": "10.0.0.0/33"}]}), "at most 32"),
            (json!({"k": [{"cidr": "10.0.0/8"}]}), "not an IP address"),
            (
                json!({"$or": [{"a": ["x"]}]}),
                "$or needs at least two policy objects",
            ),
            (json!({"$or": [{"a": ["x"]}, {}]}), "non-empty object"),
            (
                json!({"$or": [{"a": []}, {"b": ["x"]}]}),
                r#"key "a": condition array must not"#,
            ),
            (
                json!({"a": {"b": [{"nope": 1}]}}),
                r#"key "a.b": unrecognized match type "nope""#,
            ),
        ];
        for (p, expected) in cases {
            match FilterPolicy::parse(&p) {
                Ok(parsed) => panic!("policy {p} should not parse, got {parsed:?}"),
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        message.contains(expected),
                        "policy {p}: error {message:?} should contain {expected:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_operator_is_a_typed_error() {
        match FilterPolicy::parse(&json!({"k": [{"prefx": "a"}]})) {
            Err(FilterError::UnknownOperator { key, operator }) => {
                assert_eq!(key, "k");
                assert_eq!(operator, "prefx");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parse_str_and_to_json() {
        let text = r#"{"iniesta_pass": [{"prefix": "Order."}, "hello.iniesta"]}"#;
        let p = match FilterPolicy::parse_str(text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            p.to_json(),
            json!({"iniesta_pass": [{"prefix": "Order."}, "hello.iniesta"]})
        );
        assert!(matches!(
            FilterPolicy::parse_str("{not json"),
            Err(FilterError::Json(_))
        ));
        assert!(matches!(
            FilterPolicy::parse_str("[]"),
            Err(FilterError::NotAnObject { found: "an array" })
        ));
    }

    #[test]
    fn iniesta_policy_shape_and_matching() {
        let filters = vec!["Order.*".to_string(), "hello.iniesta".to_string()];
        let value = iniesta_policy("iniesta_pass", &filters);
        assert_eq!(
            value,
            json!({"iniesta_pass": [{"prefix": "Order."}, "hello.iniesta"]})
        );
        let p = policy(value);
        let pass = |v: &str| attrs(&[("iniesta_pass", s(v)), ("version", n("1"))]);
        assert!(p.matches_attributes(&pass("Order.created.orders")));
        assert!(p.matches_attributes(&pass("hello.iniesta")));
        assert!(!p.matches_attributes(&pass("hello.iniesta2")));
        assert!(!p.matches_attributes(&pass("OrderX.created")));
        assert!(!p.matches_attributes(&attrs(&[("version", n("1"))])));

        assert_eq!(
            iniesta_policy("k", &["*".to_string(), "a*".to_string()]),
            json!({"k": ["*", "a*"]})
        );
    }

    #[test]
    fn names_the_python_builder_refuses() {
        let names: Vec<String> = [
            "Order.*",
            "hello.iniesta",
            "Order.Created.shop",
            "Cart.*.eu",
            "single",
            "a.b.*",
            "*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            python_unbuildable(&names),
            vec!["Order.Created.shop", "Cart.*.eu", "single", "a.b.*", "*"]
        );
    }

    #[test]
    fn scope_parse() {
        assert_eq!(
            Scope::parse("MessageAttributes").ok(),
            Some(Scope::MessageAttributes)
        );
        assert_eq!(Scope::parse("MessageBody").ok(), Some(Scope::MessageBody));
        assert_eq!(Scope::parse("messagebody").ok(), Some(Scope::MessageBody));
        assert_eq!(Scope::default(), Scope::MessageAttributes);
        assert_eq!(Scope::MessageBody.to_string(), "MessageBody");
        match Scope::parse("Body") {
            Err(e @ FilterError::UnknownScope(_)) => assert!(e.to_string().contains("\"Body\"")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
