//! Properties of the rewriter over generated input: it never panics; what it
//! accepts prints to a text that parses back to exactly the statements it
//! built; and that text reads no filtered table except through the filter.
//!
//! "Through the filter" is checked on the AST of the forwarded text, in two
//! steps. First every derived table of the shape the rewriter builds,
//! `(SELECT * FROM schema.table WHERE w [OFFSET NULL])` with the user's filter
//! of that table one of the AND operands of `w`, is blanked: its base table
//! and the filter (subqueries included) are the one sanctioned way to read a
//! filtered table. Then the rest is walked with PostgreSQL's scoping of CTE
//! names, and any remaining `FROM` item that denotes a table with a filter
//! for the user is a leak.

use std::ops::ControlFlow;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rowgate::frontend::autoprep;
use rowgate::names::{fold, RelName};
use rowgate::policy::{load_sources, Access, Source};
use rowgate::rewrite::{self, default_search_path, Catalog, Context, OfflineCatalog};
use sqlparser::ast::{
    BinaryOperator, Expr, Ident, Query, SetExpr, Statement, TableFactor, TableWithJoins, Visit,
    VisitMut, Visitor, VisitorMut,
};

/// The example e-commerce and support policies, plus a table outside the
/// search path and one whose name needs quotes.
const POLICY: &str = r#"
attributes:
  country:  { type: text }
  merchant: { type: text }
groups:
  sales:
    tables: [public.countries, public.merchants, public.orders, sales.refunds, public."Audit"]
  support:
    tables: [public.tickets]
  reporting:
    tables: [public.daily_sales]
  vietnam:   { attributes: { country: [Vietnam] } }
  singapore: { attributes: { country: [Singapore] } }
users:
  king_manager:
    password: test
    groups: [sales, vietnam]
    attributes: { merchant: [King Inc] }
  apac:
    password: test
    groups: [sales, vietnam, singapore, support]
    attributes: { merchant: All }
  ceo:
    password: test
    groups: [sales, vietnam]
    attributes: { country: All, merchant: All }
  newcomer:
    password: test
    groups: [sales]
  alice:
    password: test
    groups: [support, reporting]
  analyst:
    password: test
    role: analyst
tables:
  public.countries:
    filters:
      - { column: name, attribute: country }
  public.merchants:
    filters:
      - { column: name, attribute: merchant }
      - { column: country_id, references: public.countries(id) }
  public.orders:
    filters:
      - { column: merchant_id, references: public.merchants(id) }
  sales.refunds:
    filters:
      - { column: order_id, references: public.orders(id) }
  public."Audit":
    filters:
      - { column: merchant, attribute: merchant }
  public.tickets:
    filters:
      - { column: assignee, attribute: username }
"#;

const USERS: &[&str] = &[
    "king_manager",
    "apac",
    "ceo",
    "newcomer",
    "alice",
    "analyst",
];

struct Fixture {
    users: Vec<std::sync::Arc<Access>>,
    catalog: OfflineCatalog,
    search_path: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let source = Source {
            path: PathBuf::from("props.yaml"),
            text: POLICY.to_string(),
        };
        let policy = match load_sources(&[source]) {
            Ok(loaded) => loaded.policy().clone(),
            Err(problems) => panic!("the test policy does not load: {problems:?}"),
        };
        let users = USERS
            .iter()
            .map(|u| policy.access(u).expect("every listed user exists"))
            .collect();
        let catalog = OfflineCatalog::new(&policy);
        Fixture {
            users,
            catalog,
            search_path: default_search_path(),
        }
    })
}

/// A rewrite context for every fixture user.
fn contexts() -> impl Iterator<Item = Context<'static>> {
    let fx = fixture();
    fx.users.iter().map(|access| Context {
        access,
        catalog: &fx.catalog,
        search_path: &fx.search_path,
        params: &[],
        fence: Default::default(),
        listing: Default::default(),
    })
}

