//! The differential suite through the wire: every query shape, for every
//! user, sent to `rowgate serve` in three protocol modes and compared with
//! what native RLS returns for the same mode on a direct connection.
//!
//! - simple: the simple query protocol, text results;
//! - prepared: a named prepared statement (Parse once, Bind/Execute twice),
//!   binary results;
//! - unnamed: the unnamed statement in one pipeline (`query_typed`), binary.
//!
//! Simple and unnamed statements run three times each, so that rowgate's
//! automatic prepared statements (prepared on the second run, executed on
//! the third) are compared too.
//!
//! Binary values are compared as the exact bytes the server produced.

mod common;

use std::path::Path;

use common::rls::{self, Outcome, PASSWORD, QUERIES};
use common::RawValue;

type BinaryRows = Vec<Vec<Option<RawValue>>>;

#[derive(Debug, PartialEq)]
enum Binary {
    Rows(BinaryRows),
    Refused,
}

fn binary(result: Result<Vec<postgres::Row>, postgres::Error>) -> Result<Binary, String> {
    match result {
        Ok(rows) => {
            let mut out: BinaryRows = rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<RawValue>>(i))
                        .collect()
                })
                .collect();
            out.sort();
            Ok(Binary::Rows(out))
        }
        Err(e) if common::sqlstate(&e).as_deref() == Some("42501") => Ok(Binary::Refused),
        Err(e) => Err(format!("{e} [{:?}]", common::sqlstate(&e))),
    }
}

fn prepared(client: &mut postgres::Client, sql: &str) -> Result<Binary, String> {
    let statement = match client.prepare(sql) {
        Ok(s) => s,
        Err(e) => return binary(Err(e)),
    };
    let first = binary(client.query(&statement, &[]))?;
    let second = binary(client.query(&statement, &[]))?;
    if first != second {
        return Err("a prepared statement gave different rows on its second run".into());
    }
    Ok(first)
}

fn unnamed(client: &mut postgres::Client, sql: &str) -> Result<Binary, String> {
    binary(client.query_typed(sql, &[]))
}

/// Agreements and differences with native RLS.
#[derive(Default)]
struct Tally {
    differences: Vec<String>,
    compared: usize,
    refusals: usize,
}

impl Tally {
    fn add<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        ours: Result<T, String>,
        native: &Result<T, String>,
        refused: impl Fn(&T) -> bool,
    ) {
        match (&ours, native) {
            (Ok(a), Ok(b)) if a == b => {
                if refused(a) {
                    self.refusals += 1;
                } else {
                    self.compared += 1;
                }
            }
            (a, b) => self
                .differences
                .push(format!("{what}\n  rowgate: {a:?}\n  native:  {b:?}")),
        }
    }
}

#[test]
fn every_mode_returns_exactly_what_native_rls_returns() {
    let db = common::cluster().create_database("proxy_rls");
    let mut oracles = rls::setup(&db);
    // Exactly-native catalog listings: the shapes that read the catalog
    // compare with the native role too (`catalog: hide` is tested in
    // tests/tools.rs).
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "catalog: native\n");

    let mut tally = Tally::default();
    for (&user, oracle) in oracles.iter_mut() {
        let mut through = proxy.connect(&db, user, PASSWORD).unwrap_or_else(|e| {
            panic!(
                "{user} cannot connect through rowgate: {e}\n{}",
                proxy.log()
            )
        });
        for &sql in QUERIES.iter().chain(rls::LIVE_QUERIES) {
            // Three runs each: the ordinary rewrite, then (from the second
            // run, rowgate's prepare_threshold) the automatic prepared
            // statement being prepared, then only executed.
            let native = rls::run(oracle, sql);
            for run in 1..=3 {
                let ours = rls::run(&mut through, sql);
                tally.add(
                    &format!("simple (run {run}), {user}: {sql}"),
                    ours,
                    &native,
                    |o| *o == Outcome::Refused,
                );
            }
            for (mode, f, runs) in [
                ("prepared", prepared as fn(&mut _, &str) -> _, 1),
                ("unnamed", unnamed, 3),
            ] {
                let native = f(oracle, sql);
                for run in 1..=runs {
                    let ours = f(&mut through, sql);
                    tally.add(
                        &format!("{mode} (run {run}), {user}: {sql}"),
                        ours,
                        &native,
                        |b| *b == Binary::Refused,
                    );
                }
            }
        }
        // The session is still usable after every refusal.
        assert_eq!(
            rls::run(&mut through, "SELECT 1").unwrap(),
            Outcome::Rows(vec![vec![Some("1".into())]])
        );
    }
    let Tally {
        differences,
        compared,
        refusals,
    } = tally;
    assert!(
        differences.is_empty(),
        "{} difference(s) from native RLS through the wire:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(compared >= 7 * 350, "only {compared} comparisons");
    assert!(refusals >= 7 * 20, "only {refusals} agreed refusals");
}

