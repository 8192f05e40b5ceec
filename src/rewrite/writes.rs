//! Writes of read-write members: `INSERT` (`VALUES`, a plain `SELECT`, `ON
//! CONFLICT DO NOTHING` and `DO UPDATE`), `UPDATE` and `DELETE`, with the semantics of native row-level security under a
//! `FOR ALL USING (filters) WITH CHECK (filters)` policy on every filtered
//! table:
//!
//! - UPDATE and DELETE reach only rows the member can see: the table's
//!   filter joins the statement's WHERE. Everything else the statement
//!   reads (its WHERE's subqueries, `FROM`/`USING` items, SET values,
//!   RETURNING) is rewritten as a read, through a SELECT of the same
//!   items that the read rewriter rewrites. The filter and the member's
//!   conditions stand side by side when every condition that may run at
//!   the target's scan is leakproof (the read rewriter leaves the target
//!   unfenced); otherwise each conjunct runs inside `CASE WHEN filter THEN
//!   conjunct ELSE false END`, so only on visible rows.
//! - A new row (an INSERT's, an UPDATE's new version) must satisfy the
//!   table's filter: the check, the filter with the row's new values in
//!   place of its columns (each cast to its column's type, as the column
//!   will hold it), guards one value of the row, and a row that fails it
//!   raises an error that the session turns into native RLS's `42501 new
//!   row violates row-level security policy for table "t"` (see
//!   [`CHECK_MARKER`]). It runs only for rows the statement writes, so for
//!   visible rows only. A computed new value (a call, a subquery,
//!   `DEFAULT`) is computed once in a subquery of its own that the check
//!   reads; a filtered column an INSERT leaves out gets its default from
//!   the catalog, given explicitly; an `INSERT ... <query>` reads the
//!   query's rows as a derived table, as PostgreSQL does.
//!
//! `MERGE` joins the filter to its ON (a hidden target row matches no
//! source row, as PostgreSQL filters the target by its policies before
//! the join) and checks its UPDATE and INSERT actions' new rows.
//!
//! `COPY t FROM STDIN` goes through a staging table and a checked INSERT
//! ([`copy_in`]).
//!
//! What is not provably the same as native RLS is refused: INSERT of
//! `SELECT *` of other than one table, a write under a WITH one of whose
//! names hides the written table (see [`rewrite_under_with`]), COPY FROM anything
//! but STDIN, views, tables with rules or triggers of their own or of
//! their descendants, computed new values of two filtered columns in one
//! ON CONFLICT DO UPDATE, and identity or generated filtered columns left
//! out.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Ident, Insert, ObjectName, Select,
    SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Update,
    UpdateTableFromKind, Value,
};

use super::{ColumnDefault, Context, Refusal};
use crate::names::RelName;
use crate::policy::{AccessLevel, Role};

/// What a failed check's error quotes: this, then the table's name in hex.
/// The session turns an upstream error that quotes it into native RLS's
/// `42501 new row violates row-level security policy for table "<t>"`.
pub const CHECK_MARKER: &str = "rowgate_check_";
/// As [`CHECK_MARKER`], for an `ON CONFLICT DO UPDATE` whose conflicting
/// row is hidden: native RLS's `... (USING expression) ...`.
pub const USING_MARKER: &str = "rowgate_using_";

/// Whether the session's user writes: a member whose effective access is
/// read-write.
pub fn writes(cx: &Context) -> bool {
    cx.access.role == Role::Member && cx.access.level.0 == AccessLevel::ReadWrite
}

/// The message native RLS gives for a failed check that an upstream
/// error message quotes ([`CHECK_MARKER`], [`USING_MARKER`]).
pub fn check_message(message: &str) -> Option<String> {
    let (at, using) = match (message.find(CHECK_MARKER), message.find(USING_MARKER)) {
        (Some(at), _) => (at + CHECK_MARKER.len(), false),
        (None, Some(at)) => (at + USING_MARKER.len(), true),
        (None, None) => return None,
    };
    let hex_digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let table = String::from_utf8(hex::decode(hex_digits).ok()?).ok()?;
    Some(if using {
        format!(
            "new row violates row-level security policy (USING expression) for table \"{table}\""
        )
    } else {
        format!("new row violates row-level security policy for table \"{table}\"")
    })
}

/// Rewrites a write statement of a read-write member in place.
pub(crate) fn rewrite(statement: &mut Statement, cx: &Context) -> Result<(), Refusal> {
    rewrite_in(statement, cx, &Outer::none())
}

fn rewrite_in(statement: &mut Statement, cx: &Context, outer: &Outer) -> Result<(), Refusal> {
    match statement {
        Statement::Insert(insert) => insert_values(insert, cx, outer),
        Statement::Update(update) => update_rows(update, cx, outer),
        Statement::Delete(delete) => delete_rows(delete, cx, outer),
        Statement::Merge(merge) => merge_rows(merge, cx, outer),
        _ => Err(Refusal::statement("this statement")),
    }
}

/// The WITH a write statement stands under (`WITH x AS (SELECT ...)
/// UPDATE ...`): every read of the write (its query, WHERE, FROM,
/// RETURNING) is rewritten with it, so its names mean what they mean to
/// PostgreSQL; the first rewrite of it is kept, and stands at the head of
/// the statement again.
struct Outer<'a> {
    with: Option<&'a sqlparser::ast::With>,
    rewritten: std::cell::RefCell<Option<sqlparser::ast::With>>,
}

impl Outer<'_> {
    fn none() -> Outer<'static> {
        Outer {
            with: None,
            rewritten: std::cell::RefCell::new(None),
        }
    }

    fn keep(&self, rewritten: Option<sqlparser::ast::With>) {
        let mut kept = self.rewritten.borrow_mut();
        if kept.is_none() {
            *kept = rewritten;
        }
    }
}

/// `WITH ... INSERT/UPDATE/DELETE ...` of a read-write member: the write
/// rewritten as one, its reads with the WITH (see [`Outer`]), in which a
/// write is rewritten as a write, as in a `WITH` at the head of a SELECT.
/// A WITH one of whose names is the written table's is refused.
pub(crate) fn rewrite_under_with(
    query: &mut sqlparser::ast::Query,
    cx: &Context,
) -> Result<(), Refusal> {
    if query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
        || !query.locks.is_empty()
    {
        return Err(unsupported("this write under WITH"));
    }
    let Some(with) = query.with.take() else {
        return Err(unsupported("this write"));
    };
    let statement = match query.body.as_mut() {
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => s,
        _ => return Err(unsupported("this write under WITH")),
    };
    let written = match &*statement {
        Statement::Insert(Insert {
            table: TableObject::TableName(name),
            ..
        }) => Some(name.clone()),
        Statement::Update(update) => match &update.table.relation {
            TableFactor::Table { name, .. } => Some(name.clone()),
            _ => None,
        },
        Statement::Delete(Delete {
            from: FromTable::WithFromKeyword(tables),
            ..
        }) => match tables.first().map(|t| &t.relation) {
            Some(TableFactor::Table { name, .. }) => Some(name.clone()),
            _ => None,
        },
        _ => None,
    };
    if let Some(ObjectName(parts)) = &written {
        if let [part] = parts.as_slice() {
            let name = part.as_ident().map(crate::names::fold);
            if with
                .cte_tables
                .iter()
                .any(|c| Some(crate::names::fold(&c.alias.name)) == name)
            {
                return Err(unsupported("a write of a table a WITH name hides"));
            }
        }
    }
    let outer = Outer {
        with: Some(&with),
        rewritten: std::cell::RefCell::new(None),
    };
    rewrite_in(statement, cx, &outer)?;
    // Every write reads through the WITH at least once (its query, its
    // WHERE), which gives the rewritten WITH.
    let rewritten = outer.rewritten.into_inner();
    query.with = Some(rewritten.ok_or_else(|| unsupported("this write under WITH"))?);
    Ok(())
}

