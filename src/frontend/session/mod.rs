//! One client session: startup, authentication, the upstream session, and
//! the relay between them, split by what a reader looks for:
//!
//! - this file: a connection from its first byte to its log line (startup,
//!   login, the upstream connection, the cancel key);
//! - `params.rs`: what the session starts with (upstream parameters, an
//!   admin's startup view-as, audit record members);
//! - `pipeline.rs`: the protocol state of the upstream stream, a plain
//!   synchronous type (cycles, expected responses, own queries, refusal
//!   markers, retries), unit-tested message sequence by message sequence;
//! - `relay.rs`: the sockets: one task reading and writing both
//!   connections with bounded buffers, and how a session ends;
//! - `client.rs`: what each client message becomes upstream;
//! - `prepared.rs`: automatic prepared statements; `settings.rs`: the
//!   session state that follows statements (settings, the search path);
//!   `view.rs`: view-as and the statements rowgate answers itself;
//!   `trail.rs`: the audit log's view of statements;
//!   `outgoing.rs`: messages rowgate composes.
//!
//! Client to upstream: messages are framed and passed on as bytes, except
//! Query and Parse (and FunctionCall), whose SQL is rewritten. A refused
//! statement is replaced by a *marker*: a statement that fails to parse
//! upstream with a token unique to this session and refusal. The upstream
//! then reports the error at exactly the point PostgreSQL would, aborts the
//! transaction block and skips to Sync as it does for any error, and the
//! pipeline swaps that error for the refusal. Ordering, pipelining and
//! transaction state stay PostgreSQL's own.
//!
//! Upstream to client: messages pass on as bytes, streamed without being
//! held whole; only what the pipeline state must see is read whole.

mod client;
mod outgoing;
mod params;
mod pipeline;
mod pooling;
mod prepared;
mod relay;
mod settings;
mod trail;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::sqlstate;
use super::startup::{self, First};
use super::tags;
use crate::audit::{Audit, Trail};
use crate::config::Upstream;
use crate::policy::{Policies, Role};
use crate::rewrite::{self, Fence, Refusal};
use crate::tls::Stream;
use crate::upstream::pool::{self, PoolError, Pools};
use crate::upstream::{self, catalog::Snapshot, LiveCatalog, UpstreamError};
use crate::wire::{self, WireError};
use client::{Counters, Session};
use params::{audit_fields, startup_params, startup_view_as, upstream_auth_failure};
use pipeline::Pipeline;
use pooling::Pooled;
use relay::Io;

/// One data source: its upstream server, the catalog of its databases,
/// and its pools in transaction pooling.
pub struct DataSource {
    pub name: String,
    pub upstream: Upstream,
    pub catalog: LiveCatalog,
    pub pools: Option<Arc<Pools>>,
}

/// Cancel keys given to clients, to the upstream session's key and the
/// data source it is on.
pub type Cancels = DashMap<(i32, i32), ((i32, i32), Arc<DataSource>)>;

/// What every session shares.
pub struct Shared {
    /// The data sources, by name.
    pub sources: std::collections::BTreeMap<String, Arc<DataSource>>,
    pub policy: ArcSwap<Policies>,
    /// Our cancel keys, to the upstream sessions' keys and their source.
    pub cancels: Cancels,
    pub search_path: Vec<String>,
    /// The largest message a client may send.
    pub max_message: usize,
    /// Runs of a statement shape after which a session prepares it
    /// upstream; 0 never.
    pub prepare_threshold: usize,
    /// Keys the mock SCRAM salts of unknown users.
    pub mock_key: [u8; 32],
    /// TLS towards clients, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How filtered tables are fenced (only benchmarks turn it off).
    pub fence: Fence,
    /// The counters `/metrics` shows.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How the catalog lists what members cannot read.
    pub listing: rewrite::system::Listing,
    /// The audit log, when configured.
    pub audit: Option<Arc<Audit>>,
    /// This instance's `instance_id`: the top byte of the process id of
    /// its cancel keys, and what audit records name it.
    pub instance: u8,
    /// Every instance's address, by `instance_id` (cancel requests for
    /// another instance go there).
    pub peers: Vec<String>,
    /// How long opening an upstream connection may take
    /// (`pool.server_connect_timeout`, in both pool modes).
    pub connect_timeout: std::time::Duration,
    /// Signed-token issuers and their keys (re-read on SIGHUP), when configured.
    pub tokens: Option<ArcSwap<crate::tokens::Verifier>>,
}

