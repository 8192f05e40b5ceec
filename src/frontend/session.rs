//! One client session: startup, authentication, the upstream session, and
//! the two relays between them.
//!
//! Client to upstream: messages are framed and passed on as bytes, except
//! Query and Parse (and FunctionCall), whose SQL is rewritten. A refused
//! statement is replaced by a *marker*: a statement that fails to parse
//! upstream with a token unique to this session and refusal. The upstream
//! then reports the error at exactly the point PostgreSQL would, aborts the
//! transaction block and skips to Sync as it does for any error, and the
//! relay back swaps that error for the refusal. Ordering, pipelining and
//! transaction state stay PostgreSQL's own.
//!
//! Upstream to client: messages pass on as bytes, streamed without being
//! held whole; only ErrorResponse (for markers) and ReadyForQuery (to know
//! when the session is idle) are looked at.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::autoprep::{self, Action, Auto, Expectations};
use super::messages;
use super::own::{Answer, OwnQueries};
use super::refusals::Refusals;
use super::sqlstate;
use super::startup::{self, First};
use crate::audit::{Audit, Await, Decided, Trail};
use crate::config::Upstream;
use crate::policy::{Access, PolicySet, Role};
use crate::rewrite::types::Oid;
use crate::rewrite::view_as::{self, ViewAs};
use crate::rewrite::{self, Context, Fence, Refusal};
use crate::tls::Stream;
use crate::upstream::{self, catalog::Snapshot, LiveCatalog, UpstreamError};
use crate::wire::{self, WireError};
use sqlparser::tokenizer::Token;

/// What every session shares.
pub struct Shared {
    pub upstream: Upstream,
    pub policy: ArcSwap<PolicySet>,
    pub catalog: LiveCatalog,
    /// Our cancel keys, to the upstream sessions' keys.
    pub cancels: DashMap<(i32, i32), (i32, i32)>,
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
    /// Signed-token issuers and their keys (re-read on SIGHUP), when configured.
    pub tokens: Option<ArcSwap<crate::tokens::Verifier>>,
}

/// rowgate's own query for the session's search path.
const PATH_QUERY: &str = "SELECT pg_catalog.current_setting('search_path')";
/// A ParseComplete message.
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
/// The prefix of the names of automatic prepared statements.
const AUTO: &str = "rowgate_auto_";
/// A statement name under the reserved prefix that nothing ever prepares.
const NO_STATEMENT: &str = "rowgate_reserved";
/// The largest ErrorResponse or ReadyForQuery the relay reads whole.
const MAX_INSPECTED: usize = 1 << 20;
/// How long an idle session lives on once a drain has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);
/// Rewrites remembered per session, keyed by statement text.
const CACHE_ENTRIES: usize = 256;
/// Statement shapes and unnamed statement texts remembered per session for
/// automatic preparing (see [`autoprep`]).
const SEEN_ENTRIES: usize = 256;
/// Longer statements are not prepared automatically: for them planning is
/// a small part of the work, and remembering them costs memory.
const MAX_AUTO_LEN: usize = 8192;
/// Automatic statements a session keeps upstream at once, at most.
const MAX_AUTOS: usize = 512;
/// Failed attempts after which a statement is not prepared again.
const MAX_FAILURES: u8 = 3;
/// Prepared statements and portals a session follows by name for the
/// audit log, at most (beyond, their executions are recorded without
/// their text).
const AUDIT_NAMES: usize = 4096;

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

async fn session(
    mut stream: Stream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    log: &mut LogLine,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(8192);
    let hello = match startup::negotiate(&mut stream, &mut buf, shared.tls.as_ref()).await {
        Ok(First::Cancel { pid, secret }) => {
            let instance = (pid >> 24) as u8;
            if instance == shared.instance {
                if let Some(key) = shared.cancels.get(&(pid, secret)).map(|k| *k) {
                    if let Err(e) = upstream::cancel(&shared.upstream, key).await {
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
            return Outcome::Cancel;
        }
        Ok(First::Startup(s)) => s,
        Err(startup::StartupError::Wire(WireError::Closed)) => return Outcome::ClientGone,
        Err(e) => {
            let code = match e {
                startup::StartupError::Protocol(..) => sqlstate::FEATURE_NOT_SUPPORTED,
                _ => sqlstate::PROTOCOL_VIOLATION,
            };
            fatal(&mut stream, code, &e.to_string()).await;
            return Outcome::Rejected(e.to_string());
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
        wire::put_message(&mut out, b'v', |b| {
            b.put_i32(0);
            b.put_i32(unrecognized.len() as i32);
            for name in &unrecognized {
                wire::put_cstr(b, name);
            }
        });
        if stream.write_all(&out).await.is_err() {
            return Outcome::ClientGone;
        }
    }

    let policy = shared.policy.load_full();
    let access = match super::login::authenticate(
        &mut stream,
        &mut buf,
        &hello,
        peer,
        shared,
        &policy,
    )
    .await
    {
        Ok(access) => access,
        Err(super::login::Failed::ClientGone) => return Outcome::ClientGone,
        Err(super::login::Failed::Rejected(why)) => return Outcome::Rejected(why),
    };

    // An admin may start out looking as a user (`options=-c
    // rowgate.view_as=NAME`): the session is then that user's from the
    // start.
    let login = access.clone();
    let (access, viewing, startup) = match startup_view_as(&hello.params, &login) {
        Ok(None) => (access, None, hello.params.clone()),
        Ok(Some((name, params))) => match policy.access(&name) {
            Some(viewed) => (viewed, Some(name), params),
            None => {
                let refusal = Refusal::ViewAsUnknown(name);
                let why = refusal.to_string();
                fatal(&mut stream, refusal.sqlstate(), &why).await;
                return Outcome::Rejected(why);
            }
        },
        Err(why) => {
            fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, &why).await;
            return Outcome::Rejected(why);
        }
    };
    let database = shared
        .upstream
        .database
        .clone()
        .unwrap_or_else(|| hello.database.clone());
    let (params, startup_path) = match startup_params(&startup, &access, &shared.search_path) {
        Ok(p) => p,
        Err(why) => {
            fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
            return Outcome::Rejected(why);
        }
    };
    let connecting = Instant::now();
    let connected = upstream::connect(&shared.upstream, &database, &params).await;
    shared
        .metrics
        .upstream_connect_seconds
        .observe(connecting.elapsed().as_secs_f64());
    if let Err(e) = &connected {
        let reason = match e {
            UpstreamError::Rejected(_) => "rejected",
            _ => "unreachable",
        };
        shared
            .metrics
            .upstream_errors
            .with_label_values(&[reason])
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
            return Outcome::Rejected("upstream refused the session".into());
        }
        Err(e) => {
            warn!(user = %hello.user, "upstream connection failed: {e}");
            let msg = "rowgate could not connect to the upstream database";
            fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await;
            return Outcome::Failed(e.to_string());
        }
    };
    let catalog = if access.role == Role::Admin {
        Arc::new(Snapshot::default())
    } else {
        match shared.catalog.get(&database).await {
            Ok(c) => c,
            Err(e) => {
                warn!(database = %database, "cannot read the upstream catalog: {e}");
                let msg = "rowgate could not read the upstream catalog";
                fatal(&mut stream, sqlstate::CONNECTION_FAILURE, msg).await;
                return Outcome::Failed(e.to_string());
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
    let _cancel = connected.key.map(|upstream_key| {
        shared.cancels.insert(key, upstream_key);
        CancelGuard(&shared.cancels, key)
    });
    let mut out = BytesMut::new();
    for m in &connected.startup_messages {
        out.put_slice(m);
    }
    wire::put_message(&mut out, b'K', |b| {
        b.put_i32(key.0);
        b.put_i32(key.1);
    });
    out.put_slice(&connected.ready);
    if stream.write_all(&out).await.is_err() {
        return Outcome::ClientGone;
    }

    let nonce: u64 = rand::random();
    let trail = Mutex::new(Trail::default());
    let audit_info = shared.audit.as_ref().map(|audit| {
        let info = audit_fields(shared, nonce, peer, &hello.params, &database, &login);
        let mut first = info.clone();
        if let Some(v) = &viewing {
            first.insert("viewed_as".into(), v.clone().into());
        }
        audit.record("login", first);
        log.audit = Some(info.clone());
        info
    });
    let audit_fragment: Option<Arc<str>> = audit_info
        .as_ref()
        .map(|info| Arc::from(crate::audit::fragment(info)));
    let refusals = Refusals::new(nonce);
    let own = OwnQueries::default();
    let expect = Expectations::default();
    let (retry_tx, retry_rx) = mpsc::channel(1);
    let pending = AtomicI64::new(0);
    let client_done = AtomicBool::new(false);
    let mut front = Front {
        shared,
        user: hello.user.clone(),
        database,
        policy,
        access,
        catalog,
        cache: HashMap::new(),
        nonce,
        seq: 0,
        refusals: &refusals,
        pending: &pending,
        statements: 0,
        refused: 0,
        expect: &expect,
        cycles: 0,
        shapes: HashMap::new(),
        texts: HashMap::new(),
        unnamed: None,
        autos: 0,
        live: 0,
        retired: Vec::new(),
        unsynced: false,
        auto_off: false,
        set_in_transaction: false,
        stateful: HashMap::new(),
        path: startup_path,
        path_touched: false,
        settle: false,
        cycle_touches: false,
        own: &own,
        bytes_in: shared.metrics.bytes.with_label_values(&["to_upstream"]),
        counters: Counters {
            forwarded: shared
                .metrics
                .statements
                .with_label_values(&["forwarded", ""]),
            auto_hit: shared.metrics.autoprep.with_label_values(&["hit"]),
            auto_prepare: shared.metrics.autoprep.with_label_values(&["prepare"]),
        },
        retry_rx,
        trail: shared.audit.as_ref().map(|_| &trail),
        decided: None,
        audit_statements: HashMap::new(),
        audit_portals: HashMap::new(),
        login,
        viewing,
        audit_info: audit_info.clone(),
    };
    let mut back = Back {
        own: &own,
        bytes_out: shared.metrics.bytes.with_label_values(&["to_client"]),
        refusals: &refusals,
        expect: &expect,
        cycles: 0,
        status: b'I',
        drop_ready: false,
        retry_tx,
        pending: &pending,
        client_done: &client_done,
        audit: shared.audit.as_deref().zip(audit_fragment.as_ref()),
        trail: shared.audit.as_ref().map(|_| &trail),
    };
    let loops = Loops {
        buf,
        upstream_buf: connected.buffer,
        client_done: &client_done,
        shutdown,
    };
    // Plain TCP splits without a lock; TLS streams share one.
    let outcome = match (stream, connected.stream) {
        (Stream::Plain(client), Stream::Plain(upstream)) => {
            let (client_rd, client_wr) = client.into_split();
            let (up_rd, up_wr) = upstream.into_split();
            loops
                .run(&mut front, &mut back, client_rd, client_wr, up_rd, up_wr)
                .await
        }
        (client, upstream) => {
            let (client_rd, client_wr) = tokio::io::split(client);
            let (up_rd, up_wr) = tokio::io::split(upstream);
            loops
                .run(&mut front, &mut back, client_rd, client_wr, up_rd, up_wr)
                .await
        }
    };
    log.statements = front.statements;
    log.refused = front.refused;
    outcome
}

/// What the two relays of a session share besides their halves.
struct Loops<'a> {
    buf: BytesMut,
    upstream_buf: BytesMut,
    client_done: &'a AtomicBool,
    shutdown: watch::Receiver<bool>,
}

impl Loops<'_> {
    /// Runs both relays until the session ends.
    async fn run<CR, CW, UR, UW>(
        self,
        front: &mut Front<'_>,
        back: &mut Back<'_>,
        client_rd: CR,
        client_wr: CW,
        up_rd: UR,
        up_wr: UW,
    ) -> Outcome
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        UR: AsyncRead + Unpin,
        UW: AsyncWrite + Unpin,
    {
        let (fatal_tx, fatal_rx) = mpsc::channel(1);
        let client = front.client_loop(client_rd, up_wr, self.buf, self.client_done, fatal_tx);
        let relay = back.relay(up_rd, client_wr, self.upstream_buf, fatal_rx, self.shutdown);
        tokio::pin!(client, relay);
        tokio::select! {
            end = &mut relay => end,
            end = &mut client => match tokio::time::timeout(Duration::from_secs(5), &mut relay).await {
                Ok(relay_end) if end.is_none() => relay_end,
                _ => end.unwrap_or(Outcome::ClientGone),
            },
        }
    }
}

/// Startup parameters, as names and values.
type Params = Vec<(String, String)>;

/// For an admin whose startup options set `rowgate.view_as`: the user to
/// look as, and the startup parameters without it (the other options as
/// parameters of their own). `None` otherwise; a non-admin's is refused by
/// the parameter check as any other setting.
fn startup_view_as(
    params: &[(String, String)],
    login: &Access,
) -> Result<Option<(String, Params)>, String> {
    if login.role != Role::Admin {
        return Ok(None);
    }
    let Some((_, options)) = params.iter().find(|(k, _)| k == "options") else {
        return Ok(None);
    };
    let pairs = startup::options(options)?;
    let Some((_, name)) = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(view_as::SETTING))
    else {
        return Ok(None);
    };
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "options")
        .cloned()
        .collect();
    out.extend(
        pairs
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(view_as::SETTING))
            .cloned(),
    );
    Ok(Some((name.clone(), out)))
}

