//! Keeping secrets out of messages: URL passwords and the admin token.
//!
//! Redaction here works on raw text, not on parsed URLs, because it must also cover values
//! that failed to parse (those are the ones error messages echo).

/// `scheme://user:***@host/...`: the value with any password replaced by `***`.
///
/// Over-redacts rather than leaks: everything between `://` and the *last* `@` counts as
/// credentials (a password may hold an unencoded `/`, `#` or `@`), and query parameters
/// whose name suggests a secret (`password=`, `sslpassword=`, `token=`) are hidden too.
pub(crate) fn redact_url(s: &str) -> String {
    let mut out = s.to_string();
    if let Some((start, end)) = password_span(s) {
        out.replace_range(start..end, "***");
    }
    match out.find('?') {
        Some(q) => {
            let (head, query) = out.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{head}{}", query.join("&"))
        }
        None => out,
    }
}

/// The passwords `redact_url` would hide, for scrubbing them out of any other text.
pub(crate) fn url_secrets(s: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((start, end)) = password_span(s) {
        secrets.push(s[start..end].to_string());
    }
    if let Some((_, query)) = s.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if is_secret_key(k) {
                    secrets.push(v.to_string());
                }
            }
        }
    }
    secrets
}

/// Replaces every occurrence of each secret in `text` with `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret that contains a shorter one is still hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

/// Byte range of the password: after the first `:` of the user info, up to the last `@`.
fn password_span(s: &str) -> Option<(usize, usize)> {
    let auth = s.find("://").map_or(0, |i| i + 3);
    let at = auth + s[auth..].rfind('@')?;
    let colon = auth + s[auth..at].find(':')?;
    Some((colon + 1, at))
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|w| key.contains(w))
}
