//! BI tools and drivers as members: the SQL the tools really send
//! (`tests/fixtures/tools/queries.yaml`, each statement citing the tool's
//! source) runs through rowgate as a member, in simple and extended
//! protocol, and succeeds; with `catalog: hide` no byte the member receives
//! names a relation, column, schema, comment or function the member cannot
//! read; with `catalog: native` the catalog reads equal those of the native
//! role that holds the member's grants and row-level security policies.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use common::raw::{Client, Msg};
use common::rls;
use postgres_protocol::message::frontend;
use serde::Deserialize;

const QUERIES: &str = "tests/fixtures/tools/queries.yaml";
/// The member of the differential fixture whose grants are narrowest.
const MEMBER: &str = "king";

/// Objects the member cannot read, each with a name no granted object
/// shares: they must never appear in what a member receives with
/// `catalog: hide`.
const HIDDEN_SETUP: &str = "
    CREATE SCHEMA hidden_zone;
    CREATE TABLE hidden_zone.secret_ledger (id int PRIMARY KEY, secret_amount_col int);
    CREATE INDEX secret_ledger_idx_q ON hidden_zone.secret_ledger (secret_amount_col);
    CREATE SEQUENCE hidden_zone.secret_seq_q;
    CREATE TYPE hidden_zone.secret_type_q AS ENUM ('secret_label_q');
    CREATE FUNCTION hidden_zone.secret_fn_q() RETURNS int LANGUAGE sql AS 'SELECT 1';
    CREATE VIEW public.secret_view_q AS SELECT id AS secret_view_col FROM hidden_zone.secret_ledger;
    COMMENT ON TABLE hidden_zone.secret_ledger IS 'secret-comment-q';
    COMMENT ON COLUMN hr.salaries.amount IS 'secret-comment-q';
    COMMENT ON SCHEMA hidden_zone IS 'secret-comment-q';
    COMMENT ON FUNCTION hidden_zone.secret_fn_q() IS 'secret-comment-q';
    COMMENT ON TYPE hidden_zone.secret_type_q IS 'secret-comment-q';
    CREATE DOMAIN hidden_zone.secret_domain_q AS int;
    CREATE INDEX secret_tickets_idx_q ON tickets (assignee);
";

/// Names of the hidden objects (the fixture's `tickets` and `hr.salaries`
/// among them: the member holds no grant on either).
const HIDDEN_NAMES: &[&str] = &[
    "hidden_zone",
    "secret_ledger",
    "secret_amount_col",
    "secret_seq_q",
    "secret_type_q",
    "secret_label_q",
    "secret_fn_q",
    "secret_domain_q",
    "secret_view_q",
    "secret_view_col",
    "secret-comment-q",
    "secret_tickets_idx_q",
    "tickets",
    "salaries",
];

#[derive(Deserialize)]
struct ToolQuery {
    tool: String,
    what: String,
    source: String,
    sql: String,
    #[serde(default)]
    params: Vec<String>,
}

fn queries() -> Vec<ToolQuery> {
    let text = std::fs::read_to_string(QUERIES).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn fixture() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let c = common::cluster();
        let db = c.create_database("tools");
        drop(rls::setup(&db));
        c.connect(&db).batch_execute(HIDDEN_SETUP).unwrap();
        db
    })
}

fn hide_proxy() -> &'static common::Proxy {
    static PROXY: OnceLock<common::Proxy> = OnceLock::new();
    PROXY.get_or_init(|| common::Proxy::start(Path::new(rls::POLICY), ""))
}

fn native_proxy() -> &'static common::Proxy {
    static PROXY: OnceLock<common::Proxy> = OnceLock::new();
    PROXY.get_or_init(|| common::Proxy::start(Path::new(rls::POLICY), "catalog: native\n"))
}

fn member(proxy: &common::Proxy) -> Client {
    let mut raw = Client::connect(proxy.port).unwrap();
    let out = raw
        .login(MEMBER, fixture(), Some(rls::PASSWORD), &[])
        .unwrap();
    assert_eq!(out.last().map(|m| m.tag), Some(b'Z'));
    raw
}