/// Runs one client connection to its end and logs one line about it.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut log = LogLine::default();
    shared.metrics.connections.inc();
    shared.metrics.connections_total.inc();
    let outcome = session(Stream::Plain(stream), peer, &shared, shutdown, &mut log).await;
    shared.metrics.connections.dec();
    let elapsed = started.elapsed();
    if let (Some(audit), Some(info)) = (&shared.audit, log.audit.take()) {
        let mut fields = info;
        fields.insert("outcome".into(), outcome.to_string().into());
        fields.insert("duration_ms".into(), (elapsed.as_millis() as u64).into());
        fields.insert("statements".into(), log.statements.into());
        fields.insert("refused".into(), log.refused.into());
        audit.record("logout", fields);
    }
    match &outcome {
        Outcome::Cancel => debug!(client = %peer, "cancel request"),
        o => info!(
            user = log.user.as_deref().unwrap_or("-"),
            database = log.database.as_deref().unwrap_or("-"),
            source = log.source.as_deref().unwrap_or("-"),
            client = %peer,
            outcome = %o,
            duration_ms = elapsed.as_millis() as u64,
            statements = log.statements,
            refused = log.refused,
            "connection closed"
        ),
    }
}

#[derive(Default)]
struct LogLine {
    user: Option<String>,
    database: Option<String>,
    /// The data source, once chosen.
    source: Option<String>,
    statements: u64,
    refused: u64,
    /// The session's members of audit records, once logged in.
    audit: Option<serde_json::Map<String, serde_json::Value>>,
}

/// How a session ended.
enum Outcome {
    Cancel,
    Terminated,
    ClientGone,
    Rejected(String),
    Failed(String),
    Shutdown,
    AccessChanged,
    /// The session's search path could not be read back from PostgreSQL.
    PathLost,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Cancel => f.write_str("cancel"),
            Outcome::Terminated => f.write_str("terminated by client"),
            Outcome::ClientGone => f.write_str("client disconnected"),
            Outcome::Rejected(why) => write!(f, "rejected: {why}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::Shutdown => f.write_str("closed by shutdown"),
            Outcome::AccessChanged => f.write_str("closed: access changed by a policy reload"),
            Outcome::PathLost => f.write_str("closed: the search path could not be read back"),
        }
    }
}

async fn fatal(stream: &mut Stream, code: &str, message: &str) {
    let _ = stream
        .write_all(&wire::error_response("FATAL", code, message))
        .await;
    let _ = stream.shutdown().await;
}

/// A session from its first byte to its relay.
async fn session(
    stream: Stream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    log: &mut LogLine,
) -> Outcome {
    // The login is boxed and gone once done: this future lives as long as
    // the session, and would otherwise keep room for the login's state (a
    // TLS handshake, SCRAM, a connect) while the session idles.
    let mut opened = match Box::pin(open(stream, peer, shared, shutdown, log)).await {
        Ok(opened) => opened,
        Err(outcome) => return outcome,
    };
    let stop = opened.session.relay(&mut opened.io).await;
    // Boxed (once, at the end) for the same reason.
    let outcome = Box::pin(opened.session.finish(opened.io, stop)).await;
    log.statements = opened.session.statements;
    log.refused = opened.session.refused;
    outcome
}

/// A session logged in, with its connections, ready to relay.
struct Opened<'a> {
    session: Session<'a>,
    io: Io,
    /// Removes the session's cancel key when it ends.
    _cancel: CancelGuard<'a>,
}

