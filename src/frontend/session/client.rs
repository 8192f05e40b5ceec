//! What each client message becomes upstream: the session's state as the
//! client sees it, and the rewriting of Query and Parse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use sqlparser::tokenizer::Token;
use tracing::debug;

use super::outgoing::{parse_message, query_message, refusal_sql, reserved_target, NO_STATEMENT};
use super::pipeline::{Action, Pipeline};
use super::pooling::Pooled;
use super::prepared::Seen;
use super::relay::{Io, Stop};
use super::{Outcome, Shared};
use crate::audit::{Audit, Await, Decided, Trail};
use crate::frontend::autoprep::{self, Auto};
use crate::frontend::messages;
use crate::frontend::tags::{backend, frontend};
use crate::policy::{Access, PolicySet, Role};
use crate::rewrite::types::Oid;
use crate::rewrite::view_as;
use crate::rewrite::{self, Context, Refusal};
use crate::upstream::catalog::Snapshot;
use crate::wire::{self, WireError};

/// Rewrites remembered per session, keyed by statement text.
const CACHE_ENTRIES: usize = 256;

/// A client session: what it may do, what it has done, and the pipeline
/// state of its upstream stream.
pub(super) struct Session<'a> {
    pub shared: &'a Shared,
    pub user: String,
    /// The data source the session uses.
    pub source: Arc<super::DataSource>,
    pub database: String,
    /// The source's policy set.
    pub policy: Arc<PolicySet>,
    pub access: Arc<Access>,
    pub catalog: Arc<Snapshot>,
    pub cache: HashMap<String, Result<Forward, Refusal>>,
    pub nonce: u64,
    pub statements: u64,
    pub refused: u64,
    /// The protocol state of the upstream stream.
    pub pipe: Pipeline,
    /// Simple-query statement shapes, for automatic preparing.
    pub shapes: HashMap<Vec<Token>, Seen>,
    /// Unnamed Parse texts (rewritten), then their parameter types, for
    /// automatic preparing.
    pub texts: HashMap<String, HashMap<Vec<u8>, Seen>>,
    /// The upstream statement that stands for the client's unnamed one.
    pub unnamed: Option<Arc<Auto>>,
    /// Unnamed Parses sent whose outcome may still undo them, oldest
    /// first, each with the unnamed statement's state before it (see
    /// [`Session::settle_unnamed`]).
    pub unnamed_log: Vec<(Arc<Auto>, UnnamedState)>,
    /// Statements prepared automatically so far (their names' counter).
    pub autos: usize,
    /// Of those, the ones not forgotten since.
    pub live: usize,
    /// Automatic statements no longer used, to close upstream.
    pub retired: Vec<String>,
    /// A setting changed in the transaction under way.
    pub set_in_transaction: bool,
    /// Client statements (by name; `""` the unnamed one) that change a
    /// setting, end a transaction or deallocate every prepared statement.
    pub stateful: HashMap<String, Stateful>,
    /// The session's search path, as PostgreSQL has it (names resolve
    /// along it here as they do upstream).
    pub path: Vec<String>,
    /// The session changed its search path at least once.
    pub path_touched: bool,
    /// A cycle sent may have changed the search path in ways only
    /// PostgreSQL knows (an error, a rollback): read it before the next
    /// statement is rewritten.
    pub settle: bool,
    /// The extended-protocol cycle under way ran a statement that may
    /// change the search path.
    pub cycle_touches: bool,
    pub counters: Counters,
    /// Statements awaiting their results, for the audit log (when on).
    pub trail: Option<Trail>,
    /// The audit log and the session's members of its records (a JSON
    /// fragment, made once).
    pub audit_sink: Option<(Arc<Audit>, Arc<str>)>,
    /// The decision on the statement just rewritten or refused.
    pub decided: Option<Arc<Decided>>,
    /// Prepared statements and portals by name, for the audit records of
    /// their executions.
    pub audit_statements: HashMap<String, Arc<Decided>>,
    pub audit_portals: HashMap<String, Arc<Decided>>,
    /// The access the client logged in with; `access` is another user's
    /// while an admin looks as them (`SET rowgate.view_as`).
    pub login: Arc<Access>,
    /// The user an admin session looks as.
    pub viewing: Option<String>,
    /// The session's members of audit records.
    pub audit_info: Option<serde_json::Map<String, serde_json::Value>>,
    /// Transaction pooling, when the session is pooled.
    pub pooled: Option<Pooled>,
    /// Runs after which a statement is prepared automatically (0 never).
    pub prepare_threshold: usize,
    /// The cancel key the client was given.
    pub cancel_key: (i32, i32),
}

