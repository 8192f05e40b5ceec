//! Filter injection: every table a query reads, wherever it stands, is
//! resolved, checked against the grants, and replaced by a derived table that
//! yields only the permitted rows (keeping the name or alias the rest of the
//! query uses). Replacing the table, rather than ANDing into an outer WHERE,
//! is what keeps every join kind exact.
//!
//! The walk is sqlparser's `VisitorMut`, so every node is reached. Each query
//! is handled by [`rewrite_query`], which scopes its CTE names exactly as
//! PostgreSQL does and then visits the rest of the query; a nested query met
//! on the way is handed to a recursive [`rewrite_query`] and skipped by the
//! outer walk (the `depth` counter), so each table is handled exactly once,
//! with the CTE scope in force at its position.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArguments, Ident, JoinOperator, LimitClause, ObjectNamePart,
    Offset, OffsetRows, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    TableAlias, TableFactor, Value, VisitMut, VisitorMut, WildcardAdditionalOptions,
};

use super::catalog::{self, is_blocked_catalog, is_system_schema};
use super::{functions, leakproof, Context, Refusal};
use crate::names::{fold, RelName};
use crate::policy::Role;

/// The CTE names visible at a point of a query, innermost first.
pub(crate) struct Scope<'p> {
    names: Vec<String>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    pub(crate) const ROOT: Scope<'static> = Scope {
        names: Vec::new(),
        parent: None,
    };

    fn child(&'p self, names: Vec<String>) -> Scope<'p> {
        Scope {
            names,
            parent: Some(self),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.parent.is_some_and(|p| p.contains(name))
    }
}

/// What one statement's rewrite collects for its final pass.
#[derive(Default)]
pub(crate) struct State {
    /// Tables replaced without an alias of their own: their derived table
    /// is named by the bare table name, so `schema.table.col` references
    /// must drop the schema.
    unaliased: Vec<RelName>,
    /// Every table read without an alias, and whether it was replaced.
    named: Vec<(RelName, bool)>,
    /// Which filtered tables need a fence: those a condition that may leak
    /// could run on (decided before the walk).
    pub(crate) verdict: leakproof::Verdict,
    /// Whether some filtered read got a fence.
    pub(crate) fenced_any: bool,
    /// The statement's `ROWS FROM (...)` stands as a call of the
    /// placeholder function.
    pub(crate) rows_from: bool,
    /// A call that rowgate answers itself was let through the function
    /// check: it must be answered (see `system::rewrite_call`).
    pub(crate) answered: std::cell::Cell<bool>,
}

impl State {
    /// Records a table read without an alias. Two such tables of one name
    /// from two schemas are fine in PostgreSQL, but not once one of them is
    /// a derived table named by that bare name: that is refused with advice.
    fn add_unaliased(&mut self, rel: &RelName, replaced: bool) -> Result<(), Refusal> {
        let clash = self.named.iter().find(|(r, was_replaced)| {
            r.name == rel.name && r.schema != rel.schema && (replaced || *was_replaced)
        });
        if let Some((other, _)) = clash {
            return Err(Refusal::unsupported(format!(
                "reading {other} and {rel} without aliases (give them aliases)"
            )));
        }
        self.named.push((rel.clone(), replaced));
        if replaced && !self.unaliased.contains(rel) {
            self.unaliased.push(rel.clone());
        }
        Ok(())
    }
}

/// Rewrites one query (and everything nested in it) in place.
pub(crate) fn rewrite_query(
    query: &mut Query,
    cx: &Context,
    scope: &Scope,
    state: &mut State,
) -> Result<(), Refusal> {
    check_query_clauses(query)?;
    let mut with = query.with.take();
    let result = rewrite_with_and_body(query, &mut with, cx, scope, state);
    query.with = with;
    result
}

fn rewrite_with_and_body(
    query: &mut Query,
    with: &mut Option<sqlparser::ast::With>,
    cx: &Context,
    scope: &Scope,
    state: &mut State,
) -> Result<(), Refusal> {
    let mut names = Vec::new();
    if let Some(with) = with {
        names = with
            .cte_tables
            .iter()
            .map(|c| fold(&c.alias.name))
            .collect();
        for (i, cte) in with.cte_tables.iter_mut().enumerate() {
            // A recursive WITH makes every name visible in every body; a plain
            // one only the names defined before this one.
            let visible = if with.recursive {
                names.clone()
            } else {
                names[..i].to_vec()
            };
            // A read-write member's data-modifying WITH (at the top, as
            // PostgreSQL allows it): the write is rewritten as one, on its
            // own (it sees no other WITH name).
            let query = cte.query.as_mut();
            if let (
                SetExpr::Insert(write) | SetExpr::Update(write) | SetExpr::Delete(write),
                true,
                None,
                None,
            ) = (
                query.body.as_mut(),
                super::writes::writes(cx),
                &query.order_by,
                &query.limit_clause,
            ) {
                if query.with.is_some() || !query.locks.is_empty() {
                    return Err(Refusal::unsupported("this data-modifying WITH"));
                }
                super::writes::rewrite(write, cx)?;
                continue;
            }
            rewrite_query(&mut cte.query, cx, &scope.child(visible), state)?;
        }
    }
    let body_scope = scope.child(names);
    let mut walker = Walker {
        cx,
        scope: &body_scope,
        state,
        depth: -1,
        in_table: 0,
        fenced: Vec::new(),
        replaced: false,
        reads: Vec::new(),
    };
    match query.visit(&mut walker) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Clauses of a query that are not reads, or not PostgreSQL.
fn check_query_clauses(query: &Query) -> Result<(), Refusal> {
    if !query.locks.is_empty() {
        return Err(Refusal::statement(
            "SELECT ... FOR UPDATE/SHARE (row locks)",
        ));
    }
    if query.for_clause.is_some() || query.settings.is_some() || query.format_clause.is_some() {
        return Err(Refusal::unsupported("this query clause"));
    }
    if !query.pipe_operators.is_empty() {
        return Err(Refusal::unsupported("pipe operators"));
    }
    check_set_expr(&query.body)
}

fn check_set_expr(body: &SetExpr) -> Result<(), Refusal> {
    match body {
        SetExpr::Select(select) => {
            if select.into.is_some() {
                return Err(Refusal::statement("SELECT INTO"));
            }
            Ok(())
        }
        SetExpr::Query(_) | SetExpr::Values(_) => Ok(()),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        SetExpr::Insert(_) => Err(Refusal::statement("INSERT")),
        SetExpr::Update(_) => Err(Refusal::statement("UPDATE")),
        SetExpr::Delete(_) => Err(Refusal::statement("DELETE")),
        SetExpr::Merge(_) => Err(Refusal::statement("MERGE")),
        SetExpr::Table(_) => Err(Refusal::unsupported("TABLE <name>")),
    }
}

struct Walker<'a, 's> {
    cx: &'a Context<'a>,
    scope: &'a Scope<'s>,
    state: &'a mut State,
    /// 0 inside the query being rewritten; 1 and more inside nested queries,
    /// which a recursive `rewrite_query` handles.
    depth: i32,
    /// How many `TableFactor::Table` nodes enclose the current node: a
    /// relation name met outside one is a position this walk does not know.
    in_table: u32,
    /// Aliases and tables of the fenced derived tables made for the SELECT
    /// being walked, for predicate pushdown when it is left.
    fenced: Vec<(String, RelName)>,
    /// Whether the SELECT being walked had a table replaced.
    replaced: bool,
    /// Tables the SELECT being walked reads: alias, table, and whether its
    /// derived table is unfenced (`None` for a table read whole).
    reads: Vec<(String, RelName, Option<bool>)>,
}

impl VisitorMut for Walker<'_, '_> {
    type Break = Refusal;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        self.depth += 1;
        if self.depth == 1 {
            if let Err(refusal) = rewrite_query(query, self.cx, self.scope, self.state) {
                return ControlFlow::Break(refusal);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<Refusal> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<Refusal> {
        if self.depth == 0 && select.into.is_some() {
            return ControlFlow::Break(Refusal::statement("SELECT INTO"));
        }
        // `SELECT 'a'\n'b'` is one string in PostgreSQL; sqlparser reads the
        // second as a quoted alias, which PostgreSQL has no syntax for.
        let string_alias = select.projection.iter().any(|item| {
            matches!(item, SelectItem::ExprWithAlias { alias, .. } if alias.quote_style == Some('\''))
        });
        if self.depth == 0 && string_alias {
            return ControlFlow::Break(Refusal::unsupported(
                "string constants continued on another line",
            ));
        }
        if self.depth == 0 && self.cx.access.role != Role::Admin {
            super::system::keep_answered_names(&mut select.projection);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
        if self.depth != 0 {
            return ControlFlow::Continue(());
        }
        if let Some(args) = set_config_args(expr) {
            return match super::classify::check_set_config(args, self.cx) {
                Ok(()) => ControlFlow::Continue(()),
                Err(refusal) => ControlFlow::Break(refusal),
            };
        }
        match self.check_expr(expr) {
            Ok(()) => ControlFlow::Continue(()),
            Err(refusal) => ControlFlow::Break(refusal),
        }
    }

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<Refusal> {
        if self.depth == 0 {
            if let Err(refusal) = functions::check_row_casts(select, self.cx.catalog) {
                return ControlFlow::Break(refusal);
            }
            if std::mem::take(&mut self.replaced) && mentions_system_column(select) {
                return ControlFlow::Break(Refusal::unsupported(
                    "system columns (ctid, xmin, ...) of a filtered table",
                ));
            }
            let fenced = std::mem::take(&mut self.fenced);
            if !fenced.is_empty() {
                push_down(select, &fenced, self.cx);
            }
            let reads = std::mem::take(&mut self.reads);
            keep_row_types(select, &reads, self.cx);
            drop_implied_references(select, &reads);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        match factor {
            TableFactor::Table { .. } => self.in_table += 1,
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::TableFunction { .. } => {}
            TableFactor::Function { name, args, .. } if self.depth == 0 => {
                if let Err(refusal) = self.check_from_function(&name.clone(), args.len()) {
                    return ControlFlow::Break(refusal);
                }
            }
            TableFactor::Function { .. } => {}
            _ => return ControlFlow::Break(Refusal::unsupported("this kind of FROM item")),
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        if let TableFactor::Table { .. } = factor {
            self.in_table -= 1;
            if self.depth == 0 {
                if let Err(refusal) = self.replace_table(factor) {
                    return ControlFlow::Break(refusal);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(
        &mut self,
        _relation: &mut sqlparser::ast::ObjectName,
    ) -> ControlFlow<Refusal> {
        if self.in_table == 0 {
            return ControlFlow::Break(Refusal::unsupported("a table reference in this position"));
        }
        ControlFlow::Continue(())
    }
}

/// The arguments of a call of `set_config` (unqualified or in
/// `pg_catalog`), when they are plain expressions.
fn set_config_args(expr: &mut Expr) -> Option<Vec<&mut Expr>> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let parts: Vec<String> = f
        .name
        .0
        .iter()
        .map(|p| p.as_ident().map(fold))
        .collect::<Option<_>>()?;
    match parts
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["set_config"] | ["pg_catalog", "set_config"] => {}
        _ => return None,
    }
    let FunctionArguments::List(list) = &mut f.args else {
        return None;
    };
    if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
        return None;
    }
    list.args
        .iter_mut()
        .map(|a| match a {
            sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(e)) => {
                Some(e)
            }
            _ => None,
        })
        .collect()
}

impl Walker<'_, '_> {
    /// Function calls and everything else that can run a function: attribute
    /// notation, operators, casts.
    fn check_expr(&self, expr: &Expr) -> Result<(), Refusal> {
        let cx = self.cx;
        let attribute = |name: &Ident| {
            functions::check_attribute(
                &fold(name),
                &cx.access.functions,
                cx.catalog,
                cx.search_path,
            )
        };
        let operator =
            |symbol: String| functions::check_operator(&symbol, cx.catalog, cx.search_path);
        match expr {
            Expr::Function(f) => {
                let args = match &f.args {
                    FunctionArguments::List(list) => list.args.len(),
                    _ => 0,
                };
                self.check_function(&f.name, args)
            }
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                attribute(&parts[parts.len() - 1])
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                access_chain.iter().try_for_each(|a| match a {
                    sqlparser::ast::AccessExpr::Dot(Expr::Identifier(i)) => attribute(i),
                    _ => Ok(()),
                })
            }
            Expr::BinaryOp {
                op: BinaryOperator::PGCustomBinaryOperator(parts),
                ..
            } => {
                if parts.len() == 2 && parts[0] == "pg_catalog" {
                    Ok(())
                } else {
                    Err(Refusal::unsupported(format!(
                        "the operator OPERATOR({})",
                        parts.join(".")
                    )))
                }
            }
            // `U&"..."` identifiers, which sqlparser reads as `U & "..."`.
            Expr::BinaryOp {
                left,
                op: BinaryOperator::BitwiseAnd,
                right,
            } if matches!(left.as_ref(), Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("u"))
                && matches!(right.as_ref(), Expr::Identifier(i) if i.quote_style == Some('"')) =>
            {
                Err(Refusal::unsupported("U&\"...\" identifiers"))
            }
            Expr::BinaryOp { op, .. } => operator(op.to_string()),
            Expr::UnaryOp { op, .. } => operator(op.to_string()),
            // Operators PostgreSQL applies without their symbol written.
            Expr::InList { .. }
            | Expr::InSubquery { .. }
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..) => operator("=".into()).and(operator("<>".into())),
            Expr::Between { .. } => operator(">=".into()).and(operator("<=".into())),
            Expr::Like { .. } => operator("~~".into()).and(operator("!~~".into())),
            Expr::ILike { .. } => operator("~~*".into()).and(operator("!~~*".into())),
            Expr::AnyOp { compare_op, .. } | Expr::AllOp { compare_op, .. } => {
                operator(compare_op.to_string())
            }
            Expr::Cast { data_type, .. } => {
                functions::check_domain(data_type, cx.catalog, cx.search_path)
            }
            _ => Ok(()),
        }
    }

    /// A function called in FROM: the calls rowgate answers itself are
    /// answered in expressions only, so here they are refused.
    fn check_from_function(
        &self,
        name: &sqlparser::ast::ObjectName,
        args: usize,
    ) -> Result<(), Refusal> {
        if super::system::answered_function(name, self.cx) {
            return Err(Refusal::Function(name.to_string()));
        }
        // `ROWS FROM (...)`: its calls are checked as arguments.
        let placeholder = matches!(name.0.as_slice(),
            [p] if p.as_ident().is_some_and(|i| i.quote_style.is_none() && i.value == super::normalize::ROWS_FROM));
        if placeholder && self.state.rows_from {
            return Ok(());
        }
        self.check_function(name, args)
    }

    fn check_function(
        &self,
        name: &sqlparser::ast::ObjectName,
        args: usize,
    ) -> Result<(), Refusal> {
        if super::system::answered_function(name, self.cx) {
            self.state.answered.set(true);
        }
        if super::system::answers(name, self.cx) {
            return Ok(());
        }
        functions::check(
            name,
            args,
            &self.cx.access.functions,
            self.cx.catalog,
            self.cx.search_path,
        )
    }

    /// The alias of the derived table standing for `rel`: the one written,
    /// or the table's own name (so the rest of the query reads it as
    /// before).
    fn derived_alias(
        &mut self,
        written: Option<TableAlias>,
        rel: &RelName,
        parts: &[Ident],
    ) -> Result<TableAlias, Refusal> {
        match written {
            Some(alias) => Ok(alias),
            None => {
                self.state.add_unaliased(rel, true)?;
                Ok(TableAlias {
                    explicit: true,
                    name: parts[parts.len() - 1].clone(),
                    columns: vec![],
                    at: None,
                })
            }
        }
    }

    fn replace_table(&mut self, factor: &mut TableFactor) -> Result<(), Refusal> {
        let fence = self.state.verdict.fences(factor);
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            with_ordinality: _,
            partitions,
            json_path,
            sample,
            index_hints,
        } = factor
        else {
            return Ok(());
        };
        if let Some(args) = args {
            // `FROM f(...)`: a set-returning function, not a table.
            return self.check_from_function(name, args.args.len());
        }
        if !with_hints.is_empty()
            || version.is_some()
            || !partitions.is_empty()
            || json_path.is_some()
            || !index_hints.is_empty()
        {
            return Err(Refusal::unsupported("table hints"));
        }
        let parts: Vec<Ident> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => Ok(i.clone()),
                ObjectNamePart::Function(_) => Err(Refusal::unsupported("computed table names")),
            })
            .collect::<Result<_, _>>()?;
        // sqlparser reads `FROM ONLY t` as a table `only` aliased `t`.
        if parts.len() == 1
            && parts[0].quote_style.is_none()
            && parts[0].value.eq_ignore_ascii_case("only")
        {
            return Err(Refusal::unsupported("FROM ONLY"));
        }
        let member = self.cx.access.role == Role::Member;
        let rel = match parts.as_slice() {
            [single] => {
                let folded = fold(single);
                if self.scope.contains(&folded) {
                    return Ok(()); // a CTE
                }
                // Schemas the member has no use of are skipped, as
                // PostgreSQL skips schemas without USAGE. (Functions,
                // types and operators are checked along the whole path:
                // upstream they resolve with every schema.)
                let usable: Vec<String> = self
                    .cx
                    .search_path
                    .iter()
                    .filter(|s| {
                        self.cx.access.may_use_schema(s) || self.cx.catalog.usable_by_all(s)
                    })
                    .cloned()
                    .collect();
                match catalog::resolve(self.cx.catalog, &usable, &folded) {
                    Some(rel) => rel,
                    None if member => return Err(Refusal::UnknownTable(name.to_string())),
                    // Analysts read every table unfiltered; PostgreSQL reports
                    // a missing one itself.
                    None => return Ok(()),
                }
            }
            [schema, table] => RelName::new(fold(schema), fold(table)),
            // The current database's name may qualify a name; it is
            // dropped (any other database is an error in PostgreSQL).
            [database, schema, table]
                if self.cx.catalog.database() == Some(fold(database).as_str()) =>
            {
                *name = sqlparser::ast::ObjectName::from(vec![schema.clone(), table.clone()]);
                RelName::new(fold(schema), fold(table))
            }
            _ => return Err(Refusal::unsupported("database-qualified table names")),
        };
        let view = if is_system_schema(&rel.schema) {
            super::system::catalog_view(&rel, self.cx)?
        } else {
            None
        };
        if let Some(view) = view {
            // A catalog relation as the member sees it: no fence, since
            // what it hides is names, which native RLS does not hide at all.
            let alias = self.derived_alias(alias.take(), &rel, &parts)?;
            if sample.is_some() {
                return Err(Refusal::unsupported("TABLESAMPLE of a catalog relation"));
            }
            *factor = TableFactor::Derived {
                lateral: false,
                subquery: Box::new(view),
                alias: Some(alias),
                sample: None,
            };
            return Ok(());
        }
        if is_blocked_catalog(&rel) {
            return Err(Refusal::Table(rel.to_string()));
        }
        // rowgate's own schema (its audit table) is for admins only.
        if rel.schema == super::OWN_SCHEMA && self.cx.access.role != Role::Admin {
            return Err(Refusal::Table(rel.to_string()));
        }
        let predicate = if is_system_schema(&rel.schema) {
            return Ok(());
        } else if !self.cx.access.may_read(&rel) {
            return Err(Refusal::Table(rel.to_string()));
        } else {
            self.cx.access.filter(&rel)
        };
        let Some(predicate) = predicate else {
            if alias.is_none() {
                self.state.add_unaliased(&rel, false)?;
            }
            // Every row is visible: pin the schema so the upstream search
            // path cannot redirect the name.
            let read_as = alias
                .as_ref()
                .map(|a| fold(&a.name))
                .unwrap_or_else(|| rel.name.clone());
            if alias.as_ref().is_none_or(|a| a.columns.is_empty()) {
                self.reads.push((read_as, rel.clone(), None));
            }
            *name = rel.to_object_name();
            return Ok(());
        };
        self.replaced = true;
        let alias = self.derived_alias(alias.take(), &rel, &parts)?;
        let projection = vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())];
        let predicate = super::shape::shape_references(&rel, predicate, self.cx.catalog);
        let mut subquery =
            crate::policy::select_from(&rel, projection, Some(predicate), sample.take());
        if fence {
            self.state.fenced_any = true;
            // `OFFSET NULL` keeps PostgreSQL from flattening the derived
            // table or pushing the query's own conditions into it, so they
            // are evaluated only on rows the filter let through, as native
            // RLS evaluates its security quals first. Conditions that are
            // leakproof are moved inside by `push_down`, which keeps index
            // use. (`NULL`, not `0`: a constant to cast at plan time would
            // keep the plan above from running in parallel.)
            subquery.limit_clause = Some(LimitClause::LimitOffset {
                limit: None,
                offset: Some(Offset {
                    value: Expr::value(Value::Null),
                    rows: OffsetRows::None,
                }),
                limit_by: vec![],
            });
            if alias.columns.is_empty() {
                self.fenced.push((fold(&alias.name), rel.clone()));
            }
        }
        if alias.columns.is_empty() {
            self.reads
                .push((fold(&alias.name), rel.clone(), Some(!fence)));
        }
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(subquery),
            alias: Some(alias),
            sample: None,
        };
        Ok(())
    }
}