/// The members every audit record of a session has.
fn audit_fields(
    shared: &Shared,
    nonce: u64,
    peer: SocketAddr,
    params: &[(String, String)],
    database: &str,
    access: &Access,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut m = serde_json::Map::new();
    m.insert("instance".into(), shared.instance.into());
    m.insert("session".into(), format!("{nonce:016x}").into());
    m.insert("user".into(), access.user.clone().into());
    access.auth_fields(&mut m);
    let app = params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone());
    if let Some(app) = app {
        m.insert("application_name".into(), app.into());
    }
    m.insert("client".into(), peer.to_string().into());
    m.insert("data_source".into(), "default".into());
    m.insert("database".into(), database.into());
    m.insert(
        "role".into(),
        format!("{:?}", access.role).to_lowercase().into(),
    );
    m.insert(
        "groups".into(),
        Value::Array(access.groups.iter().cloned().map(Value::String).collect()),
    );
    m.insert("attributes".into(), access.attributes_json());
    m
}

/// Whether an upstream ErrorResponse is an authentication failure (SQLSTATE
/// class 28).
fn upstream_auth_failure(frame: &[u8]) -> bool {
    frame
        .get(5..)
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|field| field.len() == 6 && field[0] == b'C' && field[1..].starts_with(b"28"))
}

/// Removes a cancel key when its session ends.
struct CancelGuard<'a>(&'a DashMap<(i32, i32), (i32, i32)>, (i32, i32));

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// The parameters to send upstream, and the session's search path.
type Startup = (Vec<(String, String)>, Vec<String>);

