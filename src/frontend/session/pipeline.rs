//! The protocol state of a session's upstream stream, as a plain
//! synchronous type that never awaits: the sockets are `relay.rs`'s, the
//! meaning of client messages is the session's, and this type keeps what
//! ties the two directions together.
//!
//! - **Cycles.** Every Query, Sync and FunctionCall sent upstream (the
//!   client's and rowgate's own) ends a cycle; the cycle a message belongs
//!   to is the count of those sent before it, and the cycle a response
//!   belongs to is the count of cycles ended before it. Each cycle is
//!   answered by one ReadyForQuery, but for one case: after an error in an
//!   extended-protocol message PostgreSQL discards every message up to the
//!   next Sync, a Query or FunctionCall among them, which then gets no
//!   ReadyForQuery; the Sync's then ends all those cycles at once. What a
//!   cycle still expected when it ends was skipped.
//! - **Mixed cycles.** To tell whether an error came from an
//!   extended-protocol message (and the backend now skips to Sync) or from
//!   the Query after them, a cycle that a Query or FunctionCall ends while
//!   extended-protocol messages wait for their Sync keeps the count of
//!   those messages (the client's and rowgate's own among them), and the
//!   responses that complete one are counted as they arrive: an error
//!   before the last of them is an extended-protocol message's.
//! - **Expected responses.** The responses to rowgate's own messages
//!   inside a client's cycle (a Close standing for a Parse, an automatic
//!   `PREPARE`, the Close of a retired statement), in the order sent; each
//!   says what the client is handed instead.
//! - **Own queries.** Cycles that are rowgate's alone (reading the search
//!   path back): their messages are consumed, and the first value is the
//!   answer; a notification among them is the client's (it comes whenever
//!   the backend is idle).
//! - **Refusals.** The markers sent in place of refused statements, whose
//!   errors are swapped for the refusals.
//! - **Retries.** An automatic statement that failed as stale, outside a
//!   transaction block and with nothing sent after it, runs again the
//!   ordinary way: its error and ReadyForQuery are dropped and the next
//!   cycle's results stand for them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::frontend::autoprep::{self, Auto};
use crate::frontend::own::{Answer, OwnQueries};
use crate::frontend::refusals::Refusals;
use crate::frontend::sqlstate;
use crate::frontend::tags::{backend, frontend, status};
use crate::rewrite::Refusal;
use crate::wire;

/// The largest ErrorResponse or ReadyForQuery read whole; a longer error
/// (a huge message or detail) streams to the client as it is.
pub const MAX_INSPECTED: usize = 1 << 20;
/// A ParseComplete message.
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";

/// What the session does with an expected response.
#[derive(Debug)]
pub enum Action {
    /// Hand it on.
    Pass,
    /// The CommandComplete of rowgate's own `PREPARE`: drop it; the
    /// statement exists.
    Swallow(Arc<Auto>),
    /// The ParseComplete of a Parse that creates a statement: hand it on;
    /// the statement exists.
    Created(Arc<Auto>),
    /// The CloseComplete of a Close sent in place of a Parse: hand on a
    /// ParseComplete instead.
    AsParseComplete,
    /// The ParseComplete of a statement's Parse sent again on a pooled
    /// connection that lacked it: drop it; the statement exists.
    Restored(Arc<Auto>),
    /// The CloseComplete of rowgate's own Close: drop it.
    Drop,
    /// The ErrorResponse of an `EXECUTE` standing for this client
    /// statement, if it says the statement went stale: the statement may
    /// be run again the ordinary way.
    Retry(Arc<str>),
}

#[derive(Debug)]
struct Expect {
    cycle: u64,
    tag: u8,
    action: Action,
}

/// A client message whose outcome the session follows (see
/// [`Pipeline::track`]).
#[derive(Debug)]
struct Tracked {
    cycle: u64,
    /// Its place among the cycle's extended-protocol messages.
    index: u32,
    outcome: Arc<Auto>,
}

/// A cycle that a Query or FunctionCall ended while extended-protocol
/// messages waited for their Sync.
#[derive(Debug)]
struct Mixed {
    cycle: u64,
    /// The extended-protocol messages sent in it before its Query.
    extended: u32,
}

/// Whether a response completes an extended-protocol message (each one
/// gets exactly one of these, or an ErrorResponse): ParseComplete,
/// BindComplete, CloseComplete, a Describe's RowDescription or NoData, an
/// Execute's CommandComplete, EmptyQueryResponse or PortalSuspended.
fn completes_extended(tag: u8) -> bool {
    matches!(
        tag,
        backend::PARSE_COMPLETE
            | backend::BIND_COMPLETE
            | backend::CLOSE_COMPLETE
            | backend::ROW_DESCRIPTION
            | backend::NO_DATA
            | backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY
            | backend::PORTAL_SUSPENDED
    )
}

/// How the relay reads a message from upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspect {
    /// Streamed to the client as it arrives, never held whole.
    Stream,
    /// Read whole and given to [`Pipeline::on_server`].
    Whole,
}

/// What becomes of a message from upstream.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The client gets it as it is.
    Relay,
    /// The client gets this instead.
    Replace(Bytes),
    /// The client gets nothing (a response to rowgate's own message).
    Drop,
    /// The ReadyForQuery of a cycle whose statement runs again: the client
    /// gets nothing; what awaited this cycle awaits the next.
    Deferred,
    /// The error of a stale automatic statement that may run again: the
    /// client gets nothing; the session sends the statement the ordinary
    /// way now (its cycle's results stand for this one's).
    Retry(Arc<str>),
}

/// The protocol state of one upstream stream.
pub struct Pipeline {
    /// Cycles sent.
    sent: u64,
    /// Cycles ended (ReadyForQuery received): the cycle receiving now.
    done: u64,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// A Query came before a Sync ended the extended-protocol messages
    /// before it (the session then stops preparing statements of its own).
    mixed: bool,
    /// Extended-protocol messages sent in the cycle being sent, and
    /// whether the client's last one is still to be counted (it goes after
    /// the messages rowgate sends before it).
    extended: u32,
    client_extended: bool,
    /// The mixed cycles sent and not yet ended, in order.
    mixed_cycles: VecDeque<Mixed>,
    /// Responses of the cycle receiving that completed an
    /// extended-protocol message (or, after them, a Query's statement).
    completed: u32,
    /// Client messages whose outcome is followed, in order.
    tracked: VecDeque<Tracked>,
    /// The prefix of the session's automatic statements' names.
    auto_prefix: String,
    /// An extended-protocol message of the cycle receiving failed: the
    /// backend discards everything up to the next Sync.
    skipping: bool,
    expect: VecDeque<Expect>,
    own: OwnQueries,
    /// The answer of the last own query, until taken.
    answer: Option<Answer>,
    refusals: Refusals,
    /// Refusals registered so far (their markers' numbers).
    refused: u64,
    /// An error said a prepared statement went stale or missing.
    stale: bool,
    /// The ReadyForQuery of a failed cycle whose statement runs again.
    drop_ready: bool,
}

impl Pipeline {
    /// A new stream; `nonce` makes the session's refusal markers unique.
    pub fn new(nonce: u64) -> Self {
        Pipeline {
            sent: 0,
            done: 0,
            status: status::IDLE,
            unsynced: false,
            mixed: false,
            extended: 0,
            client_extended: false,
            mixed_cycles: VecDeque::new(),
            completed: 0,
            tracked: VecDeque::new(),
            auto_prefix: super::outgoing::auto_prefix(nonce),
            skipping: false,
            expect: VecDeque::new(),
            own: OwnQueries::default(),
            answer: None,
            refusals: Refusals::new(nonce),
            refused: 0,
            stale: false,
            drop_ready: false,
        }
    }

    // --- messages to upstream ---

    /// A client message tagged `tag` is to go upstream; whether it comes
    /// between cycles (no extended-protocol message since the last Sync).
    pub fn on_client(&mut self, tag: u8) -> bool {
        let between = !self.unsynced;
        self.count_client();
        match tag {
            frontend::SYNC => self.unsynced = false,
            frontend::QUERY if self.unsynced => self.mixed = true,
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE => {
                self.unsynced = true;
                self.client_extended = true;
            }
            frontend::FLUSH => self.unsynced = true,
            _ => {}
        }
        between
    }

    /// Counts the client's last extended-protocol message, once rowgate's
    /// own messages before it are counted.
    fn count_client(&mut self) {
        if std::mem::take(&mut self.client_extended) {
            self.extended += 1;
        }
    }