/// A whole-row reference to a filtered table (`SELECT m FROM merchants m`,
/// `row_to_json(m)`) names the derived table that stands for it, whose row
/// type is an anonymous record; PostgreSQL gives the table's row type. The
/// reference is cast to the table's type, which keeps the value and the
/// column name. Only where every FROM item's columns are known, so that no
/// column of that name takes precedence.
fn keep_row_types(select: &mut Select, reads: &[(String, RelName, Option<bool>)], cx: &Context) {
    use sqlparser::ast::{DataType, ObjectName};
    let replaced: Vec<&(String, RelName, Option<bool>)> =
        reads.iter().filter(|r| r.2.is_some()).collect();
    if replaced.is_empty() {
        return;
    }
    let items: usize = select.from.iter().map(|t| 1 + t.joins.len()).sum();
    if items != reads.len()
        || select.from.iter().any(|t| {
            std::iter::once(&t.relation)
                .chain(t.joins.iter().map(|j| &j.relation))
                .any(|f| matches!(f, TableFactor::NestedJoin { .. }))
        })
    {
        return;
    }
    let mut columns = std::collections::HashSet::new();
    for (_, rel, _) in reads {
        match cx.catalog.columns(&rel.schema, &rel.name) {
            Some(cols) => columns.extend(cols.into_iter().map(|(c, _)| c)),
            None => return,
        }
    }
    let targets: Vec<(String, &RelName)> = replaced
        .iter()
        .filter(|(alias, _, _)| !columns.contains(alias))
        .map(|(alias, rel, _)| (alias.clone(), rel))
        .collect();
    if targets.is_empty() {
        return;
    }
    let as_row = |expr: &mut Expr| {
        if let Expr::Identifier(i) = expr {
            let name = fold(i);
            if let Some((_, rel)) = targets.iter().find(|(a, _)| *a == name) {
                *expr = Expr::Cast {
                    kind: sqlparser::ast::CastKind::DoubleColon,
                    expr: Box::new(expr.clone()),
                    data_type: DataType::Custom(
                        ObjectName::from(vec![
                            crate::names::ident(&rel.schema),
                            crate::names::ident(&rel.name),
                        ]),
                        vec![],
                    ),
                    format: None,
                };
            }
        }
    };
    for item in select.projection.iter_mut() {
        super::map_exprs_outside_subqueries(item, as_row);
    }
    if let Some(selection) = select.selection.as_mut() {
        super::map_exprs_outside_subqueries(selection, as_row);
    }
    if let Some(having) = select.having.as_mut() {
        super::map_exprs_outside_subqueries(having, as_row);
    }
}

