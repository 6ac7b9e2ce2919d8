//! Keeping secrets out of messages and `Debug` output: URL passwords and the admin token
//! ([`Secret`] and [`SecretUrl`] hide themselves).
//!
//! Redaction here works on raw text, not on parsed URLs, because it must also cover values
//! that failed to parse (those are the ones error messages echo).

use std::fmt;

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

/// A credential (the admin token): `Debug` shows `"***"`, and there is no `Display`. The
/// value is read through `Deref` (`&str`), where it is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt("***", f)
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A URL kept as given, which may hold a password (`DATABASE_URL`, `ADMIN_URL`): `Debug` and
/// `Display` show it with the password hidden ([`redact_url`]); `Deref` gives the whole URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The whole URL, password included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl::new(url)
    }
}

impl PartialEq<&str> for SecretUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::ops::Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