/// Rewrites `sql` for every user and checks each accepted output.
fn check_all_users(sql: &str) -> Result<(), TestCaseError> {
    let fx = fixture();
    for cx in contexts() {
        let access = cx.access;
        let Ok(out) = rewrite::rewrite(sql, &cx) else {
            continue;
        };
        let statements = out
            .statements
            .as_ref()
            .ok_or_else(|| TestCaseError::fail("a non-admin rewrite came back unparsed"))?;
        let reparsed = rewrite::parse_input(&out.sql).map_err(|e| {
            TestCaseError::fail(format!(
                "user {}: input {sql:?}\noutput {:?} does not parse: {e}",
                access.user, out.sql
            ))
        })?;
        prop_assert_eq!(
            &reparsed,
            statements,
            "user {}: input {:?}\noutput {:?} parses to other statements",
            access.user,
            sql,
            out.sql
        );
        let leaks = leaks(&reparsed, access, fx);
        prop_assert!(
            leaks.is_empty(),
            "user {}: input {:?}\noutput {:?} reads {:?} without its filter",
            access.user,
            sql,
            out.sql,
            leaks
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The leak check.

/// The filtered tables that `statements` read outside their filtered derived
/// table, as written.
fn leaks(statements: &[Statement], access: &Access, fx: &Fixture) -> Vec<String> {
    let mut statements = statements.to_vec();
    let mut blank = BlankSanctioned { access };
    for s in &mut statements {
        let _ = s.visit(&mut blank);
    }
    let mut found = Vec::new();
    let env = Env { access, fx };
    for s in &statements {
        let mut walker = BodyWalker {
            env: &env,
            visible: &[],
            depth: 0,
            found: &mut found,
        };
        let _ = s.visit(&mut walker);
    }
    found
}

/// Replaces each derived table that reads a filtered table under its filter
/// by `(SELECT 1 WHERE <the other conjuncts>)`: the base table and the
/// filter (subqueries included) are sanctioned, and whatever else the
/// rewriter moved inside is left for the scoped walk.
struct BlankSanctioned<'a> {
    access: &'a Access,
}

impl VisitorMut for BlankSanctioned<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Derived { subquery, .. } = factor {
            if let Some(others) = sanctioned(subquery, self.access) {
                let mut blank = parse_query("SELECT 1");
                if let SetExpr::Select(select) = blank.body.as_mut() {
                    select.selection = others.into_iter().reduce(|a, b| Expr::BinaryOp {
                        left: Box::new(a),
                        op: BinaryOperator::And,
                        right: Box::new(b),
                    });
                }
                **subquery = blank;
            }
        }
        ControlFlow::Continue(())
    }
}

/// If `query` is `SELECT * FROM schema.table [TABLESAMPLE ...] WHERE w
/// [OFFSET NULL]`, nothing else, with the user's filter of that table one of
/// the AND operands of `w`: the other operands.
fn sanctioned(query: &Query, access: &Access) -> Option<Vec<Expr>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [TableWithJoins {
        relation: TableFactor::Table { name, sample, .. },
        ..
    }] = select.from.as_slice()
    else {
        return None;
    };
    let parts = name
        .0
        .iter()
        .map(|p| p.as_ident())
        .collect::<Option<Vec<&Ident>>>()?;
    let [schema, table] = parts.as_slice() else {
        return None;
    };
    let rel = RelName::new(fold(schema), fold(table));
    let filter = access.filter(&rel)?;
    let others = other_conjuncts(select.selection.as_ref()?, filter)?;
    // Everything but the WHERE must be exactly the fixed shape.
    let fenced = query.limit_clause.is_some();
    let mut expected = parse_query(&format!(
        "SELECT * FROM {rel}{}",
        if fenced { " OFFSET NULL" } else { "" }
    ));
    let SetExpr::Select(want) = expected.body.as_mut() else {
        unreachable!("a SELECT parses to a SELECT")
    };
    want.selection.clone_from(&select.selection);
    if let TableFactor::Table { sample: s, .. } = &mut want.from[0].relation {
        s.clone_from(sample);
    }
    (*query == expected).then_some(others)
}