/// The parameters of a `PREPARE name(types) AS <write>` as the statement
/// reads them: each `$n` that PREPARE gives a type is that type (a
/// `CAST`, which PostgreSQL makes of a typed parameter anyway), so that
/// the write's check does not take it for an untyped one.
pub(crate) fn declare_parameters(
    statement: &mut Statement,
    types: &[sqlparser::ast::DataType],
) -> Result<(), Refusal> {
    let mut failed = false;
    let _ = sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                let declared = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| types.get(i));
                if let Some(ty) = declared {
                    match parse_expr(&format!("CAST({p} AS {ty})")) {
                        Ok(cast) => *e = cast,
                        Err(_) => failed = true,
                    }
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if failed {
        return Err(unsupported("this parameter type"));
    }
    Ok(())
}

fn unsupported(what: &str) -> Refusal {
    Refusal::unsupported(format!("{what} (for read-write members)"))
}

/// The relation a write names, resolved as PostgreSQL would, and checked
/// writable: granted, and an ordinary or partitioned table of the catalog
/// without rules or triggers of its own, nor descendants with any (a
/// granted table without a rule under `tables:` is all visible, so all
/// writable, as for reads). Through a parent, PostgreSQL applies the
/// parent's policies to its descendants' rows, as the parent's filter
/// does here.
fn target(name: &ObjectName, cx: &Context) -> Result<RelName, Refusal> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(crate::names::fold))
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported("this table name"))?;
    let rel = match parts.as_slice() {
        [name] => super::catalog::resolve(cx.catalog, cx.search_path, name),
        [schema, name] => Some(RelName::new(schema.clone(), name.clone())),
        _ => None,
    };
    let rel = rel.ok_or_else(|| Refusal::UnknownTable(name.to_string()))?;
    if !cx.access.may_read(&rel) {
        return Err(Refusal::Table(rel.to_string()));
    }
    if cx.access.read_only.iter().any(|(g, _)| g.covers(&rel)) {
        return Err(Refusal::statement(format!("writing {rel} (read_only)")));
    }
    if !cx.catalog.writable(&rel.schema, &rel.name) {
        return Err(unsupported(&format!(
            "writing {rel}, which is not known to be a table without rules or triggers (its own or its partitions' and children's)"
        )));
    }
    Ok(rel)
}

/// `SELECT <items> FROM <from> WHERE <selection>`, rewritten as a read;
/// its parts back, and whether the first FROM item (the write's target)
/// was left unfenced.
struct Read {
    items: Vec<SelectItem>,
    from: Vec<TableWithJoins>,
    selection: Option<Guard>,
}

fn read(
    items: Vec<SelectItem>,
    from: Vec<TableWithJoins>,
    selection: Option<Expr>,
    cx: &Context,
    outer: &Outer,
) -> Result<Read, Refusal> {
    let original = (from.clone(), selection.clone());
    let (projection, from, selection) = read_select(items.clone(), from, selection, cx, outer)?;
    let count = items.len();
    let items = if count > 0 { projection } else { Vec::new() };
    let target_fenced = from.first().is_some_and(|first| fenced(&first.relation));
    if !target_fenced {
        return Ok(Read {
            items,
            from,
            selection: selection.map(Guard::Plain),
        });
    }
    // A condition on the target that is not leakproof: the read rewriter
    // fenced the target and may have moved conjuncts into its fence. The
    // condition is rewritten again whole, as a projection (which nothing
    // moves), to run only on visible rows (see [`Guard::AfterFilter`]).
    let (from_again, Some(condition)) = original else {
        return Err(unsupported(
            "a write whose target is fenced without a condition",
        ));
    };
    let (mut again, _, _) = read_select(
        vec![SelectItem::UnnamedExpr(condition)],
        from_again,
        None,
        cx,
        outer,
    )?;
    let Some(SelectItem::UnnamedExpr(condition)) = again.pop() else {
        return Err(unsupported("this condition of a write"));
    };
    Ok(Read {
        items,
        from,
        selection: Some(Guard::AfterFilter(condition)),
    })
}

/// A write's own condition, rewritten: leakproof, it stands beside the
/// filter; not, it runs only for rows that passed it (`CASE WHEN filter
/// THEN condition ELSE false END`: PostgreSQL evaluates a CASE's branches
/// in order, and only the taken one).
enum Guard {
    Plain(Expr),
    AfterFilter(Expr),
}

/// The WHERE of a write: the filter (with the target's refname) and the
/// statement's condition, guarded as it must be.
fn write_where(filter: Option<Expr>, condition: Option<Guard>) -> Result<Option<Expr>, Refusal> {
    Ok(match (filter, condition) {
        (filter, None) => filter,
        (None, Some(Guard::Plain(c) | Guard::AfterFilter(c))) => Some(c),
        (Some(f), Some(Guard::Plain(c))) => and(Some(f), Some(c)),
        (Some(f), Some(Guard::AfterFilter(c))) => {
            // Each conjunct guarded on its own: PostgreSQL orders a
            // statement's quals by cost, as it orders a native RLS query's
            // quals of one security level, so that a cheap conjunct (`id =
            // 1`) still spares the rows it rejects a costly one.
            let mut conjuncts = Vec::new();
            split_and(c, &mut conjuncts);
            let mut all = f.clone();
            for c in conjuncts {
                let guarded = parse_expr(&format!("CASE WHEN {f} THEN {c} ELSE false END"))?;
                all = and(Some(all), Some(guarded)).expect("two conjuncts");
            }
            Some(all)
        }
    })
}

/// The conjuncts of `a AND b AND ...` (through parentheses).
fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                inner.as_ref(),
                Expr::BinaryOp {
                    op: sqlparser::ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

/// A SELECT's projection, FROM and WHERE.
type SelectParts = (Vec<SelectItem>, Vec<TableWithJoins>, Option<Expr>);

/// `SELECT <items> FROM <from> WHERE <selection>` through the read
/// rewriter; its projection, FROM and WHERE.
fn read_select(
    items: Vec<SelectItem>,
    from: Vec<TableWithJoins>,
    selection: Option<Expr>,
    cx: &Context,
    outer: &Outer,
) -> Result<SelectParts, Refusal> {
    let mut statement = match super::parse("SELECT 1")?.pop() {
        Some(s @ Statement::Query(_)) => s,
        _ => return Err(unsupported("this statement")),
    };
    let Statement::Query(query) = &mut statement else {
        return Err(unsupported("this statement"));
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(unsupported("this statement"));
    };
    if !items.is_empty() {
        select.projection = items;
    }
    select.from = from;
    select.selection = selection;
    query.with = outer.with.cloned();
    super::rewrite_statement(&mut statement, cx)?;
    let Statement::Query(mut query) = statement else {
        return Err(unsupported("this statement"));
    };
    outer.keep(query.with.take());
    let SetExpr::Select(select) = *query.body else {
        return Err(unsupported("this statement"));
    };
    let Select {
        projection,
        from,
        selection,
        ..
    } = *select;
    Ok((projection, from, selection))
}

/// Whether the read rewriter fenced a table: a derived table PostgreSQL
/// may not merge (`OFFSET`).
fn fenced(factor: &TableFactor) -> bool {
    match factor {
        TableFactor::Derived { subquery, .. } => subquery.limit_clause.is_some(),
        _ => false,
    }
}

/// The refname a write's target goes by: its alias, or its name.
fn refname(rel: &RelName, alias: Option<&Ident>) -> Ident {
    alias
        .cloned()
        .unwrap_or_else(|| crate::names::ident(&rel.name))
}

/// The table's filter with its own columns (`rel.column`, outside the
/// filter's subqueries) read from `value` instead: the target's refname,
/// or the new values of a row.
fn substituted(filter: &Expr, rel: &RelName, value: &dyn Fn(&str) -> Expr) -> Expr {
    let mut out = filter.clone();
    super::map_exprs_outside_subqueries(&mut out, |expr| {
        if let Expr::CompoundIdentifier(parts) = expr {
            if let [table, column] = parts.as_slice() {
                if table.value == rel.name {
                    *expr = Expr::Nested(Box::new(value(&column.value)));
                }
            }
        }
    });
    out
}

/// The columns of the table its filter reads (outside its subqueries).
fn filter_columns(filter: &Expr, rel: &RelName) -> Vec<String> {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let _ = substituted(filter, rel, &|column| {
        let mut seen = seen.borrow_mut();
        if !seen.iter().any(|c| c == column) {
            seen.push(column.to_string());
        }
        null()
    });
    seen.into_inner()
}

/// An error raised when evaluated, never at plan time (`random()` keeps
/// PostgreSQL from folding it), that names `rel` for the session.
fn violation(rel: &RelName) -> Result<Expr, Refusal> {
    raise(CHECK_MARKER, rel)
}

/// An error that quotes `marker` and the table, raised when evaluated.
fn raise(marker: &str, rel: &RelName) -> Result<Expr, Refusal> {
    let marker = format!("{marker}{}", hex::encode(rel.name.as_bytes()));
    parse_expr(&format!(
        "CAST(CASE WHEN pg_catalog.random() < 2 THEN '{marker}' END AS integer) = 0"
    ))
}

/// An expression of rowgate's, maybe with the client's expressions in it
/// (printed and parsed again: one that does not read back is refused).
fn parse_expr(text: &str) -> Result<Expr, Refusal> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|_| unsupported("this expression in a write"))
}

