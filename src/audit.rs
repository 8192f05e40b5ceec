//! The audit log: one JSON line per statement and per session event
//! (login, failed login, logout, policy reload), appended to a file and
//! chained with SHA-256, so that editing, deleting or reordering a line is
//! detectable (`rowgate audit verify FILE`).
//!
//! Each line is a JSON object whose last member is `"hash"`: the SHA-256
//! (hex) of the line's text before it, the object closed where `,"hash"`
//! begins. That text holds `"prev"`, the hash of the line before (64 zeros
//! for the first line a file ever had). A file reopened (SIGHUP, after
//! logrotate moved it) or appended to after a restart goes on from its own
//! last line; a new file's first line carries the hash of the last line
//! written before it, which `verify` prints so that rotated files can be
//! joined.
//!
//! Writing happens on a thread of its own, in batches, from a bounded
//! queue: a statement never waits for the disk. With `on_failure: refuse`
//! a full queue or a failing file makes the proxy refuse statements (and
//! nothing queued is dropped: a failed batch is written again once the
//! file takes it); with `continue` statements go on and records that
//! cannot be written are counted as lost.
//!
//! A statement's record is complete when its result is: [`Trail`] follows
//! a session's responses (a synchronous type, tested without sockets) and
//! hands back each finished statement with its rows, SQLSTATE and time.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::{error, warn};

/// Which statements get a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Statements {
    #[default]
    All,
    /// Refused ones only.
    Refused,
    None,
}

/// What happens to statements while the audit log cannot be written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// They are refused: nothing runs unaudited.
    #[default]
    Refuse,
    /// They run; records that cannot be written are lost (and counted).
    Continue,
}

/// `audit:` in proxy.yaml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    pub file: PathBuf,
    /// Also insert every record into this table.
    pub table: Option<AuditTable>,
    pub statements: Statements,
    pub on_failure: OnFailure,
}

/// `audit.table`: a table of the upstream that every record is inserted
/// into as well (created if missing), through a connection of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTable {
    /// In the schema `rowgate`.
    pub name: crate::names::RelName,
    /// The data source it is in.
    pub data_source: String,
    /// The database it is in; `None`: the source's `database`, else
    /// `postgres`.
    pub database: Option<String>,
}

/// The hash before the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records waiting to be written, at most.
const QUEUE: usize = 65_536;
/// Records written per batch, at most.
const BATCH: usize = 1024;
/// How long the writer lets records gather before it writes them.
const GATHER: Duration = Duration::from_millis(2);
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// One record as queued: when, what kind, and its members as JSON
/// fragments (`"name":value,...`, without braces), written in order.
pub struct Record {
    at: time::OffsetDateTime,
    kind: &'static str,
    fields: Vec<Arc<str>>,
}

enum Entry {
    Record(Record),
    Reopen,
    /// Answered once everything queued before it is written (or failed).
    Flush(std::sync::mpsc::Sender<()>),
}

/// The audit log of a running proxy: a handle shared by every session.
pub struct Audit {
    config: AuditConfig,
    tx: SyncSender<Entry>,
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
    /// The table sink's state, when there is one.
    table: Option<Arc<TableState>>,
}

/// What the table sink shares with the handle.
#[derive(Default)]
struct TableState {
    /// Lines written to the file, not yet inserted.
    pending: AtomicUsize,
    /// Whether the last insert (or connection) worked.
    failing: AtomicBool,
}

