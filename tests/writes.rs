//! Read-write members' writes against native row-level security: the
//! differential fixture twice, one database with a native role per user
//! holding `FOR ALL USING (rule) WITH CHECK (rule)` policies, one behind
//! rowgate with the same rules; every write statement runs on both, and
//! the outcome (error SQLSTATE and message, rows returned, rows affected)
//! and every table's contents afterwards must be equal. Both databases go
//! back to their first contents after each statement.

mod common;

use common::rls;

/// The read-write members.
const WRITERS: &[&str] = &["king", "multi", "apac"];

/// Write statements that must behave exactly as under native RLS.
const WRITES: &[&str] = &[
    // DELETE: only visible rows, whatever the WHERE.
    "DELETE FROM orders WHERE id = 1",
    "DELETE FROM orders WHERE id = 13",
    "DELETE FROM orders",
    "DELETE FROM orders WHERE merchant_id IS NULL",
    "DELETE FROM orders WHERE merchant_id = 999",
    "DELETE FROM orders o USING merchants m WHERE o.merchant_id = m.id AND m.tier = 2",
    "DELETE FROM orders WHERE id = 2 RETURNING id, amount, status",
    "DELETE FROM orders WHERE status = 'refunded' RETURNING *",
    "DELETE FROM orders WHERE placed_at < '2024-01-20'",
    "DELETE FROM orders WHERE id BETWEEN 10 AND 20 AND status IS NULL",
    "DELETE FROM merchants WHERE id = 1",
    "DELETE FROM merchants WHERE id = 5 RETURNING name, tier",
    "DELETE FROM merchants WHERE name = 'King Inc'",
    "DELETE FROM countries WHERE name = 'Singapore'",
    "DELETE FROM countries RETURNING id",
    "DELETE FROM products WHERE id = 3",
    "DELETE FROM sales.\"Returns\" WHERE order_id < 20 RETURNING id, order_id",
    "DELETE FROM sales.\"Returns\" r USING orders o WHERE r.order_id = o.id AND o.status = 'paid'",
    "DELETE FROM tickets WHERE id = 1",
    "DELETE FROM hr.salaries",
    // Conditions on the written table that are not leakproof (a numeric
    // comparison, LIKE, a call, subqueries) run after the filter.
    "DELETE FROM orders WHERE amount > 50",
    "DELETE FROM orders WHERE merchant_id IN (SELECT id FROM merchants WHERE tier = 1)",
    "DELETE FROM orders WHERE id IN (SELECT order_id FROM sales.\"Returns\")",
    "DELETE FROM orders WHERE NOT EXISTS (SELECT 1 FROM sales.\"Returns\" r WHERE r.order_id = orders.id)",
    "UPDATE orders SET amount = 5 WHERE id IN (SELECT order_id FROM sales.\"Returns\" WHERE id < 5)",
    "UPDATE sales.\"Returns\" SET reason = 'r' WHERE order_id IN (SELECT id FROM orders WHERE merchant_id = 1)",
    "UPDATE orders SET amount = 1 WHERE note LIKE '%5%'",
    "DELETE FROM orders WHERE lower(status) = 'paid'",
    "UPDATE orders SET status = 'y' WHERE amount / 0 > 1 AND id = 1",
    "DELETE FROM orders WHERE 1 / (amount - 7.5) > 0",
    "UPDATE orders o SET note = m.name FROM merchants m WHERE m.id = o.merchant_id AND m.name LIKE 'King%' RETURNING o.id, o.note",
    // UPDATE: visible rows only, and the new version must stay visible.
    "UPDATE orders SET amount = amount + 1 WHERE id = 1",
    "UPDATE orders SET amount = 0 WHERE id = 13",
    "UPDATE orders SET status = 'x'",
    "UPDATE orders SET note = 'n' WHERE merchant_id = 1 RETURNING id, note",
    "UPDATE orders SET merchant_id = 2 WHERE id = 1",
    "UPDATE orders SET merchant_id = 9 WHERE id = 1",
    "UPDATE orders SET merchant_id = 999 WHERE id = 1",
    "UPDATE orders SET merchant_id = NULL WHERE id = 1",
    "UPDATE orders SET merchant_id = merchant_id WHERE id < 5",
    "UPDATE orders SET merchant_id = 1 WHERE id < 30 RETURNING id, merchant_id",
    "UPDATE orders SET merchant_id = '2' WHERE id = 2",
    "UPDATE orders SET merchant_id = 8, amount = 1 WHERE id = 3",
    "UPDATE orders SET merchant_id = 3 WHERE id = 999",
    "UPDATE orders o SET amount = 0 FROM merchants m WHERE m.id = o.merchant_id AND m.name = 'Bel Air' RETURNING o.id",
    "UPDATE orders SET placed_at = placed_at + interval '1 day' WHERE id < 5",
    "UPDATE orders SET amount = (SELECT max(amount) FROM orders) WHERE id = 1",
    "UPDATE orders SET status = NULL WHERE status = 'open' RETURNING *",
    "UPDATE merchants SET tier = 3 WHERE id = 1",
    "UPDATE merchants SET tier = 2 WHERE id = 1",
    "UPDATE merchants SET tier = NULL WHERE id = 9",
    "UPDATE merchants SET name = 'Other' WHERE id = 1",
    "UPDATE merchants SET name = 'King Inc' WHERE id = 2",
    "UPDATE merchants SET country_id = 2 WHERE id = 1",
    "UPDATE merchants SET country_id = 4 WHERE id = 1",
    "UPDATE merchants SET created = '2030-01-01' WHERE tier = 1 RETURNING id, created",
    "UPDATE merchants m SET tier = 1 WHERE m.country_id = 2",
    "UPDATE countries SET region = 'x' WHERE name = 'Vietnam'",
    "UPDATE countries SET name = 'Viet Nam' WHERE id = 1",
    "UPDATE countries SET name = 'Vietnam' WHERE id = 5",
    "UPDATE sales.\"Returns\" SET order_id = 1 WHERE id = 1",
    "UPDATE sales.\"Returns\" SET order_id = 2 WHERE id = 2 RETURNING *",
    "UPDATE products SET name = 'P' WHERE id = 1",
    "UPDATE tickets SET title = 't'",
    "UPDATE hr.salaries SET amount = 0",
    // INSERT ... VALUES: every new row must be visible.
    "INSERT INTO orders (id, merchant_id, amount, status) VALUES (100, 1, 10, 'new')",
    "INSERT INTO orders (id, merchant_id) VALUES (101, 3)",
    "INSERT INTO orders (id, merchant_id) VALUES (102, 5)",
    "INSERT INTO orders (id, merchant_id) VALUES (103, NULL)",
    "INSERT INTO orders (id, merchant_id) VALUES (104, 999)",
    "INSERT INTO orders (id, merchant_id, amount) VALUES (105, 1, 1), (106, 9, 2)",
    "INSERT INTO orders (id, merchant_id, amount) VALUES (107, 1, 1), (108, 5, 2)",
    "INSERT INTO orders (id, merchant_id) VALUES (1, 1)",
    "INSERT INTO orders (id, merchant_id) VALUES (2, 5)",
    "INSERT INTO orders (id, merchant_id) VALUES (109, 1) RETURNING id, merchant_id, amount",
    "INSERT INTO orders (id, merchant_id, note) VALUES (110, '1', 'quoted')",
    "INSERT INTO orders (id, merchant_id, amount) VALUES (111, 1, (SELECT max(amount) FROM orders))",
    "INSERT INTO orders (merchant_id, id) VALUES (1, 112) RETURNING *",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (50, 'King Inc', 1, 1)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (51, 'New', 1, 1)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (52, 'Bel Air', 2, 3)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (53, 'King Inc', 4, 2)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (54, NULL, 1, 1)",
    "INSERT INTO merchants (id, name, country_id, tier, created) VALUES (55, 'King Inc', 1, 2, '2025-01-01') RETURNING id, created",
    "INSERT INTO countries (id, name) VALUES (10, 'Vietnam')",
    "INSERT INTO countries (id, name, region) VALUES (11, 'Atlantis', 'x')",
    "INSERT INTO sales.\"Returns\" (id, order_id, reason) VALUES (100, 1, 'r')",
    "INSERT INTO sales.\"Returns\" (id, order_id, reason) VALUES (101, 13, 'r')",
    "INSERT INTO products (id, name) VALUES (10, 'P')",
    "INSERT INTO tickets (id, assignee) VALUES (10, 'king')",
    "INSERT INTO hr.salaries (merchant_id, amount) VALUES (1, 1)",
    // INSERT ... SELECT: each row the SELECT gives (reading visible rows
    // only) is checked.
    "INSERT INTO orders (id, merchant_id, amount) SELECT id + 1000, merchant_id, amount FROM orders WHERE status = 'paid'",
    "INSERT INTO orders (id, merchant_id) SELECT id + 2000, 5 FROM orders WHERE id < 20",
    "INSERT INTO orders (id, merchant_id) SELECT 130, '1'",
    "INSERT INTO orders (id, merchant_id) SELECT m.id + 3000, m.id FROM merchants m RETURNING id",
    "INSERT INTO orders (id, merchant_id) SELECT 131, merchant_id FROM orders WHERE id = 13",
    "INSERT INTO merchants (id, name, country_id, tier) SELECT id + 100, name, country_id, tier FROM merchants RETURNING id, name",
    // Without a column list: the table's columns in order.
    "INSERT INTO orders VALUES (140, 1, 5.5, 'paid', '2024-05-01', 'x')",
    "INSERT INTO orders VALUES (141, 5)",
    "INSERT INTO countries VALUES (20, 'Vietnam', 'APAC'), (21, 'Thailand', 'APAC')",
    // ON CONFLICT DO NOTHING: the new row is checked before the conflict,
    // and a conflict with a hidden row skips as with a visible one.
    "INSERT INTO orders (id, merchant_id) VALUES (121, 1) ON CONFLICT DO NOTHING",
    "INSERT INTO orders (id, merchant_id) VALUES (1, 1) ON CONFLICT DO NOTHING",
    "INSERT INTO orders (id, merchant_id) VALUES (11, 1) ON CONFLICT (id) DO NOTHING RETURNING id",
    "INSERT INTO orders (id, merchant_id) VALUES (1, 5) ON CONFLICT (id) DO NOTHING",
    "INSERT INTO orders (id, merchant_id) VALUES (122, 5) ON CONFLICT ON CONSTRAINT orders_pkey DO NOTHING",
    // Writes in WITH, each as a write of its own; the rest reads.
    "WITH d AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM d",
    "WITH d AS (DELETE FROM orders WHERE id < 30 RETURNING merchant_id) SELECT m.name, count(*) FROM d JOIN merchants m ON m.id = d.merchant_id GROUP BY m.name",
    "WITH u AS (UPDATE orders SET amount = 0 WHERE status = 'paid' RETURNING id) SELECT count(*) FROM u",
    "WITH u AS (UPDATE orders SET merchant_id = 5 WHERE id = 11 RETURNING id) SELECT * FROM u",
    "WITH i AS (INSERT INTO orders (id, merchant_id) VALUES (400, 1) RETURNING id) SELECT id FROM i",
    "WITH i AS (INSERT INTO orders (id, merchant_id) VALUES (401, 5) RETURNING id) SELECT id FROM i",
    // ON CONFLICT DO UPDATE: the WHERE on the conflicting row, then that
    // row must be visible, then the updated row must be.
    "INSERT INTO orders (id, merchant_id, amount) VALUES (11, 1, 5) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount RETURNING id, amount",
    "INSERT INTO orders (id, merchant_id) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET note = 'u'",
    "INSERT INTO orders (id, merchant_id) VALUES (11, 1) ON CONFLICT (id) DO UPDATE SET merchant_id = 5",
    "INSERT INTO orders (id, merchant_id) VALUES (11, 1) ON CONFLICT (id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id, note = 'moved'",
    "INSERT INTO orders (id, merchant_id) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET note = 'w' WHERE orders.amount > 1000",
    "INSERT INTO orders (id, merchant_id) VALUES (300, 1) ON CONFLICT (id) DO UPDATE SET amount = 1",
    "INSERT INTO orders (id, merchant_id, placed_at) VALUES (11, 1, '2030-01-01') ON CONFLICT (id) DO UPDATE SET placed_at = '2031-01-01' RETURNING placed_at",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (1, 'King Inc', 1, 1) ON CONFLICT (id) DO UPDATE SET tier = 2 RETURNING id, tier",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (5, 'King Inc', 1, 1) ON CONFLICT (id) DO UPDATE SET name = 'x'",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (1, 'King Inc', 1, 1) ON CONFLICT (id) DO UPDATE SET country_id = EXCLUDED.country_id + 0",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (1, 'King Inc', 1, 1) ON CONFLICT (id) DO UPDATE SET tier = DEFAULT RETURNING tier",
    // A SET value that fails on the conflicting row: PostgreSQL checks
    // that the row is visible before it computes any value, in the
    // table's column order (amount before note).
    "INSERT INTO orders (id, merchant_id) VALUES (13, 1) ON CONFLICT (id) DO UPDATE SET note = 'x', amount = 1 / (orders.amount - orders.amount)",
    "INSERT INTO orders (id, merchant_id) VALUES (13, 1) ON CONFLICT (id) DO UPDATE SET note = orders.status || 'x'",
    "INSERT INTO orders (id, merchant_id) VALUES (11, 1) ON CONFLICT (id) DO UPDATE SET note = 'x', amount = 1 / (orders.amount - orders.amount)",
    // The check reads a new value as the column holds it: 1.6 into an
    // integer column is 2, 42 into a text column is '42'.
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (62, 'King Inc', 1, 1.6)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (63, 'King Inc', 1, 2.6)",
    "UPDATE merchants SET tier = 2.4 WHERE id = 1",
    "UPDATE merchants SET name = 42 WHERE id = 1",
    "UPDATE orders SET merchant_id = 1.2 WHERE id = 2 RETURNING merchant_id",
    // New values of filtered columns that are calls, subqueries or
    // expressions: computed once, then checked.
    "UPDATE merchants SET country_id = (SELECT id FROM countries WHERE name = 'Thailand') WHERE id = 1",
    "UPDATE merchants SET country_id = (SELECT min(id) FROM countries) WHERE id = 1 RETURNING country_id",
    "UPDATE orders SET merchant_id = merchant_id + 1 WHERE id < 8 RETURNING id, merchant_id",
    "UPDATE orders SET merchant_id = abs(-5) WHERE id = 1",
    "UPDATE orders SET merchant_id = (SELECT max(id) FROM merchants WHERE id < 4) WHERE id = 1",
    "INSERT INTO orders (id, merchant_id) VALUES (150, (SELECT min(id) FROM merchants))",
    "INSERT INTO orders (id, merchant_id) VALUES (151, abs(-1)), (152, abs(-5)) RETURNING merchant_id",
    "INSERT INTO orders (id, merchant_id) VALUES (153, (SELECT id FROM merchants WHERE name = 'Bel Air' LIMIT 1))",
    "INSERT INTO orders (id, merchant_id) VALUES (154, 1 + 0), (155, NULLIF(1, 1))",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (64, upper('king') || ' Inc', 1, 1)",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (65, initcap('king inc'), 1, 1)",
    // Computed new values of several filtered columns: each computed once,
    // then the check reads them all.
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (67, initcap('king inc'), abs(-1), abs(-1))",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (69, upper('k') || 'ing Inc', abs(-1), 1), (70, 'King Inc', 1, abs(-3))",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (71, initcap('king inc'), abs(-4), '1') RETURNING *",
    "UPDATE merchants SET name = initcap('king inc'), country_id = abs(-1) WHERE id = 1 RETURNING name, country_id",
    "UPDATE merchants SET country_id = (SELECT min(id) FROM countries), tier = abs(-2), name = 'King Inc' WHERE id IN (1, 2)",
    "UPDATE merchants SET name = lower(name), country_id = country_id + 0 WHERE id < 5",
    "MERGE INTO merchants t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = initcap('king inc'), country_id = abs(-1), tier = abs(-1)",
    // Columns left to their defaults (merchant_id's is abs(-1), tier's 2,
    // country_id has none).
    "INSERT INTO merchants (id, name) VALUES (60, 'King Inc')",
    "INSERT INTO merchants VALUES (61, 'King Inc')",
    "INSERT INTO merchants (id, name, country_id) VALUES (66, 'King Inc', 1) RETURNING tier",
    "INSERT INTO orders VALUES (142)",
    "INSERT INTO orders (id) VALUES (144), (145) RETURNING merchant_id",
    "INSERT INTO orders (id, merchant_id) VALUES (143, DEFAULT)",
    "INSERT INTO orders (id, merchant_id, amount) VALUES (146, DEFAULT, 1), (147, 5, DEFAULT)",
    "UPDATE orders SET merchant_id = DEFAULT WHERE id = 11",
    "UPDATE merchants SET tier = DEFAULT WHERE id = 1 RETURNING tier",
    "UPDATE merchants SET tier = DEFAULT, country_id = DEFAULT WHERE id = 1",
    "INSERT INTO orders (id) SELECT id + 800 FROM orders WHERE id < 4 RETURNING id, merchant_id",
    // INSERT of a query: its rows, however it gives them, are checked.
    "INSERT INTO orders (id, merchant_id) SELECT 123, 1 UNION ALL SELECT 124, 1",
    "INSERT INTO orders (id, merchant_id) SELECT 125, 1 UNION ALL SELECT 126, 5",
    "INSERT INTO orders (id, merchant_id) SELECT id + 500, merchant_id FROM orders WHERE id < 10 EXCEPT SELECT id + 500, 3 FROM orders",
    "INSERT INTO orders (merchant_id, id) SELECT max(merchant_id), 132 FROM orders",
    "INSERT INTO orders (merchant_id, id) SELECT merchant_id, min(id) + 900 FROM orders GROUP BY merchant_id",
    "INSERT INTO orders (id, merchant_id, amount) SELECT 160 + row_number() OVER (ORDER BY id), id, 1 FROM merchants",
    "INSERT INTO orders (id, merchant_id) SELECT DISTINCT merchant_id + 700, merchant_id FROM orders WHERE merchant_id < 100 ORDER BY 1 LIMIT 3",
    "INSERT INTO orders (id, merchant_id) SELECT g, 1 FROM generate_series(170, 172) g",
    "INSERT INTO orders (id, merchant_id) SELECT 173, coalesce(NULL, 9)",
    "INSERT INTO orders (id, merchant_id, note) SELECT 174, '1', 'untyped'",
    "INSERT INTO orders (id, merchant_id) VALUES (175, 1), (176, 5) ON CONFLICT DO NOTHING",
    // INSERT ... SELECT * of one table: as many columns as it has.
    "INSERT INTO orders SELECT * FROM sales.staged WHERE merchant_id = 1 RETURNING id",
    "INSERT INTO orders SELECT * FROM sales.staged",
    "INSERT INTO orders SELECT s.* FROM sales.staged s WHERE s.id = 200 RETURNING note",
    "INSERT INTO orders (id, merchant_id, amount, status, placed_at, note) SELECT * FROM sales.staged WHERE id = 202",
    "INSERT INTO orders (id, merchant_id) SELECT * FROM sales.staged",
    "INSERT INTO orders SELECT *, 1 FROM sales.staged",
    "INSERT INTO orders SELECT * FROM orders WHERE id < 5",
    // A partitioned table and an inheritance parent: the parent's rule
    // covers every partition's and child's rows.
    "UPDATE sales.events SET what = 'x' RETURNING id, what",
    "UPDATE sales.events SET at = '2025-03-01' WHERE id = 1 RETURNING id, at",
    "UPDATE sales.events SET merchant_id = 5 WHERE id = 1",
    "UPDATE sales.events SET at = '2025-03-01' WHERE id = 3 RETURNING id, at, what",
    "INSERT INTO sales.events (id, merchant_id, at) VALUES (3, 1, '2024-07-31') ON CONFLICT (id, at) DO UPDATE SET what = 'conflict' RETURNING what",
    "INSERT INTO sales.events (id, merchant_id, at) VALUES (3, 1, '2024-07-31') ON CONFLICT (id, at) DO UPDATE SET merchant_id = 5",
    "DELETE FROM sales.events WHERE at < '2025-01-01' RETURNING id",
    "INSERT INTO sales.events VALUES (100, 1, '2024-02-02', 'new'), (101, 2, '2025-02-02', 'new')",
    "INSERT INTO sales.events VALUES (102, 5, '2024-02-02', 'hidden')",
    "INSERT INTO sales.events VALUES (103, 1, '2030-01-01', 'no partition')",
    "INSERT INTO sales.events (id, merchant_id, at) VALUES (1, 1, '2024-06-21') ON CONFLICT (id, at) DO UPDATE SET what = 'conflict' RETURNING what",
    "INSERT INTO sales.events (id, merchant_id, at) VALUES (4, 1, '2024-08-20') ON CONFLICT (id, at) DO UPDATE SET what = 'conflict'",
    "UPDATE sales.notes SET body = 'x' RETURNING id",
    "DELETE FROM sales.notes WHERE id IN (4, 5) RETURNING id",
    "INSERT INTO sales.notes VALUES (10, 5, 'hidden')",
    "UPDATE sales.notes SET merchant_id = 5 WHERE id = 4",
    "UPDATE sales.notes_archive SET body = 'y' RETURNING id",
    "INSERT INTO sales.notes_archive VALUES (11, 1, 'a', '2021-01-01'), (12, 2, 'b', NULL)",
    // Write statements under a WITH: every read of the write sees its
    // names.
    "WITH m AS (SELECT id FROM merchants WHERE tier = 1) UPDATE orders SET note = 'tier1' WHERE merchant_id IN (SELECT id FROM m) RETURNING id",
    "WITH m AS (SELECT id FROM merchants) DELETE FROM orders WHERE merchant_id NOT IN (SELECT id FROM m WHERE id IS NOT NULL) RETURNING id",
    "WITH n AS (SELECT max(id) + 1 AS id FROM orders) INSERT INTO orders (id, merchant_id) SELECT id, 1 FROM n RETURNING id",
    "WITH n AS (SELECT 5 AS m) INSERT INTO orders (id, merchant_id) SELECT 190, m FROM n",
    "WITH v AS (SELECT 1 AS k) INSERT INTO orders (id, merchant_id) VALUES (191, (SELECT k FROM v))",
    "WITH v AS (SELECT id FROM merchants WHERE name = 'Bel Air') UPDATE orders o SET merchant_id = v.id FROM v WHERE o.id = 1",
    "WITH h AS (SELECT id FROM orders WHERE merchant_id IS NULL) DELETE FROM orders WHERE id IN (SELECT id FROM h) RETURNING id",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) UPDATE orders SET amount = 0 WHERE id IN (SELECT n FROM r) RETURNING id",
    "WITH c AS MATERIALIZED (SELECT id FROM countries) UPDATE merchants SET country_id = (SELECT min(id) FROM c) WHERE id = 1",
    "WITH s AS (SELECT 1 AS id) INSERT INTO orders (id, merchant_id) VALUES (192, 1) ON CONFLICT (id) DO UPDATE SET note = (SELECT 'from ' || id FROM s)",
    // MERGE: a hidden target row matches no source row; new rows are
    // checked.
    "MERGE INTO orders o USING (SELECT 1 AS id, 1 AS m) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET note = 'merged' WHEN NOT MATCHED THEN INSERT (id, merchant_id) VALUES (s.id, s.m)",
    "MERGE INTO orders o USING (VALUES (11, 1), (500, 1)) s(id, m) ON o.id = s.id WHEN MATCHED THEN UPDATE SET amount = 0 WHEN NOT MATCHED THEN INSERT (id, merchant_id) VALUES (s.id, s.m)",
    "MERGE INTO orders o USING merchants m ON o.merchant_id = m.id WHEN MATCHED AND m.tier = 1 THEN UPDATE SET note = m.name",
    "MERGE INTO orders o USING (SELECT 11 AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET merchant_id = 5",
    "MERGE INTO orders o USING (SELECT 11 AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET merchant_id = (SELECT min(id) FROM merchants)",
    "MERGE INTO orders o USING (SELECT 13 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE",
    "MERGE INTO orders o USING (SELECT 11 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN DO NOTHING",
    "MERGE INTO orders o USING (SELECT 600 AS id, 5 AS m) s ON o.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.m)",
    "MERGE INTO orders o USING (SELECT 601 AS id) s ON o.id = s.id WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
    "MERGE INTO orders o USING (SELECT 602 AS id) s ON o.id = s.id WHEN NOT MATCHED THEN INSERT (id, merchant_id) VALUES (s.id, DEFAULT)",
    "MERGE INTO orders o USING orders s ON o.id = s.id AND o.amount / 0 > 1 WHEN MATCHED THEN DO NOTHING",
    "MERGE INTO orders o USING (SELECT id FROM orders WHERE merchant_id IS NULL) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET note = 'x' WHEN NOT MATCHED THEN DO NOTHING",
    "MERGE INTO orders o USING (SELECT id, merchant_id FROM orders WHERE id < 20) s ON o.id = s.id + 100 WHEN NOT MATCHED AND s.merchant_id IS NOT NULL THEN INSERT (id, merchant_id) VALUES (s.id + 100, s.merchant_id)",
    "MERGE INTO merchants t USING (SELECT 1 AS id, 2.6 AS tier) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET tier = s.tier",
    "MERGE INTO merchants t USING (SELECT 5 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = 'x' || CAST(t.name AS integer)",
    "MERGE INTO sales.events e USING (SELECT 3 AS id, date '2024-07-31' AS at) s ON e.id = s.id AND e.at = s.at WHEN MATCHED THEN UPDATE SET what = 'm', at = '2025-05-05'",
    // Write statements under a WITH that writes: each write rewritten as
    // one.
    "WITH d AS (DELETE FROM sales.\"Returns\" RETURNING order_id) UPDATE orders SET note = 'returned' WHERE id IN (SELECT order_id FROM d)",
    "WITH d AS (DELETE FROM orders WHERE id < 12 RETURNING id, merchant_id) INSERT INTO orders (id, merchant_id) SELECT id + 1000, merchant_id FROM d RETURNING id",
    "WITH d AS (DELETE FROM orders WHERE id < 12 RETURNING id) INSERT INTO orders (id, merchant_id) SELECT id + 1000, 5 FROM d",
    "WITH u AS (UPDATE merchants SET tier = 2 WHERE id = 1 RETURNING id) DELETE FROM orders WHERE merchant_id IN (SELECT id FROM u) RETURNING id",
    "WITH i AS (INSERT INTO merchants (id, name, country_id, tier) VALUES (72, 'King Inc', 1, 1) RETURNING id) INSERT INTO orders (id, merchant_id) SELECT 195, id FROM i",
    // SQL PREPARE of a write, then EXECUTE (the parameters of the types
    // PREPARE gives them).
    "PREPARE w1(int, int) AS UPDATE orders SET merchant_id = $1 WHERE id = $2; EXECUTE w1(2, 1)",
    "PREPARE w2(int, int) AS UPDATE orders SET merchant_id = $1 WHERE id = $2; EXECUTE w2(5, 1)",
    "PREPARE w3(int) AS DELETE FROM orders WHERE id < $1 RETURNING id; EXECUTE w3(10)",
    "PREPARE w4(int, int) AS INSERT INTO orders (id, merchant_id) VALUES ($1, $2) RETURNING *; EXECUTE w4(180, 1)",
    "PREPARE w5(int, int) AS INSERT INTO orders (id, merchant_id) VALUES ($1, $2); EXECUTE w5(181, 5)",
    "PREPARE w6(int, numeric) AS INSERT INTO merchants (id, name, country_id, tier) VALUES ($1, 'King Inc', 1, $2); EXECUTE w6(68, 1.6)",
    "PREPARE w7(text, int) AS UPDATE merchants SET name = $1 WHERE id = $2; EXECUTE w7('Bel Air', 1)",
    "PREPARE w8(int) AS INSERT INTO orders (id) VALUES ($1); EXECUTE w8(182)",
    "INSERT INTO orders (id, merchant_id) (SELECT 177, 1 UNION SELECT 1, 1) ON CONFLICT (id) DO NOTHING RETURNING id",
];

