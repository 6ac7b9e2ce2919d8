//! `redis://` / `rediss://` URLs: where to connect and how to authenticate.
//!
//! The password never leaves this type in clear text except through
//! [`RedisUrl::password`]; `Display` and [`RedisUrl::redacted`] hide it, so a URL can be
//! logged, exported as a metric label or shown in /health safely.

use std::fmt;

/// A parsed Redis endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    password: Option<String>,
    pub db: u32,
    pub tls: bool,
}

impl RedisUrl {
    /// Parses `redis://[user[:password]@]host[:port][/db]`.
    ///
    /// Errors are one-line messages fit for a user ("unsupported scheme 'http'").
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        let tls = match u.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "unsupported scheme '{other}' (expected redis:// or rediss://)"
                ))
            }
        };
        let host = match u.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err("missing host".to_string()),
        };
        let port = u.port().unwrap_or(6379);
        if port == 0 {
            return Err("port 0 is not a valid Redis port".to_string());
        }
        let decode = |v: &str| -> Result<String, String> {
            let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned().into_bytes())
                .unwrap_or_default();
            String::from_utf8(bytes).map_err(|_| "credentials are not UTF-8".to_string())
        };
        let username = if u.username().is_empty() {
            None
        } else {
            Some(decode(u.username())?)
        };
        let password = match u.password() {
            Some(p) => Some(decode(p)?),
            None => None,
        };
        let path = u.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse::<u32>()
                .map_err(|_| format!("database '{path}' is not a number"))?
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            username,
            password,
            db,
            tls,
        })
    }

    /// The password, for AUTH/HELLO only.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The same endpoint with `password` instead of the URL's (from a password file).
    pub fn with_password(mut self, password: String) -> RedisUrl {
        self.password = Some(password);
        self
    }

    /// The URL with its password, for handing to another process (never for display).
    pub fn to_full_string(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{auth}{host}:{}/{}", self.port, self.db)
    }

    /// `redis://user:***@host:port/db`: safe for logs, labels and reports.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, Some(_)) => ":***@".to_string(),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let db = if self.db == 0 {
            String::new()
        } else {
            format!("/{}", self.db)
        };
        format!("{scheme}://{auth}{host}:{}{db}", self.port)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_full_url() {
        let u = RedisUrl::parse("redis://alice:s%40cret@cache.example:6380/2").unwrap();
        assert_eq!(u.host, "cache.example");
        assert_eq!(u.port, 6380);
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password(), Some("s@cret"));
        assert_eq!(u.db, 2);
        assert!(!u.tls);
    }

    #[test]
    fn should_default_port_and_db() {
        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!((u.port, u.db, u.password()), (6379, 0, None));
    }

    #[test]
    fn should_redact_password_everywhere() {
        let u = RedisUrl::parse("rediss://:hunter2@h:1/3").unwrap();
        assert_eq!(u.redacted(), "rediss://:***@h:1/3");
        assert!(!format!("{u} {u:?}").contains("hunter2"));
    }

    #[test]
    fn should_round_trip_full_string() {
        let u = RedisUrl::parse("redis://al%20ice:p%40ss%3Aw@h:7/3").unwrap();
        assert_eq!(RedisUrl::parse(&u.to_full_string()).unwrap(), u);
    }

    #[test]
    fn should_reject_bad_urls() {
        for bad in [
            "http://h",
            "redis://",
            "redis://h/x",
            "nonsense",
            "redis://h:0",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