/// `sql` with `params` (text) as Parse, Bind, Describe, Execute, Sync.
fn extended(raw: &mut Client, sql: &str, params: &[String]) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    frontend::parse("", sql, [], &mut buf).unwrap();
    frontend::bind(
        "",
        "",
        [],
        params.iter(),
        |p: &String, out: &mut BytesMut| {
            out.put_slice(p.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [],
        &mut buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "", &mut buf).unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    raw.until_ready().unwrap()
}

fn first_error(msgs: &[Msg]) -> Option<String> {
    let e = msgs.iter().find(|m| m.tag == b'E')?;
    Some(format!(
        "{}: {}",
        e.field(b'C').unwrap_or_default(),
        e.field(b'M').unwrap_or_default()
    ))
}

/// Every hidden name found in the bytes of `msgs`.
fn hidden_names_in(msgs: &[Msg]) -> Vec<&'static str> {
    let bytes: Vec<u8> = msgs.iter().flat_map(|m| m.body.iter().copied()).collect();
    let text = String::from_utf8_lossy(&bytes);
    HIDDEN_NAMES
        .iter()
        .copied()
        .filter(|n| text.contains(n))
        .collect()
}

fn data_rows(msgs: &[Msg]) -> usize {
    msgs.iter().filter(|m| m.tag == b'D').count()
}

