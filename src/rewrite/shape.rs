//! The form in which a `references` filter reaches PostgreSQL, chosen by the
//! size of the set it refers to.
//!
//! A `references` filter is `t.column IN (SELECT target.key FROM target
//! WHERE <target's filters>)`. Written so, PostgreSQL pulls the subquery up
//! into a semijoin and plans it as a join. That is the best plan when the
//! referenced set is tiny (one merchant: an index probe of its orders) or
//! huge (every order of a country: a hash or merge join), and a poor one in
//! between: for a country's few dozen merchants PostgreSQL nests index scans
//! of each merchant's orders where a range scan with a hashed lookup per row
//! reads far less. Native RLS never pulls a policy's subquery up; it always
//! filters with a hashed subplan. So in between, the filter is written
//! `(t.column IN (SELECT ...)) IS TRUE`: the same rows (`IS TRUE` turns
//! NULL into false, as a WHERE does), but no longer a top-level `IN`, so
//! PostgreSQL keeps it as a hashed subplan and plans the table as native
//! RLS does.
//!
//! What "tiny" means is twofold: a referenced set of a few rows, or one
//! that admits a very small share of the filtered table (one merchant's
//! few thousand orders, whose items a semijoin fetches by index from
//! millions).
//!
//! The sizes are the planner's own estimates, from the statistics of the
//! live catalog: a table's rows times, per filter, the share of a column's
//! distinct values the filter admits. Without statistics (offline, or a
//! table never analyzed) the filter stays a semijoin, as before.

use sqlparser::ast::{Expr, Query, SelectItem, SetExpr, TableFactor, TableWithJoins, Value};

use super::catalog::Catalog;
use super::leakproof::conjuncts;
use crate::names::{fold, RelName};

/// At most this many referenced rows: a semijoin (a few index probes).
const SEMIJOIN_AT_MOST: f64 = 10.0;

/// A referenced set that admits at most this share of the filtered table's
/// rows (of the distinct values of its column): a semijoin.
const SEMIJOIN_SHARE_AT_MOST: f64 = 0.01;

/// More referenced rows than this: a semijoin, since a hashed subplan must
/// hold the whole set in memory (PostgreSQL falls back to rescanning the
/// subquery for every row when its estimate does not fit `work_mem`).
const HASHED_AT_MOST: f64 = 20_000.0;

/// `predicate` (the filter of `rel`) with each `references` condition in
/// the form its estimated referenced set calls for, nested ones included.
pub(crate) fn shape_references(rel: &RelName, predicate: &Expr, catalog: &dyn Catalog) -> Expr {
    let parts: Vec<Expr> = conjuncts(predicate)
        .into_iter()
        .map(|conjunct| shape_conjunct(rel, conjunct, catalog))
        .collect();
    if parts.len() == 1 {
        return parts
            .into_iter()
            .next()
            .unwrap_or_else(|| predicate.clone());
    }
    crate::policy::and_all(parts).unwrap_or_else(|| predicate.clone())
}

fn shape_conjunct(rel: &RelName, conjunct: &Expr, catalog: &dyn Catalog) -> Expr {
    if let Expr::Nested(inner) = conjunct {
        return Expr::Nested(Box::new(shape_conjunct(rel, inner, catalog)));
    }
    let Expr::InSubquery {
        expr,
        subquery,
        negated: false,
    } = conjunct
    else {
        return conjunct.clone();
    };
    let Some(Referenced {
        table: target,
        filter: selection,
        ..
    }) = referenced(subquery)
    else {
        return conjunct.clone();
    };
    let mut subquery = subquery.clone();
    if let Some(selection) = selection {
        let shaped = shape_references(&target, selection, catalog);
        if let SetExpr::Select(select) = subquery.body.as_mut() {
            select.selection = Some(shaped);
        }
    }
    let condition = Expr::InSubquery {
        expr: expr.clone(),
        subquery,
        negated: false,
    };
    let hashed = estimate(&target, selection, catalog).is_some_and(|rows| {
        let share = column_of(expr)
            .and_then(|column| catalog.distinct_estimate(&rel.schema, &rel.name, &column))
            .map(|distinct| rows / distinct.max(1.0));
        rows > SEMIJOIN_AT_MOST
            && rows <= HASHED_AT_MOST
            && share.is_some_and(|share| share > SEMIJOIN_SHARE_AT_MOST)
    });
    if hashed {
        Expr::IsTrue(Box::new(Expr::Nested(Box::new(condition))))
    } else {
        condition
    }
}

