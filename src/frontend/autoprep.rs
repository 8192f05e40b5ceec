//! Automatic prepared statements: a statement a session runs again and again
//! is prepared once upstream and then only executed, so that neither rowgate
//! nor PostgreSQL parses, rewrites and plans it every time.
//!
//! - **Simple query.** A statement is reduced to its *shape*: its tokens with
//!   every plain number taken out. Statements of one shape differ only in
//!   those numbers. When a shape comes back (the session's
//!   `prepare_threshold`), rowgate rewrites it once with the numbers as
//!   parameters `$1, $2, ...`, checks that the result with this statement's
//!   numbers put back is exactly the text the ordinary rewrite forwards, and
//!   sends `PREPARE ... AS <that>; EXECUTE ...(numbers)`. From then on the
//!   shape goes out as `EXECUTE name(numbers)`. Parameters are declared with
//!   the types PostgreSQL gives the literals (`int4`, `numeric`), and only
//!   numbers where a parameter means the same as a constant are taken out:
//!   in `WHERE`, `JOIN ... ON`, `FROM` function arguments, `LIMIT`,
//!   `OFFSET` and `FETCH` of a plain `SELECT`, outside subqueries, never in
//!   the select list, `GROUP BY` or `ORDER BY` (where `1` names a column).
//! - **Extended query.** An unnamed statement the client parses again with
//!   the same text and parameter types is created upstream as a named one
//!   and reused: a later Parse becomes a `Close` of the unnamed statement
//!   (whose CloseComplete the relay hands on as the ParseComplete), and
//!   Bind and Describe name the upstream statement.
//!
//! Either way what runs upstream is the rewritten, checked AST, as for any
//! other statement. Statements whose result columns could change with a
//! table (`SELECT *`) are not prepared. A session forgets its statements
//! (and closes them upstream) when an error says one went stale or missing,
//! when a `SET` or `RESET` runs or a transaction that ran one ends (settings
//! decide how PostgreSQL reads literals when it prepares), when the catalog
//! changes, and on `DEALLOCATE ALL`.
//!
//! The session's pipeline state (`session/pipeline.rs`) knows which
//! responses belong to rowgate's own messages: every Parse and Close a
//! rewriting session forwards has an entry in its queue of expected
//! responses, so each ParseComplete and CloseComplete is matched to its
//! message.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer, Whitespace};

use crate::rewrite::{self, Context};

/// The key of [`Token::Number`] standing for a whole number taken out.
const INT_HOLE: &str = "i";
/// The key of [`Token::Number`] standing for a decimal number taken out.
const DEC_HOLE: &str = "d";

/// A simple-query statement reduced to its shape.
#[derive(Debug)]
pub struct Shape {
    /// The tokens, whitespace made uniform, numbers replaced by holes.
    pub key: Vec<Token>,
    /// The numbers, as written, in order.
    pub values: Vec<String>,
}