/// Forms native RLS runs that rowgate refuses (`0A000`, or `42501` for a
/// write inside WITH) until it can prove them the same: each must be
/// refused, never run differently.
const REFUSED: &[&str] = &[
    "INSERT INTO orders (id, merchant_id) SELECT * FROM (VALUES (120, 1)) v",
    "INSERT INTO merchants (id, name, country_id, tier) VALUES (1, 'King Inc', 1, 1) ON CONFLICT (id) DO UPDATE SET name = initcap('king inc'), country_id = abs(-1), tier = abs(-1)",
    "INSERT INTO orders (id, merchant_id) VALUES (178, generate_series(1, 2))",
    "UPDATE orders SET merchant_id = count(*) OVER () WHERE id = 1",
    "WITH orders AS (SELECT 1 AS id) DELETE FROM orders",
    "DELETE FROM ONLY sales.notes",
    "WITH x AS (SELECT 1 AS id) , d AS (DELETE FROM orders WHERE id IN (SELECT id FROM x) RETURNING id) SELECT count(*) FROM d",
];

const TABLES: &[&str] = &[
    "countries",
    "merchants",
    "orders",
    "products",
    "tickets",
    "sales.\"Returns\"",
    "hr.salaries",
    "sales.events",
    "ONLY sales.notes",
    "sales.notes_archive",
];

