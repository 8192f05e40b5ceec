//! The differential fixture shared by the offline and the through-the-wire
//! suites: the query shapes, each user's native policies (the oracle), and
//! the setup of a database with both.

use std::collections::BTreeMap;

/// A user's grants and native policies: (table, USING expression). `None`
/// for the analyst, who bypasses RLS and reads everything.
pub type Rules = Option<Vec<(&'static str, &'static str)>>;

pub fn oracle_rules() -> Vec<(&'static str, Rules)> {
    let orders = ("orders", "merchant_id IN (SELECT id FROM merchants)");
    let returns = ("sales.\"Returns\"", "order_id IN (SELECT id FROM orders)");
    let products = ("products", "true");
    vec![
        (
            "ceo",
            Some(vec![
                ("countries", "true"),
                ("merchants", "country_id IN (SELECT id FROM countries)"),
                orders,
                products,
                returns,
                ("tickets", "assignee IN ('ceo')"),
            ]),
        ),
        (
            "king",
            Some(vec![
                ("countries", "name IN ('Vietnam')"),
                (
                    "merchants",
                    "name IN ('King Inc') AND country_id IN (SELECT id FROM countries)",
                ),
                orders,
                products,
                returns,
            ]),
        ),
        (
            "multi",
            Some(vec![
                ("countries", "true"),
                (
                    "merchants",
                    "name IN ('King Inc', 'O''Brien & Co', 'Bel Air', 'Back\\slash') \
                     AND country_id IN (SELECT id FROM countries) AND tier IN (1, 2)",
                ),
                orders,
                products,
                returns,
            ]),
        ),
        (
            "apac",
            Some(vec![
                ("countries", "name IN ('Vietnam', 'Singapore', 'Thailand')"),
                (
                    "merchants",
                    "country_id IN (SELECT id FROM countries) AND tier IN (1, 2)",
                ),
                orders,
                products,
                returns,
            ]),
        ),
        (
            "nobody",
            Some(vec![
                ("countries", "false"),
                ("merchants", "false"),
                orders,
                products,
                returns,
                ("tickets", "assignee IN ('nobody')"),
            ]),
        ),
        ("alice", Some(vec![("tickets", "assignee IN ('alice')")])),
        ("analyst", None),
    ]
}