/// A session that changes its search path, in and out of transactions
/// that commit or roll back, in both protocols, with errors that undo a
/// change, reads what the native role's session reads at every step.
#[test]
fn search_path_changes_mid_session_and_in_rolled_back_transactions() {
    let db = common::cluster().create_database("proxy_rls_path");
    let mut oracles = rls::setup(&db);
    let proxy = common::Proxy::start(Path::new(rls::POLICY), "catalog: native\n");
    // `Returns` is only in schema sales: found unqualified once sales is on
    // the path, and gone when the change is undone.
    let returns = "SELECT count(*) FROM \"Returns\"";
    let steps: &[&str] = &[
        "SELECT count(*) FROM merchants",
        returns,
        "SET search_path = sales, public",
        returns,
        "SELECT count(*) FROM merchants",
        "SET search_path = public",
        returns,
        "BEGIN",
        "SET LOCAL search_path = sales, public",
        returns,
        "ROLLBACK",
        returns,
        "BEGIN",
        "SET search_path = sales, public",
        "SAVEPOINT s",
        "SET search_path = public",
        "SELECT count(*) FROM products",
        "ROLLBACK TO s",
        returns,
        "COMMIT",
        returns,
        "SET search_path TO DEFAULT",
        returns,
        // An error undoes the implicit transaction's change.
        "SELECT 1; SET search_path = sales, public; SELECT 1/0",
        returns,
        // In a failed transaction nothing runs; its end undoes the change.
        "BEGIN",
        "SET search_path = sales, public",
        "SELECT 1/0",
        returns,
        "COMMIT",
        returns,
        "SELECT set_config('search_path', 'sales, public', false)",
        returns,
        "RESET search_path",
        returns,
        "SET search_path = \"$user\", sales",
        "SELECT count(*) FROM orders",
        returns,
        "RESET ALL",
        returns,
        "TABLE products",
    ];
    let mut compared = 0;
    for user in ["king", "ceo", "apac"] {
        let oracle = oracles.get_mut(user).unwrap();
        let mut through = proxy.connect(&db, user, PASSWORD).unwrap();
        // A relation that does not exist is refused as one not granted (so
        // that existence cannot be probed), where PostgreSQL says 42P01.
        let missing = |e: &String| e.contains("42P01");
        for step in steps {
            let native = rls::run(oracle, step);
            let native = match native {
                Err(e) if missing(&e) => Ok(Outcome::Refused),
                other => other,
            };
            let ours = rls::run(&mut through, step);
            assert_eq!(ours, native, "{user}: {step}");
            compared += 1;
            // The extended protocol too, for single statements.
            if !step.contains(';') {
                let native = match unnamed(oracle, step) {
                    Err(e) if missing(&e) => Ok(Binary::Refused),
                    other => other,
                };
                let ours = unnamed(&mut through, step);
                assert_eq!(ours, native, "{user} (extended): {step}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 3 * steps.len());
}

/// An admin who runs `SET rowgate.view_as = '<user>'` sees, statement for
/// statement and in both protocols, exactly what that user sees logged in
/// (refusals included), until `RESET rowgate.view_as`; the startup option
/// does the same from the start. Only admins may, only outside a
/// transaction block, only as a user of the policies.
#[test]
fn view_as_equals_logging_in_as_the_user() {
    let db = common::cluster().create_database("proxy_rls_view_as");
    let oracles = rls::setup(&db);
    let gate = with_an_admin("catalog: native\n");
    let mut admin = gate.connect(&db, "viewer", "pw").unwrap();
    let mut superuser = common::cluster().connect(&db);
    let everything = rls::run(&mut superuser, "SELECT id FROM orders").unwrap();
    let mut differences = Vec::new();
    let mut compared = 0;
    for &user in oracles.keys() {
        let mut member = gate.connect(&db, user, PASSWORD).unwrap();
        admin
            .simple_query(&format!("SET rowgate.view_as = '{user}'"))
            .unwrap();
        for &sql in QUERIES {
            let (ours, theirs) = (rls::run(&mut admin, sql), rls::run(&mut member, sql));
            if ours != theirs {
                differences.push(format!(
                    "simple, {user}: {sql}\n  viewing: {ours:?}\n  user: {theirs:?}"
                ));
            }
            let (ours, theirs) = (unnamed(&mut admin, sql), unnamed(&mut member, sql));
            if ours != theirs {
                differences.push(format!(
                    "unnamed, {user}: {sql}\n  viewing: {ours:?}\n  user: {theirs:?}"
                ));
            }
            compared += 2;
        }
        admin.simple_query("RESET rowgate.view_as").unwrap();
        assert_eq!(
            rls::run(&mut admin, "SELECT id FROM orders").unwrap(),
            everything,
            "the admin's own access is back after RESET"
        );
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert!(compared >= 7 * 120, "only {compared} comparisons");

    // From the start, with the startup option.
    let url = format!(
        "{} options='-c rowgate.view_as=king'",
        gate.url(&db, "viewer", "pw")
    );
    let mut viewing = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut king = gate.connect(&db, "king", PASSWORD).unwrap();
    for &sql in &QUERIES[..20] {
        assert_eq!(
            rls::run(&mut viewing, sql),
            rls::run(&mut king, sql),
            "{sql}"
        );
    }
    viewing.simple_query("RESET rowgate.view_as").unwrap();
    assert_eq!(
        rls::run(&mut viewing, "SELECT id FROM orders").unwrap(),
        everything
    );

    // What is refused, and how.
    let code = |r: Result<Vec<postgres::SimpleQueryMessage>, postgres::Error>| {
        r.err().and_then(|e| common::sqlstate(&e))
    };
    let mut member = gate.connect(&db, "king", PASSWORD).unwrap();
    assert_eq!(
        code(member.simple_query("SET rowgate.view_as = 'ceo'")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        code(admin.simple_query("SET rowgate.view_as = 'no_such_user'")).as_deref(),
        Some("42704")
    );
    admin.simple_query("BEGIN").unwrap();
    assert_eq!(
        code(admin.simple_query("SET rowgate.view_as = 'king'")).as_deref(),
        Some("25001")
    );
    admin.simple_query("ROLLBACK").unwrap();
    assert_eq!(
        code(admin.simple_query("SET LOCAL rowgate.view_as = 'king'")).as_deref(),
        Some("0A000")
    );
    let extended = admin.execute("SET rowgate.view_as = 'king'", &[]);
    assert_eq!(
        extended.err().and_then(|e| common::sqlstate(&e)).as_deref(),
        Some("0A000")
    );
    // None of those took effect.
    assert_eq!(
        rls::run(&mut admin, "SELECT id FROM orders").unwrap(),
        everything
    );
    let bad = postgres::Client::connect(
        &format!(
            "{} options='-c rowgate.view_as=nobody_at_all'",
            gate.url(&db, "viewer", "pw")
        ),
        postgres::NoTls,
    );
    assert_eq!(
        bad.err().and_then(|e| common::sqlstate(&e)).as_deref(),
        Some("42704")
    );
    drop(oracles);
}

/// `SHOW rowgate.access` and `SELECT rowgate.explain('...')` are answered
/// by rowgate for the session's user, or the user an admin views as.
#[test]
fn show_access_and_explain_answer_for_the_session_user() {
    let db = common::cluster().create_database("proxy_rls_answers");
    let _oracles = rls::setup(&db);
    let gate = with_an_admin("");
    let lines = |client: &mut postgres::Client, sql: &str| -> Vec<String> {
        common::text_rows(client, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    };
    let mut king = gate.connect(&db, "king", PASSWORD).unwrap();
    let access = lines(&mut king, "SHOW rowgate.access");
    assert_eq!(access[0], "user: king", "{access:?}");
    assert!(
        access
            .iter()
            .any(|l| l.contains("public.orders") && l.contains("WHERE")),
        "{access:?}"
    );
    // As `rowgate access` prints it.
    let loaded = rowgate::policy::load_path(Path::new(rls::POLICY)).unwrap();
    let printed =
        rowgate::cli::access::render(loaded.policy(), &loaded.policy().access("king").unwrap());
    assert_eq!(access, printed.lines().collect::<Vec<_>>());

    let explained = lines(
        &mut king,
        "SELECT rowgate.explain('SELECT count(*) FROM orders')",
    );
    assert_eq!(explained.len(), 1);
    assert!(
        explained[0].starts_with("SELECT count(*) FROM (SELECT * FROM public.orders WHERE"),
        "{explained:?}"
    );
    let refused = lines(&mut king, "SELECT rowgate.explain($$DELETE FROM orders$$)");
    assert!(refused[0].starts_with("ERROR 42501: "), "{refused:?}");
    // The answer is what the proxy then forwards.
    let before = gate.log().len();
    king.simple_query("SELECT count(*) FROM orders").unwrap();
    let forwarded = gate.log()[before..]
        .lines()
        .filter_map(|l| l.split_once(" sql=").map(|(_, s)| s.to_string()))
        .next_back();
    if let Some(forwarded) = forwarded {
        assert_eq!(forwarded, explained[0]);
    }

    let mut admin = gate.connect(&db, "viewer", "pw").unwrap();
    assert_eq!(lines(&mut admin, "SHOW rowgate.access")[0], "user: viewer");
    assert_eq!(
        lines(&mut admin, "SELECT rowgate.explain('SELECT 1')"),
        ["SELECT 1"]
    );
    admin.simple_query("SET rowgate.view_as = 'king'").unwrap();
    assert_eq!(lines(&mut admin, "SHOW rowgate.access"), access);
    assert_eq!(
        lines(
            &mut admin,
            "SELECT rowgate.explain('SELECT count(*) FROM orders')"
        ),
        explained
    );
}

/// rowgate with the differential policy and an admin, `viewer` (password
/// `pw`), next to its users.
fn with_an_admin(extra: &str) -> common::Gate {
    common::Gate::with_policies(
        &[
            (Path::new(rls::POLICY).to_path_buf(), "differential.yaml"),
            (
                Path::new("tests/fixtures/proxy/view_as_admin.yaml").to_path_buf(),
                "admin.yaml",
            ),
        ],
        extra,
        common::UpstreamAuth::TRUST,
    )
}