impl Audit {
    /// Opens the file (an error here stops the proxy from starting) and
    /// starts the writer thread.
    pub fn start(
        config: AuditConfig,
        sources: &std::collections::BTreeMap<String, crate::config::Upstream>,
        gauges: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
    ) -> std::io::Result<Arc<Audit>> {
        let writer = Writer::open(&config.file)?;
        let (table, lines) = match &config.table {
            Some(t) => {
                let upstream = sources.get(&t.data_source).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("audit.table: no data source `{}`", t.data_source),
                    )
                })?;
                let state = Arc::new(TableState::default());
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let sink = TableSink {
                    upstream: upstream.clone(),
                    database: t
                        .database
                        .clone()
                        .or_else(|| upstream.database.clone())
                        .unwrap_or_else(|| "postgres".into()),
                    name: t.name.clone(),
                    state: state.clone(),
                    on_failure: config.on_failure,
                    lost: None,
                };
                (Some((state, sink, rx)), Some(tx))
            }
            None => (None, None),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let lost = Arc::new(AtomicUsize::new(0));
        let run = Run {
            writer,
            rx,
            queued: queued.clone(),
            healthy: healthy.clone(),
            lost: lost.clone(),
            on_failure: config.on_failure,
            gauges,
            lines,
            table_pending: table.as_ref().map(|(state, _, _)| state.clone()),
        };
        std::thread::Builder::new()
            .name("rowgate-audit".into())
            .spawn(move || run.run())?;
        let state = table.map(|(state, mut sink, rx)| {
            sink.lost = Some(lost.clone());
            tokio::spawn(sink.run(rx));
            state
        });
        Ok(Arc::new(Audit {
            config,
            tx,
            queued,
            healthy,
            lost,
            table: state,
        }))
    }

    /// Whether statements may run: always with `on_failure: continue`;
    /// with `refuse`, only while the file takes records and the queue has
    /// room.
    pub fn accepts(&self) -> bool {
        let table = self.table.as_ref().is_none_or(|t| {
            !t.failing.load(Ordering::SeqCst)
                && t.pending.load(Ordering::SeqCst) < QUEUE - QUEUE / 8
        });
        self.config.on_failure == OnFailure::Continue
            || (self.healthy.load(Ordering::SeqCst)
                && self.queued.load(Ordering::SeqCst) < QUEUE - QUEUE / 8
                && table)
    }

    /// Records waiting to be written.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Records that could not be written (`on_failure: continue`) or
    /// queued.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Whether a statement with this decision gets a record.
    pub fn wants(&self, decision: Decision) -> bool {
        match self.config.statements {
            Statements::All => true,
            Statements::Refused => decision == Decision::Refused,
            Statements::None => false,
        }
    }

    /// Queues a record of `kind` (`login`, `reload`, ...) with `fields`.
    pub fn record(&self, kind: &'static str, fields: Map<String, Value>) {
        self.queue(kind, vec![Arc::from(fragment(&fields))]);
    }

    /// Queues the record of a finished statement: the session's members
    /// (see [`fragment`], made once per session) and the statement's.
    pub fn statement(&self, session: &Arc<str>, finished: &Finished) {
        self.queue(
            "statement",
            vec![session.clone(), Arc::from(finished.fragment())],
        );
    }

    fn queue(&self, kind: &'static str, fields: Vec<Arc<str>>) {
        let record = Record {
            at: time::OffsetDateTime::now_utc(),
            kind,
            fields,
        };
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Entry::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                self.lost.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Reopens the file by its name (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Entry::Reopen);
    }

    /// Waits until what was queued so far is written (tests, shutdown).
    pub fn flush(&self, timeout: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Entry::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
    }
}

/// A time as RFC 3339, UTC, in milliseconds.
fn rfc3339(at: time::OffsetDateTime) -> String {
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The members of `fields` as a JSON fragment: `"a":1,"b":"x"`.
pub fn fragment(fields: &Map<String, Value>) -> String {
    let text = Value::Object(fields.clone()).to_string();
    text[1..text.len() - 1].to_string()
}

/// `text` as a JSON string, quotes included.
fn json_string(out: &mut String, text: &str) {
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// The file and the chain's last hash.
struct Writer {
    path: PathBuf,
    file: File,
    prev: String,
}

impl Writer {
    fn open(path: &Path) -> std::io::Result<Writer> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let prev = match last_line(&mut file) {
            Some(line) => match split_hash(&line) {
                Some((_, hash)) => hash.to_string(),
                None => {
                    warn!(file = %path.display(), "the audit log's last line has no hash; the chain starts again");
                    GENESIS.to_string()
                }
            },
            None => GENESIS.to_string(),
        };
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            prev,
        })
    }

    /// The lines of `records`, chained on from `prev`; the chain's new end.
    fn chain(&self, records: &[Record]) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let mut prev = self.prev.clone();
        for record in records {
            let size: usize = record.fields.iter().map(|f| f.len() + 1).sum();
            let mut open = String::with_capacity(size + 160);
            open.push_str("{\"ts\":\"");
            open.push_str(&rfc3339(record.at));
            open.push_str("\",\"kind\":");
            json_string(&mut open, record.kind);
            for f in record.fields.iter().filter(|f| !f.is_empty()) {
                open.push(',');
                open.push_str(f);
            }
            open.push_str(",\"prev\":\"");
            open.push_str(&prev);
            open.push('"');
            let hash = hex::encode(Sha256::digest(open.as_bytes()));
            out.extend_from_slice(open.as_bytes());
            out.extend_from_slice(b",\"hash\":\"");
            out.extend_from_slice(hash.as_bytes());
            out.extend_from_slice(b"\"}\n");
            prev = hash;
        }
        (out, prev)
    }
}

