//! `proxy.yaml` (SPEC §2): typed and strict (unknown keys are errors),
//! `${NAME}` expanded from the environment (a missing variable is an error
//! that names it), relative paths taken relative to the file itself.

use std::fmt;
use std::path::{Path, PathBuf};

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
/// Runs of a statement shape in one session after which it is prepared
/// upstream (see `frontend::autoprep`).
pub const DEFAULT_PREPARE_THRESHOLD: usize = 2;
/// The largest `instance_id`: it is the top byte of the (positive) process
/// id of the cancel keys rowgate gives out.
pub const MAX_INSTANCE_ID: u8 = 127;
/// The name of the data source `upstream:` declares.
pub const DEFAULT_DATA_SOURCE: &str = "default";
/// The default search path pinned upstream.
pub const DEFAULT_SEARCH_PATH: &str = "public";

/// `proxy.yaml` exactly as written, each value with its position.
mod raw {
    use std::fmt;

    use serde_saphyr::Spanned;

    use crate::diag::{yaml_struct, Entries, List, Text};

    yaml_struct! {
        #[derive(Debug)]
        pub struct Config: "a mapping with keys listen, policies, upstream, upstreams, tls, tokens, search_path, catalog, metrics, audit, pool, instance_id, peers, max_connections, max_message_bytes, prepare_threshold, workers" {
            "listen" => listen: Spanned<String> as Text,
            "policies" => policies: Spanned<String> as Text,
            "upstream" => upstream: Spanned<Upstream> as Upstream,
            "upstreams" => upstreams: Vec<(Spanned<String>, Spanned<Upstream>)> as Entries<Upstream>,
            "tls" => tls: Spanned<Tls> as Tls,
            "tokens" => tokens: Spanned<Tokens> as Tokens,
            "search_path" => search_path: Vec<Spanned<String>> as List<Text>,
            "catalog" => catalog: Spanned<String> as Text,
            "metrics" => metrics: Spanned<String> as Text,
            "audit" => audit: Spanned<Audit> as Audit,
            "pool" => pool: Spanned<Pool> as Pool,
            "instance_id" => instance_id: Spanned<String> as Text,
            "peers" => peers: Vec<Spanned<String>> as List<Text>,
            "max_connections" => max_connections: Spanned<String> as Text,
            "max_message_bytes" => max_message_bytes: Spanned<String> as Text,
            "prepare_threshold" => prepare_threshold: Spanned<String> as Text,
            "workers" => workers: Spanned<String> as Text,
        }
    }

    yaml_struct! {
        pub struct Upstream: "a mapping with keys host, port, user, password, database, tls" {
            "host" => host: Spanned<String> as Text,
            "port" => port: Spanned<String> as Text,
            "user" => user: Spanned<String> as Text,
            "password" => password: Spanned<String> as Text,
            "database" => database: Spanned<String> as Text,
            "tls" => tls: Spanned<String> as Text,
        }
    }

    impl fmt::Debug for Upstream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Upstream").finish_non_exhaustive()
        }
    }

    yaml_struct! {
        #[derive(Debug)]
        pub struct Audit: "a mapping with keys file, table, statements, on_failure" {
            "file" => file: Spanned<String> as Text,
            "table" => table: Spanned<AuditTable> as AuditTable,
            "statements" => statements: Spanned<String> as Text,
            "on_failure" => on_failure: Spanned<String> as Text,
        }
    }

    yaml_struct! {
        #[derive(Debug)]
        pub struct AuditTable: "a mapping like { data_source: default, name: rowgate.audit_logs }" {
            "data_source" => data_source: Spanned<String> as Text,
            "name" => name: Spanned<String> as Text,
        }
    }

    yaml_struct! {
        #[derive(Debug)]
        pub struct Pool: "a mapping with keys mode, size, min_idle, max_client_wait, server_connect_timeout, server_idle_timeout, server_lifetime" {
            "mode" => mode: Spanned<String> as Text,
            "size" => size: Spanned<String> as Text,
            "min_idle" => min_idle: Spanned<String> as Text,
            "max_client_wait" => max_client_wait: Spanned<String> as Text,
            "server_connect_timeout" => server_connect_timeout: Spanned<String> as Text,
            "server_idle_timeout" => server_idle_timeout: Spanned<String> as Text,
            "server_lifetime" => server_lifetime: Spanned<String> as Text,
        }
    }

    yaml_struct! {
        #[derive(Debug)]
        pub struct Tokens: "a mapping with keys issuers, plaintext" {
            "issuers" => issuers: Vec<(Spanned<String>, Spanned<Issuer>)> as Entries<Issuer>,
            "plaintext" => plaintext: Spanned<String> as Text,
        }
    }

    yaml_struct! {
        pub struct Issuer: "a mapping with keys issuer, audience, algorithms, secret, public_keys, jwks, max_lifetime, leeway" {
            "issuer" => issuer: Spanned<String> as Text,
            "audience" => audience: Spanned<String> as Text,
            "algorithms" => algorithms: Vec<Spanned<String>> as List<Text>,
            "secret" => secret: Spanned<String> as Text,
            "public_keys" => public_keys: Spanned<String> as Text,
            "jwks" => jwks: Spanned<String> as Text,
            "max_lifetime" => max_lifetime: Spanned<String> as Text,
            "leeway" => leeway: Spanned<String> as Text,
        }
    }

    impl fmt::Debug for Issuer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Issuer").finish_non_exhaustive()
        }
    }

    yaml_struct! {
        #[derive(Debug)]
        pub struct Tls: "a mapping like { cert: server.crt, key: server.key }" {
            "cert" => cert: Spanned<String> as Text,
            "key" => key: Spanned<String> as Text,
        }
    }
}

