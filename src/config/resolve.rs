//! From raw text (flag, else environment, else default) to typed values, with the error
//! messages users see. Every message names the flag and the environment variable; values are
//! echoed only when they cannot hold a secret, and URLs only with their password hidden.

use std::net::SocketAddr;
use std::time::Duration;

use super::cli::{opt, OptDef, Range};
use super::redact::{redact_url, Secret, SecretUrl};
use super::RunOptions;
use crate::pg::{PgConfig, PgConfigError};
use crate::resp::{Protocol, RedisMode, RedisUrl};
use crate::tls::{PemPath, TlsFiles};

/// The Redis connection options every command that talks to Redis takes (the workload,
/// `verify`, `bench-redis`), raw. Built with [`redis_flags!`] from any of their CLI structs.
pub(crate) struct RedisFlags {
    pub url: Option<String>,
    pub password_file: Option<String>,
    pub protocol: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// `RedisFlags` from a CLI struct that has the `redis_*` connection fields.
macro_rules! redis_flags {
    ($c:expr) => {
        $crate::config::resolve::RedisFlags {
            url: $c.redis_url,
            password_file: $c.redis_password_file,
            protocol: $c.redis_protocol,
            ca_file: $c.redis_ca_file,
            client_cert: $c.redis_client_cert,
            client_key: $c.redis_client_key,
        }
    };
}
pub(crate) use redis_flags;

/// The PostgreSQL connection options of the workload and `verify`, raw. Built with
/// [`database_flags!`].
pub(crate) struct DatabaseFlags {
    pub url: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
}

/// `DatabaseFlags` from a CLI struct that has the `database_*` connection fields.
macro_rules! database_flags {
    ($c:expr) => {
        $crate::config::resolve::DatabaseFlags {
            url: $c.database_url,
            password: $c.database_password,
            password_file: $c.database_password_file,
            ca_file: $c.database_ca_file,
        }
    };
}
pub(crate) use database_flags;

/// The options of a run that the workload and `bench-redis` share, raw. Built with
/// [`run_flags!`]; resolved once, by [`Resolver::run_options`].
pub(crate) struct RunFlags {
    pub duration: Option<String>,
    pub shards: Option<String>,
    pub seed: Option<String>,
    pub zipf_exponent: Option<String>,
    pub command_timeout_ms: Option<String>,
    pub max_reply_bytes: Option<String>,
    pub no_pin: bool,
}

/// `RunFlags` from a CLI struct that has those fields.
macro_rules! run_flags {
    ($c:expr) => {
        $crate::config::resolve::RunFlags {
            duration: $c.duration,
            shards: $c.shards,
            seed: $c.seed,
            zipf_exponent: $c.zipf_exponent,
            command_timeout_ms: $c.command_timeout_ms,
            max_reply_bytes: $c.max_reply_bytes,
            no_pin: $c.no_pin,
        }
    };
}
pub(crate) use run_flags;

/// Looks options up: the flag's value if given, else the environment, else the default.
pub(crate) struct Resolver<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    /// The raw text of an option. An empty environment variable counts as unset, so
    /// `FOO=` in a compose file or env file means "use the default".
    pub fn raw(&self, def: &OptDef, flag: Option<String>) -> Option<String> {
        flag.or_else(|| (self.env)(def.env).filter(|v| !v.is_empty()))
            .or_else(|| def.default.map(str::to_string))
    }

    /// An integer in the option's range, within what `T` holds.
    pub fn uint<T: UInt>(&self, def: &OptDef, flag: Option<String>) -> Result<T, String> {
        let text = required(def, self.raw(def, flag))?;
        parse_uint::<T>(def, &text).map(T::from_u64)
    }

    /// Like [`Resolver::uint`] for an option without a default.
    pub fn opt_uint(&self, def: &OptDef, flag: Option<String>) -> Result<Option<u64>, String> {
        self.raw(def, flag)
            .map(|text| parse_uint::<u64>(def, &text))
            .transpose()
    }