/// The last line of a file (without its newline), if it has one.
fn last_line(file: &mut File) -> Option<String> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    if len == 0 {
        return None;
    }
    // A record is far shorter than this unless its SQL is huge; read
    // back as far as needed.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start)).ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).ok()?;
        let text = String::from_utf8_lossy(&tail);
        let trimmed = text.trim_end_matches('\n');
        if let Some(i) = trimmed.rfind('\n') {
            return Some(trimmed[i + 1..].to_string());
        }
        if start == 0 {
            return Some(trimmed.to_string());
        }
        window *= 4;
    }
}

/// A line's text before its hash, and the hash.
fn split_hash(line: &str) -> Option<(&str, &str)> {
    const TAIL: usize = ",\"hash\":\"".len() + 64 + "\"}".len();
    if line.len() < TAIL + 1 || !line.ends_with("\"}") {
        return None;
    }
    let (open, tail) = line.split_at(line.len() - TAIL);
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    hash.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        .then_some((open, hash))
}

/// The writer thread.
struct Run {
    writer: Writer,
    rx: Receiver<Entry>,
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
    on_failure: OnFailure,
    /// `/metrics`' queue depth and lost records, set after each batch.
    gauges: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
    /// The table sink's queue: lines once they are in the file.
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    table_pending: Option<Arc<TableState>>,
}

