//! Transaction pooling as a session sees it: it takes a pooled connection
//! when it has something to send, gives it back when nothing is under way
//! outside a transaction block, and stays on its connection for good once
//! it holds state that cannot move to another (an SQL `PREPARE`, a cursor
//! WITH HOLD, a session-level lock, `LISTEN`). Its settings follow it: a
//! session that changed some reads them back from PostgreSQL before it
//! gives its connection back, and the next connection it takes is given
//! them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::client::Session;
use super::outgoing::{close_message, parse_message, NO_STATEMENT};
use super::pipeline::Action;
use super::relay::{Io, Stop};
use crate::frontend::autoprep::Auto;
use crate::frontend::messages;
use crate::frontend::own::Answer;
use crate::frontend::tags::frontend;
use crate::frontend::tags::{backend, status};
use crate::rewrite::Refusal;
use crate::upstream::pool::{quote_literal, Lease, PoolError, Pools};
use crate::wire::{self, WireError};

/// The prefix of statements' shared names upstream (which members'
/// catalog reads do not show).
const SHARED_PREFIX: &str = crate::rewrite::system::SHARED_STATEMENTS;

/// rowgate's own query for the settings a pooled session has in force:
/// every one whose value is the connection's startup's or was set in the
/// session (by rowgate, for the session's startup values, or by the
/// session), as `SHOW` prints it (which `set_config` reads back).
const SETTINGS_QUERY: &str = "SELECT pg_catalog.json_object_agg(name, \
     pg_catalog.current_setting(name) ORDER BY name) FROM pg_catalog.pg_settings \
     WHERE source IN ('client', 'session')";

/// A setting that acts on a connection while no session uses it: a
/// session with it set keeps its connection (PostgreSQL ends that
/// connection when it has been idle that long, as natively).
const IDLE_SESSION_TIMEOUT: &str = "idle_session_timeout";

/// A pooled session's hold on the pool.
pub(super) struct Pooled {
    pub pools: Arc<Pools>,
    /// The connection attached, while one is.
    pub lease: Option<Lease>,
    /// The settings the session's connection must have: its startup's,
    /// then, once it changed some, the ones it read back.
    pub wanted: Vec<(String, String)>,
    /// Its startup's settings, once `wanted` is no longer them (`None`
    /// while it is).
    pub startup: Option<Vec<(String, String)>>,
    /// A statement that may have changed settings ran since they were
    /// last read back.
    pub unsettled: bool,
    /// The session's own number: while its settings are unsettled, the
    /// statements it prepares are named for it alone.
    pub unique: u64,
    /// The session stays on its connection from now on.
    pub pinned: bool,
    /// The last unnamed statement's Parse, as sent, while it exists.
    pub unnamed_parse: Option<Bytes>,
    /// The connection attached does not have that statement.
    pub unnamed_missing: bool,
    /// A statement set settings back to the connection's startup values,
    /// which are not the session's.
    pub reapply: bool,
    /// The client's named prepared statements: each exists upstream under
    /// a shared name, on whichever connection serves the session. The
    /// unnamed one (`""`) is here while a shared statement stands for it
    /// (see `prepared.rs`, `auto_parse`).
    pub statements: HashMap<String, Named>,
    /// A `DEALLOCATE ALL` or `DISCARD ALL` ran on the attached connection:
    /// what it had prepared is gone.
    pub connection_deallocated: bool,
}

/// A client's named statement in transaction pooling.
#[derive(Clone, Debug)]
pub(super) struct Named {
    /// Its name upstream (see [`shared_name`]).
    pub shared: String,
    /// The Parse that creates it under that name.
    pub parse: Bytes,
}

