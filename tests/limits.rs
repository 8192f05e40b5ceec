//! Bounded work per statement: statements nested or chained far beyond what
//! anyone writes get a clear error (`54001`, as PostgreSQL answers them),
//! in both protocols, and harm nothing else: the session that sent them
//! and every other session go on. Upstream errors of any size reach the
//! client.

mod common;

use std::path::Path;

fn chain(n: usize, unit: &str, joiner: &str) -> String {
    vec![unit; n].join(joiner)
}

fn nested(n: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

#[test]
fn monster_statements_harm_nothing() {
    let c = common::cluster();
    let database = c.create_database("limits");
    let mut admin = c.connect(&database);
    admin
        .batch_execute(
            "CREATE TABLE lp (k int, i4 int, t text); \
             INSERT INTO lp VALUES (1, 1, 'visible'), (2, 2, 'hidden'); \
             CREATE TABLE lp_other (id int, k int, t text);",
        )
        .unwrap();
    let proxy = common::Proxy::start(Path::new("tests/fixtures/leakproof/policy.yaml"), "");
    let mut bystander = proxy.connect(&database, "lp", "pw").unwrap();
    let mut sender = proxy.connect(&database, "lp", "pw").unwrap();
    let alive = |client: &mut postgres::Client| {
        let rows = client.simple_query("SELECT t FROM lp").unwrap();
        let texts: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["visible"]);
    };
    alive(&mut bystander);

    let monsters = [
        (
            "100,000-term sum",
            format!("SELECT {}", chain(100_000, "1", "+")),
        ),
        (
            "60,000 ANDs",
            format!("SELECT 1 FROM lp WHERE {}", chain(60_000, "k = 1", " AND ")),
        ),
        (
            "40,000 UNION ALL branches",
            chain(40_000, "SELECT k FROM lp", " UNION ALL "),
        ),
        (
            "100,000 parentheses",
            format!("SELECT {}", nested(100_000, "(", "1", ")")),
        ),
        (
            "10,000 nested subqueries",
            format!("SELECT {}", nested(10_000, "(SELECT ", "1", ")")),
        ),
        (
            "20,000 casts",
            format!("SELECT 1{}", "::int".repeat(20_000)),
        ),
        (
            "30,000 NOTs",
            format!("SELECT {}true", "NOT ".repeat(30_000)),
        ),
    ];
    let mut refused = 0;
    for (what, sql) in &monsters {
        for extended in [false, true] {
            let result = if extended {
                sender.prepare(sql).map(|_| ())
            } else {
                sender.simple_query(sql).map(|_| ())
            };
            let e = result.expect_err(what);
            let state = common::sqlstate(&e);
            // rowgate's 54001, or PostgreSQL's own syntax error where its
            // parser gives up first (it reads a text before anything
            // else, as it does on a direct connection).
            match state.as_deref() {
                Some("54001") => {}
                Some("42601") => {
                    let direct = c.connect(&database).simple_query(sql).map(|_| ());
                    let native = direct.err().and_then(|e| common::sqlstate(&e));
                    assert_eq!(native.as_deref(), Some("42601"), "{what}: {e}");
                }
                other => panic!("{what} (extended: {extended}): {other:?} {e}"),
            }
            refused += 1;
            alive(&mut sender);
            alive(&mut bystander);
        }
    }
    assert_eq!(refused, monsters.len() * 2);

    // Just under the bound: analysed like any statement, answered by
    // PostgreSQL (which may itself find it too deep).
    let under = format!(
        "SELECT {}",
        chain(rowgate::rewrite::MAX_CHAIN - 10, "1", "+")
    );
    match sender.simple_query(&under) {
        Ok(_) => {}
        Err(e) => assert_eq!(common::sqlstate(&e).as_deref(), Some("54001"), "{e}"),
    }
    alive(&mut sender);

    // An upstream error of several megabytes reaches the client whole.
    let e = sender
        .simple_query("SELECT repeat('x', 3000000)::int")
        .expect_err("not an integer");
    assert_eq!(common::sqlstate(&e).as_deref(), Some("22P02"));
    let message = e.as_db_error().map(|d| d.message().len()).unwrap_or(0);
    assert!(message > 3_000_000, "message of {message} bytes");
    alive(&mut sender);
    alive(&mut bystander);
}