impl Run {
    fn run(mut self) {
        let mut batch: Vec<Record> = Vec::new();
        let mut reopening = false;
        let mut flushes = Vec::new();
        loop {
            let first = if batch.is_empty() && !reopening {
                match self.rx.recv() {
                    Ok(e) => Some(e),
                    Err(_) => return,
                }
            } else {
                // A batch that failed waits, then is written again.
                match self.rx.recv_timeout(RETRY) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut reopen = false;
            // Let records gather before writing: one write and one wake-up
            // for many statements (no sender wakes a sleeping writer).
            if first.is_some() {
                std::thread::sleep(GATHER);
            }
            let mut next = first;
            while let Some(entry) = next.take() {
                match entry {
                    Entry::Record(r) => batch.push(r),
                    Entry::Reopen => reopen = true,
                    Entry::Flush(done) => flushes.push(done),
                }
                if batch.len() < BATCH {
                    next = self.rx.try_recv().ok();
                }
            }
            // After a failed reopen nothing is written to the old file
            // (whose name may be gone) until the name opens again.
            if reopen || reopening || !self.healthy.load(Ordering::SeqCst) {
                reopening = !self.reopen();
            }
            if reopening && self.on_failure == OnFailure::Continue && !batch.is_empty() {
                self.queued.fetch_sub(batch.len(), Ordering::SeqCst);
                self.lost.fetch_add(batch.len(), Ordering::SeqCst);
                batch.clear();
            }
            if !batch.is_empty() && !reopening {
                let n = batch.len();
                let (bytes, end) = self.writer.chain(&batch);
                match self
                    .writer
                    .file
                    .write_all(&bytes)
                    .and_then(|()| self.writer.file.flush())
                {
                    Ok(()) => {
                        self.writer.prev = end;
                        self.queued.fetch_sub(n, Ordering::SeqCst);
                        batch.clear();
                        if let (Some(lines), Some(state)) = (&self.lines, &self.table_pending) {
                            for line in String::from_utf8_lossy(&bytes).lines() {
                                state.pending.fetch_add(1, Ordering::SeqCst);
                                let _ = lines.send(line.to_string());
                            }
                        }
                        if !self.healthy.swap(true, Ordering::SeqCst) {
                            warn!(file = %self.writer.path.display(), "the audit log is written again");
                        }
                    }
                    Err(e) => {
                        if self.healthy.swap(false, Ordering::SeqCst) {
                            error!(file = %self.writer.path.display(), "cannot write the audit log: {e}");
                        }
                        if self.on_failure == OnFailure::Continue {
                            self.queued.fetch_sub(n, Ordering::SeqCst);
                            self.lost.fetch_add(n, Ordering::SeqCst);
                            batch.clear();
                        }
                    }
                }
            }
            if let Some((queue, lost)) = &self.gauges {
                queue.set(self.queued.load(Ordering::SeqCst) as i64);
                lost.set(self.lost.load(Ordering::SeqCst) as i64);
            }
            if batch.is_empty() || !self.healthy.load(Ordering::SeqCst) {
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Opens the file by its name again; whether it could.
    fn reopen(&mut self) -> bool {
        match Writer::open(&self.writer.path) {
            Ok(mut fresh) => {
                // A new file goes on from the chain written so far.
                if fresh.prev == GENESIS {
                    fresh.prev = self.writer.prev.clone();
                }
                self.writer = fresh;
                true
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::SeqCst) {
                    error!(file = %self.writer.path.display(), "cannot reopen the audit log: {e}");
                }
                false
            }
        }
    }
}

/// Inserts the file's lines into the audit table, through a connection of
/// its own, reconnecting (and creating the table) as needed. With
/// `on_failure: refuse` nothing is dropped: lines wait until they are in.
struct TableSink {
    upstream: crate::config::Upstream,
    database: String,
    name: crate::names::RelName,
    state: Arc<TableState>,
    on_failure: OnFailure,
    lost: Option<Arc<AtomicUsize>>,
}

/// Lines inserted per statement, at most.
const TABLE_BATCH: usize = 500;

impl TableSink {
    async fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(line) => pending.push_back(line),
                    None => return,
                }
            }
            while let Ok(line) = rx.try_recv() {
                pending.push_back(line);
            }
            if client.is_none() {
                match self.connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        self.failed(&format!("cannot connect: {e}"), &mut pending);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let Some(c) = &client else { continue };
            let n = pending.len().min(TABLE_BATCH);
            let batch: Vec<&str> = pending.iter().take(n).map(String::as_str).collect();
            let insert = format!(
                "INSERT INTO {} (ts, kind, record, line) \
                 SELECT (r ->> 'ts')::timestamptz, r ->> 'kind', r, l \
                 FROM pg_catalog.unnest($1::text[]) AS l, LATERAL (SELECT l::jsonb AS r) AS j",
                self.name
            );
            match c.execute(insert.as_str(), &[&batch]).await {
                Ok(_) => {
                    pending.drain(..n);
                    self.state.pending.fetch_sub(n, Ordering::SeqCst);
                    if self.state.failing.swap(false, Ordering::SeqCst) {
                        warn!(table = %self.name, "the audit table is written again");
                    }
                }
                Err(e) => {
                    client = None;
                    self.failed(&format!("cannot insert: {e}"), &mut pending);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Marks the sink failing; with `on_failure: continue`, what waits is
    /// dropped (and counted).
    fn failed(&self, why: &str, pending: &mut VecDeque<String>) {
        if !self.state.failing.swap(true, Ordering::SeqCst) {
            error!(table = %self.name, "cannot write the audit table: {why}");
        }
        if self.on_failure == OnFailure::Continue {
            let n = pending.len();
            pending.clear();
            self.state.pending.fetch_sub(n, Ordering::SeqCst);
            if let Some(lost) = &self.lost {
                lost.fetch_add(n, Ordering::SeqCst);
            }
        }
    }

    /// A connection with the table in place.
    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let client =
            crate::upstream::catalog::connect_own(&self.upstream, &self.database, "rowgate audit")
                .await?;
        // Created only when missing: an upstream role that may insert into
        // an existing table needs no right to create one.
        let exists: Option<String> = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1)::text",
                &[&self.name.to_string()],
            )
            .await?
            .get(0);
        if exists.is_some() {
            return Ok(client);
        }
        let schema = crate::names::ident(&self.name.schema);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; \
                 CREATE TABLE IF NOT EXISTS {} (ts timestamptz NOT NULL, kind text NOT NULL, \
                 record jsonb NOT NULL, line text NOT NULL)",
                self.name
            ))
            .await?;
        Ok(client)
    }
}