/// `value`, returned only when `check` holds: `CASE WHEN (CASE WHEN check
/// THEN true ELSE <violation> END) THEN value END`. A null check fails, as
/// native RLS's.
fn guarded(value: &Expr, check: &Expr, rel: &RelName) -> Result<Expr, Refusal> {
    parse_expr(&format!(
        "CASE WHEN (CASE WHEN {check} THEN true ELSE {} END) THEN {value} END",
        violation(rel)?
    ))
}

/// What the subquery of a value computed once calls it (see
/// [`NewValue::once`]): `rowgate_new.v`.
const ONCE: &str = "rowgate_new";

/// A new value of a column the filter reads.
#[derive(Clone, Debug)]
struct NewValue {
    /// What the row gets.
    value: Expr,
    /// What the check reads for the column: the value as the column holds
    /// it (cast to the column's type).
    check: Expr,
    /// A value other than a constant, a parameter or a column (a call, a
    /// subquery, a column's default): computed once, in a subquery of its
    /// own (`rowgate_new.v`), before the check that reads it.
    once: bool,
}

/// The new value a statement gives a filtered column, as the row gets it
/// and as the check reads it. An untyped constant or parameter is cast to
/// the column's type (what PostgreSQL makes of it when it assigns it), and
/// the check reads every value cast so (`1.6` into an integer column is 2
/// to native RLS's check). `DEFAULT` is the column's default from the
/// catalog, read as any expression of the member's. A value computed
/// once may not hold an aggregate, a window function or a set-returning
/// call outside its subqueries (PostgreSQL refuses them in VALUES and
/// SET, where they would otherwise run in the value's own subquery).
fn new_value(value: &Expr, rel: &RelName, column: &str, cx: &Context) -> Result<NewValue, Refusal> {
    let ty = column_type(rel, column, cx);
    if let Expr::Nested(inner) = value {
        return new_value(inner, rel, column, cx);
    }
    if is_default(value) {
        return default_value(rel, column, ty.as_deref(), cx);
    }
    let plain = is_plain(value);
    let Some(ty) = ty else {
        if plain && !is_untyped(value) {
            return Ok(NewValue {
                value: value.clone(),
                check: value.clone(),
                once: false,
            });
        }
        return Err(unsupported(
            "this new value of a filtered column of a type rowgate does not know",
        ));
    };
    if !plain {
        one_level(value, cx)?;
        let read = cast_to(&column_of(&Ident::new(ONCE), "v"), &ty)?;
        return Ok(NewValue {
            value: value.clone(),
            check: read,
            once: true,
        });
    }
    let cast = cast_to(value, &ty)?;
    Ok(NewValue {
        value: if is_untyped(value) {
            cast.clone()
        } else {
            value.clone()
        },
        check: cast,
        once: false,
    })
}

/// A constant, a parameter or a column: a value the check may read again.
fn is_plain(value: &Expr) -> bool {
    match value {
        Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::UnaryOp { expr, .. } | Expr::Cast { expr, .. } => {
            matches!(expr.as_ref(), Expr::Value(_))
        }
        _ => false,
    }
}

/// Whether [`new_value`] computes `value` once (without building it): a
/// value that is not plain, of a column of a known type, or `DEFAULT` of
/// a column whose default is an expression.
fn computed(value: &Expr, rel: &RelName, column: &str, cx: &Context) -> bool {
    match value {
        Expr::Nested(inner) => computed(inner, rel, column, cx),
        v if is_default(v) => {
            matches!(
                cx.catalog.column_default(&rel.schema, &rel.name, column),
                Some(ColumnDefault::Expr(_))
            ) && column_type(rel, column, cx).is_some()
        }
        v => !is_plain(v) && column_type(rel, column, cx).is_some(),
    }
}