/// What a `references` subquery (`SELECT target.key FROM schema.target
/// [WHERE ...]`, as the policy writes it) refers to.
pub(super) struct Referenced<'q> {
    pub table: RelName,
    pub key: String,
    pub filter: Option<&'q Expr>,
}

/// The table, key and filter of a `references` subquery.
pub(super) fn referenced(query: &Query) -> Option<Referenced<'_>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [TableWithJoins {
        relation: TableFactor::Table {
            name, alias: None, ..
        },
        joins,
    }] = select.from.as_slice()
    else {
        return None;
    };
    if !joins.is_empty() || query.limit_clause.is_some() || query.with.is_some() {
        return None;
    }
    let [SelectItem::UnnamedExpr(Expr::CompoundIdentifier(key))] = select.projection.as_slice()
    else {
        return None;
    };
    let [_, key] = key.as_slice() else {
        return None;
    };
    let names: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(fold)
        .collect();
    let [schema, table] = names.as_slice() else {
        return None;
    };
    Some(Referenced {
        table: RelName::new(schema.clone(), table.clone()),
        key: fold(key),
        filter: select.selection.as_ref(),
    })
}

/// The planner's estimate of the rows of `rel` its filter admits; `None`
/// when a statistic is missing or a condition is not a policy filter.
fn estimate(rel: &RelName, selection: Option<&Expr>, catalog: &dyn Catalog) -> Option<f64> {
    let rows = catalog.row_estimate(&rel.schema, &rel.name)?;
    let Some(selection) = selection else {
        return Some(rows);
    };
    let mut share = 1.0_f64;
    for conjunct in conjuncts(selection) {
        let mut conjunct = conjunct;
        while let Expr::Nested(inner) | Expr::IsTrue(inner) = conjunct {
            conjunct = inner.as_ref();
        }
        let (column, admitted) = match conjunct {
            Expr::Value(v) if v.value == Value::Boolean(false) => return Some(0.0),
            Expr::InList {
                expr,
                list,
                negated: false,
            } => (column_of(expr)?, list.len() as f64),
            Expr::InSubquery {
                expr,
                subquery,
                negated: false,
            } => {
                let r = referenced(subquery)?;
                (column_of(expr)?, estimate(&r.table, r.filter, catalog)?)
            }
            _ => return None,
        };
        let distinct = catalog.distinct_estimate(&rel.schema, &rel.name, &column)?;
        share *= (admitted / distinct.max(1.0)).min(1.0);
    }
    Some(rows * share)
}