/// If `filter` is `expr` or one of the operands of its AND tree: the other
/// operands. `expr` then holds only rows `filter` holds for.
fn other_conjuncts(expr: &Expr, filter: &Expr) -> Option<Vec<Expr>> {
    if expr == filter {
        return Some(Vec::new());
    }
    match expr {
        Expr::Nested(inner) => other_conjuncts(inner, filter),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            if let Some(mut rest) = other_conjuncts(left, filter) {
                rest.push(right.as_ref().clone());
                return Some(rest);
            }
            let mut rest = other_conjuncts(right, filter)?;
            rest.push(left.as_ref().clone());
            Some(rest)
        }
        _ => None,
    }
}

fn parse_query(sql: &str) -> Query {
    match rewrite::parse(sql).expect("a fixed query parses").pop() {
        Some(Statement::Query(q)) => *q,
        other => panic!("not a query: {other:?}"),
    }
}

struct Env<'a> {
    access: &'a Access,
    fx: &'a Fixture,
}

impl Env<'_> {
    /// The filtered table a `FROM` name denotes, if any, given the CTE names
    /// visible at that point.
    fn filtered(&self, parts: &[&Ident], visible: &[String]) -> Option<RelName> {
        let rel = match parts {
            [single] => {
                let name = fold(single);
                if visible.contains(&name) {
                    return None;
                }
                // pg_catalog first unless placed explicitly, then the path.
                let schema = std::iter::once("pg_catalog")
                    .chain(self.fx.search_path.iter().map(String::as_str))
                    .find(|s| self.fx.catalog.contains(s, &name))?;
                RelName::new(schema, name)
            }
            [.., schema, table] => RelName::new(fold(schema), fold(table)),
            [] => return None,
        };
        self.access.filter(&rel).map(|_| rel)
    }
}

/// Checks one query: its CTE bodies with the names each may see, then the
/// rest of it with every CTE name visible.
fn check_query(query: &Query, visible: &[String], env: &Env, found: &mut Vec<String>) {
    let mut names = Vec::new();
    if let Some(with) = &query.with {
        names = with
            .cte_tables
            .iter()
            .map(|c| fold(&c.alias.name))
            .collect::<Vec<_>>();
        for (i, cte) in with.cte_tables.iter().enumerate() {
            let mut v = visible.to_vec();
            v.extend_from_slice(if with.recursive { &names } else { &names[..i] });
            check_query(&cte.query, &v, env, found);
        }
    }
    let mut body = query.clone();
    body.with = None;
    let mut v = visible.to_vec();
    v.extend(names);
    let mut walker = BodyWalker {
        env,
        visible: &v,
        depth: -1,
        found,
    };
    let _ = body.visit(&mut walker);
}

/// Checks the `FROM` items of one query level; each nested query is handed
/// to [`check_query`] and skipped here.
struct BodyWalker<'a, 'f> {
    env: &'a Env<'a>,
    visible: &'a [String],
    depth: i32,
    found: &'f mut Vec<String>,
}

impl Visitor for BodyWalker<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth == 1 {
            check_query(query, self.visible, self.env, self.found);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if self.depth != 0 {
            return ControlFlow::Continue(());
        }
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            let parts: Option<Vec<&Ident>> = name.0.iter().map(|p| p.as_ident()).collect();
            match parts {
                Some(parts) => {
                    if let Some(rel) = self.env.filtered(&parts, self.visible) {
                        self.found.push(format!("{rel} (written {name})"));
                    }
                }
                None => self.found.push(format!("a computed table name {name}")),
            }
        }
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------
// The generators.

