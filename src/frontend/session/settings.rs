//! Session state that follows the client's statements: settings changed
//! (which retire automatic statements) and the search path (which decides
//! where names resolve, read back from PostgreSQL when only it knows).

use super::client::Session;
use super::relay::{Io, Stop};
use crate::frontend::own::Answer;
use crate::frontend::tags::status;
use crate::rewrite;

/// rowgate's own query for the session's search path.
const PATH_QUERY: &str = "SELECT pg_catalog.current_setting('search_path')";

impl Session<'_> {
    /// Keeps automatic statements consistent with the session's settings
    /// (see [`autoprep::changes_settings`]): forgets them when a statement
    /// changes a setting, and when a transaction that changed one ends.
    pub(super) fn settings_event(&mut self, changes_settings: bool, ends_transaction: bool) {
        if changes_settings {
            self.settings_touched();
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
    pub(super) fn path_event(
        &mut self,
        change: Option<&rewrite::PathChange>,
        ends_transaction: bool,
    ) {
        match change {
            Some(change) => {
                self.settings_touched();
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

    pub(super) fn set_path(&mut self, entries: Vec<String>) {
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
    pub(super) async fn settle_path(&mut self, io: &mut Io) -> Result<bool, Stop> {
        let answer = self.own_query(PATH_QUERY, io).await?;
        match answer {
            Answer {
                value: Some(text),
                failed: false,
                ..
            } => match rewrite::parse_path_text(&text) {
                Some(entries) => {
                    self.set_path(entries);
                    self.settle = false;
                    Ok(true)
                }
                None => Ok(false),
            },
            // In a failed transaction nothing but its end runs; that end
            // reads the path again.
            Answer {
                status: status::FAILED,
                ..
            } => Ok(true),
            // Not readable outside a failed transaction: the session
            // cannot go on knowing where names resolve.
            _ => Ok(false),
        }
    }
}
