//! The rewriter: pure and synchronous, the one code path that both
//! `rowgate explain` and the proxy use. It parses a statement text with the
//! PostgreSQL dialect, classifies every statement against an allowlist,
//! injects row filters into every table read, and prints the rewritten AST:
//! the text forwarded upstream is always the re-serialized AST, never the
//! client's text (except for admins, whose statements pass unchanged).
//!
//! Anything not understood is refused ([`Refusal`]).

pub mod catalog;
mod classify;
pub mod functions;
pub mod leakproof;
pub mod normalize;
mod shape;
pub mod system;
mod tables;
pub mod types;
pub mod view_as;
pub mod writes;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use catalog::{Catalog, ColumnDefault, OfflineCatalog};
pub use classify::{is_utf8, parse_path_text, path_for_member, path_text, SETTABLE, SHOW_DENIED};

use crate::policy::{Access, Role};

/// Everything a rewrite depends on besides the statement text.
pub struct Context<'a> {
    /// The connected user's resolved access.
    pub access: &'a Access,
    /// Which relations exist, for resolving unqualified names.
    pub catalog: &'a dyn Catalog,
    /// The search path the upstream session is pinned to.
    pub search_path: &'a [String],
    /// Declared types of the statement's parameters (`$1` first; 0 when
    /// the client left one unspecified), as a Parse message declares them.
    pub params: &'a [types::Oid],
    /// Whether filtered tables may go unfenced.
    pub fence: Fence,
    /// How the catalog lists what the member cannot read.
    pub listing: system::Listing,
}

impl<'a> Context<'a> {
    /// A context with no declared parameters and the fence decided per
    /// statement.
    pub fn new(access: &'a Access, catalog: &'a dyn Catalog, search_path: &'a [String]) -> Self {
        Context {
            access,
            catalog,
            search_path,
            params: &[],
            fence: Fence::Auto,
            listing: system::Listing::Hide,
        }
    }
}

/// How filtered tables are kept apart from a member's own conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fence {
    /// A fence (a derived table PostgreSQL may not merge) only around
    /// statements some of whose conditions are not leakproof; otherwise the
    /// filtered tables are planned like native row-level security's.
    #[default]
    Auto,
    /// Never a fence, whatever the conditions: unsafe, for measuring what
    /// the fence costs.
    UnsafeOff,
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