    /// The cycle being sent ends; it is a mixed one if extended-protocol
    /// messages wait for their Sync.
    fn close_cycle(&mut self) {
        self.count_client();
        if self.unsynced {
            self.mixed_cycles.push_back(Mixed {
                cycle: self.sent,
                extended: self.extended,
            });
        }
        self.extended = 0;
        self.sent += 1;
    }

    /// The cycle the next message sent belongs to.
    pub fn cycle(&self) -> u64 {
        self.sent
    }

    /// A message that ends a cycle (Query, Sync, FunctionCall) was sent.
    pub fn end_cycle(&mut self) {
        self.close_cycle();
    }

    /// Expects a response tagged `tag` to a message of the current cycle.
    /// A ParseComplete or CloseComplete to drop (`Drop`, `Restored`)
    /// answers a message of rowgate's own, sent in addition to the
    /// client's (before the client's message it goes with).
    pub fn expect(&mut self, tag: u8, action: Action) {
        if matches!(tag, backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE)
            && matches!(action, Action::Drop | Action::Restored(_))
        {
            self.extended += 1;
        }
        self.expect.push_back(Expect {
            cycle: self.sent,
            tag,
            action,
        });
    }

    /// A read-write member's `COPY ... FROM STDIN` goes through rowgate's
    /// staging table (see `rewrite::writes::copy_in`): of the
    /// CommandCompletes of its four statements (the staging table's
    /// creation, the COPY, the checked INSERT, the drop) the client sees the
    /// COPY's only. After an error the rest are skipped with the cycle.
    pub fn expect_copy_in(&mut self) {
        self.expect(backend::COMMAND_COMPLETE, Action::Drop);
        self.expect(backend::COMMAND_COMPLETE, Action::Pass);
        self.expect(backend::COMMAND_COMPLETE, Action::Drop);
        self.expect(backend::COMMAND_COMPLETE, Action::Drop);
    }

    /// Follows the outcome of the client's extended-protocol message just
    /// sent (after rowgate's own messages that go before it): `outcome`
    /// settles ready when its response comes, failed when it fails, and
    /// skipped when PostgreSQL skipped it after an earlier error.
    pub fn track(&mut self, outcome: Arc<Auto>) {
        self.tracked.push_back(Tracked {
            cycle: self.sent,
            index: self.extended,
            outcome,
        });
    }

    /// Extended-protocol messages were sent since the last Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// A Query interrupted extended-protocol messages (see the field).
    pub fn mixed(&self) -> bool {
        self.mixed
    }

    /// The next cycle is an own query's (its Query is sent with this call).
    pub fn own_query(&mut self) {
        self.own.register(self.sent);
        self.close_cycle();
    }

    /// An own query is under way.
    #[cfg(test)]
    pub fn own_pending(&self) -> bool {
        !self.own.is_empty()
    }

    /// The answer of the own query that ended, once.
    pub fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }

    /// Registers a refusal; the text to send upstream in place of the
    /// statement (see [`Refusals::register`]).
    pub fn refuse(&mut self, refusal: &Refusal, sql: Option<&str>) -> String {
        self.refused += 1;
        self.refusals.register(self.refused, refusal, sql)
    }

    /// Whether an error said a prepared statement went stale or missing
    /// since the last call.
    pub fn take_stale(&mut self) -> bool {
        std::mem::take(&mut self.stale)
    }

    /// Every cycle sent has ended.
    pub fn idle(&self) -> bool {
        self.done >= self.sent
    }

    // --- messages from upstream ---

    /// The cycle whose responses arrive now.
    pub fn receiving(&self) -> u64 {
        self.done
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// How to read a message tagged `tag` of length `len` (its length
    /// field). `auditing`: the audit log follows results.
    pub fn inspect(&self, tag: u8, len: usize, auditing: bool) -> Inspect {
        if self.own.owns(self.done) {
            return Inspect::Whole;
        }
        let expected = (matches!(
            tag,
            backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE | backend::COMMAND_COMPLETE
        ) && !self.expect.is_empty())
            || (auditing
                && matches!(
                    tag,
                    backend::PARSE_COMPLETE
                        | backend::COMMAND_COMPLETE
                        | backend::EMPTY_QUERY
                        | backend::PORTAL_SUSPENDED
                ));
        match tag {
            backend::ERROR_RESPONSE if len + 1 > MAX_INSPECTED => Inspect::Stream,
            backend::ERROR_RESPONSE | backend::READY_FOR_QUERY => Inspect::Whole,
            _ if expected => Inspect::Whole,
            _ => Inspect::Stream,
        }
    }

    /// A message from upstream streamed to the client unread (as
    /// [`Pipeline::inspect`] said).
    pub fn on_streamed(&mut self, tag: u8) {
        if !self.own.owns(self.done) {
            self.count_server(tag);
        }
    }

    /// Counts the responses that complete an extended-protocol message:
    /// the `n`th is the `n`th message's, and an error is the message's
    /// after the ones completed (those after it are skipped). In a mixed
    /// cycle an error before the last extended-protocol message completed
    /// is one of theirs (the backend skips to Sync), an error after them
    /// the Query's.
    fn count_server(&mut self, tag: u8) {
        let done = self.done;
        if tag == backend::ERROR_RESPONSE {
            if self
                .mixed_cycles
                .front()
                .is_some_and(|m| m.cycle == done && self.completed < m.extended)
            {
                self.skipping = true;
            }
            while let Some(t) = self.tracked.front().filter(|t| t.cycle == done) {
                if t.index == self.completed {
                    t.outcome.settle(false);
                } else {
                    t.outcome.settle_skipped();
                }
                self.tracked.pop_front();
            }
        } else if completes_extended(tag) {
            while let Some(t) = self
                .tracked
                .front()
                .filter(|t| t.cycle == done && t.index <= self.completed)
            {
                t.outcome.settle(true);
                self.tracked.pop_front();
            }
            self.completed = self.completed.saturating_add(1);
        }
    }

    /// Cycles up to `cycle` ended.
    fn forget_mixed(&mut self, cycle: u64) {
        while self.mixed_cycles.front().is_some_and(|m| m.cycle <= cycle) {
            self.mixed_cycles.pop_front();
        }
    }

    /// A 26000 error naming one of the session's automatic statements can
    /// only answer a Bind or Describe of the client's unnamed statement
    /// that one stood for (the client cannot name rowgate's statements):
    /// PostgreSQL's words for the unnamed statement instead.
    fn unnamed_missing(&self, body: &[u8]) -> Option<Bytes> {
        let mut fields = wire::error_fields(body);
        let code = fields.iter().find(|(c, _)| *c == b'C').map(|(_, v)| v);
        if code.map(String::as_str) != Some(sqlstate::UNDEFINED_PSTATEMENT) {
            return None;
        }
        let quoted = format!("prepared statement \"{}", self.auto_prefix);
        let message = fields.iter_mut().find(|(c, _)| *c == b'M')?;
        if !message.1.starts_with(&quoted) {
            return None;
        }
        message.1 = "unnamed prepared statement does not exist".to_string();
        Some(wire::error_from_fields(&fields))
    }

    /// A whole message from upstream (one [`Pipeline::inspect`] asked for).
    pub fn on_server(&mut self, tag: u8, body: &[u8]) -> Reply {
        if self.own.owns(self.done) {
            // A notification for the client's LISTEN comes whenever the
            // backend is idle, also just before it reads an own query.
            if tag == backend::NOTIFICATION_RESPONSE {
                return Reply::Relay;
            }
            if let Some(answer) = self.own.take(self.done, tag, body) {
                self.forget_mixed(self.done);
                self.done += 1;
                self.status = answer.status;
                self.answer = Some(answer);
            }
            return Reply::Drop;
        }
        self.count_server(tag);
        match tag {
            backend::READY_FOR_QUERY => {
                // After an extended-protocol error, the cycles that
                // Queries ended before the Sync were skipped with it: this
                // ReadyForQuery is the Sync's and ends them all.
                let mut last = self.done;
                if std::mem::take(&mut self.skipping) {
                    while self.mixed_cycles.front().is_some_and(|m| m.cycle <= last) {
                        self.mixed_cycles.pop_front();
                        last += 1;
                    }
                } else {
                    self.forget_mixed(last);
                }
                self.completed = 0;
                // What the merged cycles were to do never ran.
                while let Some(t) = self.tracked.front().filter(|t| t.cycle <= last) {
                    t.outcome.settle_skipped();
                    self.tracked.pop_front();
                }
                self.end_received(last);
                self.done = last + 1;
                self.status = body.first().copied().unwrap_or(status::IDLE);
                if std::mem::take(&mut self.drop_ready) {
                    Reply::Deferred
                } else {
                    Reply::Relay
                }
            }
            backend::ERROR_RESPONSE => {
                if autoprep::stale_statement_error(body) {
                    self.stale = true;
                    // rowgate's own EXECUTE of an automatic statement.
                    if let Some(Action::Retry(sql)) = self.take_expected(tag) {
                        if self.may_retry() {
                            self.drop_ready = true;
                            return Reply::Retry(sql);
                        }
                    } else if let Some(error) = self.unnamed_missing(body) {
                        return Reply::Replace(error);
                    }
                }
                match self.refusals.translate(body) {
                    Some(error) => Reply::Replace(self.in_failed_transaction(error)),
                    None => Reply::Relay,
                }
            }
            _ => match self.take_expected(tag) {
                Some(Action::Swallow(_) | Action::Drop | Action::Restored(_)) => Reply::Drop,
                Some(Action::AsParseComplete) => Reply::Replace(Bytes::from_static(PARSE_COMPLETE)),
                _ => Reply::Relay,
            },
        }
    }

    /// The action for a response tagged `tag` in the cycle receiving: the
    /// next expected one if it matches, else none (a response to a message
    /// without an entry).
    fn take_expected(&mut self, tag: u8) -> Option<Action> {
        let head = self.expect.front()?;
        if head.cycle != self.done || head.tag != tag {
            return None;
        }
        let e = self.expect.pop_front()?;
        if let Action::Swallow(a) | Action::Created(a) | Action::Restored(a) = &e.action {
            a.settle(true);
        }
        Some(e.action)
    }

    /// Cycle `cycle` ended: what it still expected was skipped after an
    /// error, and the statements it was to create do not exist.
    fn end_received(&mut self, cycle: u64) {
        while self.expect.front().is_some_and(|e| e.cycle <= cycle) {
            if let Some(Expect {
                action: Action::Swallow(a) | Action::Created(a) | Action::Restored(a),
                ..
            }) = self.expect.pop_front()
            {
                a.settle(false);
            }
        }
    }

    /// A statement may run again only outside a transaction block (inside
    /// one its error aborted the block) and when nothing was sent after
    /// its cycle.
    fn may_retry(&self) -> bool {
        self.status == status::IDLE
            && self.sent == self.done + 1
            && !self.unsynced
            && self.own.is_empty()
    }

    /// A refusal of a statement sent in a transaction block that had
    /// already failed: PostgreSQL answers any such statement (but one that
    /// ends the transaction, which rowgate never refuses) with 25P02 before
    /// looking at what it asks, so the refusal becomes that. Errors its
    /// parser gives first (syntax, encoding, depth) and rowgate's own
    /// conditions stay as they are.
    fn in_failed_transaction(&self, error: Bytes) -> Bytes {
        if self.status != status::FAILED {
            return error;
        }
        let fields = wire::error_fields(&error[5..]);
        let code = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| v.as_str());
        if !matches!(
            code,
            Some(
                sqlstate::INSUFFICIENT_PRIVILEGE
                    | sqlstate::FEATURE_NOT_SUPPORTED
                    | sqlstate::DUPLICATE_PREPARED_STATEMENT
            )
        ) {
            return error;
        }
        let message =
            "current transaction is aborted, commands ignored until end of transaction block";
        wire::error_response("ERROR", sqlstate::IN_FAILED_SQL_TRANSACTION, message)
    }
}

