//! The rewrite case suite: every case of `tests/cases/rewrite.yaml` is
//! rewritten for its user under `tests/fixtures/rewrite/policy.yaml` with the
//! offline catalog and the default search path, and checked:
//!
//! - a refusal has SQLSTATE 42501 and its message contains `refuse`;
//! - an accepted statement prints exactly `out`, and (for everyone but
//!   admins, whose text passes unparsed) `out` parses back to the very AST
//!   the rewriter produced;
//! - every expected `out` runs on a real PostgreSQL holding
//!   `tests/fixtures/rewrite/schema.sql`, after the case's `before` SQL (run
//!   as is, for an open transaction, a cursor or a prepared statement), unless
//!   the case says `run: false` and why.
//!
//! Every failure is collected and reported at the end, by case name.
//!
//! Bless mode: with `ROWGATE_BLESS=1`, a case with neither `out` nor
//! `refuse` gets what the rewriter does now written back into the case file.
//! A blessed output is a claim about correctness: review each one against
//! the specification before keeping it.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use rowgate::policy::PolicySet;
use rowgate::rewrite::{self, Context, OfflineCatalog, Refusal, Rewritten};
use serde::{Deserialize, Serialize};

/// One case of the suite, as written in the case file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Unique; `area.what` by convention.
    name: String,
    /// A user of the fixture policy.
    user: String,
    /// What the case shows, when the name does not say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The statement text the client sends.
    sql: String,
    /// The exact text forwarded upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    out: Option<String>,
    /// A substring of the refusal message (the SQLSTATE is always 42501).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refuse: Option<String>,
    /// SQL run as is on the same session before `out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<String>,
    /// Whether `out` is run on PostgreSQL.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    run: bool,
    /// Why `run` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const CASES: &str = "tests/cases/rewrite.yaml";
const POLICY: &str = "tests/fixtures/rewrite/policy.yaml";
const SCHEMA: &str = "tests/fixtures/rewrite/schema.sql";

fn load_policy() -> PolicySet {
    match rowgate::policy::load_path(&fixture(POLICY)) {
        Ok(loaded) => {
            assert!(
                loaded.warnings.is_empty(),
                "the fixture policy has warnings: {:?}",
                loaded.warnings
            );
            loaded.policy().clone()
        }
        Err(diagnostics) => {
            let text: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
            panic!("the fixture policy does not load:\n{}", text.join("\n"))
        }
    }
}

fn load_cases() -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(fixture(CASES))
        .unwrap_or_else(|e| panic!("cannot read {CASES}: {e}"));
    let cases: Vec<Case> =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{CASES} is malformed: {e}"));
    (text, cases)
}

/// The comment block at the top of the case file, kept when blessing.
fn header(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        } else {
            break;
        }
    }
    out
}