/// Tables with partitions and inheritance children, and their rules: the
/// parent's rule applies to every row read or written through it, as
/// native RLS applies the parent's policies.
const FAMILIES: &str = "\
    CREATE TABLE sales.events (id int, merchant_id int, at date, what text, PRIMARY KEY (id, at)) \
      PARTITION BY RANGE (at);\n\
    CREATE TABLE sales.events_2024 PARTITION OF sales.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n\
    CREATE TABLE sales.events_2025 PARTITION OF sales.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n\
    INSERT INTO sales.events SELECT i, CASE WHEN i % 4 = 0 THEN 5 ELSE (i % 3) + 1 END, \
      date '2024-06-01' + i * 20, 'e' || i FROM generate_series(1, 20) i;\n\
    CREATE TABLE sales.notes (id int PRIMARY KEY, merchant_id int, body text);\n\
    CREATE TABLE sales.notes_archive (archived date) INHERITS (sales.notes);\n\
    INSERT INTO sales.notes VALUES (1, 1, 'n1'), (2, 5, 'n2'), (3, 2, 'n3');\n\
    INSERT INTO sales.notes_archive VALUES (4, 1, 'a4', '2020-01-01'), (5, 5, 'a5', '2020-01-01');\n\
    CREATE TABLE sales.staged (LIKE orders);\n\
    INSERT INTO sales.staged VALUES (200, 1, 1, 'paid', '2024-01-01', 's1'), (201, 5, 2, 'open', NULL, 's2'), \
      (202, 2, 3, NULL, NULL, 's3');\n";