/// Names the policy grants (often), and others that must be refused or
/// pass unfiltered (less often).
fn table() -> impl Strategy<Value = String> {
    let granted = prop::sample::select(vec![
        "orders",
        "public.orders",
        "ORDERS",
        "\"orders\"",
        "public.\"orders\"",
        "merchants",
        "public.merchants",
        "countries",
        "tickets",
        "sales.refunds",
        "\"Audit\"",
        "public.\"Audit\"",
        "\"public\".\"orders\"",
        "PUBLIC.Orders",
        "c1",
        "c2",
    ]);
    let other = prop::sample::select(vec![
        "\"Orders\"",
        "daily_sales",
        "refunds",
        "audit",
        "pg_catalog.pg_class",
        "pg_class",
        "pg_stat_activity",
        "information_schema.tables",
        "mydb.public.orders",
        "nowhere",
        "generate_series(1, 3)",
        "unnest(ARRAY[1, 2])",
    ]);
    prop_oneof![4 => granted, 1 => other].prop_map(String::from)
}

fn alias() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "",
        " o",
        " AS m",
        " t(a, b)",
        " orders",
        " AS merchants",
        " \"O\"",
        " c1",
        " TABLESAMPLE SYSTEM (10)",
        " AS s TABLESAMPLE BERNOULLI (5) REPEATABLE (1)",
    ])
    .prop_map(String::from)
}

fn column() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "id",
        "o.id",
        "orders.id",
        "public.orders.id",
        "public.orders.merchant_id",
        "merchants.name",
        "m.country_id",
        "name",
        "$1",
        "1",
        "'Vietnam'",
        "NULL",
        "count(*)",
        "sum(amount)",
        "now()",
        "x.a",
        // Quotes inside quotes: the printer must escape them all again.
        r#"'it''s'"#,
        r#"'\'''"#,
        r#""a""b""#,
        r#""\""""#,
    ])
    .prop_map(String::from)
}

fn cte_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "c1",
        "c2",
        "orders",
        "merchants",
        "\"Audit\"",
        "ORDERS",
        "\"orders\"",
    ])
    .prop_map(String::from)
}

fn join_kind() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "JOIN",
        "LEFT JOIN",
        "RIGHT JOIN",
        "FULL JOIN",
        "INNER JOIN",
        "NATURAL JOIN",
        "CROSS JOIN LATERAL",
        "LEFT JOIN LATERAL",
    ])
    .prop_map(String::from)
}

/// A FROM item built on `q`, a strategy for nested queries.
fn from_item(q: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let base = (table(), alias())
        .prop_map(|(t, a)| format!("{t}{a}"))
        .boxed();
    prop_oneof![
        4 => base.clone(),
        1 => (q.clone(), alias()).prop_map(|(q, a)| {
            let a = if a.is_empty() { " AS sub".to_string() } else { a };
            format!("({q}){a}")
        }),
        2 => (base.clone(), join_kind(), base.clone(), column(), column()).prop_map(
            |(l, k, r, a, b)| if k.starts_with("NATURAL") || k.starts_with("CROSS") {
                format!("{l} {k} {r}")
            } else {
                format!("{l} {k} {r} ON {a} = {b}")
            }
        ),
        1 => (base.clone(), join_kind(), q.clone(), column()).prop_map(|(l, k, q, c)| {
            if k.starts_with("CROSS") {
                format!("{l} {k} ({q}) AS l")
            } else {
                format!("{l} {k} ({q}) AS l ON {c} = l.id")
            }
        }),
        1 => (base.clone(), base.clone(), base.clone()).prop_map(|(a, b, c)| {
            format!("({a} JOIN {b} USING (id)) JOIN {c} ON true")
        }),
        1 => (base.clone(), base.clone()).prop_map(|(a, b)| format!("{a}, {b}")),
        1 => (base.clone(), base.clone(), q.clone()).prop_map(|(a, b, q)| {
            format!("{a} JOIN {b} ON EXISTS ({q})")
        }),
        1 => (base.clone(), base.clone()).prop_map(|(a, b)| format!("({a} JOIN {b} ON true) AS j")),
        1 => base.clone().prop_map(|a| format!("({a})")),
        1 => q.clone().prop_map(|q| format!("generate_series(1, ({q})) AS g")),
        1 => q.prop_map(|q| format!("(VALUES (1, ({q}))) AS v(a, b)")),
        1 => base.prop_map(|a| format!("{a}, ROWS FROM (generate_series(1, 2)) AS r")),
    ]
}