/// After a statement is rewritten: `schema.table.column` references to a
/// table that is now a derived table named `table` drop the schema.
pub(crate) fn fix_qualified_references<V: VisitMut>(node: &mut V, state: &State) {
    if state.unaliased.is_empty() {
        return;
    }
    struct Fixer<'a>(&'a [RelName]);
    impl Fixer<'_> {
        fn strip(&self, idents: &mut Vec<Ident>, min_len: usize) {
            if idents.len() >= min_len {
                let rel = RelName::new(fold(&idents[0]), fold(&idents[1]));
                if self.0.contains(&rel) {
                    idents.remove(0);
                }
            }
        }
    }
    impl VisitorMut for Fixer<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(idents) = expr {
                self.strip(idents, 3);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
            for item in &mut select.projection {
                if let SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) = item
                {
                    let mut idents: Vec<Ident> = name
                        .0
                        .iter()
                        .filter_map(|p| p.as_ident().cloned())
                        .collect();
                    if idents.len() == name.0.len() && idents.len() == 2 {
                        self.strip(&mut idents, 2);
                        if idents.len() == 1 {
                            name.0 = idents.into_iter().map(ObjectNamePart::Identifier).collect();
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Fixer(&state.unaliased));
}

/// Rewrites the queries nested in a node that is not itself a query (the
/// parameters of `EXECUTE`, say): each is a read like any other.
pub(crate) fn rewrite_node<V: VisitMut>(
    node: &mut V,
    cx: &Context,
    state: &mut State,
) -> Result<(), Refusal> {
    let mut walker = Walker {
        cx,
        scope: &Scope::ROOT,
        state,
        depth: 0,
        in_table: 0,
        fenced: Vec::new(),
        replaced: false,
        reads: Vec::new(),
    };
    match node.visit(&mut walker) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Moves the WHERE conjuncts that are leakproof (by
/// [`super::leakproof`]) and read one fenced table only into that table's
/// derived table, where PostgreSQL can use them for index scans. Only into
/// derived tables that no outer join makes nullable: there a WHERE and an
/// inner predicate differ.
fn push_down(select: &mut Select, fenced: &[(String, RelName)], cx: &Context) {
    let Some(selection) = select.selection.take() else {
        return;
    };
    let single = select.from.len() == 1 && select.from[0].joins.is_empty();
    // What the conjuncts' columns are: the fenced tables' columns under
    // their aliases; anything else unknown.
    let mut items = Vec::new();
    for twj in &select.from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            let alias = match factor {
                TableFactor::Derived { alias: Some(a), .. }
                | TableFactor::Table { alias: Some(a), .. } => fold(&a.name),
                TableFactor::Table { name, .. } => name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(fold)
                    .unwrap_or_default(),
                _ => String::new(),
            };
            match fenced.iter().find(|(a, _)| *a == alias) {
                Some((_, rel)) => items.push(leakproof::table_item(cx.catalog, alias, rel)),
                None => items.push(leakproof::Item {
                    alias,
                    rel: None,
                    columns: None,
                    kind: leakproof::ItemKind::Other,
                    outputs: None,
                }),
            }
        }
    }
    let mut judge = leakproof::Judge::with_levels(cx, leakproof::Levels::single(items));
    let original = selection.clone();
    let mut kept = Vec::new();
    let mut moved = false;
    for conjunct in split_and(selection) {
        let target = match qualifier(&conjunct) {
            Some(Some(q)) if fenced.iter().any(|(a, _)| *a == q) => Some(q),
            Some(None) if single => match &select.from[0].relation {
                TableFactor::Derived { alias: Some(a), .. }
                    if fenced.iter().any(|(f, _)| *f == fold(&a.name)) =>
                {
                    Some(fold(&a.name))
                }
                _ => None,
            },
            _ => None,
        };
        let target = target.filter(|_| judge.leakproof(&conjunct));
        let pushed = target
            .and_then(|t| inner_only_derived(select, &t))
            .map(|subquery| {
                if let SetExpr::Select(inner) = subquery.body.as_mut() {
                    let existing = inner.selection.take();
                    inner.selection = crate::policy::and_all(
                        existing
                            .into_iter()
                            .chain([unqualified(conjunct.clone())])
                            .collect(),
                    );
                    true
                } else {
                    false
                }
            });
        if pushed == Some(true) {
            moved = true;
        } else {
            kept.push(conjunct);
        }
    }
    // Nothing moved: the WHERE stays exactly as written.
    select.selection = if moved {
        crate::policy::and_all(kept)
    } else {
        Some(original)
    };
}

/// Drops from an unfenced table's filter a `references` condition that the
/// SELECT's own inner join already implies: `o.merchant_id IN (SELECT id
/// FROM merchants WHERE <merchants' filters>)` when the SELECT joins `o` to
/// merchants read through their filters (or whole, when every merchant is
/// visible) on `o.merchant_id = m.id`. Every row of `o` that reaches the
/// output matched a visible merchant, so the result is the same; the
/// planner then does not count the same restriction twice. Only where every
/// join of the SELECT is an inner one, and only for unfenced tables (their
/// other conditions are leakproof, so seeing the rows the dropped condition
/// would have removed reveals nothing).
fn drop_implied_references(select: &mut Select, reads: &[(String, RelName, Option<bool>)]) {
    if reads.len() < 2 {
        return;
    }
    let inner_only = select.from.iter().all(|twj| {
        twj.joins.iter().all(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            )
        })
    });
    if !inner_only {
        return;
    }
    // The equalities the SELECT requires: top-level conjuncts of WHERE and
    // of inner joins' ON.
    let mut equalities: Vec<((String, String), (String, String))> = Vec::new();
    let mut conditions: Vec<&Expr> = select.selection.iter().collect();
    for twj in &select.from {
        for j in &twj.joins {
            if let JoinOperator::Join(sqlparser::ast::JoinConstraint::On(e))
            | JoinOperator::Inner(sqlparser::ast::JoinConstraint::On(e)) = &j.join_operator
            {
                conditions.push(e);
            }
        }
    }
    for condition in conditions {
        for conjunct in leakproof::conjuncts(condition) {
            let column = |e: &Expr| match e {
                Expr::CompoundIdentifier(p) if p.len() == 2 => Some((fold(&p[0]), fold(&p[1]))),
                Expr::Nested(inner) => match inner.as_ref() {
                    Expr::CompoundIdentifier(p) if p.len() == 2 => Some((fold(&p[0]), fold(&p[1]))),
                    _ => None,
                },
                _ => None,
            };
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = conjunct
            {
                if let (Some(l), Some(r)) = (column(left), column(right)) {
                    equalities.push((l.clone(), r.clone()));
                    equalities.push((r, l));
                }
            }
        }
    }
    if equalities.is_empty() {
        return;
    }
    for twj in &mut select.from {
        let factors =
            std::iter::once(&mut twj.relation).chain(twj.joins.iter_mut().map(|j| &mut j.relation));
        for factor in factors {
            let TableFactor::Derived {
                alias: Some(alias),
                subquery,
                ..
            } = factor
            else {
                continue;
            };
            let name = fold(&alias.name);
            let Some((_, rel, Some(true))) = reads.iter().find(|(a, _, _)| *a == name) else {
                continue;
            };
            let SetExpr::Select(inner) = subquery.body.as_mut() else {
                continue;
            };
            let Some(selection) = inner.selection.take() else {
                continue;
            };
            let mut kept = Vec::new();
            for conjunct in split_and(selection) {
                let implied = match &conjunct {
                    Expr::InSubquery {
                        expr,
                        subquery: target,
                        negated: false,
                    } => references_target(expr, target, rel).is_some_and(
                        |(column, target_rel, key)| {
                            reads.iter().any(|(other, other_rel, _)| {
                                *other != name
                                    && *other_rel == target_rel
                                    && equalities.contains(&(
                                        (name.clone(), column.clone()),
                                        (other.clone(), key.clone()),
                                    ))
                            })
                        },
                    ),
                    _ => false,
                };
                if !implied {
                    kept.push(conjunct);
                }
            }
            inner.selection = crate::policy::and_all(kept);
        }
    }
}

