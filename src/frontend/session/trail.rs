//! The audit log's view of a session's statements: the decision on each,
//! prepared statements and portals followed by name to their executions,
//! and the records written as results reach the client.

use std::sync::Arc;

use super::client::Session;
use crate::audit::{Await, Decided};
use crate::frontend::messages;
use crate::frontend::tags::frontend;
use crate::rewrite::Refusal;
use crate::wire::WireError;

/// Prepared statements and portals a session follows by name for the
/// audit log, at most (beyond, their executions are recorded without
/// their text).
const AUDIT_NAMES: usize = 4096;

impl Session<'_> {
    /// The refusal every statement gets while the audit log cannot take
    /// records (`on_failure: refuse`).
    pub(super) fn audit_refusal(&self) -> Option<Refusal> {
        let audit = self.shared.audit.as_ref()?;
        (!audit.accepts()).then_some(Refusal::AuditUnavailable)
    }

    /// Takes note of the decision on a statement, for its audit record.
    pub(super) fn note(&mut self, sql: &str, forwarded: Option<&str>, refusal: Option<&Refusal>) {
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
    pub(super) fn audit_push(&mut self, waits: Await) {
        let Some(trail) = &mut self.trail else {
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
        trail.push(self.pipe.cycle(), waits, decided);
    }

    /// A Parse sent: the statement is remembered by name for its
    /// executions, and its result awaited (only an error is recorded).
    pub(super) fn audit_parsed(&mut self, body: &[u8]) -> Result<(), WireError> {
        if self.trail.is_none() {
            return Ok(());
        }
        let name = messages::parse(body)?.name.to_string();
        let Some(decided) = self.decided.take() else {
            return Ok(());
        };
        if self.audit_statements.len() < AUDIT_NAMES || self.audit_statements.contains_key(&name) {
            self.audit_statements.insert(name, decided.clone());
        }
        let cycle = self.pipe.cycle();
        if let Some(trail) = &mut self.trail {
            trail.push(cycle, Await::Parse, decided);
        }
        Ok(())
    }

    /// Follows Bind, Execute and Close for the audit records of executions.
    pub(super) fn audit_message(&mut self, tag: u8, body: &[u8]) -> Result<(), WireError> {
        match tag {
            frontend::BIND => {
                let (portal, statement, _) = messages::bind(body)?;
                if let Some(d) = self.audit_statements.get(statement).cloned() {
                    if self.audit_portals.len() < AUDIT_NAMES || portal.is_empty() {
                        self.audit_portals.insert(portal.to_string(), d);
                    }
                }
            }
            frontend::EXECUTE => {
                let portal = messages::execute_portal(body)?;
                let decided = self.audit_portals.get(portal).cloned().unwrap_or_else(|| {
                    Arc::new(Decided {
                        sql: Arc::from("(a portal rowgate did not see bound)"),
                        forwarded: None,
                        refusal: None,
                        viewed_as: None,
                    })
                });
                let cycle = self.pipe.cycle();
                if let Some(trail) = &mut self.trail {
                    trail.push(cycle, Await::Execute, decided);
                }
            }
            frontend::CLOSE => {
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

    /// Follows a message the client is sent; writes the audit records of
    /// the statements it finished.
    pub(super) fn audit(&mut self, cycle: u64, tag: u8, body: &[u8]) {
        let (Some(trail), Some((audit, info))) = (&mut self.trail, &self.audit_sink) else {
            return;
        };
        for f in trail.on_message(cycle, tag, body) {
            if audit.wants(f.decision) {
                audit.statement(info, &f);
            }
        }
    }
}
