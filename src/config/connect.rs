//! The options that say where and how to connect: Redis (URLs, mode, protocol, TLS files, the
//! password file), PostgreSQL (URL, password, CA file) and the admin token. Files are read
//! now, so a bad one stops the program before any connection; no message shows a secret.

use super::cli::{opt, OptDef};
use super::redact::{Secret, SecretUrl};
use super::resolve::{invalid_url, required, shown, Resolver};
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
        $crate::config::connect::RedisFlags {
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
        $crate::config::connect::DatabaseFlags {
            url: $c.database_url,
            password: $c.database_password,
            password_file: $c.database_password_file,
            ca_file: $c.database_ca_file,
        }
    };
}
pub(crate) use database_flags;

impl Resolver<'_> {
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
