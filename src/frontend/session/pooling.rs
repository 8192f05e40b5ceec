//! Transaction pooling as a session sees it: it takes a pooled connection
//! when it has something to send, gives it back when nothing is under way
//! outside a transaction block, and stays on its connection for good once
//! it holds state that cannot move to another (a named prepared statement,
//! a changed setting, a cursor WITH HOLD, a session-level lock).

use std::sync::Arc;

use bytes::Bytes;
use tracing::info;

use super::client::Session;
use super::pipeline::Action;
use super::relay::{Io, Stop};
use crate::frontend::tags::{backend, status};
use crate::upstream::pool::{settings_change, Lease, PoolError, Pools};

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
}

impl Session<'_> {
    /// Takes a pooled connection when the session has none.
    pub(super) async fn attach(&mut self, io: &mut Io) -> Result<(), Stop> {
        let Some(p) = &mut self.pooled else {
            return Ok(());
        };
        if io.attached() {
            return Ok(());
        }
        match p.pools.acquire(&self.database, &p.wanted).await {
            Ok((server, lease, _)) => {
                if let Some(key) = server.key {
                    self.shared.cancels.insert(self.cancel_key, key);
                }
                p.lease = Some(lease);
                p.unnamed_missing = p.unnamed_parse.is_some();
                io.attach(server);
                Ok(())
            }
            Err(e @ PoolError::Timeout(_)) => Err(Stop::Pool(e.to_string())),
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
        if let (Some(server), Some(lease)) = (io.detach(), p.lease.take()) {
            self.shared.cancels.remove(&self.cancel_key);
            p.pools.release(&self.database, server, lease);
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
        }
    }

    /// A Query ran: PostgreSQL dropped the unnamed statement.
    pub(super) fn unnamed_dropped(&mut self) {
        if let Some(p) = &mut self.pooled {
            p.unnamed_parse = None;
            p.unnamed_missing = false;
        }
    }

    /// Before a Bind or Describe of the unnamed statement on a connection
    /// that lacks it: its Parse again, whose ParseComplete the client does
    /// not see.
    pub(super) fn restore_unnamed(&mut self, io: &mut Io) {
        let Some(p) = &mut self.pooled else {
            return;
        };
        if !std::mem::take(&mut p.unnamed_missing) {
            return;
        }
        if let Some(parse) = p.unnamed_parse.clone() {
            io.send(&parse);
            self.pipe.expect(backend::PARSE_COMPLETE, Action::Drop);
        }
    }
}