/// `DEFAULT` as a value (it reads as a bare identifier).
fn is_default(value: &Expr) -> bool {
    matches!(value, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The default of a filtered column as a new value: NULL when it has none;
/// its expression from the catalog, rewritten as a read of the member's
/// (so a call the member may not make is refused), computed once.
fn default_value(
    rel: &RelName,
    column: &str,
    ty: Option<&str>,
    cx: &Context,
) -> Result<NewValue, Refusal> {
    let Some(ty) = ty else {
        return Err(unsupported(
            "the default of a filtered column of a type rowgate does not know",
        ));
    };
    match cx.catalog.column_default(&rel.schema, &rel.name, column) {
        None => Err(unsupported(&format!(
            "the default of the filtered column {column}, which rowgate does not know (give the value)"
        ))),
        Some(ColumnDefault::Generated) => Err(unsupported(&format!(
            "the filtered column {column}, an identity or generated column"
        ))),
        Some(ColumnDefault::Null) => {
            let null = cast_to(&null(), ty)?;
            Ok(NewValue {
                value: null.clone(),
                check: null,
                once: false,
            })
        }
        Some(ColumnDefault::Expr(text)) => {
            let expr = parse_expr(&text)?;
            let (mut items, _, _) =
                read_select(vec![SelectItem::UnnamedExpr(expr)], Vec::new(), None, cx, &Outer::none())?;
            let Some(SelectItem::UnnamedExpr(expr)) = items.pop() else {
                return Err(unsupported("this default of a filtered column"));
            };
            one_level(&expr, cx)?;
            Ok(NewValue {
                value: expr,
                check: cast_to(&column_of(&Ident::new(ONCE), "v"), ty)?,
                once: true,
            })
        }
    }
}

/// `CAST(value AS pg_catalog.ty)`.
fn cast_to(value: &Expr, ty: &str) -> Result<Expr, Refusal> {
    parse_expr(&format!(
        "CAST({value} AS pg_catalog.{})",
        crate::names::ident(ty)
    ))
}

/// Refuses a value that holds, outside its subqueries, an aggregate, a
/// window function or a call of a name with a set-returning overload.
fn one_level(value: &Expr, cx: &Context) -> Result<(), Refusal> {
    let Some(types) = cx.catalog.types() else {
        return Err(unsupported(
            "a computed new value of a filtered column without the catalog",
        ));
    };
    let mut refused = false;
    let mut value = value.clone();
    super::map_exprs_outside_subqueries(&mut value, |e| {
        if let Expr::Function(call) = e {
            let name = call
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(crate::names::fold)
                .unwrap_or_default();
            let kinds = types.functions.get(&name).into_iter().flatten();
            refused |= call.over.is_some()
                || call.filter.is_some()
                || !call.within_group.is_empty()
                || kinds.into_iter().any(|f| f.aggregate || f.set_returning);
        }
    });
    if refused {
        return Err(unsupported(
            "an aggregate, window or set-returning call in the new value of a filtered column",
        ));
    }
    Ok(())
}

/// The new values of one row's filtered columns, the one that carries the
/// check guarded: a value computed once (at most one per row) in its own
/// subquery, the check after it; else the first, behind the check.
/// `other` is what the check reads for a filtered column the row does not
/// give (an UPDATE's old value).
fn guard_row(
    f: &Expr,
    rel: &RelName,
    values: &[(String, NewValue)],
    other: &dyn Fn(&str) -> Expr,
) -> Result<Vec<Expr>, Refusal> {
    let mut out: Vec<Expr> = values.iter().map(|(_, v)| v.value.clone()).collect();
    if values.is_empty() {
        return Ok(out);
    }
    let once: Vec<usize> = (0..values.len()).filter(|&i| values[i].1.once).collect();
    if once.len() > 1 {
        return Err(unsupported(
            "computed new values of more than one filtered column in one row",
        ));
    }
    let check = substituted(f, rel, &|c| match values.iter().find(|(n, _)| n == c) {
        Some((_, v)) => v.check.clone(),
        None => other(c),
    });
    match once.first() {
        Some(&i) => {
            out[i] = parse_expr(&format!(
                "(SELECT CASE WHEN (CASE WHEN {check} THEN true ELSE {} END) THEN {ONCE}.v END \
                 FROM (SELECT {} AS v OFFSET 0) AS {ONCE})",
                violation(rel)?,
                values[i].1.value
            ))?
        }
        None => out[0] = guarded(&values[0].1.value, &check, rel)?,
    }
    Ok(out)
}

/// New values of filtered columns, by column.
type FilteredValues = Vec<(String, NewValue)>;

/// The new values a row gives (`values`, by column) to the columns the
/// filter reads, and their places in the row.
fn filtered_values(
    values: &[Expr],
    columns: &[String],
    f: &Expr,
    rel: &RelName,
    cx: &Context,
) -> Result<(FilteredValues, Vec<usize>), Refusal> {
    let read_columns = filter_columns(f, rel);
    let mut new_values = Vec::new();
    let mut at = Vec::new();
    for (i, column) in columns.iter().enumerate() {
        if read_columns.contains(column) {
            new_values.push((column.clone(), new_value(&values[i], rel, column, cx)?));
            at.push(i);
        }
    }
    Ok((new_values, at))
}

/// The new values a row gives the columns the filter reads, checked:
/// `values` the row's values by column (`columns`), replaced in place;
/// `other` what the check reads for a filtered column the row does not
/// give (see [`guard_row`]).
fn check_row(
    values: &mut [Expr],
    columns: &[String],
    f: &Expr,
    rel: &RelName,
    other: &dyn Fn(&str) -> Expr,
    cx: &Context,
) -> Result<(), Refusal> {
    let (new_values, at) = filtered_values(values, columns, f, rel, cx)?;
    let guarded = guard_row(f, rel, &new_values, other)?;
    for (i, value) in at.into_iter().zip(guarded) {
        values[i] = value;
    }
    Ok(())
}

/// [`check_row`] of the SET of an UPDATE (its other filtered columns keep
/// the row's values, `me.column`). With `tuple`, computed new values of
/// several filtered columns become one multiple-column SET from a
/// sub-SELECT that computes each once and then checks them all: `SET (a,
/// b) = (SELECT CASE WHEN <check> THEN v0 END, v1 FROM (SELECT <a's value>
/// AS v0, <b's value> AS v1 OFFSET 0) AS rowgate_new)`.
fn check_assignments(
    assignments: &mut Vec<Assignment>,
    columns: &[String],
    f: &Expr,
    rel: &RelName,
    me: &Ident,
    tuple: bool,
    cx: &Context,
) -> Result<(), Refusal> {
    let values: Vec<Expr> = assignments.iter().map(|a| a.value.clone()).collect();
    let (new_values, at) = filtered_values(&values, columns, f, rel, cx)?;
    let computed: Vec<usize> = (0..new_values.len())
        .filter(|&k| new_values[k].1.once)
        .collect();
    if computed.len() <= 1 || !tuple {
        let guarded = guard_row(f, rel, &new_values, &|c| column_of(me, c))?;
        for (i, value) in at.into_iter().zip(guarded) {
            assignments[i].value = value;
        }
        return Ok(());
    }
    let once = Ident::new(ONCE);
    let name = |k: usize| format!("v{k}");
    let mut reads = Vec::new();
    for (k, (column, value)) in new_values.iter().enumerate() {
        let read = if value.once {
            let ty = column_type(rel, column, cx)
                .ok_or_else(|| unsupported("a computed value of a column of unknown type"))?;
            cast_to(&column_of(&once, &name(k)), &ty)?
        } else {
            value.check.clone()
        };
        reads.push((column.clone(), read));
    }
    let check = substituted(f, rel, &|c| match reads.iter().find(|(n, _)| n == c) {
        Some((_, read)) => read.clone(),
        None => column_of(me, c),
    });
    let mut items = Vec::new();
    let mut computes = Vec::new();
    for (j, &k) in computed.iter().enumerate() {
        let v = column_of(&once, &name(k));
        items.push(if j == 0 {
            guarded(&v, &check, rel)?.to_string()
        } else {
            v.to_string()
        });
        computes.push(format!("{} AS {}", new_values[k].1.value, name(k)));
    }
    let sub = parse_expr(&format!(
        "(SELECT {} FROM (SELECT {} OFFSET 0) AS {ONCE})",
        items.join(", "),
        computes.join(", ")
    ))?;
    // The plain new values stand as they are; the computed ones go to the
    // multiple-column SET, in place of their own.
    for (k, (_, value)) in new_values.iter().enumerate() {
        if !value.once {
            assignments[at[k]].value = value.value.clone();
        }
    }
    let targets: Vec<ObjectName> = computed
        .iter()
        .map(|&k| column_name(&new_values[k].0))
        .collect();
    let mut drop: Vec<usize> = computed.iter().map(|&k| at[k]).collect();
    drop.sort_unstable();
    for i in drop.into_iter().rev() {
        assignments.remove(i);
    }
    assignments.push(Assignment {
        target: AssignmentTarget::Tuple(targets),
        value: sub,
    });
    Ok(())
}

/// The column each SET assigns (one column each).
fn set_columns(assignments: &[Assignment]) -> Result<Vec<String>, Refusal> {
    assignments
        .iter()
        .map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) if n.0.len() == 1 => n.0[0]
                .as_ident()
                .map(crate::names::fold)
                .ok_or_else(|| unsupported("this SET target")),
            _ => Err(unsupported("SET of several columns at once")),
        })
        .collect()
}

/// The columns an INSERT lists.
fn insert_columns(columns: &[ObjectName]) -> Result<Vec<String>, Refusal> {
    columns
        .iter()
        .map(|c| match c.0.as_slice() {
            [part] => part
                .as_ident()
                .map(crate::names::fold)
                .ok_or_else(|| unsupported("this INSERT column")),
            _ => Err(unsupported("this INSERT column")),
        })
        .collect()
}

/// A column's name as an INSERT lists it.
fn column_name(column: &str) -> ObjectName {
    ObjectName::from(vec![crate::names::ident(column)])
}

/// The name of a column's type in `pg_catalog`, when it is one of
/// PostgreSQL's own (oids below 16384).
fn column_type(rel: &RelName, column: &str, cx: &Context) -> Option<String> {
    let columns = cx.catalog.columns(&rel.schema, &rel.name)?;
    let (_, oid) = columns.iter().find(|(c, _)| c == column)?;
    if *oid >= 16384 {
        return None;
    }
    let info = cx.catalog.types()?.types.get(oid)?;
    Some(info.name.clone())
}

fn and(a: Option<Expr>, b: Option<Expr>) -> Option<Expr> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(a))),
            op: sqlparser::ast::BinaryOperator::And,
            right: Box::new(Expr::Nested(Box::new(b))),
        }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The table factor of a write's target: a plain relation, maybe aliased.
fn target_factor(factor: &TableFactor) -> Result<(&ObjectName, Option<&Ident>), Refusal> {
    match factor {
        TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            version: None,
            partitions,
            with_ordinality: false,
            json_path: None,
            sample: None,
            index_hints,
        } if with_hints.is_empty() && partitions.is_empty() && index_hints.is_empty() => {
            if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
                return Err(unsupported("column aliases on a write's table"));
            }
            Ok((name, alias.as_ref().map(|a| &a.name)))
        }
        _ => Err(unsupported("this table of a write")),
    }
}

fn returning_items(returning: &mut Option<Vec<SelectItem>>) -> Vec<SelectItem> {
    returning.take().unwrap_or_default()
}