/// Every key `proxy.yaml` accepts, by the mapping it stands in (`""` is the
/// top level), as the reader knows them: for the reference documentation
/// and the test that keeps it in step.
pub const KEYS: &[(&str, &[&str])] = &[
    ("", raw::Config::KEYS),
    ("upstream", raw::Upstream::KEYS),
    ("upstreams.<name>", raw::Upstream::KEYS),
    ("tls", raw::Tls::KEYS),
    ("tokens", raw::Tokens::KEYS),
    ("tokens.issuers.<name>", raw::Issuer::KEYS),
    ("audit", raw::Audit::KEYS),
    ("audit.table", raw::AuditTable::KEYS),
    ("pool", raw::Pool::KEYS),
];

/// How client sessions use upstream connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolMode {
    /// Each session has its own upstream connection for its whole life.
    #[default]
    Session,
    /// A member's or analyst's session holds an upstream connection only
    /// while a transaction (or an extended-protocol cycle outside one)
    /// runs; connections are shared by every user.
    Transaction,
}

/// The `pool:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Upstream connections per database, at most (transaction mode).
    pub size: usize,
    /// Idle connections kept open per database once it was used.
    pub min_idle: usize,
    /// How long a client waits for a connection before `53300`.
    pub max_client_wait: std::time::Duration,
    /// How long opening a pooled upstream connection (TCP, TLS,
    /// authentication, startup) may take before it fails.
    pub server_connect_timeout: std::time::Duration,
    /// Idle connections beyond `min_idle` close after this long.
    pub server_idle_timeout: std::time::Duration,
    /// Connections close when idle after this long in all.
    pub server_lifetime: std::time::Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        use std::time::Duration;
        PoolConfig {
            mode: PoolMode::Session,
            size: 20,
            min_idle: 2,
            max_client_wait: Duration::from_secs(30),
            server_connect_timeout: crate::upstream::connect::CONNECT_TIMEOUT,
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A duration as `proxy.yaml` writes one: a whole number with a unit (`ms`,
/// `s`, `m`, `h`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
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
    /// The data sources by name: `upstream:` is the one named `default`,
    /// `upstreams:` names the others. Never empty.
    pub sources: std::collections::BTreeMap<String, Upstream>,
    pub tls: Option<Tls>,
    /// Signed tokens as passwords, when configured.
    pub tokens: Option<crate::tokens::TokensConfig>,
    /// The schemas unqualified names resolve in, pinned upstream for
    /// members and analysts.
    pub search_path: Vec<String>,
    /// Whether members' catalog reads list what they cannot read.
    pub catalog: crate::rewrite::system::Listing,
    /// Where to serve /metrics, /healthz and /readyz (host:port), if at all.
    pub metrics: Option<String>,
    /// The audit log, if any.
    pub audit: Option<crate::audit::AuditConfig>,
    /// Upstream connection pooling.
    pub pool: PoolConfig,
    /// This instance among several behind a load balancer (0-127): the
    /// cancel keys it gives out carry it.
    pub instance_id: u8,
    /// Every instance's address, in `instance_id` order (this one's
    /// included): where a cancel request for another instance is sent.
    pub peers: Vec<String>,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// After how many runs in a session a statement shape is prepared
    /// upstream automatically; 0 never.
    pub prepare_threshold: usize,
    /// Session threads; `None`: one per CPU.
    pub workers: Option<usize>,
}

/// Whether `${NAME}` with `NAME` unset is an error (`serve`, `check`) or is
/// left as written (`explain` and `access`, which never go upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    Require,
    Lenient,
}