/// What became of a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    Refused,
    /// Forwarded, and PostgreSQL answered with an error.
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Forwarded => "forwarded",
            Decision::Refused => "refused",
            Decision::Error => "error",
        }
    }
}

/// A statement as rowgate decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// As received.
    pub sql: Arc<str>,
    /// As sent upstream; `None` when refused.
    pub forwarded: Option<Arc<str>>,
    /// The refusal's SQLSTATE and message.
    pub refusal: Option<(&'static str, String)>,
    /// The user an admin session was looking as (`SET rowgate.view_as`).
    pub viewed_as: Option<Arc<str>>,
}

/// A finished statement, for its record.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub decided: Arc<Decided>,
    pub decision: Decision,
    pub sqlstate: Option<String>,
    pub reason: Option<String>,
    pub rows: Option<u64>,
    pub duration: Duration,
}

impl Finished {
    /// The statement's members of its record, as a JSON fragment.
    pub fn fragment(&self) -> String {
        let d = &self.decided;
        let size = d.sql.len() + d.forwarded.as_ref().map_or(0, |f| f.len());
        let mut out = String::with_capacity(size + 160);
        out.push_str("\"sql\":");
        json_string(&mut out, &d.sql);
        if let Some(f) = &d.forwarded {
            out.push_str(",\"forwarded\":");
            json_string(&mut out, f);
        }
        out.push_str(",\"decision\":\"");
        out.push_str(self.decision.as_str());
        out.push('"');
        if let Some(v) = &d.viewed_as {
            out.push_str(",\"viewed_as\":");
            json_string(&mut out, v);
        }
        if let Some(code) = &self.sqlstate {
            out.push_str(",\"sqlstate\":");
            json_string(&mut out, code);
        }
        if let Some(r) = &self.reason {
            out.push_str(",\"reason\":");
            json_string(&mut out, r);
        }
        if let Some(rows) = self.rows {
            out.push_str(&format!(",\"rows\":{rows}"));
        }
        let ms = (self.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        out.push_str(&format!(",\"duration_ms\":{ms}"));
        out
    }
}

/// What a client message expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Await {
    /// A Query: results until its ReadyForQuery.
    Query,
    /// A Parse: ParseComplete or an error; only an error is recorded.
    Parse,
    /// An Execute: CommandComplete, EmptyQueryResponse, PortalSuspended
    /// or an error.
    Execute,
}

struct Open {
    cycle: u64,
    waits: Await,
    decided: Arc<Decided>,
    started: Instant,
    rows: Option<u64>,
    error: Option<(String, String)>,
}

/// A session's statements between their sending and their result: fed
/// with each message the client is sent (after rowgate's own messages and
/// its swaps), it hands back every statement that finished.
#[derive(Default)]
pub struct Trail {
    open: VecDeque<Open>,
}

