//! Which of a member's conditions may run on rows their filters hide: the
//! one place that decides, by PostgreSQL's own rule. PostgreSQL lets a
//! condition run before a table's row-level security filter only when it
//! cannot leak (`contain_leaked_vars`): every function, operator and cast
//! it executes on a column value is `LEAKPROOF` in the catalog, after
//! PostgreSQL's type resolution (column types, unknown-typed literals taking
//! the other side's type, declared parameter types, implicit casts). A
//! subquery, or any construct this module does not model, counts as
//! leaking when it involves a column: what cannot be proved safe is unsafe.
//!
//! Two questions are answered here:
//! - [`judge_statement`]: which tables of a statement are read by a
//!   condition that PostgreSQL could evaluate at their scan and that may
//!   leak? Those need a fence; the others are planned as native row-level
//!   security plans them.
//! - [`Judge::leakproof`]: may this one conjunct move inside a fenced
//!   table's filter?
//!
//! Offline there are no column types and no type catalog, so nothing that
//! applies an operator to a column is provably leakproof.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    JoinConstraint, JoinOperator, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    TableWithJoins, UnaryOperator, Value, Visit, Visitor,
};

use super::catalog::{self, Catalog};
use super::types::{self, Oid, Ty, TypeCatalog};
use super::Context;
use crate::names::{fold, RelName};

/// The type of an expression as far as it is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ETy {
    Known(Oid),
    /// An untyped literal or parameter: takes its type from its context.
    Unknown,
    /// Not worked out.
    Opaque,
}

impl ETy {
    fn ty(self) -> Option<Ty> {
        match self {
            ETy::Known(t) if t != 0 => Some(Ty::Known(t)),
            ETy::Unknown => Some(Ty::Unknown),
            _ => None,
        }
    }
}

/// What one expression is: its type, whether it reads a column, and
/// whether it could leak a column's value.
#[derive(Clone, Copy, Debug)]
struct Info {
    ty: ETy,
    vars: bool,
    leaky: bool,
}

impl Info {
    const fn constant(ty: ETy) -> Self {
        Info {
            ty,
            vars: false,
            leaky: false,
        }
    }
}

/// One FROM item of a query level.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    /// The name the query uses for it (alias or table name), folded.
    pub alias: String,
    /// The relation, for a table (to match `schema.table.column`).
    pub rel: Option<RelName>,
    /// Column names (folded) and types; `None` when not known.
    pub columns: Option<Vec<(String, Oid)>>,
    /// What it is, for deciding where a condition that reads it can run.
    pub kind: ItemKind,
    /// For a derived table or CTE, its output columns when known.
    pub(crate) outputs: Option<Vec<Output>>,
}

/// One output column of a derived table or CTE, as the conditions of the
/// enclosing query see it: PostgreSQL pushes a condition on it down into
/// the nested query (or pulls the nested query up), evaluating the output's
/// expression where the condition then runs.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    name: String,
    ty: Oid,
    /// Computed above every scan (an aggregate or window function): a
    /// condition on it stays above them.
    above: bool,
    /// Its expression may leak.
    leaky: bool,
    /// The tables its expression reads (`None`: not all known).
    tables: Option<Vec<usize>>,
}

/// What one column reference reads, for deciding where a condition on it
/// may run.
#[derive(Clone, Debug)]
enum Target {
    Table(usize),
    Output(Output),
    Function,
    Unknown,
}

/// What a FROM item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A table (or view) read by name: the address of its `TableFactor` in
    /// the statement being judged, which the rewriter recognizes.
    Table(usize),
    /// A set-returning function: it holds no hidden rows.
    Function,
    /// A derived table, CTE or anything else whose rows come from tables
    /// this judge does not follow.
    Other,
}

/// The FROM items of each enclosing query level, innermost last.
#[derive(Clone, Debug, Default)]
pub(crate) struct Levels(Vec<Vec<Item>>);

impl Levels {
    pub(crate) fn single(items: Vec<Item>) -> Self {
        Levels(vec![items])
    }

    /// The type of a column reference, `Opaque` when it cannot be pinned,
    /// and the item it reads (level, index), `None` when that is not known.
    fn column(&self, parts: &[Ident]) -> (ETy, Option<(usize, usize)>) {
        let names: Vec<String> = parts.iter().map(fold).collect();
        for (depth, level) in self.0.iter().enumerate().rev() {
            let (qualifier, column) = match names.as_slice() {
                [c] => (None, c),
                [q, c] => (Some(vec![q.as_str()]), c),
                [s, t, c] => (Some(vec![s.as_str(), t.as_str()]), c),
                _ => return (ETy::Opaque, None),
            };
            let mut found = Vec::new();
            let mut maybe = false;
            for (index, item) in level.iter().enumerate() {
                let named = match &qualifier {
                    None => true,
                    Some(q) if q.len() == 1 => item.alias == q[0],
                    Some(q) => item
                        .rel
                        .as_ref()
                        .is_some_and(|r| r.schema == q[0] && r.name == q[1] && item.alias == q[1]),
                };
                if !named {
                    continue;
                }
                match &item.columns {
                    Some(cols) => {
                        if let Some((_, t)) = cols.iter().find(|(n, _)| n == column) {
                            found.push((*t, index));
                        } else if qualifier.is_some() {
                            // `alias.name` that is no column: attribute
                            // notation, a function call.
                            return (ETy::Opaque, None);
                        }
                    }
                    None => maybe = true,
                }
            }
            match (found.as_slice(), maybe) {
                ([(t, index)], false) => return (ETy::Known(*t), Some((depth, *index))),
                ([], false) => continue,
                _ => return (ETy::Opaque, None),
            }
        }
        (ETy::Opaque, None)
    }
}

