//! Lock service URLs in logs and errors: the credentials masked. A module of its own, importing
//! nothing, so that config validation can mask a URL without depending on the lock runtime.

/// Replace the password (and user) of a URL with `***`, for logs and errors: in the authority
/// (`redis://user:pass@host`) and, for Unix sockets, in the query (`?user=..&pass=..`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    // Unix-socket URLs carry credentials in the query (`?user=..&pass=..`): keep only the
    // values known to be harmless.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, format!("#{f}")),
                None => (query, String::new()),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if !matches!(k, "db" | "protocol") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}
