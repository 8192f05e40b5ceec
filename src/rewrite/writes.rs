//! Writes of read-write members: `INSERT ... VALUES`, `UPDATE` and
//! `DELETE`, with the semantics of native row-level security under a
//! `FOR ALL USING (filters) WITH CHECK (filters)` policy on every filtered
//! table:
//!
//! - UPDATE and DELETE reach only rows the member can see: the table's
//!   filter joins the statement's WHERE. Everything else the statement
//!   reads (its WHERE's subqueries, `FROM`/`USING` items, SET values,
//!   RETURNING) is rewritten as a read, through a SELECT of the same
//!   items that the read rewriter rewrites. The filter and the member's
//!   conditions can only stand side by side when every condition that may
//!   run at the target's scan is leakproof (the read rewriter would fence
//!   the target otherwise): a write whose conditions are not is refused.
//! - A new row (an INSERT's, an UPDATE's new version) must satisfy the
//!   table's filter: the check, the filter with the row's new values in
//!   place of its columns, guards one value of the row, and a row that
//!   fails it raises an error that the session turns into native RLS's
//!   `42501 new row violates row-level security policy for table "t"`
//!   (see [`CHECK_MARKER`]). It runs only for rows the statement writes,
//!   so for visible rows only.
//!
//! What is not provably the same as native RLS is refused: INSERT ...
//! SELECT, ON CONFLICT, writes in WITH, COPY FROM, views, tables with
//! rules, triggers of their own, or children, filtered columns left to
//! their defaults, and new values of filtered columns that are not plain
//! constants, parameters or columns.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Ident, Insert, ObjectName, Query,
    Select, SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Update,
    UpdateTableFromKind, Value, VisitMut, VisitorMut,
};

use super::{Context, Refusal};
use crate::names::RelName;
use crate::policy::{AccessLevel, Role};

/// What a failed check's error quotes: this, then the table's name in hex.
/// The session turns an upstream error that quotes it into native RLS's
/// `42501 new row violates row-level security policy for table "<t>"`.
pub const CHECK_MARKER: &str = "rowgate_check_";

/// Whether the session's user writes: a member whose effective access is
/// read-write.
pub fn writes(cx: &Context) -> bool {
    cx.access.role == Role::Member && cx.access.level.0 == AccessLevel::ReadWrite
}

/// The table a failed check names, from an upstream error message that
/// quotes [`CHECK_MARKER`].
pub fn checked_table(message: &str) -> Option<String> {
    let at = message.find(CHECK_MARKER)? + CHECK_MARKER.len();
    let hex_digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let bytes = hex::decode(hex_digits).ok()?;
    String::from_utf8(bytes).ok()
}

/// Rewrites a write statement of a read-write member in place.
pub(crate) fn rewrite(statement: &mut Statement, cx: &Context) -> Result<(), Refusal> {
    match statement {
        Statement::Insert(insert) => insert_values(insert, cx),
        Statement::Update(update) => update_rows(update, cx),
        Statement::Delete(delete) => delete_rows(delete, cx),
        _ => Err(Refusal::statement("this statement")),
    }
}

fn unsupported(what: &str) -> Refusal {
    Refusal::unsupported(format!("{what} (for read-write members)"))
}

/// The relation a write names, resolved as PostgreSQL would, and checked
/// writable: granted, and an ordinary table of the catalog without rules,
/// triggers of its own or children (a granted table without a rule under
/// `tables:` is all visible, so all writable, as for reads).
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
            "writing {rel}, which is not known to be an ordinary table without rules, triggers or children"
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
    selection: Option<Expr>,
}