/// Why a statement is refused. A refusal's message names what was refused,
/// never data the user cannot see; [`Refusal::sqlstate`] is the one place
/// that gives each its SQLSTATE: 42501 for what policy forbids, 0A000 for
/// what rowgate does not support, 54001 for what is too deep to analyse.
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
    /// A setting PostgreSQL shows only to privileged roles.
    #[error("must be superuser or have privileges of pg_read_all_settings to examine \"{0}\"")]
    Show(String),
    #[error("permission denied for function {0}")]
    Function(String),
    /// A function the catalog snapshot does not know; worded like
    /// [`Refusal::Function`]. The proxy refreshes its catalog and retries
    /// once on this one.
    #[error("permission denied for function {0}")]
    UnknownFunction(String),
    /// An operator, domain or cast whose user-defined code could run on
    /// rows the filters hide.
    #[error("permission denied for {0}: it may run user-defined code on rows the filters hide")]
    UserCode(String),
    /// Valid PostgreSQL that rowgate does not handle (SQLSTATE 0A000).
    #[error("rowgate does not support {0}")]
    Unsupported(String),
    /// A text rowgate's parser cannot read. The proxy asks PostgreSQL's own
    /// parser whether it is valid: a syntax error is relayed as PostgreSQL
    /// says it, valid PostgreSQL is refused as not supported (0A000).
    #[error("rowgate does not support this statement (its parser: {0})")]
    Unparsable(String),
    /// A text that is not valid UTF-8 (SQLSTATE 22021, as PostgreSQL
    /// answers one).
    #[error("invalid byte sequence for encoding \"UTF8\"")]
    Encoding,
    /// A prepared statement name under rowgate's reserved prefix.
    #[error(
        "permission denied: prepared statement names starting with \"rowgate_\" are reserved ({0})"
    )]
    Reserved(String),
    /// A Parse naming a prepared statement the session already has, in
    /// transaction pooling (where the statement exists upstream under a
    /// name of rowgate's, PostgreSQL cannot say so itself): SQLSTATE 42P05,
    /// as PostgreSQL answers.
    #[error("prepared statement \"{0}\" already exists")]
    DuplicateStatement(String),
    /// EXPLAIN of a statement whose plan would depend on statistics of
    /// rows the member cannot see.
    #[error("permission denied: EXPLAIN of a statement with a condition that is not leakproof on a filtered table (its estimates would reflect rows the filters hide)")]
    Explain,
    /// Nested or chained deeper than rowgate analyses (SQLSTATE 54001, as
    /// PostgreSQL answers a statement too deep for its stack).
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// The audit log cannot take records and `audit.on_failure` is
    /// `refuse` (SQLSTATE 58030, an I/O error).
    #[error("rowgate cannot write its audit log; statements are refused until it can")]
    AuditUnavailable,
    /// `SET rowgate.view_as` naming no user of the policies (SQLSTATE
    /// 42704, as PostgreSQL answers `SET ROLE` to a missing role).
    #[error("user \"{0}\" does not exist in the policies")]
    ViewAsUnknown(String),
    /// `SET rowgate.view_as` inside a transaction block (SQLSTATE 25001).
    #[error("SET rowgate.view_as cannot run inside a transaction block")]
    ViewAsInTransaction,
    /// `SET rowgate.view_as` in a session whose client_encoding is not
    /// UTF8 (SQLSTATE 22023): a member's session reads UTF-8 only.
    #[error("SET rowgate.view_as needs client_encoding UTF8")]
    ViewAsEncoding,
    /// `SET rowgate.view_as` naming a user who may not use the session's
    /// data source (SQLSTATE 42501).
    #[error("user \"{0}\" may not use data source \"{1}\"")]
    ViewAsSource(String, String),
    /// `SET rowgate.view_as_token` with a token that does not verify or
    /// resolve (SQLSTATE 22023, an invalid parameter value).
    #[error("invalid value for parameter \"rowgate.view_as_token\": {0}")]
    ViewAsToken(String),
}

impl Refusal {
    /// The SQLSTATE of a refusal for policy reasons: `insufficient_privilege`.
    pub const SQLSTATE: &'static str = "42501";

    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::TooComplex(_) => "54001",
            Refusal::AuditUnavailable => "58030",
            Refusal::ViewAsUnknown(_) => "42704",
            Refusal::DuplicateStatement(_) => "42P05",
            Refusal::ViewAsInTransaction => "25001",
            Refusal::ViewAsEncoding | Refusal::ViewAsToken(_) => "22023",
            Refusal::Unsupported(_) | Refusal::Unparsable(_) => "0A000",
            Refusal::Encoding => "22021",
            _ => Self::SQLSTATE,
        }
    }

    pub(crate) fn statement(what: impl Into<String>) -> Self {
        Refusal::Statement(what.into())
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Refusal::Unsupported(what.into())
    }
}

/// The prefix of the names rowgate gives its own upstream objects
/// (automatic prepared statements, refusal markers): a client may not name
/// a statement with it.
pub const RESERVED_PREFIX: &str = "rowgate_";

/// The schema of rowgate's own tables (the audit table): no member or
/// analyst reads a relation in it.
pub const OWN_SCHEMA: &str = "rowgate";

/// Whether a client's prepared statement name is under the reserved prefix
/// (as PostgreSQL compares names: folded for SQL, exact on the wire; both
/// are checked folded, which refuses a little more).
pub fn is_reserved_name(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
}

/// The most operators, set operations and other links one statement may
/// chain. Every recursive walk of a parsed statement (rewriting, printing,
/// comparing, dropping) goes as deep as its longest chain; the session
/// threads' stacks are sized for this bound ([`STACK_BYTES`]).
pub const MAX_CHAIN: usize = 10_000;