fn delete_rows(delete: &mut Delete, cx: &Context, outer: &Outer) -> Result<(), Refusal> {
    if !delete.tables.is_empty()
        || !delete.order_by.is_empty()
        || delete.limit.is_some()
        || delete.output.is_some()
    {
        return Err(unsupported("this form of DELETE"));
    }
    let tables = match &mut delete.from {
        FromTable::WithFromKeyword(t) => t,
        FromTable::WithoutKeyword(_) => return Err(unsupported("DELETE without FROM")),
    };
    let [table] = tables.as_mut_slice() else {
        return Err(unsupported("DELETE of several tables"));
    };
    if !table.joins.is_empty() {
        return Err(unsupported("this form of DELETE"));
    }
    let (name, alias) = target_factor(&table.relation)?;
    let rel = target(name, cx)?;
    let me = refname(&rel, alias);
    let using = delete.using.take().unwrap_or_default();
    let using_count = using.len();
    let returning = returning_items(&mut delete.returning);
    let had_returning = !returning.is_empty();
    let mut from = vec![table.clone()];
    from.extend(using);
    let rewritten = read(returning, from, delete.selection.take(), cx, outer)?;
    let filter = cx
        .access
        .filter(&rel)
        .map(|f| substituted(f, &rel, &|c| column_of(&me, c)));
    delete.selection = write_where(filter, rewritten.selection)?;
    let rest: Vec<TableWithJoins> = rewritten.from.into_iter().skip(1).collect();
    debug_assert_eq!(rest.len(), using_count);
    delete.using = (!rest.is_empty()).then_some(rest);
    if had_returning {
        delete.returning = Some(rewritten.items);
    }
    Ok(())
}

/// `MERGE INTO t USING src ON cond WHEN ...`, as native RLS runs it under
/// a `FOR ALL` policy: a row of the target the member cannot see matches
/// no source row (PostgreSQL filters the target's rows by its policies
/// before the join), so the table's filter joins the ON, the statement's
/// own condition guarded as an UPDATE's WHERE is; the new row of a
/// `THEN UPDATE` or `THEN INSERT` must pass the check. The source, the ON,
/// the WHEN conditions and the SET and INSERT values are read as any
/// statement is.
fn merge_rows(
    merge: &mut sqlparser::ast::Merge,
    cx: &Context,
    outer: &Outer,
) -> Result<(), Refusal> {
    use sqlparser::ast::{MergeAction, MergeClauseKind, MergeInsertKind, MergeUpdateKind};
    if merge.output.is_some() || !merge.optimizer_hints.is_empty() || !merge.into {
        return Err(unsupported("this form of MERGE"));
    }
    let (name, alias) = target_factor(&merge.table)?;
    let (name, alias) = (name.clone(), alias.cloned());
    let rel = target(&name, cx)?;
    let me = refname(&rel, alias.as_ref());
    // What the statement reads, in order: each clause's condition, then
    // its SET or INSERT values.
    let mut items: Vec<SelectItem> = Vec::new();
    for clause in &merge.clauses {
        if matches!(clause.clause_kind, MergeClauseKind::NotMatchedBySource) {
            return Err(unsupported("WHEN NOT MATCHED BY SOURCE"));
        }
        if let Some(p) = &clause.predicate {
            items.push(SelectItem::UnnamedExpr(p.clone()));
        }
        match &clause.action {
            MergeAction::Update(update) => {
                let MergeUpdateKind::Set(assignments) = &update.kind else {
                    return Err(unsupported("this MERGE UPDATE"));
                };
                if update.update_predicate.is_some() || update.delete_predicate.is_some() {
                    return Err(unsupported("this MERGE UPDATE"));
                }
                items.extend(
                    assignments
                        .iter()
                        .map(|a| SelectItem::UnnamedExpr(a.value.clone())),
                );
            }
            MergeAction::Insert(insert) => {
                let MergeInsertKind::Values(values) = &insert.kind else {
                    return Err(unsupported("this MERGE INSERT"));
                };
                let [row] = values.rows.as_slice() else {
                    return Err(unsupported("this MERGE INSERT"));
                };
                if insert.insert_predicate.is_some() {
                    return Err(unsupported("this MERGE INSERT"));
                }
                // DEFAULT stays where it is; it reads nothing.
                items.extend(
                    row.iter()
                        .filter(|v| !is_default(v))
                        .map(|v| SelectItem::UnnamedExpr(v.clone())),
                );
            }
            MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
        }
    }
    let count = items.len();
    let from = vec![
        TableWithJoins {
            relation: merge.table.clone(),
            joins: Vec::new(),
        },
        TableWithJoins {
            relation: merge.source.clone(),
            joins: Vec::new(),
        },
    ];
    let rewritten = read(items, from, Some((*merge.on).clone()), cx, outer)?;
    let mut values = Vec::new();
    for item in rewritten.items {
        match item {
            SelectItem::UnnamedExpr(e) => values.push(e),
            _ => return Err(unsupported("this MERGE")),
        }
    }
    if values.len() != count {
        return Err(unsupported("this MERGE"));
    }
    let Some(source) = rewritten.from.into_iter().nth(1) else {
        return Err(unsupported("this MERGE source"));
    };
    if !source.joins.is_empty() {
        return Err(unsupported("this MERGE source"));
    }
    merge.source = source.relation;
    let filter = cx.access.filter(&rel);
    let visible = filter.map(|f| substituted(f, &rel, &|c| column_of(&me, c)));
    *merge.on = write_where(visible, rewritten.selection)?
        .unwrap_or_else(|| Expr::Value(Value::Boolean(true).into()));
    let mut values = values.into_iter();
    let mut next = || values.next().ok_or_else(|| unsupported("this MERGE"));
    for clause in merge.clauses.iter_mut() {
        if let Some(p) = clause.predicate.as_mut() {
            *p = next()?;
        }
        match &mut clause.action {
            MergeAction::Update(update) => {
                let MergeUpdateKind::Set(assignments) = &mut update.kind else {
                    return Err(unsupported("this MERGE UPDATE"));
                };
                for a in assignments.iter_mut() {
                    a.value = next()?;
                }
                let columns = set_columns(assignments)?;
                if let Some(f) = filter {
                    check_assignments(assignments, &columns, f, &rel, &me, true, cx)?;
                }
            }
            MergeAction::Insert(insert) => {
                let MergeInsertKind::Values(values) = &mut insert.kind else {
                    return Err(unsupported("this MERGE INSERT"));
                };
                let row = &mut values.rows[0];
                for v in row.iter_mut() {
                    if !is_default(v) {
                        *v = next()?;
                    }
                }
                let Some(f) = filter else { continue };
                let mut columns = insert_columns(&insert.columns)?;
                if columns.is_empty() {
                    let all = cx.catalog.columns(&rel.schema, &rel.name).ok_or_else(|| {
                        unsupported(
                            "a MERGE INSERT without a column list into a table of unknown columns",
                        )
                    })?;
                    if row.len() > all.len() {
                        // PostgreSQL's own error.
                        continue;
                    }
                    columns = all.into_iter().take(row.len()).map(|(n, _)| n).collect();
                    insert.columns = columns.iter().map(|c| column_name(c)).collect();
                }
                if row.len() != columns.len() {
                    continue;
                }
                // A filtered column left out gets its default.
                for c in filter_columns(f, &rel) {
                    if !columns.contains(&c) {
                        insert.columns.push(column_name(&c));
                        columns.push(c);
                        row.push(default_keyword());
                    }
                }
                check_row(row, &columns, f, &rel, &|_| null(), cx)?;
            }
            MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
        }
    }
    Ok(())
}

/// `refname.column`.
fn column_of(refname: &Ident, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![refname.clone(), crate::names::ident(column)])
}

