//! Automatic prepared statements: statements a session repeats run upstream
//! as prepared statements. What each user sees must not change: the same
//! statement shapes with many different numbers are compared with native
//! RLS, in the same session, so that most runs go through `EXECUTE`. Also:
//! the statements really are prepared, `DEALLOCATE ALL` and failed
//! transactions behave as on PostgreSQL, a table change that stales a
//! prepared statement costs no error outside a transaction block,
//! settings that change how literals read are followed, and
//! `prepare_threshold: 0` turns it all off.

mod common;

use std::path::Path;

use common::rls::{self, PASSWORD};

/// A statement's rows (sorted) or its SQLSTATE.
fn outcome(client: &mut postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    match common::text_rows(client, sql) {
        Ok(mut rows) => {
            rows.sort();
            Ok(rows)
        }
        Err(e) => Err(common::sqlstate(&e).unwrap_or_else(|| e.to_string())),
    }
}

/// Statement shapes; `{i}` is a whole number, `{d}` a decimal. The first
/// ones may be prepared; the later ones have numbers where a parameter would
/// mean something else, and must go the ordinary way with the same result.
const SHAPES: &[&str] = &[
    "SELECT id, amount, status FROM orders WHERE id = {i}",
    "SELECT id, amount FROM orders WHERE amount > {d} AND id < {i}",
    "SELECT o.id, m.name FROM orders o JOIN merchants m ON m.id = o.merchant_id AND m.tier <= {i} \
     WHERE o.id BETWEEN {i} AND {i} ORDER BY o.id LIMIT {i}",
    "SELECT id FROM orders WHERE id IN ({i}, {i}, {i}) OR merchant_id = -{i}",
    "SELECT id, amount FROM orders WHERE amount * {d} > -{d} ORDER BY id LIMIT {i} OFFSET {i}",
    "SELECT count(*), sum(amount) FROM orders WHERE merchant_id = {i}",
    "SELECT name FROM merchants WHERE id = {i} AND created > date '2020-01-01' + {i}",
    "SELECT g FROM generate_series({i} % 50, {i} % 50 + 5) AS g",
    "SELECT id FROM orders WHERE placed_at < timestamp '2024-01-01' + {i} * interval '1 day'",
    "SELECT c.name FROM countries c WHERE c.id = {i};",
    // Not prepared: positions, the select list, grouping, subqueries, `*`.
    "SELECT id, status FROM orders WHERE id < {i} ORDER BY 2, 1",
    "SELECT id, {i} FROM orders WHERE id < {i}",
    "SELECT merchant_id, count(*) FROM orders WHERE id > {i} GROUP BY 1 HAVING count(*) > {i}",
    "SELECT id FROM merchants WHERE tier = {i} AND id IN (SELECT merchant_id FROM orders WHERE id < {i})",
    "SELECT * FROM orders WHERE id = {i}",
    // Errors must be PostgreSQL's own, prepared or not.
    "SELECT id FROM orders WHERE status = {i}",
    "SELECT id FROM orders WHERE id = {i} / 0",
];

const INTS: &[&str] = &[
    "1",
    "7",
    "007",
    "0",
    "12",
    "3",
    "2147483647",
    "2147483648",
    "99999999999",
    "60",
    "5",
];
const DECS: &[&str] = &[
    "0.5",
    "10.25",
    "99.5",
    "1.0",
    "0.000",
    "123456789012.5",
    "50.50",
];

/// `shape` with its holes filled from the lists, starting at `seed`.
fn fill(shape: &str, seed: usize) -> String {
    let mut out = String::new();
    let mut rest = shape;
    let mut n = seed;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let (value, skip) = match &rest[at..at + 3] {
            "{i}" => (INTS[n % INTS.len()], 3),
            "{d}" => (DECS[n % DECS.len()], 3),
            other => panic!("unknown hole {other}"),
        };
        out.push_str(value);
        n += 3;
        rest = &rest[at + skip..];
    }
    out.push_str(rest);
    out
}

