//! Leakproofness as PostgreSQL decides it, through the wire.
//!
//! - `decisions_match_postgresql`: every condition of
//!   `tests/cases/leakproof.yaml`, as `EXPLAIN (COSTS OFF) SELECT 1 FROM lp
//!   WHERE <condition>` sent to rowgate by a member whose filter hides a row:
//!   rowgate runs EXPLAIN only for statements it leaves unfenced, so whether
//!   the EXPLAIN runs is its decision. The case says what the decision must
//!   be, and PostgreSQL is asked too: a native role whose policy calls a
//!   costly function evaluates a member's condition ahead of it exactly when
//!   the condition is leakproof. rowgate may be more careful than
//!   PostgreSQL (marked in the case), never less.
//! - `error_probes_reveal_nothing`: statements that would fail on the
//!   hidden row's value if evaluated there (a numeric far beyond double
//!   precision's range), in every form a BI tool sends them, give exactly
//!   what the native role gets, and EXPLAIN of a condition that is not
//!   leakproof answers the same whether its value matches a hidden row or
//!   nothing.
//! - `references_filters_take_the_shape_their_set_calls_for`: a
//!   `references` filter to a referenced set of a few rows stays a
//!   semijoin, one to a few hundred becomes a hashed subplan as native
//!   RLS's, and both return native RLS's rows.

mod common;

use std::path::Path;

use postgres::types::{ToSql, Type};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(rename = "where")]
    condition: String,
    #[serde(default)]
    params: Vec<String>,
    leakproof: bool,
    #[serde(default)]
    postgres: Option<String>,
}

struct Fixture {
    proxy: common::Proxy,
    database: String,
}

fn fixture() -> Fixture {
    let c = common::cluster();
    let database = c.create_database("leakproof");
    let mut admin = c.connect(&database);
    let schema = std::fs::read_to_string(Path::new("tests/fixtures/leakproof/schema.sql")).unwrap();
    // One role for the cluster, made once whatever runs in parallel.
    static ROLE: std::sync::Once = std::sync::Once::new();
    ROLE.call_once(|| {
        c.connect("postgres")
            .batch_execute("CREATE ROLE lp_native LOGIN")
            .unwrap()
    });
    admin
        .batch_execute(&schema.replace("CREATE ROLE lp_native LOGIN;", ""))
        .unwrap();
    let proxy = common::Proxy::start(Path::new("tests/fixtures/leakproof/policy.yaml"), "");
    Fixture { proxy, database }
}

impl Fixture {
    /// A direct connection as the native RLS role.
    fn native(&self) -> postgres::Client {
        let url = common::cluster().url(&self.database, "lp_native");
        postgres::Client::connect(&url, postgres::NoTls).unwrap()
    }
}

fn param_type(name: &str) -> Type {
    match name {
        "float8" => Type::FLOAT8,
        "int4" => Type::INT4,
        "text" => Type::TEXT,
        "unspecified" => Type::UNKNOWN,
        other => panic!("no parameter type {other} in this test"),
    }
}

fn param_value(name: &str) -> Box<dyn ToSql + Sync> {
    match name {
        "float8" => Box::new(1.5f64),
        "int4" | "unspecified" => Box::new(1i32),
        "text" => Box::new("x".to_string()),
        other => panic!("no parameter type {other} in this test"),
    }
}

