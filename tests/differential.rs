//! The differential suite: native row-level security is the oracle.
//!
//! The fixture warehouse gets the policy's rules a second time, written by
//! hand as `CREATE POLICY ... USING (...)` for one non-owner role per user.
//! Every query shape runs twice for every user: rewritten by rowgate and
//! executed by the superuser (which bypasses RLS), and unchanged as the
//! user's role under native RLS. The multisets of rows must be equal, and a
//! refusal by rowgate must meet a permission error from PostgreSQL. Zero
//! differences.
//!
//! The oracle's `references` rules are plain subqueries on the referenced
//! table: PostgreSQL applies that table's own policies to them, so the
//! transitive filtering rowgate inlines is checked against PostgreSQL's own.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::rls::{run, setup, Outcome, QUERIES};

use rowgate::rewrite::{self, Context, OfflineCatalog};

#[test]
fn rewritten_queries_return_exactly_what_native_rls_returns() {
    let loaded = rowgate::policy::load_path(Path::new(common::rls::POLICY))
        .unwrap_or_else(|e| panic!("fixture policy: {e:?}"));
    let policy = loaded.policy();
    let catalog = OfflineCatalog::new(policy);
    let search_path = rewrite::default_search_path();

    let db = common::cluster().create_database("differential");
    let mut oracles = setup(&db);
    let mut superuser = common::cluster().connect(&db);
    assert!(QUERIES.len() >= 60, "at least 60 query shapes");
    assert!(oracles.len() >= 6, "at least six users");

    let mut differences = Vec::new();
    let mut compared_rows = 0;
    let mut agreed_refusals = 0;
    let mut results: BTreeMap<(&str, &str), Outcome> = BTreeMap::new();
    for &sql in QUERIES {
        for (&user, oracle) in oracles.iter_mut() {
            let access = policy.access(user).expect("fixture user");
            let cx = Context {
                access: &access,
                catalog: &catalog,
                search_path: &search_path,
                params: &[],
                fence: Default::default(),
                listing: rowgate::rewrite::system::Listing::Native,
            };
            let ours = match rewrite::rewrite(sql, &cx) {
                Err(refusal) => {
                    assert_eq!(refusal.sqlstate(), "42501");
                    Ok(Outcome::Refused)
                }
                Ok(rewritten) => {
                    let reparsed = rewrite::parse(&rewritten.sql).expect("output re-parses");
                    assert_eq!(Some(reparsed), rewritten.statements, "round trip of {sql}");
                    run(&mut superuser, &rewritten.sql).map_err(|e| {
                        format!("rewritten SQL failed: {e}\n  sent: {}", rewritten.sql)
                    })
                }
            };
            let native = run(oracle, sql).map_err(|e| format!("native query failed: {e}"));
            match (ours, native) {
                (Ok(a), Ok(b)) if a == b => match a {
                    Outcome::Rows(_) => compared_rows += 1,
                    Outcome::Refused => agreed_refusals += 1,
                },
                (ours, native) => differences.push(format!(
                    "user {user}: {sql}\n  rowgate: {ours:?}\n  native:  {native:?}"
                )),
            }
            if let Ok(o) = run(oracle, sql) {
                results.insert((sql, user), o);
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} difference(s) from native RLS:\n{}",
        differences.len(),
        differences.join("\n")
    );

    // The suite must be able to fail: filtering has to change what users
    // see, refusals have to happen, and most pairs must compare real rows.
    let filtered = QUERIES
        .iter()
        .filter(|q| results.get(&(**q, "king")) != results.get(&(**q, "analyst")))
        .count();
    assert!(
        filtered >= 50,
        "only {filtered} queries differ between a filtered user and the analyst"
    );
    let empty_for_nobody = QUERIES
        .iter()
        .filter(|q| matches!(results.get(&(**q, "nobody")), Some(Outcome::Rows(r)) if r.is_empty()))
        .count();
    assert!(
        empty_for_nobody >= 20,
        "the user without values saw rows in too many queries"
    );
    assert!(
        agreed_refusals >= 20,
        "only {agreed_refusals} agreed refusals"
    );
    assert!(compared_rows >= 350, "only {compared_rows} row comparisons");
}