fn condition(q: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (column(), column()).prop_map(|(a, b)| format!("{a} = {b}")),
        1 => (column(), q.clone()).prop_map(|(c, q)| format!("{c} IN ({q})")),
        1 => q.clone().prop_map(|q| format!("EXISTS ({q})")),
        1 => (column(), q.clone()).prop_map(|(c, q)| format!("{c} > (SELECT max(x) FROM ({q}) AS mx(x))")),
        1 => (column(), column(), column())
            .prop_map(|(a, b, c)| format!("({a} = {b} OR {c} IS NULL) AND true")),
        1 => (column(), q.clone()).prop_map(|(c, q)| format!("{c} = ANY (ARRAY({q}))")),
        1 => (column(), q.clone()).prop_map(|(c, q)| format!("{c} NOT IN ({q}) AND {c} < 5")),
        1 => (column(), column(), q).prop_map(|(a, b, q)| {
            format!("CASE WHEN {a} = {b} THEN EXISTS ({q}) ELSE false END")
        }),
    ]
}

fn select(q: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let projection = prop_oneof![
        Just("*".to_string()),
        column(),
        (column(), column()).prop_map(|(a, b)| format!("{a}, {b} AS b")),
        q.clone().prop_map(|q| format!("({q}) AS scalar")),
        Just("o.*, public.orders.*".to_string()),
        q.clone()
            .prop_map(|q| format!("coalesce((SELECT count(*) FROM ({q}) AS n), 0)")),
        q.clone()
            .prop_map(|q| format!("array_length(ARRAY({q}), 1)")),
        (column(), q.clone()).prop_map(|(c, q)| format!("row_number() OVER (ORDER BY {c}), ({q})")),
    ];
    let tail = prop::sample::select(vec![
        "",
        "",
        " GROUP BY 1",
        " GROUP BY 1 HAVING count(*) > 1",
        " ORDER BY 1 DESC",
        " LIMIT 10 OFFSET 2",
        " FOR UPDATE",
        " FETCH FIRST 1 ROW ONLY",
        " ORDER BY (SELECT count(*) FROM orders)",
        " LIMIT (SELECT count(*) FROM merchants)",
        " GROUP BY 1 HAVING count(*) > (SELECT count(*) FROM countries)",
    ]);
    (
        projection,
        prop::option::of(from_item(q.clone())),
        prop::option::of(condition(q)),
        tail,
    )
        .prop_map(|(p, f, w, t)| {
            let mut s = format!("SELECT {p}");
            if let Some(f) = f {
                s.push_str(&format!(" FROM {f}"));
            }
            if let Some(w) = w {
                s.push_str(&format!(" WHERE {w}"));
            }
            s.push_str(t);
            s
        })
}

/// SELECT/JOIN/subquery/CTE/UNION fragments over the policy's table names.
fn query() -> BoxedStrategy<String> {
    let leaf = (table(), alias(), column())
        .prop_map(|(t, a, c)| format!("SELECT {c} FROM {t}{a}"))
        .boxed();
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            3 => select(inner.clone()),
            1 => (inner.clone(), prop::sample::select(vec!["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]), inner.clone())
                .prop_map(|(a, op, b)| format!("{} {op} {}", operand(&a), operand(&b))),
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) UNION ({b})")),
            2 => (any::<bool>(), cte_name(), inner.clone(), prop::option::of((cte_name(), inner.clone())), inner.clone())
                .prop_map(|(rec, n1, q1, second, body)| {
                    let rec = if rec { "RECURSIVE " } else { "" };
                    let mut s = format!("WITH {rec}{n1} AS ({q1})");
                    if let Some((n2, q2)) = second {
                        s.push_str(&format!(", {n2} AS ({q2})"));
                    }
                    s.push_str(&format!(" {}", operand(&body)));
                    s
                }),
            1 => inner.clone().prop_map(|q| format!("SELECT * FROM ({q}) AS d")),
            1 => (cte_name(), inner.clone(), inner.clone()).prop_map(|(n, q, body)| {
                format!("WITH {n}(a) AS MATERIALIZED ({q}) {}", operand(&body))
            }),
            1 => (cte_name(), inner).prop_map(|(n, q)| {
                format!("WITH {n} AS ({q}) SELECT * FROM {n}, public.{n}")
            }),
        ]
    })
    .boxed()
}

