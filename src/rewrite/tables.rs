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
    Expr, Ident, ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, TableAlias, TableFactor, VisitMut, VisitorMut, WildcardAdditionalOptions,
};

use super::catalog::{self, is_blocked_catalog, is_system_schema};
use super::{Context, Refusal};
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
    /// Schema-qualified tables replaced without an alias of their own: their
    /// derived table is named by the bare table name, so `schema.table.col`
    /// references must drop the schema.
    unaliased: Vec<RelName>,
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
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        match factor {
            TableFactor::Table { .. } => self.in_table += 1,
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::Function { .. }
            | TableFactor::TableFunction { .. } => {}
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

impl Walker<'_, '_> {
    fn replace_table(&mut self, factor: &mut TableFactor) -> Result<(), Refusal> {
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
        if args.is_some() {
            // `FROM f(...)`: a set-returning function, not a table.
            return Ok(());
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
        let member = self.cx.access.role == Role::Member;
        let rel = match parts.as_slice() {
            [single] => {
                let folded = fold(single);
                if self.scope.contains(&folded) {
                    return Ok(()); // a CTE
                }
                match catalog::resolve(self.cx.catalog, self.cx.search_path, &folded) {
                    Some(rel) => rel,
                    None if member => return Err(Refusal::UnknownTable(name.to_string())),
                    // Analysts read every table unfiltered; PostgreSQL reports
                    // a missing one itself.
                    None => return Ok(()),
                }
            }
            [schema, table] => RelName::new(fold(schema), fold(table)),
            _ => return Err(Refusal::unsupported("database-qualified table names")),
        };
        if is_blocked_catalog(&rel) {
            return Err(Refusal::Table(rel.to_string()));
        }
        if is_system_schema(&rel.schema) {
            return Ok(());
        }
        if !self.cx.access.may_read(&rel) {
            return Err(Refusal::Table(rel.to_string()));
        }
        let Some(predicate) = self.cx.access.filter(&rel) else {
            // Every row is visible: pin the schema so the upstream search
            // path cannot redirect the name.
            *name = rel.to_object_name();
            return Ok(());
        };
        let alias = match alias.take() {
            Some(alias) => alias,
            None => {
                if parts.len() == 2 {
                    self.state.unaliased.push(rel.clone());
                }
                TableAlias {
                    explicit: true,
                    name: parts[parts.len() - 1].clone(),
                    columns: vec![],
                    at: None,
                }
            }
        };
        let projection = vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())];
        let subquery =
            crate::policy::select_from(&rel, projection, Some(predicate.clone()), sample.take());
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(subquery),
            alias: Some(alias),
            sample: None,
        };
        Ok(())
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
    };
    match node.visit(&mut walker) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(()),
    }
}
