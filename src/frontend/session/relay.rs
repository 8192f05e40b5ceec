//! The sockets of a session: one task reads and writes both connections.
//! Each direction has a bounded buffer; a side is read only while the
//! buffer it feeds has room, so a client that stops reading stops the
//! upstream's results, and an upstream that stops reading stops the
//! client's statements, with nothing held beyond the bounds. Messages from
//! upstream go through the session's pipeline state (`pipeline.rs`);
//! messages from the client through the session (`client.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::client::Session;
use super::outgoing::query_message;
use super::pipeline::{Inspect, Reply, MAX_INSPECTED};
use super::Outcome;
use crate::frontend::own::Answer;
use crate::frontend::sqlstate;
use crate::metrics::Metrics;
use crate::tls::Stream;
use crate::upstream::pool::{self, halves, Reader, Server, Writer};
use crate::wire::{self, WireError};

/// A buffer towards one side stops taking more at this size.
const HIGH_WATER: usize = 256 * 1024;
/// What an empty buffer reads into at first.
const IDLE_READ: usize = 512;
/// How long an idle session lives on once a drain has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);
/// How long a session's last words (a FATAL message) may take to leave.
const LAST_WORDS: Duration = Duration::from_secs(5);

/// Why a session stops relaying.
pub(super) enum Stop {
    /// The session decided (the client terminated, access changed, ...).
    Outcome(Outcome),
    /// The client's side: gone, or a message that cannot be read.
    Client(WireError),
    /// The upstream's side failed.
    Upstream(String),
    /// A drain closed the idle session.
    Shutdown,
    /// No pooled connection became free in time.
    Pool(String),
    /// No pooled connection could be opened (the upstream is down, or
    /// refused, or did not answer in time).
    Unreachable(String),
}

impl From<WireError> for Stop {
    fn from(e: WireError) -> Self {
        Stop::Client(e)
    }
}

/// Both connections and their buffers.
pub(super) struct Io {
    client_rd: Reader,
    client_wr: Writer,
    up_rd: Reader,
    up_wr: Writer,
    /// Read from the client, not yet handled.
    pub client_in: BytesMut,
    /// Read from upstream, not yet handled.
    up_in: BytesMut,
    to_client: BytesMut,
    to_upstream: BytesMut,
    /// Written but perhaps not flushed (TLS buffers).
    client_unflushed: bool,
    upstream_unflushed: bool,
    /// Whether writes need a flush (TLS), each way.
    client_flushes: bool,
    upstream_flushes: bool,
    /// Bytes of a message from upstream still to stream to the client.
    passthrough: usize,
    /// An upstream connection is attached (in transaction pooling, only
    /// while the session needs one).
    attached: bool,
    /// The pooled connection attached, its streams and buffer lent to
    /// `up_rd`, `up_wr` and `up_in`.
    server: Option<Server>,
    shutdown: watch::Receiver<bool>,
    draining: bool,
    bytes_in: prometheus::IntCounter,
    bytes_out: prometheus::IntCounter,
}

/// What one wait on the sockets gave.
enum Event {
    Progress,
    ClientEnd(WireError),
    UpstreamEnd(String),
    GraceOver,
}

impl Io {
    /// Both connections' buffers and the client's streams; the upstream is
    /// attached with [`Io::attach_stream`] or [`Io::attach`].
    pub fn new(
        client: Stream,
        client_in: BytesMut,
        shutdown: watch::Receiver<bool>,
        metrics: &Metrics,
    ) -> Io {
        let (client_rd, client_wr, client_flushes) = halves(client);
        let draining = *shutdown.borrow();
        Io {
            client_rd,
            client_wr,
            up_rd: Reader::none(),
            up_wr: Writer::none(),
            client_in,
            up_in: BytesMut::new(),
            to_client: BytesMut::new(),
            to_upstream: BytesMut::new(),
            client_unflushed: false,
            upstream_unflushed: false,
            client_flushes,
            upstream_flushes: false,
            passthrough: 0,
            attached: false,
            server: None,
            shutdown,
            draining,
            bytes_in: metrics.bytes.with_label_values(&["to_upstream"]),
            bytes_out: metrics.bytes.with_label_values(&["to_client"]),
        }
    }

    /// A session's own upstream connection, for its whole life.
    pub fn attach_stream(&mut self, upstream: Stream, up_in: BytesMut) {
        let (rd, wr, flushes) = halves(upstream);
        self.up_rd = rd;
        self.up_wr = wr;
        self.upstream_flushes = flushes;
        self.up_in = up_in;
        self.attached = true;
    }