/// Runs `sql` with the case's parameters; the text of every row, or the
/// error.
fn run(
    client: &mut postgres::Client,
    sql: &str,
    params: &[String],
) -> Result<Vec<String>, postgres::Error> {
    if params.is_empty() {
        let rows = client.simple_query(sql)?;
        return Ok(rows
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect());
    }
    let types: Vec<Type> = params
        .iter()
        .map(|p| match p.as_str() {
            // An unspecified type is 0 in the Parse message.
            "unspecified" => Type::UNKNOWN,
            p => param_type(p),
        })
        .collect();
    let declared: Vec<Type> = types
        .iter()
        .map(|t| {
            if *t == Type::UNKNOWN {
                Type::INT4
            } else {
                t.clone()
            }
        })
        .collect();
    let statement = if types.contains(&Type::UNKNOWN) {
        client.prepare_typed(sql, &[])?
    } else {
        client.prepare_typed(sql, &declared)?
    };
    let values: Vec<Box<dyn ToSql + Sync>> = params.iter().map(|p| param_value(p)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
    let rows = client.query(&statement, &refs)?;
    Ok(rows
        .iter()
        .map(|r| {
            r.try_get::<_, String>(0)
                .or_else(|_| r.try_get::<_, i32>(0).map(|v| v.to_string()))
                .or_else(|_| r.try_get::<_, i64>(0).map(|v| v.to_string()))
                .unwrap_or_else(|e| format!("unreadable: {e}"))
        })
        .collect())
}

/// Whether PostgreSQL evaluates the member's condition before the policy's
/// costly function in the scan of `lp`.
fn postgres_runs_it_first(plan: &[String]) -> bool {
    plan.iter()
        .find(|l| l.contains("lp_gate("))
        .and_then(|l| l.trim().strip_prefix("Filter: "))
        .is_some_and(|f| !f.trim_start_matches('(').starts_with("lp_gate("))
}

#[test]
fn decisions_match_postgresql() {
    let fx = fixture();
    let text = std::fs::read_to_string("tests/cases/leakproof.yaml").unwrap();
    let cases: Vec<Case> = serde_saphyr::from_str(&text).unwrap();
    assert!(cases.len() >= 60, "the case table shrank: {}", cases.len());
    let mut member = fx.proxy.connect(&fx.database, "lp", "pw").unwrap();
    let mut native = fx.native();
    let mut failures = Vec::new();
    let (mut unfenced, mut careful) = (0, 0);
    for case in &cases {
        let sql = format!(
            "EXPLAIN (COSTS OFF) SELECT 1 FROM lp WHERE {}",
            case.condition
        );
        let rowgate = match run(&mut member, &sql, &case.params) {
            Ok(_) => true,
            Err(e) if common::sqlstate(&e).as_deref() == Some("42501") => {
                let message = e.as_db_error().map(|d| d.message().to_string());
                if !message.is_some_and(|m| m.contains("not leakproof")) {
                    failures.push(format!(
                        "{}: refused for another reason: {e}",
                        case.condition
                    ));
                    continue;
                }
                false
            }
            Err(e) => {
                failures.push(format!("{}: error through rowgate: {e}", case.condition));
                continue;
            }
        };
        let plan = match run(&mut native, &sql, &case.params) {
            Ok(plan) => plan,
            Err(e) => {
                failures.push(format!("{}: native EXPLAIN failed: {e}", case.condition));
                continue;
            }
        };
        let postgres = postgres_runs_it_first(&plan);
        if rowgate != case.leakproof {
            failures.push(format!(
                "{}: rowgate decided leakproof={rowgate}, the case says {}",
                case.condition, case.leakproof
            ));
        }
        let expected_postgres = case.leakproof || case.postgres.as_deref() == Some("leakproof");
        if postgres != expected_postgres {
            failures.push(format!(
                "{}: PostgreSQL runs it first: {postgres}, the case expects {expected_postgres}\n{}",
                case.condition,
                plan.join("\n")
            ));
        }
        if rowgate && !postgres {
            failures.push(format!(
                "{}: rowgate treats as leakproof what PostgreSQL does not",
                case.condition
            ));
        }
        unfenced += usize::from(rowgate);
        careful += usize::from(postgres && !rowgate);
    }
    eprintln!(
        "{} conditions: {unfenced} leakproof, {} not; {careful} where rowgate is more careful than PostgreSQL",
        cases.len(),
        cases.len() - unfenced
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Both outcomes must have been seen, or the check proves nothing.
    assert!(unfenced > 20 && cases.len() - unfenced > 20);
}

/// The outcome of a statement: its rows sorted, or its SQLSTATE.
fn outcome(result: Result<Vec<String>, postgres::Error>) -> String {
    match result {
        Ok(mut rows) => {
            rows.sort();
            format!("rows {rows:?}")
        }
        Err(e) => format!("error {}", common::sqlstate(&e).unwrap_or_default()),
    }
}

#[test]
fn error_probes_reveal_nothing() {
    let fx = fixture();
    let mut member = fx.proxy.connect(&fx.database, "lp", "pw").unwrap();
    let mut native = fx.native();
    // Each would raise "out of range for type double precision" (or real,
    // or integer) on the hidden row's `n`.
    let probes: &[(&str, &[&str])] = &[
        ("SELECT k FROM lp WHERE n = 1.5::float8", &[]),
        ("SELECT k FROM lp WHERE n > 2::real", &[]),
        ("SELECT k FROM lp WHERE n IN (1::float8, 2)", &[]),
        (
            "SELECT k FROM lp WHERE n = CAST(0 AS double precision)",
            &[],
        ),
        ("SELECT k FROM lp WHERE n BETWEEN 0::float8 AND 10", &[]),
        ("SELECT k FROM lp WHERE n::int4 = 1", &[]),
        ("SELECT k FROM lp WHERE n::text LIKE '27%'", &[]),
        ("SELECT k FROM lp WHERE n = $1", &["float8"]),
        ("SELECT k FROM lp WHERE n > $1", &["int4"]),
        (
            "SELECT o.id FROM lp_other o JOIN lp ON lp.k = o.k AND lp.n = 1.5::float8",
            &[],
        ),
        (
            "SELECT count(*) FROM lp WHERE n = 1.5::float8 AND i4 IS NULL",
            &[],
        ),
        (
            "SELECT k FROM (SELECT * FROM lp) s WHERE s.n = 1.5::float8",
            &[],
        ),
        (
            "WITH s AS (SELECT * FROM lp) SELECT k FROM s WHERE n = 1.5::float8",
            &[],
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (sql, params) in probes {
        let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
        let through = outcome(run(&mut member, sql, &params));
        let direct = outcome(run(&mut native, sql, &params));
        if through != direct {
            failures.push(format!("{sql}: rowgate {through}, native {direct}"));
        }
        checked += 1;
    }
    // The same through PREPARE/EXECUTE, a cursor and COPY.
    let sessions: &[&[&str]] = &[
        &[
            "PREPARE lp_p(float8) AS SELECT k FROM lp WHERE n = $1",
            "EXECUTE lp_p(1.5)",
            "DEALLOCATE lp_p",
        ],
        &[
            "BEGIN",
            "DECLARE lp_c CURSOR FOR SELECT k FROM lp WHERE n = 1.5::float8",
            "FETCH ALL FROM lp_c",
            "COMMIT",
        ],
        &["COPY (SELECT k FROM lp WHERE n = 1.5::float8) TO STDOUT"],
    ];
    for statements in sessions {
        let mut results = Vec::new();
        for client in [&mut member, &mut native] {
            let mut all = Vec::new();
            for s in *statements {
                let r = if s.starts_with("COPY") {
                    let mut out = String::new();
                    match client.copy_out(*s) {
                        Ok(mut reader) => {
                            use std::io::Read;
                            reader.read_to_string(&mut out).unwrap();
                            Ok(vec![out])
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    run(client, s, &[])
                };
                all.push(outcome(r));
            }
            let _ = client.simple_query("ROLLBACK");
            results.push(all);
        }
        if results[0] != results[1] {
            failures.push(format!(
                "{statements:?}: rowgate {:?}, native {:?}",
                results[0], results[1]
            ));
        }
        checked += 1;
    }
    // EXPLAIN of a condition that is not leakproof: a pattern matching the
    // hidden row and one matching nothing answer alike.
    let hidden = outcome(run(
        &mut member,
        "EXPLAIN SELECT 1 FROM lp WHERE t LIKE 'hid%'",
        &[],
    ));
    let nothing = outcome(run(
        &mut member,
        "EXPLAIN SELECT 1 FROM lp WHERE t LIKE 'zzz%'",
        &[],
    ));
    if hidden != nothing {
        failures.push(format!("EXPLAIN probe: {hidden} vs {nothing}"));
    }
    assert_eq!(
        hidden, "error 42501",
        "EXPLAIN of a LIKE on a filtered table"
    );
    // Every probe gave the visible row and no error: the check can fail.
    let visible = outcome(run(&mut member, probes[0].0, &[]));
    assert_eq!(
        visible, r#"rows ["1"]"#,
        "the visible row, without an error"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, probes.len() + sessions.len());
}

/// Whether the forwarded text fences the derived table named `alias`.
fn is_fenced(out: &str, alias: &str) -> bool {
    [
        format!("OFFSET NULL) AS {alias}"),
        format!("OFFSET NULL) {alias}"),
    ]
    .iter()
    .any(|p| {
        out.match_indices(p.as_str()).any(|(i, _)| {
            out[i + p.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric() && c != '_')
        })
    })
}

/// The statement rowgate forwarded for `sql`, from its log.
fn forwarded(proxy: &common::Proxy, before: usize) -> String {
    let log = proxy.log();
    log[before..]
        .lines()
        .filter_map(|l| l.split_once(" sql=").map(|(_, sql)| sql.to_string()))
        .next_back()
        .unwrap_or_default()
}

#[test]
fn fences_only_where_a_condition_may_leak() {
    let fx = fixture();
    let mut member = fx.proxy.connect(&fx.database, "lp", "pw").unwrap();
    let mut native = fx.native();
    // (statement, lp fenced, lp_other fenced, lp_other's references filter kept)
    let cases: &[(&str, bool, bool, bool)] = &[
        // A leaky condition on lp only: lp fenced, lp_other not (and its
        // references filter, implied by the join to lp's visible rows, left
        // out).
        (
            "SELECT o.id FROM lp JOIN lp_other o ON o.k = lp.k WHERE lp.n = 1.5::float8",
            true,
            false,
            false,
        ),
        // ... and on lp_other only.
        (
            "SELECT o.id FROM lp JOIN lp_other o ON o.k = lp.k WHERE o.t LIKE 'vis%'",
            false,
            true,
            true,
        ),
        // A leaky join condition reads both.
        (
            "SELECT o.id FROM lp JOIN lp_other o ON o.k + 0 = lp.k",
            true,
            true,
            true,
        ),
        // Leakproof: no fence, and the inner join to lp implies lp_other's
        // references filter.
        (
            "SELECT o.id, o.t FROM lp_other o JOIN lp ON lp.k = o.k WHERE lp.i4 = 1",
            false,
            false,
            false,
        ),
        (
            "SELECT o.id FROM lp_other o, lp WHERE o.k = lp.k",
            false,
            false,
            false,
        ),
        // An outer join keeps lp_other's rows whatever lp holds: the filter
        // stays.
        (
            "SELECT o.id, lp.k FROM lp_other o LEFT JOIN lp ON lp.k = o.k",
            false,
            false,
            true,
        ),
        // A join on another column implies nothing.
        (
            "SELECT o.id FROM lp_other o JOIN lp ON lp.i4 = o.k",
            false,
            false,
            true,
        ),
        // Derived tables and CTEs: a condition on an output evaluates the
        // output's expression where it is pushed down to.
        (
            "SELECT day FROM (SELECT date_trunc('day', tz) AS day, count(*) FROM lp GROUP BY 1) d",
            false,
            false,
            true,
        ),
        (
            "SELECT day FROM (SELECT date_trunc('day', tz) AS day FROM lp) d WHERE d.day > '2024-01-01'",
            true,
            false,
            true,
        ),
        (
            "SELECT * FROM (SELECT k, n FROM lp) d WHERE d.n = 1.5::float8",
            true,
            false,
            true,
        ),
        (
            "SELECT * FROM (SELECT k, n FROM lp) d WHERE d.k = 1",
            false,
            false,
            true,
        ),
        (
            "SELECT * FROM (SELECT k, count(*) AS c FROM lp GROUP BY k) d WHERE c > 1",
            false,
            false,
            true,
        ),
        (
            "SELECT k FROM (SELECT k, row_number() OVER (ORDER BY i4) AS rn FROM lp) d WHERE rn <= 3",
            false,
            false,
            true,
        ),
        (
            "WITH d AS (SELECT k, t FROM lp) SELECT k FROM d WHERE t = 'visible'",
            false,
            false,
            true,
        ),
        (
            "WITH d AS (SELECT k, t FROM lp) SELECT k FROM d WHERE t LIKE 'vis%'",
            true,
            false,
            true,
        ),
        (
            "WITH d (a, b) AS (SELECT k, n FROM lp) SELECT a FROM d WHERE b::float8 = 1.5",
            true,
            false,
            true,
        ),
        (
            "SELECT * FROM (SELECT * FROM lp) d WHERE n = 1.5::float8",
            true,
            false,
            true,
        ),
        (
            "SELECT * FROM (SELECT k, t FROM lp UNION ALL SELECT k, t FROM lp_other) u WHERE u.t LIKE 'vis%'",
            true,
            true,
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (sql, lp_fenced, other_fenced, references_kept) in cases {
        let before = fx.proxy.log().len();
        let through = outcome(run(&mut member, sql, &[]));
        let direct = outcome(run(&mut native, sql, &[]));
        if through != direct {
            failures.push(format!("{sql}: rowgate {through}, native {direct}"));
        }
        let out = forwarded(&fx.proxy, before);
        let lp_is_fenced = is_fenced(&out, "lp");
        let other_part = out.find("FROM public.lp_other").map(|i| &out[i..]);
        let other_is_fenced = is_fenced(&out, "o") || is_fenced(&out, "lp_other");
        let kept = other_part.is_none_or(|p| p.starts_with("FROM public.lp_other WHERE"));
        if (lp_is_fenced, other_is_fenced, kept) != (*lp_fenced, *other_fenced, *references_kept) {
            failures.push(format!(
                "{sql}: fenced lp {lp_is_fenced}, lp_other {other_is_fenced}, references kept {kept}; expected {lp_fenced}, {other_fenced}, {references_kept}\n  forwarded: {out}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `rowgate explain --database` reads the live catalog, so it prints what
/// the proxy forwards: no fence for a leakproof condition, one for a
/// condition that may leak. Without it, column types are unknown and both
/// are fenced.
#[test]
fn explain_with_the_live_catalog_prints_what_the_proxy_forwards() {
    let fx = fixture();
    let c = common::cluster();
    let dir = tempfile::tempdir().unwrap();
    let policies = std::fs::canonicalize("tests/fixtures/leakproof/policy.yaml").unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:1\npolicies: {}\nupstream:\n  host: 127.0.0.1\n  port: {}\n  user: postgres\n  tls: disable\n",
            policies.display(),
            c.port
        ),
    )
    .unwrap();
    let explain = |sql: &str, live: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rowgate"));
        cmd.args(["explain", "-c"])
            .arg(&config)
            .args(["--user", "lp"]);
        if live {
            cmd.args(["--database", &fx.database]);
        }
        let out = cmd.arg(sql).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let leakproof = "SELECT k FROM lp WHERE i4 = 5";
    let leaky = "SELECT k FROM lp WHERE t LIKE 'x%'";
    assert_eq!(
        explain(leakproof, true).trim(),
        "SELECT k FROM (SELECT * FROM public.lp WHERE lp.k IN (1)) AS lp WHERE i4 = 5"
    );
    assert!(explain(leaky, true).contains("OFFSET NULL"));
    assert!(explain(leakproof, false).contains("OFFSET NULL"));
    // The proxy forwards what the live explain prints.
    let before = fx.proxy.log().len();
    let mut member = fx.proxy.connect(&fx.database, "lp", "pw").unwrap();
    member.simple_query(leakproof).unwrap();
    assert_eq!(
        forwarded(&fx.proxy, before),
        explain(leakproof, true).trim()
    );
}

/// A `references` filter's shape follows the planner's estimate of the set
/// it refers to (src/rewrite/shape.rs): one shop's sales through a
/// semijoin, a region's hundred shops and every shop through a hashed
/// subplan, planned as native RLS plans its policy. The rows are native
/// RLS's in every shape.
#[test]
fn references_filters_take_the_shape_their_set_calls_for() {
    let c = common::cluster();
    let database = c.create_database("shapes");
    static ROLES: std::sync::Once = std::sync::Once::new();
    ROLES.call_once(|| {
        c.connect("postgres")
            .batch_execute(
                "CREATE ROLE shape_shop_native LOGIN; CREATE ROLE shape_region_native LOGIN; \
                 CREATE ROLE shape_all_native LOGIN;",
            )
            .unwrap()
    });
    let schema = std::fs::read_to_string("tests/fixtures/leakproof/shapes.sql").unwrap();
    c.connect(&database).batch_execute(&schema).unwrap();
    let proxy = common::Proxy::start(Path::new("tests/fixtures/leakproof/shapes.yaml"), "");
    let queries = [
        "SELECT count(*), sum(amount) FROM sales",
        "SELECT shop_id, count(*) FROM sales WHERE at >= '2026-01-20' GROUP BY 1 ORDER BY 1",
        "SELECT s.id FROM sales s JOIN shops sh ON sh.id = s.shop_id WHERE sh.name = 's0040' ORDER BY s.id",
        "SELECT id, shop_id, at FROM sales ORDER BY at DESC, id LIMIT 20",
        "SELECT count(*) FROM shops sh WHERE EXISTS (SELECT 1 FROM sales s WHERE s.shop_id = sh.id AND s.amount > 90)",
        "SELECT r.name, count(*) FROM sales s JOIN shops sh ON sh.id = s.shop_id \
         JOIN regions r ON r.id = sh.region_id GROUP BY 1 ORDER BY 1",
    ];
    // (user, whether the sales' filter is a hashed subplan)
    let users = [
        ("shape_shop", false),
        ("shape_region", true),
        ("shape_all", true),
    ];
    let mut failures = Vec::new();
    for (user, hashed) in users {
        let mut member = proxy.connect(&database, user, "pw").unwrap();
        let native_url = c.url(&database, &format!("{user}_native"));
        let mut native = postgres::Client::connect(&native_url, postgres::NoTls).unwrap();
        for sql in queries {
            let got = common::text_rows(&mut member, sql).map_err(|e| e.to_string());
            let want = common::text_rows(&mut native, sql).map_err(|e| e.to_string());
            if got != want || want.as_ref().is_ok_and(Vec::is_empty) {
                failures.push(format!("{user}: {sql}: {got:?} vs native {want:?}"));
            }
        }
        // The first query's forwarded text, and its plan next to native
        // RLS's: a hashed subplan where the set is mid-sized.
        let before = proxy.log().len();
        member.simple_query(queries[0]).unwrap();
        let text = forwarded(&proxy, before);
        if text.contains("IS TRUE") != hashed {
            failures.push(format!("{user}: forwarded {text}"));
        }
        let explain = |client: &mut postgres::Client| {
            common::text_rows(client, &format!("EXPLAIN (COSTS OFF) {}", queries[0]))
                .unwrap()
                .into_iter()
                .flatten()
                .map(Option::unwrap_or_default)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (ours, theirs) = (explain(&mut member), explain(&mut native));
        if hashed && !(ours.contains("hashed SubPlan") && theirs.contains("hashed SubPlan")) {
            failures.push(format!("{user}: plan\n{ours}\nnative plan\n{theirs}"));
        }
        if !hashed && ours.contains("SubPlan") {
            failures.push(format!("{user}: a subplan for one shop\n{ours}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