#[test]
fn repeated_shapes_with_other_numbers_match_native_rls() {
    let db = common::cluster().create_database("autoprep");
    let mut oracles = rls::setup(&db);
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "");
    let ordinary = common::Proxy::start(Path::new(rls::POLICY), "prepare_threshold: 0\n");
    let mut differences = Vec::new();
    let mut runs = 0;
    for (&user, oracle) in oracles.iter_mut() {
        let mut through = proxy.connect(&db, user, PASSWORD).unwrap();
        let mut plain = ordinary.connect(&db, user, PASSWORD).unwrap();
        for shape in SHAPES {
            for seed in 0..9 {
                let sql = fill(shape, seed);
                let ours = outcome(&mut through, &sql);
                // Exactly what the ordinary rewrite gives, errors included,
                // and native RLS's rows whenever it has rows. (Where native
                // RLS fails, rowgate may refuse first.) One difference is
                // PostgreSQL's own: a generic plan of a prepared statement
                // does not evaluate constants under a filter that is always
                // false (a user with no values), where planning the
                // statement afresh fails on them: no rows instead of that
                // error.
                let expected = outcome(&mut plain, &sql);
                let native = outcome(oracle, &sql);
                runs += 1;
                let generic_plan_skips_error =
                    ours == Ok(Vec::new()) && expected.is_err() && native.is_err();
                if (ours != expected && !generic_plan_skips_error)
                    || (native.is_ok() && ours != native)
                {
                    differences.push(format!(
                        "{user}: {sql}\n  rowgate: {ours:?}\n  without preparing: {expected:?}\n  native:  {native:?}"
                    ));
                }
            }
        }
        // The prepared shapes are prepared statements of this session: the
        // first ten shapes and the division by zero (which fails only when
        // it runs), nothing else; alice may read none of the tables.
        let prepared = outcome(
            &mut through,
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'rowgate_auto_%'",
        );
        let expected = if user == "alice" { "1" } else { "11" };
        assert_eq!(
            prepared,
            Ok(vec![vec![Some(expected.to_string())]]),
            "{user}: automatic statements"
        );
    }
    assert!(
        differences.is_empty(),
        "{} of {runs} differ from native RLS:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn deallocate_all_aborted_transactions_and_stale_statements_behave_as_postgresql() {
    let db = common::cluster().create_database("autoprep_state");
    let mut oracles = rls::setup(&db);
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "");
    let oracle = oracles.get_mut("king").unwrap();
    let mut c = proxy.connect(&db, "king", PASSWORD).unwrap();
    let lookup = |id: u32| format!("SELECT id, amount FROM orders WHERE id = {id}");
    let expect = |c: &mut postgres::Client, o: &mut postgres::Client, id: u32| {
        let sql = lookup(id);
        assert_eq!(outcome(c, &sql), outcome(o, &sql), "{sql}");
    };
    for id in 1..=4 {
        expect(&mut c, oracle, id);
    }

    // The client drops every prepared statement, its own and rowgate's.
    c.batch_execute("PREPARE mine AS SELECT 1; DEALLOCATE ALL")
        .unwrap();
    for id in 5..=8 {
        expect(&mut c, oracle, id);
    }

    // rowgate's statement is not the client's to touch: DEALLOCATE,
    // PREPARE and EXECUTE of a name under the reserved prefix are refused,
    // and Bind, Describe and Close of one find no statement.
    let name = outcome(
        &mut c,
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'rowgate_auto_%'",
    )
    .unwrap();
    assert_eq!(name.len(), 1, "{name:?}");
    let name = name[0][0].clone().unwrap();
    for sql in [
        format!("DEALLOCATE {name}"),
        format!("EXECUTE {name}(8)"),
        format!("PREPARE {name} AS SELECT 1"),
        "PREPARE ROWGATE_auto_1 AS SELECT 1".to_string(),
    ] {
        assert_eq!(outcome(&mut c, &sql), Err("42501".into()), "{sql}");
    }
    let bound = c.query(name.as_str(), &[]);
    assert!(bound.is_err(), "a Parse under the reserved name is refused");
    assert_eq!(
        outcome(
            &mut c,
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'rowgate_auto_%'",
        ),
        Ok(vec![vec![Some("1".to_string())]])
    );
    expect(&mut c, oracle, 8);

    // A DEALLOCATE ALL parsed as a named statement, then statements that
    // rowgate prepares, then the DEALLOCATE run: it drops rowgate's new
    // statements too, and rowgate notices when it runs, not only when it
    // was parsed.
    let dealloc = c.prepare("DEALLOCATE ALL").unwrap();
    for id in 13..=15 {
        expect(&mut c, oracle, id);
    }
    c.execute(&dealloc, &[]).unwrap();
    // Inside a transaction block a missing statement could not be retried
    // unseen: it must not be missing.
    c.batch_execute("BEGIN").unwrap();
    for id in 16..=18 {
        expect(&mut c, oracle, id);
    }
    c.batch_execute("COMMIT").unwrap();

    // In a failed transaction the statement fails as PostgreSQL's would,
    // and runs again after ROLLBACK.
    c.batch_execute("BEGIN").unwrap();
    expect(&mut c, oracle, 9);
    assert_eq!(outcome(&mut c, "SELECT 1 / 0"), Err("22012".into()));
    assert_eq!(outcome(&mut c, &lookup(10)), Err("25P02".into()));
    c.batch_execute("ROLLBACK").unwrap();
    for id in 10..=12 {
        expect(&mut c, oracle, id);
    }

    // A column's type changes under a prepared statement: PostgreSQL
    // refuses to run it (0A000). Outside a transaction block rowgate runs
    // the statement again the ordinary way, so the client sees its rows.
    let mut admin = common::cluster().connect(&db);
    admin
        .batch_execute("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12, 3)")
        .unwrap();
    for id in 13..=17 {
        expect(&mut c, oracle, id);
    }
    // Inside one, the error has aborted the transaction: the client sees
    // it, and after ROLLBACK the statement runs again.
    admin
        .batch_execute("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12, 4)")
        .unwrap();
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(outcome(&mut c, &lookup(18)), Err("0A000".into()));
    c.batch_execute("ROLLBACK").unwrap();
    for id in 18..=21 {
        expect(&mut c, oracle, id);
    }
    // Order 22 is one of king's.
    let amount = outcome(&mut c, &lookup(22)).unwrap();
    assert_eq!(
        amount[0][1].as_deref(),
        Some("54.5000"),
        "the new type shows"
    );
}

