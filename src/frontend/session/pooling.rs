//! Transaction pooling as a session sees it: it takes a pooled connection
//! when it has something to send, gives it back when nothing is under way
//! outside a transaction block, and stays on its connection for good once
//! it holds state that cannot move to another (a named prepared statement,
//! a changed setting, a cursor WITH HOLD, a session-level lock).

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
use crate::frontend::tags::frontend;
use crate::frontend::tags::{backend, status};
use crate::rewrite::Refusal;
use crate::upstream::pool::{settings_change, Lease, PoolError, Pools};
use crate::wire::{self, WireError};

/// The prefix of statements' shared names upstream (which members'
/// catalog reads do not show).
const SHARED_PREFIX: &str = crate::rewrite::system::SHARED_STATEMENTS;

/// A pooled session's hold on the pool.
pub(super) struct Pooled {
    pub pools: Arc<Pools>,
    /// The connection attached, while one is.
    pub lease: Option<Lease>,
    /// The settings the session's connection must have (its startup's).
    pub wanted: Vec<(String, String)>,
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
        let Some(p) = &mut self.pooled else {
            return;
        };
        if p.pinned
            || !io.attached()
            || !self.pipe.idle()
            || self.pipe.status() != status::IDLE
            || self.pipe.unsynced()
            || !io.upstream_quiet()
        {
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

    /// The session keeps its connection from now on.
    pub(super) fn pin(&mut self, why: &str) {
        if let Some(p) = &mut self.pooled {
            if !p.pinned {
                p.pinned = true;
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
    /// it would undo the `RESET` alone natively).
    pub(super) async fn reapply_settings(&mut self, io: &mut Io) -> Result<(), Stop> {
        let Some(p) = &mut self.pooled else {
            return Ok(());
        };
        if !std::mem::take(&mut p.reapply) {
            return Ok(());
        }
        let Some(text) = settings_change(&[], &p.wanted) else {
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
        let shared = shared_name(text, types, &p.wanted);
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

impl Pooled {
    /// The shared name of an unnamed statement parsed again (see
    /// [`shared_name`]), in the pools' current epoch (a stale statement
    /// takes a new name).
    pub fn unnamed_name(&self, text: &str, types: &[u8]) -> String {
        let mut settings = self.wanted.clone();
        settings.push(("epoch".into(), self.pools.epoch().to_string()));
        shared_name(text, types, &settings)
    }

    /// The shared name of an automatic statement (see [`shared_name`]),
    /// in the pools' current epoch.
    pub fn auto_name(&self, template: &str, types: &[&str]) -> String {
        let mut settings = self.wanted.clone();
        settings.push(("types".into(), types.join(",")));
        settings.push(("epoch".into(), self.pools.epoch().to_string()));
        shared_name(template, &[], &settings)
    }
}