/// The query shapes. Every one is deterministic as a multiset (LIMIT only
/// with a total ORDER BY).
pub const QUERIES: &[&str] = &[
    // Plain reads, names written every way.
    "SELECT * FROM countries",
    "SELECT * FROM merchants",
    "SELECT * FROM orders",
    "SELECT id, name FROM public.merchants",
    "SELECT public.orders.id, public.orders.amount FROM public.orders",
    "SELECT orders.id, orders.amount FROM orders",
    "SELECT \"id\", \"name\" FROM \"merchants\"",
    "SELECT ID, NAME FROM MERCHANTS",
    "SELECT * FROM sales.\"Returns\"",
    "SELECT * FROM products",
    "SELECT * FROM tickets",
    "SELECT * FROM hr.salaries",
    "SELECT count(*), sum(amount), min(placed_at), max(note) FROM orders",
    // Joins of every kind.
    "SELECT m.name, o.id, o.amount FROM orders o JOIN merchants m ON m.id = o.merchant_id",
    "SELECT m.id, o.id FROM merchants m LEFT JOIN orders o ON o.merchant_id = m.id",
    "SELECT m.id, o.id FROM merchants m RIGHT JOIN orders o ON o.merchant_id = m.id",
    "SELECT c.id, m.id FROM countries c FULL JOIN merchants m ON m.country_id = c.id",
    "SELECT c.name, p.name FROM countries c CROSS JOIN products p",
    "SELECT c.name, m.name FROM countries c, merchants m WHERE m.country_id = c.id",
    "SELECT * FROM orders NATURAL JOIN (SELECT id AS merchant_id, name FROM merchants) x",
    "SELECT * FROM orders JOIN (SELECT id AS merchant_id, name AS mname FROM merchants) m USING (merchant_id)",
    "SELECT o.id, m.name, c.name FROM ((orders o JOIN merchants m ON m.id = o.merchant_id) LEFT JOIN countries c ON c.id = m.country_id)",
    "SELECT a.id, b.id FROM orders a JOIN orders b ON a.merchant_id = b.merchant_id AND a.id < b.id",
    "SELECT r.reason, o.amount, m.name FROM sales.\"Returns\" r LEFT JOIN orders o ON o.id = r.order_id LEFT JOIN merchants m ON m.id = o.merchant_id",
    "SELECT t.title, m.name FROM tickets t LEFT JOIN merchants m ON m.id = t.merchant_id",
    "SELECT v.x, c.name FROM (VALUES (1), (2), (4), (6)) v(x) LEFT JOIN countries c ON c.id = v.x",
    // Subqueries everywhere.
    "SELECT m.name, (SELECT count(*) FROM orders o WHERE o.merchant_id = m.id) FROM merchants m",
    "SELECT (SELECT count(*) FROM orders), (SELECT max(name) FROM merchants), (SELECT count(*) FROM countries)",
    "SELECT id FROM orders WHERE merchant_id IN (SELECT id FROM merchants WHERE name LIKE 'K%')",
    "SELECT id FROM merchants WHERE id NOT IN (SELECT merchant_id FROM orders WHERE merchant_id IS NOT NULL)",
    "SELECT name FROM merchants m WHERE EXISTS (SELECT 1 FROM orders o WHERE o.merchant_id = m.id)",
    "SELECT id FROM countries c WHERE NOT EXISTS (SELECT 1 FROM merchants m WHERE m.country_id = c.id)",
    "SELECT id FROM orders WHERE amount > ANY (SELECT amount FROM orders WHERE status = 'paid')",
    "SELECT id FROM orders WHERE amount >= ALL (SELECT amount FROM orders)",
    "SELECT merchant_id, count(*) FROM orders GROUP BY merchant_id HAVING count(*) > (SELECT count(*) FROM countries) - 5",
    "SELECT id FROM merchants m ORDER BY (SELECT count(*) FROM orders o WHERE o.merchant_id = m.id), id",
    "SELECT id FROM orders ORDER BY id LIMIT (SELECT count(*) FROM merchants)",
    "SELECT id FROM orders ORDER BY id OFFSET (SELECT count(*) FROM countries)",
    "SELECT coalesce((SELECT max(amount) FROM orders), 0), greatest((SELECT count(*) FROM merchants), 1)",
    "SELECT ARRAY(SELECT id FROM merchants ORDER BY id)",
    "SELECT id, CASE WHEN EXISTS (SELECT 1 FROM merchants WHERE merchants.id = orders.merchant_id) THEN 'visible' ELSE 'hidden' END FROM orders",
    "SELECT * FROM (SELECT merchant_id, sum(amount) AS s FROM orders GROUP BY merchant_id) t WHERE s > 10",
    "SELECT * FROM (SELECT * FROM (SELECT id, name FROM merchants) a) b",
    "SELECT g, (SELECT count(*) FROM orders WHERE merchant_id = g) FROM generate_series(1, 12) g",
    "VALUES ((SELECT count(*) FROM merchants)), ((SELECT count(*) FROM orders))",
    "SELECT id FROM orders WHERE EXISTS (SELECT 1 FROM hr.salaries)",
    "SELECT id FROM orders WHERE merchant_id IN (SELECT merchant_id FROM tickets)",
    // CTEs, with scoping.
    "WITH big AS (SELECT * FROM orders WHERE amount > 50) SELECT count(*), sum(amount) FROM big",
    "WITH orders AS (SELECT * FROM orders WHERE status = 'paid') SELECT id FROM orders",
    "WITH m AS (SELECT * FROM merchants), o AS (SELECT o.* FROM orders o JOIN m ON m.id = o.merchant_id) SELECT count(*) FROM o",
    "WITH m AS (SELECT id FROM merchants) SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM orders WHERE merchant_id IN (SELECT id FROM m))",
    "WITH m AS MATERIALIZED (SELECT * FROM merchants) SELECT count(*) FROM m",
    "SELECT * FROM (WITH x AS (SELECT * FROM countries) SELECT name FROM x) y",
    "WITH countries AS (SELECT 1 AS id, 'fake' AS name) SELECT c.name, m.name FROM countries c JOIN merchants m ON m.country_id = c.id",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 8) SELECT r.n, c.name FROM r JOIN countries c ON c.id = r.n",
    "WITH RECURSIVE chain AS (SELECT id, merchant_id FROM orders WHERE id < 4 UNION SELECT o.id, o.merchant_id FROM orders o JOIN chain ON o.merchant_id = chain.merchant_id) SELECT * FROM chain",
    // Set operations.
    "SELECT name FROM countries UNION SELECT name FROM merchants",
    "SELECT name FROM countries UNION ALL SELECT name FROM merchants",
    "SELECT country_id FROM merchants INTERSECT SELECT id FROM countries",
    "SELECT id FROM countries EXCEPT SELECT country_id FROM merchants",
    "SELECT merchant_id FROM orders INTERSECT ALL SELECT id FROM merchants",
    "SELECT merchant_id FROM orders EXCEPT ALL SELECT id FROM merchants",
    "(SELECT id FROM orders ORDER BY id LIMIT 5) UNION (SELECT id FROM merchants ORDER BY id LIMIT 5)",
    // LATERAL.
    "SELECT m.name, x.total FROM merchants m, LATERAL (SELECT sum(amount) AS total FROM orders o WHERE o.merchant_id = m.id) x",
    "SELECT c.name, x.id FROM countries c LEFT JOIN LATERAL (SELECT id FROM merchants m WHERE m.country_id = c.id ORDER BY id LIMIT 1) x ON true",
    // Windows, grouping, distinct, ordering.
    "SELECT id, merchant_id, row_number() OVER (PARTITION BY merchant_id ORDER BY id) FROM orders",
    "SELECT id, sum(amount) OVER (ORDER BY id) FROM orders",
    "SELECT merchant_id, status, count(*) FROM orders GROUP BY GROUPING SETS ((merchant_id), (status), ())",
    "SELECT status, count(*) FROM orders GROUP BY ROLLUP (status)",
    "SELECT merchant_id, status, sum(amount) FROM orders GROUP BY CUBE (merchant_id, status)",
    "SELECT DISTINCT ON (merchant_id) merchant_id, id FROM orders ORDER BY merchant_id, id DESC",
    "SELECT DISTINCT status FROM orders",
    "SELECT id FROM orders ORDER BY amount DESC, id LIMIT 3 OFFSET 1",
    "SELECT count(DISTINCT merchant_id) FILTER (WHERE amount > 20) FROM orders",
    "SELECT string_agg(name, ',' ORDER BY name) FROM countries",
    // Whole-row references, values that look alike, NULLs, OR at the top.
    "SELECT json_agg(c ORDER BY c.id) FROM countries c",
    "SELECT c FROM countries c",
    "SELECT id FROM countries WHERE lower(name) = 'vietnam'",
    "SELECT count(*) FROM merchants WHERE name IS NULL OR country_id IS NULL",
    "SELECT id FROM orders WHERE amount > 60 OR status = 'refunded'",
    "SELECT count(*) FROM orders TABLESAMPLE SYSTEM (100)",
    // The system catalog is not filtered.
    "SELECT relname FROM pg_catalog.pg_class WHERE relname IN ('orders', 'merchants') ORDER BY relname",
];