#[cfg(test)]
mod tests {
    //! Message sequences as the wire tests send them, without sockets:
    //! what the client sends (through the session's calls) and what the
    //! server answers, checked against what the client is handed.

    use super::*;

    const NONCE: u64 = 7;

    fn ready(status: u8) -> Vec<u8> {
        vec![status]
    }

    fn error(code: &str, message: &str) -> Vec<u8> {
        wire::error_response("ERROR", code, message)[5..].to_vec()
    }

    fn code_of(reply: &Reply) -> Option<String> {
        match reply {
            Reply::Replace(b) => wire::error_fields(&b[5..])
                .into_iter()
                .find(|(c, _)| *c == b'C')
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A simple Query refused: the marker's syntax error becomes the
    /// refusal, other errors pass, the cycle ends idle.
    #[test]
    fn a_refused_query_gets_its_refusal() {
        let mut p = Pipeline::new(NONCE);
        assert!(p.on_client(frontend::QUERY));
        let marker = p.refuse(&Refusal::Table("hr.salaries".into()), None);
        p.end_cycle();
        assert!(!p.idle());
        let body = error("42601", &format!("syntax error at or near \"{marker}\""));
        assert_eq!(
            p.inspect(backend::ERROR_RESPONSE, body.len() + 4, false),
            Inspect::Whole
        );
        let reply = p.on_server(backend::ERROR_RESPONSE, &body);
        assert_eq!(code_of(&reply).as_deref(), Some("42501"));
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
        // The same error again is the upstream's own: relayed.
        p.on_client(frontend::QUERY);
        p.end_cycle();
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &body), Reply::Relay);
    }