/// The case file as written back: the header, then the cases, one blank line
/// between two cases.
fn render(header: &str, cases: &[Case]) -> String {
    let yaml = serde_saphyr::to_string(&cases).expect("cases serialize");
    let mut out = header.to_string();
    for (i, line) in yaml.lines().enumerate() {
        if i > 0 && line.starts_with("- ") {
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Rewrites a case's statement for its user.
fn rewrite_case(policy: &PolicySet, case: &Case) -> Result<Result<Rewritten, Refusal>, String> {
    let access = policy
        .access(&case.user)
        .ok_or_else(|| format!("no user `{}` in the fixture policy", case.user))?;
    let catalog = OfflineCatalog::new(policy);
    let search_path = rewrite::default_search_path();
    let cx = Context {
        access: &access,
        catalog: &catalog,
        search_path: &search_path,
        params: &[],
        fence: Default::default(),
        listing: Default::default(),
    };
    Ok(rewrite::rewrite(&case.sql, &cx))
}

/// Checks the well-formedness of the case list itself.
fn check_cases(cases: &[Case], failures: &mut Vec<String>) {
    let mut names = HashSet::new();
    for case in cases {
        if !names.insert(case.name.as_str()) {
            failures.push(format!("{}: the name is used twice", case.name));
        }
        if case.out.is_some() && case.refuse.is_some() {
            failures.push(format!("{}: has both `out` and `refuse`", case.name));
        }
        if !case.run && case.reason.is_none() {
            failures.push(format!("{}: `run: false` without a `reason`", case.name));
        }
        if case.refuse.is_some() && (case.before.is_some() || !case.run) {
            failures.push(format!("{}: a refused case has nothing to run", case.name));
        }
    }
}

fn report(failures: &[String]) {
    if !failures.is_empty() {
        let mut text = format!("{} rewrite case failure(s):\n", failures.len());
        for f in failures {
            let _ = writeln!(text, "\n- {}", f.replace('\n', "\n  "));
        }
        panic!("{text}");
    }
}

/// The rewriter against the expected text of every case (no database).
#[test]
fn cases_rewrite_as_expected() {
    let policy = load_policy();
    let (text, mut cases) = load_cases();
    let bless = std::env::var("ROWGATE_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut blessed = Vec::new();
    check_cases(&cases, &mut failures);

    for case in &mut cases {
        let result = match rewrite_case(&policy, case) {
            Ok(result) => result,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        if let Ok(rewritten) = &result {
            if let Some(statements) = &rewritten.statements {
                match rewrite::parse(&rewritten.sql) {
                    Ok(reparsed) if &reparsed == statements => {}
                    Ok(_) => failures.push(format!(
                        "{}: the output does not parse back to the same AST\n   out: {}",
                        case.name, rewritten.sql
                    )),
                    Err(e) => failures.push(format!(
                        "{}: the output does not parse: {e}\n   out: {}",
                        case.name, rewritten.sql
                    )),
                }
            }
        }
        match (&case.out, &case.refuse, result) {
            (Some(out), None, Ok(rewritten)) => {
                if rewritten.sql != *out {
                    failures.push(format!(
                        "{}: wrong output\n   sql: {}\n  want: {out}\n   got: {}",
                        case.name, case.sql, rewritten.sql
                    ));
                }
            }
            (Some(out), None, Err(refusal)) => failures.push(format!(
                "{}: refused, but should be accepted\n   sql: {}\n  want: {out}\n   got: ERROR {}: {refusal}",
                case.name,
                case.sql,
                refusal.sqlstate()
            )),
            (None, Some(want), Err(refusal)) => {
                let message = refusal.to_string();
                if !message.contains(want.as_str()) {
                    failures.push(format!(
                        "{}: wrong refusal\n   sql: {}\n  want: ERROR: ...{want}...\n   got: ERROR {}: {message}",
                        case.name,
                        case.sql,
                        refusal.sqlstate()
                    ));
                }
            }
            (None, Some(want), Ok(rewritten)) => failures.push(format!(
                "{}: accepted, but should be refused\n   sql: {}\n  want: ERROR: ...{want}...\n   got: {}",
                case.name, case.sql, rewritten.sql
            )),
            (None, None, result) if bless => {
                match result {
                    Ok(rewritten) => case.out = Some(rewritten.sql),
                    Err(refusal) => case.refuse = Some(refusal.to_string()),
                }
                blessed.push(case.name.clone());
            }
            (None, None, _) => failures.push(format!(
                "{}: no `out` or `refuse`; run with ROWGATE_BLESS=1 to fill it in, then review it",
                case.name
            )),
            (Some(_), Some(_), _) => {} // reported by check_cases
        }
    }

    if !blessed.is_empty() {
        let new_text = render(&header(&text), &cases);
        let reread: Vec<Case> = serde_saphyr::from_str(&new_text)
            .unwrap_or_else(|e| panic!("the blessed case file does not parse back: {e}"));
        assert_eq!(reread, cases, "the blessed case file does not read back");
        // Through a temporary file, so that a concurrent reader never sees
        // half a file.
        let tmp = fixture(&format!("{CASES}.tmp"));
        std::fs::write(&tmp, new_text)
            .and_then(|()| std::fs::rename(&tmp, fixture(CASES)))
            .unwrap_or_else(|e| panic!("cannot write {CASES}: {e}"));
        eprintln!(
            "blessed {} case(s); review each output before keeping it:\n  {}",
            blessed.len(),
            blessed.join("\n  ")
        );
    }
    report(&failures);
}

/// Every expected output runs on PostgreSQL against the fixture schema.
#[test]
fn outputs_run_on_postgresql() {
    let policy = load_policy();
    let (_, cases) = load_cases();
    let cluster = common::cluster();
    let db = cluster.create_database("rewrite_cases");
    let schema = std::fs::read_to_string(fixture(SCHEMA))
        .unwrap_or_else(|e| panic!("cannot read {SCHEMA}: {e}"));
    cluster
        .connect(&db)
        .batch_execute(&schema)
        .unwrap_or_else(|e| panic!("{SCHEMA} does not load: {e}"));
    // A timeout as the session default, so that RESET ALL keeps it.
    let url = format!(
        "{} options='-c statement_timeout=10000'",
        cluster.url(&db, "postgres")
    );
    let mut client = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"));

    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        if !case.run || case.refuse.is_some() {
            continue;
        }
        // Cases not blessed yet run what the rewriter produces now.
        let out = match &case.out {
            Some(out) => out.clone(),
            None => match rewrite_case(&policy, case) {
                Ok(Ok(rewritten)) => rewritten.sql,
                _ => continue,
            },
        };
        if let Some(before) = &case.before {
            if let Err(e) = client.batch_execute(before) {
                failures.push(format!("{}: `before` fails: {}", case.name, pg_error(&e)));
                reset(&mut client);
                continue;
            }
        }
        let result = if out.trim_start().to_ascii_uppercase().starts_with("COPY") {
            client
                .copy_out(out.as_str())
                .map_err(|e| pg_error(&e))
                .and_then(|mut reader| {
                    let mut sink = Vec::new();
                    reader.read_to_end(&mut sink).map_err(|e| e.to_string())
                })
                .map(drop)
        } else {
            client
                .simple_query(&out)
                .map(drop)
                .map_err(|e| pg_error(&e))
        };
        if let Err(e) = result {
            failures.push(format!(
                "{}: the output fails on PostgreSQL: {e}\n   out: {out}",
                case.name
            ));
        }
        ran += 1;
        reset(&mut client);
    }
    assert!(ran > 0, "no case ran");
    report(&failures);
}

/// Ends whatever a case left open: transaction, cursors, prepared
/// statements, settings.
fn reset(client: &mut postgres::Client) {
    let _ = client.batch_execute("ROLLBACK");
    client
        .batch_execute("DISCARD ALL")
        .expect("the session resets between cases");
}

fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