/// The column of a filter's `table.column`.
fn column_of(expr: &Expr) -> Option<String> {
    match expr {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => Some(fold(&parts[1])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rewrite::catalog::Catalog;

    /// Statistics as a live catalog would give them.
    struct Stats {
        rows: HashMap<&'static str, f64>,
        distinct: HashMap<(&'static str, &'static str), f64>,
    }

    impl Catalog for Stats {
        fn contains(&self, _schema: &str, _name: &str) -> bool {
            true
        }
        fn row_estimate(&self, _schema: &str, name: &str) -> Option<f64> {
            self.rows.get(name).copied()
        }
        fn distinct_estimate(&self, _schema: &str, name: &str, column: &str) -> Option<f64> {
            self.distinct.get(&(name, column)).copied()
        }
    }

    /// 30 countries, 2,000 merchants spread over them, unique names.
    fn star() -> Stats {
        Stats {
            rows: HashMap::from([
                ("countries", 30.0),
                ("merchants", 2000.0),
                ("orders", 5_000_000.0),
            ]),
            distinct: HashMap::from([
                (("countries", "name"), 30.0),
                (("merchants", "name"), 2000.0),
                (("merchants", "country_id"), 30.0),
                (("orders", "merchant_id"), 2000.0),
                (("orders", "status"), 5.0),
                (("order_items", "order_id"), 5_000_000.0),
            ]),
        }
    }

    fn parse(sql: &str) -> Expr {
        use sqlparser::dialect::PostgreSqlDialect;
        sqlparser::parser::Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_expr())
            .expect("a filter")
    }

    /// The merchants' filter of a country manager.
    const IN_COUNTRY: &str = "merchants.country_id IN (SELECT countries.id \
        FROM public.countries WHERE countries.name IN ('Italy'))";

    fn orders_filter(merchants: &str) -> String {
        format!(
            "orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE {merchants})"
        )
    }

    fn shaped(sql: &str, catalog: &dyn Catalog) -> String {
        let rel = if sql.starts_with("order_items") {
            "order_items"
        } else {
            "orders"
        };
        shape_references(&RelName::new("public", rel), &parse(sql), catalog).to_string()
    }

    #[test]
    fn a_country_s_merchants_are_a_hashed_subplan() {
        // 2,000 merchants / 30 countries: about 67, between the bounds.
        let out = shaped(&orders_filter(IN_COUNTRY), &star());
        assert!(out.starts_with("(orders.merchant_id IN (SELECT"), "{out}");
        assert!(out.ends_with(") IS TRUE"), "{out}");
        // The nested country filter (one row) stays a semijoin.
        assert!(!out.contains("'Italy'))) IS TRUE) IS TRUE"), "{out}");
    }

    #[test]
    fn one_merchant_stays_a_semijoin() {
        let merchants = format!("(merchants.name IN ('Merchant 0042')) AND ({IN_COUNTRY})");
        let out = shaped(&orders_filter(&merchants), &star());
        assert!(out.starts_with("orders.merchant_id IN (SELECT"), "{out}");
        assert!(!out.contains("IS TRUE"), "{out}");
    }

    #[test]
    fn a_small_share_of_a_big_table_stays_a_semijoin() {
        // A country's orders: 5M / 30, too many to hash: a semijoin.
        let country_orders = format!(
            "order_items.order_id IN (SELECT orders.id FROM public.orders WHERE {})",
            orders_filter(IN_COUNTRY)
        );
        let out = shaped(&country_orders, &star());
        assert!(out.starts_with("order_items.order_id IN (SELECT"), "{out}");
        // Its orders' own filter is the country's merchants: hashed.
        assert!(out.contains(") IS TRUE"), "{out}");
        // One merchant's orders: about 2,500, few enough to hash, but a
        // tiny share of the items, fetched by index through a semijoin.
        let one_merchant = format!(
            "order_items.order_id IN (SELECT orders.id FROM public.orders WHERE {})",
            orders_filter("merchants.name IN ('Merchant 0042')")
        );
        let out = shaped(&one_merchant, &star());
        assert_eq!(out, parse(&one_merchant).to_string());
        // The same orders hashed where they are a larger share: items of
        // which each order has a thousand.
        let mut stats = star();
        stats
            .distinct
            .insert(("order_items", "order_id"), 100_000.0);
        let out = shaped(&one_merchant, &stats);
        assert!(out.starts_with("(order_items.order_id IN (SELECT"), "{out}");
    }

    #[test]
    fn every_merchant_is_a_hashed_subplan_and_many_more_a_semijoin() {
        let every = "orders.merchant_id IN (SELECT merchants.id FROM public.merchants)";
        assert!(shaped(every, &star()).ends_with("IS TRUE"));
        let mut big = star();
        big.rows.insert("merchants", 5_000_000.0);
        assert_eq!(shaped(every, &big), every);
    }

    #[test]
    fn without_statistics_nothing_changes() {
        let filter = orders_filter(IN_COUNTRY);
        let mut none = star();
        none.distinct.clear();
        assert_eq!(shaped(&filter, &none), parse(&filter).to_string());
        let offline = crate::rewrite::catalog::OfflineCatalog::new(&Default::default());
        assert_eq!(shaped(&filter, &offline), parse(&filter).to_string());
    }

    #[test]
    fn other_conjuncts_are_kept_as_they_are() {
        let filter = "(orders.status IN ('paid')) AND (orders.merchant_id IN (SELECT merchants.id FROM public.merchants))";
        let out = shaped(filter, &star());
        assert!(
            out.starts_with("((orders.status IN ('paid')) AND ("),
            "{out}"
        );
        assert!(out.contains("IS TRUE"), "{out}");
    }
}
