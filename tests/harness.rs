//! The harness itself: the throwaway cluster starts, serves parallel tests,
//! and is a real PostgreSQL.

mod common;

#[test]
fn cluster_runs_a_query() {
    let c = common::cluster();
    let db = c.create_database("harness");
    let mut client = c.connect(&db);
    let rows = common::text_rows(
        &mut client,
        "SELECT current_setting('server_version_num')::int >= 100000, 1 + 1",
    )
    .unwrap();
    assert_eq!(rows, vec![vec![Some("t".into()), Some("2".into())]]);
}

#[test]
fn databases_are_separate() {
    let c = common::cluster();
    let a = c.create_database("harness");
    let b = c.create_database("harness");
    c.connect(&a)
        .batch_execute("CREATE TABLE t (x int)")
        .unwrap();
    let err = c.connect(&b).batch_execute("SELECT * FROM t").unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42P01"));
}