const FAMILY_TABLES: &[&str] = &["sales.events", "sales.notes", "sales.notes_archive"];
const FAMILY_RULE: &str = "merchant_id IN (SELECT id FROM merchants)";

/// The outcome of a statement: the rows it returned (sorted) and the
/// count of its command tag, or its error's SQLSTATE and message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done(Vec<Vec<Option<String>>>, u64),
    Failed(String, String),
}

fn run(client: &mut postgres::Client, sql: &str) -> Outcome {
    match client.simple_query(sql) {
        Ok(messages) => {
            let mut rows = Vec::new();
            let mut count = 0;
            for m in messages {
                match m {
                    postgres::SimpleQueryMessage::Row(r) => {
                        rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    postgres::SimpleQueryMessage::CommandComplete(n) => count = n,
                    _ => {}
                }
            }
            rows.sort();
            Outcome::Done(rows, count)
        }
        Err(e) => match e.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_string();
                // rowgate names a table it refuses with its schema; the
                // SQLSTATE of a permission refusal is what must agree.
                let message = if code == "42501" && db.message().starts_with("permission denied") {
                    "permission denied".to_string()
                } else {
                    db.message().to_string()
                };
                Outcome::Failed(code, message)
            }
            None => Outcome::Failed("connection".into(), e.to_string()),
        },
    }
}