/// What a query gave: rows sorted as a multiset, or a refusal.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Rows(Vec<Vec<Option<String>>>),
    Refused,
}

pub fn run(client: &mut postgres::Client, sql: &str) -> Result<Outcome, String> {
    match super::text_rows(client, sql) {
        Ok(mut rows) => {
            rows.sort();
            Ok(Outcome::Rows(rows))
        }
        Err(e) if super::sqlstate(&e).as_deref() == Some("42501") => Ok(Outcome::Refused),
        Err(e) => Err(format!("{e} [{:?}]", super::sqlstate(&e))),
    }
}

pub fn setup(db: &str) -> BTreeMap<&'static str, postgres::Client> {
    let c = super::cluster();
    let mut admin = c.connect(db);
    let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap();
    admin.batch_execute(&schema).unwrap();
    let mut clients = BTreeMap::new();
    for (user, rules) in oracle_rules() {
        let role = format!("{db}_{user}");
        let mut sql =
            format!("CREATE ROLE {role} LOGIN;\nGRANT USAGE ON SCHEMA sales, hr TO {role};\n");
        match rules {
            None => {
                sql += &format!(
                    "ALTER ROLE {role} BYPASSRLS;\nGRANT SELECT ON ALL TABLES IN SCHEMA public, sales, hr TO {role};\n"
                );
            }
            Some(rules) => {
                for (table, using) in rules {
                    sql += &format!(
                        "GRANT SELECT ON {table} TO {role};\n\
                         CREATE POLICY {role} ON {table} FOR SELECT TO {role} USING ({using});\n"
                    );
                }
            }
        }
        admin
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let client = postgres::Client::connect(&c.url(db, &role), postgres::NoTls).unwrap();
        clients.insert(user, client);
    }
    admin
        .batch_execute(
            "ALTER TABLE countries ENABLE ROW LEVEL SECURITY;
             ALTER TABLE merchants ENABLE ROW LEVEL SECURITY;
             ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
             ALTER TABLE products ENABLE ROW LEVEL SECURITY;
             ALTER TABLE tickets ENABLE ROW LEVEL SECURITY;
             ALTER TABLE sales.\"Returns\" ENABLE ROW LEVEL SECURITY;
             ALTER TABLE hr.salaries ENABLE ROW LEVEL SECURITY;",
        )
        .unwrap();
    clients
}