/// The stack a thread needs to rewrite any statement within [`MAX_CHAIN`].
pub const STACK_BYTES: usize = 256 << 20;

/// Parses `sql` as PostgreSQL does; a parse failure is a refusal. A text
/// whose chains could nest deeper than [`MAX_CHAIN`] is refused before it is
/// parsed (`54001`, as PostgreSQL answers such a statement).
pub fn parse(sql: &str) -> Result<Vec<Statement>, Refusal> {
    check_depth(sql)?;
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        if matches!(e, sqlparser::parser::ParserError::RecursionLimitExceeded) {
            return Refusal::TooComplex("nested too deeply".into());
        }
        let text = e.to_string();
        let text = text.strip_prefix("sql parser error: ").unwrap_or(&text);
        Refusal::Unparsable(text.to_string())
    })
}

/// An upper bound on how deep a parsed statement can nest: the parser
/// limits nesting by parentheses and subqueries itself, but builds chains
/// of binary operators, set operations, casts and subscripts one level per
/// link. Every token that can add a link counts.
fn check_depth(sql: &str) -> Result<(), Refusal> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    // Cheap before tokenizing: a short text cannot chain too far.
    if sql.len() < MAX_CHAIN {
        return Ok(());
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| Refusal::Unparsable(e.to_string()))?;
    let links = tokens
        .iter()
        .filter(|t| match t {
            Token::Whitespace(_)
            | Token::Comma
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::Placeholder(_) => false,
            Token::Word(w) => {
                w.quote_style.is_none() && w.keyword != sqlparser::keywords::Keyword::NoKeyword
            }
            _ => true,
        })
        .count();
    if links > MAX_CHAIN {
        return Err(Refusal::TooComplex(format!(
            "more than {MAX_CHAIN} operators, keywords and set operations in one statement"
        )));
    }
    Ok(())
}

/// Parses `sql` as the rewriter reads its input (see [`normalize`]). What a
/// forwarded text reads back as, for checks outside the rewriter.
pub fn parse_input(sql: &str) -> Result<Vec<Statement>, Refusal> {
    parse(&normalize::normalize(sql).0)
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
    let (text, fixups) = normalize::normalize(sql);
    // Cheap tests on the text spare the statements that cannot hold them a
    // walk of their tree.
    let set_config = contains_word_part(&text, "set_config");
    let answered_calls = ANSWERED_HINTS.iter().any(|w| contains_word_part(&text, w));
    let mut statements = parse(&text)?;
    if let Some(staged) = writes::copy_in(&statements, cx)? {
        // Each piece was checked to read back as it is (see copy_in).
        let printed = print(&staged);
        return Ok(Rewritten {
            sql: printed,
            statements: Some(staged),
        });
    }
    for (i, name) in &fixups.row_stars {
        if !statements
            .get(*i)
            .is_some_and(|s| names_a_from_item_only(s, name, cx))
        {
            return Err(Refusal::unsupported(
                "(name).* where name may be a column (write name.* for a table's columns)",
            ));
        }
    }
    // A statement after one that sets the search path resolves along the
    // new one (they run in that order upstream, or not at all).
    let mut path: Option<Vec<String>> = None;
    let count = statements.len();
    for (i, statement) in statements.iter_mut().enumerate() {
        if fixups.moves.contains(&i) && !matches!(statement, Statement::Fetch { into: None, .. }) {
            return Err(Refusal::unsupported("this form of MOVE"));
        }
        if fixups.force_quote_all.contains(&i) && !matches!(statement, Statement::Copy { .. }) {
            return Err(Refusal::unsupported("FORCE_QUOTE * outside COPY"));
        }
        let here = Context {
            search_path: path.as_deref().unwrap_or(cx.search_path),
            ..*cx
        };
        rewrite_statement_as(
            statement,
            &here,
            fixups.rows_from.contains(&i),
            answered_calls,
        )?;
        let last = i + 1 == count;
        let change = match &*statement {
            Statement::Query(_) if !set_config => None,
            s => path_change(s),
        };
        match change {
            Some(PathChange::Set(entries)) => path = Some(entries),
            Some(PathChange::Other) if !last => {
                return Err(Refusal::unsupported(
                    "statements after a RESET of search_path (or a change rowgate cannot follow) in the same query string",
                ))
            }
            _ if path.is_some() && !last && ends_block(statement) => {
                return Err(Refusal::unsupported(
                    "statements after the end of a transaction that set search_path, in the same query string",
                ))
            }
            _ => {}
        }
    }
    for (_, parts) in &fixups.only {
        only_changes_nothing(parts, cx)?;
    }
    let printed = print(&statements);
    // What PostgreSQL will read must be exactly what was checked: a printed
    // literal or identifier that reads back differently is refused.
    if parse(&printed).ok().as_ref() != Some(&statements) {
        return Err(Refusal::unsupported(
            "a literal or identifier that cannot be forwarded exactly",
        ));
    }
    let sql = if fixups.moves.is_empty()
        && fixups.force_quote_all.is_empty()
        && fixups.rows_from.is_empty()
    {
        printed
    } else {
        normalize::print(&statements, &fixups)
    };
    Ok(Rewritten {
        sql,
        statements: Some(statements),
    })
}