/// The parameters sent upstream at startup. Admins pass theirs unchanged;
/// members and analysts pass only harmless ones, and get the session state
/// the rewriter relies on pinned: the search path, standard-conforming
/// strings, UTF-8.
fn startup_params(
    params: &[(String, String)],
    access: &Access,
    search_path: &[String],
) -> Result<Startup, String> {
    let mut path: Option<Vec<String>> = None;
    let mut out = Vec::new();
    let mut settings: Vec<(String, String)> = Vec::new();
    for (k, v) in params {
        if k.starts_with("_pq_.") {
            continue;
        }
        if access.role == Role::Admin {
            out.push((k.clone(), v.clone()));
            continue;
        }
        if k == "options" {
            settings.extend(startup::options(v)?);
        } else {
            settings.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in settings {
        let name = k.to_ascii_lowercase();
        if !startup::allowed_param(&name) {
            return Err(format!(
                "permission denied to set parameter \"{k}\" through rowgate"
            ));
        }
        if name == "search_path" {
            // The session's path from the start: sent upstream below, with
            // `$user` spelt out as the member's name.
            let entries = rewrite::parse_path_text(&v)
                .ok_or_else(|| format!("invalid value for parameter \"search_path\": \"{v}\""))?;
            path = Some(rewrite::path_for_member(&entries, &access.user));
            continue;
        }
        if name == "client_encoding" {
            continue; // pinned below
        }
        out.push((name, v));
    }
    let path = path.unwrap_or_else(|| search_path.to_vec());
    if access.role != Role::Admin {
        out.push(("search_path".into(), rewrite::path_text(&path)));
        out.push(("standard_conforming_strings".into(), "on".into()));
        out.push(("client_encoding".into(), "UTF8".into()));
    }
    Ok((out, path))
}

/// The client-to-upstream half.
struct Front<'a> {
    shared: &'a Shared,
    user: String,
    database: String,
    policy: Arc<PolicySet>,
    access: Access,
    catalog: Arc<Snapshot>,
    cache: HashMap<String, Result<Forward, Refusal>>,
    nonce: u64,
    seq: u64,
    refusals: &'a Refusals,
    pending: &'a AtomicI64,
    statements: u64,
    refused: u64,
    /// The responses the relay back is to treat specially.
    expect: &'a Expectations,
    /// Query, Sync and FunctionCall messages sent upstream so far: each
    /// ends a cycle with one ReadyForQuery.
    cycles: u64,
    /// Simple-query statement shapes, for automatic preparing.
    shapes: HashMap<Vec<Token>, Seen>,
    /// Unnamed Parse texts (rewritten), then their parameter types, for
    /// automatic preparing.
    texts: HashMap<String, HashMap<Vec<u8>, Seen>>,
    /// The upstream statement that stands for the client's unnamed one.
    unnamed: Option<Arc<Auto>>,
    /// Statements prepared automatically so far (their names' counter).
    autos: usize,
    /// Of those, the ones not forgotten since.
    live: usize,
    /// Automatic statements no longer used, to close upstream.
    retired: Vec<String>,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// No more automatic statements in this session: the client sent a
    /// Query before a Sync ended its extended-protocol messages. After an
    /// error PostgreSQL skips such a Query without a ReadyForQuery, so the
    /// relay can no longer tell which cycle a response belongs to; rowgate
    /// then only passes responses on.
    auto_off: bool,
    /// A setting changed in the transaction under way.
    set_in_transaction: bool,
    /// Client statements (by name; `""` the unnamed one) that change a
    /// setting, end a transaction or deallocate every prepared statement:
    /// (changes settings, ends transaction, deallocates all).
    stateful: HashMap<String, Stateful>,
    /// The session's search path, as PostgreSQL has it (names resolve
    /// along it here as they do upstream).
    path: Vec<String>,
    /// The session changed its search path at least once.
    path_touched: bool,
    /// A cycle sent may have changed the search path in ways only
    /// PostgreSQL knows (an error, a rollback): read it before the next
    /// statement is rewritten.
    settle: bool,
    /// The extended-protocol cycle under way ran a statement that may
    /// change the search path.
    cycle_touches: bool,
    own: &'a OwnQueries,
    /// Bytes read from the client, and the other counters a statement
    /// moves (taken once per session: a labelled lookup takes a lock).
    bytes_in: prometheus::IntCounter,
    counters: Counters,
    /// The relay's requests to run a statement again.
    retry_rx: mpsc::Receiver<Retry>,
    /// Statements awaiting their results, for the audit log (when on).
    trail: Option<&'a Mutex<Trail>>,
    /// The decision on the statement just rewritten or refused.
    decided: Option<Arc<Decided>>,
    /// Prepared statements and portals by name, for the audit records of
    /// their executions.
    audit_statements: HashMap<String, Arc<Decided>>,
    audit_portals: HashMap<String, Arc<Decided>>,
    /// The access the client logged in with; `access` is another user's
    /// while an admin looks as them (`SET rowgate.view_as`).
    login: Access,
    /// The user an admin session looks as.
    viewing: Option<String>,
    /// The session's members of audit records.
    audit_info: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The per-statement counters of `/metrics`, as a session moves them.
struct Counters {
    forwarded: prometheus::IntCounter,
    auto_hit: prometheus::IntCounter,
    auto_prepare: prometheus::IntCounter,
}

/// What running a prepared statement does to session state.
#[derive(Clone, Debug, Default)]
struct Stateful {
    changes_settings: bool,
    ends_transaction: bool,
    deallocates_all: bool,
    path: Option<rewrite::PathChange>,
}

/// A rewrite that may be forwarded.
#[derive(Clone, Debug)]
struct Forward {
    sql: String,
    /// Its last change of the search path.
    path: Option<rewrite::PathChange>,
    /// One read, which may be prepared automatically.
    preparable: bool,
    /// Drops every prepared statement of the session.
    deallocates_all: bool,
    /// Sets or resets a setting.
    changes_settings: bool,
    /// Ends a transaction (or rolls back to a savepoint).
    ends_transaction: bool,
}

impl Forward {
    /// A statement rowgate answers itself, as the query giving its answer.
    fn answer(sql: String) -> Forward {
        Forward {
            sql,
            path: None,
            preparable: false,
            deallocates_all: false,
            changes_settings: false,
            ends_transaction: false,
        }
    }
}

/// A statement seen, for automatic preparing.
#[derive(Debug, Default)]
struct Seen {
    runs: usize,
    failures: u8,
    /// Never prepared automatically.
    never: bool,
    /// Prepared, with its parameter types (simple query).
    auto: Option<(Arc<Auto>, Vec<&'static str>)>,
}

impl Seen {
    /// The prepared statement if it may be used in `cycle`. A statement
    /// whose preparing failed is forgotten (and, after a few failures, not
    /// tried again).
    fn usable(&mut self, cycle: u64) -> Option<(&Arc<Auto>, &[&'static str])> {
        if self.auto.as_ref().is_some_and(|(a, _)| a.failed()) {
            self.auto = None;
            self.runs = 0;
            self.failures += 1;
            self.never = self.failures >= MAX_FAILURES;
        }
        match &self.auto {
            Some((a, types)) if a.usable(cycle) => Some((a, types)),
            _ => None,
        }
    }

    /// Counts a run; whether this one should prepare the statement.
    fn run(&mut self, threshold: usize) -> bool {
        self.runs += 1;
        !self.never && self.auto.is_none() && threshold > 0 && self.runs >= threshold
    }
}

impl Front<'_> {
    /// Relays client messages until the client ends the session. `None`
    /// means the client left; errors are sent to the client by the relay.
    async fn client_loop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        mut rd: R,
        wr: W,
        mut buf: BytesMut,
        client_done: &AtomicBool,
        fatal_tx: mpsc::Sender<Bytes>,
    ) -> Option<Outcome> {
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        let result = self.forward(&mut rd, &mut wr, &mut buf).await;
        // The client is told why before the upstream side closes, so the
        // relay writes this before it can see the upstream end.
        let (end, fatal) = match result {
            Ok(Outcome::AccessChanged) => {
                let why = "terminating connection: this user's access changed with a policy reload; reconnect";
                let fatal = wire::error_response("FATAL", sqlstate::ADMIN_SHUTDOWN, why);
                (Some(Outcome::AccessChanged), Some(fatal))
            }
            Ok(Outcome::PathLost) => {
                // Names could no longer be resolved as PostgreSQL resolves
                // them: the session ends rather than guess.
                let why = "terminating connection: rowgate could not read the session's search_path back from the upstream database";
                let fatal = wire::error_response("FATAL", sqlstate::CONNECTION_FAILURE, why);
                (Some(Outcome::PathLost), Some(fatal))
            }
            Ok(end) => (Some(end), None),
            Err(WireError::Closed) | Err(WireError::Io(_)) => (None, None),
            Err(e) => {
                let code = match e {
                    WireError::TooLarge(..) => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                let why = format!("invalid message from the client: {e}");
                let fatal = wire::error_response("FATAL", code, &why);
                (Some(Outcome::Rejected(why)), Some(fatal))
            }
        };
        if let Some(fatal) = fatal {
            // Read what the client already sent, so that closing does not
            // reset the connection before the client reads why.
            let mut scratch = [0u8; 8192];
            let _ = tokio::time::timeout(Duration::from_millis(100), async {
                while matches!(rd.read(&mut scratch).await, Ok(n) if n > 0) {}
            })
            .await;
            let _ = fatal_tx.send(fatal).await;
        }
        client_done.store(true, Ordering::SeqCst);
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
        end
    }

    async fn forward<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        rd: &mut R,
        wr: &mut BufWriter<W>,
        buf: &mut BytesMut,
    ) -> Result<Outcome, WireError> {
        loop {
            while let Some(frame) = wire::try_frame(buf, self.shared.max_message)? {
                // Nothing prepared, bound or declared under a user's old
                // access runs after a reload changed it.
                if !self.access_unchanged() {
                    return Ok(Outcome::AccessChanged);
                }
                let rewrites = self.access.role != Role::Admin;
                if rewrites && self.expect.stale.load(Ordering::SeqCst) {
                    self.expect.stale.store(false, Ordering::SeqCst);
                    self.forget_autos(true);
                }
                let was_unsynced = self.unsynced;
                match frame.tag() {
                    b'S' => self.unsynced = false,
                    b'Q' if self.unsynced => self.auto_off = true,
                    b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
                    _ => {}
                }
                // Before a statement is rewritten, the search path must be
                // PostgreSQL's (between cycles only: inside one, what ran
                // before a statement set it, or the statement does not run).
                if rewrites
                    && self.settle
                    && !was_unsynced
                    && matches!(frame.tag(), b'Q' | b'P')
                    && !self.settle_path(wr).await?
                {
                    return Ok(Outcome::PathLost);
                }
                if self.trail.is_some() {
                    self.audit_message(frame.tag(), frame.body())?;
                }
                // While the audit log cannot take records, prepared
                // statements do not run either: a Bind is replaced by a
                // Parse that fails with the refusal, and PostgreSQL skips
                // the rest of the pipeline.
                if frame.tag() == b'B' {
                    if let Some(refusal) = self.audit_refusal() {
                        let marker = self.refuse(&refusal);
                        // No parameter types: a count of zero.
                        wr.write_all(&parse_message(NO_STATEMENT, &marker, &[0, 0]))
                            .await?;
                        continue;
                    }
                }
                match frame.tag() {
                    b'Q' if view_as::mentions_body(frame.body())
                        && self.view_as_request(frame.body()).is_some() =>
                    {
                        self.pending.fetch_add(1, Ordering::SeqCst);
                        let out = self.view_as_query(frame.body(), wr).await?;
                        wr.write_all(&out).await?;
                        self.audit_push(Await::Query);
                        self.cycles += 1;
                    }
                    b'P' if view_as::mentions_body(frame.body())
                        && self
                            .view_as_request(
                                messages::parse(frame.body())?
                                    .query
                                    .unwrap_or_default()
                                    .as_bytes(),
                            )
                            .is_some() =>
                    {
                        let parse = messages::parse(frame.body())?;
                        let sql = parse.query.unwrap_or_default().to_string();
                        let refusal = if self.login.role == Role::Admin {
                            Refusal::unsupported("SET rowgate.view_as in the extended query protocol (send it as a simple query)")
                        } else {
                            Refusal::Setting(view_as::SETTING.into())
                        };
                        self.note(&sql, None, Some(&refusal));
                        let marker = self.refuse(&refusal);
                        wr.write_all(&parse_message(parse.name, &marker, parse.types))
                            .await?;
                        self.audit_parsed(frame.body())?;
                    }
                    b'Q' => {
                        self.pending.fetch_add(1, Ordering::SeqCst);
                        if rewrites {
                            let out = self.query(frame.body()).await?;
                            wr.write_all(&out).await?;
                        } else if let Some(refusal) = self.audit_refusal() {
                            let marker = self.refuse(&refusal);
                            self.note(&refusal_sql(frame.body()), None, Some(&refusal));
                            wr.write_all(&query_message(&marker)).await?;
                        } else if let Some(text) = self.answer(&refusal_sql(frame.body())).await {
                            let sql = refusal_sql(frame.body());
                            self.note(&sql, Some(&text), None);
                            wr.write_all(&query_message(&text)).await?;
                        } else {
                            if self.trail.is_some() {
                                let sql = refusal_sql(frame.body());
                                self.note(&sql, Some(&sql), None);
                            }
                            wr.write_all(&frame.frame).await?;
                        }
                        self.audit_push(Await::Query);
                        self.cycles += 1;
                    }
                    b'P' if rewrites => {
                        let out = self.parse(frame.body()).await?;
                        wr.write_all(&out).await?;
                        self.audit_parsed(frame.body())?;
                    }
                    b'P' if self.trail.is_some() => {
                        let parse = messages::parse(frame.body())?;
                        let name = parse.name.to_string();
                        let sql = parse.query.unwrap_or_default().to_string();
                        if let Some(refusal) = self.audit_refusal() {
                            let marker = self.refuse(&refusal);
                            self.note(&sql, None, Some(&refusal));
                            wr.write_all(&parse_message(&name, &marker, parse.types))
                                .await?;
                        } else {
                            self.note(&sql, Some(&sql), None);
                            wr.write_all(&frame.frame).await?;
                        }
                        self.audit_parsed(frame.body())?;
                    }
                    b'B' | b'D' if rewrites => {
                        if frame.tag() == b'B' && !self.stateful.is_empty() {
                            let (_, statement, _) = messages::bind(frame.body())?;
                            if let Some(effect) = self.stateful.get(statement).cloned() {
                                self.settings_event(
                                    effect.changes_settings,
                                    effect.ends_transaction,
                                );
                                if effect.deallocates_all {
                                    // Each run drops rowgate's statements too.
                                    self.forget_autos(false);
                                }
                                self.path_event(effect.path.as_ref(), effect.ends_transaction);
                            }
                        }
                        let out = match reserved_target(frame.tag(), frame.body())? {
                            Some(out) => Some(out),
                            None => self.name_unnamed(frame.tag(), frame.body())?,
                        };
                        wr.write_all(out.as_ref().unwrap_or(&frame.frame)).await?;
                    }
                    b'C' if rewrites => {
                        if messages::target(frame.body())? == (b'S', "") {
                            self.unnamed = None;
                        }
                        self.expect.push(self.cycles, b'3', Action::Pass);
                        let out = reserved_target(b'C', frame.body())?;
                        wr.write_all(out.as_ref().unwrap_or(&frame.frame)).await?;
                    }
                    b'F' => {
                        self.pending.fetch_add(1, Ordering::SeqCst);
                        if rewrites {
                            let refusal = Refusal::statement("the FunctionCall protocol message");
                            let out = self.refuse(&refusal);
                            self.note("(FunctionCall)", None, Some(&refusal));
                            wr.write_all(&query_message(&out)).await?;
                        } else if let Some(refusal) = self.audit_refusal() {
                            let out = self.refuse(&refusal);
                            self.note("(FunctionCall)", None, Some(&refusal));
                            wr.write_all(&query_message(&out)).await?;
                        } else {
                            self.note("(FunctionCall)", Some("(FunctionCall)"), None);
                            wr.write_all(&frame.frame).await?;
                        }
                        self.audit_push(Await::Query);
                        self.cycles += 1;
                    }
                    b'S' => {
                        self.pending.fetch_add(1, Ordering::SeqCst);
                        wr.write_all(&frame.frame).await?;
                        self.cycles += 1;
                        if std::mem::take(&mut self.cycle_touches) {
                            self.settle = true;
                        }
                    }
                    b'X' => {
                        wr.write_all(&frame.frame).await?;
                        return Ok(Outcome::Terminated);
                    }
                    b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'd' | b'c' | b'f' => {
                        wr.write_all(&frame.frame).await?;
                    }
                    _ => return Err(WireError::Malformed("frontend (unknown message type)")),
                }
            }
            wr.flush().await?;
            let before = buf.len();
            tokio::select! {
                read = wire::fill(rd, buf) => read?,
                Some(retry) = self.retry_rx.recv() => self.run_again(retry, wr).await?,
            }
            if buf.len() > before {
                self.bytes_in.inc_by((buf.len() - before) as u64);
            }
        }
    }

    /// Takes up the relay's request to run a statement again the ordinary
    /// way (see `Back::retry`): only if nothing was sent upstream since
    /// the failed cycle and the relay still waits.
    async fn run_again<W: AsyncWrite + Unpin>(
        &mut self,
        retry: Retry,
        wr: &mut BufWriter<W>,
    ) -> Result<(), WireError> {
        let now = self.cycles == retry.cycle + 1 && !self.unsynced;
        let taken = now
            && retry
                .state
                .compare_exchange(RETRY_OPEN, RETRY_TAKEN, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        if !taken {
            let _ = retry.sent.send(false);
            return Ok(());
        }
        self.expect.stale.store(false, Ordering::SeqCst);
        self.forget_autos(true);
        self.statements -= 1;
        let text = self
            .rewrite_or_refuse(&retry.sql, &[])
            .await
            .map_or_else(|m| m, |f| f.sql);
        self.pending.fetch_add(1, Ordering::SeqCst);
        wr.write_all(&query_message(&text)).await?;
        wr.flush().await?;
        self.cycles += 1;
        let _ = retry.sent.send(true);
        Ok(())
    }

    /// A Query message: the rewritten text, the execution of an automatic
    /// prepared statement, or a refusal marker.
    async fn query(&mut self, body: &[u8]) -> Result<Bytes, WireError> {
        // PostgreSQL drops the unnamed statement when a Query runs.
        self.unnamed = None;
        let text = match messages::query(body)? {
            Ok(sql) => {
                let sql: Arc<str> = Arc::from(sql);
                self.catalog_fresh().await;
                if let Some(out) = self.auto_query(&sql).await {
                    return Ok(out);
                }
                match self.rewrite_or_refuse(&sql, &[]).await {
                    Ok(f) => {
                        self.path_event(f.path.as_ref(), f.ends_transaction);
                        // A simple Query is a cycle of its own.
                        if std::mem::take(&mut self.cycle_touches) {
                            self.settle = true;
                        }
                        f.sql
                    }
                    Err(marker) => marker,
                }
            }
            Err(()) => {
                self.note("", None, Some(&not_utf8()));
                self.refuse(&not_utf8())
            }
        };
        Ok(query_message(&text))
    }

    /// A simple-query statement run as an automatic prepared statement
    /// (prepared first if this run reaches the threshold); `None` to send
    /// it the ordinary way.
    async fn auto_query(&mut self, sql: &Arc<str>) -> Option<Bytes> {
        // While the audit log cannot take records, the ordinary way
        // refuses every statement.
        if self.audit_refusal().is_some() {
            return None;
        }
        let threshold = self.shared.prepare_threshold;
        if threshold == 0 || self.auto_off || sql.len() > MAX_AUTO_LEN {
            return None;
        }
        // A statement that may change a setting (the search path among
        // them) runs the ordinary way, where its change is followed.
        if rewrite::may_call_set_config(sql) {
            return None;
        }
        let shape = autoprep::shape(sql)?;
        let cycle = self.cycles;
        match self.shapes.get_mut(&shape.key) {
            Some(seen) => {
                if let Some((auto, types)) = seen.usable(cycle) {
                    if !autoprep::values_fit(&shape.values, types) {
                        return None;
                    }
                    let run = execute(&auto.name, &shape.values);
                    if self.trail.is_some() {
                        self.note(sql, Some(&run), None);
                    }
                    self.statements += 1;
                    self.counters.auto_hit.inc();
                    debug!(user = %self.user, sql = %run, "forward");
                    let mut out = self.close_retired();
                    self.expect.push(cycle, b'E', Action::Retry(sql.clone()));
                    out.put_slice(&query_message(&run));
                    return Some(out.freeze());
                }
            }
            None => {
                if self.shapes.len() >= SEEN_ENTRIES {
                    self.shapes.retain(|_, s| s.auto.is_some());
                    if self.shapes.len() >= SEEN_ENTRIES {
                        return None;
                    }
                }
                self.shapes.insert(shape.key.clone(), Seen::default());
            }
        }
        let seen = self.shapes.get_mut(&shape.key)?;
        if !seen.run(threshold) || self.live >= MAX_AUTOS {
            return None;
        }
        let types = autoprep::param_types(&shape);
        if !autoprep::values_fit(&shape.values, &types) {
            return None;
        }
        let forward = self.rewrite(sql, &[]).await.ok();
        let declared = autoprep::param_oids(&types);
        let cx = Context {
            access: &self.access,
            catalog: &*self.catalog,
            search_path: &self.path,
            params: &declared,
            fence: self.shared.fence,
            listing: self.shared.listing,
        };
        let prepared = forward.and_then(|f| autoprep::template(sql, &shape.values, &f.sql, &cx));
        let seen = self.shapes.get_mut(&shape.key)?;
        let Some(prepared) = prepared else {
            seen.never = true;
            return None;
        };
        self.autos += 1;
        self.live += 1;
        let auto = Auto::new(auto_name(self.nonce, self.autos), cycle);
        seen.auto = Some((auto.clone(), types.clone()));
        let declared = if types.is_empty() {
            String::new()
        } else {
            format!(" ({})", types.join(", "))
        };
        let text = format!(
            "PREPARE {}{declared} AS {prepared}; {}",
            auto.name,
            execute(&auto.name, &shape.values)
        );
        let mut out = self.close_retired();
        self.expect.push(cycle, b'C', Action::Swallow(auto));
        if self.trail.is_some() {
            self.note(sql, Some(&text), None);
        }
        self.statements += 1;
        self.counters.auto_prepare.inc();
        debug!(user = %self.user, sql = %text, "forward");
        out.put_slice(&query_message(&text));
        Some(out.freeze())
    }

    /// A Parse message with its query rewritten (parameter types kept), or
    /// a marker under the same statement name. A repeated unnamed one is
    /// prepared upstream under a name of rowgate's, then stood in for by a
    /// Close of the unnamed statement.
    async fn parse(&mut self, body: &[u8]) -> Result<Bytes, WireError> {
        let parse = messages::parse(body)?;
        let cycle = self.cycles;
        let unnamed = parse.name.is_empty();
        if unnamed {
            self.unnamed = None;
        }
        let forward = match parse.query {
            _ if rewrite::is_reserved_name(parse.name) => {
                let refusal = Refusal::Reserved(parse.name.to_string());
                let sql = parse.query.unwrap_or_default().to_string();
                self.note(&sql, None, Some(&refusal));
                Err(self.refuse(&refusal))
            }
            Ok(q) => {
                let q = q.to_string();
                self.catalog_fresh().await;
                let declared = messages::param_types(parse.types);
                self.rewrite_or_refuse(&q, &declared).await
            }
            Err(()) => {
                self.note("", None, Some(&not_utf8()));
                Err(self.refuse(&not_utf8()))
            }
        };
        if let Ok(f) = &forward {
            if f.changes_settings || f.ends_transaction || f.deallocates_all || f.path.is_some() {
                self.stateful.insert(
                    parse.name.to_string(),
                    Stateful {
                        changes_settings: f.changes_settings,
                        ends_transaction: f.ends_transaction,
                        deallocates_all: f.deallocates_all,
                        path: f.path.clone(),
                    },
                );
            } else if !self.stateful.is_empty() {
                self.stateful.remove(parse.name);
            }
        }
        let text = match forward {
            Ok(f)
                if unnamed
                    && f.preparable
                    && self.shared.prepare_threshold > 0
                    && !self.auto_off =>
            {
                if let Some(out) = self.auto_parse(&f.sql, parse.types, cycle) {
                    return Ok(out);
                }
                f.sql
            }
            Ok(f) => f.sql,
            Err(marker) => marker,
        };
        self.expect.push(cycle, b'1', Action::Pass);
        Ok(parse_message(parse.name, &text, parse.types))
    }

    /// What goes upstream for a rewritten unnamed Parse that was seen
    /// before: a Close standing in for it, or its preparing under a name of
    /// rowgate's. `None` to send it as it is.
    fn auto_parse(&mut self, sql: &str, types: &[u8], cycle: u64) -> Option<Bytes> {
        if sql.len() > MAX_AUTO_LEN {
            return None;
        }
        if !self.texts.contains_key(sql) && self.texts.len() >= SEEN_ENTRIES {
            self.texts
                .retain(|_, by_types| by_types.values().any(|s| s.auto.is_some()));
            if self.texts.len() >= SEEN_ENTRIES {
                return None;
            }
        }
        let by_types = match self.texts.get_mut(sql) {
            Some(t) => t,
            None => self.texts.entry(sql.to_string()).or_default(),
        };
        let seen = match by_types.get_mut(types) {
            Some(s) => s,
            None => by_types.entry(types.to_vec()).or_default(),
        };
        if let Some((auto, _)) = seen.usable(cycle) {
            self.unnamed = Some(auto.clone());
            let mut out = self.close_retired();
            self.expect.push(cycle, b'3', Action::AsParseComplete);
            out.put_slice(&close_message(b'S', ""));
            return Some(out.freeze());
        }
        if !seen.run(self.shared.prepare_threshold) || self.live >= MAX_AUTOS {
            return None;
        }
        self.autos += 1;
        self.live += 1;
        let auto = Auto::new(auto_name(self.nonce, self.autos), cycle);
        seen.auto = Some((auto.clone(), Vec::new()));
        self.unnamed = Some(auto.clone());
        let mut out = self.close_retired();
        self.expect.push(cycle, b'1', Action::Created(auto.clone()));
        out.put_slice(&parse_message(&auto.name, sql, types));
        Some(out.freeze())
    }

    /// A Bind or Describe naming the unnamed statement, made to name the
    /// upstream statement standing for it; `None` to send it unchanged.
    fn name_unnamed(&self, tag: u8, body: &[u8]) -> Result<Option<Bytes>, WireError> {
        let Some(auto) = &self.unnamed else {
            return Ok(None);
        };
        let mut out = BytesMut::with_capacity(body.len() + auto.name.len() + 8);
        if tag == b'B' {
            let (portal, statement, rest) = messages::bind(body)?;
            if !statement.is_empty() {
                return Ok(None);
            }
            wire::put_message(&mut out, b'B', |b| {
                wire::put_cstr(b, portal);
                wire::put_cstr(b, &auto.name);
                b.put_slice(rest);
            });
        } else {
            if messages::target(body)? != (b'S', "") {
                return Ok(None);
            }
            wire::put_message(&mut out, b'D', |b| {
                b.put_u8(b'S');
                wire::put_cstr(b, &auto.name);
            });
        }
        Ok(Some(out.freeze()))
    }

    /// Forgets every automatic statement; those that exist upstream are
    /// closed with the next message that uses one (`close`), or were
    /// dropped by the client (`DEALLOCATE ALL`).
    fn forget_autos(&mut self, close: bool) {
        let autos = self.shapes.drain().filter_map(|(_, s)| s.auto).chain(
            self.texts
                .drain()
                .flat_map(|(_, t)| t.into_values())
                .filter_map(|s| s.auto),
        );
        let names: Vec<String> = autos
            .filter(|(a, _)| a.ready())
            .map(|(a, _)| a.name.clone())
            .collect();
        if close {
            self.retired.extend(names);
        }
        self.live = 0;
        self.unnamed = None;
    }

    /// Keeps automatic statements consistent with the session's settings
    /// (see [`autoprep::changes_settings`]): forgets them when a statement
    /// changes a setting, and when a transaction that changed one ends.
    fn settings_event(&mut self, changes_settings: bool, ends_transaction: bool) {
        if changes_settings {
            self.set_in_transaction = true;
            self.forget_autos(true);
        }
        if ends_transaction && self.set_in_transaction {
            self.set_in_transaction = changes_settings;
            self.forget_autos(true);
        }
    }

    /// A statement sent (or a prepared one bound) that may change the
    /// search path: the path it sets is taken at once, for the statements
    /// after it in the same cycle; PostgreSQL's is read after the cycle.
    fn path_event(&mut self, change: Option<&rewrite::PathChange>, ends_transaction: bool) {
        match change {
            Some(change) => {
                self.path_touched = true;
                self.cycle_touches = true;
                if let rewrite::PathChange::Set(entries) = change {
                    self.set_path(entries.clone());
                }
            }
            // A transaction's end may undo a change made in it.
            None if ends_transaction && self.path_touched => self.cycle_touches = true,
            None => {}
        }
    }

    fn set_path(&mut self, entries: Vec<String>) {
        if entries != self.path {
            self.path = entries;
            self.cache.clear();
            self.forget_autos(true);
        }
    }

    /// Reads the session's search path from PostgreSQL with a query of
    /// rowgate's own, between two cycles (its messages never reach the
    /// client), and takes it. In a failed transaction it cannot be read;
    /// nothing but the transaction's end runs there, which reads it again.
    async fn settle_path<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut BufWriter<W>,
    ) -> Result<bool, WireError> {
        let answer = self.own.register(self.cycles);
        self.pending.fetch_add(1, Ordering::SeqCst);
        wr.write_all(&query_message(PATH_QUERY)).await?;
        wr.flush().await?;
        self.cycles += 1;
        match answer.await {
            Ok(Answer {
                value: Some(text),
                failed: false,
                ..
            }) => match rewrite::parse_path_text(&text) {
                Some(entries) => {
                    self.set_path(entries);
                    self.settle = false;
                    Ok(true)
                }
                None => Ok(false),
            },
            // In a failed transaction nothing but its end runs; that end
            // reads the path again.
            Ok(Answer { status: b'E', .. }) => Ok(true),
            // Not readable outside a failed transaction (or the relay is
            // gone): the session cannot go on knowing where names resolve.
            _ => Ok(false),
        }
    }

    /// Close messages for retired automatic statements, whose
    /// CloseComplete the relay drops; to be sent before what is expected
    /// next, so called before its expectations are pushed.
    fn close_retired(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        for name in self.retired.drain(..) {
            self.expect.push(self.cycles, b'3', Action::Drop);
            out.put_slice(&close_message(b'S', &name));
        }
        out
    }

    /// The rewrite of `sql` to forward, or the marker of its refusal.
    async fn rewrite_or_refuse(&mut self, sql: &str, params: &[Oid]) -> Result<Forward, String> {
        self.statements += 1;
        let result = match self.audit_refusal() {
            Some(refusal) => Err(refusal),
            None => match self.answer(sql).await {
                Some(text) => Ok(Forward::answer(text)),
                None => self.rewrite(sql, params).await,
            },
        };
        if self.trail.is_some() {
            match &result {
                Ok(f) => self.note(sql, Some(&f.sql), None),
                Err(r) => self.note(sql, None, Some(r)),
            }
        }
        match &result {
            Ok(_) => self.counters.forwarded.inc(),
            Err(r) => self
                .shared
                .metrics
                .statements
                .with_label_values(&["refused", r.sqlstate()])
                .inc(),
        }
        match result {
            Ok(forward) => {
                debug!(user = %self.user, sql = %forward.sql, "forward");
                if forward.deallocates_all {
                    self.forget_autos(false);
                }
                self.settings_event(forward.changes_settings, forward.ends_transaction);
                Ok(forward)
            }
            Err(refusal) => {
                self.refused += 1;
                debug!(user = %self.user, %refusal, "refuse");
                Err(self.refuse_text(&refusal, Some(sql)))
            }
        }
    }

    /// Takes a newer catalog snapshot when this one is old. What was
    /// derived from the old one (rewrites, automatic statements) is
    /// dropped when the objects changed.
    async fn catalog_fresh(&mut self) {
        let max_age = self.shared.catalog.max_age;
        if self.catalog.age() <= max_age {
            return;
        }
        // Another session's reload may have finished already; otherwise
        // one starts in the background and this statement goes on with
        // the snapshot it has.
        if let Some(latest) = self.shared.catalog.latest(&self.database) {
            if !Arc::ptr_eq(&latest, &self.catalog) {
                self.adopt(latest);
            }
        }
        if self.catalog.age() > max_age {
            self.shared.catalog.reload_in_background(&self.database);
        }
    }

    fn adopt(&mut self, fresh: Arc<Snapshot>) {
        if fresh.generation() != self.catalog.generation() {
            self.cache.clear();
            self.forget_autos(true);
        }
        self.catalog = fresh;
    }

    async fn rewrite(&mut self, sql: &str, params: &[Oid]) -> Result<Forward, Refusal> {
        // The declared parameter types decide what a condition executes.
        let key = if params.is_empty() {
            std::borrow::Cow::Borrowed(sql)
        } else {
            std::borrow::Cow::Owned(format!("{sql}\0{params:?}"))
        };
        if let Some(hit) = self.cache.get(key.as_ref()) {
            return hit.clone();
        }
        let mut result = self.rewrite_now(sql, params);
        if let Err(Refusal::UnknownTable(_) | Refusal::UnknownFunction(_)) = result {
            // A relation created since the snapshot: look again, once.
            if let Ok(fresh) = self
                .shared
                .catalog
                .refresh(&self.database, Duration::from_secs(1))
                .await
            {
                if !Arc::ptr_eq(&fresh, &self.catalog) {
                    self.adopt(fresh);
                    result = self.rewrite_now(sql, params);
                }
            }
        }
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(key.into_owned(), result.clone());
        result
    }

    fn rewrite_now(&self, sql: &str, params: &[Oid]) -> Result<Forward, Refusal> {
        let started = Instant::now();
        let result = self.rewrite_timed(sql, params);
        self.shared
            .metrics
            .rewrite_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn rewrite_timed(&self, sql: &str, params: &[Oid]) -> Result<Forward, Refusal> {
        let cx = Context {
            access: &self.access,
            catalog: &*self.catalog,
            search_path: &self.path,
            params,
            fence: self.shared.fence,
            listing: self.shared.listing,
        };
        let rewritten = rewrite::rewrite(sql, &cx)?;
        let statements = rewritten.statements.as_deref().unwrap_or_default();
        // Only a text that names set_config can call it.
        let set_config = rewrite::may_call_set_config(sql);
        Ok(Forward {
            path: statements
                .iter()
                .rev()
                .filter(|s| set_config || !matches!(s, sqlparser::ast::Statement::Query(_)))
                .find_map(rewrite::path_change),
            preparable: autoprep::preparable(statements) && !set_config,
            deallocates_all: autoprep::deallocates_all(statements),
            changes_settings: autoprep::changes_settings(statements, set_config),
            ends_transaction: autoprep::ends_transaction(statements),
            sql: rewritten.sql,
        })
    }

    /// Takes up a reloaded policy set; false when it changed this user's
    /// access (or removed the user), which ends the session.
    fn access_unchanged(&mut self) -> bool {
        let current = self.shared.policy.load();
        if Arc::ptr_eq(&current, &self.policy) {
            return true;
        }
        self.policy = current.clone();
        let login = self.policy.reresolve(&self.login).as_ref() == Some(&self.login);
        let viewed = match &self.viewing {
            None => true,
            Some(v) => self.policy.access(v).as_ref() == Some(&self.access),
        };
        login && viewed
    }

    /// The query that answers `SHOW rowgate.access` or `SELECT
    /// rowgate.explain('...')` for the session's (or viewed) user; `None`
    /// for any other text.
    async fn answer(&mut self, sql: &str) -> Option<String> {
        let text = match view_as::answered(sql)? {
            view_as::Answered::Access => {
                let lines = crate::cli::access::render(&self.policy, &self.access);
                let items: Vec<String> = lines.lines().map(view_as::escaped_literal).collect();
                return Some(format!(
                    "SELECT a.line AS \"rowgate.access\" FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) WITH ORDINALITY AS a(line, n) ORDER BY a.n",
                    items.join(", ")
                ));
            }
            view_as::Answered::Explain(inner) => match self.access.role {
                Role::Admin => inner,
                _ => match self.rewrite(&inner, &[]).await {
                    Ok(f) => f.sql,
                    Err(r) => format!("ERROR {}: {r}", r.sqlstate()),
                },
            },
        };
        Some(format!(
            "SELECT {} AS explain",
            view_as::escaped_literal(&text)
        ))
    }

    /// What a text containing `view_as` asks, if it is a view-as statement.
    fn view_as_request(&self, sql: &[u8]) -> Option<Result<ViewAs, Refusal>> {
        view_as::view_as(std::str::from_utf8(sql).ok()?.trim_end_matches('\0'))
    }

    /// A simple Query that sets or resets `rowgate.view_as`: for an admin
    /// outside a transaction block, the session takes the viewed user's
    /// access (or its own back) and the statement goes upstream as it is
    /// (PostgreSQL keeps the placeholder setting, and answers `SET`);
    /// anything else is refused.
    async fn view_as_query<W: AsyncWrite + Unpin>(
        &mut self,
        body: &[u8],
        wr: &mut BufWriter<W>,
    ) -> Result<Bytes, WireError> {
        let sql = refusal_sql(body);
        let request = match self.view_as_request(body) {
            Some(r) => r,
            None => return Ok(query_message(&sql)),
        };
        let outcome = match request {
            _ if self.login.role != Role::Admin => Err(Refusal::Setting(view_as::SETTING.into())),
            Err(refusal) => Err(refusal),
            Ok(ViewAs::Reset) => {
                if let Some(was) = self.viewing.take() {
                    self.access = self.login.clone();
                    self.fresh_access();
                    self.view_event("view_as_end", &was);
                }
                Ok(())
            }
            Ok(ViewAs::Set(name)) => self.start_viewing(name, wr).await?,
        };
        Ok(match outcome {
            Ok(()) => {
                self.note(&sql, Some(&sql), None);
                query_message(&sql)
            }
            Err(refusal) => {
                self.note(&sql, None, Some(&refusal));
                query_message(&self.refuse(&refusal))
            }
        })
    }

    /// Takes `name`'s access for the session, after pinning upstream what
    /// a member's session has pinned (standard_conforming_strings, the
    /// search path) with queries of rowgate's own.
    async fn start_viewing<W: AsyncWrite + Unpin>(
        &mut self,
        name: String,
        wr: &mut BufWriter<W>,
    ) -> Result<Result<(), Refusal>, WireError> {
        let Some(access) = self.policy.access(&name) else {
            return Ok(Err(Refusal::ViewAsUnknown(name)));
        };
        let answer = self
            .own_query("SELECT pg_catalog.current_setting('client_encoding')", wr)
            .await?;
        match answer {
            Some(Answer {
                status: b'I',
                value: Some(v),
                ..
            }) if v.eq_ignore_ascii_case("UTF8") => {}
            Some(Answer { status: b'I', .. }) => return Ok(Err(Refusal::ViewAsEncoding)),
            _ => return Ok(Err(Refusal::ViewAsInTransaction)),
        }
        let catalog = match self.shared.catalog.get(&self.database).await {
            Ok(c) => c,
            Err(e) => {
                warn!(database = %self.database, "cannot read the upstream catalog: {e}");
                return Ok(Err(Refusal::unsupported(
                    "viewing as a user while the upstream catalog cannot be read",
                )));
            }
        };
        let path = rewrite::path_for_member(&self.shared.search_path, &access.user);
        let pin = format!(
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'on', false), \
             pg_catalog.set_config('search_path', {}, false)",
            view_as::escaped_literal(&rewrite::path_text(&path))
        );
        match self.own_query(&pin, wr).await? {
            Some(Answer { failed: false, .. }) => {}
            _ => {
                return Ok(Err(Refusal::unsupported(
                    "viewing as a user here (the session could not be set up)",
                )))
            }
        }
        if let Some(was) = self.viewing.take() {
            self.view_event("view_as_end", &was);
        }
        self.access = access;
        self.catalog = catalog;
        self.path = path;
        self.settle = false;
        self.fresh_access();
        self.viewing = Some(name.clone());
        self.view_event("view_as_start", &name);
        Ok(Ok(()))
    }

    /// Runs a query of rowgate's own between two cycles; its answer, or
    /// `None` when the relay is gone.
    async fn own_query<W: AsyncWrite + Unpin>(
        &mut self,
        sql: &str,
        wr: &mut BufWriter<W>,
    ) -> Result<Option<Answer>, WireError> {
        let answer = self.own.register(self.cycles);
        self.pending.fetch_add(1, Ordering::SeqCst);
        wr.write_all(&query_message(sql)).await?;
        wr.flush().await?;
        self.cycles += 1;
        Ok(answer.await.ok())
    }

    /// Forgets what was derived from the access the session had.
    fn fresh_access(&mut self) {
        self.cache.clear();
        self.forget_autos(true);
        self.stateful.clear();
    }

    /// An audit record of a view-as start or end.
    fn view_event(&self, kind: &'static str, viewed: &str) {
        if let (Some(audit), Some(info)) = (&self.shared.audit, &self.audit_info) {
            let mut fields = info.clone();
            fields.insert("viewed_as".into(), viewed.into());
            audit.record(kind, fields);
        }
    }

    /// The refusal every statement gets while the audit log cannot take
    /// records (`on_failure: refuse`).
    fn audit_refusal(&self) -> Option<Refusal> {
        let audit = self.shared.audit.as_ref()?;
        (!audit.accepts()).then_some(Refusal::AuditUnavailable)
    }

    /// Takes note of the decision on a statement, for its audit record.
    fn note(&mut self, sql: &str, forwarded: Option<&str>, refusal: Option<&Refusal>) {
        if self.trail.is_none() {
            return;
        }
        self.decided = Some(Arc::new(Decided {
            sql: Arc::from(sql),
            forwarded: forwarded.map(Arc::from),
            refusal: refusal.map(|r| (r.sqlstate(), r.to_string())),
            viewed_as: self.viewing.as_deref().map(Arc::from),
        }));
    }

    /// Adds the statement just decided to the trail, in the current cycle.
    fn audit_push(&mut self, waits: Await) {
        let Some(trail) = self.trail else {
            return;
        };
        let decided = self.decided.take().unwrap_or_else(|| {
            Arc::new(Decided {
                sql: Arc::from(""),
                forwarded: None,
                refusal: None,
                viewed_as: None,
            })
        });
        trail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.cycles, waits, decided);
    }

    /// A Parse sent: the statement is remembered by name for its
    /// executions, and its result awaited (only an error is recorded).
    fn audit_parsed(&mut self, body: &[u8]) -> Result<(), WireError> {
        let Some(trail) = self.trail else {
            return Ok(());
        };
        let name = messages::parse(body)?.name.to_string();
        let Some(decided) = self.decided.take() else {
            return Ok(());
        };
        if self.audit_statements.len() < AUDIT_NAMES || self.audit_statements.contains_key(&name) {
            self.audit_statements.insert(name, decided.clone());
        }
        trail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.cycles, Await::Parse, decided);
        Ok(())
    }

    /// Follows Bind, Execute and Close for the audit records of executions.
    fn audit_message(&mut self, tag: u8, body: &[u8]) -> Result<(), WireError> {
        match tag {
            b'B' => {
                let (portal, statement, _) = messages::bind(body)?;
                if let Some(d) = self.audit_statements.get(statement).cloned() {
                    if self.audit_portals.len() < AUDIT_NAMES || portal.is_empty() {
                        self.audit_portals.insert(portal.to_string(), d);
                    }
                }
            }
            b'E' => {
                let portal = messages::execute_portal(body)?;
                let decided = self.audit_portals.get(portal).cloned().unwrap_or_else(|| {
                    Arc::new(Decided {
                        sql: Arc::from("(a portal rowgate did not see bound)"),
                        forwarded: None,
                        refusal: None,
                        viewed_as: None,
                    })
                });
                if let Some(trail) = self.trail {
                    trail.lock().unwrap_or_else(|e| e.into_inner()).push(
                        self.cycles,
                        Await::Execute,
                        decided,
                    );
                }
            }
            b'C' => {
                let (kind, name) = messages::target(body)?;
                if kind == b'S' {
                    self.audit_statements.remove(name);
                } else {
                    self.audit_portals.remove(name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Registers a refusal and returns the text that stands in for the
    /// statement upstream (a marker, or a probe of `sql`: see
    /// [`super::refusals`]).
    fn refuse_text(&mut self, refusal: &Refusal, sql: Option<&str>) -> String {
        self.seq += 1;
        self.refusals.register(self.seq, refusal, sql)
    }

    fn refuse(&mut self, refusal: &Refusal) -> String {
        self.refuse_text(refusal, None)
    }
}

fn not_utf8() -> Refusal {
    Refusal::Encoding
}

/// A Query's text for its audit record ("" when it is not UTF-8).
fn refusal_sql(body: &[u8]) -> String {
    match messages::query(body) {
        Ok(Ok(sql)) => sql.to_string(),
        _ => String::new(),
    }
}

fn query_message(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 6);
    wire::put_message(&mut out, b'Q', |b| wire::put_cstr(b, text));
    out.freeze()
}

/// The name of a session's `n`th automatic statement.
fn auto_name(nonce: u64, n: usize) -> String {
    format!("{AUTO}{nonce:016x}_{n}")
}

fn parse_message(name: &str, text: &str, types: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + name.len() + types.len() + 8);
    wire::put_message(&mut out, b'P', |b| {
        wire::put_cstr(b, name);
        wire::put_cstr(b, text);
        b.put_slice(types);
    });
    out.freeze()
}

/// A Bind, Describe or Close naming a statement under rowgate's reserved
/// prefix, made to name one that never exists: the client's own statements
/// cannot carry the prefix (their Parse and PREPARE are refused), and
/// rowgate's are not the client's to run, describe or close. `None` for
/// any other message.
fn reserved_target(tag: u8, body: &[u8]) -> Result<Option<Bytes>, WireError> {
    let mut out = BytesMut::new();
    if tag == b'B' {
        let (portal, statement, rest) = messages::bind(body)?;
        if !rewrite::is_reserved_name(statement) {
            return Ok(None);
        }
        wire::put_message(&mut out, b'B', |b| {
            wire::put_cstr(b, portal);
            wire::put_cstr(b, NO_STATEMENT);
            b.put_slice(rest);
        });
    } else {
        let (kind, name) = messages::target(body)?;
        if kind != b'S' || !rewrite::is_reserved_name(name) {
            return Ok(None);
        }
        wire::put_message(&mut out, tag, |b| {
            b.put_u8(b'S');
            wire::put_cstr(b, NO_STATEMENT);
        });
    }
    Ok(Some(out.freeze()))
}

fn close_message(kind: u8, name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + 7);
    wire::put_message(&mut out, b'C', |b| {
        b.put_u8(kind);
        wire::put_cstr(b, name);
    });
    out.freeze()
}

/// `EXECUTE name(values)`; the values are plain numbers (see
/// [`autoprep::shape`]).
fn execute(name: &str, values: &[String]) -> String {
    if values.is_empty() {
        format!("EXECUTE {name}")
    } else {
        format!("EXECUTE {name}({})", values.join(", "))
    }
}

/// The relay's request to run a client statement again the ordinary way,
/// after its automatic statement went stale (see [`Back::retry`]).
struct Retry {
    /// The cycle whose `EXECUTE` failed.
    cycle: u64,
    sql: Arc<str>,
    /// `RETRY_OPEN` until the client half takes it up or the relay gives
    /// up waiting, whichever comes first.
    state: Arc<AtomicU8>,
    /// Whether the statement was sent again.
    sent: tokio::sync::oneshot::Sender<bool>,
}

const RETRY_OPEN: u8 = 0;
const RETRY_TAKEN: u8 = 1;
const RETRY_ABANDONED: u8 = 2;
/// How long the relay waits for the client half to take up a retry.
const RETRY_WAIT: Duration = Duration::from_millis(200);

/// The upstream-to-client half.
struct Back<'a> {
    own: &'a OwnQueries,
    /// Bytes read from upstream (relayed to the client, but for rowgate's
    /// own messages).
    bytes_out: prometheus::IntCounter,
    refusals: &'a Refusals,
    expect: &'a Expectations,
    /// ReadyForQuery messages relayed so far: the cycle under way.
    cycles: u64,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// The ReadyForQuery of a failed cycle whose statement runs again.
    drop_ready: bool,
    retry_tx: mpsc::Sender<Retry>,
    pending: &'a AtomicI64,
    client_done: &'a AtomicBool,
    /// The audit log and the session's members of its records (a JSON
    /// fragment, made once).
    audit: Option<(&'a Audit, &'a Arc<str>)>,
    trail: Option<&'a Mutex<Trail>>,
}

impl Back<'_> {
    async fn relay<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        mut rd: R,
        wr: W,
        mut buf: BytesMut,
        mut fatal_rx: mpsc::Receiver<Bytes>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Outcome {
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        let mut draining = *shutdown.borrow();
        let result: Result<Outcome, WireError> = async {
            let mut passthrough = 0usize;
            loop {
                self.drain(&mut buf, &mut wr, &mut passthrough).await?;
                wr.flush().await?;
                // Draining, and nothing is running: the session closes after
                // a short grace, so that a client reading the last result
                // does not meet the termination notice in the same read.
                let idle = draining && self.pending.load(Ordering::SeqCst) <= 0 && passthrough == 0;
                let grace = tokio::time::sleep(if idle { SHUTDOWN_GRACE } else { Duration::MAX / 4 });
                let pending_before = buf.len();
                tokio::select! {
                    biased;
                    Some(fatal) = fatal_rx.recv() => {
                        wr.write_all(&fatal).await?;
                        wr.flush().await?;
                        return Ok(Outcome::Rejected("invalid client message".into()));
                    }
                    () = grace, if idle => {
                        let msg = "terminating connection due to administrator command";
                        wr.write_all(&wire::error_response("FATAL", sqlstate::ADMIN_SHUTDOWN, msg)).await?;
                        wr.flush().await?;
                        return Ok(Outcome::Shutdown);
                    }
                    changed = shutdown.changed(), if !draining => {
                        draining = changed.is_err() || *shutdown.borrow();
                    }
                    read = wire::fill(&mut rd, &mut buf) => match read {
                        Ok(()) => self.bytes_out.inc_by((buf.len() - pending_before) as u64),
                        Err(_) if self.client_done.load(Ordering::SeqCst) => return Ok(Outcome::Terminated),
                        Err(e) => {
                            let msg = "the upstream database closed the connection";
                            let _ = wr.write_all(&wire::error_response("FATAL", sqlstate::CONNECTION_FAILURE, msg)).await;
                            let _ = wr.flush().await;
                            return Ok(Outcome::Failed(format!("upstream: {e}")));
                        }
                    },
                }
            }
        }
        .await;
        let _ = wr.shutdown().await;
        result.unwrap_or_else(|e| {
            if self.client_done.load(Ordering::SeqCst) {
                Outcome::Terminated
            } else {
                Outcome::ClientGone.or_failed(e)
            }
        })
    }

    /// Writes every complete message in `buf`, streaming the ones not
    /// looked at without waiting for their end.
    async fn drain<W: AsyncWrite + Unpin>(
        &mut self,
        buf: &mut BytesMut,
        wr: &mut BufWriter<W>,
        passthrough: &mut usize,
    ) -> Result<(), WireError> {
        loop {
            if *passthrough > 0 {
                let n = (*passthrough).min(buf.len());
                if n == 0 {
                    return Ok(());
                }
                wr.write_all(&buf.split_to(n)).await?;
                *passthrough -= n;
                continue;
            }
            if buf.len() < 5 {
                return Ok(());
            }
            let tag = buf[0];
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(WireError::BadLength(len.into()));
            }
            // A cycle of rowgate's own: consumed here, never relayed.
            if self.own.owns(self.cycles) {
                let Some(frame) = wire::try_frame(buf, MAX_INSPECTED)? else {
                    return Ok(());
                };
                if self.own.take(self.cycles, tag, frame.body()) {
                    self.cycles += 1;
                    self.status = frame.body().first().copied().unwrap_or(b'I');
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            let expected = (matches!(tag, b'1' | b'3' | b'C') && !self.expect.is_empty())
                || (matches!(tag, b'1' | b'C' | b'I' | b's') && self.trail.is_some());
            // An error too long to be a refusal's or a stale statement's
            // (a huge message or detail) goes to the client as it is.
            let huge = len as usize + 1 > MAX_INSPECTED;
            if (tag != b'E' && tag != b'Z' && !expected) || (tag == b'E' && huge) {
                *passthrough = len as usize + 1;
                continue;
            }
            let Some(frame) = wire::try_frame(buf, MAX_INSPECTED)? else {
                return Ok(());
            };
            match tag {
                b'Z' => {
                    if !self.expect.is_empty() {
                        self.expect.end_cycle(self.cycles);
                    }
                    let cycle = self.cycles;
                    self.cycles += 1;
                    self.status = frame.body().first().copied().unwrap_or(b'I');
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                    if !std::mem::take(&mut self.drop_ready) {
                        wr.write_all(&frame.frame).await?;
                        self.audit(cycle, b'Z', frame.body());
                    } else if let Some(trail) = self.trail {
                        trail.lock().unwrap_or_else(|e| e.into_inner()).defer(cycle);
                    }
                }
                b'E' => {
                    if autoprep::stale_statement_error(frame.body()) {
                        self.expect.stale.store(true, Ordering::SeqCst);
                        if let Some(Action::Retry(sql)) = self.expect.take(self.cycles, b'E') {
                            if self.retry(sql).await {
                                self.drop_ready = true;
                                continue;
                            }
                        }
                    }
                    if let Some(e) = self.refusals.translate(frame.body()) {
                        let e = self.in_failed_transaction(e);
                        wr.write_all(&e).await?;
                        self.audit(self.cycles, b'E', &e[5..]);
                    } else {
                        wr.write_all(&frame.frame).await?;
                        self.audit(self.cycles, b'E', frame.body());
                    }
                }
                _ => match self.expect.take(self.cycles, tag) {
                    Some(Action::Swallow(_) | Action::Drop) => {}
                    Some(Action::AsParseComplete) => {
                        wr.write_all(PARSE_COMPLETE).await?;
                        self.audit(self.cycles, b'1', &[]);
                    }
                    _ => {
                        wr.write_all(&frame.frame).await?;
                        self.audit(self.cycles, tag, frame.body());
                    }
                },
            }
        }
    }

    /// A refusal of a statement sent in a transaction block that had
    /// already failed: PostgreSQL answers any such statement (but one that
    /// ends the transaction, which rowgate never refuses) with 25P02 before
    /// looking at what it asks, so the refusal becomes that. Errors its
    /// parser gives first (syntax, encoding, depth) and rowgate's own
    /// conditions stay as they are.
    fn in_failed_transaction(&self, error: Bytes) -> Bytes {
        if self.status != b'E' {
            return error;
        }
        let fields = wire::error_fields(&error[5..]);
        let code = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| v.as_str());
        if !matches!(
            code,
            Some(sqlstate::INSUFFICIENT_PRIVILEGE | sqlstate::FEATURE_NOT_SUPPORTED)
        ) {
            return error;
        }
        let message =
            "current transaction is aborted, commands ignored until end of transaction block";
        wire::error_response("ERROR", sqlstate::IN_FAILED_SQL_TRANSACTION, message)
    }

    /// Follows a message the client was sent; writes the audit records of
    /// the statements it finished.
    fn audit(&self, cycle: u64, tag: u8, body: &[u8]) {
        let (Some(trail), Some((audit, info))) = (self.trail, self.audit) else {
            return;
        };
        let finished = trail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_message(cycle, tag, body);
        for f in finished {
            if audit.wants(f.decision) {
                audit.statement(info, &f);
            }
        }
    }

    /// Asks the client half to run a statement again the ordinary way, after
    /// its automatic statement failed as stale (a column's type changed
    /// under it): then the client sees the statement's result instead of
    /// the error, as without automatic statements. Only outside a
    /// transaction block (inside one the error has aborted it), and only if
    /// nothing was sent upstream after it; otherwise, or when the client
    /// half does not take the request up in time, the error is relayed.
    async fn retry(&mut self, sql: Arc<str>) -> bool {
        if self.status != b'I' {
            return false;
        }
        let state = Arc::new(AtomicU8::new(RETRY_OPEN));
        let (sent, done) = tokio::sync::oneshot::channel();
        let request = Retry {
            cycle: self.cycles,
            sql,
            state: state.clone(),
            sent,
        };
        if self.retry_tx.try_send(request).is_err() {
            return false;
        }
        let mut done = std::pin::pin!(done);
        match tokio::time::timeout(RETRY_WAIT, &mut done).await {
            Ok(answer) => answer.unwrap_or(false),
            Err(_) => {
                let abandoned = state
                    .compare_exchange(
                        RETRY_OPEN,
                        RETRY_ABANDONED,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok();
                // Taken meanwhile: the answer is on its way.
                !abandoned && done.await.unwrap_or(false)
            }
        }
    }
}

impl Outcome {
    fn or_failed(self, e: WireError) -> Outcome {
        match e {
            WireError::Io(_) | WireError::Closed => self,
            other => Outcome::Failed(other.to_string()),
        }
    }
}