/// The per-statement counters of `/metrics`, as a session moves them.
pub(super) struct Counters {
    pub forwarded: prometheus::IntCounter,
    pub auto_hit: prometheus::IntCounter,
    pub auto_prepare: prometheus::IntCounter,
}

impl Counters {
    /// The labelled counters, looked up once per session (a labelled
    /// lookup takes a lock).
    pub fn new(metrics: &crate::metrics::Metrics) -> Self {
        Counters {
            forwarded: metrics.statements.with_label_values(&["forwarded", ""]),
            auto_hit: metrics.autoprep.with_label_values(&["hit"]),
            auto_prepare: metrics.autoprep.with_label_values(&["prepare"]),
        }
    }
}

/// What running a prepared statement does to session state.
#[derive(Clone, Debug, Default)]
pub(super) struct Stateful {
    pub changes_settings: bool,
    pub ends_transaction: bool,
    pub deallocates_all: bool,
    pub path: Option<rewrite::PathChange>,
    pub resets: bool,
    pub calls_listed: bool,
}

/// A rewrite that may be forwarded.
#[derive(Clone, Debug)]
pub(super) struct Forward {
    pub sql: String,
    /// Its last change of the search path.
    pub path: Option<rewrite::PathChange>,
    /// One read, which may be prepared automatically.
    pub preparable: bool,
    /// Drops every prepared statement of the session.
    pub deallocates_all: bool,
    /// Sets or resets a setting.
    pub changes_settings: bool,
    /// Ends a transaction (or rolls back to a savepoint).
    pub ends_transaction: bool,
    /// Leaves state on the connection that cannot move to another: why.
    pub pins: Option<&'static str>,
    /// Sets settings back to the session's startup values.
    pub resets: bool,
    /// May call a function the policy lists, which may change settings
    /// without saying so.
    pub calls_listed: bool,
    /// A read-write member's COPY FROM STDIN through its staging table: of
    /// the four statements' results the client sees the COPY's.
    pub copy_in: bool,
}

impl Forward {
    /// A statement rowgate answers itself, as the query giving its answer.
    pub fn answer(sql: String) -> Forward {
        Forward {
            sql,
            path: None,
            preparable: false,
            deallocates_all: false,
            changes_settings: false,
            ends_transaction: false,
            pins: None,
            resets: false,
            calls_listed: false,
            copy_in: false,
        }
    }
}