/// How a statement changes the session's search path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathChange {
    /// To these schemas (as sent upstream: `$user` spelt out).
    Set(Vec<String>),
    /// Back to the session's default, or to a value not known here.
    Other,
}

/// The change a statement makes to the search path, if any.
pub fn path_change(statement: &Statement) -> Option<PathChange> {
    use sqlparser::ast::{Expr, Reset, ResetStatement, Set, Value};
    let is_path = |name: &sqlparser::ast::ObjectName| {
        name.0.len() == 1
            && name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case("search_path"))
    };
    match statement {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) if is_path(variable) => Some(match classify::set_path_entries(values) {
            Ok(Some(entries)) => PathChange::Set(entries),
            _ => PathChange::Other,
        }),
        Statement::Set(Set::ParenthesizedAssignments { variables, .. })
            if variables.iter().any(is_path) =>
        {
            Some(PathChange::Other)
        }
        Statement::Set(Set::MultipleAssignments { assignments })
            if assignments.iter().any(|a| is_path(&a.name)) =>
        {
            Some(PathChange::Other)
        }
        Statement::Reset(ResetStatement { reset: Reset::ALL }) => Some(PathChange::Other),
        Statement::Reset(ResetStatement {
            reset: Reset::ConfigurationParameter(name),
        }) if is_path(name) => Some(PathChange::Other),
        _ if calls_set_config(statement) => {
            // `SELECT set_config('search_path', '...', ...)`, as checked.
            let mut found = None;
            let _ = sqlparser::ast::visit_expressions(statement, |e| {
                if let Expr::Function(f) = e {
                    if let sqlparser::ast::FunctionArguments::List(list) = &f.args {
                        let texts: Vec<Option<&str>> = list
                            .args
                            .iter()
                            .map(|a| match a {
                                sqlparser::ast::FunctionArg::Unnamed(
                                    sqlparser::ast::FunctionArgExpr::Expr(Expr::Value(v)),
                                ) => match &v.value {
                                    Value::SingleQuotedString(s) => Some(s.as_str()),
                                    _ => None,
                                },
                                _ => None,
                            })
                            .collect();
                        if texts
                            .first()
                            .copied()
                            .flatten()
                            .is_some_and(|n| n.eq_ignore_ascii_case("search_path"))
                        {
                            found = Some(
                                texts
                                    .get(1)
                                    .copied()
                                    .flatten()
                                    .and_then(parse_path_text)
                                    .map_or(PathChange::Other, PathChange::Set),
                            );
                        }
                    }
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            found
        }
        _ => None,
    }
}

/// Whether a statement ends a transaction or rolls back to a savepoint
/// (which may undo a change of the search path).
pub fn ends_block(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Commit { .. } | Statement::Rollback { .. }
    )
}