fn update_rows(update: &mut Update, cx: &Context, outer: &Outer) -> Result<(), Refusal> {
    if !update.order_by.is_empty()
        || update.limit.is_some()
        || update.output.is_some()
        || update.or.is_some()
        || !update.table.joins.is_empty()
    {
        return Err(unsupported("this form of UPDATE"));
    }
    let (name, alias) = target_factor(&update.table.relation)?;
    let rel = target(name, cx)?;
    let me = refname(&rel, alias);
    // Each SET target is one column of the table.
    let columns = set_columns(&update.assignments)?;
    let from = match update.from.take() {
        None => Vec::new(),
        Some(UpdateTableFromKind::AfterSet(f)) => f,
        Some(UpdateTableFromKind::BeforeSet(_)) => return Err(unsupported("this form of UPDATE")),
    };
    let returning = returning_items(&mut update.returning);
    let returning_count = returning.len();
    let mut items: Vec<SelectItem> = update
        .assignments
        .iter()
        .map(|a| SelectItem::UnnamedExpr(a.value.clone()))
        .collect();
    items.extend(returning);
    let mut all_from = vec![update.table.clone()];
    all_from.extend(from);
    let rewritten = read(items, all_from, update.selection.take(), cx, outer)?;
    let mut values = rewritten.items.into_iter();
    let mut assignments: Vec<Assignment> = Vec::new();
    for (a, value) in update.assignments.iter().zip(values.by_ref()) {
        let SelectItem::UnnamedExpr(value) = value else {
            return Err(unsupported("this SET value"));
        };
        assignments.push(Assignment {
            target: a.target.clone(),
            value,
        });
    }
    let returned: Vec<SelectItem> = values.collect();
    debug_assert_eq!(returned.len(), returning_count);

    if let Some(f) = cx.access.filter(&rel) {
        // USING: only visible rows.
        let using = substituted(f, &rel, &|c| column_of(&me, c));
        update.selection = write_where(Some(using), rewritten.selection)?;
        // WITH CHECK: the new version, when a SET changes a column the
        // filter reads (else it is the visible row's own value).
        check_assignments(&mut assignments, &columns, f, &rel, &me, true, cx)?;
    } else {
        update.selection = write_where(None, rewritten.selection)?;
    }
    update.assignments = assignments;
    let rest: Vec<TableWithJoins> = rewritten.from.into_iter().skip(1).collect();
    update.from = (!rest.is_empty()).then_some(UpdateTableFromKind::AfterSet(rest));
    if returning_count > 0 {
        update.returning = Some(returned);
    }
    Ok(())
}

fn insert_values(insert: &mut Insert, cx: &Context, outer: &Outer) -> Result<(), Refusal> {
    if insert.or.is_some()
        || insert.ignore
        || !insert.into
        || insert.overwrite
        || !insert.assignments.is_empty()
        || insert.partitioned.is_some()
        || !insert.after_columns.is_empty()
        || insert.has_table_keyword
        || insert.output.is_some()
        || insert.replace_into
        || insert.priority.is_some()
        || insert.insert_alias.is_some()
        || insert.settings.is_some()
        || insert.format_clause.is_some()
    {
        return Err(unsupported("this form of INSERT"));
    }
    // ON CONFLICT DO NOTHING: native RLS checks the new row before it
    // looks for a conflict, as the guarded values here are computed
    // before the insertion; a row skipped for a conflict, visible or
    // not, is skipped alike. DO UPDATE is not followed yet.
    match &insert.on {
        None => {}
        Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
            conflict_target: None | Some(sqlparser::ast::ConflictTarget::Columns(_)),
            action: sqlparser::ast::OnConflictAction::DoNothing,
        })) => {}
        Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
            conflict_target: Some(sqlparser::ast::ConflictTarget::OnConstraint(_)),
            action: sqlparser::ast::OnConflictAction::DoNothing,
        })) => {}
        Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
            conflict_target: Some(_),
            action: sqlparser::ast::OnConflictAction::DoUpdate(_),
        })) => {}
        Some(_) => return Err(unsupported("this ON CONFLICT")),
    }
    let TableObject::TableName(name) = &insert.table else {
        return Err(unsupported("this INSERT target"));
    };
    let rel = target(name, cx)?;
    if insert.table_alias.is_some() {
        return Err(unsupported("INSERT INTO ... AS alias"));
    }
    let mut columns = insert_columns(&insert.columns)?;
    // Without a column list, the values go to the table's columns in order
    // (a row may give fewer: the rest take their defaults).
    let listed = !columns.is_empty();
    let Some(source) = insert.source.as_mut() else {
        return Err(unsupported("INSERT ... DEFAULT VALUES"));
    };
    // How many columns the query gives, told before it is rewritten: `*`
    // of its one table counts that table's columns.
    let withs: Vec<&sqlparser::ast::With> = outer.with.into_iter().chain(&source.with).collect();
    let width_hint = leftmost_width(&source.body, cx, &withs);
    // The values, and RETURNING, are read as any statement is.
    // (With the WITH the statement stands under, which stays the
    // statement's: PostgreSQL reads `INSERT ... WITH ... VALUES` otherwise.)
    if outer.with.is_some() && source.with.is_some() {
        return Err(unsupported(
            "an INSERT's query with a WITH of its own under a WITH",
        ));
    }
    let mut query = source.clone();
    if outer.with.is_some() {
        query.with = outer.with.cloned();
    }
    let mut statement = Statement::Query(query);
    super::rewrite_statement(&mut statement, cx)?;
    let Statement::Query(mut rewritten) = statement else {
        return Err(unsupported("INSERT ... VALUES"));
    };
    if outer.with.is_some() {
        outer.keep(rewritten.with.take());
    }
    **source = *rewritten;
    if let Some(returning) = insert.returning.as_mut() {
        let from = vec![table_ref(name, None)];
        // (Without the WITH: RETURNING reads the new rows, and the WITH's
        // names are not the table's.)
        let r = read(std::mem::take(returning), from, None, cx, &Outer::none())?;
        *returning = r.items;
    }
    if let Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
        action: sqlparser::ast::OnConflictAction::DoUpdate(update),
        ..
    })) = insert.on.as_mut()
    {
        conflict_update(update, name, &rel, cx, outer)?;
    }
    // WITH CHECK: each row's values of the filtered columns, in the filter.
    let Some(f) = cx.access.filter(&rel) else {
        return Ok(());
    };
    let read_columns = filter_columns(f, &rel);
    // How many values each row gives: a VALUES row's; the columns of a
    // query (its leftmost SELECT's items).
    let width = match source.body.as_ref() {
        SetExpr::Values(values) => values.rows.first().map_or(0, |r| r.len()),
        _ => width_hint.ok_or_else(|| {
            unsupported("INSERT ... SELECT * of other than one table (list the values)")
        })?,
    };
    if listed && width != columns.len() {
        // PostgreSQL's own error for it is what the client should see.
        return Ok(());
    }
    if !listed {
        // The values go to the table's first columns, in order: the list
        // made explicit.
        let all = cx.catalog.columns(&rel.schema, &rel.name).ok_or_else(|| {
            unsupported("an INSERT without a column list into a table of unknown columns")
        })?;
        if width > all.len() {
            return Ok(());
        }
        columns = all.into_iter().take(width).map(|(name, _)| name).collect();
        insert.columns = columns.iter().map(|c| column_name(c)).collect();
    }
    // A filtered column the INSERT leaves out gets its default, given
    // here so that the check reads it.
    let missing: Vec<String> = read_columns
        .iter()
        .filter(|c| !columns.contains(c))
        .cloned()
        .collect();
    for c in &missing {
        insert.columns.push(column_name(c));
    }
    // VALUES rows that compute the new values of several filtered columns
    // are read as a query (each value computed once in it, then checked).
    let several = match source.body.as_ref() {
        SetExpr::Values(values) => {
            let mut several = false;
            for row in values.rows.iter().filter(|r| r.len() == width) {
                let count = row
                    .iter()
                    .zip(&columns)
                    .filter(|(v, c)| read_columns.contains(c) && computed(v, &rel, c, cx))
                    .count();
                several |= count > 1;
            }
            several
        }
        _ => false,
    };
    match source.body.as_mut() {
        SetExpr::Values(values) if !several => {
            let all: Vec<String> = columns.iter().chain(&missing).cloned().collect();
            for row in values.rows.iter_mut() {
                if row.len() != width {
                    // PostgreSQL's own error (VALUES lists of different
                    // lengths).
                    continue;
                }
                row.extend(missing.iter().map(|_| default_keyword()));
                check_row(row, &all, f, &rel, &|_| null(), cx)?;
            }
        }
        _ => **source = checked_query(source, &columns, &missing, &read_columns, f, &rel, cx)?,
    }
    Ok(())
}

/// `NULL`.
fn null() -> Expr {
    Expr::Value(Value::Null.into())
}

