//! Fidelity of the round trip: what rowgate forwards means exactly what the
//! client wrote. The corpus (`tests/fixtures/fidelity/corpus.sql`, written
//! for this project) covers the construct families of PostgreSQL's
//! regression suite over tables shaped like its shared ones. Each statement
//! runs directly and through rowgate, as an analyst (every row) and as a
//! member whose tables are filtered (against a native role with the same
//! rules as row-level security policies): the results must be equal. A
//! statement rowgate refuses is counted, with its cause, and the rate is
//! printed; it may not grow past the bound below.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

const SCHEMA: &str = "tests/fixtures/fidelity/schema.sql";
const CORPUS: &str = "tests/fixtures/fidelity/corpus.sql";
const POLICY: &str = "tests/fixtures/fidelity/policy.yaml";
/// The most statements of the corpus rowgate may refuse.
const MAX_REFUSED: usize = 8;

/// The corpus: (family, statement).
fn corpus() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(CORPUS).unwrap();
    let mut family = String::from("none");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("-- family: ") {
            family = f.trim().to_string();
            continue;
        }
        if line.starts_with("--") || (current.is_empty() && line.trim().is_empty()) {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let sql = current.trim().trim_end_matches(';').to_string();
            out.push((family.clone(), sql));
            current.clear();
        }
    }
    assert!(
        current.trim().is_empty(),
        "unterminated statement: {current}"
    );
    out
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Rows(Vec<Vec<Option<String>>>),
    Error(String),
}

fn run(client: &mut postgres::Client, sql: &str) -> Outcome {
    match common::text_rows(client, sql) {
        Ok(mut rows) => {
            rows.sort();
            Outcome::Rows(rows)
        }
        Err(e) => Outcome::Error(common::sqlstate(&e).unwrap_or_else(|| e.to_string())),
    }
}

fn is_refusal(o: &Outcome) -> bool {
    matches!(o, Outcome::Error(code) if matches!(code.as_str(), "42501" | "0A000" | "54001"))
}

#[test]
fn the_corpus_returns_the_same_through_rowgate() {
    let c = common::cluster();
    let db = c.create_database("fidelity");
    let mut admin = c.connect(&db);
    admin
        .batch_execute(&std::fs::read_to_string(SCHEMA).unwrap())
        .unwrap();
    let role = format!("{db}_member");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             CREATE POLICY m ON tenk1 FOR SELECT TO {role} USING (ten IN (1, 3, 4, 7));
             CREATE POLICY m ON onek FOR SELECT TO {role} USING (ten IN (1, 3, 4, 7));
             CREATE POLICY m ON emp FOR SELECT TO {role} USING (dept IN ('sales', 'dev'));
             ALTER TABLE tenk1 ENABLE ROW LEVEL SECURITY;
             ALTER TABLE onek ENABLE ROW LEVEL SECURITY;
             ALTER TABLE emp ENABLE ROW LEVEL SECURITY;"
        ))
        .unwrap();
    let mut native_member = postgres::Client::connect(&c.url(&db, &role), postgres::NoTls).unwrap();
    let proxy = common::Proxy::start(Path::new(POLICY), "");
    let mut analyst = proxy.connect(&db, "analyst", "pw").unwrap();
    let mut member = proxy.connect(&db, "member", "pw").unwrap();

    let corpus = corpus();
    assert!(corpus.len() >= 140, "{} statements", corpus.len());
    let mut differences = Vec::new();
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut families: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut compared = 0;
    for (family, sql) in &corpus {
        let tally = families.entry(family).or_default();
        tally.0 += 1;
        let mut was_refused = false;
        for (who, direct, through) in [
            ("analyst", &mut admin, &mut analyst),
            ("member", &mut native_member, &mut member),
        ] {
            let want = run(direct, sql);
            assert!(
                !matches!(want, Outcome::Error(_)),
                "{family}: {sql}: fails directly for the {who}: {want:?}"
            );
            let got = run(through, sql);
            if is_refusal(&got) {
                was_refused = true;
                let why = match through.simple_query(sql) {
                    Err(e) => e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default(),
                    Ok(_) => String::new(),
                };
                refused
                    .entry(why)
                    .or_default()
                    .push(format!("{family}: {sql}"));
                continue;
            }
            compared += 1;
            if got != want {
                differences.push(format!(
                    "{family} ({who}): {sql}\n  rowgate: {got:?}\n  direct:  {want:?}"
                ));
            }
        }
        if was_refused {
            tally.1 += 1;
        }
    }
    let total_refused: usize = families.values().map(|t| t.1).sum();
    println!(
        "fidelity: {} statements, {} compared runs, {} refused ({:.1}%)",
        corpus.len(),
        compared,
        total_refused,
        100.0 * total_refused as f64 / corpus.len() as f64
    );
    for (family, (n, r)) in &families {
        println!("  {family}: {n} statements, {r} refused");
    }
    for (why, statements) in &refused {
        println!("  refused ({}): {why}", statements.len());
        for s in statements {
            println!("    {s}");
        }
    }
    assert!(
        differences.is_empty(),
        "{} different result(s):\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(
        total_refused <= MAX_REFUSED,
        "{total_refused} statements refused (at most {MAX_REFUSED})"
    );
}

/// The text rowgate forwards for an analyst (every table read whole) means
/// what the client wrote, as PostgreSQL's own planner reads both: the
/// verbose plans of the original and of the forwarded text are equal, so a
/// construct the parser or printer changes (as a dropped precision would)
/// shows even where the data would not tell.
#[test]
fn postgresql_plans_the_forwarded_text_as_the_original() {
    use rowgate::rewrite::{self, Context, OfflineCatalog};
    let c = common::cluster();
    let db = c.create_database("fidelity_plans");
    let mut admin = c.connect(&db);
    admin
        .batch_execute(&std::fs::read_to_string(SCHEMA).unwrap())
        .unwrap();
    let loaded = rowgate::policy::load_path(Path::new(POLICY)).unwrap();
    let access = loaded.policy().access("analyst").unwrap();
    let catalog = OfflineCatalog::new(loaded.policy());
    let path = rewrite::default_search_path();
    let cx = Context::new(&access, &catalog, &path);
    let plan = |client: &mut postgres::Client, sql: &str| -> Result<Vec<String>, String> {
        let rows = client
            .simple_query(&format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}"))
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    };
    let mut compared = 0;
    let mut differences = Vec::new();
    for (family, sql) in corpus() {
        // One statement each; EXPLAIN takes no VALUES list of its own.
        let Ok(forwarded) = rewrite::rewrite(&sql, &cx) else {
            continue;
        };
        let Ok(original) = plan(&mut admin, &sql) else {
            continue;
        };
        let ours = plan(&mut admin, &forwarded.sql);
        compared += 1;
        if ours.as_ref() != Ok(&original) {
            differences.push(format!(
                "{family}: {sql}\n  forwarded: {}\n  plan: {ours:?}\n  original plan: {original:?}",
                forwarded.sql
            ));
        }
    }
    println!("fidelity plans: {compared} statements compared");
    assert!(compared >= 120, "only {compared} statements compared");
    assert!(
        differences.is_empty(),
        "{} statement(s) planned differently:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