/// Whether `s` is a whole number as PostgreSQL reads one (digits only).
fn is_int(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` is `digits.digits`.
fn is_dec(s: &str) -> bool {
    s.split_once('.')
        .is_some_and(|(a, b)| is_int(a) && is_int(b))
}

/// Whether a token is a number a shape takes out, and which kind.
fn hole_kind(t: &Token) -> Option<&'static str> {
    match t {
        Token::Number(n, false) if is_int(n) => Some(INT_HOLE),
        Token::Number(n, false) if is_dec(n) => Some(DEC_HOLE),
        _ => None,
    }
}

/// The shape of `sql`, or `None` for what is never prepared automatically:
/// several statements, comments, parameters, or text that does not
/// tokenize.
pub fn shape(sql: &str) -> Option<Shape> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut key = Vec::with_capacity(tokens.len());
    let mut values = Vec::new();
    let mut end = tokens.len();
    while end > 0 && matches!(tokens[end - 1], Token::Whitespace(_) | Token::SemiColon) {
        end -= 1;
    }
    for t in tokens.into_iter().take(end) {
        match t {
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => {
                // A run of whitespace is one separator.
                if !matches!(key.last(), Some(Token::Whitespace(_))) {
                    key.push(Token::Whitespace(Whitespace::Space));
                }
            }
            Token::Whitespace(_) | Token::SemiColon | Token::Placeholder(_) => return None,
            t => match (hole_kind(&t), t) {
                (Some(hole), Token::Number(n, _)) => {
                    key.push(Token::Number(hole.to_string(), false));
                    values.push(n);
                }
                (_, t) => key.push(t),
            },
        }
    }
    if key.is_empty() {
        return None;
    }
    Some(Shape { key, values })
}

/// The parameter types of a shape's holes, as PostgreSQL types the literals:
/// `int4` for whole numbers, `numeric` for decimals.
pub fn param_types(shape: &Shape) -> Vec<&'static str> {
    shape
        .key
        .iter()
        .filter_map(|t| match t {
            Token::Number(n, false) if n == INT_HOLE => Some("int4"),
            Token::Number(n, false) if n == DEC_HOLE => Some("numeric"),
            _ => None,
        })
        .collect()
}

/// Whether this statement's numbers fit the shape's parameter types: a whole
/// number over `int4`'s range is `int8` or `numeric` to PostgreSQL.
pub fn values_fit(values: &[String], types: &[&str]) -> bool {
    values.iter().zip(types).all(|(v, t)| {
        *t != "int4" || {
            let digits = v.trim_start_matches('0');
            digits.len() < 10 || (digits.len() == 10 && digits <= "2147483647")
        }
    })
}

/// The statement text to prepare for `sql`'s shape: `sql` with its numbers
/// as parameters, rewritten. `None` when the shape cannot be prepared, or
/// when the result with the numbers put back differs in any byte from
/// `forwarded`, the text the ordinary rewrite of `sql` forwards.
/// The type OIDs of [`param_types`]' names.
pub fn param_oids(types: &[&str]) -> Vec<crate::rewrite::types::Oid> {
    use crate::rewrite::types::{INT4, NUMERIC};
    types
        .iter()
        .map(|t| if *t == "int4" { INT4 } else { NUMERIC })
        .collect()
}

pub fn template(sql: &str, values: &[String], forwarded: &str, cx: &Context) -> Option<String> {
    let parameterized = with_parameters(sql, values.len())?;
    let statements = rewrite::parse(&parameterized).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    if !parameters_mean_constants(query, values.len()) || has_star(query) {
        return None;
    }
    let prepared = rewrite::rewrite(&parameterized, cx).ok()?.sql;
    (substitute(&prepared, values)? == forwarded).then_some(prepared)
}

/// Byte offsets of token starts, from their line/column locations.
fn offsets(sql: &str, locations: &[Location]) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(locations.len());
    let mut chars = sql.char_indices().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    for loc in locations {
        while (line, column) < (loc.line, loc.column) {
            let (_, c) = chars.next()?;
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        out.push(chars.peek().map_or(sql.len(), |&(i, _)| i));
    }
    Some(out)
}

/// `sql` with its numbers (as [`shape`] finds them) replaced by `$1`, `$2`,
/// ...; `None` unless there are exactly `count`.
fn with_parameters(sql: &str, count: usize) -> Option<String> {
    replace_tokens(sql, |t| match t {
        t if hole_kind(t).is_some() => Some(Replace::Numbered),
        _ => None,
    })
    .filter(|(_, n)| *n == count)
    .map(|(s, _)| s)
}

/// `sql` with its numbers (as [`shape`] finds them) replaced by `values`,
/// in order; `None` unless there are as many.
pub fn with_numbers(sql: &str, values: &[String]) -> Option<String> {
    let mut next = values.iter();
    replace_tokens(sql, |t| match t {
        t if hole_kind(t).is_some() => {
            Some(Replace::With(next.next().cloned().unwrap_or_default()))
        }
        _ => None,
    })
    .filter(|(_, n)| *n == values.len())
    .map(|(s, _)| s)
}

/// `prepared` with its parameters `$k` replaced by `values[k - 1]`: the
/// text the ordinary rewrite forwards for a statement of the shape with
/// these numbers.
pub fn substitute(prepared: &str, values: &[String]) -> Option<String> {
    replace_tokens(prepared, |t| match t {
        Token::Placeholder(p) => {
            let k: usize = p.strip_prefix('$')?.parse().ok()?;
            Some(Replace::With(values.get(k.checked_sub(1)?)?.clone()))
        }
        _ => None,
    })
    .map(|(s, _)| s)
}

enum Replace {
    /// The next parameter, `$1` first.
    Numbered,
    With(String),
}

/// Rewrites the tokens of `sql` that `pick` chooses, keeping every other
/// byte; returns the text and how many were replaced.
fn replace_tokens(
    sql: &str,
    mut pick: impl FnMut(&Token) -> Option<Replace>,
) -> Option<(String, usize)> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    let starts: Vec<Location> = tokens.iter().map(|t| t.span.start).collect();
    let at = offsets(sql, &starts)?;
    let mut out = String::with_capacity(sql.len() + 16);
    let mut copied = 0;
    let mut count = 0;
    for (i, t) in tokens.iter().enumerate() {
        let Some(replace) = pick(&t.token) else {
            continue;
        };
        let start = at[i];
        let end = at.get(i + 1).copied().unwrap_or(sql.len());
        out.push_str(&sql[copied..start]);
        count += 1;
        match replace {
            Replace::Numbered => out.push_str(&format!("${count}")),
            Replace::With(v) => out.push_str(&v),
        }
        copied = end;
    }
    out.push_str(&sql[copied..]);
    Some((out, count))
}

/// Whether all `count` parameters of `query` sit where a parameter means
/// the same as the constant it stands for: see the module documentation.
fn parameters_mean_constants(query: &Query, count: usize) -> bool {
    let SetExpr::Select(select) = &*query.body else {
        return false;
    };
    let mut found = 0;
    let mut tally = |e: &Expr| {
        if let Expr::Value(v) = e {
            found += usize::from(matches!(v.value, Value::Placeholder(_)));
        }
        ControlFlow::Continue(())
    };
    rewrite::exprs_outside_subqueries(&select.selection, &mut tally);
    rewrite::exprs_outside_subqueries(&select.from, &mut tally);
    rewrite::exprs_outside_subqueries(&query.limit_clause, &mut tally);
    rewrite::exprs_outside_subqueries(&query.fetch, &mut tally);
    found == count
}

/// Whether the select list has `*` or `t.*`, whose columns follow the table.
/// PostgreSQL refuses to run a prepared statement whose result columns
/// changed, so such statements are not prepared automatically.
fn has_star(query: &Query) -> bool {
    let SetExpr::Select(select) = &*query.body else {
        return true;
    };
    select.projection.iter().any(|item| {
        matches!(
            item,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    })
}

/// Whether a rewritten statement list is one read that may be prepared
/// automatically (extended protocol): a single `SELECT` with no `*`.
pub fn preparable(statements: &[Statement]) -> bool {
    matches!(statements, [Statement::Query(q)] if !has_star(q))
}

/// Whether a statement list sets or resets a setting. Settings such as
/// `TimeZone`, `DateStyle` and `IntervalStyle` decide how PostgreSQL reads
/// a literal like `'2024-01-10 12:00'::timestamptz` when it prepares a
/// statement, and a prepared statement keeps that reading; so a session
/// forgets its automatic statements when a setting changes (and again when
/// a transaction that changed one ends, since that may undo the change).
pub fn changes_settings(statements: &[Statement], may_call_set_config: bool) -> bool {
    statements.iter().any(|s| {
        matches!(s, Statement::Set(_) | Statement::Reset(_))
            || (may_call_set_config && crate::rewrite::calls_set_config(s))
    })
}

/// Whether a statement list sets settings back to the session's startup
/// values (`RESET`, `DISCARD`).
pub fn resets_settings(statements: &[Statement]) -> bool {
    statements
        .iter()
        .any(|s| matches!(s, Statement::Reset(_) | Statement::Discard { .. }))
}

/// Whether a statement list ends a transaction or rolls back to a
/// savepoint (which undoes settings changed since).
pub fn ends_transaction(statements: &[Statement]) -> bool {
    statements
        .iter()
        .any(|s| matches!(s, Statement::Commit { .. } | Statement::Rollback { .. }))
}

/// What in a statement list leaves state on the upstream connection that
/// cannot move to another, for transaction pooling: a `PREPARE`, a cursor
/// `WITH HOLD`, a `LISTEN`, a session-level advisory lock (looked for in
/// the text: any call of one names `advisory_lock`; the transaction-level
/// ones are `advisory_xact_lock`). `None` when nothing does.
pub fn pins_connection(statements: &[Statement], sql: &str) -> Option<&'static str> {
    for s in statements {
        match s {
            Statement::Prepare { .. } => return Some("a prepared statement (PREPARE)"),
            Statement::Declare { stmts } if stmts.iter().any(|d| d.hold == Some(true)) => {
                return Some("a cursor WITH HOLD")
            }
            Statement::LISTEN { .. } => return Some("LISTEN"),
            _ => {}
        }
    }
    sql.to_ascii_lowercase()
        .contains("advisory_lock")
        .then_some("a session-level advisory lock")
}

/// Whether a statement list drops every prepared statement of the session
/// (`DEALLOCATE ALL`, `DISCARD ALL`).
pub fn deallocates_all(statements: &[Statement]) -> bool {
    statements.iter().any(|s| match s {
        Statement::Deallocate { name, .. } => {
            name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all")
        }
        Statement::Discard { object_type } => {
            matches!(object_type, sqlparser::ast::DiscardObject::ALL)
        }
        _ => false,
    })
}

const PREPARING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;
const SKIPPED: u8 = 3;

/// A statement rowgate prepared upstream.
#[derive(Debug)]
pub struct Auto {
    pub name: String,
    /// The cycle (count of Query/Sync messages sent before) in which it was
    /// sent for preparing.
    pub cycle: u64,
    state: AtomicU8,
}

impl Auto {
    pub fn new(name: String, cycle: u64) -> Arc<Self> {
        Arc::new(Auto {
            name,
            cycle,
            state: AtomicU8::new(PREPARING),
        })
    }

    /// Known to exist upstream.
    pub fn ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == READY
    }

    /// Its preparing failed or was skipped.
    pub fn failed(&self) -> bool {
        matches!(self.state.load(Ordering::SeqCst), FAILED | SKIPPED)
    }

    /// Its message never ran: PostgreSQL skipped it after an earlier
    /// error in the same cycle.
    pub fn skipped(&self) -> bool {
        self.state.load(Ordering::SeqCst) == SKIPPED
    }

    /// Not settled yet.
    pub fn pending(&self) -> bool {
        self.state.load(Ordering::SeqCst) == PREPARING
    }

    /// Usable by a message of `cycle`: known to exist, or sent earlier in
    /// the same cycle (if preparing it fails, the upstream skips the rest
    /// of the cycle anyway).
    pub fn usable(&self, cycle: u64) -> bool {
        match self.state.load(Ordering::SeqCst) {
            READY => true,
            PREPARING => self.cycle == cycle,
            _ => false,
        }
    }

    /// Settles its state (once): prepared or not.
    pub(crate) fn settle(&self, ready: bool) {
        self.settle_as(if ready { READY } else { FAILED });
    }

    /// Settles its state (once): its message was skipped.
    pub(crate) fn settle_skipped(&self) {
        self.settle_as(SKIPPED);
    }

    fn settle_as(&self, state: u8) {
        let _ = self
            .state
            .compare_exchange(PREPARING, state, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Whether an ErrorResponse body says that a prepared statement is missing
/// (26000) or may no longer run as prepared (0A000, "cached plan must not
/// change result type").
pub fn stale_statement_error(body: &[u8]) -> bool {
    let mut code = &b""[..];
    let mut message = &b""[..];
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = v,
            Some((b'M', v)) => message = v,
            _ => {}
        }
    }
    code == b"26000" || (code == b"0A000" && message.starts_with(b"cached plan must not change"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::rewrite::OfflineCatalog;

    #[test]
    fn shapes_take_out_plain_numbers_only() {
        let a = shape("SELECT a FROM t WHERE id = 12 AND x > 1.5;").unwrap();
        let b = shape("SELECT a\nFROM t  WHERE id = 7 AND x > 10.25").unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.values, ["12", "1.5"]);
        assert_eq!(param_types(&a), ["int4", "numeric"]);
        // Different kinds of number, other tokens: other shapes.
        assert_ne!(
            a.key,
            shape("SELECT a FROM t WHERE id = 12.0 AND x > 1.5")
                .unwrap()
                .key
        );
        assert_ne!(
            a.key,
            shape("SELECT b FROM t WHERE id = 12 AND x > 1.5")
                .unwrap()
                .key
        );
        assert_ne!(
            shape("SELECT 'a' 'b'").unwrap().key,
            shape("SELECT 'a '' b'").unwrap().key
        );
        assert_eq!(shape("SELECT 1e5").unwrap().values, Vec::<String>::new());
        for never in [
            "SELECT 1; SELECT 2",
            "SELECT 1 -- c\n+ 1",
            "SELECT /* c */ 1",
            "SELECT $1",
            "",
            " ;",
        ] {
            assert!(shape(never).is_none(), "{never}");
        }
    }

    #[test]
    fn int4_range_decides_fit() {
        let t = ["int4"];
        assert!(values_fit(&["2147483647".into()], &t));
        assert!(values_fit(&["0002147483647".into()], &t));
        assert!(!values_fit(&["2147483648".into()], &t));
        assert!(!values_fit(&["99999999999".into()], &t));
        assert!(values_fit(&["99999999999.5".into()], &["numeric"]));
    }

    fn policy() -> PolicySet {
        let text = "attributes:\n  m: {type: integer}\n\
             users:\n  u: {password: x, groups: [g], attributes: {m: [1, 2]}}\n\
             groups:\n  g: {tables: [public.t]}\n\
             tables:\n  public.t: {filters: [{column: m, attribute: m}]}\n";
        let source = crate::policy::Source {
            path: "p.yaml".into(),
            text: text.into(),
        };
        crate::policy::load_sources(&[source])
            .unwrap()
            .policy()
            .clone()
    }

    fn template_of(sql: &str) -> Option<String> {
        let policy = policy();
        let access = policy.access("u").unwrap();
        let catalog = OfflineCatalog::new(&policy);
        let path = rewrite::default_search_path();
        let cx = Context {
            access: &access,
            catalog: &catalog,
            search_path: &path,
            params: &[],
            fence: Default::default(),
            listing: Default::default(),
        };
        let forwarded = rewrite::rewrite(sql, &cx).unwrap().sql;
        let values = shape(sql).unwrap().values;
        template(sql, &values, &forwarded, &cx)
    }

    #[test]
    fn templates_parameterize_where_constants_and_parameters_agree() {
        let t = template_of("SELECT a FROM t WHERE id = 5 AND b > -2.5 LIMIT 10").unwrap();
        assert!(
            t.contains("id = $1") && t.contains("-$2") && t.contains("LIMIT $3"),
            "{t}"
        );
        assert!(t.contains("IN (1, 2)"), "the filter's own values stay: {t}");
        assert!(template_of("SELECT a FROM t WHERE id = 5 ORDER BY 1").is_none());
        assert!(template_of("SELECT a, 5 FROM t WHERE id = 5").is_none());
        assert!(template_of("SELECT a FROM t GROUP BY a HAVING count(*) > 1").is_none());
        assert!(template_of("SELECT a FROM t WHERE id IN (SELECT 5)").is_none());
        assert!(template_of("SELECT * FROM t WHERE id = 5").is_none());
        assert!(template_of("SELECT a::numeric(10, 2) FROM t WHERE id = 5").is_none());
        assert!(template_of("SELECT a FROM t UNION SELECT a FROM t WHERE id = 1").is_none());
        let none = template_of("SELECT a FROM t WHERE b = 'x'").unwrap();
        assert!(!none.contains('$'), "{none}");
    }

    #[test]
    fn stale_errors_are_recognised() {
        assert!(stale_statement_error(
            b"SERROR\0C26000\0Mprepared statement \"x\" does not exist\0\0"
        ));
        assert!(stale_statement_error(
            b"SERROR\0C0A000\0Mcached plan must not change result type\0\0"
        ));
        assert!(!stale_statement_error(b"SERROR\0C0A000\0Mother\0\0"));
        assert!(!stale_statement_error(b"SERROR\0C42501\0Mx\0\0"));
    }
}