#[test]
fn every_tool_statement_runs_as_a_member_and_names_nothing_hidden() {
    let queries = queries();
    assert!(queries.len() >= 40, "{} tool statements", queries.len());
    let mut raw = member(hide_proxy());
    let mut failures = Vec::new();
    let mut rows = 0;
    for q in &queries {
        assert!(!q.source.is_empty(), "{}: no source", q.what);
        let label = format!("{} | {}", q.tool, q.what);
        let statements = rowgate::rewrite::parse(&q.sql).map_or(2, |s| s.len());
        let mut runs = Vec::new();
        if q.params.is_empty() {
            runs.push(("simple", raw.query(&q.sql).unwrap()));
        }
        if statements == 1 {
            runs.push(("extended", extended(&mut raw, &q.sql, &q.params)));
        }
        assert!(!runs.is_empty(), "{label}: not run");
        for (how, out) in runs {
            if let Some(e) = first_error(&out) {
                failures.push(format!("{label} ({how}): {e}"));
            }
            let hidden = hidden_names_in(&out);
            if !hidden.is_empty() {
                failures.push(format!("{label} ({how}): shows {hidden:?}"));
            }
            rows += data_rows(&out);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The statements did list things: the granted relations are there.
    assert!(rows > 100, "only {rows} rows in all");
    let listed = raw
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        .unwrap();
    let names: Vec<String> = listed
        .iter()
        .filter(|m| m.tag == b'D')
        .filter_map(|m| m.columns().into_iter().next().flatten())
        .collect();
    assert_eq!(names, ["countries", "merchants", "orders", "products"]);
}

/// Catalog reads whose answers a native role holding the member's grants
/// and policies gives too.
const NATIVE_SAME: &[&str] = &[
    "SELECT relname, relkind FROM pg_class WHERE relnamespace IN ('public'::regnamespace, 'hr'::regnamespace, 'sales'::regnamespace, 'hidden_zone'::regnamespace)",
    "SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'",
    "SELECT current_user = session_user, current_role = current_user, user = current_user",
    "SELECT has_table_privilege('merchants', 'SELECT'), has_table_privilege('merchants', 'INSERT'), \
     has_table_privilege('merchants', 'select, update'), has_table_privilege('tickets', 'SELECT'), \
     has_table_privilege('hr.salaries', 'SELECT'), has_table_privilege('pg_catalog.pg_class', 'SELECT'), \
     has_table_privilege('information_schema.tables', 'SELECT'), has_table_privilege('merchants', 'SELECT WITH GRANT OPTION'), \
     has_any_column_privilege('orders', 'SELECT'), has_column_privilege('orders', 'amount', 'SELECT'), \
     has_column_privilege('orders', 'amount', 'UPDATE'), has_schema_privilege('public', 'USAGE'), \
     has_schema_privilege('public', 'CREATE'), has_database_privilege(current_database(), 'CONNECT'), \
     has_database_privilege(current_database(), 'CREATE')",
    "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' \
     AND has_table_privilege(c.oid, 'SELECT')",
    "SELECT c.relname, has_table_privilege(current_user, c.oid, 'SELECT'), has_table_privilege(current_user, c.oid, 'DELETE') \
     FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v')",
    "SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolconnlimit, \
     rolpassword, rolvaliduntil, rolbypassrls, rolconfig FROM pg_roles WHERE rolname = current_user",
    "SELECT usesuper, usecreatedb, userepl, usebypassrls, passwd, valuntil, useconfig FROM pg_user WHERE usename = current_user",
    "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pg\\_read%'",
    "SELECT pg_has_role(current_user, 'MEMBER'), pg_has_role(current_user, current_user, 'USAGE')",
    "SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "SELECT attname FROM pg_attribute WHERE attrelid = 'merchants'::regclass AND attnum > 0",
    "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'",
];

/// Sorted text rows of a simple query (`Err` with the error).
fn text_rows(raw: &mut Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let out = raw.query(sql).unwrap();
    if let Some(e) = first_error(&out) {
        return Err(e);
    }
    let mut rows: Vec<_> = out
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.columns())
        .collect();
    rows.sort();
    Ok(rows)
}

#[test]
fn catalog_native_lists_what_the_native_role_sees() {
    let db = fixture();
    let role = format!("{db}_{MEMBER}");
    let mut native = Client::connect(common::cluster().port).unwrap();
    native.login(&role, db, None, &[]).unwrap();
    let mut gate = member(native_proxy());
    for sql in NATIVE_SAME {
        let want = text_rows(&mut native, sql);
        let got = text_rows(&mut gate, sql);
        assert!(want.is_ok(), "{sql}: natively {want:?}");
        assert_eq!(got, want, "{sql}");
    }
    // Who am I: the member's login name.
    let who = text_rows(
        &mut gate,
        "SELECT current_user, session_user, user, current_role, getpgusername()",
    )
    .unwrap();
    assert_eq!(who, vec![vec![Some(MEMBER.to_string()); 5]]);
    // Statistics answer for the granted relations only, with the estimates
    // native RLS shows and no activity counters.
    let stats = text_rows(
        &mut gate,
        "SELECT relname, seq_scan, n_tup_ins FROM pg_stat_user_tables",
    )
    .unwrap();
    let names: Vec<_> = stats.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        names,
        ["Returns", "countries", "merchants", "orders", "products"]
    );
    assert!(stats.iter().all(|r| r[1].is_none() && r[2].is_none()));
    let sizes = text_rows(
        &mut gate,
        "SELECT pg_relation_size('merchants') > 0, pg_total_relation_size('merchants') > 0, \
         pg_relation_size('merchants_pkey') > 0, pg_relation_size('hr.salaries'), pg_table_size('tickets'), \
         pg_stat_get_numscans('merchants'::regclass)",
    )
    .unwrap();
    assert_eq!(
        sizes,
        vec![vec![
            Some("t".into()),
            Some("t".into()),
            Some("t".into()),
            None,
            None,
            None
        ]]
    );
}