/// Whether `name` is, in every SELECT of the statement, a FROM item's name
/// and no column's: then `(name).*` is `name.*`. Every FROM item's columns
/// must be known (tables of the catalog).
fn names_a_from_item_only(
    statement: &Statement,
    name: &sqlparser::ast::Ident,
    cx: &Context,
) -> bool {
    use sqlparser::ast::{Select, TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Items<'a, 'b> {
        cx: &'a Context<'b>,
        aliases: Vec<String>,
        columns: Vec<String>,
        unknown: bool,
    }
    impl Items<'_, '_> {
        fn factor(&mut self, f: &TableFactor) {
            match f {
                TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } => {
                    let parts: Vec<String> = name
                        .0
                        .iter()
                        .filter_map(|p| p.as_ident())
                        .map(crate::names::fold)
                        .collect();
                    let rel = match parts.as_slice() {
                        [n] => catalog::resolve(self.cx.catalog, self.cx.search_path, n),
                        [s, n] => Some(crate::names::RelName::new(s.clone(), n.clone())),
                        _ => None,
                    };
                    match rel.and_then(|r| self.cx.catalog.columns(&r.schema, &r.name)) {
                        Some(cols) => self.columns.extend(cols.into_iter().map(|(c, _)| c)),
                        None => self.unknown = true,
                    }
                    self.aliases.push(match alias {
                        Some(a) => crate::names::fold(&a.name),
                        None => parts.last().cloned().unwrap_or_default(),
                    });
                }
                TableFactor::NestedJoin {
                    table_with_joins, ..
                } => {
                    self.factor(&table_with_joins.relation);
                    for j in &table_with_joins.joins {
                        self.factor(&j.relation);
                    }
                }
                _ => self.unknown = true,
            }
        }
    }
    impl Visitor for Items<'_, '_> {
        type Break = ();
        fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
            for t in &select.from {
                self.factor(&t.relation);
                for j in &t.joins {
                    self.factor(&j.relation);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut items = Items {
        cx,
        aliases: Vec::new(),
        columns: Vec::new(),
        unknown: false,
    };
    let _ = statement.visit(&mut items);
    let folded = crate::names::fold(name);
    !items.unknown && items.aliases.contains(&folded) && !items.columns.contains(&folded)
}

/// `ONLY t` is read as `t`: right only where `t` has no inheritance
/// children and no partitions.
fn only_changes_nothing(parts: &[sqlparser::ast::Ident], cx: &Context) -> Result<(), Refusal> {
    let folded: Vec<String> = parts.iter().map(crate::names::fold).collect();
    let rel = match folded.as_slice() {
        [name] => catalog::resolve(cx.catalog, cx.search_path, name),
        [schema, name] => Some(crate::names::RelName::new(schema.clone(), name.clone())),
        _ => None,
    };
    match rel.map(|r| cx.catalog.has_children(&r.schema, &r.name)) {
        Some(Some(false)) => Ok(()),
        _ => Err(Refusal::unsupported(
            "ONLY of a table with inheritance children or partitions (or not known to have none)",
        )),
    }
}

/// Parts of the names of the calls [`system::rewrite_call`] answers: a
/// text without any of them has none.
const ANSWERED_HINTS: &[&str] = &["user", "role", "privilege", "size", "pg_stat_get"];

/// Whether a statement text may call `set_config` (it names it).
pub fn may_call_set_config(sql: &str) -> bool {
    contains_word_part(sql, "set_config")
}

/// Whether `sql` may call one of `functions` (the user-defined functions
/// the policy lists): its text names one. Such a function may change
/// settings (its body may call `set_config`) without the statement saying
/// so; the proxy then reads the session's settings back in transaction
/// pooling (`frontend/session/pooling.rs`). A name in a string or a
/// comment counts too: reading back costs a query, never a setting.
pub fn may_call_listed(
    sql: &str,
    functions: &std::collections::BTreeSet<crate::names::RelName>,
) -> bool {
    functions.iter().any(|f| contains_word_part(sql, &f.name))
}

/// Whether `text` holds `part`, ignoring ASCII case.
fn contains_word_part(text: &str, part: &str) -> bool {
    text.as_bytes()
        .windows(part.len())
        .any(|w| w.eq_ignore_ascii_case(part.as_bytes()))
}

/// Classifies one parsed statement and rewrites it in place.
pub fn rewrite_statement(statement: &mut Statement, cx: &Context) -> Result<(), Refusal> {
    rewrite_statement_as(statement, cx, false, true)
}

/// As [`rewrite_statement`]; `rows_from`: the statement was read with the
/// `ROWS FROM` placeholder (see [`normalize`]).
fn rewrite_statement_as(
    statement: &mut Statement,
    cx: &Context,
    rows_from: bool,
    answered_calls: bool,
) -> Result<(), Refusal> {
    let mut state = tables::State::default();
    state.rows_from = rows_from;
    if cx.fence != Fence::UnsafeOff {
        state.verdict = leakproof::judge_statement(statement, cx);
    }
    classify::check(statement, cx, &mut state)?;
    tables::fix_qualified_references(statement, &state);
    // The text test spares most statements the walk; a call the function
    // check let through on the promise of an answer is answered whatever
    // the text test said.
    if answered_calls || state.answered.get() {
        // Literals printed exactly before the calls' arguments are printed
        // into their replacements.
        exact_literals(statement);
        answer_calls(statement, cx)?;
    }
    exact_literals(statement);
    Ok(())
}

/// Whether a statement calls `set_config` (which members may call like a
/// `SET`).
pub fn calls_set_config(statement: &Statement) -> bool {
    use sqlparser::ast::{Expr, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Find;
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f)
                    if f.name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .is_some_and(|i| i.value.eq_ignore_ascii_case("set_config")) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    statement.visit(&mut Find).is_break()
}

/// Replaces the calls a member makes that rowgate answers itself
/// ([`system::rewrite_call`]), innermost first; a replacement is not
/// visited again.
fn answer_calls(statement: &mut Statement, cx: &Context) -> Result<(), Refusal> {
    use sqlparser::ast::{Expr, VisitMut, VisitorMut};
    use std::ops::ControlFlow;
    struct Calls<'a, 'b>(&'a Context<'b>);
    impl VisitorMut for Calls<'_, '_> {
        type Break = Refusal;
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
            match system::rewrite_call(expr, self.0) {
                Ok(()) => ControlFlow::Continue(()),
                Err(r) => ControlFlow::Break(r),
            }
        }
    }
    if cx.access.role == Role::Admin {
        return Ok(());
    }
    match statement.visit(&mut Calls(cx)) {
        ControlFlow::Break(r) => Err(r),
        ControlFlow::Continue(()) => Ok(()),
    }
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

/// Calls `f` on every expression of `node` that is not inside a nested
/// query (subquery, CTE body, derived table), until `f` breaks; whether it
/// broke. Nested queries are judged on their own where they are rewritten.
pub fn exprs_outside_subqueries<T: sqlparser::ast::Visit>(
    node: &T,
    f: impl FnMut(&sqlparser::ast::Expr) -> std::ops::ControlFlow<()>,
) -> bool {
    use sqlparser::ast::{Expr, Query, Visitor};
    use std::ops::ControlFlow;
    struct Outside<F> {
        depth: usize,
        f: F,
    }
    impl<F: FnMut(&Expr) -> ControlFlow<()>> Visitor for Outside<F> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                (self.f)(e)
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    node.visit(&mut Outside { depth: 0, f }).is_break()
}

/// Calls `f` on every expression of `node` outside nested queries, after
/// its own subexpressions (so `f` may replace it); the mutable twin of
/// [`exprs_outside_subqueries`].
pub(crate) fn map_exprs_outside_subqueries<T: sqlparser::ast::VisitMut>(
    node: &mut T,
    f: impl FnMut(&mut sqlparser::ast::Expr),
) {
    use sqlparser::ast::{Expr, Query, VisitorMut};
    use std::ops::ControlFlow;
    struct Outside<F> {
        depth: usize,
        f: F,
    }
    impl<F: FnMut(&mut Expr)> VisitorMut for Outside<F> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                (self.f)(e);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Outside { depth: 0, f });
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