/// Decides, for one statement, whether its conditions are leakproof.
pub(crate) struct Judge<'a> {
    cx: &'a Context<'a>,
    types: Option<&'a TypeCatalog>,
    /// Declared parameter types (`$1` is index 0; 0 = unspecified).
    params: Vec<Oid>,
    levels: Levels,
    /// CTE names in scope, innermost last, with their outputs when known.
    ctes: Vec<Vec<(String, Option<Vec<Output>>)>>,
    /// Whether some condition that could run at a table scan may leak and
    /// cannot be pinned to the tables it reads: every table needs a fence.
    leaky: bool,
    /// Tables (their `TableFactor` addresses) read by a condition that may
    /// leak: each needs a fence.
    fenced: HashSet<usize>,
    /// What the expression being judged reads.
    refs: Vec<Target>,
    /// Whether it reads something that cannot be pinned to an item.
    unattributed: bool,
}

/// Where a statement's filtered tables need a fence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every table needs one.
    pub everywhere: bool,
    /// These tables (by `TableFactor` address) need one.
    pub tables: HashSet<usize>,
}

impl Verdict {
    /// Whether the table at this address needs a fence.
    pub fn fences(&self, factor: &TableFactor) -> bool {
        self.everywhere
            || self
                .tables
                .contains(&(factor as *const TableFactor as usize))
    }
}

/// Which tables of `statement` need a fence: those read by a condition
/// PostgreSQL could evaluate at their scan that is not leakproof; every
/// table when such a condition reads something not pinned to a table (a
/// subquery, a derived table's column, a construct not modelled).
pub fn judge_statement(statement: &Statement, cx: &Context) -> Verdict {
    let mut judge = Judge::new(cx);
    if let Statement::Prepare { data_types, .. } = statement {
        judge.params = data_types
            .iter()
            .map(|t| judge.type_oid(t).map_or(u32::MAX, |(o, _)| o))
            .collect();
    }
    // Every outermost query the statement holds, each with its nested ones.
    judge.nested(statement);
    Verdict {
        everywhere: judge.leaky,
        tables: judge.fenced,
    }
}

impl<'a> Judge<'a> {
    pub(crate) fn new(cx: &'a Context<'a>) -> Self {
        Judge {
            cx,
            types: cx.catalog.types().filter(|t| !t.is_empty()),
            params: cx.params.to_vec(),
            levels: Levels::default(),
            ctes: Vec::new(),
            leaky: false,
            fenced: HashSet::new(),
            refs: Vec::new(),
            unattributed: false,
        }
    }

    /// A judge of single conjuncts over the given FROM items.
    pub(crate) fn with_levels(cx: &'a Context<'a>, levels: Levels) -> Self {
        let mut judge = Judge::new(cx);
        judge.levels = levels;
        judge
    }

    /// Whether `expr` is leakproof over the judge's FROM items.
    pub(crate) fn leakproof(&mut self, expr: &Expr) -> bool {
        let (before, fenced) = (self.leaky, self.fenced.len());
        let info = self.info(expr);
        let clean = !info.leaky && self.leaky == before && self.fenced.len() == fenced;
        self.leaky = before;
        clean
    }

    fn type_oid(&self, t: &DataType) -> Option<(Oid, bool)> {
        self.types?.type_named(&t.to_string())
    }

    /// Judges a query; for one in FROM (a derived table or CTE), returns its
    /// outputs when known.
    fn query(&mut self, query: &Query, from_item: bool) -> Option<Vec<Output>> {
        let names: Vec<(String, Option<Vec<Output>>)> = query
            .with
            .iter()
            .flat_map(|w| w.cte_tables.iter().map(|c| (fold(&c.alias.name), None)))
            .collect();
        self.ctes.push(names);
        if let Some(with) = &query.with {
            for (i, cte) in with.cte_tables.iter().enumerate() {
                // Non-recursive CTEs are inlined: their outputs are pushdown
                // targets like a derived table's.
                let outputs = self.query(&cte.query, true);
                let names: Vec<Ident> = cte.alias.columns.iter().map(|c| c.name.clone()).collect();
                let outputs = renamed(outputs, &names);
                if !with.recursive {
                    if let Some(slot) = self.ctes.last_mut().and_then(|c| c.get_mut(i)) {
                        slot.1 = outputs;
                    }
                }
            }
        }
        let outputs = self.set_expr(&query.body, from_item);
        // ORDER BY, LIMIT and the like run above every scan; only the
        // queries nested in them need judging.
        if let Some(order) = &query.order_by {
            self.nested(order);
        }
        if let Some(limit) = &query.limit_clause {
            self.nested(limit);
        }
        self.ctes.pop();
        outputs
    }

    fn set_expr(&mut self, body: &SetExpr, from_item: bool) -> Option<Vec<Output>> {
        match body {
            SetExpr::Select(select) => self.select(select, from_item),
            SetExpr::Query(q) => self.query(q, from_item),
            SetExpr::SetOperation { left, right, .. } => {
                // A condition on the result is pushed into every branch:
                // each output is what all branches make of it.
                let l = self.set_expr(left, from_item);
                let r = self.set_expr(right, from_item);
                let (l, r) = (l?, r?);
                if l.len() != r.len() {
                    return None;
                }
                Some(
                    l.into_iter()
                        .zip(r)
                        .map(|(a, b)| Output {
                            ty: if a.ty == b.ty { a.ty } else { 0 },
                            above: a.above && b.above,
                            leaky: a.leaky || b.leaky,
                            tables: a.tables.zip(b.tables).map(|(mut x, y)| {
                                x.extend(y);
                                x
                            }),
                            name: a.name,
                        })
                        .collect(),
                )
            }
            SetExpr::Values(values) => {
                self.nested(values);
                None
            }
            _ => {
                self.leaky = true;
                None
            }
        }
    }

