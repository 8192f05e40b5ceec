//! Statements about the session itself: an admin's `SET` and `RESET
//! rowgate.view_as`, and the ones rowgate answers itself (`SHOW
//! rowgate.access`, `SELECT rowgate.explain('...')`).

use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use super::client::Session;
use super::outgoing::{query_message, refusal_sql};
use super::relay::{Io, Stop};
use crate::frontend::own::Answer;
use crate::frontend::tags::status;
use crate::policy::Role;
use crate::rewrite::view_as::{self, ViewAs};
use crate::rewrite::{self, Refusal};

impl Session<'_> {
    /// The query that answers `SHOW rowgate.access` or `SELECT
    /// rowgate.explain('...')` for the session's (or viewed) user; `None`
    /// for any other text.
    pub(super) async fn answer(&mut self, sql: &str) -> Option<String> {
        let text = match view_as::answered(sql)? {
            view_as::Answered::Access => {
                let lines = crate::cli::access::render(&self.policy, &self.access);
                let items: Vec<String> = lines.lines().map(view_as::escaped_literal).collect();
                return Some(format!(
                    "SELECT a.line AS \"rowgate.access\" FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) WITH ORDINALITY AS a(line, n) ORDER BY a.n",
                    items.join(", ")
                ));
            }
            view_as::Answered::Explain(inner) => match self.access.role {
                Role::Admin => inner,
                _ => match self.rewrite(&inner, &[]).await {
                    Ok(f) => f.sql,
                    Err(r) => format!("ERROR {}: {r}", r.sqlstate()),
                },
            },
        };
        Some(format!(
            "SELECT {} AS explain",
            view_as::escaped_literal(&text)
        ))
    }

    /// What a text containing `view_as` asks, if it is a view-as statement.
    pub(super) fn view_as_request(&self, sql: &[u8]) -> Option<Result<ViewAs, Refusal>> {
        view_as::view_as(std::str::from_utf8(sql).ok()?.trim_end_matches('\0'))
    }

    /// A simple Query that sets or resets `rowgate.view_as`: for an admin
    /// outside a transaction block, the session takes the viewed user's
    /// access (or its own back) and the statement goes upstream as it is
    /// (PostgreSQL keeps the placeholder setting, and answers `SET`);
    /// anything else is refused.
    pub(super) async fn view_as_query(&mut self, body: &[u8], io: &mut Io) -> Result<Bytes, Stop> {
        // A token is never written anywhere: the text stands in with its
        // hash, in the audit log and upstream alike.
        let sql = view_as::redacted(&refusal_sql(body)).into_owned();
        let request = match self.view_as_request(body) {
            Some(r) => r,
            None => return Ok(query_message(&sql)),
        };
        let setting = if sql.to_ascii_lowercase().contains("view_as_token") {
            view_as::TOKEN_SETTING
        } else {
            view_as::SETTING
        };
        let outcome = match request {
            _ if self.login.role != Role::Admin => Err(Refusal::Setting(setting.into())),
            // Starting or ending a view runs rowgate's own queries, which
            // PostgreSQL would skip after an error among extended-protocol
            // messages still waiting for their Sync.
            _ if self.pipe.unsynced() => Err(Refusal::unsupported(format!(
                "SET {setting} before the Sync of extended-protocol messages (send the Sync first)"
            ))),
            Err(refusal) => Err(refusal),
            Ok(ViewAs::Reset) => {
                if let Some(was) = self.viewing.take() {
                    self.access = self.login.clone();
                    self.fresh_access();
                    self.view_event("view_as_end", &was);
                }
                Ok(())
            }
            Ok(ViewAs::Set(name)) => match self.policy.access(&name) {
                Some(access) => self.start_viewing(name, access, io).await?,
                None => Err(Refusal::ViewAsUnknown(name)),
            },
            Ok(ViewAs::Token(token)) => match self.token_access(&token).await {
                Ok(access) => {
                    self.start_viewing(access.user.clone(), Arc::new(access), io)
                        .await?
                }
                Err(refusal) => Err(refusal),
            },
        };
        Ok(match outcome {
            Ok(()) => {
                self.note(&sql, Some(&sql), None);
                query_message(&sql)
            }
            Err(refusal) => {
                self.note(&sql, None, Some(&refusal));
                query_message(&self.refuse(&refusal))
            }
        })
    }

    /// Takes `name`'s access for the session, after pinning upstream what
    /// a member's session has pinned (standard_conforming_strings, the
    /// search path) with queries of rowgate's own.
    async fn start_viewing(
        &mut self,
        name: String,
        access: Arc<crate::policy::Access>,
        io: &mut Io,
    ) -> Result<Result<(), Refusal>, Stop> {
        if !access.may_use_source(&self.source.name) {
            return Ok(Err(Refusal::ViewAsSource(name, self.source.name.clone())));
        }
        let answer = self
            .own_query("SELECT pg_catalog.current_setting('client_encoding')", io)
            .await?;
        match answer {
            Answer {
                status: status::IDLE,
                value: Some(v),
                ..
            } if v.eq_ignore_ascii_case("UTF8") => {}
            Answer {
                status: status::IDLE,
                ..
            } => return Ok(Err(Refusal::ViewAsEncoding)),
            _ => return Ok(Err(Refusal::ViewAsInTransaction)),
        }
        let catalog = match self.source.catalog.get(&self.database).await {
            Ok(c) => c,
            Err(e) => {
                warn!(database = %self.database, "cannot read the upstream catalog: {e}");
                return Ok(Err(Refusal::unsupported(
                    "viewing as a user while the upstream catalog cannot be read",
                )));
            }
        };
        let path = rewrite::path_for_member(&self.shared.search_path, &access.user);
        let pin = format!(
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'on', false), \
             pg_catalog.set_config('search_path', {}, false)",
            view_as::escaped_literal(&rewrite::path_text(&path))
        );
        match self.own_query(&pin, io).await? {
            Answer { failed: false, .. } => {}
            _ => {
                return Ok(Err(Refusal::unsupported(
                    "viewing as a user here (the session could not be set up)",
                )))
            }
        }
        if let Some(was) = self.viewing.take() {
            self.view_event("view_as_end", &was);
        }
        self.access = access;
        self.catalog = catalog;
        self.path = path;
        self.settle = false;
        self.fresh_access();
        self.viewing = Some(name.clone());
        self.view_event("view_as_start", &name);
        Ok(Ok(()))
    }

    /// The access of a signed token's user, verified and resolved exactly
    /// as a token login is (the token's `sub` is the user it is for).
    async fn token_access(&self, token: &str) -> Result<crate::policy::Access, Refusal> {
        let invalid = |why: String| Refusal::ViewAsToken(why);
        let Some(tokens) = &self.shared.tokens else {
            return Err(invalid("this proxy has no `tokens:` issuers".into()));
        };
        let verifier = tokens.load_full();
        let sub = crate::tokens::unverified_sub(token).unwrap_or_default();
        if self.policy.users.contains_key(&sub) {
            return Err(invalid(format!(
                "`{}` is a declared user (view as them with rowgate.view_as)",
                crate::tokens::printable(&sub)
            )));
        }
        let verified = verifier
            .verify_fetching(token, &sub, crate::tokens::now)
            .await
            .map_err(|r| invalid(r.reason))?;
        self.policy
            .token_identity(&verified.issuer, &verified.token_id, &verified.claims)
            .and_then(|identity| self.policy.token_access(&identity))
            .map_err(invalid)
    }

    /// Forgets what was derived from the access the session had.
    pub(super) fn fresh_access(&mut self) {
        self.cache.clear();
        self.forget_autos(true);
        self.stateful.clear();
    }

    /// An audit record of a view-as start or end.
    fn view_event(&self, kind: &'static str, viewed: &str) {
        if let (Some(audit), Some(info)) = (&self.shared.audit, &self.audit_info) {
            let mut fields = info.clone();
            fields.insert("viewed_as".into(), viewed.into());
            audit.record(kind, fields);
        }
    }
}
