//! Upstream connections shared by every user's sessions (`pool.mode:
//! transaction`). No connection carries user state: rowgate's filters are
//! in the statement text, and what a session set up (its settings, its
//! search path) is applied when it takes a connection, as the difference
//! from what the connection's last session left. A session holds a
//! connection only while a transaction (or an extended-protocol cycle
//! outside one) runs; what cannot move between connections pins the
//! session to its own (see `frontend/session/`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::connect::{connect_within, UpstreamError};
use crate::config::{PoolConfig, Upstream};
use crate::frontend::autoprep::Auto;
use crate::metrics::PoolMetrics;
use crate::tls::Stream;
use crate::wire;
use prometheus::{Histogram, IntCounter, IntGauge};

/// A connection's read half: plain TCP as it is (no dynamic dispatch,
/// and it can move to another worker's poller), anything else boxed.
pub enum Reader {
    Tcp(OwnedReadHalf),
    Boxed(Box<dyn AsyncRead + Unpin + Send>),
}

/// A connection's write half (see [`Reader`]).
pub enum Writer {
    Tcp(OwnedWriteHalf),
    Boxed(Box<dyn AsyncWrite + Unpin + Send>),
}

impl AsyncRead for Reader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Reader::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Boxed(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            Writer::Boxed(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Boxed(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Boxed(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl Reader {
    /// A reader that is always at its end (no connection attached).
    pub fn none() -> Reader {
        Reader::Boxed(Box::new(tokio::io::empty()))
    }
}

impl Writer {
    /// A writer that takes everything (no connection attached).
    pub fn none() -> Writer {
        Writer::Boxed(Box::new(tokio::io::sink()))
    }
}

/// A stream's two halves, and whether what is written needs a flush to
/// leave (TLS buffers records; plain TCP writes at once).
pub fn halves(stream: Stream) -> (Reader, Writer, bool) {
    match stream {
        // Plain TCP splits without a lock; TLS streams share one.
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            (Reader::Tcp(rd), Writer::Tcp(wr), false)
        }
        other => {
            let (rd, wr) = tokio::io::split(other);
            (
                Reader::Boxed(Box::new(rd)),
                Writer::Boxed(Box::new(wr)),
                true,
            )
        }
    }
}

/// The worker thread a socket's readiness is reported to (each runs a
/// single-threaded runtime with a poller of its own; see `server.rs`).
fn this_worker() -> ThreadId {
    std::thread::current().id()
}

/// A Terminate message.
const TERMINATE: &[u8] = b"X\0\0\0\x04";
/// How often the pools close expired connections and open idle ones.
const MAINTENANCE: Duration = Duration::from_secs(1);
/// Prepared statements a pooled connection keeps at most.
const MAX_STATEMENTS: usize = 2000;
/// How long applying a session's settings may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream connection in a pool.
pub struct Server {
    pub rd: Reader,
    pub wr: Writer,
    /// Writes need a flush (TLS).
    pub flushes: bool,
    /// Bytes read past the last message handled.
    pub buf: BytesMut,
    /// Its cancel key (process id, secret).
    pub key: Option<(i32, i32)>,
    /// The ParameterStatus messages of its startup.
    pub startup: Vec<Bytes>,
    /// The settings in force: its startup's, then the last session's.
    applied: Vec<(String, String)>,
    /// The statements prepared on it under rowgate's shared names (see
    /// `frontend/session/pooling.rs`), which sessions reuse.
    pub statements: HashMap<String, Arc<Auto>>,
    created: Instant,
    idle_since: Instant,
    /// The worker whose poller its sockets are registered with.
    home: ThreadId,
    /// The pool's count of open connections, one less when dropped.
    open: IntGauge,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no upstream connection became free within {0:?} (pool.max_client_wait)")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("the upstream connection could not take the session's settings: {0}")]
    Apply(String),
}

/// A connection taken from a pool: its place in the pool, returned when
/// this is dropped.
pub struct Lease {
    _permit: OwnedSemaphorePermit,
    /// The pool's count of connections in use, one less when dropped.
    in_use: IntGauge,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_use.dec();
    }
}

struct Pool {
    idle: Mutex<Vec<Server>>,
    permits: Arc<Semaphore>,
    /// Its figures (the data source's and database's series).
    open: IntGauge,
    in_use: IntGauge,
    wait: Histogram,
    timeouts: IntCounter,
}

/// The pools, one per upstream database.
pub struct Pools {
    config: PoolConfig,
    upstream: Upstream,
    /// The startup parameters of every pooled connection.
    neutral: Vec<(String, String)>,
    by_database: Mutex<HashMap<String, Arc<Pool>>>,
    /// Bumped when a shared statement went stale: automatic statements'
    /// names include it.
    epoch: AtomicU64,
    /// The data source's name, for its figures.
    source: String,
    metrics: PoolMetrics,
}

impl Pools {
    /// Pools whose connections start with `search_path` and the state a
    /// member's session pins (standard_conforming_strings, UTF-8).
    pub fn new(
        config: PoolConfig,
        upstream: Upstream,
        search_path: &str,
        source: &str,
        metrics: PoolMetrics,
    ) -> Arc<Self> {
        let neutral = vec![
            ("search_path".to_string(), search_path.to_string()),
            ("standard_conforming_strings".to_string(), "on".to_string()),
            ("client_encoding".to_string(), "UTF8".to_string()),
        ];
        Arc::new(Pools {
            config,
            upstream,
            neutral,
            by_database: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            source: source.to_string(),
            metrics,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn next_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    fn pool(&self, database: &str) -> Arc<Pool> {
        let mut pools = self.by_database.lock().unwrap_or_else(|e| e.into_inner());
        // Taken once per pooled transaction: no allocation when it exists.
        if let Some(pool) = pools.get(database) {
            return pool.clone();
        }
        pools
            .entry(database.to_string())
            .or_insert_with(|| {
                let labels = [self.source.as_str(), database];
                let m = &self.metrics;
                Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(self.config.size)),
                    open: m.connections.with_label_values(&labels),
                    in_use: m.in_use.with_label_values(&labels),
                    wait: m.wait_seconds.with_label_values(&labels),
                    timeouts: m.timeouts.with_label_values(&labels),
                })
            })
            .clone()
    }

    /// A connection to `database` with `wanted` settings in force (the
    /// ParameterStatus messages the change gave, too), waiting at most
    /// `pool.max_client_wait` for one to be free.
    pub async fn acquire(
        &self,
        database: &str,
        wanted: &[(String, String)],
    ) -> Result<(Server, Lease, Vec<Bytes>), PoolError> {
        let pool = self.pool(database);
        let wait = self.config.max_client_wait;
        let started = Instant::now();
        let permit = match tokio::time::timeout(wait, pool.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                pool.timeouts.inc();
                return Err(PoolError::Timeout(wait));
            }
        };
        pool.wait.observe(started.elapsed().as_secs_f64());
        pool.in_use.inc();
        let lease = Lease {
            _permit: permit,
            in_use: pool.in_use.clone(),
        };
        let here = this_worker();
        let reused = loop {
            let next = {
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                // The last one used on this worker, else any (moved here).
                idle.iter()
                    .rposition(|s| s.home == here)
                    .or_else(|| idle.len().checked_sub(1))
                    .map(|at| idle.remove(at))
            };
            match next {
                None => break None,
                Some(mut s) => {
                    if !self.expired(&s, Instant::now()) && s.alive() {
                        match s.move_here(here) {
                            Ok(()) => break Some(s),
                            Err(e) => debug!("cannot move a pooled connection: {e}"),
                        }
                    } else {
                        close(s);
                    }
                }
            }
        };
        let fresh = reused.is_none();
        let mut server = match reused {
            Some(s) => s,
            // Boxed (rare): an idle session's future then holds none of
            // the connect's state.
            None => Box::pin(self.open(database, &pool)).await?,
        };
        match apply_within(&mut server, wanted).await {
            Ok(reported) => Ok((server, lease, reported)),
            // What the last session left made it fail (a statement
            // timeout of a millisecond firing on the change itself): a
            // new connection starts from the neutral settings.
            Err(e) if !fresh => {
                debug!(database = %database, "a pooled connection could not take a session's settings ({e}): replaced");
                close(server);
                let mut server = Box::pin(self.open(database, &pool)).await?;
                let reported = apply_within(&mut server, wanted).await?;
                Ok((server, lease, reported))
            }
            Err(e) => Err(e),
        }
    }

    /// Returns a clean connection (outside a transaction, nothing under
    /// way) to its pool; one holding too many prepared statements is closed
    /// instead (a new one starts without them).
    pub fn release(&self, database: &str, mut server: Server, lease: Lease) {
        if server.statements.len() > MAX_STATEMENTS {
            close(server);
            return;
        }
        server.idle_since = Instant::now();
        self.pool(database)
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(server);
        drop(lease);
    }

    async fn open(&self, database: &str, pool: &Pool) -> Result<Server, UpstreamError> {
        let limit = self.config.server_connect_timeout;
        let c = connect_within(&self.upstream, database, &self.neutral, limit).await?;
        let (rd, wr, flushes) = halves(c.stream);
        let now = Instant::now();
        pool.open.inc();
        Ok(Server {
            open: pool.open.clone(),
            rd,
            wr,
            flushes,
            buf: c.buffer,
            key: c.key,
            startup: c.startup_messages,
            applied: self.neutral.clone(),
            statements: HashMap::new(),
            created: now,
            idle_since: now,
            home: this_worker(),
        })
    }

    fn expired(&self, s: &Server, now: Instant) -> bool {
        now.duration_since(s.created) >= self.config.server_lifetime
    }

    /// Closes idle connections past `server_idle_timeout` (beyond
    /// `min_idle`) or `server_lifetime`, and opens connections up to
    /// `min_idle` for every database used; runs until the process ends.
    pub async fn maintain(self: Arc<Self>) {
        loop {
            tokio::time::sleep(MAINTENANCE).await;
            let pools: Vec<(String, Arc<Pool>)> = self
                .by_database
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (database, pool) in pools {
                let now = Instant::now();
                let stale: Vec<Server> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    // Oldest idle first: the ones beyond min_idle go.
                    idle.sort_by_key(|s| std::cmp::Reverse(s.idle_since));
                    let mut keep = Vec::with_capacity(idle.len());
                    let mut gone = Vec::new();
                    for s in idle.drain(..) {
                        let idle_too_long = keep.len() >= self.config.min_idle
                            && now.duration_since(s.idle_since) >= self.config.server_idle_timeout;
                        if idle_too_long || self.expired(&s, now) {
                            gone.push(s);
                        } else {
                            keep.push(s);
                        }
                    }
                    *idle = keep;
                    gone
                };
                for s in stale {
                    debug!(database = %database, "closing an idle pooled connection");
                    close(s);
                }
                let idle_count = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
                for _ in idle_count..self.config.min_idle {
                    let Ok(permit) = pool.permits.clone().try_acquire_owned() else {
                        break;
                    };
                    match self.open(&database, &pool).await {
                        Ok(s) => {
                            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                            drop(permit);
                        }
                        Err(e) => {
                            warn!(database = %database, "cannot open a pooled connection: {e}");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Puts `wanted` in force on `server` within [`APPLY_TIMEOUT`].
async fn apply_within(
    server: &mut Server,
    wanted: &[(String, String)],
) -> Result<Vec<Bytes>, PoolError> {
    match tokio::time::timeout(APPLY_TIMEOUT, server.apply(wanted)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(PoolError::Apply(e)),
        Err(_) => Err(PoolError::Apply("timed out".into())),
    }
}

/// Ends a connection politely, in the background.
pub fn close(mut s: Server) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = s.wr.write_all(TERMINATE).await;
            let _ = s.wr.shutdown().await;
        })
        .await;
    });
}

/// The statement that takes a connection from settings `from` to `to`:
/// `RESET` for what `to` does not set, `set_config` for what differs.
/// `None` when nothing differs.
pub fn settings_change(from: &[(String, String)], to: &[(String, String)]) -> Option<String> {
    let mut parts = Vec::new();
    // Names of settings are case-insensitive (a client's startup may say
    // `datestyle`, PostgreSQL's catalog says `DateStyle`).
    for (name, _) in from {
        if !to.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            parts.push(format!("RESET {}", quote_ident(name)));
        }
    }
    let mut sets = Vec::new();
    for (name, value) in to {
        if from
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        {
            continue;
        }
        sets.push(format!(
            "pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(value)
        ));
    }
    if !sets.is_empty() {
        parts.push(format!("SELECT {}", sets.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Server {
    /// Puts `wanted` in force; the ParameterStatus messages that gave.
    async fn apply(&mut self, wanted: &[(String, String)]) -> Result<Vec<Bytes>, String> {
        let Some(text) = settings_change(&self.applied, wanted) else {
            return Ok(Vec::new());
        };
        let mut out = BytesMut::new();
        wire::put_message(&mut out, b'Q', |b| wire::put_cstr(b, &text));
        self.wr.write_all(&out).await.map_err(|e| e.to_string())?;
        self.wr.flush().await.map_err(|e| e.to_string())?;
        let mut reported = Vec::new();
        let mut failed = None;
        loop {
            let frame = loop {
                match wire::try_frame(&mut self.buf, 1 << 20).map_err(|e| e.to_string())? {
                    Some(f) => break f,
                    None => wire::fill(&mut self.rd, &mut self.buf)
                        .await
                        .map_err(|e| e.to_string())?,
                }
            };
            match frame.tag() {
                b'S' => reported.push(frame.frame.clone()),
                b'E' => {
                    let fields = wire::error_fields(frame.body());
                    let message = fields
                        .into_iter()
                        .find(|(c, _)| *c == b'M')
                        .map(|(_, m)| m)
                        .unwrap_or_default();
                    failed = Some(message);
                }
                b'Z' => {
                    if let Some(message) = failed {
                        return Err(message);
                    }
                    if frame.body().first() != Some(&b'I') {
                        return Err("the connection was left in a transaction".into());
                    }
                    self.applied = wanted.to_vec();
                    return Ok(reported);
                }
                _ => {}
            }
        }
    }

    /// The settings in force, as the session that used it read them back
    /// after changing some.
    pub fn settings_read(&mut self, now: Vec<(String, String)>) {
        self.applied = now;
    }

    /// Registers the connection's sockets with the poller of worker
    /// `here` (the one taking it), so that its readiness wakes that worker
    /// directly instead of another thread that then wakes it. A TLS
    /// connection stays where it is (it works from any worker).
    fn move_here(&mut self, here: ThreadId) -> std::io::Result<()> {
        if self.home == here {
            return Ok(());
        }
        let rd = std::mem::replace(&mut self.rd, Reader::none());
        let wr = std::mem::replace(&mut self.wr, Writer::none());
        match (rd, wr) {
            (Reader::Tcp(rd), Writer::Tcp(wr)) => {
                let tcp = rd.reunite(wr).map_err(std::io::Error::other)?;
                let tcp = TcpStream::from_std(tcp.into_std()?)?;
                let (rd, wr) = tcp.into_split();
                self.rd = Reader::Tcp(rd);
                self.wr = Writer::Tcp(wr);
                self.home = here;
            }
            (rd, wr) => {
                self.rd = rd;
                self.wr = wr;
            }
        }
        Ok(())
    }

    /// Whether the connection still looks usable: nothing arrived on it
    /// while it was idle (an idle connection receives nothing but its
    /// end: an administrator's termination, a restart).
    fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut scratch = [0u8; 64];
        let mut read = ReadBuf::new(&mut scratch);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.rd)
            .poll_read(&mut cx, &mut read)
            .is_pending()
    }
}

/// The startup ParameterStatus messages a client is sent: `startup`'s,
/// each replaced by the one in `reported` of the same parameter.
pub fn merge_reported(startup: &[Bytes], reported: &[Bytes]) -> Vec<Bytes> {
    let name = |m: &Bytes| -> Option<Vec<u8>> {
        if m.first() != Some(&b'S') {
            return None;
        }
        let body = m.get(5..)?;
        Some(body.split(|&b| b == 0).next()?.to_vec())
    };
    let mut out: Vec<Bytes> = startup
        .iter()
        .map(|m| {
            let n = name(m);
            reported
                .iter()
                .rev()
                .find(|r| n.is_some() && name(r) == n)
                .unwrap_or(m)
                .clone()
        })
        .collect();
    for r in reported {
        if !out.iter().any(|m| name(m) == name(r)) {
            out.push(r.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn only_what_differs_is_changed() {
        let from = pairs(&[("search_path", "public"), ("datestyle", "ISO")]);
        assert_eq!(settings_change(&from, &from), None);
        let to = pairs(&[
            ("search_path", "\"a'b\", public"),
            ("application_name", "x"),
        ]);
        assert_eq!(
            settings_change(&from, &to).unwrap(),
            "RESET \"datestyle\"; SELECT pg_catalog.set_config('search_path', '\"a''b\", public', false), pg_catalog.set_config('application_name', 'x', false)"
        );
        assert_eq!(
            settings_change(&to, &pairs(&[("search_path", "\"a'b\", public")])).unwrap(),
            "RESET \"application_name\""
        );
        // A name differs from the catalog's in case only: the same setting.
        let read = pairs(&[("DateStyle", "ISO"), ("search_path", "public")]);
        assert_eq!(settings_change(&from, &read), None);
    }

    #[test]
    fn reported_parameters_replace_the_startup_ones() {
        let status = |n: &str, v: &str| {
            let mut b = BytesMut::new();
            wire::put_message(&mut b, b'S', |b| {
                wire::put_cstr(b, n);
                wire::put_cstr(b, v);
            });
            b.freeze()
        };
        let startup = vec![status("application_name", ""), status("TimeZone", "UTC")];
        let reported = vec![
            status("application_name", "bi"),
            status("DateStyle", "ISO, DMY"),
        ];
        assert_eq!(
            merge_reported(&startup, &reported),
            vec![
                status("application_name", "bi"),
                status("TimeZone", "UTC"),
                status("DateStyle", "ISO, DMY")
            ]
        );
    }
}