    /// The options every run shares (see [`RunFlags`]).
    pub fn run_options(&self, f: RunFlags) -> Result<RunOptions, String> {
        Ok(RunOptions {
            duration: Some(self.seconds(&opt::duration, f.duration)?).filter(|d| !d.is_zero()),
            shards: self.uint(&opt::shards, f.shards)?,
            seed: self.opt_uint(&opt::seed, f.seed)?,
            zipf_exponent: self.number(&opt::zipf_exponent, f.zipf_exponent)?,
            command_timeout: self.millis(&opt::command_timeout_ms, f.command_timeout_ms)?,
            max_reply_bytes: self.uint(&opt::max_reply_bytes, f.max_reply_bytes)?,
            pin: !self.switch(&opt::no_pin, f.no_pin)?,
        })
    }

    /// Items of a list option: the flag's values (given once or more) if any, else the
    /// environment; each split on commas, blanks trimmed and dropped.
    pub fn list(&self, def: &OptDef, flag: Vec<String>) -> Vec<String> {
        let raw = if flag.is_empty() {
            self.raw(def, None).into_iter().collect()
        } else {
            flag
        };
        raw.iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Run ids (non-negative integers), from a list option.
    pub fn run_ids(&self, def: &OptDef, flag: Vec<String>) -> Result<Vec<i64>, String> {
        let mut ids = Vec::new();
        for item in self.list(def, flag) {
            match item.parse::<i64>() {
                Ok(id) if id >= 0 => ids.push(id),
                _ => {
                    return Err(invalid(
                        def,
                        &item,
                        "expected a run id (a non-negative integer; several: repeat the flag or separate them with commas)",
                    ))
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// A run name: 1 to 100 letters, digits, `.`, `_`, `-` (it is a label in reports and a key
    /// in PostgreSQL); `None` when not set.
    pub fn run_name(&self, def: &OptDef, flag: Option<String>) -> Result<Option<String>, String> {
        let Some(name) = self.raw(def, flag) else {
            return Ok(None);
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > 100 || !name.chars().all(ok) {
            return Err(format!(
                "invalid value '{}' for {}: expected 1 to 100 letters, digits, '.', '_' or '-'",
                name.escape_debug(),
                def.label()
            ));
        }
        Ok(Some(name))
    }

    /// This instance's index: INSTANCE_INDEX (flag or environment) when set; else, for a run
    /// of several instances, the first of [`super::INDEX_ENV_VARS`] that is set (the host
    /// name only when it ends in `-N`); else 0.
    pub fn instance_index(&self, flag: Option<String>, count: u32) -> Result<u32, String> {
        let def = &opt::instance_index;
        let given = flag.is_some() || (self.env)(def.env).is_some_and(|v| !v.is_empty());
        if given || count <= 1 {
            return self.uint(def, flag);
        }
        let [job, pod, host] = super::INDEX_ENV_VARS;
        for var in [job, pod] {
            if let Some(v) = (self.env)(var).filter(|v| !v.is_empty()) {
                return v.trim().parse().map_err(|_| {
                    format!(
                        "invalid value '{}' for {var} (the instance index): expected an integer",
                        v.escape_debug()
                    )
                });
            }
        }
        // A host name without a trailing -N: index 0, as before these sources existed (a
        // named run's start barrier then names the index no instance took).
        Ok((self.env)(host)
            .and_then(|h| h.trim().rsplit_once('-')?.1.parse::<u32>().ok())
            .unwrap_or(0))
    }

    /// A point in time as unix seconds: RFC 3339 or unix seconds; `None` when not set.
    pub fn instant(&self, def: &OptDef, flag: Option<String>) -> Result<Option<i64>, String> {
        self.raw(def, flag)
            .map(|text| {
                crate::workload::time::parse_instant(&text).ok_or_else(|| {
                    invalid(
                        def,
                        text.trim(),
                        "expected an RFC 3339 time such as 2026-11-25T17:00:00Z or unix seconds",
                    )
                })
            })
            .transpose()
    }

    /// Whole seconds in the option's range.
    pub fn seconds(&self, def: &OptDef, flag: Option<String>) -> Result<Duration, String> {
        self.uint(def, flag).map(Duration::from_secs)
    }

    /// Whole milliseconds in the option's range.
    pub fn millis(&self, def: &OptDef, flag: Option<String>) -> Result<Duration, String> {
        self.uint(def, flag).map(Duration::from_millis)
    }

    /// A finite number in the option's range.
    pub fn number(&self, def: &OptDef, flag: Option<String>) -> Result<f64, String> {
        let text = required(def, self.raw(def, flag))?;
        let text = text.trim();
        let v: f64 = match text.parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => return Err(invalid(def, text, "expected a number")),
        };
        let Range {
            min,
            min_excluded,
            max,
        } = def.range;
        let (min, max) = (min as f64, max.map_or(f64::INFINITY, |m| m as f64));
        let above_min = if min_excluded { v > min } else { v >= min };
        if above_min && v <= max {
            return Ok(v);
        }
        let rule = match (min_excluded, def.range.max) {
            (true, Some(max)) => format!("greater than {min} and at most {max}"),
            (true, None) => format!("greater than {min}"),
            (false, Some(max)) => format!("between {min} and {max}"),
            (false, None) => format!("at least {min}"),
        };
        Err(format!(
            "{} must be {rule}, got {}",
            def.label(),
            shown(text)
        ))
    }

    /// One of a fixed set of words (case-insensitive).
    pub fn choice<T: Copy>(
        &self,
        def: &OptDef,
        flag: Option<String>,
        choices: &[(&str, T)],
    ) -> Result<T, String> {
        let text = required(def, self.raw(def, flag))?;
        let text = text.trim();
        if let Some((_, v)) = choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
        {
            return Ok(*v);
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("'{name}'"))
            .collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(invalid(def, text, &format!("expected {expected}")))
    }

    /// A switch that the environment can also turn on: the flag wins when present.
    pub fn switch(&self, def: &OptDef, flag: bool) -> Result<bool, String> {
        if flag {
            return Ok(true);
        }
        let text = required(def, self.raw(def, None))?;
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err(invalid(def, text, "expected 1, 0, true, false, yes or no")),
        }
    }

    pub fn socket_addr(&self, def: &OptDef, flag: Option<String>) -> Result<SocketAddr, String> {
        let text = required(def, self.raw(def, flag))?;
        let text = text.trim();
        text.parse().map_err(|_| {
            invalid(
                def,
                text,
                "expected an IP address and port such as 0.0.0.0:3000",
            )
        })
    }

    /// A `postgres://` or `postgresql://` URL with a host, kept as given.
    pub fn postgres_url(&self, def: &OptDef, flag: Option<String>) -> Result<String, String> {
        let text = required(def, self.raw(def, flag))?;
        let text = text.trim();
        check_url(text, &["postgres", "postgresql"])
            .map(|()| text.to_string())
            .map_err(|why| invalid_url(&def.label(), text, &why))
    }

    /// An `http://` or `https://` URL with a host, kept as given.
    pub fn http_url(&self, def: &OptDef, flag: Option<String>) -> Result<SecretUrl, String> {
        let text = required(def, self.raw(def, flag))?;
        let text = text.trim();
        check_url(text, &["http", "https"])
            .map(|()| SecretUrl::new(text))
            .map_err(|why| invalid_url(&def.label(), text, &why))
    }

    /// The Redis URLs (several only in cluster mode: seed nodes, comma separated), each with
    /// the password of the password file when one is given.
    pub fn redis_targets(
        &self,
        url: (&OptDef, Option<String>),
        password_file: (&OptDef, Option<String>),
    ) -> Result<Vec<RedisUrl>, String> {
        let text = required(url.0, self.raw(url.0, url.1))?;
        let label = url.0.label();
        let mut targets = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(invalid_url(
                    &label,
                    &text,
                    "empty item in the list of seed nodes",
                ));
            }
            targets.push(redis_url(&label, item)?);
        }
        let pw = self.secret_file(password_file.0, password_file.1)?;
        Ok(targets
            .into_iter()
            .map(|t| match &pw {
                Some(pw) => t.with_password(pw.clone()),
                None => t,
            })
            .collect())
    }

    /// `--redis-mode` and the seed URLs it allows: several only with `cluster`.
    pub fn redis_mode(
        &self,
        flag: Option<String>,
        seeds: &[RedisUrl],
    ) -> Result<RedisMode, String> {
        let mode = self.choice(&opt::redis_mode, flag, &RedisMode::CHOICES)?;
        if mode == RedisMode::Cluster && seeds.iter().any(|s| s.db != 0) {
            return Err(format!(
                "{} names a database, but a Redis Cluster has only database 0: drop the /N \
                 from the URL, or set {} to 'standalone'",
                opt::redis_url.label(),
                opt::redis_mode.label()
            ));
        }
        if seeds.len() > 1 && mode != RedisMode::Cluster {
            return Err(format!(
                "{} lists {} nodes, but several seed nodes are only for a Redis Cluster: set {} to \
                 'cluster', or give one URL",
                opt::redis_url.label(),
                seeds.len(),
                opt::redis_mode.label()
            ));
        }
        Ok(mode)
    }

    /// Where and how to connect to Redis, with every URL of the list.
    pub fn redis_endpoints(
        &self,
        f: RedisFlags,
    ) -> Result<(Vec<RedisUrl>, Protocol, TlsFiles), String> {
        Ok((
            self.redis_targets(
                (&opt::redis_url, f.url),
                (&opt::redis_password_file, f.password_file),
            )?,
            self.choice(&opt::redis_protocol, f.protocol, &Protocol::CHOICES)?,
            self.tls_files(
                (&opt::redis_ca_file, f.ca_file),
                (&opt::redis_client_cert, f.client_cert),
                (&opt::redis_client_key, f.client_key),
            )?,
        ))
    }

    /// CA bundle and client certificate files, read and checked now.
    pub fn tls_files(
        &self,
        ca: (&OptDef, Option<String>),
        cert: (&OptDef, Option<String>),
        key: (&OptDef, Option<String>),
    ) -> Result<TlsFiles, String> {
        let path = |(def, flag): (&OptDef, Option<String>)| {
            self.raw(def, flag).map(|p| PemPath::new(def.label(), p))
        };
        let names = [cert.0.label(), key.0.label()];
        TlsFiles::load(path(ca), path(cert), path(key), [&names[0], &names[1]])
    }

    /// The secret in the file an option names (see [`read_secret_file`]).
    pub fn secret_file(
        &self,
        def: &OptDef,
        flag: Option<String>,
    ) -> Result<Option<String>, String> {
        self.raw(def, flag)
            .map(|path| read_secret_file(&def.label(), &path))
            .transpose()
    }

    /// A password given as a value: never echoed.
    pub fn password(&self, def: &OptDef, flag: Option<String>) -> Result<Option<String>, String> {
        match self.raw(def, flag) {
            Some(p) if p.is_empty() => Err(format!("{} must not be empty", def.label())),
            other => Ok(other),
        }
    }

    /// The PostgreSQL URL (kept as given) and what it resolves to with the password options
    /// (at most one of value and file) and the CA file, whose files are read now.
    pub fn postgres(&self, f: DatabaseFlags) -> Result<(SecretUrl, PgConfig), String> {
        let text = self.postgres_url(&opt::database_url, f.url)?;
        let pw = self.password(&opt::database_password, f.password)?;
        let pw_file = self.secret_file(&opt::database_password_file, f.password_file)?;
        let pw = match (pw, pw_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{} and {} are both set: give one",
                    opt::database_password.label(),
                    opt::database_password_file.label()
                ))
            }
            (a, b) => a.or(b),
        };
        let ca = self
            .raw(&opt::database_ca_file, f.ca_file)
            .map(|p| PemPath::new(opt::database_ca_file.label(), p));
        let label = opt::database_url.label();
        match PgConfig::parse(&text, &label, pw.as_deref(), ca) {
            Ok(cfg) => Ok((SecretUrl::new(text), cfg)),
            Err(PgConfigError::Url(why)) => Err(invalid_url(&label, &text, &why)),
            Err(PgConfigError::Files(why)) => Err(why),
        }
    }

    /// A secret: never echoed. It travels in an HTTP header, so it must be visible ASCII.
    /// The admin token: ADMIN_TOKEN, or the content of ADMIN_TOKEN_FILE (at most one of them).
    pub fn token(
        &self,
        flag: Option<String>,
        file_flag: Option<String>,
    ) -> Result<Option<Secret>, String> {
        let (def, file) = (&opt::admin_token, &opt::admin_token_file);
        let value = match (self.raw(def, flag), self.secret_file(file, file_flag)?) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{} and {} are both set: give one",
                    def.label(),
                    file.label()
                ))
            }
            (v, None) => v,
            (None, f) => f,
        };
        match value {
            None => Ok(None),
            Some(t) if t.is_empty() => Err(format!("{} must not be empty", def.label())),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => Err(format!(
                "{} must be printable ASCII without spaces (value not shown)",
                def.label()
            )),
            Some(t) => Ok(Some(Secret::new(t))),
        }
    }
}