impl Trail {
    /// A client message of cycle `cycle` was sent upstream.
    pub fn push(&mut self, cycle: u64, waits: Await, decided: Arc<Decided>) {
        self.open.push_back(Open {
            cycle,
            waits,
            decided,
            started: Instant::now(),
            rows: None,
            error: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A cycle whose result is replaced by the next cycle's (a statement
    /// run again): its statements wait for that one.
    pub fn defer(&mut self, cycle: u64) {
        for o in self.open.iter_mut().filter(|o| o.cycle <= cycle) {
            o.cycle = cycle + 1;
        }
    }

    /// The client is sent a message tagged `tag` in cycle `cycle`.
    pub fn on_message(&mut self, cycle: u64, tag: u8, body: &[u8]) -> Vec<Finished> {
        let mut done = Vec::new();
        if tag == b'Z' {
            while self.open.front().is_some_and(|o| o.cycle <= cycle) {
                if let Some(o) = self.open.pop_front() {
                    // A Query ends here; an Execute or Parse still open was
                    // skipped after an error: it did not run.
                    if o.waits == Await::Query {
                        done.push(finish(o));
                    }
                }
            }
            return done;
        }
        let Some(head) = self.open.front_mut().filter(|o| o.cycle <= cycle) else {
            return done;
        };
        let ends = match (tag, head.waits) {
            (b'C', Await::Query) => {
                if let Some(n) = command_rows(body) {
                    head.rows = Some(head.rows.unwrap_or(0) + n);
                }
                false
            }
            (b'C', Await::Execute) => {
                head.rows = command_rows(body);
                true
            }
            (b'I' | b's', Await::Execute) | (b'1', Await::Parse) => true,
            (b'E', _) => {
                head.error = Some(error_fields(body));
                head.waits != Await::Query
            }
            _ => false,
        };
        if ends {
            if let Some(o) = self.open.pop_front() {
                if o.waits != Await::Parse || o.error.is_some() {
                    done.push(finish(o));
                }
            }
        }
        done
    }
}

fn finish(o: Open) -> Finished {
    let decision = match (&o.decided.refusal, &o.error) {
        (Some(_), _) => Decision::Refused,
        (None, Some(_)) => Decision::Error,
        (None, None) => Decision::Forwarded,
    };
    let (sqlstate, reason) = match (&o.decided.refusal, o.error) {
        (Some((code, why)), _) => (Some(code.to_string()), Some(why.clone())),
        (None, Some((code, why))) => (Some(code), Some(why)),
        (None, None) => (None, None),
    };
    Finished {
        decided: o.decided,
        decision,
        sqlstate,
        reason,
        rows: o.rows,
        duration: o.started.elapsed(),
    }
}

/// The row count of a CommandComplete tag (`SELECT 5`, `INSERT 0 1`,
/// `COPY 3`); `None` for tags without one (`SET`, `BEGIN`).
fn command_rows(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(body)).ok()?;
    let mut words = text.split(' ');
    let verb = words.next()?;
    let last = words.next_back()?;
    match verb {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            last.parse().ok()
        }
        _ => None,
    }
}

/// The SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

/// Where a chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    /// 1-based.
    pub line: usize,
    pub why: String,
}

/// What a whole file holds, when its chain is intact.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub lines: usize,
    /// The first line's `prev`: [`GENESIS`], or the last hash of the file
    /// before it.
    pub first_prev: Option<String>,
    pub last_hash: Option<String>,
}