impl Session<'_> {
    /// Sends upstream what the client's complete messages become, until
    /// the upstream buffer is full; an own query waits for its answer on
    /// the way. `Err` ends the session.
    pub(super) async fn forward(&mut self, io: &mut Io) -> Result<(), Stop> {
        while io.upstream_room() {
            let Some(frame) = wire::try_frame(&mut io.client_in, self.shared.max_message)? else {
                return Ok(());
            };
            // Nothing prepared, bound or declared under a user's old
            // access runs after a reload changed it.
            if !self.access_unchanged() {
                return Err(Stop::Outcome(Outcome::AccessChanged));
            }
            if frame.tag() != frontend::TERMINATE {
                self.attach(io).await?;
            }
            let rewrites = self.access.role != Role::Admin;
            if self.pipe.take_stale() && rewrites {
                self.stale_seen();
                self.forget_autos(true);
            }
            let between = self.pipe.on_client(frame.tag());
            // A pooled connection took the session's startup settings as
            // ordinary ones, which RESET undoes: they are put back before
            // the next statement.
            if between && frame.tag() != frontend::TERMINATE {
                self.reapply_settings(io).await?;
            }
            // Before a statement is rewritten, the search path must be
            // PostgreSQL's (between cycles only: inside one, what ran
            // before a statement set it, or the statement does not run).
            if rewrites
                && self.settle
                && between
                && matches!(frame.tag(), frontend::QUERY | frontend::PARSE)
                && !self.settle_path(io).await?
            {
                return Err(Stop::Outcome(Outcome::PathLost));
            }
            if self.trail.is_some() {
                self.audit_message(frame.tag(), frame.body())?;
            }
            // While the audit log cannot take records, prepared
            // statements do not run either: a Bind is replaced by a
            // Parse that fails with the refusal, and PostgreSQL skips
            // the rest of the pipeline.
            if frame.tag() == frontend::BIND {
                if let Some(refusal) = self.audit_refusal() {
                    let marker = self.refuse(&refusal);
                    // No parameter types: a count of zero.
                    io.send(&parse_message(NO_STATEMENT, &marker, &[0, 0]));
                    continue;
                }
            }
            match frame.tag() {
                frontend::QUERY
                    if view_as::mentions_body(frame.body())
                        && self.view_as_request(frame.body()).is_some() =>
                {
                    // Boxed (rare): the session's future holds none of its
                    // state while idle.
                    let out = Box::pin(self.view_as_query(frame.body(), io)).await?;
                    io.send(&out);
                    self.audit_push(Await::Query);
                    self.pipe.end_cycle();
                }
                frontend::PARSE
                    if view_as::mentions_body(frame.body())
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
                    let before = self.unnamed_before(parse.name);
                    let sql = view_as::redacted(parse.query.unwrap_or_default()).into_owned();
                    let setting = match self.view_as_request(sql.as_bytes()) {
                        Some(Ok(view_as::ViewAs::Token(_))) => view_as::TOKEN_SETTING,
                        _ if sql.contains(view_as::TOKEN_SETTING) => view_as::TOKEN_SETTING,
                        _ => view_as::SETTING,
                    };
                    let refusal = if self.login.role == Role::Admin {
                        Refusal::unsupported(format!("SET {setting} in the extended query protocol (send it as a simple query)"))
                    } else {
                        Refusal::Setting(setting.into())
                    };
                    self.note(&sql, None, Some(&refusal));
                    let marker = self.refuse(&refusal);
                    if parse.name.is_empty() {
                        // PostgreSQL drops the unnamed statement before it
                        // parses the new one, which fails: none is left.
                        self.unnamed = None;
                        self.unnamed_parsed(None);
                    }
                    io.send(&parse_message(parse.name, &marker, parse.types));
                    self.unnamed_sent(before);
                    self.audit_parsed(frame.body())?;
                }
                frontend::QUERY => {
                    if rewrites {
                        // A Query drops the unnamed statement, unless
                        // PostgreSQL skips it (see `settle_unnamed`).
                        let before = self.unnamed_before("");
                        let out = self.query(frame.body(), io).await?;
                        io.send(&out);
                        self.unnamed_sent(before);
                    } else if let Some(refusal) = self.audit_refusal() {
                        let marker = self.refuse(&refusal);
                        self.note(&refusal_sql(frame.body()), None, Some(&refusal));
                        io.send(&query_message(&marker));
                    } else if let Some(text) = self.answer(&refusal_sql(frame.body())).await {
                        let sql = refusal_sql(frame.body());
                        self.note(&sql, Some(&text), None);
                        io.send(&query_message(&text));
                    } else {
                        if self.trail.is_some() {
                            let sql = refusal_sql(frame.body());
                            self.note(&sql, Some(&sql), None);
                        }
                        io.send(&frame.frame);
                    }
                    self.audit_push(Await::Query);
                    self.pipe.end_cycle();
                }
                frontend::PARSE if rewrites => {
                    let before = self.unnamed_before(messages::parse(frame.body())?.name);
                    let out = self.parse(frame.body(), io).await?;
                    io.send(&out);
                    self.unnamed_sent(before);
                    self.audit_parsed(frame.body())?;
                }
                frontend::PARSE if self.trail.is_some() => {
                    let parse = messages::parse(frame.body())?;
                    let name = parse.name.to_string();
                    let sql = parse.query.unwrap_or_default().to_string();
                    if let Some(refusal) = self.audit_refusal() {
                        let marker = self.refuse(&refusal);
                        self.note(&sql, None, Some(&refusal));
                        io.send(&parse_message(&name, &marker, parse.types));
                    } else {
                        self.note(&sql, Some(&sql), None);
                        io.send(&frame.frame);
                    }
                    self.audit_parsed(frame.body())?;
                }
                frontend::BIND | frontend::DESCRIBE if rewrites => {
                    let to_unnamed = targets_unnamed(frame.tag(), frame.body())?;
                    if to_unnamed {
                        self.settle_unnamed();
                    }
                    if frame.tag() == frontend::BIND && !self.stateful.is_empty() {
                        let (_, statement, _) = messages::bind(frame.body())?;
                        if let Some(effect) = self.stateful.get(statement).cloned() {
                            self.settings_event(effect.changes_settings, effect.ends_transaction);
                            if effect.resets {
                                self.settings_reset();
                            }
                            if effect.calls_listed {
                                self.settings_touched();
                            }
                            if effect.deallocates_all {
                                // Each run drops rowgate's statements too.
                                self.forget_autos(false);
                                self.pooled_deallocated();
                            }
                            self.path_event(effect.path.as_ref(), effect.ends_transaction);
                        }
                    }
                    if self.pooled.is_some() {
                        if let Some(out) = self.pooled_target(frame.tag(), frame.body(), io)? {
                            io.send(&out);
                            continue;
                        }
                    }
                    if self.pooled.is_some() && to_unnamed {
                        self.restore_unnamed(io);
                    }
                    let out = match reserved_target(frame.tag(), frame.body())? {
                        Some(out) => Some(out),
                        None => self.name_unnamed(frame.tag(), frame.body())?,
                    };
                    io.send(out.as_ref().unwrap_or(&frame.frame));
                }
                frontend::CLOSE if rewrites => {
                    let before = match messages::target(frame.body())? {
                        (b'S', "") => self.unnamed_before(""),
                        _ => None,
                    };
                    if before.is_some() {
                        self.unnamed = None;
                    }
                    self.pipe.expect(backend::CLOSE_COMPLETE, Action::Pass);
                    if let Some(out) = self.pooled_close(frame.body())? {
                        io.send(&out);
                        continue;
                    }
                    let out = reserved_target(frontend::CLOSE, frame.body())?;
                    io.send(out.as_ref().unwrap_or(&frame.frame));
                    self.unnamed_sent(before);
                }
                frontend::FUNCTION_CALL => {
                    if rewrites {
                        let refusal = Refusal::statement("the FunctionCall protocol message");
                        let out = self.refuse(&refusal);
                        self.note("(FunctionCall)", None, Some(&refusal));
                        io.send(&query_message(&out));
                    } else if let Some(refusal) = self.audit_refusal() {
                        let out = self.refuse(&refusal);
                        self.note("(FunctionCall)", None, Some(&refusal));
                        io.send(&query_message(&out));
                    } else {
                        self.note("(FunctionCall)", Some("(FunctionCall)"), None);
                        io.send(&frame.frame);
                    }
                    self.audit_push(Await::Query);
                    self.pipe.end_cycle();
                }
                frontend::SYNC => {
                    io.send(&frame.frame);
                    self.pipe.end_cycle();
                    if std::mem::take(&mut self.cycle_touches) {
                        self.settle = true;
                    }
                }
                frontend::TERMINATE => {
                    // A pooled connection is not the client's to end.
                    if self.pooled.is_none() {
                        io.send(&frame.frame);
                    }
                    return Err(Stop::Outcome(Outcome::Terminated));
                }
                frontend::PARSE
                | frontend::BIND
                | frontend::EXECUTE
                | frontend::DESCRIBE
                | frontend::CLOSE
                | frontend::FLUSH
                | frontend::COPY_DATA
                | frontend::COPY_DONE
                | frontend::COPY_FAIL => {
                    io.send(&frame.frame);
                }
                _ => {
                    let e = WireError::Malformed("frontend (unknown message type)");
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Runs a statement again the ordinary way, after its automatic
    /// statement went stale (the pipeline decided it may: see
    /// [`Pipeline::on_server`]); it ends the next cycle.
    pub(super) async fn run_again(&mut self, sql: Arc<str>, io: &mut Io) {
        self.pipe.take_stale();
        self.stale_seen();
        self.forget_autos(true);
        self.statements -= 1;
        let text = self
            .rewrite_or_refuse(&sql, &[])
            .await
            .map_or_else(|m| m, |f| f.sql);
        io.send(&query_message(&text));
        self.pipe.end_cycle();
    }

    /// A Query message: the rewritten text, the execution of an automatic
    /// prepared statement, or a refusal marker.
    async fn query(&mut self, body: &[u8], io: &mut Io) -> Result<Bytes, WireError> {
        // PostgreSQL drops the unnamed statement when a Query runs.
        self.unnamed = None;
        self.unnamed_dropped();
        let text = match messages::query(body)? {
            Ok(sql) => {
                let sql: Arc<str> = Arc::from(sql);
                self.catalog_fresh().await;
                if let Some(out) = self.auto_query(&sql, io).await {
                    return Ok(out);
                }
                match self.rewrite_or_refuse(&sql, &[]).await {
                    Ok(f) => {
                        if f.copy_in {
                            self.pipe.expect_copy_in();
                        }
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

    /// A Parse message with its query rewritten (parameter types kept), or
    /// a marker under the same statement name. A repeated unnamed one is
    /// prepared upstream under a name of rowgate's, then stood in for by a
    /// Close of the unnamed statement.
    async fn parse(&mut self, body: &[u8], io: &mut Io) -> Result<Bytes, WireError> {
        let parse = messages::parse(body)?;
        let cycle = self.pipe.cycle();
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
                match self.rewrite_or_refuse(&q, &declared).await {
                    // A COPY FROM of a read-write member goes through
                    // statements of rowgate's own: one text, one Query.
                    Ok(f) if f.copy_in => {
                        let refusal = Refusal::unsupported(
                            "COPY FROM STDIN in the extended query protocol (send it as a simple query)",
                        );
                        self.note(&q, None, Some(&refusal));
                        Err(self.refuse(&refusal))
                    }
                    other => other,
                }
            }
            Err(()) => {
                self.note("", None, Some(&not_utf8()));
                Err(self.refuse(&not_utf8()))
            }
        };
        if let Ok(f) = &forward {
            if f.changes_settings
                || f.ends_transaction
                || f.deallocates_all
                || f.path.is_some()
                || f.resets
                || f.calls_listed
            {
                self.stateful.insert(
                    parse.name.to_string(),
                    Stateful {
                        changes_settings: f.changes_settings,
                        ends_transaction: f.ends_transaction,
                        deallocates_all: f.deallocates_all,
                        path: f.path.clone(),
                        resets: f.resets,
                        calls_listed: f.calls_listed,
                    },
                );
            } else if !self.stateful.is_empty() {
                self.stateful.remove(parse.name);
            }
        }
        let sent_ok = forward.is_ok();
        let text = match forward {
            Ok(f)
                if unnamed && f.preparable && self.prepare_threshold > 0 && !self.pipe.mixed() =>
            {
                if let Some(out) = self.auto_parse(&f.sql, parse.types, cycle, io) {
                    return Ok(out);
                }
                f.sql
            }
            Ok(f) => f.sql,
            Err(marker) => marker,
        };
        if !unnamed && self.pooled.is_some() {
            return Ok(self.pooled_parse(parse.name, sent_ok, &text, parse.types, io));
        }
        self.pipe.expect(backend::PARSE_COMPLETE, Action::Pass);
        let out = parse_message(parse.name, &text, parse.types);
        if unnamed {
            self.unnamed_parsed(sent_ok.then(|| out.clone()));
        }
        Ok(out)
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
                if let Some(why) = forward.pins {
                    self.pin(why);
                }
                if forward.resets {
                    self.settings_reset();
                }
                if forward.calls_listed {
                    self.settings_touched();
                }
                if forward.deallocates_all {
                    self.forget_autos(false);
                    self.pooled_deallocated();
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
        let max_age = self.source.catalog.max_age;
        if self.catalog.age() <= max_age {
            return;
        }
        // Another session's reload may have finished already; otherwise
        // one starts in the background and this statement goes on with
        // the snapshot it has.
        if let Some(latest) = self.source.catalog.latest(&self.database) {
            if !Arc::ptr_eq(&latest, &self.catalog) {
                self.adopt(latest);
            }
        }
        if self.catalog.age() > max_age {
            self.source.catalog.reload_in_background(&self.database);
        }
    }

    fn adopt(&mut self, fresh: Arc<Snapshot>) {
        if fresh.generation() != self.catalog.generation() {
            self.cache.clear();
            self.forget_autos(true);
        }
        self.catalog = fresh;
    }

    pub(super) async fn rewrite(&mut self, sql: &str, params: &[Oid]) -> Result<Forward, Refusal> {
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
                .source
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
            pins: autoprep::pins_connection(statements, sql),
            resets: autoprep::resets_settings(statements),
            calls_listed: rewrite::may_call_listed(sql, &self.access.functions),
            copy_in: rewrite::writes::is_copy_in(statements),
            sql: rewritten.sql,
        })
    }

    /// Takes up a reloaded policy set; false when it changed this user's
    /// access (or removed the user), which ends the session.
    fn access_unchanged(&mut self) -> bool {
        let Some(current) = self.shared.policy.load().get(&self.source.name).cloned() else {
            return false;
        };
        if Arc::ptr_eq(&current, &self.policy) {
            return true;
        }
        self.policy = current;
        let unchanged = |was: &Arc<Access>| self.policy.reresolve(was).filter(|now| now == was);
        let Some(login) = unchanged(&self.login) else {
            return false;
        };
        // The viewed user (declared, or a token's) resolved again.
        let access = match &self.viewing {
            None => login.clone(),
            Some(_) => match unchanged(&self.access) {
                Some(access) => access,
                None => return false,
            },
        };
        // The new set's values, shared with the sessions that start now
        // (the old set's go with the last session holding them).
        self.login = login;
        self.access = access;
        true
    }

    /// Registers a refusal and returns the text that stands in for the
    /// statement upstream (a marker, or a probe of `sql`: see
    /// [`crate::frontend::refusals`]).
    pub fn refuse_text(&mut self, refusal: &Refusal, sql: Option<&str>) -> String {
        self.pipe.refuse(refusal, sql)
    }

    pub fn refuse(&mut self, refusal: &Refusal) -> String {
        self.refuse_text(refusal, None)
    }
}

/// What a Parse of the unnamed statement may change: the statement that
/// stands for it upstream, and in transaction pooling its Parse to send
/// again and the shared statement standing for it.
pub(super) struct UnnamedState {
    unnamed: Option<Arc<Auto>>,
    parse: Option<Bytes>,
    shared: Option<super::pooling::Named>,
}

/// Unnamed Parses remembered at most while their outcome is unknown.
const UNNAMED_LOG: usize = 64;

impl Session<'_> {
    /// Before a Parse named `name` goes (or a Query or a Close of the
    /// unnamed statement, with `name` empty): for the unnamed statement,
    /// its state now.
    fn unnamed_before(&mut self, name: &str) -> Option<UnnamedState> {
        if !name.is_empty() {
            return None;
        }
        self.settle_unnamed();
        let pooled = self.pooled.as_ref();
        Some(UnnamedState {
            unnamed: self.unnamed.clone(),
            parse: pooled.and_then(|p| p.unnamed_parse.clone()),
            shared: pooled.and_then(|p| p.statements.get("").cloned()),
        })
    }

    /// An unnamed Parse (or a Query, or a Close of the unnamed statement)
    /// went, `before` the state before it: its outcome is followed.
    fn unnamed_sent(&mut self, before: Option<UnnamedState>) {
        let Some(before) = before else {
            return;
        };
        let outcome = Auto::new(String::new(), self.pipe.cycle());
        self.pipe.track(outcome.clone());
        if self.unnamed_log.len() >= UNNAMED_LOG {
            self.unnamed_log.remove(0);
        }
        self.unnamed_log.push((outcome, before));
    }

    /// Takes in the outcomes of unnamed Parses known so far, as PostgreSQL
    /// had them: one skipped after an earlier error in its cycle never ran
    /// and changed nothing (the statement before it stays); one that ran
    /// and failed left no unnamed statement (PostgreSQL drops the old one
    /// before it parses), so in transaction pooling nothing is sent again
    /// for it; one that succeeded stands. A Parse whose outcome is not
    /// known yet stands meanwhile. The same for a Query and a Close of the
    /// unnamed statement, which drop it when they run.
    pub(super) fn settle_unnamed(&mut self) {
        while let Some((outcome, _)) = self.unnamed_log.last() {
            if outcome.pending() {
                return;
            }
            if outcome.skipped() {
                if let Some((_, before)) = self.unnamed_log.pop() {
                    self.unnamed = before.unnamed;
                    if let Some(p) = &mut self.pooled {
                        p.unnamed_parse = before.parse;
                        match before.shared {
                            Some(named) => p.statements.insert(String::new(), named),
                            None => p.statements.remove(""),
                        };
                    }
                }
                continue;
            }
            if outcome.failed() {
                // Without a session of its own, a Bind names the statement
                // that stood for it, and its 26000 says the unnamed one
                // does not exist (see `Pipeline::on_server`).
                if let Some(p) = &mut self.pooled {
                    p.unnamed_parse = None;
                    p.unnamed_missing = false;
                    p.statements.remove("");
                }
            }
            self.unnamed_log.clear();
        }
    }
}

/// Whether a Bind or Describe names the unnamed statement.
fn targets_unnamed(tag: u8, body: &[u8]) -> Result<bool, WireError> {
    Ok(if tag == frontend::BIND {
        messages::bind(body)?.1.is_empty()
    } else {
        messages::target(body)? == (b'S', "")
    })
}

pub(super) fn not_utf8() -> Refusal {
    Refusal::Encoding
}
