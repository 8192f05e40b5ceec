//! The rewriter: pure and synchronous, the one code path that both
//! `rowgate explain` and the proxy use. It parses a statement text with the
//! PostgreSQL dialect, classifies every statement against an allowlist,
//! injects row filters into every table read, and prints the rewritten AST:
//! the text forwarded upstream is always the re-serialized AST, never the
//! client's text (except for admins, whose statements pass unchanged).
//!
//! Anything not understood is refused ([`Refusal`], SQLSTATE 42501).

pub mod catalog;
mod classify;
pub mod functions;
mod tables;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use catalog::{Catalog, OfflineCatalog};
pub use classify::{is_utf8, SETTABLE};
pub use tables::disable_fence_for_benchmarks;

use crate::policy::{Access, Role};

/// Everything a rewrite depends on besides the statement text.
pub struct Context<'a> {
    /// The connected user's resolved access.
    pub access: &'a Access,
    /// Which relations exist, for resolving unqualified names.
    pub catalog: &'a dyn Catalog,
    /// The search path the upstream session is pinned to.
    pub search_path: &'a [String],
}

/// The search path rowgate pins upstream and resolves names against unless
/// configured otherwise.
pub fn default_search_path() -> Vec<String> {
    vec!["public".to_string()]
}

/// A statement text that may be forwarded.
#[derive(Clone, Debug, PartialEq)]
pub struct Rewritten {
    /// The text to send upstream.
    pub sql: String,
    /// The parsed and rewritten statements (`None` for admins, whose text
    /// passes unparsed).
    pub statements: Option<Vec<Statement>>,
}

/// Why a statement is refused. Every refusal is SQLSTATE 42501 and its
/// message names what was refused, never data the user cannot see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("permission denied for table {0}")]
    Table(String),
    /// A name that no schema on the search path holds. Worded like
    /// [`Refusal::Table`] so that existence cannot be probed; the proxy
    /// refreshes its catalog and retries once on this one.
    #[error("permission denied for table {0}")]
    UnknownTable(String),
    #[error("permission denied: {0} is not allowed through rowgate (read-only access)")]
    Statement(String),
    #[error("permission denied to set parameter \"{0}\" through rowgate")]
    Setting(String),
    #[error("permission denied for function {0}")]
    Function(String),
    #[error("permission denied: rowgate does not support {0}, so the statement is refused")]
    Unsupported(String),
    #[error("permission denied: rowgate could not parse the statement, so it is refused ({0})")]
    Unparsable(String),
}

impl Refusal {
    /// The SQLSTATE of every refusal: `insufficient_privilege`.
    pub const SQLSTATE: &'static str = "42501";

    pub fn sqlstate(&self) -> &'static str {
        Self::SQLSTATE
    }

    pub(crate) fn statement(what: impl Into<String>) -> Self {
        Refusal::Statement(what.into())
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Refusal::Unsupported(what.into())
    }
}

/// Parses `sql` as PostgreSQL does; a parse failure is a refusal.
pub fn parse(sql: &str) -> Result<Vec<Statement>, Refusal> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        let text = e.to_string();
        let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
        Refusal::Unparsable(text.to_string())
    })
}

/// Turns a statement text into the text to forward, or a refusal. A text
/// with several statements is refused whole if any one is refused.
pub fn rewrite(sql: &str, cx: &Context) -> Result<Rewritten, Refusal> {
    if cx.access.role == Role::Admin {
        return Ok(Rewritten {
            sql: sql.to_string(),
            statements: None,
        });
    }
    let mut statements = parse(sql)?;
    for statement in &mut statements {
        rewrite_statement(statement, cx)?;
    }
    let sql = print(&statements);
    // What PostgreSQL will read must be exactly what was checked: a printed
    // literal or identifier that reads back differently is refused.
    if parse(&sql).ok().as_ref() != Some(&statements) {
        return Err(Refusal::unsupported(
            "a literal or identifier that cannot be forwarded exactly",
        ));
    }
    Ok(Rewritten {
        sql,
        statements: Some(statements),
    })
}

/// Classifies one parsed statement and rewrites it in place.
pub fn rewrite_statement(statement: &mut Statement, cx: &Context) -> Result<(), Refusal> {
    let mut state = tables::State::default();
    classify::check(statement, cx, &mut state)?;
    tables::fix_qualified_references(statement, &state);
    exact_literals(statement);
    Ok(())
}

/// sqlparser prints a `'...'` literal holding `\'` or `''` as if they were
/// escapes already, which PostgreSQL (with standard_conforming_strings on)
/// reads differently. Such values are printed as `E'...'` literals, whose
/// escaping is exact.
fn exact_literals(statement: &mut Statement) {
    use sqlparser::ast::{Value, ValueWithSpan, VisitMut, VisitorMut};
    use std::ops::ControlFlow;
    struct Exact;
    impl VisitorMut for Exact {
        type Break = ();
        fn pre_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
            if let Value::SingleQuotedString(s) | Value::NationalStringLiteral(s) = &mut value.value
            {
                if s.contains(['\'', '\\']) {
                    value.value = Value::EscapedStringLiteral(std::mem::take(s));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Exact);
}

/// The text of a list of statements, as forwarded upstream.
pub fn print(statements: &[Statement]) -> String {
    let mut out = String::new();
    for (i, s) in statements.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&s.to_string());
    }
    out
}