/// Checks the chain of an audit log, line by line.
pub fn verify(reader: impl Read) -> Result<Verified, Break> {
    let mut expected: Option<String> = None;
    let mut first_prev = None;
    let mut lines = 0;
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Break {
            line: n,
            why: format!("cannot be read: {e}"),
        })?;
        let broken = |why: &str| Break {
            line: n,
            why: why.to_string(),
        };
        let (open, hash) =
            split_hash(&line).ok_or_else(|| broken("it does not end with a hash"))?;
        if hex::encode(Sha256::digest(open.as_bytes())) != hash {
            return Err(broken(
                "its hash does not match its content (the line was changed)",
            ));
        }
        let record: Map<String, Value> = serde_json::from_str(&format!("{open}}}"))
            .map_err(|_| broken("it is not a JSON object"))?;
        let prev = record
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("it has no \"prev\""))?;
        match &expected {
            None => first_prev = Some(prev.to_string()),
            Some(want) if want != prev => {
                return Err(broken(
                    "its \"prev\" is not the hash of the line before (a line was removed, added or moved)",
                ));
            }
            Some(_) => {}
        }
        expected = Some(hash.to_string());
        lines = n;
    }
    Ok(Verified {
        lines,
        first_prev,
        last_hash: expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(sql: &str, refused: bool) -> Arc<Decided> {
        Arc::new(Decided {
            sql: Arc::from(sql),
            forwarded: (!refused).then(|| Arc::from(format!("/*rw*/ {sql}"))),
            refusal: refused.then(|| ("42501", "permission denied for table secrets".to_string())),
            viewed_as: None,
        })
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        let mut b = vec![b'S'];
        b.extend_from_slice(b"ERROR\0C");
        b.extend_from_slice(code.as_bytes());
        b.extend_from_slice(b"\0M");
        b.extend_from_slice(message.as_bytes());
        b.extend_from_slice(b"\0\0");
        b
    }

    #[test]
    fn a_query_finishes_at_its_ready_for_query_with_its_rows() {
        let mut t = Trail::default();
        t.push(0, Await::Query, decided("SELECT 1; SELECT 2", false));
        assert!(t.on_message(0, b'C', b"SELECT 1\0").is_empty());
        assert!(t.on_message(0, b'C', b"SELECT 3\0").is_empty());
        let done = t.on_message(0, b'Z', b"I");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].rows, Some(4));
        assert_eq!(done[0].decision, Decision::Forwarded);
        assert_eq!(done[0].sqlstate, None);
        assert!(t.is_empty());
    }

    #[test]
    fn an_error_makes_a_query_an_error_and_a_refusal_stays_a_refusal() {
        let mut t = Trail::default();
        t.push(0, Await::Query, decided("SELECT 1/0", false));
        t.push(1, Await::Query, decided("SELECT * FROM secrets", true));
        assert!(t
            .on_message(0, b'E', &error("22012", "division by zero"))
            .is_empty());
        let done = t.on_message(0, b'Z', b"I");
        assert_eq!(done[0].decision, Decision::Error);
        assert_eq!(done[0].sqlstate.as_deref(), Some("22012"));
        assert_eq!(done[0].reason.as_deref(), Some("division by zero"));
        t.on_message(
            1,
            b'E',
            &error("42501", "permission denied for table secrets"),
        );
        let done = t.on_message(1, b'Z', b"I");
        assert_eq!(done[0].decision, Decision::Refused);
        assert_eq!(done[0].sqlstate.as_deref(), Some("42501"));
        assert_eq!(done[0].decided.forwarded, None);
    }

    #[test]
    fn extended_protocol_statements_finish_at_their_own_results() {
        let mut t = Trail::default();
        // Parse, Bind, Execute twice in one cycle, then Sync.
        t.push(3, Await::Parse, decided("SELECT a", false));
        t.push(3, Await::Execute, decided("SELECT a", false));
        t.push(3, Await::Parse, decided("SELECT b", false));
        t.push(3, Await::Execute, decided("SELECT b", false));
        assert!(t.on_message(3, b'1', b"").is_empty());
        assert!(t.on_message(3, b'2', b"").is_empty());
        let a = t.on_message(3, b'C', b"SELECT 7\0");
        assert_eq!((a.len(), a[0].rows), (1, Some(7)));
        assert!(t.on_message(3, b'1', b"").is_empty());
        let b = t.on_message(3, b's', b"");
        assert_eq!((b.len(), b[0].rows), (1, None));
        assert!(t.on_message(3, b'Z', b"I").is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn after_an_error_the_rest_of_the_cycle_did_not_run() {
        let mut t = Trail::default();
        t.push(0, Await::Parse, decided("SELECT * FROM secrets", true));
        t.push(0, Await::Execute, decided("SELECT * FROM secrets", true));
        t.push(0, Await::Parse, decided("SELECT 1", false));
        t.push(0, Await::Execute, decided("SELECT 1", false));
        let done = t.on_message(0, b'E', &error("42501", "permission denied"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].decision, Decision::Refused);
        // Skipped to Sync: nothing more is recorded.
        assert!(t.on_message(0, b'Z', b"E").is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn a_statement_run_again_waits_for_the_next_cycle() {
        let mut t = Trail::default();
        t.push(4, Await::Query, decided("SELECT 1", false));
        t.defer(4);
        // Cycle 4's error and ReadyForQuery never reach the client.
        assert!(t.on_message(5, b'C', b"SELECT 1\0").is_empty());
        let done = t.on_message(5, b'Z', b"I");
        assert_eq!((done.len(), done[0].rows), (1, Some(1)));
    }

    #[test]
    fn messages_of_a_later_cycle_never_finish_an_earlier_statement_early() {
        let mut t = Trail::default();
        t.push(2, Await::Query, decided("SELECT 1", false));
        // A cycle of rowgate's own (1) ends before.
        assert!(t.on_message(1, b'Z', b"I").is_empty());
        assert!(!t.is_empty());
        assert_eq!(t.on_message(2, b'Z', b"I").len(), 1);
    }

    #[test]
    fn command_tags_give_rows() {
        assert_eq!(command_rows(b"SELECT 12\0"), Some(12));
        assert_eq!(command_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_rows(b"COPY 5\0"), Some(5));
        assert_eq!(command_rows(b"SET\0"), None);
        assert_eq!(command_rows(b"CREATE TABLE\0"), None);
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let mut m = Map::new();
                m.insert(
                    "sql".into(),
                    Value::String(format!("SELECT {i} -- \"quoted\"\n")),
                );
                Record {
                    at: time::OffsetDateTime::now_utc(),
                    kind: "statement",
                    fields: vec![Arc::from(fragment(&m)), Arc::from("")],
                }
            })
            .collect()
    }

    #[test]
    fn a_statement_fragment_is_json() {
        let f = Finished {
            decided: decided("SELECT '\"x\"\n'", false),
            decision: Decision::Error,
            sqlstate: Some("22012".into()),
            reason: Some("division by zero".into()),
            rows: Some(3),
            duration: Duration::from_micros(1500),
        };
        let v: Map<String, Value> = serde_json::from_str(&format!("{{{}}}", f.fragment())).unwrap();
        assert_eq!(v["sql"], "SELECT '\"x\"\n'");
        assert_eq!(v["decision"], "error");
        assert_eq!(v["rows"], 3);
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["forwarded"].as_str().unwrap().starts_with("/*rw*/"));
    }

    fn chained(n: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::open(&dir.path().join("a.jsonl")).unwrap();
        String::from_utf8(writer.chain(&records(n)).0).unwrap()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let text = chained(4);
        let v = verify(text.as_bytes()).unwrap();
        assert_eq!(v.lines, 4);
        assert_eq!(v.first_prev.as_deref(), Some(GENESIS));
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn an_edited_line_breaks_the_chain_there() {
        let text = chained(4).replacen("SELECT 2", "SELECT 9", 1);
        let b = verify(text.as_bytes()).unwrap_err();
        assert_eq!(b.line, 3, "{b:?}");
        assert!(b.why.contains("changed"), "{b:?}");
    }

    #[test]
    fn a_removed_or_moved_line_breaks_the_chain_after_it() {
        let text = chained(4);
        let lines: Vec<&str> = text.lines().collect();
        let removed = [lines[0], lines[2], lines[3]].join("\n");
        assert_eq!(verify(removed.as_bytes()).unwrap_err().line, 2);
        let moved = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        assert_eq!(verify(moved.as_bytes()).unwrap_err().line, 2);
        // An edited hash is an edited line.
        let rehashed = text.replacen(&lines[1][lines[1].len() - 10..], "0000000\"}", 1);
        assert_eq!(verify(rehashed.as_bytes()).unwrap_err().line, 2);
    }

    #[test]
    fn a_reopened_file_goes_on_from_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut w = Writer::open(&path).unwrap();
        let (bytes, end) = w.chain(&records(2));
        w.file.write_all(&bytes).unwrap();
        let mut again = Writer::open(&path).unwrap();
        assert_eq!(again.prev, end);
        let (bytes, _) = again.chain(&records(1));
        again.file.write_all(&bytes).unwrap();
        let v = verify(File::open(&path).unwrap()).unwrap();
        assert_eq!(v.lines, 3);
    }
}