/// `q` as it may stand as an operand of UNION or the body of WITH:
/// parenthesized when it has clauses of its own.
fn operand(q: &str) -> String {
    let plain = !q.starts_with("WITH")
        && [
            " ORDER BY ",
            " LIMIT ",
            " FETCH ",
            " FOR UPDATE",
            " UNION ",
            " INTERSECT ",
            " EXCEPT ",
        ]
        .iter()
        .all(|clause| !q.contains(clause));
    if plain {
        q.to_string()
    } else {
        format!("({q})")
    }
}

/// A statement wrapping a query, sometimes several, sometimes with noise.
fn statement_text() -> impl Strategy<Value = String> {
    let wrapped = (
        prop::sample::select(vec![
            "",
            "",
            "",
            "",
            "",
            "",
            "EXPLAIN ",
            "EXPLAIN (ANALYZE false) ",
            "PREPARE p AS ",
            "DECLARE cur CURSOR FOR ",
            "DECLARE cur NO SCROLL CURSOR WITH HOLD FOR ",
            "COPY (",
            "CREATE TABLE t AS ",
            "INSERT INTO t ",
        ]),
        query(),
    )
        .prop_map(|(prefix, q)| match prefix {
            "COPY (" => format!("COPY ({q}) TO STDOUT"),
            _ => format!("{prefix}{q}"),
        });
    let wrapped = prop_oneof![
        8 => wrapped,
        1 => query().prop_map(|q| format!("EXECUTE p(1, ({q}))")),
        1 => query().prop_map(|q| format!("VALUES ((SELECT 1), ({q}))")),
        1 => prop::sample::select(vec![
            "MOVE FORWARD 1 FROM cur",
            "move last in \"cur\"",
            "FETCH 2 FROM cur",
            "CLOSE cur",
            "BEGIN",
            "COMMIT",
        ])
        .prop_map(String::from),
    ];
    let statements = prop_oneof![
        3 => wrapped.clone(),
        1 => prop::collection::vec(wrapped, 2..4).prop_map(|v| v.join("; ")),
    ];
    (
        statements,
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), noise()), 1..3),
        ],
    )
        .prop_map(|(text, inserts)| {
            let mut words: Vec<String> = text.split(' ').map(String::from).collect();
            for (at, token) in inserts {
                let i = at.index(words.len() + 1);
                words.insert(i, token);
            }
            words.join(" ")
        })
}

/// Random tokens dropped into otherwise well-formed text.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "SELECT",
            "FROM",
            "WHERE",
            "JOIN",
            "ON",
            "(",
            ")",
            ",",
            ";",
            "*",
            "UNION",
            "WITH",
            "AS",
            "LATERAL",
            "ONLY",
            "TABLE",
            "VALUES (1)",
            "INTO",
            "public.",
            "orders",
            ".",
            "\"",
            "'",
            "$1",
            "::text",
            "--",
            "/*",
            "*/",
            "AND",
            "NOT",
            "ROWS FROM",
            "TABLESAMPLE SYSTEM (1)",
            "MOVE",
            "FOR SHARE",
            "RECURSIVE",
            "EXISTS",
            "IN",
            "ALL",
        ])
        .prop_map(String::from),
        r#"[a-z_"'\\\n]{1,8}"#,
    ]
}

/// Whitespace-separated SQL vocabulary in any order.
fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(noise(), 0..24).prop_map(|v| v.join(" "))
}