    fn select(&mut self, select: &Select, from_item: bool) -> Option<Vec<Output>> {
        let mut items = Vec::new();
        let mut conditions = Vec::new();
        for twj in &select.from {
            self.from(twj, &mut items, &mut conditions);
        }
        self.levels.0.push(items);
        for condition in conditions {
            match condition {
                Condition::On(e) => self.qual(e),
                Condition::Using(left, right, columns) => self.using(&left, &right, &columns),
                Condition::Opaque => self.leaky = true,
            }
        }
        if let Some(selection) = &select.selection {
            self.qual(selection);
        }
        if let Some(having) = &select.having {
            for conjunct in conjuncts(having) {
                if self.has_aggregate(conjunct) {
                    self.nested(conjunct);
                } else {
                    self.qual(conjunct);
                }
            }
        }
        let mut outputs = Some(Vec::new());
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }
                    if from_item =>
                {
                    let name = match item {
                        SelectItem::ExprWithAlias { alias, .. } => fold(alias),
                        _ => column_name(e),
                    };
                    let output = self.output(name, e);
                    if let Some(list) = &mut outputs {
                        list.push(output);
                    }
                }
                SelectItem::Wildcard(_) if from_item => {
                    let level = self.levels.0.last().cloned().unwrap_or_default();
                    let expanded: Option<Vec<Vec<Output>>> =
                        level.iter().map(item_outputs).collect();
                    match (&mut outputs, expanded) {
                        (Some(list), Some(all)) => list.extend(all.into_iter().flatten()),
                        _ => outputs = None,
                    }
                }
                SelectItem::QualifiedWildcard(
                    sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) if from_item => {
                    let alias = name.0.last().and_then(|p| p.as_ident()).map(fold);
                    let level = self.levels.0.last().cloned().unwrap_or_default();
                    let found = level
                        .iter()
                        .find(|i| Some(&i.alias) == alias.as_ref())
                        .and_then(item_outputs);
                    match (&mut outputs, found) {
                        (Some(list), Some(found)) if name.0.len() == 1 => list.extend(found),
                        _ => outputs = None,
                    }
                }
                other => {
                    self.nested(other);
                    outputs = None;
                }
            }
        }
        self.nested(&select.group_by);
        self.nested(&select.distinct);
        self.nested(&select.named_window);
        if select.qualify.is_some() || select.prewhere.is_some() || !select.lateral_views.is_empty()
        {
            self.leaky = true;
        }
        self.levels.0.pop();
        outputs.filter(|_| from_item)
    }

    /// What an output expression of a nested query is to the conditions of
    /// the enclosing query.
    /// [`Judge::info`] of `expr`, with what it reads and whether something
    /// of it could not be pinned, apart from what the caller collects.
    fn traced(&mut self, expr: &Expr) -> (Info, Vec<Target>, bool) {
        let saved_refs = std::mem::take(&mut self.refs);
        let saved_unattributed = std::mem::take(&mut self.unattributed);
        let info = self.info(expr);
        let refs = std::mem::replace(&mut self.refs, saved_refs);
        let unattributed = std::mem::replace(&mut self.unattributed, saved_unattributed);
        (info, refs, unattributed)
    }

    fn output(&mut self, name: String, expr: &Expr) -> Output {
        let (info, refs, unattributed) = self.traced(expr);
        let mut tables = (!unattributed).then(Vec::new);
        for target in refs {
            match (target, &mut tables) {
                (Target::Table(a), Some(t)) => t.push(a),
                (Target::Output(o), Some(t)) => match o.tables {
                    Some(more) => t.extend(more),
                    None => tables = None,
                },
                (Target::Function, _) => {}
                _ => tables = None,
            }
        }
        Output {
            name,
            ty: match info.ty {
                ETy::Known(t) => t,
                _ => 0,
            },
            above: self.has_aggregate(expr),
            leaky: info.leaky,
            tables,
        }
    }

    /// The FROM items of one FROM entry and its join conditions.
    fn from<'q>(
        &mut self,
        twj: &'q TableWithJoins,
        items: &mut Vec<Item>,
        conditions: &mut Vec<Condition<'q>>,
    ) {
        self.factor(&twj.relation, items, conditions);
        for join in &twj.joins {
            let left_len = items.len();
            self.factor(&join.relation, items, conditions);
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => Some(c),
                JoinOperator::CrossJoin(c) => Some(c),
                _ => {
                    conditions.push(Condition::Opaque);
                    None
                }
            };
            match constraint {
                Some(JoinConstraint::On(e)) => conditions.push(Condition::On(e)),
                Some(JoinConstraint::Using(cols)) => conditions.push(Condition::Using(
                    items[..left_len].to_vec(),
                    items[left_len..].to_vec(),
                    cols.iter()
                        .map(|c| c.0.last().and_then(|p| p.as_ident()).map(fold))
                        .collect(),
                )),
                Some(JoinConstraint::None) | None => {}
                Some(JoinConstraint::Natural) => conditions.push(Condition::Opaque),
            }
        }
    }

    fn factor<'q>(
        &mut self,
        factor: &'q TableFactor,
        items: &mut Vec<Item>,
        conditions: &mut Vec<Condition<'q>>,
    ) {
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(fold)
                    .collect();
                let alias_name = alias
                    .as_ref()
                    .map(|a| fold(&a.name))
                    .or_else(|| parts.last().cloned())
                    .unwrap_or_default();
                let renamed = alias.as_ref().is_some_and(|a| !a.columns.is_empty());
                if args.is_some() || renamed || parts.len() != name.0.len() {
                    self.nested(factor);
                    let kind = if args.is_some() {
                        ItemKind::Function
                    } else {
                        ItemKind::Other
                    };
                    items.push(Item {
                        alias: alias_name,
                        rel: None,
                        columns: None,
                        kind,
                        outputs: None,
                    });
                    return;
                }
                let cte =
                    match parts.as_slice() {
                        [single] => self.ctes.iter().rev().find_map(|c| {
                            c.iter().find(|(n, _)| n == single).map(|(_, o)| o.clone())
                        }),
                        _ => None,
                    };
                if let Some(outputs) = cte {
                    items.push(derived_item(alias_name, outputs));
                    return;
                }
                let rel = match parts.as_slice() {
                    [single] => catalog::resolve(self.cx.catalog, self.cx.search_path, single),
                    [schema, table] => Some(RelName::new(schema.clone(), table.clone())),
                    _ => None,
                };
                let columns = rel
                    .as_ref()
                    .and_then(|r| self.cx.catalog.columns(&r.schema, &r.name));
                let kind = if rel.is_some() {
                    ItemKind::Table(factor as *const TableFactor as usize)
                } else {
                    ItemKind::Other
                };
                items.push(Item {
                    alias: alias_name,
                    rel,
                    columns,
                    kind,
                    outputs: None,
                });
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let outputs = self.query(subquery, true);
                let outputs = match alias {
                    Some(a) => renamed(
                        outputs,
                        &a.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    ),
                    None => outputs,
                };
                items.push(derived_item(
                    alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    outputs,
                ));
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    // The join's columns under one name: not modelled.
                    self.leaky = true;
                }
                self.from(table_with_joins, items, conditions);
            }
            TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::TableFunction { alias, .. } => {
                self.nested(factor);
                items.push(Item {
                    alias: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                    rel: None,
                    columns: None,
                    kind: ItemKind::Function,
                    outputs: None,
                });
            }
            _ => self.leaky = true,
        }
    }

    /// `JOIN ... USING (c)`: `left.c = right.c` with the types of each side.
    fn using(&mut self, left: &[Item], right: &[Item], columns: &[Option<String>]) {
        let side = |items: &[Item], c: &str| {
            let mut found = items.iter().filter_map(|i| match &i.columns {
                Some(cols) => cols.iter().find(|(n, _)| n == c).map(|(_, t)| Some(*t)),
                None => Some(None),
            });
            match (found.next(), found.next()) {
                (Some(Some(t)), None) => Some(t),
                _ => None,
            }
        };
        for column in columns {
            let pair = column
                .as_deref()
                .and_then(|c| Some((side(left, c)?, side(right, c)?)));
            let ok = pair.is_some_and(|(l, r)| {
                self.operator_leakproof("=", Some((ETy::Known(l), true)), (ETy::Known(r), true))
                    == Some(true)
            });
            if !ok {
                self.leaky = true;
            }
        }
    }

    /// A condition PostgreSQL may evaluate at a scan: when it may leak,
    /// the tables it reads need a fence.
    fn qual(&mut self, expr: &Expr) {
        let (info, refs, unattributed) = self.traced(expr);
        if unattributed && info.leaky {
            self.leaky = true;
            return;
        }
        for target in refs {
            match target {
                Target::Table(address) if info.leaky => {
                    self.fenced.insert(address);
                }
                // Pushed down, the condition evaluates the output's
                // expression at the nested query's scans.
                Target::Output(o) if !o.above && (info.leaky || o.leaky) => match o.tables {
                    Some(tables) => self.fenced.extend(tables),
                    None => self.leaky = true,
                },
                // Whether its outputs leak is not known.
                Target::Unknown => self.leaky = true,
                _ => {}
            }
        }
    }

    /// Judges the queries nested in a node that is not itself a condition.
    fn nested<T: Visit>(&mut self, node: &T) {
        struct Nested<'j, 'a> {
            judge: &'j mut Judge<'a>,
        }
        impl Visitor for Nested<'_, '_> {
            type Break = ();
            fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
                self.judge.query(query, false);
                ControlFlow::Continue(())
            }
        }
        // Each nested query judges its own nested queries: visit only the
        // outermost ones.
        struct Outer<'j, 'a> {
            inner: Nested<'j, 'a>,
            depth: usize,
        }
        impl Visitor for Outer<'_, '_> {
            type Break = ();
            fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
                if self.depth == 0 {
                    let _ = self.inner.pre_visit_query(query);
                }
                self.depth += 1;
                ControlFlow::Continue(())
            }
            fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
                self.depth -= 1;
                ControlFlow::Continue(())
            }
        }
        let _ = node.visit(&mut Outer {
            inner: Nested { judge: self },
            depth: 0,
        });
    }

    /// Whether an expression calls an aggregate or window function outside
    /// nested queries: it is then computed above the scans. A name that is
    /// also a plain function, or one qualified with another schema than
    /// `pg_catalog`, does not count.
    fn has_aggregate(&self, expr: &Expr) -> bool {
        let aggregate = |f: &sqlparser::ast::Function| {
            let Some(name) = function_name(f).filter(|_| !qualified_elsewhere(f)) else {
                return false;
            };
            match self.types {
                Some(t) => t.is_aggregate(&name, self.cx.search_path),
                None => DEFAULT_AGGREGATES.contains(&name.as_str()),
            }
        };
        super::exprs_outside_subqueries(expr, |e| match e {
            Expr::Function(f)
                if f.over.is_some()
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                    || aggregate(f) =>
            {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })
    }

    /// Type, column use and leakiness of an expression, judging the
    /// queries nested in it on the way.
    fn info(&mut self, expr: &Expr) -> Info {
        let expr_kind = expr;
        match expr {
            Expr::Identifier(i) => self.var(std::slice::from_ref(i)),
            Expr::CompoundIdentifier(parts) => self.var(parts),
            Expr::Nested(e) => self.info(e),
            Expr::Collate { expr, .. } => self.info(expr),
            Expr::Value(v) => Info::constant(self.literal(&v.value)),
            Expr::TypedString(t) => Info::constant(
                self.type_oid(&t.data_type)
                    .map_or(ETy::Opaque, |(o, _)| ETy::Known(o)),
            ),
            Expr::Interval(i) => {
                // A constant; anything else is read by interval's input
                // function, which is not leakproof.
                let parts = [i.value.as_ref()];
                let info = self.all_safe(&parts, ETy::Known(types::INTERVAL));
                Info {
                    leaky: info.leaky || info.vars,
                    ..info
                }
            }
            Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsTrue(e)
            | Expr::IsNotTrue(e)
            | Expr::IsFalse(e)
            | Expr::IsNotFalse(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotUnknown(e) => self.all_safe(&[e], ETy::Known(types::BOOL)),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.all_safe(&[expr], ETy::Known(types::BOOL)),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr,
            } => {
                // PostgreSQL's grammar folds a sign into a numeric literal.
                if let Expr::Value(v) = expr.as_ref() {
                    if matches!(v.value, Value::Number(..)) {
                        return Info::constant(self.literal(&v.value));
                    }
                }
                let inner = self.info(expr);
                let symbol = if *op == UnaryOperator::Minus {
                    "-"
                } else {
                    "+"
                };
                self.apply_operator(symbol, None, inner)
            }
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    self.all_safe(&[left, right], ETy::Known(types::BOOL))
                }
                _ => {
                    let (l, r) = (self.info(left), self.info(right));
                    match operator_symbol(op) {
                        Some(symbol) => self.apply_operator(&symbol, Some(l), r),
                        None => opaque(&[l, r]),
                    }
                }
            },
            Expr::IsDistinctFrom(l, r) | Expr::IsNotDistinctFrom(l, r) => {
                let (l, r) = (self.info(l), self.info(r));
                let eq = self.apply_operator("=", Some(l), r);
                Info {
                    ty: ETy::Known(types::BOOL),
                    ..eq
                }
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let symbol = if *negated { "<>" } else { "=" };
                let x = self.info(expr);
                let mut out = Info::constant(ETy::Known(types::BOOL));
                out.vars = x.vars;
                let infos: Vec<Info> = list.iter().map(|e| self.info(e)).collect();
                // PostgreSQL compares with the list's common type, one of
                // the types present: every pairing is judged.
                let mut pairs: Vec<Info> = infos.clone();
                pairs.push(Info { vars: false, ..x });
                for item in pairs {
                    let r = self.apply_operator(symbol, Some(x), item);
                    out.vars |= r.vars;
                    out.leaky |= r.leaky;
                }
                out
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                let (x, lo, hi) = (self.info(expr), self.info(low), self.info(high));
                let a = self.apply_operator(">=", Some(x), lo);
                let b = self.apply_operator("<=", Some(x), hi);
                Info {
                    ty: ETy::Known(types::BOOL),
                    vars: a.vars || b.vars,
                    leaky: a.leaky || b.leaky,
                }
            }
            Expr::Like {
                expr,
                pattern,
                escape_char: None,
                any: false,
                negated,
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char: None,
                any: false,
                negated,
            } => {
                let (x, p) = (self.info(expr), self.info(pattern));
                let symbol = match (matches!(expr_kind, Expr::ILike { .. }), *negated) {
                    (false, false) => "~~",
                    (false, true) => "!~~",
                    (true, false) => "~~*",
                    (true, true) => "!~~*",
                };
                self.apply_operator(symbol, Some(x), p)
            }
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op,
                right,
            } if !matches!(right.as_ref(), Expr::Subquery(_)) => {
                let l = self.info(left);
                let r = self.info(right);
                // `x op ANY (array)`: the operator takes the element type;
                // an untyped array literal is an array of the left's type.
                let elem = match r.ty {
                    ETy::Unknown => ETy::Unknown,
                    ETy::Known(t) => self
                        .types
                        .and_then(|c| c.element(t))
                        .map_or(ETy::Opaque, ETy::Known),
                    ETy::Opaque => ETy::Opaque,
                };
                let symbol = operator_symbol(compare_op).unwrap_or_default();
                let res = self.apply_operator(&symbol, Some(l), Info { ty: elem, ..r });
                Info {
                    ty: ETy::Known(types::BOOL),
                    ..res
                }
            }
            Expr::Cast {
                expr, data_type, ..
            } => {
                let inner = self.info(expr);
                let target = self.type_oid(data_type);
                let ty = target.map_or(ETy::Opaque, |(t, _)| ETy::Known(t));
                if !inner.vars {
                    return Info {
                        ty,
                        vars: false,
                        leaky: inner.leaky,
                    };
                }
                let safe = match (inner.ty, target) {
                    (ETy::Known(from), Some((to, false))) => self
                        .types
                        .and_then(|c| c.cast_is_leakproof(from, to))
                        .unwrap_or(false),
                    _ => false,
                };
                Info {
                    ty,
                    vars: true,
                    leaky: inner.leaky || !safe,
                }
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut out = Info::constant(ETy::Opaque);
                let mut result_types = Vec::new();
                if let Some(op) = operand {
                    // `CASE x WHEN v` compares with `=`.
                    let x = self.info(op);
                    for when in conditions {
                        let v = self.info(&when.condition);
                        let r = self.apply_operator("=", Some(x), v);
                        out.vars |= r.vars;
                        out.leaky |= r.leaky;
                    }
                } else {
                    for when in conditions {
                        let c = self.info(&when.condition);
                        out.vars |= c.vars;
                        out.leaky |= c.leaky;
                    }
                }
                for result in conditions
                    .iter()
                    .map(|w| &w.result)
                    .chain(else_result.as_deref())
                {
                    let r = self.info(result);
                    out.vars |= r.vars;
                    out.leaky |= r.leaky;
                    result_types.push(r.ty);
                }
                let known: Vec<ETy> = result_types
                    .into_iter()
                    .filter(|t| *t != ETy::Unknown)
                    .collect();
                if let Some(first) = known.first() {
                    if known.iter().all(|t| t == first) {
                        out.ty = *first;
                    }
                }
                out
            }
            Expr::Function(f) => self.function(f),
            Expr::Array(array) => {
                let infos: Vec<Info> = array.elem.iter().map(|e| self.info(e)).collect();
                let elem = infos.iter().map(|i| i.ty).find(|t| *t != ETy::Unknown);
                let ty = match elem {
                    Some(ETy::Known(t)) => self
                        .types
                        .and_then(|c| c.array_of(t))
                        .map_or(ETy::Opaque, ETy::Known),
                    _ => ETy::Opaque,
                };
                Info {
                    ty,
                    vars: infos.iter().any(|i| i.vars),
                    leaky: infos.iter().any(|i| i.leaky),
                }
            }
            Expr::Tuple(items) => {
                let infos: Vec<Info> = items.iter().map(|e| self.info(e)).collect();
                Info {
                    ty: ETy::Opaque,
                    vars: infos.iter().any(|i| i.vars),
                    leaky: infos.iter().any(|i| i.leaky),
                }
            }
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => {
                // A SubLink: PostgreSQL counts it as leaking, and what it
                // reads of the enclosing query is not followed here.
                self.query(q, false);
                self.unattributed = true;
                Info {
                    ty: ETy::Opaque,
                    vars: true,
                    leaky: true,
                }
            }
            Expr::InSubquery { expr, subquery, .. } => {
                self.info(expr);
                self.query(subquery, false);
                self.unattributed = true;
                Info {
                    ty: ETy::Known(types::BOOL),
                    vars: true,
                    leaky: true,
                }
            }
            other => {
                // Not modelled: leaking if it reads a column (or a table).
                self.nested(other);
                let vars = reads_anything(other);
                if vars {
                    self.unattributed = true;
                }
                Info {
                    ty: ETy::Opaque,
                    vars,
                    leaky: vars,
                }
            }
        }
    }

    fn var(&mut self, parts: &[Ident]) -> Info {
        let (ty, item) = self.levels.column(parts);
        let column = parts.last().map(fold).unwrap_or_default();
        match item.and_then(|(depth, index)| self.levels.0.get(depth)?.get(index)) {
            Some(item) => {
                let target = match (&item.kind, &item.outputs) {
                    (ItemKind::Table(a), _) => Target::Table(*a),
                    (ItemKind::Function, _) => Target::Function,
                    (ItemKind::Other, Some(outputs)) => outputs
                        .iter()
                        .find(|o| o.name == column)
                        .map_or(Target::Unknown, |o| Target::Output(o.clone())),
                    (ItemKind::Other, None) => Target::Unknown,
                };
                self.refs.push(target);
            }
            None => self.unattributed = true,
        }
        Info {
            ty,
            vars: true,
            leaky: false,
        }
    }

    /// Children that are safe nodes in PostgreSQL's rule (boolean logic,
    /// null tests): leaky only through what they contain.
    fn all_safe(&mut self, children: &[&Expr], ty: ETy) -> Info {
        let mut out = Info::constant(ty);
        for child in children {
            let i = self.info(child);
            out.vars |= i.vars;
            out.leaky |= i.leaky;
        }
        out
    }

    fn literal(&self, value: &Value) -> ETy {
        match value {
            Value::Number(n, _) => {
                if n.contains(['.', 'e', 'E']) {
                    ETy::Known(types::NUMERIC)
                } else if n.parse::<i32>().is_ok() {
                    ETy::Known(types::INT4)
                } else if n.parse::<i64>().is_ok() {
                    ETy::Known(types::INT8)
                } else if n.chars().all(|c| c.is_ascii_digit()) {
                    ETy::Known(types::NUMERIC)
                } else {
                    ETy::Opaque
                }
            }
            Value::SingleQuotedString(_)
            | Value::EscapedStringLiteral(_)
            | Value::DollarQuotedString(_)
            | Value::NationalStringLiteral(_)
            | Value::Null => ETy::Unknown,
            Value::Boolean(_) => ETy::Known(types::BOOL),
            Value::Placeholder(p) => {
                let declared = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .map(|i| self.params.get(i).copied().unwrap_or(0));
                match declared {
                    Some(0) => ETy::Unknown,
                    Some(u32::MAX) | None => ETy::Opaque,
                    Some(t) => ETy::Known(t),
                }
            }
            _ => ETy::Opaque,
        }
    }

    /// An operator applied to evaluated operands.
    fn apply_operator(&mut self, symbol: &str, left: Option<Info>, right: Info) -> Info {
        let vars = left.is_some_and(|l| l.vars) || right.vars;
        let inner_leaky = left.is_some_and(|l| l.leaky) || right.leaky;
        let resolved =
            self.resolve_operator(symbol, left.map(|l| (l.ty, l.vars)), (right.ty, right.vars));
        match resolved {
            Some((result, leakproof)) => Info {
                ty: result,
                vars,
                leaky: inner_leaky || (vars && !leakproof),
            },
            None => Info {
                ty: ETy::Opaque,
                vars,
                leaky: inner_leaky || vars,
            },
        }
    }

    fn operator_leakproof(
        &self,
        symbol: &str,
        left: Option<(ETy, bool)>,
        right: (ETy, bool),
    ) -> Option<bool> {
        self.resolve_operator(symbol, left, right).map(|(_, lp)| lp)
    }

    /// The operator's result type and whether running it (with the
    /// implicit casts of its non-constant operands) is leakproof.
    fn resolve_operator(
        &self,
        symbol: &str,
        left: Option<(ETy, bool)>,
        right: (ETy, bool),
    ) -> Option<(ETy, bool)> {
        let catalog = self.types?;
        let l = match left {
            Some((t, _)) => Some(t.ty()?),
            None => None,
        };
        let r = right.0.ty()?;
        let op = catalog.operator(symbol, l, r, self.cx.search_path)?;
        let operands: Vec<(Ty, bool)> = left
            .map(|(_, v)| (l.unwrap_or(Ty::Unknown), v))
            .into_iter()
            .chain([(r, right.1)])
            .collect();
        let casts_safe = operands.iter().zip(&op.args).all(|((t, vars), declared)| {
            !vars
                || match t {
                    Ty::Known(t) => catalog.coercion_is_leakproof(*t, *declared),
                    Ty::Unknown => true,
                }
        });
        let ty = if op.result == 0 {
            ETy::Opaque
        } else {
            ETy::Known(op.result)
        };
        Some((ty, op.leakproof && casts_safe))
    }

    fn function(&mut self, f: &sqlparser::ast::Function) -> Info {
        let name = function_name(f);
        let mut args = Vec::new();
        let mut irregular = f.over.is_some()
            || f.filter.is_some()
            || !f.within_group.is_empty()
            || !matches!(f.parameters, FunctionArguments::None);
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                self.query(q, false);
                irregular = true;
            }
            FunctionArguments::List(list) => {
                if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                    irregular = true;
                }
                for arg in &list.args {
                    match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(self.info(e)),
                        other => {
                            self.nested(other);
                            self.unattributed = true;
                            irregular = true;
                            args.push(Info {
                                ty: ETy::Opaque,
                                vars: true,
                                leaky: true,
                            });
                        }
                    }
                }
            }
        }
        let vars = args.iter().any(|a| a.vars);
        let inner_leaky = args.iter().any(|a| a.leaky);
        let no_args = matches!(f.args, FunctionArguments::None);
        // SQL value functions: `CURRENT_DATE`, `CURRENT_TIMESTAMP`, ...
        if no_args {
            let ty = match name.as_deref() {
                Some("current_date") => ETy::Known(types::DATE),
                Some("current_timestamp") => ETy::Known(types::TIMESTAMPTZ),
                Some("localtimestamp") => ETy::Known(types::TIMESTAMP),
                Some("current_time") => ETy::Known(types::TIMETZ),
                Some("localtime") => ETy::Known(types::TIME),
                _ => ETy::Opaque,
            };
            return Info::constant(ty);
        }
        let resolved = match (&name, irregular || qualified_elsewhere(f)) {
            (Some(n), false) => {
                let inputs: Option<Vec<Ty>> = args.iter().map(|a| a.ty.ty()).collect();
                inputs.and_then(|inputs| {
                    let catalog = self.types?;
                    let r = catalog.function(n, &inputs, self.cx.search_path)?;
                    let casts_safe =
                        args.iter()
                            .zip(inputs.iter())
                            .zip(&r.args)
                            .all(|((a, t), d)| {
                                !a.vars
                                    || match t {
                                        Ty::Known(t) => catalog.coercion_is_leakproof(*t, *d),
                                        Ty::Unknown => true,
                                    }
                            });
                    Some((r.result, r.leakproof && casts_safe))
                })
            }
            _ => None,
        };
        match resolved {
            Some((result, leakproof)) => Info {
                ty: if result == 0 {
                    ETy::Opaque
                } else {
                    ETy::Known(result)
                },
                vars,
                leaky: inner_leaky || (vars && !leakproof),
            },
            None => Info {
                ty: ETy::Opaque,
                vars,
                leaky: inner_leaky || vars,
            },
        }
    }
}