/// Every table's rows, as the superuser sees them.
fn contents(db: &str) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let mut su = common::cluster().connect(db);
    TABLES
        .iter()
        .map(|t| {
            let mut rows = common::text_rows(&mut su, &format!("SELECT * FROM {t}")).unwrap();
            rows.sort();
            (t.to_string(), rows)
        })
        .collect()
}

fn snapshot(db: &str) {
    let mut su = common::cluster().connect(db);
    let mut sql = "CREATE SCHEMA baseline;".to_string();
    for (i, t) in TABLES.iter().enumerate() {
        sql += &format!("CREATE TABLE baseline.t{i} AS SELECT * FROM {t};");
    }
    su.batch_execute(&sql).unwrap();
}

fn restore(db: &str) {
    let mut su = common::cluster().connect(db);
    let mut sql = format!("TRUNCATE {};", TABLES.join(", "));
    for (i, t) in TABLES.iter().enumerate() {
        let t = t.trim_start_matches("ONLY ");
        sql += &format!("INSERT INTO {t} SELECT * FROM baseline.t{i};");
    }
    su.batch_execute(&sql).unwrap();
}

struct Setup {
    native_db: String,
    gate_db: String,
    natives: std::collections::BTreeMap<&'static str, postgres::Client>,
    proxy: common::Proxy,
    _policies: tempfile::TempDir,
}

