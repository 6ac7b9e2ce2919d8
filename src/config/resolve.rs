//! From raw text (flag, else environment, else default) to typed values, with the error
//! messages users see. Every message names the flag and the environment variable; values are
//! echoed only when they cannot hold a secret, and URLs only with their password hidden.

use std::net::SocketAddr;
use std::time::Duration;

use super::cli::{opt, OptDef, Range};
use super::redact::{redact_url, SecretUrl};
use super::RunOptions;

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

pub(super) fn required(def: &OptDef, raw: Option<String>) -> Result<String, String> {
    raw.ok_or_else(|| format!("{} is required", def.label()))
}

fn invalid(def: &OptDef, text: &str, expected: &str) -> String {
    format!(
        "invalid value '{}' for {}: {expected}",
        shown(text),
        def.label()
    )
}

pub(super) fn invalid_url(label: &str, text: &str, why: &str) -> String {
    format!("invalid {label} '{}': {why}", shown(&redact_url(text)))
}

/// A user's value made safe to print: control characters escaped, length capped.
pub(super) fn shown(text: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = text.escape_debug().collect();
    match escaped.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped,
    }
}