    /// A pooled connection, until [`Io::detach`].
    pub fn attach(&mut self, mut server: Server) {
        std::mem::swap(&mut self.up_rd, &mut server.rd);
        std::mem::swap(&mut self.up_wr, &mut server.wr);
        std::mem::swap(&mut self.up_in, &mut server.buf);
        self.upstream_flushes = server.flushes;
        self.server = Some(server);
        self.attached = true;
    }

    /// Lets go of the buffers' memory while they are empty (a session
    /// idle between transactions). The outgoing ones go whatever their
    /// capacity: one may be a view of a buffer read from upstream, which
    /// it keeps whole.
    pub fn shrink(&mut self) {
        if self.client_in.is_empty() && self.client_in.capacity() > IDLE_READ {
            self.client_in = BytesMut::new();
        }
        for buf in [&mut self.to_client, &mut self.to_upstream] {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
        }
    }

    /// The pooled connection attached, given back.
    pub fn detach(&mut self) -> Option<Server> {
        let mut server = self.server.take()?;
        std::mem::swap(&mut self.up_rd, &mut server.rd);
        std::mem::swap(&mut self.up_wr, &mut server.wr);
        std::mem::swap(&mut self.up_in, &mut server.buf);
        self.attached = false;
        self.upstream_unflushed = false;
        Some(server)
    }

    /// The pooled connection attached.
    pub fn server_mut(&mut self) -> Option<&mut Server> {
        self.server.as_mut()
    }

    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Nothing is on its way to or from upstream.
    pub fn upstream_quiet(&self) -> bool {
        self.to_upstream.is_empty()
            && !self.upstream_unflushed
            && self.passthrough == 0
            && self.up_in.is_empty()
    }

    /// Queues bytes for upstream.
    pub fn send(&mut self, bytes: &[u8]) {
        self.to_upstream.extend_from_slice(bytes);
    }

    /// Whether more may be queued for upstream.
    pub fn upstream_room(&self) -> bool {
        self.to_upstream.len() < HIGH_WATER
    }

    /// Waits until something happens on either connection, and does it.
    /// `idle`: nothing is under way upstream (a drain may close the
    /// session).
    async fn step(&mut self, idle: bool) -> Event {
        // The client is read while its messages can be taken: the buffer
        // towards upstream has room and nothing complete waits (during an
        // own query, or when that buffer is full).
        let read_client = self.upstream_room() && !has_frame(&self.client_in);
        let read_upstream = self.attached && self.to_client.len() < HIGH_WATER;
        let write_client = !self.to_client.is_empty() || self.client_unflushed;
        let write_upstream =
            self.attached && (!self.to_upstream.is_empty() || self.upstream_unflushed);
        let grace = self.draining && idle && self.passthrough == 0;
        reserve(&mut self.client_in);
        if self.attached {
            reserve(&mut self.up_in);
        }
        tokio::select! {
            read = self.client_rd.read_buf(&mut self.client_in), if read_client => match read {
                Ok(0) => Event::ClientEnd(WireError::Closed),
                Ok(n) => {
                    self.bytes_in.inc_by(n as u64);
                    Event::Progress
                }
                Err(e) => Event::ClientEnd(WireError::Io(e)),
            },
            read = self.up_rd.read_buf(&mut self.up_in), if read_upstream => match read {
                Ok(0) => Event::UpstreamEnd("the upstream closed the connection".into()),
                Ok(n) => {
                    self.bytes_out.inc_by(n as u64);
                    Event::Progress
                }
                Err(e) => Event::UpstreamEnd(e.to_string()),
            },
            wrote = push(&mut self.client_wr, &self.to_client), if write_client => match wrote {
                Ok(n) => {
                    self.to_client.advance(n);
                    self.client_unflushed = n > 0 && self.client_flushes;
                    Event::Progress
                }
                Err(e) => Event::ClientEnd(WireError::Io(e)),
            },
            wrote = push(&mut self.up_wr, &self.to_upstream), if write_upstream => match wrote {
                Ok(n) => {
                    self.to_upstream.advance(n);
                    self.upstream_unflushed = n > 0 && self.upstream_flushes;
                    Event::Progress
                }
                Err(e) => Event::UpstreamEnd(e.to_string()),
            },
            changed = self.shutdown.changed(), if !self.draining => {
                self.draining = changed.is_err() || *self.shutdown.borrow();
                Event::Progress
            }
            () = tokio::time::sleep(SHUTDOWN_GRACE), if grace => Event::GraceOver,
        }
    }

    /// Writes what is queued for the client, within `limit`.
    async fn flush_client(&mut self, limit: Duration) {
        let to_client = &mut self.to_client;
        let wr = &mut self.client_wr;
        let _ = tokio::time::timeout(limit, async {
            wr.write_all_buf(to_client).await?;
            wr.flush().await
        })
        .await;
    }

