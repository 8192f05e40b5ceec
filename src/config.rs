//! `proxy.yaml` (SPEC §2): typed and strict (unknown keys are errors),
//! `${NAME}` expanded from the environment (a missing variable is an error
//! that names it), relative paths taken relative to the file itself.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::diag::{self, Diagnostic, Pos};

/// The default `listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// The default `policies` path, relative to the config file.
pub const DEFAULT_POLICIES: &str = "policies";
/// The default upstream port.
pub const DEFAULT_UPSTREAM_PORT: u16 = 5432;
/// The default upstream user.
pub const DEFAULT_UPSTREAM_USER: &str = "rowgate";
/// The default cap on concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// The default cap on one client message (32 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// The default search path pinned upstream.
pub const DEFAULT_SEARCH_PATH: &str = "public";

mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        pub listen: Option<Spanned<String>>,
        #[serde(default)]
        pub policies: Option<Spanned<String>>,
        #[serde(default)]
        pub upstream: Option<Upstream>,
        #[serde(default)]
        pub tls: Option<Tls>,
        #[serde(default)]
        pub search_path: Option<Vec<Spanned<String>>>,
        #[serde(default)]
        pub max_connections: Option<Spanned<String>>,
        #[serde(default)]
        pub max_message_bytes: Option<Spanned<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        #[serde(default)]
        pub host: Option<Spanned<String>>,
        #[serde(default)]
        pub port: Option<Spanned<String>>,
        #[serde(default)]
        pub user: Option<Spanned<String>>,
        #[serde(default)]
        pub password: Option<Spanned<String>>,
        #[serde(default)]
        pub database: Option<Spanned<String>>,
        #[serde(default)]
        pub tls: Option<Spanned<String>>,
    }

    impl fmt::Debug for Upstream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Upstream").finish_non_exhaustive()
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub cert: Spanned<String>,
        pub key: Spanned<String>,
    }
}

/// How rowgate talks TLS to the warehouse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// The warehouse rowgate forwards to.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// `None`: the database the client asked for.
    pub database: Option<String>,
    pub tls: UpstreamTls,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Certificate and key for TLS with clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded `proxy.yaml`.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub listen: String,
    pub policies: PathBuf,
    pub upstream: Upstream,
    pub tls: Option<Tls>,
    /// The schemas unqualified names resolve in, pinned upstream for
    /// members and analysts.
    pub search_path: Vec<String>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
}

/// Whether `${NAME}` with `NAME` unset is an error (`serve`, `check`) or is
/// left as written (`explain` and `access`, which never go upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    Require,
    Lenient,
}