/// `DEFAULT`, as a value.
fn default_keyword() -> Expr {
    Expr::Identifier(Ident::new("DEFAULT"))
}

/// The number of columns a query gives, when its leftmost SELECT tells
/// it: its items, `*` and `t.*` counting the columns of its one FROM item
/// when that is a table of the catalog (not a WITH name).
fn leftmost_width(body: &SetExpr, cx: &Context, withs: &[&sqlparser::ast::With]) -> Option<usize> {
    match body {
        SetExpr::Select(select) => {
            let mut width = 0;
            for item in &select.projection {
                width += match item {
                    SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. } => 1,
                    SelectItem::Wildcard(options) if plain_wildcard(options) => {
                        single_table_width(select, None, cx, withs)?
                    }
                    SelectItem::QualifiedWildcard(
                        sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                        options,
                    ) if plain_wildcard(options) => {
                        single_table_width(select, Some(name), cx, withs)?
                    }
                    _ => return None,
                };
            }
            Some(width)
        }
        SetExpr::SetOperation { left, .. } => leftmost_width(left, cx, withs),
        SetExpr::Query(query) if query.with.is_none() => leftmost_width(&query.body, cx, withs),
        SetExpr::Values(values) => values.rows.first().map(|r| r.len()),
        _ => None,
    }
}

/// `*` without EXCLUDE, EXCEPT, REPLACE or RENAME.
fn plain_wildcard(options: &sqlparser::ast::WildcardAdditionalOptions) -> bool {
    options.opt_ilike.is_none()
        && options.opt_exclude.is_none()
        && options.opt_except.is_none()
        && options.opt_replace.is_none()
        && options.opt_rename.is_none()
}

/// The number of columns of a SELECT's one FROM item, a table of the
/// catalog (`qualifier`, when given, its refname).
fn single_table_width(
    select: &Select,
    qualifier: Option<&ObjectName>,
    cx: &Context,
    withs: &[&sqlparser::ast::With],
) -> Option<usize> {
    let [TableWithJoins { relation, joins }] = select.from.as_slice() else {
        return None;
    };
    if !joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = relation
    else {
        return None;
    };
    let folded = |name: &ObjectName| -> Option<Vec<String>> {
        name.0
            .iter()
            .map(|p| p.as_ident().map(crate::names::fold))
            .collect()
    };
    let rel = match folded(name)?.as_slice() {
        [single] => {
            let hidden = withs.iter().any(|w| {
                w.cte_tables
                    .iter()
                    .any(|c| crate::names::fold(&c.alias.name) == *single)
            });
            if hidden {
                return None;
            }
            super::catalog::resolve(cx.catalog, cx.search_path, single)?
        }
        [schema, table] => RelName::new(schema.clone(), table.clone()),
        _ => return None,
    };
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return None;
    }
    if let Some(q) = qualifier {
        let refname = alias
            .as_ref()
            .map_or_else(|| rel.name.clone(), |a| crate::names::fold(&a.name));
        if folded(q)? != [refname] {
            return None;
        }
    }
    cx.catalog.columns(&rel.schema, &rel.name).map(|c| c.len())
}

/// What the derived table of an `INSERT ... SELECT`'s rows is called.
const ROW: &str = "rowgate_row";

/// The query of an `INSERT ... <query>` with every row it gives checked:
/// `SELECT rowgate_row.c1, ..., <default>... FROM (<query>) AS
/// rowgate_row(c1, ...)`, the first filtered value (or the one computed
/// once) guarded. PostgreSQL reads an INSERT's query as a subquery of its
/// own as well; an untyped constant or parameter among a plain SELECT's
/// items is cast to its column's type first, as PostgreSQL assigns it (a
/// set operation gives its columns types of its own, as natively).
fn checked_query(
    source: &sqlparser::ast::Query,
    columns: &[String],
    missing: &[String],
    read_columns: &[String],
    f: &Expr,
    rel: &RelName,
    cx: &Context,
) -> Result<sqlparser::ast::Query, Refusal> {
    let mut inner = source.clone();
    if let SetExpr::Values(values) = inner.body.as_mut() {
        // As a query, VALUES gives its columns types of its own: each
        // untyped value cast to its column's, as the INSERT assigns it.
        for row in values.rows.iter_mut() {
            for (value, column) in row.iter_mut().zip(columns) {
                if is_default(value) {
                    return Err(unsupported(
                        "DEFAULT in VALUES that compute several filtered columns",
                    ));
                }
                if is_untyped(value) {
                    let ty = column_type(rel, column, cx).ok_or_else(|| {
                        unsupported("an untyped value of a column of a type rowgate does not know")
                    })?;
                    *value = cast_to(value, &ty)?;
                }
            }
        }
    }
    if let SetExpr::Select(select) = inner.body.as_mut() {
        let plain = |i: &SelectItem| {
            matches!(
                i,
                SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
            )
        };
        // Items beside a `*` do not stand at their columns' places.
        let starred = !select.projection.iter().all(plain);
        let untyped = select.projection.iter().any(|i| {
            matches!(i, SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } if is_untyped(e))
        });
        if starred && untyped {
            return Err(unsupported(
                "an untyped value beside * in INSERT ... SELECT",
            ));
        }
        for (item, column) in select
            .projection
            .iter_mut()
            .zip(columns)
            .filter(|_| !starred)
        {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                if is_untyped(e) {
                    let Some(ty) = column_type(rel, column, cx) else {
                        return Err(unsupported(
                            "an untyped value of a column of a type rowgate does not know",
                        ));
                    };
                    *e = cast_to(e, &ty)?;
                }
            }
        }
    }
    let row = Ident::new(ROW);
    let names: Vec<String> = (1..=columns.len()).map(|i| format!("c{i}")).collect();
    let mut items: Vec<Expr> = names.iter().map(|n| column_of(&row, n)).collect();
    items.extend(missing.iter().map(|_| default_keyword()));
    let all: Vec<&String> = columns.iter().chain(missing).collect();
    let mut new_values = Vec::new();
    let mut at = Vec::new();
    for c in read_columns {
        let i = all.iter().position(|have| *have == c).expect("listed");
        let value = if i < columns.len() {
            let value = items[i].clone();
            let check = match column_type(rel, c, cx) {
                Some(ty) => cast_to(&value, &ty)?,
                None => value.clone(),
            };
            NewValue {
                value,
                check,
                once: false,
            }
        } else {
            new_value(&items[i], rel, c, cx)?
        };
        new_values.push((c.clone(), value));
        at.push(i);
    }
    let guarded = guard_row(f, rel, &new_values, &|_| null())?;
    for (i, value) in at.into_iter().zip(guarded) {
        items[i] = value;
    }
    let text = format!(
        "SELECT {} FROM ({inner}) AS {ROW}({})",
        items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        names.join(", ")
    );
    match super::parse(&text)?.pop() {
        Some(Statement::Query(query)) => Ok(*query),
        _ => Err(unsupported("this INSERT ... SELECT")),
    }
}