impl Config {
    /// The data sources' names, in order.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Reads and validates `path`, returning every problem found.
    pub fn load(path: &Path, env: Env) -> Result<Config, Vec<Diagnostic>> {
        let (config, problems) = Self::load_all(path, env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Reads `path` as far as it goes: the config, with the default for
    /// every value that is missing or has a problem, and every problem found
    /// (sorted by position). A file that cannot be read gives the defaults
    /// and that one problem.
    pub fn load_all(path: &Path, env: Env) -> (Config, Vec<Diagnostic>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_all(path, &text, env, |name| std::env::var(name).ok()),
            Err(e) => {
                let (config, _) = Self::parse_all(path, "", env, |_| None);
                let problem = Diagnostic::error(path, Pos::START, format!("cannot read: {e}"));
                (config, vec![problem])
            }
        }
    }

    /// Parses config text; `lookup` answers environment variables.
    pub fn parse(
        path: &Path,
        text: &str,
        env: Env,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Diagnostic>> {
        let (config, problems) = Self::parse_all(path, text, env, lookup);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Parses config text as far as it goes (see [`Config::load_all`]);
    /// `lookup` answers environment variables.
    pub fn parse_all(
        path: &Path,
        text: &str,
        env: Env,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> (Config, Vec<Diagnostic>) {
        let read = diag::read::<raw::Config>(path, text);
        let raw = read.value.map(|c| c.value).unwrap_or_default();
        let mut cx = Expander {
            path,
            env,
            lookup: &lookup,
            problems: read.problems,
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
        // A `policies` value with a problem says nothing about where the
        // policies are: the default stands in, so `check` still checks them.
        let policies = match raw.policies.as_ref() {
            None => DEFAULT_POLICIES.to_string(),
            Some(p) => {
                let before = cx.problems.len();
                let text = cx.string(Some(p)).unwrap_or_default();
                if cx.problems.len() == before {
                    text
                } else {
                    DEFAULT_POLICIES.to_string()
                }
            }
        };
        let policies = relative(policies);
        let sources = data_sources(&mut cx, &raw);
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
        let catalog = {
            use crate::rewrite::system::Listing;
            cx.choice(
                raw.catalog.as_ref(),
                "catalog",
                &[("hide", Listing::Hide), ("native", Listing::Native)],
                Listing::Hide,
            )
        };
        let metrics = raw.metrics.as_ref().and_then(|v| {
            let text = cx.string(Some(v)).unwrap_or_default();
            if text.parse::<std::net::SocketAddr>().is_err() && !text.contains(':') {
                cx.error(
                    v,
                    format!("metrics: `{text}` is not an address (host:port)"),
                );
                return None;
            }
            Some(text)
        });
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
        let prepare_threshold = match raw.prepare_threshold.as_ref() {
            None => DEFAULT_PREPARE_THRESHOLD,
            Some(v) => {
                let text = cx.string(Some(v)).unwrap_or_default();
                text.trim().parse::<usize>().unwrap_or_else(|_| {
                    let msg = format!("prepare_threshold: `{text}` is not a whole number (0 turns automatic preparing off)");
                    cx.error(v, msg);
                    DEFAULT_PREPARE_THRESHOLD
                })
            }
        };
        let workers = raw
            .workers
            .as_ref()
            .map(|v| cx.number(Some(v), "workers", 1));
        let tls = raw.tls.as_ref().map(|t| {
            let mut file = |value: &Option<Spanned<String>>, key: &str| match value {
                Some(v) => relative(cx.string(Some(v)).unwrap_or_default()),
                None => {
                    let msg = format!("tls: `{key}` is missing (the {key} file, in PEM)");
                    cx.error_at(t.referenced, msg);
                    PathBuf::new()
                }
            };
            Tls {
                cert: file(&t.value.cert, "cert"),
                key: file(&t.value.key, "key"),
            }
        });
        let tokens = raw
            .tokens
            .as_ref()
            .map(|t| tokens_config(&mut cx, t, &relative));
        let audit = raw.audit.as_ref().map(|a| {
            use crate::audit::{AuditConfig, OnFailure, Statements};
            let file = match &a.value.file {
                Some(v) => relative(cx.string(Some(v)).unwrap_or_default()),
                None => {
                    cx.error_at(
                        a.referenced,
                        "audit: `file` is missing (the JSON Lines file records are appended to)"
                            .into(),
                    );
                    PathBuf::new()
                }
            };
            let statements = cx.choice(
                a.value.statements.as_ref(),
                "audit.statements",
                &[
                    ("all", Statements::All),
                    ("refused", Statements::Refused),
                    ("none", Statements::None),
                ],
                Statements::All,
            );
            let on_failure = cx.choice(
                a.value.on_failure.as_ref(),
                "audit.on_failure",
                &[
                    ("refuse", OnFailure::Refuse),
                    ("continue", OnFailure::Continue),
                ],
                OnFailure::Refuse,
            );
            let table = a.value.table.as_ref().map(|t| {
                let data_source = match &t.value.data_source {
                    None => DEFAULT_DATA_SOURCE.to_string(),
                    Some(ds) => cx.string(Some(ds)).unwrap_or_default(),
                };
                if !sources.contains_key(&data_source) {
                    let msg = format!(
                        "audit.table.data_source: `{data_source}` is not a data source (declared: {})",
                        sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                    match &t.value.data_source {
                        Some(ds) => cx.error(ds, msg),
                        None => cx.error_at(t.referenced, msg),
                    }
                }
                let name = match &t.value.name {
                    None => crate::names::RelName::new("rowgate", "audit_logs"),
                    Some(v) => {
                        let text = cx.string(Some(v)).unwrap_or_default();
                        match crate::names::parse_dotted(&text).as_deref() {
                            Ok([crate::names::Part::Name(schema), crate::names::Part::Name(table)])
                                if schema == crate::rewrite::OWN_SCHEMA =>
                            {
                                crate::names::RelName::new(schema.clone(), table.clone())
                            }
                            _ => {
                                cx.error(
                                    v,
                                    format!("audit.table.name: `{text}` is not a table of the schema `rowgate` (rowgate's own, which no member or analyst reads), such as rowgate.audit_logs"),
                                );
                                crate::names::RelName::new("rowgate", "audit_logs")
                            }
                        }
                    }
                };
                crate::audit::AuditTable {
                    name,
                    data_source,
                    database: None,
                }
            });
            AuditConfig {
                file,
                table,
                statements,
                on_failure,
            }
        });
        let pool = match raw.pool.as_ref() {
            None => PoolConfig::default(),
            Some(p) => {
                let d = PoolConfig::default();
                let p = &p.value;
                let mode = cx.choice(
                    p.mode.as_ref(),
                    "pool.mode",
                    &[
                        ("session", PoolMode::Session),
                        ("transaction", PoolMode::Transaction),
                    ],
                    d.mode,
                );
                let size = cx.number(p.size.as_ref(), "pool.size", d.size);
                let min_idle = match p.min_idle.as_ref() {
                    None => d.min_idle.min(size),
                    Some(v) => {
                        let text = cx.string(Some(v)).unwrap_or_default();
                        match text.trim().parse::<usize>() {
                            Ok(n) if n <= size => n,
                            _ => {
                                let msg = format!("pool.min_idle: `{text}` is not a whole number from 0 to pool.size ({size})");
                                cx.error(v, msg);
                                d.min_idle.min(size)
                            }
                        }
                    }
                };
                PoolConfig {
                    mode,
                    size,
                    min_idle,
                    max_client_wait: cx.duration(
                        p.max_client_wait.as_ref(),
                        "pool.max_client_wait",
                        d.max_client_wait,
                    ),
                    server_connect_timeout: cx.duration(
                        p.server_connect_timeout.as_ref(),
                        "pool.server_connect_timeout",
                        d.server_connect_timeout,
                    ),
                    server_idle_timeout: cx.duration(
                        p.server_idle_timeout.as_ref(),
                        "pool.server_idle_timeout",
                        d.server_idle_timeout,
                    ),
                    server_lifetime: cx.duration(
                        p.server_lifetime.as_ref(),
                        "pool.server_lifetime",
                        d.server_lifetime,
                    ),
                }
            }
        };
        let instance_id = match raw.instance_id.as_ref() {
            None => 0,
            Some(v) => {
                let text = cx.string(Some(v)).unwrap_or_default();
                match text.trim().parse::<u8>() {
                    Ok(n) if n <= MAX_INSTANCE_ID => n,
                    _ => {
                        cx.error(
                            v,
                            format!("instance_id: `{text}` is not a whole number from 0 to {MAX_INSTANCE_ID}"),
                        );
                        0
                    }
                }
            }
        };
        let mut peers = Vec::new();
        for entry in raw.peers.iter().flatten() {
            let text = cx.string(Some(entry)).unwrap_or_default();
            if !text.contains(':') {
                cx.error(
                    entry,
                    format!("peers: `{text}` is not an address (host:port)"),
                );
            }
            peers.push(text);
        }
        if let Some(list) = &raw.peers {
            if !list.is_empty() && peers.len() <= instance_id as usize {
                let at = list.first().map(|e| e.referenced);
                if let Some(at) = at {
                    cx.error_at(
                        at,
                        format!(
                            "peers: {} address(es), but instance_id {instance_id} needs its own at position {instance_id} (counting from 0)",
                            peers.len()
                        ),
                    );
                }
            }
        }
        let config = Config {
            path: path.to_path_buf(),
            listen,
            policies,
            sources,
            tls,
            tokens,
            search_path,
            catalog,
            metrics,
            audit,
            pool,
            instance_id,
            peers,
            max_connections,
            max_message_bytes,
            prepare_threshold,
            workers,
        };
        let mut problems = cx.problems;
        diag::sort(&mut problems);
        (config, problems)
    }
}

/// `upstream:` (the source named `default`) and `upstreams:`; with
/// neither, one source named `default` with every value defaulted.
fn data_sources(
    cx: &mut Expander<'_>,
    raw: &raw::Config,
) -> std::collections::BTreeMap<String, Upstream> {
    let mut sources = std::collections::BTreeMap::new();
    if let Some(up) = &raw.upstream {
        sources.insert(
            DEFAULT_DATA_SOURCE.to_string(),
            upstream(cx, Some(&up.value), "upstream"),
        );
    }
    for (name, entry) in raw.upstreams.iter().flatten() {
        let text = &name.value;
        let key = format!("upstreams.{text}");
        if text.is_empty() || text.contains(':') || text.contains('*') {
            cx.error(
                name,
                format!("{key}: a data source's name must be non-empty, without `:` or `*`"),
            );
            continue;
        }
        if sources.contains_key(text) {
            let why = if text == DEFAULT_DATA_SOURCE && raw.upstream.is_some() {
                format!("{key}: `upstream:` is already the source named `{DEFAULT_DATA_SOURCE}`")
            } else {
                format!("{key}: declared twice")
            };
            cx.error(name, why);
            continue;
        }
        let source = upstream(cx, Some(&entry.value), &key);
        sources.insert(text.clone(), source);
    }
    if sources.is_empty() {
        sources.insert(
            DEFAULT_DATA_SOURCE.to_string(),
            upstream(cx, None, "upstream"),
        );
    }
    sources
}

/// One upstream server; `key` names it in messages (`upstream`,
/// `upstreams.testing`).
fn upstream(cx: &mut Expander<'_>, up: Option<&raw::Upstream>, key: &str) -> Upstream {
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
                        format!("{key}.port: `{text}` is not a port number (1-65535)"),
                    );
                    DEFAULT_UPSTREAM_PORT
                }
            }
        }
    };
    let tls_mode = cx.choice(
        up.and_then(|u| u.tls.as_ref()),
        &format!("{key}.tls"),
        &[
            ("disable", UpstreamTls::Disable),
            ("prefer", UpstreamTls::Prefer),
            ("require", UpstreamTls::Require),
        ],
        UpstreamTls::default(),
    );
    Upstream {
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
    }
}

/// The `tokens:` section: every issuer with its checks and where its keys
/// are (the keys themselves are read by [`crate::tokens::Verifier::load`]).
fn tokens_config(
    cx: &mut Expander<'_>,
    t: &Spanned<raw::Tokens>,
    relative: &dyn Fn(String) -> PathBuf,
) -> crate::tokens::TokensConfig {
    use crate::tokens::{IssuerConfig, KeySource, Plaintext, TokensConfig, ALGORITHMS};
    let plaintext = cx.choice(
        t.value.plaintext.as_ref(),
        "tokens.plaintext",
        &[
            ("never", Plaintext::Never),
            ("local", Plaintext::Local),
            ("always", Plaintext::Always),
        ],
        Plaintext::default(),
    );
    let mut issuers = Vec::new();
    for (name, entry) in t.value.issuers.iter().flatten() {
        let i = &entry.value;
        let key = format!("tokens.issuers.{}", name.value);
        let required = |v: &Option<Spanned<String>>, what: &str, cx: &mut Expander<'_>| match v {
            Some(v) => cx.string(Some(v)).unwrap_or_default(),
            None => {
                cx.error_at(name.referenced, format!("{key}: `{what}` is missing"));
                String::new()
            }
        };
        let issuer = required(&i.issuer, "issuer", cx);
        let audience = required(&i.audience, "audience", cx);
        let mut algorithms = Vec::new();
        match &i.algorithms {
            None => cx.error_at(
                name.referenced,
                format!("{key}: `algorithms` is missing (a list of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"),
            ),
            Some(list) => {
                for a in list {
                    let text = cx.string(Some(a)).unwrap_or_default();
                    match ALGORITHMS.iter().find(|(n, _)| *n == text) {
                        Some((_, alg)) => algorithms.push(*alg),
                        None => cx.error(
                            a,
                            format!("{key}.algorithms: `{text}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (`none` is never accepted)"),
                        ),
                    }
                }
                if list.is_empty() {
                    cx.error_at(name.referenced, format!("{key}: `algorithms` is empty"));
                }
            }
        }
        let mut sources = Vec::new();
        if let Some(v) = &i.secret {
            let text = cx.string(Some(v)).unwrap_or_default();
            sources.push((KeySource::Secret(text), Pos::from(v.referenced)));
        }
        if let Some(v) = &i.public_keys {
            let text = cx.string(Some(v)).unwrap_or_default();
            sources.push((
                KeySource::PublicKeys(relative(text)),
                Pos::from(v.referenced),
            ));
        }
        if let Some(v) = &i.jwks {
            let text = cx.string(Some(v)).unwrap_or_default();
            let source = if text.starts_with("https://") || text.starts_with("http://") {
                KeySource::JwksUrl(text)
            } else {
                KeySource::Jwks(relative(text))
            };
            sources.push((source, Pos::from(v.referenced)));
        }
        if sources.is_empty() {
            cx.error_at(
                name.referenced,
                format!("{key}: give its keys: `secret`, `public_keys` or `jwks`"),
            );
        }
        let mut duration = |v: &Option<Spanned<String>>, what: &str, default: u64| match v {
            None => default,
            Some(v) => {
                let text = cx.string(Some(v)).unwrap_or_default();
                crate::tokens::parse_duration(&text).unwrap_or_else(|| {
                    cx.error(
                        v,
                        format!("{key}.{what}: `{text}` is not a duration (like 30s, 15m, 1h, 1d)"),
                    );
                    default
                })
            }
        };
        let max_lifetime = duration(
            &i.max_lifetime,
            "max_lifetime",
            crate::tokens::DEFAULT_MAX_LIFETIME,
        );
        let leeway = duration(&i.leeway, "leeway", crate::tokens::DEFAULT_LEEWAY);
        issuers.push(IssuerConfig {
            name: name.value.clone(),
            at: Pos::from(name.referenced),
            issuer,
            audience,
            algorithms,
            keys: sources,
            max_lifetime,
            leeway,
        });
    }
    TokensConfig {
        path: cx.path.to_path_buf(),
        issuers,
        plaintext,
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
        self.error_at(at.referenced, message);
    }