/// For a `references` condition of `rel` (`rel.column IN (SELECT
/// target.key FROM schema.target ...)`): the column, the target table and
/// its key.
fn references_target(
    expr: &Expr,
    target: &Query,
    rel: &RelName,
) -> Option<(String, RelName, String)> {
    let Expr::CompoundIdentifier(parts) = expr else {
        return None;
    };
    let [table, column] = parts.as_slice() else {
        return None;
    };
    if fold(table) != rel.name {
        return None;
    }
    let r = super::shape::referenced(target)?;
    Some((fold(column), r.table, r.key))
}

/// The subquery of the fenced derived table aliased `alias`, if it stands
/// where only inner joins reach it.
fn inner_only_derived<'s>(select: &'s mut Select, alias: &str) -> Option<&'s mut Query> {
    for twj in &mut select.from {
        let inner_only = twj.joins.iter().all(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            )
        });
        if !inner_only {
            continue;
        }
        let factors =
            std::iter::once(&mut twj.relation).chain(twj.joins.iter_mut().map(|j| &mut j.relation));
        for factor in factors {
            if let TableFactor::Derived {
                alias: Some(a),
                subquery,
                ..
            } = factor
            {
                if fold(&a.name) == alias {
                    return Some(subquery);
                }
            }
        }
    }
    None
}