fn setup() -> Setup {
    let c = common::cluster();
    let native_db = c.create_database("writes_native");
    let gate_db = c.create_database("writes_gate");
    // Defaults of filtered columns: one computed, one constant.
    let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap()
        + "ALTER TABLE orders ALTER COLUMN merchant_id SET DEFAULT abs(-1);\n\
           ALTER TABLE merchants ALTER COLUMN tier SET DEFAULT 2;\n"
        + FAMILIES;
    c.connect(&gate_db).batch_execute(&schema).unwrap();
    let mut admin = c.connect(&native_db);
    admin.batch_execute(&schema).unwrap();
    let mut natives = std::collections::BTreeMap::new();
    for (user, rules) in rls::oracle_rules() {
        if !WRITERS.contains(&user) {
            continue;
        }
        let role = format!("{native_db}_{user}");
        let mut sql =
            format!("CREATE ROLE {role} LOGIN;\nGRANT USAGE ON SCHEMA sales, hr TO {role};\n");
        // Staged rows, all visible (no rule), for INSERT ... SELECT *.
        sql += &format!("GRANT SELECT ON sales.staged TO {role};\n");
        let family = FAMILY_TABLES.iter().map(|t| (*t, FAMILY_RULE));
        for (table, rule) in rules.expect("a member's rules").into_iter().chain(family) {
            sql += &format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role};\n\
                 CREATE POLICY {role} ON {table} FOR ALL TO {role} USING ({rule}) WITH CHECK ({rule});\n"
            );
        }
        admin
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let client = postgres::Client::connect(&c.url(&native_db, &role), postgres::NoTls).unwrap();
        natives.insert(user, client);
    }
    let mut enable = String::new();
    for t in TABLES {
        enable += &format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;");
    }
    admin.batch_execute(&enable).unwrap();
    snapshot(&native_db);
    snapshot(&gate_db);
    // rowgate: the differential policy with the writers read-write.
    let mut policy = std::fs::read_to_string(rls::POLICY).unwrap();
    for t in FAMILY_TABLES {
        policy += &format!(
            "  {t}:\n    filters:\n      - {{ column: merchant_id, references: public.merchants(id) }}\n"
        );
    }
    let mut writable = String::new();
    for line in policy.lines() {
        writable += line;
        writable.push('\n');
        if WRITERS.iter().any(|w| line == format!("  {w}:")) {
            writable += "    access: read-write\n";
        }
    }
    assert_eq!(
        writable.matches("access: read-write").count(),
        WRITERS.len(),
        "every writer made read-write"
    );
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policy.yaml"), writable).unwrap();
    let proxy = common::Proxy::start(policies.path(), "catalog: native\n");
    Setup {
        native_db,
        gate_db,
        natives,
        proxy,
        _policies: policies,
    }
}