    fn error_at(&mut self, at: serde_saphyr::Location, message: String) {
        let pos = Pos::from(at);
        self.problems
            .push(Diagnostic::error(self.path, pos, message));
    }

    /// One of `options` (by its word), or `default` when absent; another
    /// word is an error that lists them.
    fn choice<T: Copy>(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = value else {
            return default;
        };
        let text = self.string(Some(v)).unwrap_or_default();
        match options.iter().find(|(word, _)| *word == text) {
            Some((_, value)) => *value,
            None => {
                let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
                self.error(
                    v,
                    format!("{key}: `{text}` is not one of {}", words.join(", ")),
                );
                default
            }
        }
    }

    /// A positive duration (see [`parse_duration`]), or `default` when
    /// absent.
    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: std::time::Duration,
    ) -> std::time::Duration {
        let Some(v) = value else {
            return default;
        };
        let text = self.string(Some(v)).unwrap_or_default();
        match parse_duration(&text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                let msg = format!("{key}: `{text}` is not a duration (a positive whole number with ms, s, m or h, such as 30s)");
                self.error(v, msg);
                default
            }
        }
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
        let up = &c.sources[DEFAULT_DATA_SOURCE];
        assert_eq!(up.password.as_deref(), Some("s3cret"));
        assert_eq!(up.port, 5432);
        assert_eq!(up.tls, UpstreamTls::Prefer);
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

    #[test]
    fn instance_id_and_peers_are_checked() {
        let c = parse("instance_id: 2\npeers: [a:1, b:2, c:3]\n").unwrap();
        assert_eq!((c.instance_id, c.peers.len()), (2, 3));
        assert_eq!(parse("listen: x:1\n").unwrap().instance_id, 0);
        let e = parse("instance_id: 128\n").unwrap_err();
        assert!(e[0].message.contains("from 0 to 127"), "{}", e[0]);
        let e = parse("instance_id: 2\npeers: [a:1, b:2]\n").unwrap_err();
        assert!(
            e[0].message.contains("needs its own at position 2"),
            "{}",
            e[0]
        );
        let e = parse("peers: [nowhere]\n").unwrap_err();
        assert!(e[0].message.contains("not an address"), "{}", e[0]);
    }

    #[test]
    fn the_pool_is_read_with_its_defaults_and_its_problems() {
        use std::time::Duration;
        assert_eq!(parse("listen: x:1\n").unwrap().pool, PoolConfig::default());
        let c = parse(
            "pool: { mode: transaction, size: 5, max_client_wait: 250ms, server_connect_timeout: 3s, server_lifetime: 2h }\n",
        )
        .unwrap();
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.pool.size, 5);
        assert_eq!(c.pool.min_idle, 2);
        assert_eq!(c.pool.max_client_wait, Duration::from_millis(250));
        assert_eq!(c.pool.server_connect_timeout, Duration::from_secs(3));
        assert_eq!(c.pool.server_idle_timeout, Duration::from_secs(600));
        assert_eq!(c.pool.server_lifetime, Duration::from_secs(7200));
        let e = parse("pool: { mode: statement, size: 0, min_idle: 30, max_client_wait: soon }\n")
            .unwrap_err();
        let text: Vec<String> = e.iter().map(|d| d.message.clone()).collect();
        assert_eq!(e.len(), 4, "{text:?}");
        assert!(text[0].contains("pool.mode: `statement` is not one of session, transaction"));
        assert!(text[1].contains("pool.size"), "{text:?}");
        assert!(text[2].contains("pool.min_idle"), "{text:?}");
        assert!(text[3].contains("pool.max_client_wait: `soon` is not a duration"));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn the_audit_log_is_read_with_its_defaults_and_its_problems() {
        use crate::audit::{OnFailure, Statements};
        let c = parse("audit: { file: log/audit.jsonl }\n").unwrap();
        let a = c.audit.unwrap();
        assert_eq!(a.file, PathBuf::from("conf/log/audit.jsonl"));
        assert_eq!(
            (a.statements, a.on_failure),
            (Statements::All, OnFailure::Refuse)
        );
        let c = parse("audit: { file: /a, statements: refused, on_failure: continue }\n").unwrap();
        let a = c.audit.unwrap();
        assert_eq!(
            (a.statements, a.on_failure),
            (Statements::Refused, OnFailure::Continue)
        );
        assert!(parse("listen: x:1\n").unwrap().audit.is_none());
        let e = parse("audit: { statements: some, on_failure: maybe, table: t }\n").unwrap_err();
        let messages: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("`file` is missing")));
        assert!(messages
            .iter()
            .any(|m| m.contains("`some` is not one of all, refused, none")));
        assert!(messages
            .iter()
            .any(|m| m.contains("`maybe` is not one of refuse, continue")));
        assert!(
            messages.iter().any(|m| m.contains("`file` is missing")),
            "{messages:?}"
        );
        let c = parse("audit: { file: a, table: { data_source: default } }\n").unwrap();
        assert_eq!(
            c.audit.unwrap().table.unwrap().name.to_string(),
            "rowgate.audit_logs"
        );
        let e = parse("audit: { file: a, table: { data_source: other, name: public.log } }\n")
            .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("not a data source"), "{}", e[0]);
        assert!(e[1].message.contains("schema `rowgate`"), "{}", e[1]);
    }

    #[test]
    fn data_sources_from_upstream_and_upstreams() {
        // Neither: one source `default` at its defaults.
        let c = parse("").unwrap();
        assert_eq!(c.source_names(), [DEFAULT_DATA_SOURCE]);
        let c = parse(
            "upstream: { port: 5433 }\nupstreams:\n  testing: { host: t, database: wt, password: \"${PW}\" }\n",
        )
        .unwrap();
        assert_eq!(c.source_names(), ["default", "testing"]);
        assert_eq!(c.sources["default"].port, 5433);
        let t = &c.sources["testing"];
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.database.as_deref(),
                t.password.as_deref()
            ),
            ("t", DEFAULT_UPSTREAM_PORT, Some("wt"), Some("s3cret"))
        );
        // Without `upstream:`, only the named sources; an audit table must
        // then name one.
        let c =
            parse("upstreams:\n  a: {}\n  b: {}\naudit: { file: x, table: { data_source: b } }\n")
                .unwrap();
        assert_eq!(c.source_names(), ["a", "b"]);
        assert_eq!(c.audit.unwrap().table.unwrap().data_source, "b");
        let e = parse("upstreams:\n  a: {}\naudit: { file: x, table: {} }\n").unwrap_err();
        assert!(
            e[0].message
                .contains("`default` is not a data source (declared: a)"),
            "{e:?}"
        );
        let e =
            parse("upstream: {}\nupstreams:\n  default: {}\n  \"x:y\": {}\n  c: { port: nine }\n")
                .unwrap_err();
        let messages: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "upstreams.default: `upstream:` is already the source named `default`",
                "upstreams.x:y: a data source's name must be non-empty, without `:` or `*`",
                "upstreams.c.port: `nine` is not a port number (1-65535)",
            ]
        );
    }

    #[test]
    fn every_problem_in_order_and_the_config_as_far_as_it_tells() {
        let env = |name: &str| (name == "PW").then(|| "s3cret".to_string());
        let text = "\
tls: { cert: c.pem, ca: x }
listne: x
policies: ${NOPE}/p
upstream: { hots: h, port: 0x10, password: '${PW}' }
search_path: [a, [b]]
";
        let (config, problems) =
            Config::parse_all(Path::new("conf/proxy.yaml"), text, Env::Require, env);
        let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "conf/proxy.yaml:1:6: tls: `key` is missing (the key file, in PEM)",
                "conf/proxy.yaml:1:21: unknown field `ca`, expected one of cert, key",
                "conf/proxy.yaml:2:1: unknown field `listne`, expected one of listen, policies, upstream, upstreams, tls, tokens, search_path, catalog, metrics, audit, pool, instance_id, peers, max_connections, max_message_bytes, prepare_threshold, workers",
                "conf/proxy.yaml:3:11: environment variable `NOPE` is not set",
                "conf/proxy.yaml:4:13: unknown field `hots`, expected one of host, port, user, password, database, tls",
                "conf/proxy.yaml:4:28: upstream.port: `0x10` is not a port number (1-65535)",
                "conf/proxy.yaml:5:18: invalid type: sequence, expected a single value",
            ]
        );
        // A `policies` value with a problem cannot say where the policies
        // are: the default stands in.
        assert_eq!(config.policies, PathBuf::from("conf/policies"));
        assert_eq!(
            config.sources[DEFAULT_DATA_SOURCE].password.as_deref(),
            Some("s3cret")
        );
        assert_eq!(config.tls.unwrap().cert, PathBuf::from("conf/c.pem"));
        assert_eq!(config.search_path, ["a"]);
    }

    #[test]
    fn an_unreadable_config_reads_as_the_defaults() {
        let (config, problems) =
            Config::parse_all(Path::new("proxy.yaml"), "listen: [\n", Env::Require, |_| {
                None
            });
        assert_eq!(problems.len(), 1);
        assert_eq!(config.policies, PathBuf::from("policies"));
    }
}