/// `ON CONFLICT ... DO UPDATE SET ... [WHERE ...]`, as native RLS runs it:
/// PostgreSQL evaluates the WHERE on the conflicting row, then that row
/// must be visible (else `42501 new row violates row-level security policy
/// (USING expression) for table "t"`), then the updated row must pass the
/// check. Both guards stand in the first SET value, which PostgreSQL
/// computes after the WHERE passed. The SET values and the WHERE are read
/// as any statement is (with `excluded` the proposed row).
fn conflict_update(
    update: &mut sqlparser::ast::DoUpdate,
    name: &ObjectName,
    rel: &RelName,
    cx: &Context,
    outer: &Outer,
) -> Result<(), Refusal> {
    let columns = set_columns(&update.assignments)?;
    let mut items: Vec<SelectItem> = update
        .assignments
        .iter()
        .map(|a| SelectItem::UnnamedExpr(a.value.clone()))
        .collect();
    let has_where = update.selection.is_some();
    if let Some(w) = update.selection.take() {
        items.push(SelectItem::UnnamedExpr(w));
    }
    let (projection, _, _) = read_select(
        items,
        vec![table_ref(name, None), table_ref(name, Some("excluded"))],
        None,
        cx,
        outer,
    )?;
    let mut values = Vec::new();
    for item in projection {
        match item {
            SelectItem::UnnamedExpr(e) => values.push(e),
            _ => return Err(unsupported("this ON CONFLICT DO UPDATE")),
        }
    }
    if has_where {
        update.selection = values.pop();
    }
    for (a, v) in update.assignments.iter_mut().zip(values) {
        a.value = v;
    }
    let Some(f) = cx.access.filter(rel) else {
        return Ok(());
    };
    let me = refname(rel, None);
    let visible = substituted(f, rel, &|c| column_of(&me, c));
    // (Several computed filtered values stay refused here: the visibility
    // check below cannot wrap a multiple-column SET.)
    check_assignments(&mut update.assignments, &columns, f, rel, &me, false, cx)?;
    // USING: PostgreSQL checks that the conflicting row is visible before
    // it computes any SET value (in the table's column order, not the
    // statement's). Every value that may read the row runs only after the
    // check; a constant or a parameter cannot, and when every value is one
    // the first that is not DEFAULT carries the check.
    let using = |value: &Expr| -> Result<Expr, Refusal> {
        parse_expr(&format!(
            "CASE WHEN (CASE WHEN {visible} THEN true ELSE {} END) THEN {value} END",
            raise(USING_MARKER, rel)?
        ))
    };
    let mut carried = false;
    for a in update.assignments.iter_mut() {
        if !row_independent(&a.value) {
            a.value = using(&a.value)?;
            carried = true;
        }
    }
    if !carried {
        let (a, column) = update
            .assignments
            .iter_mut()
            .zip(&columns)
            .next()
            .ok_or_else(|| unsupported("ON CONFLICT DO UPDATE without SET"))?;
        // The guarded value keeps its type: an untyped constant takes its
        // column's, as PostgreSQL gives it when it assigns it; DEFAULT is
        // the column's default.
        let value = if is_default(&a.value) {
            let ty = column_type(rel, column, cx);
            default_value(rel, column, ty.as_deref(), cx)?.value
        } else if is_untyped(&a.value) {
            let Some(ty) = column_type(rel, column, cx) else {
                return Err(unsupported(
                    "an untyped SET value of a column of a type rowgate does not know",
                ));
            };
            cast_to(&a.value, &ty)?
        } else {
            a.value.clone()
        };
        a.value = using(&value)?;
    }
    Ok(())
}

/// A value that reads no row and cannot fail for one: a constant, a
/// parameter, `DEFAULT` (PostgreSQL folds a cast constant when it plans).
fn row_independent(value: &Expr) -> bool {
    match value {
        Expr::Nested(inner) => row_independent(inner),
        Expr::Value(_) => true,
        Expr::UnaryOp { expr, .. } | Expr::Cast { expr, .. } => {
            matches!(expr.as_ref(), Expr::Value(_))
        }
        other => is_default(other),
    }
}

/// An untyped constant or parameter (its type comes from where it goes).
fn is_untyped(value: &Expr) -> bool {
    matches!(
        value,
        Expr::Value(v) if matches!(
            v.value,
            Value::SingleQuotedString(_) | Value::EscapedStringLiteral(_) | Value::Null | Value::Placeholder(_)
        )
    )
}

/// `name [AS alias]` as a FROM item.
fn table_ref(name: &ObjectName, alias: Option<&str>) -> TableWithJoins {
    TableWithJoins {
        relation: TableFactor::Table {
            name: name.clone(),
            alias: alias.map(|a| sqlparser::ast::TableAlias {
                explicit: true,
                name: Ident::new(a),
                columns: Vec::new(),
                at: None,
            }),
            args: None,
            with_hints: Vec::new(),
            version: None,
            partitions: Vec::new(),
            with_ordinality: false,
            json_path: None,
            sample: None,
            index_hints: Vec::new(),
        },
        joins: Vec::new(),
    }
}

/// The name of the table a read-write member's `COPY ... FROM STDIN` goes
/// through (in `pg_temp`, created and dropped by the same query).
pub const COPY_STAGING: &str = "rowgate_copy";

/// `COPY t [(cols)] FROM STDIN [options]` of a read-write member, alone in
/// its query: the rows go to a temporary table of the same columns, then
/// into `t` by an INSERT whose first filtered value is guarded as any
/// INSERT's (so a row that would be hidden fails the whole COPY with native
/// RLS's message, and nothing of it stays), and the temporary table is
/// dropped: four statements, of which the session shows the client only
/// the COPY's (see [`is_copy_in`]). `None` when `statements` is not such
/// a COPY.
pub fn copy_in(statements: &[Statement], cx: &Context) -> Result<Option<Vec<Statement>>, Refusal> {
    use sqlparser::ast::{CopySource, CopyTarget};
    let [Statement::Copy {
        source,
        to: false,
        target: copy_target,
        values,
        ..
    }] = statements
    else {
        return Ok(None);
    };
    if !writes(cx) {
        return Ok(None);
    }
    if !matches!(copy_target, CopyTarget::Stdin) || !values.is_empty() {
        return Err(unsupported("COPY FROM other than STDIN"));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(unsupported("this COPY"));
    };
    let rel = target(table_name, cx)?;
    let all = cx
        .catalog
        .columns(&rel.schema, &rel.name)
        .ok_or_else(|| unsupported("COPY into a table of unknown columns"))?;
    let names: Vec<String> = if columns.is_empty() {
        all.iter().map(|(n, _)| n.clone()).collect()
    } else {
        columns.iter().map(crate::names::fold).collect()
    };
    let list = names
        .iter()
        .map(|n| crate::names::ident(n).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let staged = crate::names::ident(COPY_STAGING);
    let table = format!(
        "{}.{}",
        crate::names::ident(&rel.schema),
        crate::names::ident(&rel.name)
    );
    // The rows go in as an INSERT ... SELECT of the staged rows would:
    // each checked, a filtered column left out given its default.
    let staged_rows = format!("SELECT {list} FROM pg_temp.{staged}");
    let mut inserted = names.clone();
    let query = match cx.access.filter(&rel) {
        None => staged_rows,
        Some(f) => {
            let read_columns = filter_columns(f, &rel);
            let missing: Vec<String> = read_columns
                .iter()
                .filter(|c| !names.contains(c))
                .cloned()
                .collect();
            inserted.extend(missing.iter().cloned());
            let Some(Statement::Query(inner)) = super::parse(&staged_rows)?.pop() else {
                return Err(unsupported("this COPY"));
            };
            checked_query(&inner, &names, &missing, &read_columns, f, &rel, cx)?.to_string()
        }
    };
    let inserted = inserted
        .iter()
        .map(|n| crate::names::ident(n).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut copy = statements[0].clone();
    if let Statement::Copy { source, .. } = &mut copy {
        *source = CopySource::Table {
            table_name: ObjectName::from(vec![Ident::new("pg_temp"), staged.clone()]),
            columns: names.iter().map(|n| crate::names::ident(n)).collect(),
        };
    }
    // Each piece parsed on its own: a COPY FROM STDIN reads what follows it
    // in one text as its data.
    let one = |text: &str| -> Result<Statement, Refusal> {
        let mut parsed = super::parse(text)?;
        match (parsed.pop(), parsed.is_empty()) {
            (Some(s), true) => Ok(s),
            _ => Err(unsupported("this COPY")),
        }
    };
    // The client's options must read back as they were.
    if one(&copy.to_string())? != copy {
        return Err(unsupported("COPY options that cannot be forwarded exactly"));
    }
    Ok(Some(vec![
        one(&format!(
            "CREATE TEMPORARY TABLE {staged} AS SELECT {list} FROM {table} LIMIT 0"
        ))?,
        copy,
        one(&format!("INSERT INTO {table} ({inserted}) {query}"))?,
        one(&format!("DROP TABLE pg_temp.{staged}"))?,
    ]))
}

/// Whether forwarded statements are a [`copy_in`]: the client is shown
/// the second one's responses only.
pub fn is_copy_in(statements: &[Statement]) -> bool {
    matches!(
        statements,
        [Statement::CreateTable(create), Statement::Copy { to: false, .. }, Statement::Insert(_), Statement::Drop { .. }]
            if create.name.to_string() == COPY_STAGING
    )
}