/// Aggregates known without a catalog.
const DEFAULT_AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max"];

enum Condition<'q> {
    On(&'q Expr),
    Using(Vec<Item>, Vec<Item>, Vec<Option<String>>),
    Opaque,
}

/// A derived table or CTE, with its outputs when known.
fn derived_item(alias: String, outputs: Option<Vec<Output>>) -> Item {
    Item {
        alias,
        rel: None,
        columns: outputs
            .as_ref()
            .map(|o| o.iter().map(|o| (o.name.clone(), o.ty)).collect()),
        kind: ItemKind::Other,
        outputs,
    }
}

/// The outputs a `*` takes from one FROM item.
fn item_outputs(item: &Item) -> Option<Vec<Output>> {
    match (&item.kind, &item.columns, &item.outputs) {
        (_, _, Some(outputs)) => Some(outputs.clone()),
        (ItemKind::Table(a), Some(columns), None) => Some(
            columns
                .iter()
                .map(|(name, ty)| Output {
                    name: name.clone(),
                    ty: *ty,
                    above: false,
                    leaky: false,
                    tables: Some(vec![*a]),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Outputs under the column names an alias gives them (`AS d(a, b)`).
fn renamed(outputs: Option<Vec<Output>>, names: &[Ident]) -> Option<Vec<Output>> {
    let mut outputs = outputs?;
    if names.len() > outputs.len() {
        return None;
    }
    for (o, n) in outputs.iter_mut().zip(names) {
        o.name = fold(n);
    }
    Some(outputs)
}

/// The name PostgreSQL gives an output without an alias (`FigureColname`,
/// for the forms a condition can name).
fn column_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(i) => fold(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold).unwrap_or_default(),
        Expr::Nested(inner) => column_name(inner),
        Expr::Cast { expr, .. } => column_name(expr),
        Expr::Function(f) => function_name(f).unwrap_or_default(),
        _ => "?column?".to_string(),
    }
}

fn opaque(parts: &[Info]) -> Info {
    let vars = parts.iter().any(|p| p.vars);
    Info {
        ty: ETy::Opaque,
        vars,
        leaky: vars || parts.iter().any(|p| p.leaky),
    }
}

/// The folded name of a function called without a schema or with
/// `pg_catalog`.
fn function_name(f: &sqlparser::ast::Function) -> Option<String> {
    f.name.0.last().and_then(|p| p.as_ident()).map(fold)
}

/// Whether a call names a schema other than `pg_catalog`: resolution here
/// knows only unqualified and `pg_catalog` calls.
fn qualified_elsewhere(f: &sqlparser::ast::Function) -> bool {
    f.name.0.len() > 1
        && f.name.0[0]
            .as_ident()
            .is_none_or(|i| fold(i) != "pg_catalog")
}

/// The operator symbol PostgreSQL looks up for a binary operator.
fn operator_symbol(op: &BinaryOperator) -> Option<String> {
    use BinaryOperator as B;
    Some(
        match op {
            B::Plus => "+",
            B::Minus => "-",
            B::Multiply => "*",
            B::Divide => "/",
            B::Modulo => "%",
            B::StringConcat => "||",
            B::Gt => ">",
            B::Lt => "<",
            B::GtEq => ">=",
            B::LtEq => "<=",
            B::Eq => "=",
            B::NotEq => "<>",
            B::PGExp => "^",
            B::PGRegexMatch => "~",
            B::PGRegexIMatch => "~*",
            B::PGRegexNotMatch => "!~",
            B::PGRegexNotIMatch => "!~*",
            B::PGLikeMatch => "~~",
            B::PGILikeMatch => "~~*",
            B::PGNotLikeMatch => "!~~",
            B::PGNotILikeMatch => "!~~*",
            B::Arrow => "->",
            B::LongArrow => "->>",
            B::HashArrow => "#>",
            B::HashLongArrow => "#>>",
            B::AtArrow => "@>",
            B::ArrowAt => "<@",
            B::Question => "?",
            B::QuestionAnd => "?&",
            B::QuestionPipe => "?|",
            B::PGOverlap => "&&",
            B::BitwiseAnd => "&",
            B::BitwiseOr => "|",
            B::PGBitwiseXor => "#",
            B::PGBitwiseShiftLeft => "<<",
            B::PGBitwiseShiftRight => ">>",
            B::PGStartsWith => "^@",
            B::PGCustomBinaryOperator(parts) if parts.len() == 2 && parts[0] == "pg_catalog" => {
                return Some(parts[1].clone())
            }
            _ => return None,
        }
        .to_string(),
    )
}

/// Whether an expression reads a column or a table anywhere in it.
fn reads_anything(expr: &Expr) -> bool {
    struct Reads;
    impl Visitor for Reads {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::CompoundFieldAccess { .. }
                | Expr::Subquery(_)
                | Expr::Exists { .. }
                | Expr::InSubquery { .. }
                | Expr::Wildcard(_)
                | Expr::QualifiedWildcard(..) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            ControlFlow::Break(())
        }
    }
    expr.visit(&mut Reads).is_break()
}

/// The conjuncts of an AND chain.
pub(crate) fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut out = conjuncts(left);
            out.extend(conjuncts(right));
            out
        }
        Expr::Nested(inner)
            if matches!(
                **inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(inner)
        }
        other => vec![other],
    }
}

/// The FROM item for a table read through the catalog's column list.
pub(crate) fn table_item(catalog: &dyn Catalog, alias: String, rel: &RelName) -> Item {
    Item {
        alias,
        rel: Some(rel.clone()),
        columns: catalog.columns(&rel.schema, &rel.name),
        kind: ItemKind::Other,
        outputs: None,
    }
}