fn read(
    items: Vec<SelectItem>,
    from: Vec<TableWithJoins>,
    selection: Option<Expr>,
    cx: &Context,
) -> Result<Read, Refusal> {
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
    let count = items.len();
    if count > 0 {
        select.projection = items;
    }
    select.from = from;
    select.selection = selection;
    super::rewrite_statement(&mut statement, cx)?;
    let Statement::Query(query) = statement else {
        return Err(unsupported("this statement"));
    };
    let SetExpr::Select(select) = *query.body else {
        return Err(unsupported("this statement"));
    };
    let Select {
        projection,
        from,
        selection,
        ..
    } = *select;
    if let Some(first) = from.first() {
        if fenced(&first.relation) {
            return Err(unsupported(
                "a write with a condition on its table that is not leakproof",
            ));
        }
    }
    Ok(Read {
        items: if count > 0 { projection } else { Vec::new() },
        from,
        selection,
    })
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
    struct Columns<'a> {
        rel: &'a str,
        value: &'a dyn Fn(&str) -> Expr,
        depth: usize,
    }
    impl VisitorMut for Columns<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                if let Expr::CompoundIdentifier(parts) = expr {
                    if let [table, column] = parts.as_slice() {
                        if table.value == self.rel {
                            *expr = Expr::Nested(Box::new((self.value)(&column.value)));
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut out = filter.clone();
    let _ = out.visit(&mut Columns {
        rel: &rel.name,
        value,
        depth: 0,
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
        Expr::Value(Value::Null.into())
    });
    seen.into_inner()
}

/// An error raised when evaluated, never at plan time (`random()` keeps
/// PostgreSQL from folding it), that names `rel` for the session.
fn violation(rel: &RelName) -> Expr {
    let marker = format!("{CHECK_MARKER}{}", hex::encode(rel.name.as_bytes()));
    let text =
        format!("CAST(CASE WHEN pg_catalog.random() < 2 THEN '{marker}' END AS integer) = 0");
    parse_expr(&text)
}

fn parse_expr(text: &str) -> Expr {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .expect("rowgate's own expression parses")
}

/// `value`, returned only when `check` holds: `CASE WHEN (CASE WHEN check
/// THEN true ELSE <violation> END) THEN value END`. A null check fails, as
/// native RLS's.
fn guarded(value: Expr, check: Expr, rel: &RelName) -> Expr {
    parse_expr(&format!(
        "CASE WHEN (CASE WHEN {check} THEN true ELSE {} END) THEN {value} END",
        violation(rel)
    ))
}

/// A new value of a filtered column as the check reads it (and the row
/// gets it): constants, parameters and columns as they are; an untyped
/// constant or parameter cast to the column's type, which is what
/// PostgreSQL makes of it when it assigns it. Anything else (a call, which
/// might not give the same value twice; a subquery) is refused.
fn checkable(value: &Expr, column_type: Option<&str>) -> Result<Expr, Refusal> {
    let untyped = matches!(
        value,
        Expr::Value(v) if matches!(
            v.value,
            Value::SingleQuotedString(_) | Value::EscapedStringLiteral(_) | Value::Null | Value::Placeholder(_)
        )
    );
    let plain = match value {
        Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::UnaryOp { expr, .. } => matches!(expr.as_ref(), Expr::Value(_)),
        Expr::Cast { expr, .. } => matches!(expr.as_ref(), Expr::Value(_)),
        Expr::Nested(inner) => return checkable(inner, column_type),
        _ => false,
    };
    if !plain {
        return Err(unsupported(
            "a new value of a filtered column other than a constant, a parameter or a column",
        ));
    }
    if !untyped {
        return Ok(value.clone());
    }
    let Some(ty) = column_type else {
        return Err(unsupported(
            "a filtered column of a type rowgate does not know",
        ));
    };
    Ok(parse_expr(&format!(
        "CAST({value} AS pg_catalog.{})",
        crate::names::ident(ty)
    )))
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

fn delete_rows(delete: &mut Delete, cx: &Context) -> Result<(), Refusal> {
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
    let rewritten = read(returning, from, delete.selection.take(), cx)?;
    let filter = cx
        .access
        .filter(&rel)
        .map(|f| substituted(f, &rel, &|c| column_of(&me, c)));
    delete.selection = and(filter, rewritten.selection);
    let rest: Vec<TableWithJoins> = rewritten.from.into_iter().skip(1).collect();
    debug_assert_eq!(rest.len(), using_count);
    delete.using = (!rest.is_empty()).then_some(rest);
    if had_returning {
        delete.returning = Some(rewritten.items);
    }
    Ok(())
}

/// `refname.column`.
fn column_of(refname: &Ident, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![refname.clone(), crate::names::ident(column)])
}

fn update_rows(update: &mut Update, cx: &Context) -> Result<(), Refusal> {
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
    let mut columns = Vec::new();
    for a in &update.assignments {
        match &a.target {
            AssignmentTarget::ColumnName(n) if n.0.len() == 1 => {
                let Some(ident) = n.0[0].as_ident() else {
                    return Err(unsupported("this SET target"));
                };
                columns.push(crate::names::fold(ident));
            }
            _ => return Err(unsupported("SET of several columns at once")),
        }
    }
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
    let rewritten = read(items, all_from, update.selection.take(), cx)?;
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
        update.selection = and(Some(using), rewritten.selection);
        // WITH CHECK: the new version, when a SET changes a column the
        // filter reads (else it is the visible row's own value).
        let read_columns = filter_columns(f, &rel);
        let mut new_values = Vec::new();
        for (column, a) in columns.iter().zip(&assignments) {
            if read_columns.contains(column) {
                let ty = column_type(&rel, column, cx);
                new_values.push((column.clone(), checkable(&a.value, ty.as_deref())?));
            }
        }
        if let Some((first, _)) = new_values.first().cloned() {
            let check = substituted(
                f,
                &rel,
                &|c| match new_values.iter().find(|(n, _)| n == c) {
                    Some((_, v)) => v.clone(),
                    None => column_of(&me, c),
                },
            );
            let at = columns
                .iter()
                .position(|c| *c == first)
                .expect("a filtered column that is set");
            let value = new_values[0].1.clone();
            assignments[at].value = guarded(value, check, &rel);
            for (column, v) in &new_values[1..] {
                let i = columns.iter().position(|c| c == column).expect("set");
                assignments[i].value = v.clone();
            }
        }
    } else {
        update.selection = rewritten.selection;
    }
    update.assignments = assignments;
    let rest: Vec<TableWithJoins> = rewritten.from.into_iter().skip(1).collect();
    update.from = (!rest.is_empty()).then_some(UpdateTableFromKind::AfterSet(rest));
    if returning_count > 0 {
        update.returning = Some(returned);
    }
    Ok(())
}

fn insert_values(insert: &mut Insert, cx: &Context) -> Result<(), Refusal> {
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
    if insert.on.is_some() {
        return Err(unsupported("INSERT ... ON CONFLICT"));
    }
    let TableObject::TableName(name) = &insert.table else {
        return Err(unsupported("this INSERT target"));
    };
    let rel = target(name, cx)?;
    if insert.table_alias.is_some() {
        return Err(unsupported("INSERT INTO ... AS alias"));
    }
    let columns: Vec<String> = insert
        .columns
        .iter()
        .map(|c| match c.0.as_slice() {
            [part] => part
                .as_ident()
                .map(crate::names::fold)
                .ok_or_else(|| unsupported("this INSERT column")),
            _ => Err(unsupported("this INSERT column")),
        })
        .collect::<Result<_, _>>()?;
    let Some(source) = insert.source.as_mut() else {
        return Err(unsupported("INSERT ... DEFAULT VALUES"));
    };
    if source.with.is_some() || !matches!(source.body.as_ref(), SetExpr::Values(_)) {
        return Err(unsupported("INSERT ... SELECT"));
    }
    // The values, and RETURNING, are read as any statement is.
    let mut statement = Statement::Query(source.clone());
    super::rewrite_statement(&mut statement, cx)?;
    let Statement::Query(rewritten) = statement else {
        return Err(unsupported("INSERT ... VALUES"));
    };
    **source = *rewritten;
    if let Some(returning) = insert.returning.as_mut() {
        let from = vec![TableWithJoins {
            relation: TableFactor::Table {
                name: name.clone(),
                alias: None,
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
        }];
        let r = read(std::mem::take(returning), from, None, cx)?;
        *returning = r.items;
    }
    // WITH CHECK: each row's values of the filtered columns, in the filter.
    let Some(f) = cx.access.filter(&rel) else {
        return Ok(());
    };
    let read_columns = filter_columns(f, &rel);
    let mut positions = Vec::new();
    for c in &read_columns {
        match columns.iter().position(|have| have == c) {
            Some(i) => positions.push((c.clone(), i)),
            None => {
                return Err(unsupported(&format!(
                    "an INSERT that leaves the filtered column {c} to its default (list it)"
                )))
            }
        }
    }
    let SetExpr::Values(values) = source.body.as_mut() else {
        return Err(unsupported("INSERT ... SELECT"));
    };
    for row in values.rows.iter_mut() {
        if row.len() != columns.len() {
            return Err(unsupported(
                "a VALUES row of another length than the column list",
            ));
        }
        let mut new_values = Vec::new();
        for (c, i) in &positions {
            let ty = column_type(&rel, c, cx);
            let v = checkable(&row[*i], ty.as_deref())?;
            row[*i] = v.clone();
            new_values.push((c.clone(), v));
        }
        let check = substituted(f, &rel, &|c| {
            new_values
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, v)| v.clone())
                .unwrap_or(Expr::Value(Value::Null.into()))
        });
        if let Some((_, first)) = positions.first() {
            let value = row[*first].clone();
            row[*first] = guarded(value, check, &rel);
        }
    }
    Ok(())
}