/// `cases` unless `PROPTEST_CASES` asks for another number (for long runs).
fn config(cases: u32) -> Config {
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(_) => Config::default().cases,
        Err(_) => cases,
    };
    Config {
        cases,
        // Failing inputs are reported in full; no regression file is written
        // next to the test (found cases belong in `fixed_cases` below).
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_strings(sql in any::<String>()) {
        check_all_users(&sql)?;
    }

    #[test]
    fn token_soups(sql in token_soup()) {
        check_all_users(&sql)?;
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn generated_queries(sql in statement_text()) {
        check_all_users(&sql)?;
    }
}

/// Statements with numbers where rowgate's automatic prepared statements
/// take them out: point lookups and ranges with joins, limits, offsets.
fn lookup() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u32..100_000).prop_map(|n| n.to_string()),
        (0u32..1000, 0u32..100).prop_map(|(a, b)| format!("{a}.{b}")),
        Just("007".to_string()),
        Just("2147483648".to_string()),
    ]
    .boxed();
    let comparison = (
        column(),
        prop::sample::select(vec!["=", "<", ">=", "<>"]),
        number.clone(),
    )
        .prop_map(|(c, op, n)| format!("{c} {op} {n}"))
        .boxed();
    let condition = prop_oneof![
        comparison.clone(),
        (column(), number.clone(), number.clone())
            .prop_map(|(c, a, b)| format!("{c} BETWEEN {a} AND -{b}")),
        (column(), number.clone(), number.clone())
            .prop_map(|(c, a, b)| format!("{c} IN ({a}, {b})")),
        (comparison.clone(), comparison).prop_map(|(a, b)| format!("({a} OR {b})")),
        (column(), query()).prop_map(|(c, q)| format!("{c} IN ({q})")),
    ]
    .boxed();
    (
        column(),
        table(),
        alias(),
        prop::option::of((table(), condition.clone())),
        prop::collection::vec(condition, 0..3),
        prop::sample::select(vec!["", " ORDER BY 1", " ORDER BY id DESC"]),
        prop::option::of(number.clone()),
        prop::option::of(number),
    )
        .prop_map(|(c, t, a, join, conds, order, limit, offset)| {
            let mut s = format!("SELECT {c} FROM {t}{a}");
            if let Some((t2, on)) = join {
                s.push_str(&format!(" JOIN {t2} j ON {on}"));
            }
            if !conds.is_empty() {
                s.push_str(&format!(" WHERE {}", conds.join(" AND ")));
            }
            s.push_str(order);
            if let Some(n) = limit {
                s.push_str(&format!(" LIMIT {n}"));
            }
            if let Some(n) = offset {
                s.push_str(&format!(" OFFSET {n}"));
            }
            s
        })
}