/// Shapes that need the live catalog (offline, `ONLY` cannot be told to
/// change nothing): PostgreSQL spellings rowgate reads by normalizing them.
#[allow(dead_code)]
pub const LIVE_QUERIES: &[&str] = &[
    "TABLE merchants",
    "TABLE ONLY orders",
    "SELECT * FROM ONLY merchants",
    "SELECT o.id, m.name FROM ONLY orders o JOIN ONLY (merchants) m ON m.id = o.merchant_id",
    "SELECT id, name FROM countries UNION ALL TABLE products",
    "WITH x AS (SELECT id FROM merchants) TABLE x",
    "SELECT count(*) FROM (TABLE orders) t",
    "SELECT 'a'\n'b' AS x, id FROM merchants",
    "SELECT interval(0) '1 day 01:23:45.6789', id FROM merchants",
    "SELECT m, row_to_json(m), pg_typeof(m) FROM merchants m",
    "SELECT merchants FROM merchants WHERE merchants IS NOT NULL",
    "SELECT o, m.name FROM orders o JOIN merchants m ON m.id = o.merchant_id",
    "SELECT to_jsonb(c) FROM countries c ORDER BY c.id",
    "SELECT * FROM ROWS FROM (generate_series(1, 3), unnest(ARRAY['a', 'b'])) WITH ORDINALITY AS r(n, s, o)",
    "SELECT m.name, r.x FROM merchants m, ROWS FROM (generate_series(1, m.id)) AS r(x)",
    "SELECT (m).*, o.id FROM merchants m JOIN orders o ON o.merchant_id = m.id",
];

/// The fixture's policy file.
pub const POLICY: &str = "tests/fixtures/differential/policy.yaml";
/// Every fixture user's password.
pub const PASSWORD: &str = "pw";
