//! Automatic prepared statements as a session uses them: which statements
//! it has seen and prepared, what goes upstream in their place, and when
//! they are forgotten (see [`crate::frontend::autoprep`] for the planner).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tracing::debug;

use super::client::Session;
use super::outgoing::{auto_name, close_message, execute, parse_message, query_message};
use super::pipeline::Action;
use super::pooling::Named;
use super::relay::Io;
use crate::frontend::autoprep::{self, Auto};
use crate::frontend::messages;
use crate::frontend::tags::{backend, frontend};
use crate::rewrite::{self, Context};
use crate::wire::{self, WireError};

/// Statement shapes and unnamed statement texts remembered per session for
/// automatic preparing.
const SEEN_ENTRIES: usize = 256;
/// Longer statements are not prepared automatically: for them planning is
/// a small part of the work, and remembering them costs memory.
const MAX_AUTO_LEN: usize = 8192;
/// Automatic statements a session keeps upstream at once, at most.
const MAX_AUTOS: usize = 512;
/// Failed attempts after which a statement is not prepared again.
const MAX_FAILURES: u8 = 3;
/// The kind byte of Describe and Close naming a prepared statement.
const STATEMENT: u8 = b'S';

/// A statement seen, for automatic preparing.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub runs: usize,
    pub failures: u8,
    /// Never prepared automatically.
    pub never: bool,
    /// Prepared, with its parameter types (simple query).
    pub auto: Option<(Arc<Auto>, Vec<&'static str>)>,
    /// The statement prepared (simple query, transaction pooling: made to
    /// exist on each connection that serves the session).
    pub template: Option<Arc<str>>,
    /// An unnamed statement's shared statement (extended query,
    /// transaction pooling).
    pub shared: Option<Named>,
}