/// Startup, login and the upstream connection: the session ready to
/// relay, or how it ended before.
async fn open<'a>(
    mut stream: Stream,
    peer: SocketAddr,
    shared: &'a Shared,
    shutdown: watch::Receiver<bool>,
    log: &mut LogLine,
) -> Result<Opened<'a>, Outcome> {
    let mut buf = BytesMut::with_capacity(8192);
    let hello = match startup::negotiate(&mut stream, &mut buf, shared.tls.as_ref()).await {
        Ok(First::Cancel { pid, secret }) => {
            let instance = (pid >> 24) as u8;
            if instance == shared.instance {
                let found = shared.cancels.get(&(pid, secret)).map(|k| k.clone());
                if let Some((key, source)) = found {
                    if let Err(e) = upstream::cancel(&source.upstream, key).await {
                        warn!("cannot forward a cancel request: {e}");
                    }
                }
            } else if let Some(peer) = shared.peers.get(instance as usize) {
                // Another instance's session: the request goes to it, as
                // the client sent it.
                if let Err(e) = upstream::cancel_at(peer, (pid, secret)).await {
                    warn!(peer = %peer, "cannot forward a cancel request to instance {instance}: {e}");
                }
            }
            return Err(Outcome::Cancel);
        }
        Ok(First::Startup(s)) => s,
        Err(startup::StartupError::Wire(WireError::Closed)) => return Err(Outcome::ClientGone),
        Err(e) => {
            let code = match e {
                startup::StartupError::Protocol(..) => sqlstate::FEATURE_NOT_SUPPORTED,
                _ => sqlstate::PROTOCOL_VIOLATION,
            };
            fatal(&mut stream, code, &e.to_string()).await;
            return Err(Outcome::Rejected(e.to_string()));
        }
    };
    log.user = Some(hello.user.clone());
    log.database = Some(hello.database.clone());

    // Protocol 3.x with x > 0, or protocol options: say what we speak.
    let unrecognized: Vec<&str> = hello
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if hello.minor > 0 || !unrecognized.is_empty() {
        let mut out = BytesMut::new();
        wire::put_message(&mut out, tags::backend::NEGOTIATE_PROTOCOL, |b| {
            b.put_i32(0);
            b.put_i32(unrecognized.len() as i32);
            for name in &unrecognized {
                wire::put_cstr(b, name);
            }
        });
        if stream.write_all(&out).await.is_err() {
            return Err(Outcome::ClientGone);
        }
    }

    let policies = shared.policy.load_full();
    let access = match super::login::authenticate(
        &mut stream,
        &mut buf,
        &hello,
        peer,
        shared,
        policies.main(),
    )
    .await
    {
        Ok(access) => access,
        Err(super::login::Failed::ClientGone) => return Err(Outcome::ClientGone),
        Err(super::login::Failed::Rejected(why)) => return Err(Outcome::Rejected(why)),
    };

    // An admin may start out looking as a user (`options=-c
    // rowgate.view_as=NAME`): the session is then that user's from the
    // start.
    let login = access.clone();
    let (access, viewing, startup) = match startup_view_as(&hello.params, &login) {
        Ok(None) => (access, None, hello.params.clone()),
        Ok(Some((name, params))) => match policies.main().access(&name) {
            Some(viewed) => (viewed, Some(name), params),
            None => {
                let refusal = Refusal::ViewAsUnknown(name);
                let why = refusal.to_string();
                fatal(&mut stream, refusal.sqlstate(), &why).await;
                return Err(Outcome::Rejected(why));
            }
        },
        Err(why) => {
            fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, &why).await;
            return Err(Outcome::Rejected(why));
        }
    };
    // The database the client named chooses the data source (the session's
    // own, or the viewed user's when viewing as someone); grants and
    // filters are that source's.
    let chosen = policies.choose(&access, &hello.database).map(|name| {
        (
            policies.get(&name).cloned(),
            shared.sources.get(&name).cloned(),
        )
    });
    let (policy, source) = match chosen {
        Ok((Some(policy), Some(source))) => (policy, source),
        Ok(_) => {
            let why = "the data source is not configured".to_string();
            fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
            return Err(Outcome::Rejected(why));
        }
        Err(refusal) => {
            let why = refusal.to_string();
            warn!(user = %hello.user, database = %hello.database, "{why}");
            fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
            return Err(Outcome::Rejected(why));
        }
    };
    // Without view-as, the session's access is its login's (one shared
    // value, as every session of a declared user shares it).
    let login = policy.reresolve(&login);
    let access = match &viewing {
        Some(name) => policy.access(name),
        None => login.clone(),
    };
    let (login, access) = match (login, access) {
        (Some(l), Some(a)) => (l, a),
        _ => {
            let why = "the user no longer resolves".to_string();
            fatal(&mut stream, sqlstate::INVALID_PASSWORD, &why).await;
            return Err(Outcome::Rejected(why));
        }
    };
    log.source = Some(source.name.clone());
    let database = source
        .upstream
        .database
        .clone()
        .unwrap_or_else(|| hello.database.clone());
    let (params, startup_path) = match startup_params(&startup, &access, &shared.search_path) {
        Ok(p) => p,
        Err(why) => {
            fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
            return Err(Outcome::Rejected(why));
        }
    };
    // Members and analysts share pooled connections in transaction mode;
    // an admin (viewing as someone or not) has its own.
    let pools = source.pools.as_ref().filter(|_| login.role != Role::Admin);
    let connecting = Instant::now();
    let connected = match pools {
        None => {
            upstream::connect_within(&source.upstream, &database, &params, shared.connect_timeout)
                .await
                .map(Upstreamed::Own)
        }
        Some(pools) => match pools.acquire(&database, &params).await {
            Ok((server, lease, reported)) => Ok(Upstreamed::Pooled(server, lease, reported)),
            Err(PoolError::Connect(e)) => Err(e),
            Err(e) => {
                let why = e.to_string();
                warn!(user = %hello.user, "no pooled connection: {why}");
                let code = match e {
                    PoolError::Timeout(_) => sqlstate::TOO_MANY_CONNECTIONS,
                    _ => sqlstate::CONNECTION_FAILURE,
                };
                fatal(&mut stream, code, &why).await;
                return Err(Outcome::Failed(why));
            }
        },
    };
    shared
        .metrics
        .upstream_connect_seconds
        .with_label_values(&[source.name.as_str()])
        .observe(connecting.elapsed().as_secs_f64());
    if let Err(e) = &connected {
        let reason = match e {
            UpstreamError::Rejected(_) => "rejected",
            _ => "unreachable",
        };
        shared
            .metrics
            .upstream_errors
            .with_label_values(&[source.name.as_str(), reason])
            .inc();
    }
    let connected = match connected {
        Ok(c) => c,
        Err(UpstreamError::Rejected(frame)) => {
            // The upstream's own error passes (a missing database, too many
            // connections), except its authentication failures, which are
            // rowgate's configuration and would name the upstream role.
            if upstream_auth_failure(&frame) {
                warn!(user = %hello.user, "the upstream database refused rowgate's credentials");
                let msg = "rowgate could not authenticate to the upstream database";
                fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await;
            } else {
                let _ = stream.write_all(&frame).await;
            }
            return Err(Outcome::Rejected("upstream refused the session".into()));
        }
        Err(e) => {
            warn!(user = %hello.user, "upstream connection failed: {e}");
            let msg = "rowgate could not connect to the upstream database";
            fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await;
            return Err(Outcome::Failed(e.to_string()));
        }
    };
    let catalog = if access.role == Role::Admin {
        Arc::new(Snapshot::default())
    } else {
        match source.catalog.get(&database).await {
            Ok(c) => c,
            Err(e) => {
                warn!(database = %database, "cannot read the upstream catalog: {e}");
                let msg = "rowgate could not read the upstream catalog";
                fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await;
                return Err(Outcome::Failed(e.to_string()));
            }
        }
    };

    // Our own cancel key, mapped to the upstream session's.
    let key = loop {
        // The process id's top byte names this instance (a cancel request
        // that reaches another instance is sent on to it).
        let pid = (i32::from(shared.instance) << 24) | (rand::random::<i32>() & 0x00FF_FFFF);
        let key = (pid, rand::random::<i32>());
        if !shared.cancels.contains_key(&key) {
            break key;
        }
    };
    let upstream_key = match &connected {
        Upstreamed::Own(c) => c.key,
        Upstreamed::Pooled(server, ..) => server.key,
    };
    if let Some(upstream_key) = upstream_key {
        shared.cancels.insert(key, (upstream_key, source.clone()));
    }
    let _cancel = CancelGuard(&shared.cancels, key);
    let mut out = BytesMut::new();
    let (startup_messages, ready) = match &connected {
        Upstreamed::Own(c) => (c.startup_messages.clone(), c.ready.clone()),
        Upstreamed::Pooled(server, _, reported) => (
            pool::merge_reported(&server.startup, reported),
            Bytes::from_static(READY_IDLE),
        ),
    };
    for m in &startup_messages {
        out.put_slice(m);
    }
    wire::put_message(&mut out, tags::backend::BACKEND_KEY_DATA, |b| {
        b.put_i32(key.0);
        b.put_i32(key.1);
    });
    out.put_slice(&ready);
    if stream.write_all(&out).await.is_err() {
        return Err(Outcome::ClientGone);
    }

    let nonce: u64 = rand::random();
    let audit_info = shared.audit.as_ref().map(|audit| {
        let info = audit_fields(
            shared,
            nonce,
            peer,
            &hello.params,
            (&source.name, &database),
            &login,
        );
        let mut first = info.clone();
        if let Some(v) = &viewing {
            first.insert("viewed_as".into(), v.clone().into());
        }
        audit.record("login", first);
        log.audit = Some(info.clone());
        info
    });
    let audit_sink = shared
        .audit
        .clone()
        .zip(audit_info.as_ref())
        .map(|(audit, info)| (audit, Arc::from(crate::audit::fragment(info))));
    let mut session = Session {
        shared,
        user: hello.user.clone(),
        source: source.clone(),
        database,
        policy,
        access,
        catalog,
        cache: HashMap::new(),
        nonce,
        statements: 0,
        refused: 0,
        pipe: Pipeline::new(nonce),
        shapes: HashMap::new(),
        texts: HashMap::new(),
        unnamed: None,
        unnamed_log: Vec::new(),
        autos: 0,
        live: 0,
        retired: Vec::new(),
        set_in_transaction: false,
        stateful: HashMap::new(),
        path: startup_path,
        path_touched: false,
        settle: false,
        cycle_touches: false,
        counters: Counters::new(&shared.metrics),
        trail: shared.audit.as_ref().map(|_| Trail::default()),
        audit_sink,
        decided: None,
        audit_statements: HashMap::new(),
        audit_portals: HashMap::new(),
        login,
        viewing,
        audit_info,
        pooled: None,
        prepare_threshold: shared.prepare_threshold,
        cancel_key: key,
    };
    let mut io = Io::new(stream, buf, shutdown, &shared.metrics);
    match connected {
        Upstreamed::Own(c) => io.attach_stream(c.stream, c.buffer),
        Upstreamed::Pooled(server, lease, _) => {
            io.attach(server);
            session.pooled = Some(Pooled {
                pools: pools.cloned().expect("pooled only with pools"),
                lease: Some(lease),
                wanted: params,
                startup: None,
                unsettled: false,
                unique: nonce,
                pinned: false,
                unnamed_parse: None,
                unnamed_missing: false,
                reapply: false,
                statements: HashMap::new(),
                connection_deallocated: false,
            });
        }
    }
    Ok(Opened {
        session,
        io,
        _cancel,
    })
}

/// A ReadyForQuery, idle.
const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";

/// A session's upstream connection: its own, or a pooled one.
enum Upstreamed {
    Own(upstream::Connected),
    Pooled(pool::Server, pool::Lease, Vec<Bytes>),
}

/// Removes a cancel key when its session ends.
struct CancelGuard<'a>(&'a Cancels, (i32, i32));

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}