/// The name a statement has upstream in transaction pooling: a digest of
/// everything its meaning depends on (the rewritten text, with the user's
/// filters in it; the parameter types; the session's startup settings,
/// which decide how names resolve and literals read when it is prepared),
/// so that sessions sending the same statement under the same settings
/// share one prepared statement per connection, and a session never runs
/// one prepared for another meaning. 192 bits of SHA-256, under rowgate's
/// reserved prefix, within PostgreSQL's 63-byte names.
pub(super) fn shared_name(text: &str, types: &[u8], settings: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update([0]);
    h.update(types);
    for (k, v) in settings {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    let digest = hex::encode(h.finalize());
    format!("{SHARED_PREFIX}{}", &digest[..48])
}

impl Session<'_> {
    /// Takes a pooled connection when the session has none.
    pub(super) async fn attach(&mut self, io: &mut Io) -> Result<(), Stop> {
        if self.pooled.is_none() || io.attached() {
            return Ok(());
        }
        // Detached only when idle: every unnamed Parse's outcome is known.
        self.settle_unnamed();
        let Some(p) = &mut self.pooled else {
            return Ok(());
        };
        // Boxed: an idle session's future holds no room for a wait on the
        // pool (one allocation a transaction).
        match Box::pin(p.pools.acquire(&self.database, &p.wanted)).await {
            Ok((server, lease, _)) => {
                if let Some(key) = server.key {
                    let source = self.source.clone();
                    self.shared.cancels.insert(self.cancel_key, (key, source));
                }
                p.lease = Some(lease);
                p.unnamed_missing = p.unnamed_parse.is_some();
                io.attach(server);
                Ok(())
            }
            Err(e @ PoolError::Timeout(_)) => Err(Stop::Pool(e.to_string())),
            Err(e @ PoolError::Connect(_)) => Err(Stop::Unreachable(e.to_string())),
            Err(e) => Err(Stop::Upstream(e.to_string())),
        }
    }

    /// Gives the connection back when nothing needs it: the pipeline is
    /// idle outside a transaction block and nothing is on its way.
    pub(super) fn detach_if_done(&mut self, io: &mut Io) {
        let done = self.done(io);
        let Some(p) = &mut self.pooled else {
            return;
        };
        if p.pinned || !done {
            return;
        }
        if let (Some(mut server), Some(lease)) = (io.detach(), p.lease.take()) {
            if std::mem::take(&mut p.connection_deallocated) {
                server.statements.clear();
            }
            self.shared.cancels.remove(&self.cancel_key);
            p.pools.release(&self.database, server, lease);
            io.shrink();
        }
    }

    /// Whether the attached connection is not needed now: the pipeline is
    /// idle outside a transaction block and nothing is on its way.
    fn done(&self, io: &Io) -> bool {
        io.attached()
            && self.pipe.idle()
            && self.pipe.status() == status::IDLE
            && !self.pipe.unsynced()
            && io.upstream_quiet()
    }

    /// A statement that may change settings was sent or bound: they are
    /// read back before the connection goes.
    pub(super) fn settings_touched(&mut self) {
        if let Some(p) = &mut self.pooled {
            p.unsettled = true;
        }
    }

    /// Whether the session must read its settings back now: it may have
    /// changed some, and its connection is about to go.
    pub(super) fn settings_unsettled(&self, io: &Io) -> bool {
        self.pooled
            .as_ref()
            .is_some_and(|p| p.unsettled && !p.pinned)
            && self.done(io)
    }

    /// Reads the session's settings back from its connection (after
    /// putting its startup values back where a `RESET` undid them), so
    /// that the next connection it takes is given them. What cannot be
    /// read, a setting that acts on an idle connection, or a change of how
    /// statements read while the session holds prepared ones keeps the
    /// session on its connection instead.
    pub(super) async fn settle_settings(&mut self, io: &mut Io) -> Result<(), Stop> {
        self.reapply_settings(io).await?;
        self.shared.metrics.pool.settings_reads.inc();
        let answer = self.own_query(SETTINGS_QUERY, io).await?;
        let read = match answer {
            Answer {
                failed: false,
                status: status::IDLE,
                value,
            } => read_settings(value.as_deref()),
            _ => None,
        };
        let Some(p) = &mut self.pooled else {
            return Ok(());
        };
        p.unsettled = false;
        // A prepared statement keeps the reading of the settings it was
        // made under (literals, names); prepared again elsewhere it would
        // take the new ones, under a name that says the old.
        let moved = read
            .as_ref()
            .is_some_and(|now| !same_reading(&p.wanted, now));
        match read {
            Some(_) if moved && !p.statements.is_empty() => {
                self.pin("prepared statements made under other settings");
            }
            Some(now)
                if now
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(IDLE_SESSION_TIMEOUT) && v != "0") =>
            {
                self.pin("idle_session_timeout is set");
            }
            Some(now) => {
                if p.startup.is_none() {
                    p.startup = Some(p.wanted.clone());
                }
                if let Some(server) = io.server_mut() {
                    server.settings_read(now.clone());
                }
                p.wanted = now;
            }
            None => self.pin("its settings could not be read back"),
        }
        Ok(())
    }

    /// The session keeps its connection from now on.
    pub(super) fn pin(&mut self, why: &str) {
        if let Some(p) = &mut self.pooled {
            if !p.pinned {
                p.pinned = true;
                self.shared
                    .metrics
                    .pool
                    .pinned
                    .with_label_values(&[why])
                    .inc();
                info!(user = %self.user, "session pinned to its upstream connection: {why}");
            }
        }
    }

    /// A `RESET` or `DISCARD` was sent.
    pub(super) fn settings_reset(&mut self) {
        if let Some(p) = &mut self.pooled {
            p.reapply = true;
        }
    }

    /// Puts the session's startup settings back after a `RESET`, as an own
    /// query in the same transaction (so that a rollback undoes both, as
    /// it would undo the `RESET` alone natively): the ones whose value no
    /// longer comes from the session, that is, the ones the `RESET` took
    /// back to the connection's startup values.
    pub(super) async fn reapply_settings(&mut self, io: &mut Io) -> Result<(), Stop> {
        let Some(p) = &mut self.pooled else {
            return Ok(());
        };
        if !std::mem::take(&mut p.reapply) {
            return Ok(());
        }
        let Some(text) = startup_again(p.startup.as_ref().unwrap_or(&p.wanted)) else {
            return Ok(());
        };
        // In a failed transaction it fails, and the RESET is undone anyway.
        self.own_query(&text, io).await?;
        Ok(())
    }

    /// An unnamed Parse sent (`None`: refused, so no statement exists).
    pub(super) fn unnamed_parsed(&mut self, sent: Option<Bytes>) {
        if let Some(p) = &mut self.pooled {
            p.unnamed_parse = sent;
            p.unnamed_missing = false;
            p.statements.remove("");
        }
    }

    /// A Query ran: PostgreSQL dropped the unnamed statement.
    pub(super) fn unnamed_dropped(&mut self) {
        if let Some(p) = &mut self.pooled {
            p.unnamed_parse = None;
            p.unnamed_missing = false;
            p.statements.remove("");
        }
    }

    /// An unnamed Parse of a statement the session parsed before: its
    /// shared statement `named` stands for the client's unnamed one from
    /// now on (Bind and Describe name it), prepared on the attached
    /// connection unless it has it. So PostgreSQL plans it once per
    /// connection, not at every Parse.
    pub(super) fn pooled_unnamed(&mut self, named: Named, io: &mut Io) -> Bytes {
        debug!(user = %self.user, statement = %named.shared, "unnamed statement shared");
        self.unnamed = None;
        if let Some(p) = &mut self.pooled {
            p.unnamed_parse = None;
            p.unnamed_missing = false;
            p.statements.insert(String::new(), named.clone());
        }
        self.ensure_prepared(&named, true, io)
    }

    /// Before a Bind or Describe of the unnamed statement on a connection
    /// that lacks it: its Parse again, whose ParseComplete the client does
    /// not see. When the session has no unnamed statement, the
    /// connection's (another session's, with that user's filters) is
    /// closed first, so that PostgreSQL answers as natively: there is none.
    pub(super) fn restore_unnamed(&mut self, io: &mut Io) {
        let Some(p) = &mut self.pooled else {
            return;
        };
        if p.unnamed_parse.is_none() {
            io.send(&close_message(b'S', ""));
            self.pipe.expect(backend::CLOSE_COMPLETE, Action::Drop);
            return;
        }
        if !std::mem::take(&mut p.unnamed_missing) {
            return;
        }
        if let Some(parse) = p.unnamed_parse.clone() {
            io.send(&parse);
            self.pipe.expect(backend::PARSE_COMPLETE, Action::Drop);
        }
    }

    /// The Parse of a client's named statement in transaction pooling:
    /// `text` (the rewrite, or a refusal's marker when `ok` is false) is
    /// prepared under its shared name unless the connection has it already
    /// (then a Close of nothing stands in, answered as a ParseComplete).
    pub(super) fn pooled_parse(
        &mut self,
        name: &str,
        ok: bool,
        text: &str,
        types: &[u8],
        io: &mut Io,
    ) -> Bytes {
        let duplicate = self
            .pooled
            .as_ref()
            .is_some_and(|p| p.statements.contains_key(name));
        if !ok || duplicate {
            let marker = if ok {
                let refusal = Refusal::DuplicateStatement(name.to_string());
                // The audit record keeps the client's text, not the rewrite.
                let sql = self.decided.as_ref().map(|d| d.sql.to_string());
                self.note(sql.as_deref().unwrap_or_default(), None, Some(&refusal));
                self.refuse(&refusal)
            } else {
                text.to_string()
            };
            self.pipe.expect(backend::PARSE_COMPLETE, Action::Pass);
            return parse_message(NO_STATEMENT, &marker, types);
        }
        let Some(p) = &mut self.pooled else {
            return parse_message(name, text, types);
        };
        let shared = shared_name(text, types, &p.settings_in_force());
        let named = Named {
            parse: parse_message(&shared, text, types),
            shared,
        };
        p.statements.insert(name.to_string(), named.clone());
        self.ensure_prepared(&named, true, io)
    }

    /// What makes `named` exist on the attached connection: nothing when
    /// it does; else its Parse, whose ParseComplete the client sees when
    /// `answers` (its own Parse) and not otherwise (a Bind or Describe
    /// that needs it). With `answers` and the statement there, a Close of
    /// nothing stands in for the Parse.
    pub(super) fn ensure_prepared(&mut self, named: &Named, answers: bool, io: &mut Io) -> Bytes {
        let cycle = self.pipe.cycle();
        let dropped = self
            .pooled
            .as_mut()
            .is_some_and(|p| std::mem::take(&mut p.connection_deallocated));
        let Some(server) = io.server_mut() else {
            return Bytes::new();
        };
        if dropped {
            server.statements.clear();
        }
        if server
            .statements
            .get(&named.shared)
            .is_some_and(|a| a.usable(cycle))
        {
            if answers {
                self.pipe
                    .expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
                return close_message(b'S', NO_STATEMENT);
            }
            return Bytes::new();
        }
        let auto = Auto::new(named.shared.clone(), cycle);
        server.statements.insert(named.shared.clone(), auto.clone());
        let action = if answers {
            Action::Created(auto)
        } else {
            Action::Restored(auto)
        };
        self.pipe.expect(backend::PARSE_COMPLETE, action);
        named.parse.clone()
    }

    /// A Bind or Describe of a client's named statement, made to name its
    /// shared statement (prepared first on a connection that lacks it);
    /// `None` when the message names no statement of the client's (then
    /// PostgreSQL answers as it would natively: it does not exist).
    pub(super) fn pooled_target(
        &mut self,
        tag: u8,
        body: &[u8],
        io: &mut Io,
    ) -> Result<Option<BytesMut>, WireError> {
        let name = if tag == frontend::BIND {
            messages::bind(body)?.1
        } else {
            match messages::target(body)? {
                (b'S', name) => name,
                _ => return Ok(None),
            }
        };
        let Some(named) = self
            .pooled
            .as_ref()
            .and_then(|p| p.statements.get(name))
            .cloned()
        else {
            return Ok(None);
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.ensure_prepared(&named, false, io));
        if tag == frontend::BIND {
            let (portal, _, rest) = messages::bind(body)?;
            wire::put_message(&mut out, frontend::BIND, |b| {
                wire::put_cstr(b, portal);
                wire::put_cstr(b, &named.shared);
                b.extend_from_slice(rest);
            });
        } else {
            wire::put_message(&mut out, frontend::DESCRIBE, |b| {
                b.extend_from_slice(b"S");
                wire::put_cstr(b, &named.shared);
            });
        }
        Ok(Some(out))
    }

    /// A Close of a client's named statement: forgotten by the session (its
    /// shared statement stays on the connection for others); a Close of
    /// nothing answers the client. `None` for any other Close.
    pub(super) fn pooled_close(&mut self, body: &[u8]) -> Result<Option<Bytes>, WireError> {
        let Some(p) = &mut self.pooled else {
            return Ok(None);
        };
        match messages::target(body)? {
            (b'S', name) if !name.is_empty() && p.statements.remove(name).is_some() => {
                Ok(Some(close_message(b'S', NO_STATEMENT)))
            }
            (b'S', "") => {
                // Closed upstream too (a Close of the connection's own
                // unnamed statement is harmless), and not sent again.
                p.statements.remove("");
                p.unnamed_parse = None;
                p.unnamed_missing = false;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL` ran: the session's statements are
    /// gone, and what the connection had prepared.
    pub(super) fn pooled_deallocated(&mut self) {
        if let Some(p) = &mut self.pooled {
            // The unnamed statement is not a prepared statement's to drop.
            p.statements.retain(|name, _| name.is_empty());
            p.connection_deallocated = true;
        }
    }

    /// A prepared statement went stale upstream (a table changed under
    /// it): automatic statements take new names everywhere, since the old
    /// ones may be stale on any connection.
    pub(super) fn stale_seen(&mut self) {
        if let Some(p) = &self.pooled {
            p.pools.next_epoch();
        }
    }
}

/// The statement that sets each of `startup` again where its value does
/// not come from the session (a `RESET` took it back to the connection's
/// startup value or the server's default).
fn startup_again(startup: &[(String, String)]) -> Option<String> {
    if startup.is_empty() {
        return None;
    }
    let rows: Vec<String> = startup
        .iter()
        .map(|(n, v)| format!("({}, {})", quote_literal(n), quote_literal(v)))
        .collect();
    Some(format!(
        "SELECT pg_catalog.set_config(p.name, s.value, false) \
         FROM (VALUES {}) AS s(name, value) \
         JOIN pg_catalog.pg_settings p ON pg_catalog.lower(p.name) = pg_catalog.lower(s.name) \
         WHERE p.source <> 'session'",
        rows.join(", ")
    ))
}

/// The settings PostgreSQL reads a statement under when it prepares it:
/// names resolve along `search_path`; date and time literals read by
/// `DateStyle`, `IntervalStyle` and `TimeZone`, money by `lc_monetary`.
/// A prepared statement keeps that reading.
const READING: &[&str] = &[
    "datestyle",
    "intervalstyle",
    "lc_monetary",
    "search_path",
    "timezone",
];

/// Whether two lists of settings read statements alike (see [`READING`]):
/// the same values of those settings, names in any case, values in any
/// case and spacing (a startup's `iso, mdy` is the catalog's `ISO, MDY`).
fn same_reading(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let reading = |x: &[(String, String)]| -> Vec<(String, String)> {
        x.iter()
            .filter(|(n, _)| READING.iter().any(|r| n.eq_ignore_ascii_case(r)))
            .cloned()
            .collect()
    };
    same_settings(&reading(a), &reading(b))
}

/// Whether two lists of settings say the same, as PostgreSQL reads them:
/// names in any case, values in any case and spacing.
fn same_settings(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let squeeze = |v: &str| -> String {
        v.chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let covers = |x: &[(String, String)], y: &[(String, String)]| {
        x.iter().all(|(n, v)| {
            y.iter()
                .any(|(m, w)| n.eq_ignore_ascii_case(m) && squeeze(v) == squeeze(w))
        })
    };
    covers(a, b) && covers(b, a)
}

/// The settings of [`SETTINGS_QUERY`]'s answer (a JSON object of names
/// and values; NULL for none); `None` when it is not one.
fn read_settings(answer: Option<&str>) -> Option<Vec<(String, String)>> {
    let Some(text) = answer else {
        return Some(Vec::new());
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    map.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(v) => Some((name, v)),
            _ => None,
        })
        .collect()
}

impl Pooled {
    /// The settings a statement prepared now is read under, for its
    /// shared name: the session's, as last read back. While a statement
    /// may have changed them since, they are not known, and the name is
    /// the session's alone (no other session runs a statement prepared
    /// under settings that are not its own).
    fn settings_in_force(&self) -> Vec<(String, String)> {
        let mut settings = self.wanted.clone();
        if self.unsettled {
            settings.push(("session".into(), self.unique.to_string()));
        }
        settings
    }

    /// The shared name of an unnamed statement parsed again (see
    /// [`shared_name`]), in the pools' current epoch (a stale statement
    /// takes a new name).
    pub fn unnamed_name(&self, text: &str, types: &[u8]) -> String {
        let mut settings = self.settings_in_force();
        settings.push(("epoch".into(), self.pools.epoch().to_string()));
        shared_name(text, types, &settings)
    }

    /// The shared name of an automatic statement (see [`shared_name`]),
    /// in the pools' current epoch.
    pub fn auto_name(&self, template: &str, types: &[&str]) -> String {
        let mut settings = self.settings_in_force();
        settings.push(("types".into(), types.join(",")));
        settings.push(("epoch".into(), self.pools.epoch().to_string()));
        shared_name(template, &[], &settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_back_are_the_answers_names_and_values() {
        let answer = r#"{"DateStyle" : "German, DMY", "statement_timeout" : "5min"}"#;
        assert_eq!(
            read_settings(Some(answer)),
            Some(vec![
                ("DateStyle".to_string(), "German, DMY".to_string()),
                ("statement_timeout".to_string(), "5min".to_string()),
            ])
        );
        // NULL: no setting of the session's.
        assert_eq!(read_settings(None), Some(Vec::new()));
        // Anything else is not an answer to trust.
        assert_eq!(read_settings(Some("[1]")), None);
        assert_eq!(read_settings(Some(r#"{"a": 1}"#)), None);
        assert_eq!(read_settings(Some("not json")), None);
    }

    #[test]
    fn only_the_settings_statements_are_read_under_decide_a_move() {
        let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let startup = pairs(&[("datestyle", "iso, mdy"), ("application_name", "a")]);
        // The catalog's spelling of the same values, and a setting that
        // only formats output.
        let read = pairs(&[
            ("DateStyle", "ISO, MDY"),
            ("application_name", "b"),
            ("extra_float_digits", "2"),
        ]);
        assert!(same_reading(&startup, &read));
        let dmy = pairs(&[("DateStyle", "SQL, DMY"), ("application_name", "a")]);
        assert!(!same_reading(&startup, &dmy));
        let path = pairs(&[("datestyle", "iso, mdy"), ("search_path", "hr")]);
        assert!(!same_reading(&startup, &path));
    }

    #[test]
    fn startup_values_are_set_again_where_the_session_no_longer_sets_them() {
        assert_eq!(startup_again(&[]), None);
        let startup = vec![
            ("datestyle".to_string(), "SQL, DMY".to_string()),
            ("application_name".to_string(), "it's".to_string()),
        ];
        assert_eq!(
            startup_again(&startup).unwrap(),
            "SELECT pg_catalog.set_config(p.name, s.value, false) \
             FROM (VALUES ('datestyle', 'SQL, DMY'), ('application_name', 'it''s')) AS s(name, value) \
             JOIN pg_catalog.pg_settings p ON pg_catalog.lower(p.name) = pg_catalog.lower(s.name) \
             WHERE p.source <> 'session'"
        );
    }
}