    /// In a failed transaction block PostgreSQL answers 25P02 first; a
    /// refusal there says the same.
    #[test]
    fn a_refusal_in_a_failed_block_is_25p02() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::QUERY);
        p.end_cycle();
        p.on_server(backend::ERROR_RESPONSE, &error("22012", "division by zero"));
        p.on_server(backend::READY_FOR_QUERY, &ready(status::FAILED));
        assert_eq!(p.status(), status::FAILED);
        p.on_client(frontend::QUERY);
        let marker = p.refuse(&Refusal::Table("t".into()), None);
        p.end_cycle();
        let body = error("42601", &format!("syntax error at or near \"{marker}\""));
        let reply = p.on_server(backend::ERROR_RESPONSE, &body);
        assert_eq!(code_of(&reply).as_deref(), Some("25P02"));
    }

    /// Parse/Bind/Execute/Sync where rowgate stands a Close in for a
    /// repeated Parse: the client gets a ParseComplete for the
    /// CloseComplete, everything else as it is.
    #[test]
    fn a_close_standing_for_a_parse_answers_parse_complete() {
        let mut p = Pipeline::new(NONCE);
        for tag in [frontend::PARSE, frontend::BIND, frontend::EXECUTE] {
            p.on_client(tag);
        }
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        assert!(p.unsynced());
        assert!(!p.on_client(frontend::SYNC), "inside a cycle");
        p.end_cycle();
        assert_eq!(p.inspect(backend::CLOSE_COMPLETE, 4, false), Inspect::Whole);
        assert_eq!(
            p.on_server(backend::CLOSE_COMPLETE, &[]),
            Reply::Replace(Bytes::from_static(PARSE_COMPLETE))
        );
        assert_eq!(p.inspect(backend::BIND_COMPLETE, 4, false), Inspect::Stream);
        assert_eq!(p.inspect(backend::DATA_ROW, 40, false), Inspect::Stream);
        assert_eq!(
            p.inspect(backend::COMMAND_COMPLETE, 13, false),
            Inspect::Stream
        );
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle() && !p.unsynced());
    }

    /// rowgate's `PREPARE ...; EXECUTE ...`: the PREPARE's CommandComplete
    /// is dropped and the statement exists; if the cycle fails before it,
    /// the statement does not exist.
    #[test]
    fn an_automatic_prepare_exists_only_when_its_completion_came() {
        let mut p = Pipeline::new(NONCE);
        let ok = Auto::new("rowgate_auto_1".into(), 0);
        p.on_client(frontend::QUERY);
        p.expect(backend::COMMAND_COMPLETE, Action::Swallow(ok.clone()));
        p.end_cycle();
        assert!(
            ok.usable(0) && !ok.usable(1),
            "usable only in its cycle until prepared"
        );
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"PREPARE\0"),
            Reply::Drop
        );
        assert!(ok.ready());
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            Reply::Relay
        );
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));

        let failed = Auto::new("rowgate_auto_2".into(), 1);
        p.on_client(frontend::QUERY);
        p.expect(backend::COMMAND_COMPLETE, Action::Swallow(failed.clone()));
        p.end_cycle();
        assert_eq!(
            p.on_server(backend::ERROR_RESPONSE, &error("42P01", "no such table")),
            Reply::Relay
        );
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        assert!(failed.failed() && !failed.usable(1));
    }

    /// A pooled statement's Parse sent again before a Bind: its
    /// ParseComplete is the client's to never see, and it exists after.
    #[test]
    fn a_restored_statement_is_parsed_unseen() {
        let mut p = Pipeline::new(NONCE);
        let s = Auto::new("rowgate_s_x".into(), 0);
        p.on_client(frontend::BIND);
        p.expect(backend::PARSE_COMPLETE, Action::Restored(s.clone()));
        p.on_client(frontend::EXECUTE);
        p.on_client(frontend::SYNC);
        p.end_cycle();
        assert_eq!(p.on_server(backend::PARSE_COMPLETE, &[]), Reply::Drop);
        assert!(s.ready());
        assert_eq!(p.inspect(backend::BIND_COMPLETE, 4, false), Inspect::Stream);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
    }

    /// Expected responses match only in their own cycle and order.
    #[test]
    fn expectations_match_in_order_and_cycle() {
        let mut p = Pipeline::new(NONCE);
        let a = Auto::new("a".into(), 0);
        p.on_client(frontend::PARSE);
        p.expect(backend::PARSE_COMPLETE, Action::Pass);
        p.on_client(frontend::PARSE);
        p.expect(backend::PARSE_COMPLETE, Action::Created(a.clone()));
        p.on_client(frontend::SYNC);
        p.end_cycle();
        p.on_client(frontend::CLOSE);
        p.expect(backend::CLOSE_COMPLETE, Action::Drop);
        p.on_client(frontend::SYNC);
        p.end_cycle();
        // A CloseComplete in cycle 0 is nobody's expectation.
        assert_eq!(p.on_server(backend::CLOSE_COMPLETE, &[]), Reply::Relay);
        assert_eq!(p.on_server(backend::PARSE_COMPLETE, &[]), Reply::Relay);
        assert!(!a.ready() && a.usable(0) && !a.usable(1));
        assert_eq!(p.on_server(backend::PARSE_COMPLETE, &[]), Reply::Relay);
        assert!(a.ready() && a.usable(7));
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        assert_eq!(p.on_server(backend::CLOSE_COMPLETE, &[]), Reply::Drop);
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        assert!(p.idle());
    }

    /// An own query between two client cycles: every message of its cycle
    /// is consumed, the answer is its first value, and the client's next
    /// cycle is relayed.
    #[test]
    fn an_own_query_is_consumed_and_answered() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::QUERY);
        p.end_cycle();
        p.own_query();
        assert!(p.own_pending());
        assert_eq!(p.inspect(backend::DATA_ROW, 20, false), Inspect::Stream);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        // Now the own cycle: read whole, consumed.
        assert_eq!(
            p.inspect(backend::ROW_DESCRIPTION, 40, false),
            Inspect::Whole
        );
        assert_eq!(p.on_server(backend::ROW_DESCRIPTION, b"x"), Reply::Drop);
        let mut row = 1i16.to_be_bytes().to_vec();
        row.extend(6i32.to_be_bytes());
        row.extend(b"public");
        assert_eq!(p.on_server(backend::DATA_ROW, &row), Reply::Drop);
        assert_eq!(p.take_answer(), None, "not before its end");
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'T')),
            Reply::Drop
        );
        let answer = p.take_answer().unwrap();
        assert_eq!(answer.value.as_deref(), Some("public"));
        assert_eq!(p.status(), status::IN_TRANSACTION);
        assert!(!p.own_pending() && p.idle());
        assert_eq!(p.take_answer(), None, "once");
    }

    /// A COPY FROM through the staging table: the client sees the
    /// CopyInResponse and the COPY's tag only; when the checked INSERT
    /// fails, its error becomes native RLS's and the drop's expectation
    /// ends with the cycle.
    #[test]
    fn a_staged_copy_shows_the_client_the_copy_only() {
        let mut p = Pipeline::new(NONCE);
        for fails in [false, true] {
            p.on_client(frontend::QUERY);
            p.expect_copy_in();
            p.end_cycle();
            assert_eq!(
                p.on_server(backend::COMMAND_COMPLETE, b"SELECT 0\0"),
                Reply::Drop
            );
            assert_eq!(
                p.on_server(backend::COPY_IN_RESPONSE, &[0, 0, 0]),
                Reply::Relay
            );
            p.on_client(frontend::COPY_DATA);
            p.on_client(frontend::COPY_DONE);
            assert_eq!(
                p.on_server(backend::COMMAND_COMPLETE, b"COPY 2\0"),
                Reply::Relay
            );
            if fails {
                let check = error(
                    "22P02",
                    "invalid input syntax for type integer: \"rowgate_check_6f7264657273\"",
                );
                let reply = p.on_server(backend::ERROR_RESPONSE, &check);
                assert_eq!(code_of(&reply).as_deref(), Some("42501"));
            } else {
                assert_eq!(
                    p.on_server(backend::COMMAND_COMPLETE, b"INSERT 0 2\0"),
                    Reply::Drop
                );
                assert_eq!(
                    p.on_server(backend::COMMAND_COMPLETE, b"DROP TABLE\0"),
                    Reply::Drop
                );
            }
            assert_eq!(
                p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
                Reply::Relay
            );
            assert!(p.idle());
        }
        // The next cycle's tags are the client's own.
        p.on_client(frontend::QUERY);
        p.end_cycle();
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"DROP TABLE\0"),
            Reply::Relay
        );
    }

    fn stale() -> Vec<u8> {
        error("0A000", "cached plan must not change result type")
    }

    /// A stale automatic statement outside a transaction block, nothing
    /// sent after it: its error and ReadyForQuery are dropped and it runs
    /// again in the next cycle.
    #[test]
    fn a_stale_statement_runs_again_when_nothing_followed() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 1")),
        );
        p.end_cycle();
        let reply = p.on_server(backend::ERROR_RESPONSE, &stale());
        assert_eq!(reply, Reply::Retry(Arc::from("SELECT 1")));
        assert!(p.take_stale());
        p.end_cycle(); // the session sent it again
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Deferred
        );
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            Reply::Relay
        );
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
    }

    /// Not when another statement was sent after it, nor in a transaction
    /// block: the error goes to the client.
    #[test]
    fn a_stale_statement_fails_when_it_cannot_run_again() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 1")),
        );
        p.end_cycle();
        p.on_client(frontend::QUERY);
        p.end_cycle();
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &stale()), Reply::Relay);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        p.on_server(backend::READY_FOR_QUERY, &ready(b'T'));

        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 2")),
        );
        p.end_cycle();
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &stale()), Reply::Relay);
        assert!(p.take_stale(), "the session still forgets its statements");
    }

    /// A Query sent before a Sync ended extended messages marks the stream
    /// mixed; a Sync makes it synced again.
    #[test]
    fn a_query_inside_extended_messages_mixes_the_stream() {
        let mut p = Pipeline::new(NONCE);
        assert!(p.on_client(frontend::PARSE), "between cycles");
        assert!(!p.on_client(frontend::QUERY));
        assert!(p.mixed());
        assert!(!p.on_client(frontend::SYNC));
        assert!(p.on_client(frontend::QUERY));
        assert!(!p.unsynced());
    }

    /// Parse (failing), Bind, Execute, then a Query before the Sync:
    /// PostgreSQL discards everything up to the Sync, the Query with it,
    /// and answers the error and one ReadyForQuery. The Query's cycle ends
    /// with the Sync's, its expectations (a staged COPY's four tags) with
    /// it; the next cycles are counted as they are.
    #[test]
    fn a_query_skipped_after_an_extended_error_ends_with_the_sync() {
        let mut p = Pipeline::new(NONCE);
        send(
            &mut p,
            &[frontend::PARSE, frontend::BIND, frontend::EXECUTE],
        );
        p.on_client(frontend::QUERY);
        p.expect_copy_in();
        p.end_cycle();
        assert!(p.mixed());
        send(&mut p, &[frontend::SYNC]);
        // A Close standing for a Parse in the next cycle.
        p.on_client(frontend::PARSE);
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
        send(&mut p, &[frontend::QUERY]);
        assert_eq!(p.cycle(), 4);
        let bad = error("42703", "column \"nope\" does not exist");
        let replies = receive(
            &mut p,
            &[
                (backend::ERROR_RESPONSE, &bad),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(2));
        assert_eq!(p.receiving(), 2, "the Query's cycle ended with the Sync's");
        let replies = receive(
            &mut p,
            &[
                (backend::CLOSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        let mut want = vec![parse_complete()];
        want.extend(relayed(5));
        assert_eq!(replies, want);
        assert!(p.idle());
    }

    /// Several Queries (and a FunctionCall) skipped before the Sync: the
    /// one ReadyForQuery ends them all, and a restored statement expected
    /// in one of them does not exist.
    #[test]
    fn every_query_up_to_the_sync_is_skipped() {
        let mut p = Pipeline::new(NONCE);
        let s = Auto::new("rowgate_s_x".into(), 0);
        send(&mut p, &[frontend::PARSE]);
        send(&mut p, &[frontend::QUERY]);
        p.on_client(frontend::BIND);
        p.expect(backend::PARSE_COMPLETE, Action::Restored(s.clone()));
        send(
            &mut p,
            &[
                frontend::EXECUTE,
                frontend::QUERY,
                frontend::FUNCTION_CALL,
                frontend::SYNC,
            ],
        );
        send(&mut p, &[frontend::QUERY]);
        let bad = error("42601", "syntax error at or near \"SELEC\"");
        let replies = receive(
            &mut p,
            &[
                (backend::ERROR_RESPONSE, &bad),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(2));
        assert!(s.failed(), "skipped: it does not exist");
        assert_eq!(p.receiving(), 4);
        assert!(!p.idle());
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(2), "the ParseComplete is the Query's own");
        assert!(p.idle());
    }

    /// A Query before the Sync that runs (the extended messages before it
    /// succeeded), or fails itself: its ReadyForQuery comes, then the
    /// Sync's; the error of the Query makes nothing skip.
    #[test]
    fn a_query_inside_extended_messages_runs_when_they_succeed() {
        for query_fails in [false, true] {
            let mut p = Pipeline::new(NONCE);
            let s = Auto::new("rowgate_s_x".into(), 0);
            send(&mut p, &[frontend::PARSE]);
            p.on_client(frontend::DESCRIBE);
            p.on_client(frontend::BIND);
            p.expect(backend::PARSE_COMPLETE, Action::Restored(s.clone()));
            send(&mut p, &[frontend::EXECUTE, frontend::QUERY]);
            p.on_client(frontend::PARSE);
            p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
            send(&mut p, &[frontend::SYNC]);
            let bad = error("22012", "division by zero");
            let mut msgs: Vec<(u8, &[u8])> = vec![
                (backend::PARSE_COMPLETE, b""),
                (backend::PARAMETER_DESCRIPTION, b"\0\0"),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            ];
            if query_fails {
                msgs.push((backend::ERROR_RESPONSE, &bad));
            } else {
                msgs.push((backend::ROW_DESCRIPTION, b"x"));
                msgs.push((backend::COMMAND_COMPLETE, b"SELECT 1\0"));
            }
            msgs.push((backend::READY_FOR_QUERY, b"I"));
            let replies = receive(&mut p, &msgs);
            let mut want = relayed(3);
            want.push(Reply::Drop);
            want.extend(relayed(msgs.len() - 4));
            assert_eq!(replies, want, "query fails: {query_fails}");
            assert!(s.ready());
            assert_eq!(p.receiving(), 1, "the Query's ReadyForQuery");
            let replies = receive(
                &mut p,
                &[
                    (backend::CLOSE_COMPLETE, b""),
                    (backend::READY_FOR_QUERY, b"I"),
                ],
            );
            assert_eq!(replies, vec![parse_complete(), Reply::Relay]);
            assert!(p.idle());
        }
    }

    /// An Execute that fails after rows, before a Query: the rows and the
    /// error are the Execute's, and the Query is skipped.
    #[test]
    fn an_execute_failing_before_a_query_skips_it() {
        let mut p = Pipeline::new(NONCE);
        let auto = Auto::new("rowgate_auto_1".into(), 0);
        send(
            &mut p,
            &[frontend::PARSE, frontend::BIND, frontend::EXECUTE],
        );
        p.on_client(frontend::QUERY);
        p.expect(backend::COMMAND_COMPLETE, Action::Swallow(auto.clone()));
        p.end_cycle();
        send(&mut p, &[frontend::SYNC, frontend::QUERY]);
        let bad = error("22012", "division by zero");
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::DATA_ROW, b"x"),
                (backend::ERROR_RESPONSE, &bad),
                (backend::READY_FOR_QUERY, b"I"),
                (backend::COMMAND_COMPLETE, b"PREPARE\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(7), "the last PREPARE is the client's");
        assert!(auto.failed());
        assert!(p.idle());
    }

    /// Tracked client messages settle by their place among the cycle's
    /// extended-protocol messages (rowgate's own counted where they go):
    /// the one an error answers failed, the ones after it were skipped,
    /// and so were those of cycles skipped up to the Sync.
    #[test]
    fn tracked_messages_settle_by_their_place() {
        let mut p = Pipeline::new(NONCE);
        let t: Vec<Arc<Auto>> = (0..5).map(|_| Auto::new(String::new(), 0)).collect();
        p.on_client(frontend::PARSE);
        p.track(t[0].clone());
        p.on_client(frontend::BIND);
        p.on_client(frontend::PARSE);
        p.track(t[1].clone());
        p.on_client(frontend::PARSE);
        p.track(t[2].clone());
        send(&mut p, &[frontend::SYNC]);
        // A Bind with a Parse of rowgate's before it, a Parse, a Query,
        // a Parse in the next cycle.
        p.on_client(frontend::BIND);
        p.expect(backend::PARSE_COMPLETE, Action::Drop);
        p.on_client(frontend::PARSE);
        p.track(t[3].clone());
        send(&mut p, &[frontend::QUERY]);
        p.on_client(frontend::PARSE);
        p.track(t[4].clone());
        send(&mut p, &[frontend::SYNC]);

        let bad = error("42703", "column \"nope\" does not exist");
        receive(&mut p, &[(backend::PARSE_COMPLETE, b"")]);
        assert!(t[0].ready() && t[1].pending());
        receive(
            &mut p,
            &[
                (backend::BIND_COMPLETE, b""),
                (backend::ERROR_RESPONSE, &bad),
            ],
        );
        assert!(t[1].failed() && !t[1].skipped(), "the error is its own");
        assert!(t[2].skipped());
        receive(&mut p, &[(backend::READY_FOR_QUERY, b"I")]);
        assert!(t[3].pending());
        let missing = error("26000", "prepared statement \"s\" does not exist");
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::ERROR_RESPONSE, &missing),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, vec![Reply::Drop, Reply::Relay, Reply::Relay]);
        assert!(t[3].skipped(), "after the Bind's error");
        assert!(t[4].skipped(), "in a cycle skipped up to the Sync");
        assert!(p.idle());
    }

    /// A 26000 naming one of the session's automatic statements answers a
    /// Bind of the unnamed statement it stood for: PostgreSQL's words for
    /// the unnamed statement. Other names, and rowgate's own EXECUTE,
    /// keep theirs.
    #[test]
    fn a_missing_automatic_statement_is_the_unnamed_one() {
        let mut p = Pipeline::new(NONCE);
        let auto = super::super::outgoing::auto_name(NONCE, 3);
        let missing = |name: &str| {
            error(
                "26000",
                &format!("prepared statement \"{name}\" does not exist"),
            )
        };
        send(&mut p, &[frontend::BIND, frontend::SYNC]);
        let reply = p.on_server(backend::ERROR_RESPONSE, &missing(&auto));
        let Reply::Replace(b) = &reply else {
            panic!("{reply:?}")
        };
        let fields = wire::error_fields(&b[5..]);
        assert!(fields.contains(&(b'C', "26000".into())));
        assert!(fields.contains(&(b'M', "unnamed prepared statement does not exist".into())));
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        send(&mut p, &[frontend::BIND, frontend::SYNC]);
        let other = super::super::outgoing::auto_name(NONCE + 1, 3);
        for name in ["s1", "rowgate_reserved", other.as_str()] {
            assert_eq!(
                p.on_server(backend::ERROR_RESPONSE, &missing(name)),
                Reply::Relay
            );
        }
        p.on_server(backend::READY_FOR_QUERY, &ready(b'T'));
        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 1")),
        );
        p.end_cycle();
        assert_eq!(
            p.on_server(backend::ERROR_RESPONSE, &missing(&auto)),
            Reply::Relay
        );
    }

    /// Errors too long to be a refusal's stream through unread; results
    /// are read whole only when the audit log follows them.
    #[test]
    fn only_what_is_looked_at_is_read_whole() {
        let p = Pipeline::new(NONCE);
        let huge = MAX_INSPECTED + 10;
        assert_eq!(
            p.inspect(backend::ERROR_RESPONSE, huge, false),
            Inspect::Stream
        );
        assert_eq!(
            p.inspect(backend::COMMAND_COMPLETE, 13, false),
            Inspect::Stream
        );
        assert_eq!(
            p.inspect(backend::COMMAND_COMPLETE, 13, true),
            Inspect::Whole
        );
        assert_eq!(
            p.inspect(backend::NOTICE_RESPONSE, 13, true),
            Inspect::Stream
        );
        assert_eq!(
            p.inspect(backend::READY_FOR_QUERY, 5, false),
            Inspect::Whole
        );
    }

    /// Sends a client message of each tag, as the session does: Query,
    /// Sync and FunctionCall end a cycle, a Parse expects its
    /// ParseComplete as it is.
    fn send(p: &mut Pipeline, tags: &[u8]) {
        for &tag in tags {
            p.on_client(tag);
            match tag {
                frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL => p.end_cycle(),
                frontend::PARSE => p.expect(backend::PARSE_COMPLETE, Action::Pass),
                _ => {}
            }
        }
    }

    /// Each `(tag, body)` from upstream as the relay hands it on: read
    /// whole only when `inspect` says so, else streamed (relayed as it is).
    fn receive(p: &mut Pipeline, msgs: &[(u8, &[u8])]) -> Vec<Reply> {
        msgs.iter()
            .map(|&(tag, body)| match p.inspect(tag, body.len() + 4, false) {
                Inspect::Whole => p.on_server(tag, body),
                Inspect::Stream => {
                    p.on_streamed(tag);
                    Reply::Relay
                }
            })
            .collect()
    }

    fn relayed(n: usize) -> Vec<Reply> {
        (0..n).map(|_| Reply::Relay).collect()
    }

    fn parse_complete() -> Reply {
        Reply::Replace(Bytes::from_static(PARSE_COMPLETE))
    }

    fn marker_error(marker: &str) -> Vec<u8> {
        error("42601", &format!("syntax error at or near \"{marker}\""))
    }

    /// A simple Query of several statements: one cycle, every result
    /// relayed as it is, one ReadyForQuery.
    #[test]
    fn a_simple_query_of_several_statements_is_one_cycle() {
        let mut p = Pipeline::new(NONCE);
        assert!(p.on_client(frontend::QUERY), "between cycles");
        p.end_cycle();
        assert!(!p.idle() && !p.unsynced());
        let replies = receive(
            &mut p,
            &[
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::COMMAND_COMPLETE, b"CREATE TABLE\0"),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 0\0"),
            ],
        );
        assert_eq!(replies, relayed(6));
        assert!(!p.idle(), "not before its ReadyForQuery");
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
        assert_eq!((p.cycle(), p.receiving()), (1, 1));
    }

    /// An empty Query is answered by EmptyQueryResponse, relayed (and read
    /// whole only for the audit log).
    #[test]
    fn an_empty_query_is_relayed() {
        let mut p = Pipeline::new(NONCE);
        send(&mut p, &[frontend::QUERY]);
        assert_eq!(p.inspect(backend::EMPTY_QUERY, 4, false), Inspect::Stream);
        assert_eq!(p.inspect(backend::EMPTY_QUERY, 4, true), Inspect::Whole);
        assert_eq!(p.on_server(backend::EMPTY_QUERY, &[]), Reply::Relay);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
    }

    /// Parse, Bind, Describe (of the statement and of the portal),
    /// Execute, Sync: one cycle, every response the client's own.
    #[test]
    fn parse_bind_describe_execute_sync_is_relayed_as_it_is() {
        let mut p = Pipeline::new(NONCE);
        assert!(p.on_client(frontend::PARSE), "between cycles");
        p.expect(backend::PARSE_COMPLETE, Action::Pass);
        for tag in [
            frontend::DESCRIBE,
            frontend::BIND,
            frontend::DESCRIBE,
            frontend::EXECUTE,
        ] {
            assert!(!p.on_client(tag), "inside the cycle");
        }
        assert!(p.unsynced() && p.idle(), "nothing ended yet");
        assert!(!p.on_client(frontend::SYNC));
        p.end_cycle();
        assert!(!p.unsynced() && !p.idle());
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::PARAMETER_DESCRIPTION, b"\0\0"),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::BIND_COMPLETE, b""),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(8));
        assert!(p.idle());
        // The expectation was used: nothing is read whole any more.
        assert_eq!(
            p.inspect(backend::PARSE_COMPLETE, 4, false),
            Inspect::Stream
        );
    }

    /// Execute with a row limit: PortalSuspended, then the rest of the
    /// rows at the next Execute; relayed, also when the audit log reads
    /// them whole.
    #[test]
    fn a_portal_suspended_at_its_row_limit_is_relayed() {
        let mut p = Pipeline::new(NONCE);
        send(
            &mut p,
            &[
                frontend::PARSE,
                frontend::BIND,
                frontend::EXECUTE,
                frontend::EXECUTE,
                frontend::SYNC,
            ],
        );
        assert_eq!(
            p.inspect(backend::PORTAL_SUSPENDED, 4, false),
            Inspect::Stream
        );
        assert_eq!(
            p.inspect(backend::PORTAL_SUSPENDED, 4, true),
            Inspect::Whole
        );
        let msgs: [(u8, &[u8]); 8] = [
            (backend::PARSE_COMPLETE, b""),
            (backend::BIND_COMPLETE, b""),
            (backend::DATA_ROW, b"x"),
            (backend::DATA_ROW, b"x"),
            (backend::PORTAL_SUSPENDED, b""),
            (backend::DATA_ROW, b"x"),
            (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            (backend::READY_FOR_QUERY, b"T"),
        ];
        for (tag, body) in msgs {
            assert_eq!(p.on_server(tag, body), Reply::Relay, "{}", tag as char);
        }
        assert!(p.idle());
        assert_eq!(p.status(), status::IN_TRANSACTION);
    }

    /// Several extended cycles sent before any response, the second with
    /// a refused Parse in its middle: its refusal comes at its place, what
    /// it still expected is skipped with it (a statement it was to create
    /// does not exist), and the third cycle's expectations are the third's.
    #[test]
    fn a_refused_parse_in_a_pipeline_skips_its_cycle_only() {
        let mut p = Pipeline::new(NONCE);
        send(
            &mut p,
            &[
                frontend::PARSE,
                frontend::BIND,
                frontend::EXECUTE,
                frontend::SYNC,
            ],
        );
        // Cycle 1: a good statement, a refused one, then one rowgate
        // prepares under its own name.
        send(
            &mut p,
            &[frontend::PARSE, frontend::BIND, frontend::EXECUTE],
        );
        p.on_client(frontend::PARSE);
        let marker = p.refuse(&Refusal::Table("hr.salaries".into()), None);
        p.expect(backend::PARSE_COMPLETE, Action::Pass);
        p.on_client(frontend::PARSE);
        let skipped = Auto::new("rowgate_auto_1".into(), p.cycle());
        p.expect(backend::PARSE_COMPLETE, Action::Created(skipped.clone()));
        send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
        // Cycle 2: a Close standing for a Parse.
        p.on_client(frontend::PARSE);
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
        assert_eq!(p.cycle(), 3);

        let cycle0 = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(cycle0, relayed(5));
        let cycle1 = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::COMMAND_COMPLETE, b"SELECT 0\0"),
            ],
        );
        assert_eq!(cycle1, relayed(3));
        let refusal = p.on_server(backend::ERROR_RESPONSE, &marker_error(&marker));
        assert_eq!(code_of(&refusal).as_deref(), Some("42501"));
        assert!(!skipped.failed(), "not before the cycle ends");
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(skipped.failed() && !skipped.usable(2));
        let cycle2 = receive(
            &mut p,
            &[
                (backend::CLOSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::COMMAND_COMPLETE, b"SELECT 0\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(
            cycle2,
            vec![parse_complete(), Reply::Relay, Reply::Relay, Reply::Relay]
        );
        assert!(p.idle());
    }

    /// An upstream error in the middle of an extended cycle (not a
    /// refusal): relayed as it is, and the rest of the cycle is skipped
    /// up to its Sync, including rowgate's own Close.
    #[test]
    fn an_error_skips_to_sync_with_rowgates_expectations() {
        let mut p = Pipeline::new(NONCE);
        send(
            &mut p,
            &[frontend::PARSE, frontend::BIND, frontend::EXECUTE],
        );
        p.expect(backend::CLOSE_COMPLETE, Action::Drop);
        p.on_client(frontend::PARSE);
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
        // The next cycle is the client's Close alone.
        p.on_client(frontend::CLOSE);
        p.expect(backend::CLOSE_COMPLETE, Action::Pass);
        send(&mut p, &[frontend::SYNC]);
        let division = error("22012", "division by zero");
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::ERROR_RESPONSE, &division),
                (backend::READY_FOR_QUERY, b"I"),
                // The client's Close: its own CloseComplete, not a
                // ParseComplete nor dropped.
                (backend::CLOSE_COMPLETE, b""),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(6));
        assert!(p.idle());
        assert!(!p.take_stale(), "not a stale statement's error");
    }

    /// Flush without Sync: the responses so far come within the cycle,
    /// rowgate's expectations are met in it, and the stream is not
    /// between cycles (a pooled connection is kept) until the Sync.
    #[test]
    fn flush_without_sync_answers_inside_the_cycle() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::PARSE);
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        for tag in [frontend::BIND, frontend::DESCRIBE, frontend::EXECUTE] {
            p.on_client(tag);
        }
        assert!(!p.on_client(frontend::FLUSH));
        assert_eq!(p.cycle(), 0, "a Flush ends no cycle");
        let replies = receive(
            &mut p,
            &[
                (backend::CLOSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            ],
        );
        assert_eq!(replies[0], parse_complete());
        assert_eq!(replies[1..], relayed(4));
        assert!(p.idle() && p.unsynced(), "answered, but not synced");
        assert!(!p.on_client(frontend::SYNC));
        p.end_cycle();
        assert!(!p.idle());
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle() && !p.unsynced());
    }

    /// The client's Close, rowgate's Close of a retired statement and a
    /// Close standing for a Parse, in one cycle: each CloseComplete is
    /// told apart by its order.
    #[test]
    fn closes_of_the_client_and_of_rowgate_are_told_apart_by_order() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::CLOSE);
        p.expect(backend::CLOSE_COMPLETE, Action::Pass);
        p.on_client(frontend::PARSE);
        p.expect(backend::CLOSE_COMPLETE, Action::Drop);
        p.expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
        send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
        let replies = receive(
            &mut p,
            &[
                (backend::CLOSE_COMPLETE, b""),
                (backend::CLOSE_COMPLETE, b""),
                (backend::CLOSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::COMMAND_COMPLETE, b"SELECT 0\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        let mut want = vec![Reply::Relay, Reply::Drop, parse_complete()];
        want.extend(relayed(3));
        assert_eq!(replies, want);
    }

    /// A statement rowgate prepares under its own name in place of an
    /// unnamed Parse: its ParseComplete is the client's; if its Parse
    /// fails, the error is the client's and the statement does not exist.
    #[test]
    fn a_created_statement_exists_only_when_its_parse_completed() {
        let mut p = Pipeline::new(NONCE);
        for fails in [false, true] {
            let auto = Auto::new(format!("rowgate_auto_{fails}"), p.cycle());
            p.on_client(frontend::PARSE);
            p.expect(backend::PARSE_COMPLETE, Action::Created(auto.clone()));
            send(&mut p, &[frontend::BIND, frontend::EXECUTE, frontend::SYNC]);
            if fails {
                let e = error("42703", "column \"nope\" does not exist");
                assert_eq!(p.on_server(backend::ERROR_RESPONSE, &e), Reply::Relay);
            } else {
                assert_eq!(p.on_server(backend::PARSE_COMPLETE, &[]), Reply::Relay);
                assert!(auto.ready());
            }
            assert_eq!(
                p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
                Reply::Relay
            );
            assert_eq!(auto.ready(), !fails);
            assert_eq!(auto.failed(), fails);
        }
    }

    /// Transaction pooling, a Bind of the unnamed statement on a
    /// connection without it: the session's Parse goes again first and
    /// its ParseComplete is dropped; when the session has none, the
    /// connection's own is closed first, unseen, and the Bind's 26000 is
    /// the client's.
    #[test]
    fn the_unnamed_statement_restored_or_closed_is_unseen() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::BIND);
        p.expect(backend::PARSE_COMPLETE, Action::Drop);
        send(&mut p, &[frontend::EXECUTE, frontend::SYNC]);
        let replies = receive(
            &mut p,
            &[
                (backend::PARSE_COMPLETE, b""),
                (backend::BIND_COMPLETE, b""),
                (backend::DATA_ROW, b"x"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        let mut want = vec![Reply::Drop];
        want.extend(relayed(4));
        assert_eq!(replies, want);

        p.on_client(frontend::BIND);
        p.expect(backend::CLOSE_COMPLETE, Action::Drop);
        send(&mut p, &[frontend::EXECUTE, frontend::SYNC]);
        let missing = error("26000", "unnamed prepared statement does not exist");
        let replies = receive(
            &mut p,
            &[
                (backend::CLOSE_COMPLETE, b""),
                (backend::ERROR_RESPONSE, &missing),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, vec![Reply::Drop, Reply::Relay, Reply::Relay]);
        assert!(p.take_stale(), "26000: rowgate's statements may be gone");
        assert!(p.idle());
    }

    /// A retry expectation unused (the statement ran, or failed for
    /// another reason) ends with its cycle: a stale error of the next
    /// cycle is the client's.
    #[test]
    fn a_retry_is_only_for_its_own_cycle() {
        let mut p = Pipeline::new(NONCE);
        for outcome in ["ran", "failed"] {
            p.on_client(frontend::QUERY);
            p.expect(
                backend::ERROR_RESPONSE,
                Action::Retry(Arc::from("SELECT 1")),
            );
            p.end_cycle();
            if outcome == "ran" {
                assert_eq!(
                    p.on_server(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                    Reply::Relay
                );
            } else {
                let e = error("57014", "canceling statement due to user request");
                assert_eq!(p.on_server(backend::ERROR_RESPONSE, &e), Reply::Relay);
                assert!(!p.take_stale());
            }
            assert_eq!(
                p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
                Reply::Relay
            );
            send(&mut p, &[frontend::QUERY]);
            assert_eq!(
                p.on_server(backend::ERROR_RESPONSE, &stale()),
                Reply::Relay,
                "{outcome}"
            );
            assert!(p.take_stale());
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        }
        assert!(p.idle());
    }

    /// A stale automatic statement does not run again while the client's
    /// extended messages wait for their Sync (they would run first), nor
    /// while an own query is under way.
    #[test]
    fn a_stale_statement_fails_when_something_waits_behind_it() {
        let mut p = Pipeline::new(NONCE);
        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 1")),
        );
        p.end_cycle();
        p.on_client(frontend::PARSE);
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &stale()), Reply::Relay);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        send(&mut p, &[frontend::SYNC]);
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));

        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 2")),
        );
        p.end_cycle();
        p.own_query();
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &stale()), Reply::Relay);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay,
            "not deferred"
        );
        assert!(p.own_pending());
    }

    /// Two cycles in flight, the first failing stale with the client's own
    /// statement: its error is relayed, and the second cycle's automatic
    /// statement, stale too with nothing after it, runs again.
    #[test]
    fn a_stale_error_of_the_clients_own_leaves_the_next_retry_alone() {
        let mut p = Pipeline::new(NONCE);
        send(&mut p, &[frontend::QUERY]);
        p.on_client(frontend::QUERY);
        p.expect(
            backend::ERROR_RESPONSE,
            Action::Retry(Arc::from("SELECT 2")),
        );
        p.end_cycle();
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &stale()), Reply::Relay);
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert_eq!(
            p.on_server(backend::ERROR_RESPONSE, &stale()),
            Reply::Retry(Arc::from("SELECT 2"))
        );
    }

    /// COPY TO STDOUT: CopyOutResponse, CopyData, CopyDone and the
    /// command's tag stream to the client as they are.
    #[test]
    fn copy_out_streams_to_the_client() {
        let mut p = Pipeline::new(NONCE);
        send(&mut p, &[frontend::QUERY]);
        for tag in [
            backend::COPY_OUT_RESPONSE,
            backend::COPY_DATA,
            backend::COPY_DATA,
            backend::COPY_DONE,
            backend::COMMAND_COMPLETE,
        ] {
            assert_eq!(
                p.inspect(tag, 100, false),
                Inspect::Stream,
                "{}",
                tag as char
            );
        }
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"COPY 3\0"),
            Reply::Relay
        );
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
    }

    /// A staged COPY FROM that the client abandons (CopyFail), or whose
    /// staging table cannot be made: the error is the client's, and the
    /// expectations left end with the cycle, not eating the next cycle's
    /// tags.
    #[test]
    fn a_staged_copy_that_fails_leaves_nothing_expected() {
        let mut p = Pipeline::new(NONCE);
        // Abandoned by the client.
        p.on_client(frontend::QUERY);
        p.expect_copy_in();
        p.end_cycle();
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"SELECT 0\0"),
            Reply::Drop
        );
        p.on_client(frontend::COPY_DATA);
        p.on_client(frontend::COPY_FAIL);
        assert!(!p.unsynced(), "COPY messages are no extended cycle");
        let failed = error("57014", "COPY from stdin failed: client gave up");
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &failed), Reply::Relay);
        p.on_server(backend::READY_FOR_QUERY, &ready(b'I'));
        // In a failed transaction block, the staging table's creation
        // fails first.
        p.on_client(frontend::QUERY);
        p.expect_copy_in();
        p.end_cycle();
        let aborted = error("25P02", "current transaction is aborted");
        assert_eq!(p.on_server(backend::ERROR_RESPONSE, &aborted), Reply::Relay);
        p.on_server(backend::READY_FOR_QUERY, &ready(status::FAILED));
        send(&mut p, &[frontend::QUERY]);
        let replies = receive(
            &mut p,
            &[
                (backend::COMMAND_COMPLETE, b"ROLLBACK\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(replies, relayed(2));
    }

    /// ReadyForQuery's status follows the transaction: `T` in a block, `E`
    /// once it failed (where a refusal is 25P02 as PostgreSQL answers),
    /// `I` after it ends (where the refusal says why again). An error in
    /// an implicit transaction (a text of several statements) leaves `I`.
    #[test]
    fn ready_for_query_statuses_follow_the_transaction() {
        let mut p = Pipeline::new(NONCE);
        let refused = |p: &mut Pipeline| {
            p.on_client(frontend::QUERY);
            let marker = p.refuse(&Refusal::Table("hr.salaries".into()), None);
            p.end_cycle();
            let reply = p.on_server(backend::ERROR_RESPONSE, &marker_error(&marker));
            let after = p.status();
            p.on_server(backend::READY_FOR_QUERY, &[after]);
            code_of(&reply)
        };
        let division = error("22012", "division by zero");
        // SELECT 1; SELECT 1/0: the implicit transaction fails and ends.
        send(&mut p, &[frontend::QUERY]);
        p.on_server(backend::COMMAND_COMPLETE, b"SELECT 1\0");
        p.on_server(backend::ERROR_RESPONSE, &division);
        p.on_server(backend::READY_FOR_QUERY, &ready(status::IDLE));
        assert_eq!(p.status(), status::IDLE);
        assert_eq!(refused(&mut p).as_deref(), Some("42501"));
        // BEGIN
        send(&mut p, &[frontend::QUERY]);
        p.on_server(backend::READY_FOR_QUERY, &ready(status::IN_TRANSACTION));
        assert_eq!(p.status(), status::IN_TRANSACTION);
        assert_eq!(refused(&mut p).as_deref(), Some("42501"), "not failed yet");
        p.on_server(backend::READY_FOR_QUERY, &ready(status::FAILED));
        assert_eq!(p.status(), status::FAILED);
        assert_eq!(refused(&mut p).as_deref(), Some("25P02"));
        // ROLLBACK
        send(&mut p, &[frontend::QUERY]);
        p.on_server(backend::READY_FOR_QUERY, &ready(status::IDLE));
        assert_eq!(refused(&mut p).as_deref(), Some("42501"));
        assert!(p.idle());
    }

    /// NoticeResponse, ParameterStatus and NotificationResponse may come
    /// at any time: they stream to the client and meet no expectation.
    #[test]
    fn asynchronous_messages_pass_and_leave_expectations_alone() {
        let mut p = Pipeline::new(NONCE);
        let auto = Auto::new("rowgate_auto_1".into(), 0);
        p.on_client(frontend::QUERY);
        p.expect(backend::COMMAND_COMPLETE, Action::Swallow(auto.clone()));
        p.end_cycle();
        for tag in [
            backend::NOTICE_RESPONSE,
            backend::PARAMETER_STATUS,
            backend::NOTIFICATION_RESPONSE,
        ] {
            for auditing in [false, true] {
                assert_eq!(p.inspect(tag, 30, auditing), Inspect::Stream);
            }
            // Even read whole, it is no expected response.
            assert_eq!(p.on_server(tag, b"x\0"), Reply::Relay);
        }
        assert!(!auto.ready());
        assert_eq!(
            p.on_server(backend::COMMAND_COMPLETE, b"PREPARE\0"),
            Reply::Drop
        );
        assert!(auto.ready());
    }

    /// A notification for the client's LISTEN that arrives while an own
    /// query runs (the backend was idle) is the client's, not the own
    /// query's to consume.
    #[test]
    fn a_notification_during_an_own_query_reaches_the_client() {
        let mut p = Pipeline::new(NONCE);
        p.own_query();
        let replies = receive(
            &mut p,
            &[
                (backend::NOTIFICATION_RESPONSE, b"\0\0\0\x01ch\0\0"),
                (backend::ROW_DESCRIPTION, b"x"),
                (backend::PARAMETER_STATUS, b"search_path\0x\0"),
                (backend::COMMAND_COMPLETE, b"SELECT 1\0"),
                (backend::READY_FOR_QUERY, b"I"),
            ],
        );
        let mut want = vec![Reply::Relay];
        want.extend((0..4).map(|_| Reply::Drop));
        assert_eq!(replies, want);
        assert!(p.take_answer().is_some() && p.idle());
    }

    /// An own query after a client cycle that failed its transaction
    /// block: the client's cycle ends with its expectations, the own
    /// answer says it failed and in what status.
    #[test]
    fn an_own_query_after_a_failed_cycle_answers_failed() {
        let mut p = Pipeline::new(NONCE);
        let auto = Auto::new("rowgate_auto_1".into(), 0);
        p.on_client(frontend::QUERY);
        p.expect(backend::COMMAND_COMPLETE, Action::Swallow(auto.clone()));
        p.end_cycle();
        p.own_query();
        let aborted = error("25P02", "current transaction is aborted");
        let replies = receive(
            &mut p,
            &[
                (backend::ERROR_RESPONSE, &aborted),
                (backend::READY_FOR_QUERY, b"E"),
                (backend::ERROR_RESPONSE, &aborted),
                (backend::READY_FOR_QUERY, b"E"),
            ],
        );
        assert_eq!(
            replies,
            vec![Reply::Relay, Reply::Relay, Reply::Drop, Reply::Drop]
        );
        assert!(auto.failed());
        let answer = p.take_answer().unwrap();
        assert!(answer.failed && answer.value.is_none());
        assert_eq!(answer.status, status::FAILED);
        assert_eq!(p.status(), status::FAILED);
        assert!(p.idle());
    }

    /// A FunctionCall is a cycle of its own; refused, its marker's error
    /// becomes the refusal.
    #[test]
    fn a_function_call_is_a_cycle_of_its_own() {
        let mut p = Pipeline::new(NONCE);
        assert!(p.on_client(frontend::FUNCTION_CALL), "between cycles");
        assert!(!p.unsynced());
        p.end_cycle();
        assert_eq!(
            p.inspect(backend::FUNCTION_CALL_RESPONSE, 8, true),
            Inspect::Stream
        );
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        p.on_client(frontend::FUNCTION_CALL);
        let marker = p.refuse(
            &Refusal::statement("the FunctionCall protocol message"),
            None,
        );
        p.end_cycle();
        let reply = p.on_server(backend::ERROR_RESPONSE, &marker_error(&marker));
        assert_eq!(code_of(&reply).as_deref(), Some("42501"));
        assert_eq!(
            p.on_server(backend::READY_FOR_QUERY, &ready(b'I')),
            Reply::Relay
        );
        assert!(p.idle());
    }
}
