//! What never leaves the host in an error report: values under secret-looking names
//! (`password`, `token`, `api_key`, `authorization`, …, plus `errors.sentry.drop_keys`), and
//! secret-looking text wherever it appears (credentials in URLs, AWS access key ids, bearer
//! tokens, JWTs, `password=…` pairs). Like microcosm-pubsub's default `before_send`: strict by
//! default, replacing what it removes with `[Filtered]` so a reader sees that something was
//! there.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// What replaces a removed value.
pub const FILTERED: &str = "[Filtered]";

/// Parts of a key name (compared without case, `-`, `_` or `.`) that mark its value secret.
const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "cookie",
    "session",
    "signature",
    "dsn",
    "creditcard",
    "cardnumber",
    "cvv",
];

/// A built-in pattern (the unit tests compile every one).
pub(super) fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid built-in pattern")
}

/// Secret-looking text replaced wherever it appears, with what replaces it.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    vec![
        // scheme://user:password@host → scheme://[Filtered]@host
        (
            regex(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"),
            "${1}[Filtered]@",
        ),
        // AWS access key ids
        (
            regex(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"),
            FILTERED,
        ),
        // JWTs
        (
            regex(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
            FILTERED,
        ),
    ]
});

/// Authorization: Bearer …, Basic …: only a token-shaped value (a digit in it, or 20
/// characters and more) is filtered, so `basic validation failed` stays as it is.
fn scheme_tokens(text: &str) -> Cow<'_, str> {
    static SCHEME: LazyLock<Regex> =
        LazyLock::new(|| regex(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/=-]{8,})"));
    let replaced = SCHEME.replace_all(text, |c: &regex::Captures<'_>| {
        let token = &c[3];
        if token.len() >= 20 || token.bytes().any(|b| b.is_ascii_digit()) {
            format!("{}{}{FILTERED}", &c[1], &c[2])
        } else {
            c[0].to_string()
        }
    });
    match replaced {
        Cow::Owned(replaced) if replaced != text => Cow::Owned(replaced),
        _ => Cow::Borrowed(text),
    }
}

/// The names [`Scrubber`] always filters, and those a config adds.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// `drop_keys`, normalised.
    extra: Vec<String>,
}

/// `auth` anywhere in a normalised name (`xauth`, `basicauth`, `authheader`, `authorization`),
/// except as `author…` (`author`, `authored_at`, `authority`).
fn has_auth(key: &str) -> bool {
    key.match_indices("auth").any(|(i, _)| {
        let rest = &key[i + "auth".len()..];
        !rest.starts_with("or") || rest.starts_with("orization")
    })
}

fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

impl Scrubber {
    /// A scrubber that also filters the names in `drop_keys` (without case, `-`, `_`, `.`).
    pub fn new(drop_keys: &[String]) -> Scrubber {
        Scrubber {
            extra: drop_keys.iter().map(|k| normalise(k)).collect(),
        }
    }

    /// Whether a value under `key` must not be sent.
    pub fn is_secret_key(&self, key: &str) -> bool {
        let key = normalise(key);
        SECRET_NAME_PARTS.iter().any(|part| key.contains(part))
            || has_auth(&key)
            || self.extra.contains(&key)
    }