    /// Writes what is queued for upstream, within `limit`.
    async fn flush_upstream(&mut self, limit: Duration) {
        let to_upstream = &mut self.to_upstream;
        let wr = &mut self.up_wr;
        let _ = tokio::time::timeout(limit, async {
            wr.write_all_buf(to_upstream).await?;
            wr.flush().await
        })
        .await;
    }
}

/// Writes some of `buf` (the count written), or flushes when it is empty.
async fn push(wr: &mut Writer, buf: &[u8]) -> std::io::Result<usize> {
    if buf.is_empty() {
        wr.flush().await?;
        return Ok(0);
    }
    match wr.write(buf).await? {
        0 => Err(std::io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

/// Room to read into: a little while nothing is buffered (an idle session
/// holds next to nothing), more once a message is under way.
fn reserve(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    if buf.is_empty() {
        if spare < IDLE_READ {
            buf.reserve(IDLE_READ);
        }
    } else if spare < 4096 {
        buf.reserve(8192);
    }
}

/// Whether `buf` starts with a complete message.
fn has_frame(buf: &[u8]) -> bool {
    buf.len() >= 5 && {
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        // A bad length is "complete": reading it gives its error.
        len < 4 || buf.len() > len as usize
    }
}

impl Session<'_> {
    /// Relays until the session stops; why it stopped (then
    /// [`Session::finish`]).
    pub(super) async fn relay(&mut self, io: &mut Io) -> Stop {
        loop {
            if let Err(stop) = self.turn(io).await {
                return stop;
            }
            match io.step(self.pipe.idle()).await {
                Event::Progress => {}
                Event::ClientEnd(e) => return Stop::Client(e),
                Event::UpstreamEnd(why) => return Stop::Upstream(why),
                Event::GraceOver => return Stop::Shutdown,
            }
        }
    }

    /// Hands on what arrived from upstream, then handles the client's
    /// messages.
    async fn turn(&mut self, io: &mut Io) -> Result<(), Stop> {
        while let Some(sql) = self.drain(io)? {
            self.run_again(sql, io).await;
        }
        if self.settings_unsettled(io) {
            // Boxed (rare): an idle session's future holds no room for it.
            Box::pin(self.settle_settings(io)).await?;
        }
        self.detach_if_done(io);
        if !io.attached() {
            io.shrink();
        }
        self.forward(io).await
    }

    /// Runs a query of rowgate's own between two cycles (its messages never
    /// reach the client) and waits for its answer, handing on the results
    /// of the cycles before it meanwhile.
    pub(super) async fn own_query(&mut self, sql: &str, io: &mut Io) -> Result<Answer, Stop> {
        self.pipe.own_query();
        io.send(&query_message(sql));
        loop {
            // No statement runs again while an own query is under way (see
            // `Pipeline::may_retry`).
            if let Some(sql) = self.drain(io)? {
                self.run_again(sql, io).await;
            }
            if let Some(answer) = self.pipe.take_answer() {
                return Ok(answer);
            }
            match io.step(false).await {
                Event::Progress | Event::GraceOver => {}
                Event::ClientEnd(e) => return Err(Stop::Client(e)),
                Event::UpstreamEnd(why) => return Err(Stop::Upstream(why)),
            }
        }
    }

    /// Moves every complete message from upstream towards the client (as
    /// the pipeline says), streaming the ones not looked at without
    /// waiting for their end, until the client's buffer is full. Returns a
    /// statement to run again, when the pipeline asks for one.
    fn drain(&mut self, io: &mut Io) -> Result<Option<Arc<str>>, Stop> {
        loop {
            if io.to_client.len() >= HIGH_WATER {
                return Ok(None);
            }
            if io.passthrough > 0 {
                let n = io.passthrough.min(io.up_in.len());
                if n == 0 {
                    return Ok(None);
                }
                let chunk = io.up_in.split_to(n);
                if io.to_client.is_empty() {
                    io.to_client = chunk;
                } else {
                    io.to_client.extend_from_slice(&chunk);
                }
                io.passthrough -= n;
                continue;
            }
            if io.up_in.len() < 5 {
                return Ok(None);
            }
            let tag = io.up_in[0];
            let len = i32::from_be_bytes([io.up_in[1], io.up_in[2], io.up_in[3], io.up_in[4]]);
            if len < 4 {
                return Err(Stop::Upstream(WireError::BadLength(len.into()).to_string()));
            }
            if self.pipe.inspect(tag, len as usize, self.trail.is_some()) == Inspect::Stream {
                self.pipe.on_streamed(tag);
                io.passthrough = len as usize + 1;
                continue;
            }
            let frame = match wire::try_frame(&mut io.up_in, MAX_INSPECTED) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Stop::Upstream(e.to_string())),
            };
            let cycle = self.pipe.receiving();
            match self.pipe.on_server(tag, frame.body()) {
                Reply::Relay => {
                    io.to_client.extend_from_slice(&frame.frame);
                    self.audit(cycle, tag, frame.body());
                }
                Reply::Replace(instead) => {
                    io.to_client.extend_from_slice(&instead);
                    self.audit(cycle, instead[0], &instead[5..]);
                }
                Reply::Drop => {}
                Reply::Deferred => {
                    if let Some(trail) = &mut self.trail {
                        trail.defer(cycle);
                    }
                }
                Reply::Retry(sql) => return Ok(Some(sql)),
            }
        }
    }

    /// Ends the session: the client is told why when there is something
    /// to tell, before the connections close.
    pub(super) async fn finish(&mut self, mut io: Io, stop: Stop) -> Outcome {
        let (outcome, fatal, read_first) = match stop {
            Stop::Outcome(Outcome::Terminated) if self.pooled.is_none() => {
                // The Terminate goes upstream, so that PostgreSQL ends the
                // session as the client asked.
                io.flush_upstream(LAST_WORDS).await;
                return Outcome::Terminated;
            }
            Stop::Outcome(Outcome::AccessChanged) => {
                let why = "terminating connection: this user's access changed with a policy reload; reconnect";
                let fatal = wire::error_response("FATAL", sqlstate::ADMIN_SHUTDOWN, why);
                (Outcome::AccessChanged, Some(fatal), true)
            }
            Stop::Outcome(Outcome::PathLost) => {
                // Names could no longer be resolved as PostgreSQL resolves
                // them: the session ends rather than guess.
                let why = "terminating connection: rowgate could not read the session's search_path back from the upstream database";
                let fatal = wire::error_response("FATAL", sqlstate::CONNECTION_FAILURE, why);
                (Outcome::PathLost, Some(fatal), true)
            }
            Stop::Outcome(other) => (other, None, false),
            Stop::Client(WireError::Closed | WireError::Io(_)) => {
                (Outcome::ClientGone, None, false)
            }
            Stop::Client(e) => {
                let code = match e {
                    WireError::TooLarge(..) => sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                let why = format!("invalid message from the client: {e}");
                let fatal = wire::error_response("FATAL", code, &why);
                (Outcome::Rejected(why), Some(fatal), true)
            }
            Stop::Upstream(why) => {
                let msg = "the upstream database closed the connection";
                let fatal = wire::error_response("FATAL", sqlstate::CONNECTION_FAILURE, msg);
                (
                    Outcome::Failed(format!("upstream: {why}")),
                    Some(fatal),
                    false,
                )
            }
            Stop::Shutdown => {
                let msg = "terminating connection due to administrator command";
                let fatal = wire::error_response("FATAL", sqlstate::ADMIN_SHUTDOWN, msg);
                (Outcome::Shutdown, Some(fatal), false)
            }
            Stop::Pool(why) => {
                let fatal = wire::error_response("FATAL", sqlstate::TOO_MANY_CONNECTIONS, &why);
                (Outcome::Failed(why), Some(fatal), true)
            }
            Stop::Unreachable(why) => {
                // As at login: the reason (an address, the upstream's own
                // words) is the operator's, in the log.
                let msg = "rowgate could not connect to the upstream database";
                let fatal = wire::error_response("FATAL", sqlstate::CONNECTION_FAILURE, msg);
                (
                    Outcome::Failed(format!("upstream: {why}")),
                    Some(fatal),
                    true,
                )
            }
        };
        // A pooled connection still attached may be in the middle of
        // something: it is closed, never returned.
        if let Some(server) = io.detach() {
            pool::close(server);
        }
        if let Some(fatal) = fatal {
            if read_first {
                // Read what the client already sent, so that closing does
                // not reset the connection before the client reads why.
                let mut scratch = vec![0u8; 8192];
                let rd = &mut io.client_rd;
                let _ = tokio::time::timeout(Duration::from_millis(100), async {
                    while matches!(rd.read(&mut scratch).await, Ok(n) if n > 0) {}
                })
                .await;
            }
            io.to_client.extend_from_slice(&fatal);
            io.flush_client(LAST_WORDS).await;
        }
        let _ = io.client_wr.shutdown().await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_complete_when_its_length_has_arrived() {
        assert!(!has_frame(b""));
        assert!(!has_frame(b"Q\0\0\0"));
        assert!(!has_frame(b"Q\0\0\0\x09SELE"));
        assert!(has_frame(b"Q\0\0\0\x09SELE\0"));
        assert!(has_frame(b"S\0\0\0\x04"));
        assert!(has_frame(b"S\0\0\0\x02"), "a bad length is read, and fails");
    }
}