#[test]
fn threshold_zero_prepares_nothing() {
    let db = common::cluster().create_database("autoprep_off");
    rls::setup(&db);
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "prepare_threshold: 0\n");
    let mut c = proxy.connect(&db, "king", PASSWORD).unwrap();
    for id in 1..=5 {
        outcome(&mut c, &format!("SELECT id FROM orders WHERE id = {id}")).unwrap();
        c.query_typed(
            "SELECT id FROM orders WHERE id = $1",
            &[(&id, postgres::types::Type::INT4)],
        )
        .unwrap();
    }
    assert_eq!(
        outcome(&mut c, "SELECT count(*) FROM pg_prepared_statements"),
        Ok(vec![vec![Some("0".to_string())]])
    );
}

#[test]
fn settings_that_change_how_literals_read_are_followed() {
    let db = common::cluster().create_database("autoprep_settings");
    let mut oracles = rls::setup(&db);
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "");
    let oracle = oracles.get_mut("ceo").unwrap();
    let mut c = proxy.connect(&db, "ceo", PASSWORD).unwrap();
    // The literal is read as a timestamptz in the session's time zone when
    // the statement is prepared: noon on the 10th in UTC is 22:00 on the
    // 9th in UTC+14, one order fewer.
    let shape = |id: u32| {
        format!(
            "SELECT id FROM orders WHERE id > {id} \
             AND placed_at < ('2024-01-10 12:00'::timestamptz AT TIME ZONE 'UTC')"
        )
    };
    let both = |c: &mut postgres::Client, o: &mut postgres::Client, sql: &str| {
        c.batch_execute(sql).unwrap();
        o.batch_execute(sql).unwrap();
    };
    let same = |c: &mut postgres::Client, o: &mut postgres::Client, id: u32| {
        let sql = shape(id);
        let ours = outcome(c, &sql);
        assert_eq!(ours, outcome(o, &sql), "{sql}");
        ours.unwrap().len()
    };
    let runs = |c: &mut postgres::Client, o: &mut postgres::Client| -> Vec<usize> {
        (0..3).map(|id| same(c, o, id)).collect()
    };
    both(&mut c, oracle, "SET TimeZone = 'UTC'");
    let utc = runs(&mut c, oracle);
    both(&mut c, oracle, "SET TimeZone = 'Pacific/Kiritimati'");
    let east = runs(&mut c, oracle);
    assert_eq!(
        utc.iter()
            .zip(&east)
            .map(|(u, e)| u - e)
            .collect::<Vec<_>>(),
        [1, 1, 1],
        "one order fewer: {utc:?} {east:?}"
    );
    // SET LOCAL ends with its transaction.
    both(&mut c, oracle, "BEGIN; SET LOCAL TimeZone = 'UTC'");
    assert_eq!(runs(&mut c, oracle), utc);
    both(&mut c, oracle, "COMMIT");
    assert_eq!(runs(&mut c, oracle), east);
    // A rolled-back SET is undone.
    both(&mut c, oracle, "BEGIN; SET TimeZone = 'UTC'");
    assert_eq!(runs(&mut c, oracle), utc);
    both(&mut c, oracle, "ROLLBACK");
    assert_eq!(runs(&mut c, oracle), east);
    // DateStyle, through the extended protocol: a repeated unnamed
    // statement follows it too.
    let dates = "SELECT count(*) FROM orders WHERE placed_at < '03/02/2024'::date";
    let count = |c: &mut postgres::Client| -> i64 { c.query_one(dates, &[]).unwrap().get(0) };
    c.batch_execute("SET DateStyle = 'ISO, MDY'").unwrap();
    let march = count(&mut c);
    assert_eq!(count(&mut c), march);
    c.batch_execute("SET DateStyle = 'ISO, DMY'").unwrap();
    let february = count(&mut c);
    assert!(
        february < march,
        "3 February ({february}) is before 2 March ({march})"
    );
    assert_eq!(count(&mut c), february);
}