    /// `text` with secret-looking parts replaced by `[Filtered]`.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = scheme_tokens(text);
        for (pattern, replacement) in PATTERNS.iter() {
            if let Cow::Owned(replaced) = pattern.replace_all(&out, *replacement) {
                out = Cow::Owned(replaced);
            }
        }
        match self.secret_pairs(&out) {
            Some(scrubbed) => Cow::Owned(scrubbed),
            None => out,
        }
    }

    /// NAME=value, "NAME": "value", NAME: Basic value: `text` with the value filtered (its
    /// scheme word too) where NAME is secret by the same rules as member names (drop_keys
    /// too); `None` when there is none. Names and separators are found first and the value
    /// read after them, so a value never swallows the next pair's name.
    fn secret_pairs(&self, text: &str) -> Option<String> {
        static NAME: LazyLock<Regex> =
            LazyLock::new(|| regex(r#"(?i)\b([a-z0-9_.-]+)("?\s*[:=]\s*"?)"#));
        static VALUE: LazyLock<Regex> =
            LazyLock::new(|| regex(r#"^(?i)(?:(?:basic|bearer|digest|token)\s+)?[^\s"',;&]+"#));
        let mut scrubbed = String::new();
        let mut copied = 0;
        for pair in NAME.captures_iter(text) {
            let (Some(whole), Some(key)) = (pair.get(0), pair.get(1)) else {
                continue;
            };
            if whole.start() < copied || !self.is_secret_key(key.as_str()) {
                continue;
            }
            if let Some(v) = VALUE.find(&text[whole.end()..]) {
                scrubbed.push_str(&text[copied..whole.end()]);
                scrubbed.push_str(FILTERED);
                copied = whole.end() + v.end();
            }
        }
        (copied > 0).then(|| {
            scrubbed.push_str(&text[copied..]);
            scrubbed
        })
    }

    /// A JSON value with every secret-named member replaced by `[Filtered]` and every string
    /// scrubbed as [`Scrubber::text`], at any depth.
    pub fn json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(members) => self.members(members.iter_mut()),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::String(s) => self.string(s),
            _ => {}
        }
    }

    /// Named members (a JSON object's, an event's extras or contexts): a secret-named one
    /// becomes `[Filtered]`, the others are scrubbed as [`Scrubber::json`].
    pub fn members<'a>(
        &self,
        members: impl IntoIterator<Item = (&'a String, &'a mut serde_json::Value)>,
    ) {
        for (key, member) in members {
            if self.is_secret_key(key) {
                *member = serde_json::Value::String(FILTERED.into());
            } else {
                self.json(member);
            }
        }
    }

    /// `text` scrubbed in place, as [`Scrubber::text`].
    pub fn string(&self, text: &mut String) {
        if let Cow::Owned(scrubbed) = self.text(text) {
            *text = scrubbed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised_without_case_or_separators() {
        let s = Scrubber::new(&["tenant-ssn-ish".into(), "X-Internal".into()]);
        for key in [
            "password",
            "DB_PASSWORD",
            "api-key",
            "ApiKey",
            "x-api-key",
            "Authorization",
            "aws_secret_access_key",
            "session_id",
            "refresh.token",
            "x_internal",
            "TENANT_SSN_ISH",
        ] {
            assert!(s.is_secret_key(key), "{key}");
        }
        for key in [
            "auth",
            "X-Auth-Key",
            "X-Auth",
            "basic_auth",
            "auth_header",
            "oauth",
        ] {
            assert!(s.is_secret_key(key), "{key}");
        }
        for key in [
            "event",
            "order_id",
            "tenant",
            "customer",
            "media_type",
            "author",
            "authored_at",
        ] {
            assert!(!s.is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn secret_text_is_filtered_and_the_rest_kept() {
        let s = Scrubber::default();
        assert_eq!(
            s.text("connect redis://:hunter2@cache:6379/1 failed"),
            "connect redis://[Filtered]@cache:6379/1 failed"
        );
        assert_eq!(
            s.text("key AKIAABCDEFGHIJKLMNOP refused"),
            "key [Filtered] refused"
        );
        assert_eq!(
            s.text("sent Bearer abc.def-ghi_jkl123 upstream"),
            "sent Bearer [Filtered] upstream"
        );
        // The header's name marks its value secret too: nothing of the token is left.
        assert_eq!(
            s.text("sent Authorization: Bearer abc.def-ghi_jkl123"),
            "sent Authorization: [Filtered]"
        );
        // A short Basic value with no digit is a credential after a secret name.
        assert_eq!(
            s.text(r#"request failed: "authorization": "Basic dXNlcjpwYXNz""#),
            r#"request failed: "authorization": "[Filtered]""#
        );
        assert_eq!(
            s.text("X-Auth: s3cr3t, basic_auth=u:p"),
            "X-Auth: [Filtered], basic_auth=[Filtered]"
        );
        assert_eq!(
            s.text("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature"),
            "token [Filtered]"
        );
        assert_eq!(
            s.text("bad config password=s3cret; user=bob"),
            "bad config password=[Filtered]; user=bob"
        );
        assert_eq!(
            s.text(r#"{"api_key": "k-123", "n": 1}"#),
            r#"{"api_key": "[Filtered]", "n": 1}"#
        );
        assert_eq!(
            s.text("order 42 failed: missing field `id`"),
            "order 42 failed: missing field `id`"
        );
        assert!(matches!(s.text("plain"), Cow::Borrowed(_)));
        // Ordinary words after `basic`/`bearer` and names that merely start with `auth` stay.
        assert!(matches!(
            s.text("basic validation failed for the bearer instrument"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            s.text("author: bob, auth=abc123"),
            "author: bob, auth=[Filtered]"
        );
        assert_eq!(s.text("Basic dXNlcjpwYXNzd29yZA=="), "Basic [Filtered]");
    }

    #[test]
    fn json_members_are_filtered_at_any_depth() {
        let s = Scrubber::new(&["tenant".into()]);
        let mut v = serde_json::json!({
            "order": {"id": 7, "card": {"cvv": "123"}, "note": "pw at https://u:p@h/x"},
            "credentials": {"user": "u"},
            "tenant": "acme",
            "items": [{"token": "t"}, "ok"]
        });
        s.json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "order": {"id": 7, "card": {"cvv": FILTERED}, "note": "pw at https://[Filtered]@h/x"},
                "credentials": FILTERED,
                "tenant": FILTERED,
                "items": [{"token": FILTERED}, "ok"]
            })
        );
    }
}