#[test]
fn catalog_hide_shows_the_granted_and_the_system_only() {
    let mut raw = member(hide_proxy());
    for sql in NATIVE_SAME.iter().chain(&[
        "SELECT * FROM pg_class",
        "SELECT * FROM pg_attribute",
        "SELECT * FROM pg_namespace",
        "SELECT * FROM pg_type",
        "SELECT * FROM pg_proc WHERE pronamespace <> 'pg_catalog'::regnamespace",
        "SELECT * FROM pg_description",
        "SELECT * FROM pg_index",
        "SELECT * FROM pg_constraint",
        "SELECT * FROM pg_depend WHERE deptype <> 'p'",
        "SELECT * FROM pg_tables",
        "SELECT * FROM pg_views WHERE schemaname = 'public'",
        "SELECT * FROM pg_indexes",
        "SELECT * FROM information_schema.schemata",
        "SELECT * FROM information_schema.columns",
        "SELECT * FROM information_schema.table_constraints",
        "SELECT * FROM information_schema.key_column_usage",
        "SELECT * FROM pg_stat_user_tables",
        "SELECT * FROM pg_stat_all_indexes",
        "SELECT * FROM pg_statio_user_tables",
        "SELECT obj_description(c.oid), col_description(c.oid, 1) FROM pg_class c",
        "SELECT * FROM information_schema.routines",
        "SELECT * FROM information_schema.parameters",
        "SELECT * FROM information_schema.sequences",
        "SELECT * FROM information_schema.user_defined_types",
        "SELECT * FROM information_schema.domains",
        "SELECT * FROM information_schema.attributes",
        "SELECT * FROM information_schema.element_types",
        "SELECT * FROM information_schema.usage_privileges",
        "SELECT * FROM information_schema.check_constraints",
        "SELECT * FROM information_schema.routine_privileges",
        "SELECT * FROM information_schema.udt_privileges",
        "SELECT d.description FROM pg_description d",
        "SELECT * FROM pg_enum",
    ]) {
        let out = raw.query(sql).unwrap();
        assert_eq!(first_error(&out), None, "{sql}");
        assert_eq!(hidden_names_in(&out), Vec::<&str>::new(), "{sql}");
    }
    // What is granted is listed, with its columns, indexes and comments.
    let merchants = text_rows(
        &mut raw,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'merchants'::regclass AND attnum > 0",
    )
    .unwrap();
    assert_eq!(merchants, vec![vec![Some("5".into())]]);
    let schemas = text_rows(
        &mut raw,
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    )
    .unwrap();
    assert_eq!(
        schemas,
        vec![vec![Some("public".into())], vec![Some("sales".into())]]
    );
}

#[test]
fn every_tool_statement_runs_as_an_analyst() {
    let mut raw = Client::connect(hide_proxy().port).unwrap();
    let out = raw
        .login("analyst", fixture(), Some(rls::PASSWORD), &[])
        .unwrap();
    assert_eq!(out.last().map(|m| m.tag), Some(b'Z'));
    let mut failures = Vec::new();
    for q in queries() {
        let out = if q.params.is_empty() {
            raw.query(&q.sql).unwrap()
        } else {
            extended(&mut raw, &q.sql, &q.params)
        };
        if let Some(e) = first_error(&out) {
            failures.push(format!("{} | {}: {e}", q.tool, q.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // An analyst reads every table: every one is listed, and is its own.
    let who = text_rows(
        &mut raw,
        "SELECT current_user, has_table_privilege('hr.salaries', 'SELECT'), \
         has_table_privilege('hr.salaries', 'DELETE'), \
         (SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'salaries')",
    )
    .unwrap();
    assert_eq!(
        who,
        vec![vec![
            Some("analyst".into()),
            Some("t".into()),
            Some("f".into()),
            Some("1".into())
        ]]
    );
}

/// psql's meta-commands as a member with `catalog: hide`: the granted
/// relations, with their sizes, and nothing else.
#[test]
fn psql_meta_commands_list_only_what_the_member_reads() {
    let bin = common::find_pg_bin().unwrap();
    let proxy = hide_proxy();
    let out = std::process::Command::new(bin.join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            &format!(
                "host=127.0.0.1 port={} dbname={} user={MEMBER} sslmode=disable",
                proxy.port,
                fixture()
            ),
        ])
        .args([
            "-c",
            "\\dt+",
            "-c",
            "\\di+",
            "-c",
            "\\dv+",
            "-c",
            "\\dn+",
            "-c",
            "\\d+ merchants",
            "-c",
            "\\dT",
            "-c",
            "\\df hidden_zone.*",
            "-c",
            "\\dp",
        ])
        .env("PGPASSWORD", rls::PASSWORD)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "merchants",
        "orders",
        "countries",
        "merchants_pkey",
        "public",
        "sales",
        "=r/postgres",
    ] {
        assert!(text.contains(want), "psql should show {want}:\n{text}");
    }
    for hidden in HIDDEN_NAMES {
        assert!(!text.contains(hidden), "psql shows {hidden}:\n{text}");
    }
}