impl Seen {
    /// The prepared statement if it may be used in `cycle`. A statement
    /// whose preparing failed is forgotten (and, after a few failures, not
    /// tried again).
    pub fn usable(&mut self, cycle: u64) -> Option<(&Arc<Auto>, &[&'static str])> {
        if self.auto.as_ref().is_some_and(|(a, _)| a.failed()) {
            self.auto = None;
            self.runs = 0;
            self.failures += 1;
            self.never = self.failures >= MAX_FAILURES;
        }
        match &self.auto {
            Some((a, types)) if a.usable(cycle) => Some((a, types)),
            _ => None,
        }
    }

    /// The prepared statement, wherever it exists (transaction pooling:
    /// each connection has its own), unless its preparing failed (then it
    /// is forgotten, and after a few failures not tried again).
    pub fn usable_anywhere(&mut self) -> Option<(&Arc<Auto>, &[&'static str])> {
        self.usable(u64::MAX);
        self.auto.as_ref().map(|(a, t)| (a, t.as_slice()))
    }

    /// Counts a run; whether this one should prepare the statement.
    pub fn run(&mut self, threshold: usize) -> bool {
        self.runs += 1;
        !self.never && self.auto.is_none() && threshold > 0 && self.runs >= threshold
    }
}

impl Session<'_> {
    /// A simple-query statement run as an automatic prepared statement
    /// (prepared first if this run reaches the threshold); `None` to send
    /// it the ordinary way.
    pub(super) async fn auto_query(&mut self, sql: &Arc<str>, io: &mut Io) -> Option<Bytes> {
        // While the audit log cannot take records, the ordinary way
        // refuses every statement.
        if self.audit_refusal().is_some() {
            return None;
        }
        let threshold = self.prepare_threshold;
        if threshold == 0 || self.pipe.mixed() || sql.len() > MAX_AUTO_LEN {
            return None;
        }
        // A statement that may change a setting (the search path among
        // them) runs the ordinary way, where its change is followed.
        if rewrite::may_call_set_config(sql) {
            return None;
        }
        // In transaction pooling, one that may call a listed function,
        // which may change a setting unseen, too: there its settings are
        // read back after it.
        if self.pooled.is_some() && rewrite::may_call_listed(sql, &self.access.functions) {
            return None;
        }
        let shape = autoprep::shape(sql)?;
        let cycle = self.pipe.cycle();
        match self.shapes.get_mut(&shape.key) {
            Some(seen) if self.pooled.is_some() => {
                if let Some((auto, types)) = seen.usable_anywhere() {
                    let (name, types) = (auto.name.clone(), types.to_vec());
                    let template = seen.template.clone()?;
                    return self.pooled_auto(sql, &shape, name, types, &template, io);
                }
            }
            Some(seen) => {
                if let Some((auto, types)) = seen.usable(cycle) {
                    if !autoprep::values_fit(&shape.values, types) {
                        return None;
                    }
                    let run = execute(&auto.name, &shape.values);
                    if self.trail.is_some() {
                        self.note(sql, Some(&run), None);
                    }
                    self.statements += 1;
                    self.counters.auto_hit.inc();
                    debug!(user = %self.user, sql = %run, "forward");
                    let mut out = self.close_retired();
                    self.pipe
                        .expect(backend::ERROR_RESPONSE, Action::Retry(sql.clone()));
                    out.put_slice(&query_message(&run));
                    return Some(out.freeze());
                }
            }
            None => {
                if self.shapes.len() >= SEEN_ENTRIES {
                    self.shapes.retain(|_, s| s.auto.is_some());
                    if self.shapes.len() >= SEEN_ENTRIES {
                        return None;
                    }
                }
                self.shapes.insert(shape.key.clone(), Seen::default());
            }
        }
        let seen = self.shapes.get_mut(&shape.key)?;
        if !seen.run(threshold) || self.live >= MAX_AUTOS {
            return None;
        }
        let types = autoprep::param_types(&shape);
        if !autoprep::values_fit(&shape.values, &types) {
            return None;
        }
        debug!(user = %self.user, "making an automatic statement of a shape");
        let forward = self.rewrite(sql, &[]).await.ok();
        let declared = autoprep::param_oids(&types);
        let cx = Context {
            access: &self.access,
            catalog: &*self.catalog,
            search_path: &self.path,
            params: &declared,
            fence: self.shared.fence,
            listing: self.shared.listing,
        };
        let prepared = forward.and_then(|f| autoprep::template(sql, &shape.values, &f.sql, &cx));
        let seen = self.shapes.get_mut(&shape.key)?;
        let Some(prepared) = prepared else {
            seen.never = true;
            return None;
        };
        seen.template = Some(Arc::from(prepared.as_str()));
        if let Some(p) = &self.pooled {
            let name = p.auto_name(&prepared, &types);
            return self.pooled_auto(sql, &shape, name, types, &prepared, io);
        }
        self.autos += 1;
        self.live += 1;
        let auto = Auto::new(auto_name(self.nonce, self.autos), cycle);
        seen.auto = Some((auto.clone(), types.clone()));
        let text = prepare_text(&auto.name, &types, &prepared, &shape.values);
        let mut out = self.close_retired();
        self.pipe
            .expect(backend::COMMAND_COMPLETE, Action::Swallow(auto));
        if self.trail.is_some() {
            self.note(sql, Some(&text), None);
        }
        self.statements += 1;
        self.counters.auto_prepare.inc();
        debug!(user = %self.user, sql = %text, "forward");
        out.put_slice(&query_message(&text));
        Some(out.freeze())
    }

    /// What goes upstream for a rewritten unnamed Parse that was seen
    /// before: a Close standing in for it, or its preparing under a name of
    /// rowgate's. `None` to send it as it is.
    pub(super) fn auto_parse(
        &mut self,
        sql: &str,
        types: &[u8],
        cycle: u64,
        io: &mut Io,
    ) -> Option<Bytes> {
        if sql.len() > MAX_AUTO_LEN {
            return None;
        }
        if !self.texts.contains_key(sql) && self.texts.len() >= SEEN_ENTRIES {
            self.texts.retain(|_, by_types| {
                by_types
                    .values()
                    .any(|s| s.auto.is_some() || s.shared.is_some())
            });
            if self.texts.len() >= SEEN_ENTRIES {
                return None;
            }
        }
        let by_types = match self.texts.get_mut(sql) {
            Some(t) => t,
            None => self.texts.entry(sql.to_string()).or_default(),
        };
        let seen = match by_types.get_mut(types) {
            Some(s) => s,
            None => by_types.entry(types.to_vec()).or_default(),
        };
        if let Some(p) = &mut self.pooled {
            if seen.shared.is_none() {
                if !seen.run(self.prepare_threshold) {
                    return None;
                }
                let shared = p.unnamed_name(sql, types);
                seen.shared = Some(Named {
                    parse: parse_message(&shared, sql, types),
                    shared,
                });
            }
            let named = seen.shared.clone()?;
            return Some(self.pooled_unnamed(named, io));
        }
        if let Some((auto, _)) = seen.usable(cycle) {
            self.unnamed = Some(auto.clone());
            let mut out = self.close_retired();
            self.pipe
                .expect(backend::CLOSE_COMPLETE, Action::AsParseComplete);
            out.put_slice(&close_message(STATEMENT, ""));
            return Some(out.freeze());
        }
        if !seen.run(self.prepare_threshold) || self.live >= MAX_AUTOS {
            return None;
        }
        self.autos += 1;
        self.live += 1;
        let auto = Auto::new(auto_name(self.nonce, self.autos), cycle);
        seen.auto = Some((auto.clone(), Vec::new()));
        self.unnamed = Some(auto.clone());
        let mut out = self.close_retired();
        self.pipe
            .expect(backend::PARSE_COMPLETE, Action::Created(auto.clone()));
        out.put_slice(&parse_message(&auto.name, sql, types));
        Some(out.freeze())
    }

    /// A Bind or Describe naming the unnamed statement, made to name the
    /// upstream statement standing for it; `None` to send it unchanged.
    pub(super) fn name_unnamed(&self, tag: u8, body: &[u8]) -> Result<Option<Bytes>, WireError> {
        let Some(auto) = &self.unnamed else {
            return Ok(None);
        };
        let mut out = BytesMut::with_capacity(body.len() + auto.name.len() + 8);
        if tag == frontend::BIND {
            let (portal, statement, rest) = messages::bind(body)?;
            if !statement.is_empty() {
                return Ok(None);
            }
            wire::put_message(&mut out, frontend::BIND, |b| {
                wire::put_cstr(b, portal);
                wire::put_cstr(b, &auto.name);
                b.put_slice(rest);
            });
        } else {
            if messages::target(body)? != (STATEMENT, "") {
                return Ok(None);
            }
            wire::put_message(&mut out, frontend::DESCRIBE, |b| {
                b.put_u8(STATEMENT);
                wire::put_cstr(b, &auto.name);
            });
        }
        Ok(Some(out.freeze()))
    }

    /// Forgets every automatic statement; those that exist upstream are
    /// closed with the next message that uses one (`close`), or were
    /// dropped by the client (`DEALLOCATE ALL`).
    pub(super) fn forget_autos(&mut self, close: bool) {
        let autos = self.shapes.drain().filter_map(|(_, s)| s.auto).chain(
            self.texts
                .drain()
                .flat_map(|(_, t)| t.into_values())
                .filter_map(|s| s.auto),
        );
        let names: Vec<String> = autos
            .filter(|(a, _)| a.ready())
            .map(|(a, _)| a.name.clone())
            .collect();
        // Pooled sessions' statements stay on their connections, for every
        // session sending the same statement.
        if close && self.pooled.is_none() {
            self.retired.extend(names);
        }
        self.live = 0;
        self.unnamed = None;
        self.unnamed_log.clear();
    }

    /// Close messages for retired automatic statements, whose
    /// CloseComplete the relay drops; to be sent before what is expected
    /// next, so called before its expectations are pushed.
    pub(super) fn close_retired(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        for name in self.retired.drain(..) {
            self.pipe.expect(backend::CLOSE_COMPLETE, Action::Drop);
            out.put_slice(&close_message(STATEMENT, &name));
        }
        out
    }

    /// A simple-query statement run as the automatic statement `name` in
    /// transaction pooling: `EXECUTE` where the attached connection has it,
    /// `PREPARE` and `EXECUTE` where it does not; `None` (the ordinary way)
    /// while its preparing on this connection is still under way.
    fn pooled_auto(
        &mut self,
        sql: &Arc<str>,
        shape: &autoprep::Shape,
        name: String,
        types: Vec<&'static str>,
        template: &str,
        io: &mut Io,
    ) -> Option<Bytes> {
        let values = &shape.values;
        if !autoprep::values_fit(values, &types) {
            return None;
        }
        let cycle = self.pipe.cycle();
        let server = io.server_mut()?;
        let text = match server.statements.get(&name) {
            Some(a) if a.usable(cycle) => {
                // Prepared by another session: this one now knows the
                // statement, and later runs skip straight to it.
                if let Some(seen) = self.shapes.get_mut(&shape.key) {
                    if seen.auto.is_none() {
                        seen.auto = Some((a.clone(), types.clone()));
                    }
                }
                self.counters.auto_hit.inc();
                self.pipe
                    .expect(backend::ERROR_RESPONSE, Action::Retry(sql.clone()));
                execute(&name, values)
            }
            Some(a) if !a.failed() => return None,
            _ => {
                let auto = Auto::new(name.clone(), cycle);
                server.statements.insert(name.clone(), auto.clone());
                if let Some(seen) = self.shapes.get_mut(&shape.key) {
                    seen.auto = Some((auto.clone(), types.clone()));
                }
                self.counters.auto_prepare.inc();
                self.pipe
                    .expect(backend::COMMAND_COMPLETE, Action::Swallow(auto));
                prepare_text(&name, &types, template, values)
            }
        };
        if self.trail.is_some() {
            self.note(sql, Some(&text), None);
        }
        self.statements += 1;
        debug!(user = %self.user, sql = %text, "forward");
        Some(query_message(&text))
    }
}

/// `PREPARE name (types) AS template; EXECUTE name(values)`.
fn prepare_text(name: &str, types: &[&str], template: &str, values: &[String]) -> String {
    let declared = if types.is_empty() {
        String::new()
    } else {
        format!(" ({})", types.join(", "))
    };
    format!(
        "PREPARE {name}{declared} AS {template}; {}",
        execute(name, values)
    )
}