impl Config {
    /// Reads and validates `path`, returning every problem found.
    pub fn load(path: &Path, env: Env) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diagnostic::error(
                path,
                Pos::START,
                format!("cannot read: {e}"),
            )]
        })?;
        Self::parse(path, &text, env, |name| std::env::var(name).ok())
    }

    /// Parses config text; `lookup` answers environment variables.
    pub fn parse(
        path: &Path,
        text: &str,
        env: Env,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Diagnostic>> {
        let raw: raw::Config = if text.trim().is_empty() {
            raw::Config {
                listen: None,
                policies: None,
                upstream: None,
                tls: None,
                search_path: None,
                max_connections: None,
                max_message_bytes: None,
            }
        } else {
            serde_saphyr::from_str_with_options(text, diag::yaml_options())
                .map_err(|e| vec![diag::from_yaml_error(path, &e)])?
        };
        let mut cx = Expander {
            path,
            env,
            lookup: &lookup,
            problems: Vec::new(),
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let relative = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };

        let listen = cx
            .string(raw.listen.as_ref())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let policies = relative(
            cx.string(raw.policies.as_ref())
                .unwrap_or_else(|| DEFAULT_POLICIES.into()),
        );
        let up = raw.upstream.as_ref();
        let port = match up.and_then(|u| u.port.as_ref()) {
            None => DEFAULT_UPSTREAM_PORT,
            Some(p) => {
                let text = cx.string(Some(p)).unwrap_or_default();
                match text.trim().parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ if cx.env == Env::Lenient && text.contains("${") => DEFAULT_UPSTREAM_PORT,
                    _ => {
                        cx.error(
                            p,
                            format!("upstream.port: `{text}` is not a port number (1-65535)"),
                        );
                        DEFAULT_UPSTREAM_PORT
                    }
                }
            }
        };
        let tls_mode = match up.and_then(|u| u.tls.as_ref()) {
            None => UpstreamTls::default(),
            Some(t) => match cx.string(Some(t)).unwrap_or_default().as_str() {
                "disable" => UpstreamTls::Disable,
                "prefer" => UpstreamTls::Prefer,
                "require" => UpstreamTls::Require,
                other => {
                    let msg =
                        format!("upstream.tls: `{other}` is not one of disable, prefer, require");
                    cx.error(t, msg);
                    UpstreamTls::default()
                }
            },
        };
        let upstream = Upstream {
            host: cx
                .string(up.and_then(|u| u.host.as_ref()))
                .unwrap_or_else(|| "127.0.0.1".into()),
            port,
            user: cx
                .string(up.and_then(|u| u.user.as_ref()))
                .unwrap_or_else(|| DEFAULT_UPSTREAM_USER.into()),
            password: cx.string(up.and_then(|u| u.password.as_ref())),
            database: cx.string(up.and_then(|u| u.database.as_ref())),
            tls: tls_mode,
        };
        let search_path = match &raw.search_path {
            None => vec![DEFAULT_SEARCH_PATH.to_string()],
            Some(list) => {
                let mut path = Vec::new();
                for entry in list {
                    let text = cx.string(Some(entry)).unwrap_or_default();
                    match crate::names::parse_dotted(&text).as_deref() {
                        Ok([crate::names::Part::Name(schema)]) => path.push(schema.clone()),
                        _ => cx.error(entry, format!("search_path: `{text}` is not a schema name")),
                    }
                }
                if path.is_empty() && !list.is_empty() {
                    path.push(DEFAULT_SEARCH_PATH.to_string());
                }
                path
            }
        };
        let max_connections = cx.number(
            raw.max_connections.as_ref(),
            "max_connections",
            DEFAULT_MAX_CONNECTIONS,
        );
        let max_message_bytes = cx.number(
            raw.max_message_bytes.as_ref(),
            "max_message_bytes",
            DEFAULT_MAX_MESSAGE_BYTES,
        );
        let tls = raw.tls.as_ref().map(|t| Tls {
            cert: relative(cx.string(Some(&t.cert)).unwrap_or_default()),
            key: relative(cx.string(Some(&t.key)).unwrap_or_default()),
        });
        if cx.problems.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                listen,
                policies,
                upstream,
                tls,
                search_path,
                max_connections,
                max_message_bytes,
            })
        } else {
            Err(cx.problems)
        }
    }
}

struct Expander<'a> {
    path: &'a Path,
    env: Env,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Diagnostic>,
}

impl Expander<'_> {
    fn error(&mut self, at: &Spanned<String>, message: String) {
        let pos = Pos::from(at.referenced);
        self.problems
            .push(Diagnostic::error(self.path, pos, message));
    }

    /// A positive whole number, or `default` when absent.
    fn number(&mut self, value: Option<&Spanned<String>>, key: &str, default: usize) -> usize {
        let Some(v) = value else {
            return default;
        };
        let text = self.string(Some(v)).unwrap_or_default();
        match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                self.error(v, format!("{key}: `{text}` is not a positive whole number"));
                default
            }
        }
    }

    /// The value with `${NAME}` expanded (`$$` is a literal `$`).
    fn string(&mut self, value: Option<&Spanned<String>>) -> Option<String> {
        let value = value?;
        let text = &value.value;
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(after) = after.strip_prefix('$') {
                out.push('$');
                rest = after;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    self.error(value, "`${` is not closed by `}`".to_string());
                    return Some(out);
                };
                let name = &inner[..end];
                match (self.lookup)(name) {
                    Some(v) => out.push_str(&v),
                    None if self.env == Env::Lenient => out.push_str(&format!("${{{name}}}")),
                    None => {
                        let msg = format!("environment variable `{name}` is not set");
                        self.error(value, msg);
                    }
                }
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        let env = |name: &str| (name == "PW").then(|| "s3cret".to_string());
        Config::parse(Path::new("conf/proxy.yaml"), text, Env::Require, env)
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("upstream:\n  password: ${PW}\n").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.policies, PathBuf::from("conf/policies"));
        assert_eq!(c.upstream.password.as_deref(), Some("s3cret"));
        assert_eq!(c.upstream.port, 5432);
        assert_eq!(c.upstream.tls, UpstreamTls::Prefer);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn missing_variable_is_named() {
        let e = parse("upstream:\n  password: ${NOPE}\n").unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "conf/proxy.yaml:2:13: environment variable `NOPE` is not set"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values() {
        let e = parse("listne: x\n").unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("conf/proxy.yaml:1:1: unknown field `listne`"),
            "{}",
            e[0]
        );
        let e = parse("upstream:\n  port: 99999\n  tls: maybe\n").unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].message.contains("not a port"));
        assert!(e[1].message.contains("`maybe`"));
    }
}
