//! Keeping secrets out of messages and `Debug` output: URL passwords and the admin token.
//!
//! Redaction here works on raw text, not on parsed URLs, because it must also cover values
//! that failed to parse (those are the ones error messages echo).

use std::fmt;

use super::{Config, ReportArgs, SwitchArgs, VerifyArgs};

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

/// For `Debug` of values that may hold a password or token.
struct Hidden<'a>(&'a str);

impl fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(self.0))
    }
}

fn hidden_token(token: &Option<String>) -> Option<&'static str> {
    token.as_ref().map(|_| "***")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("events_per_second", &self.events_per_second)
            .field("queries_per_second", &self.queries_per_second)
            .field("organizations", &self.organizations)
            .field("users_per_org", &self.users_per_org)
            .field("cache_hit_target", &self.cache_hit_target)
            .field("max_workers", &self.max_workers)
            .field("redis_pool_size", &self.redis_pool_size)
            .field("cache_ttl", &self.cache_ttl)
            .field("warmup_interval", &self.warmup_interval)
            .field("time_buckets", &self.time_buckets)
            .field("redis_url", &self.redis_url)
            .field("redis_seeds", &self.redis_seeds)
            .field("redis_mode", &self.redis_mode)
            .field("redis_protocol", &self.redis_protocol)
            .field("redis_tls", &self.redis_tls)
            .field("database_url", &Hidden(&self.database_url))
            .field("database", &self.database)
            .field("bind_address", &self.bind_address)
            .field("shards", &self.shards)
            .field("duration", &self.duration)
            .field("seed", &self.seed)
            .field("log_format", &self.log_format)
            .field("admin_token", &hidden_token(&self.admin_token))
            .field("distribution", &self.distribution)
            .field("zipf_exponent", &self.zipf_exponent)
            .field("command_timeout", &self.command_timeout)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .field("db_batch_size", &self.db_batch_size)
            .field("db_buffer_rows", &self.db_buffer_rows)
            .field("db_timeout", &self.db_timeout)
            .field("db_read_timeout", &self.db_read_timeout)
            .field("progress_interval", &self.progress_interval)
            .field("pin", &self.pin)
            .field("instance_index", &self.instance_index)
            .field("instance_count", &self.instance_count)
            .finish()
    }
}

impl fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("redis_url", &self.redis_url)
            .field("redis_seeds", &self.redis_seeds)
            .field("redis_mode", &self.redis_mode)
            .field("redis_protocol", &self.redis_protocol)
            .field("redis_tls", &self.redis_tls)
            .field("database_url", &Hidden(&self.database_url))
            .field("database", &self.database)
            .field("json", &self.json)
            .field("runs", &self.runs)
            .field("since", &self.since)
            .finish()
    }
}

impl fmt::Debug for ReportArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportArgs")
            .field("admin_url", &Hidden(&self.admin_url))
            .field("json", &self.json)
            .finish()
    }
}

impl fmt::Debug for SwitchArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchArgs")
            .field("to", &self.to)
            .field("mode", &self.mode)
            .field("admin_url", &Hidden(&self.admin_url))
            .field("admin_token", &hidden_token(&self.admin_token))
            .field("wait", &self.wait)
            .finish()
    }
}