fn split_and(expr: Expr) -> Vec<Expr> {
    leakproof::conjuncts(&expr).into_iter().cloned().collect()
}

/// The one qualifier of every column a conjunct reads: `Some(Some(q))`
/// when all are `q.column`, `Some(None)` when all are unqualified, `None`
/// for a mix, for none, for longer names or when it holds a subquery.
fn qualifier(expr: &Expr) -> Option<Option<String>> {
    let mut seen: Option<Option<String>> = None;
    let mut mixed = false;
    let broke = super::exprs_outside_subqueries(expr, |e| {
        let q = match e {
            Expr::Identifier(_) => None,
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => Some(fold(&parts[0])),
            Expr::CompoundIdentifier(_)
            | Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. } => return ControlFlow::Break(()),
            _ => return ControlFlow::Continue(()),
        };
        match &seen {
            None => seen = Some(q),
            Some(s) if *s != q => mixed = true,
            Some(_) => {}
        }
        ControlFlow::Continue(())
    });
    if broke || mixed {
        return None;
    }
    seen
}

/// The conjunct with its column references unqualified, as it reads inside
/// the derived table (whose only FROM item is the base table).
fn unqualified(mut expr: Expr) -> Expr {
    struct Strip;
    impl VisitorMut for Strip {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e {
                if parts.len() == 2 {
                    *e = Expr::Identifier(parts[1].clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Strip);
    expr
}

/// Whether a SELECT (not counting its nested queries) names a system column,
/// which a derived table does not carry.
fn mentions_system_column(select: &Select) -> bool {
    const SYSTEM: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];
    super::exprs_outside_subqueries(select, |e| {
        let last = match e {
            Expr::Identifier(i) => Some(i),
            Expr::CompoundIdentifier(parts) => parts.last(),
            _ => None,
        };
        if last.is_some_and(|i| SYSTEM.contains(&fold(i).as_str())) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
}