/// Parses a Redis URL for the option named `label` (`--to` has no table entry).
pub(crate) fn redis_url(label: &str, text: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(text).map_err(|why| invalid_url(label, text, &why))
}

/// A password kept in a file (a mounted secret): the whole content as UTF-8, less one
/// trailing newline (`\n` or `\r\n`), which editors and `echo` add. Errors name the option
/// (`label`) and the file, never the content.
pub(crate) fn read_secret_file(label: &str, path: &str) -> Result<String, String> {
    let shown_path = shown(path);
    let bytes =
        std::fs::read(path).map_err(|e| format!("{label}: cannot read '{shown_path}': {e}"))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("{label}: '{shown_path}' is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{label}: '{shown_path}' is empty"));
    }
    Ok(text)
}

/// The unsigned integer types options resolve to: their maximum caps an open range.
pub(crate) trait UInt {
    const MAX: u64;
    fn from_u64(v: u64) -> Self;
}

macro_rules! uint_types {
    ($($t:ty),*) => {$(
        impl UInt for $t {
            const MAX: u64 = <$t>::MAX as u64;
            /// Only called with a value checked against `MAX`.
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
uint_types!(u32, u64, usize);

fn parse_uint<T: UInt>(def: &OptDef, text: &str) -> Result<u64, String> {
    let (min, max) = (def.range.min, def.range.max.unwrap_or(T::MAX).min(T::MAX));
    let text = text.trim();
    let v = match text.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => return Ok(v),
        Ok(v) => Some(v),
        // All digits but too big for u64: out of range rather than malformed.
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => None,
        Err(_) => return Err(invalid(def, text, "expected a non-negative integer")),
    };
    // A maximum that is just the field type's limit is not a rule worth stating unless hit.
    let type_limit = max == T::MAX;
    let rule = match v {
        Some(v) if type_limit && v < min => format!("at least {min}"),
        _ if type_limit || min == 0 => format!("at most {max}"),
        _ => format!("between {min} and {max}"),
    };
    Err(format!(
        "{} must be {rule}, got {}",
        def.label(),
        shown(text)
    ))
}

/// Checks scheme and host; `Err` holds the reason.
fn check_url(text: &str, schemes: &[&str]) -> Result<(), String> {
    let u = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !schemes.contains(&u.scheme()) {
        let expected: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(format!(
            "unsupported scheme '{}' (expected {})",
            shown(u.scheme()),
            expected.join(" or ")
        ));
    }
    match u.host_str() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("missing host".to_string()),
    }
}

fn required(def: &OptDef, raw: Option<String>) -> Result<String, String> {
    raw.ok_or_else(|| format!("{} is required", def.label()))
}

fn invalid(def: &OptDef, text: &str, expected: &str) -> String {
    format!(
        "invalid value '{}' for {}: {expected}",
        shown(text),
        def.label()
    )
}

fn invalid_url(label: &str, text: &str, why: &str) -> String {
    format!("invalid {label} '{}': {why}", shown(&redact_url(text)))
}

/// A user's value made safe to print: control characters escaped, length capped.
fn shown(text: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = text.escape_debug().collect();
    match escaped.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped,
    }
}