#[test]
fn writes_match_native_rls() {
    let mut s = setup();
    let mut differences = Vec::new();
    let mut compared = 0;
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for &user in WRITERS {
        let mut gate = s
            .proxy
            .connect(&s.gate_db, user, "pw")
            .unwrap_or_else(|e| panic!("{e}\n{}", s.proxy.log()));
        for &sql in WRITES {
            let native = run(s.natives.get_mut(user).unwrap(), sql);
            let ours = run(&mut gate, sql);
            let (native_after, ours_after) = (contents(&s.native_db), contents(&s.gate_db));
            compared += 1;
            let kind = match &native {
                Outcome::Done(_, 0) => "no row",
                Outcome::Done(..) => "written",
                Outcome::Failed(code, m) if code == "42501" && m.starts_with("new row") => {
                    "new row refused"
                }
                Outcome::Failed(code, _) if code == "42501" => "not granted",
                Outcome::Failed(..) => "other error",
            };
            *outcomes.entry(kind).or_default() += 1;
            if native != ours {
                differences.push(format!(
                    "{user}: {sql}\n  native:  {native:?}\n  rowgate: {ours:?}"
                ));
            } else if native_after != ours_after {
                let changed: Vec<&String> = native_after
                    .iter()
                    .zip(&ours_after)
                    .filter(|(a, b)| a != b)
                    .map(|(a, _)| &a.0)
                    .collect();
                differences.push(format!("{user}: {sql}\n  contents differ: {changed:?}"));
            }
            restore(&s.native_db);
            restore(&s.gate_db);
        }
        for &sql in REFUSED {
            match run(&mut gate, sql) {
                Outcome::Failed(code, _) if code == "0A000" || code == "42501" => {}
                other => {
                    differences.push(format!("{user}: {sql}\n  expected a refusal: {other:?}"))
                }
            }
            if contents(&s.gate_db) != contents(&s.native_db) {
                differences.push(format!("{user}: {sql}\n  a refused write changed rows"));
            }
            restore(&s.gate_db);
        }
    }
    assert!(
        differences.is_empty(),
        "{} difference(s) in {compared} writes:\n{}\n{}",
        differences.len(),
        differences.join("\n"),
        s.proxy
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(WRITES.len() >= 80, "only {} write statements", WRITES.len());
    // The fixture exercises every kind of outcome, several times.
    for kind in [
        "no row",
        "written",
        "new row refused",
        "not granted",
        "other error",
    ] {
        assert!(
            outcomes.get(kind).copied().unwrap_or(0) >= 3,
            "too few `{kind}` outcomes: {outcomes:?}"
        );
    }
}

/// The same through the extended protocol with parameters (as drivers and
/// BI tools send them), each statement three times (the second run on is
/// rowgate's automatic prepared statement).
#[test]
fn parameterized_writes_match_native_rls() {
    let mut s = setup();
    type Params = Vec<Box<dyn postgres::types::ToSql + Sync>>;
    type Case = (&'static str, fn() -> Params);
    let cases: Vec<Case> = vec![
        ("UPDATE orders SET merchant_id = $1 WHERE id = $2", || {
            vec![Box::new(2i32), Box::new(1i32)]
        }),
        ("UPDATE orders SET merchant_id = $1 WHERE id = $2", || {
            vec![Box::new(5i32), Box::new(1i32)]
        }),
        (
            "INSERT INTO orders (id, merchant_id, note) VALUES ($1, $2, $3)",
            || vec![Box::new(200i32), Box::new(1i32), Box::new("p".to_string())],
        ),
        (
            "INSERT INTO orders (id, merchant_id, note) VALUES ($1, $2, $3)",
            || vec![Box::new(201i32), Box::new(5i32), Box::new("p".to_string())],
        ),
        ("UPDATE merchants SET name = $1 WHERE id = $2", || {
            vec![Box::new("Other".to_string()), Box::new(1i32)]
        }),
        // Computed new values of the filtered column, and its default.
        (
            "UPDATE orders SET merchant_id = $1::int + 0 WHERE id = $2",
            || vec![Box::new(5i32), Box::new(1i32)],
        ),
        (
            "INSERT INTO orders (id, merchant_id) SELECT $1::int, m.id FROM merchants m WHERE m.id = $2",
            || vec![Box::new(202i32), Box::new(1i32)],
        ),
        ("INSERT INTO orders (id, note) VALUES ($1, $2)", || {
            vec![Box::new(203i32), Box::new("d".to_string())]
        }),
        ("DELETE FROM orders WHERE id = $1", || vec![Box::new(3i32)]),
        ("DELETE FROM orders WHERE status = $1 AND id < $2", || {
            vec![Box::new("paid".to_string()), Box::new(40i32)]
        }),
    ];
    let run = |client: &mut postgres::Client, sql: &str, params: &Params| -> Result<u64, String> {
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref()).collect();
        client
            .execute(sql, &refs)
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{} {}", db.code().code(), db.message()),
                None => e.to_string(),
            })
    };
    let mut differences = Vec::new();
    let mut refused_rows = 0;
    for &user in WRITERS {
        let mut gate = s.proxy.connect(&s.gate_db, user, "pw").unwrap();
        for (sql, params) in &cases {
            let params = params();
            for round in 1..=3 {
                let native = run(s.natives.get_mut(user).unwrap(), sql, &params);
                let ours = run(&mut gate, sql, &params);
                if native
                    .as_ref()
                    .is_err_and(|e| e.contains("new row violates"))
                {
                    refused_rows += 1;
                }
                if native != ours || contents(&s.native_db) != contents(&s.gate_db) {
                    differences.push(format!(
                        "{user} round {round}: {sql}\n  native:  {native:?}\n  rowgate: {ours:?}"
                    ));
                }
                restore(&s.native_db);
                restore(&s.gate_db);
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(refused_rows >= 3, "only {refused_rows} new rows refused");
}

/// Attacks of a read-write member on rows it cannot see, every byte it
/// receives scanned for them: updates and deletes of invisible rows by
/// every route, rows inserted into another tenant, values copied out of
/// hidden rows into visible ones, writes through a view, a function, a
/// WITH, COPY FROM; and a read-only member's writes stay refused. The
/// hidden rows are unchanged at the end.
#[test]
fn writes_reach_no_hidden_row() {
    let s = setup();
    let mut su = common::cluster().connect(&s.gate_db);
    su.batch_execute(
        "CREATE VIEW sales.v_merchants AS SELECT * FROM public.merchants;
         CREATE FUNCTION sales.wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM public.merchants';",
    )
    .unwrap();
    let hidden = |su: &mut postgres::Client| {
        common::text_rows(
            su,
            "SELECT * FROM merchants WHERE id IN (4, 5, 8, 10) ORDER BY id",
        )
        .unwrap()
    };
    let before = hidden(&mut su);
    // What king must never receive: names of merchants it cannot see.
    let secrets = ["Bel Air", "Brien", "GmbH"];
    let attacks = [
        "UPDATE merchants SET name = name WHERE id = 5 RETURNING name",
        "UPDATE merchants SET tier = 1 WHERE id IN (4, 5, 8, 10) RETURNING *",
        "DELETE FROM merchants WHERE id = 5 RETURNING name",
        "DELETE FROM merchants WHERE tier = 3",
        "UPDATE orders SET note = (SELECT name FROM merchants WHERE id = 5) WHERE id = 1 RETURNING note",
        "UPDATE orders SET note = (SELECT string_agg(name, ',') FROM merchants) RETURNING note",
        "INSERT INTO orders (id, merchant_id, note) VALUES (300, 1, (SELECT string_agg(name, ',') FROM merchants)) RETURNING note",
        "UPDATE orders o SET note = m.name FROM merchants m WHERE m.id = 5 RETURNING o.note",
        "DELETE FROM orders o USING merchants m WHERE o.merchant_id = m.id AND m.id = 5 RETURNING m.name",
        "UPDATE merchants SET name = 'Bel Air' WHERE id = 1",
        "INSERT INTO merchants (id, name, country_id, tier) VALUES (5, 'x', 1, 1)",
        "INSERT INTO merchants (id, name, country_id, tier) VALUES (500, 'Bel Air', 2, 3)",
        "UPDATE merchants SET tier = tier WHERE name LIKE 'Bel%'",
        "UPDATE sales.v_merchants SET name = 'x' WHERE id = 5",
        "DELETE FROM sales.v_merchants",
        "SELECT sales.wipe()",
        "WITH x AS (UPDATE merchants SET name = 'y' RETURNING *) SELECT * FROM x",
        "WITH x AS (DELETE FROM merchants RETURNING name) SELECT * FROM x",
        "COPY merchants FROM STDIN",
        // MERGE: a hidden row matches nothing, and the ON runs on no
        // hidden row before the filter.
        "MERGE INTO merchants t USING (SELECT 5 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = 'x' || CAST(t.name AS integer)",
        "MERGE INTO merchants t USING (SELECT 5 AS id) s ON t.id = s.id AND CAST(t.name AS integer) > 0 WHEN MATCHED THEN DO NOTHING",
        "MERGE INTO merchants t USING (SELECT id FROM generate_series(1, 11) id) s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "MERGE INTO merchants t USING (SELECT id FROM generate_series(1, 11) id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET tier = 1",
        "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN NOT MATCHED THEN INSERT (id, merchant_id, note) VALUES (900, 1, (SELECT string_agg(name, ',') FROM merchants))",
        // A prepared write reaches no hidden row either.
        "PREPARE hw(int) AS UPDATE merchants SET name = name WHERE id = $1 RETURNING name; EXECUTE hw(5)",
        "PREPARE hi(int) AS INSERT INTO orders (id, merchant_id, note) VALUES ($1, 1, (SELECT string_agg(name, ',') FROM merchants)) RETURNING note; EXECUTE hi(901)",
        // Under a WITH, whose queries read visible rows only.
        "WITH h AS (SELECT name FROM merchants) UPDATE orders SET note = (SELECT string_agg(name, ',') FROM h) WHERE id = 1 RETURNING note",
        "WITH h AS (SELECT * FROM merchants WHERE id = 5) UPDATE merchants SET name = 'x' FROM h WHERE merchants.id = h.id RETURNING h.name",
        "WITH h AS (SELECT id, name FROM merchants) INSERT INTO orders (id, merchant_id, note) SELECT 700 + id, 1, name FROM h RETURNING note",
        "WITH h AS (SELECT id FROM merchants WHERE id = 5) DELETE FROM merchants WHERE id IN (SELECT id FROM h)",
        // A SET value that would fail on the hidden conflicting row (and
        // quote its name) before the visibility check.
        "INSERT INTO merchants (id, name, country_id, tier) VALUES (5, 'x', 1, 1) ON CONFLICT (id) DO UPDATE SET created = '2020-01-01', country_id = CAST(merchants.name AS integer)",
        "INSERT INTO merchants (id, name, country_id, tier) VALUES (5, 'x', 1, 1) ON CONFLICT (id) DO UPDATE SET tier = 1, name = 'x' || CAST(merchants.name AS integer)",
        "UPDATE merchants SET name = 'y' WHERE id = 5; UPDATE merchants SET name = 'y' WHERE id = 8",
        "TRUNCATE merchants",
        "DELETE FROM ONLY merchants WHERE id = 5",
    ];
    let mut king = common::raw::Client::connect(s.proxy.port).unwrap();
    king.login("king", &s.gate_db, Some("pw"), &[]).unwrap();
    for sql in attacks {
        let _ = king.query(sql);
    }
    let received = String::from_utf8_lossy(&king.received).into_owned();
    for secret in secrets {
        assert!(
            !received.contains(secret),
            "king received {secret:?}:\n{received}"
        );
    }
    assert_eq!(hidden(&mut su), before, "a hidden row changed");
    // The attacks did reach rowgate and PostgreSQL: some wrote visible rows.
    assert!(
        received.contains("UPDATE 1") || received.contains("INSERT 0 1"),
        "{received}"
    );
    // A read-only member writes nothing.
    let all = |su: &mut postgres::Client| {
        common::text_rows(su, "SELECT (SELECT count(*) FROM orders), (SELECT sum(amount) FROM orders), (SELECT count(*) FROM products)").unwrap()
    };
    let was = all(&mut su);
    let mut ceo = s.proxy.connect(&s.gate_db, "ceo", "pw").unwrap();
    for sql in [
        "DELETE FROM orders",
        "UPDATE orders SET amount = 0",
        "INSERT INTO products (id, name) VALUES (9, 'x')",
    ] {
        let e = ceo.batch_execute(sql).unwrap_err();
        assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"), "{sql}");
    }
    assert_eq!(all(&mut su), was);
}

/// `read_only:` keeps a granted table from a read-write member's writes,
/// and `rowgate access` says so.
#[test]
fn a_read_only_table_of_a_read_write_member_is_not_written() {
    let c = common::cluster();
    let db = c.create_database("writes_ro");
    let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap();
    c.connect(&db).batch_execute(&schema).unwrap();
    let policy = std::fs::read_to_string(rls::POLICY).unwrap().replace(
        "  king:\n",
        "  king:\n    access: read-write\n    read_only: [public.orders]\n",
    );
    assert!(policy.contains("read_only: [public.orders]"));
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policy.yaml"), &policy).unwrap();
    let proxy = common::Proxy::start(policies.path(), "");
    let mut king = proxy.connect(&db, "king", "pw").unwrap();
    for sql in [
        "UPDATE orders SET amount = 0 WHERE id = 11",
        "DELETE FROM orders WHERE id = 11",
        "INSERT INTO orders (id, merchant_id) VALUES (500, 1)",
    ] {
        let e = king.batch_execute(sql).unwrap_err();
        let db_error = e.as_db_error().unwrap();
        assert_eq!(db_error.code().code(), "42501", "{sql}");
        assert!(
            db_error.message().contains("writing public.orders"),
            "{}",
            db_error.message()
        );
    }
    assert_eq!(
        king.execute("UPDATE merchants SET tier = 1 WHERE id = 1", &[])
            .unwrap(),
        1
    );
    // Order 11 is King Inc's: visible, and not written.
    let rows = king
        .query("SELECT amount::text FROM orders WHERE id = 11", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "77.50");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(["access", "--user", "king", "-c"])
        .arg(proxy.dir.path().join("proxy.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("public.orders (group sales, read-only (user)):"),
        "{text}"
    );
    assert!(text.contains("public.merchants (group sales):"), "{text}");
}

/// `COPY t FROM STDIN`: native PostgreSQL refuses COPY FROM under
/// row-level security ("use INSERT statements instead"); through rowgate a
/// read-write member's COPY (simple query protocol) checks each row as an
/// INSERT of it does, so the oracle is the INSERT of the same rows: same
/// count or same error, and the same contents after.
#[test]
fn copy_from_stdin_checks_rows_as_inserts_do() {
    let mut s = setup();
    // (columns, COPY options, data, the same rows as VALUES)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "(id, merchant_id)",
            "WITH (FORMAT csv)",
            "500,1\n501,1\n",
            "(500, 1), (501, 1)",
        ),
        (
            "(id, merchant_id)",
            "WITH (FORMAT csv)",
            "502,1\n503,5\n",
            "(502, 1), (503, 5)",
        ),
        ("(id, merchant_id)", "WITH (FORMAT csv)", "1,1\n", "(1, 1)"),
        (
            "(id, merchant_id)",
            "WITH (FORMAT csv)",
            "504,\n",
            "(504, NULL)",
        ),
        (
            "(id, merchant_id, note)",
            "",
            "505\t1\tcopied\n",
            "(505, 1, 'copied')",
        ),
        // The filtered column left to its default (abs(-1)).
        (
            "(id, amount)",
            "WITH (FORMAT csv)",
            "507,2.5\n508,3\n",
            "(507, 2.5), (508, 3)",
        ),
        (
            "",
            "",
            "506\t9\t1.5\tpaid\t2024-06-01 00:00:00\t\\N\n",
            "(506, 9, 1.5, 'paid', '2024-06-01 00:00:00', NULL)",
        ),
    ];
    let mut differences = Vec::new();
    let mut refused = 0;
    for &user in WRITERS {
        let mut gate = common::raw::Client::connect(s.proxy.port).unwrap();
        gate.login(user, &s.gate_db, Some("pw"), &[]).unwrap();
        for (columns, options, data, values) in cases {
            let insert = format!("INSERT INTO orders {columns} VALUES {values}");
            let native = s
                .natives
                .get_mut(user)
                .unwrap()
                .execute(insert.as_str(), &[])
                .map_err(|e| {
                    let db = e.as_db_error().unwrap();
                    (db.code().code().to_string(), db.message().to_string())
                });
            let copy = format!("COPY orders {columns} FROM STDIN {options}");
            let messages = gate.copy_in(&copy, data.as_bytes()).unwrap();
            let ours = match messages.iter().find(|m| m.tag == b'E') {
                Some(e) => Err((
                    e.field(b'C').unwrap_or_default(),
                    e.field(b'M').unwrap_or_default(),
                )),
                None => {
                    // The client sees one CopyInResponse and the COPY's tag.
                    assert_eq!(messages.iter().filter(|m| m.tag == b'G').count(), 1);
                    let tags: Vec<String> = messages
                        .iter()
                        .filter(|m| m.tag == b'C')
                        .map(|m| {
                            String::from_utf8_lossy(&m.body)
                                .trim_end_matches('\0')
                                .to_string()
                        })
                        .collect();
                    match tags.as_slice() {
                        [tag] => Ok(tag
                            .strip_prefix("COPY ")
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(u64::MAX)),
                        _ => Err(("tags".to_string(), format!("{tags:?}"))),
                    }
                }
            };
            if native.as_ref().is_err_and(|(c, _)| c == "42501") {
                refused += 1;
            }
            if native != ours || contents(&s.native_db) != contents(&s.gate_db) {
                differences.push(format!(
                    "{user}: {copy} / {insert}\n  native:  {native:?}\n  rowgate: {ours:?}"
                ));
            }
            restore(&s.native_db);
            restore(&s.gate_db);
        }
        // The session goes on after a COPY, refused or not.
        let after = gate.query("SELECT 1").unwrap();
        assert!(after.iter().any(|m| m.tag == b'D'), "the session goes on");
    }
    let leftover = common::text_rows(
        &mut common::cluster().connect(&s.gate_db),
        "SELECT count(*) FROM pg_class WHERE relname = 'rowgate_copy'",
    )
    .unwrap();
    assert_eq!(leftover, [[Some("0".to_string())]]);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(refused >= 3, "only {refused} refused copies");
}

/// COPY FROM STDIN in the extended protocol (one text, one statement
/// there) is refused with a clear message; nothing is written.
#[test]
fn copy_from_in_the_extended_protocol_is_refused() {
    let s = setup();
    let mut king = s.proxy.connect(&s.gate_db, "king", "pw").unwrap();
    let e = king
        .copy_in("COPY orders (id, merchant_id) FROM STDIN")
        .err()
        .expect("refused");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("simple query"), "{}", db.message());
    assert_eq!(contents(&s.gate_db), contents(&s.native_db));
}