/// What the proxy relies on when it runs a statement as an automatic
/// prepared statement: for every user, if a statement's shape gets a
/// prepared text, then a statement of the same shape with any other numbers
/// of the same kinds is rewritten to exactly that text with those numbers
/// put in, never refused and never rewritten otherwise.
fn check_automatic_statements(sql: &str, numbers: &[u32]) -> Result<(), TestCaseError> {
    let Some(shape) = autoprep::shape(sql) else {
        return Ok(());
    };
    let types = autoprep::param_types(&shape);
    let others: Vec<String> = types
        .iter()
        .zip(numbers.iter().cycle())
        .map(|(t, n)| match *t {
            "int4" => n.to_string(),
            _ => format!("{}.{}", n / 100, n % 100),
        })
        .collect();
    if others.len() != types.len() || !autoprep::values_fit(&shape.values, &types) {
        return Ok(());
    }
    for cx in contexts() {
        let Ok(forwarded) = rewrite::rewrite(sql, &cx) else {
            continue;
        };
        let Some(prepared) = autoprep::template(sql, &shape.values, &forwarded.sql, &cx) else {
            continue;
        };
        let other = autoprep::with_numbers(sql, &others)
            .ok_or_else(|| TestCaseError::fail(format!("cannot put numbers into {sql:?}")))?;
        let expected = rewrite::rewrite(&other, &cx).map(|r| r.sql);
        let executed = autoprep::substitute(&prepared, &others);
        prop_assert_eq!(
            executed.as_ref(),
            expected.as_ref().ok(),
            "user {}: {:?} prepared as {:?}; with other numbers, {:?} rewrites to {:?}",
            cx.access.user,
            sql,
            prepared,
            other,
            expected
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn automatic_statements_stand_for_every_number(
        sql in prop_oneof![3 => lookup(), 1 => statement_text()],
        numbers in prop::collection::vec(0u32..2_000_000_000, 1..8),
    ) {
        check_automatic_statements(&sql, &numbers)?;
    }
}

/// Inputs worth keeping whatever the generators produce: each shape the
/// rewriter must handle, and every case the properties have found.
#[test]
fn fixed_cases() {
    let cases = [
        "SELECT * FROM orders",
        "SELECT o.id FROM public.orders o JOIN merchants m ON m.id = o.merchant_id",
        "SELECT public.orders.id FROM public.orders",
        "WITH orders AS (SELECT * FROM orders) SELECT * FROM orders",
        "WITH c1 AS (SELECT * FROM c2), c2 AS (SELECT * FROM orders) SELECT * FROM c1",
        "WITH RECURSIVE c1 AS (SELECT 1 UNION SELECT * FROM c1) SELECT * FROM c1, orders",
        "SELECT (SELECT count(*) FROM tickets) FROM countries",
        "SELECT * FROM orders TABLESAMPLE SYSTEM (10)",
        "SELECT * FROM sales.refunds r LEFT JOIN LATERAL (SELECT * FROM orders WHERE id = r.order_id) l ON true",
        "SELECT * FROM \"Audit\" a, public.\"Audit\"",
        "SELECT * FROM orders UNION ALL SELECT * FROM orders",
        "EXPLAIN SELECT * FROM merchants; PREPARE p AS SELECT * FROM orders WHERE id = $1",
        "DECLARE c CURSOR FOR SELECT * FROM countries",
        "BEGIN; DECLARE c CURSOR FOR SELECT * FROM orders; MOVE FORWARD 2 IN c; FETCH 1 FROM c",
        "SELECT * FROM orders WHERE id = 3 AND merchant_id IN (1, 2)",
        // A quote the printer does not escape again ends the literal early
        // upstream, and the rest of it becomes SQL that was never rewritten.
        r#"SELECT '\''', ' AS x, * FROM orders --'"#,
        r#"SELECT 1 AS "\""", " FROM orders --""#,
        r#"SELECT 'a''''' AS x"#,
        // Printed without the spacing they were read with, these read back
        // as other statements.
        r#"SELECT "a", NOT EXISTS"#,
        "SELECT 1 . a FROM orders",
    ];
    for sql in cases {
        if let Err(e) = check_all_users(sql) {
            panic!("{e}");
        }
    }
    // The checker itself: an unfiltered read is found, a filtered one is not.
    let fx = fixture();
    let king = &fx.users[0];
    let raw = rewrite::parse("SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM merchants)")
        .expect("parses");
    assert_eq!(leaks(&raw, king, fx).len(), 2);
    let shadowed = rewrite::parse(
        "WITH c1 AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM orders, c1",
    )
    .expect("parses");
    assert_eq!(leaks(&shadowed, king, fx).len(), 1);
    let cx = Context {
        access: king,
        catalog: &fx.catalog,
        search_path: &fx.search_path,
        params: &[],
        fence: Default::default(),
        listing: Default::default(),
    };
    let out = rewrite::rewrite("SELECT * FROM orders o JOIN merchants USING (id)", &cx)
        .expect("accepted");
    let parsed = rewrite::parse(&out.sql).expect("parses");
    assert_eq!(leaks(&parsed, king, fx), Vec::<String>::new());
    // A filter weakened anywhere in its chain no longer matches.
    let weakened = out.sql.replace("countries.name IN ('Vietnam')", "true");
    assert_ne!(weakened, out.sql);
    let weakened = rewrite::parse(&weakened).expect("parses");
    assert!(!leaks(&weakened, king, fx).is_empty());
}
