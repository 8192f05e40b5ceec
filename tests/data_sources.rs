//! Data sources: two databases of the test cluster as the sources
//! `production` and `testing`, a group restricted to `testing` with rules
//! of its own there. Each user reads the source they asked for (or their
//! default), cannot reach another one, and `rowgate access`/`explain` show
//! the same as the sessions do.

mod common;

use std::path::Path;
use std::process::Command;

const PASSWORD: &str = "pw";

const POLICY: &str = r#"
attributes:
  tenant: { type: text }

groups:
  testers:
    tables: [public.customers, "testing:public.orders"]
    data_sources: [testing]
    default_data_source: testing
  everyone:
    tables: [public.customers]

users:
  tess:
    password: pw
    groups: [testers]
    attributes: { tenant: [a] }
  paula:
    password: pw
    groups: [everyone]
    data_sources: [production]
    default_data_source: production
    attributes: { tenant: [a] }
  max:
    password: pw
    groups: [everyone]
    attributes: { tenant: [b] }
  root:
    password: pw
    role: admin

tables:
  public.customers:
    filters:
      - { column: tenant, attribute: tenant }
  # On testing, customers of every tenant (test data is shared).
  "testing:public.customers": {}
  public.orders:
    filters:
      - { column: customer_id, references: public.customers(id) }
"#;

/// One database of a source: customers of tenants a and b, named after the
/// source, and their orders.
fn fill(db: &str, source: &str) {
    let mut c = common::cluster().connect(db);
    c.batch_execute(&format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, tenant text);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int);
         INSERT INTO customers VALUES (1, '{source}-a1', 'a'), (2, '{source}-b2', 'b'), (3, '{source}-a3', 'a');
         INSERT INTO orders VALUES (10, 1), (20, 2), (30, 3);"
    ))
    .unwrap();
}

struct Setup {
    proxy: common::Proxy,
    _policies: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let c = common::cluster();
        let prod = c.create_database("ds_prod");
        let test = c.create_database("ds_test");
        fill(&prod, "production");
        fill(&test, "testing");
        let policies = tempfile::tempdir().unwrap();
        std::fs::write(policies.path().join("p.yaml"), POLICY).unwrap();
        let source = |db: &str| {
            format!(
                "{{ host: 127.0.0.1, port: {}, user: postgres, database: {db}, tls: disable }}",
                c.port
            )
        };
        let extra = format!(
            "\nupstreams:\n  production: {}\n  testing: {}\n",
            source(&prod),
            source(&test)
        );
        let proxy = common::Proxy::start(policies.path(), &extra);
        let config = proxy.dir.path().join("proxy.yaml");
        Setup {
            proxy,
            _policies: policies,
            config,
        }
    })
}

/// The names of the customers `user` reads through a session on `db`.
fn names(user: &str, db: &str) -> Result<Vec<String>, String> {
    let mut client = setup()
        .proxy
        .connect(db, user, PASSWORD)
        .map_err(|e| error_text(&e))?;
    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .map_err(|e| error_text(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

#[test]
fn each_user_reads_the_source_they_asked_for_with_its_rules() {
    // tess: testing only; on testing, customers of every tenant.
    assert_eq!(
        names("tess", "testing").unwrap(),
        ["testing-a1", "testing-b2", "testing-a3"]
    );
    // paula: production only, her tenant's rows.
    assert_eq!(
        names("paula", "production").unwrap(),
        ["production-a1", "production-a3"]
    );
    // max may use every source: the rule of each applies.
    assert_eq!(names("max", "production").unwrap(), ["production-b2"]);
    assert_eq!(
        names("max", "testing").unwrap(),
        ["testing-a1", "testing-b2", "testing-a3"]
    );
}

#[test]
fn a_database_that_names_no_source_takes_the_users_default() {
    assert_eq!(
        names("tess", "tess").unwrap(),
        ["testing-a1", "testing-b2", "testing-a3"]
    );
    assert_eq!(
        names("paula", "warehouse").unwrap(),
        ["production-a1", "production-a3"]
    );
}

#[test]
fn another_source_is_refused_and_names_nothing_else() {
    for (user, db) in [
        ("tess", "production"),
        ("paula", "testing"),
        ("tess", "default"),
    ] {
        let err = names(user, db).unwrap_err();
        assert_eq!(
            err,
            format!("42501 permission denied for data source \"{db}\""),
            "{user} on {db}"
        );
    }
    let log = setup().proxy.log();
    assert!(
        log.contains("permission denied for data source"),
        "the refusal is logged"
    );
}

#[test]
fn grants_written_for_one_source_apply_there_only() {
    let mut tess = setup().proxy.connect("testing", "tess", PASSWORD).unwrap();
    let rows = tess
        .query("SELECT id FROM orders ORDER BY id", &[])
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [10, 20, 30]);
    // max has no grant of orders on any source.
    let mut max = setup().proxy.connect("testing", "max", PASSWORD).unwrap();
    let err = max.query("SELECT id FROM orders", &[]).unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42501"));
}

#[test]
fn viewing_as_a_user_of_another_source_is_refused() {
    let mut root = setup()
        .proxy
        .connect("production", "root", PASSWORD)
        .unwrap();
    let err = root
        .batch_execute("SET rowgate.view_as = 'tess'")
        .unwrap_err();
    assert_eq!(
        error_text(&err),
        "42501 user \"tess\" may not use data source \"production\""
    );
    root.batch_execute("SET rowgate.view_as = 'paula'").unwrap();
    let rows = root
        .query("SELECT name FROM customers ORDER BY id", &[])
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["production-a1", "production-a3"]);
}

fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn access_and_explain_show_what_the_sessions_get() {
    let config = &setup().config;
    let (code, out, err) = cli(config, &["access", "--user", "tess"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data source: testing\n"), "{out}");
    assert!(
        out.contains("data sources: testing (group testers)\n"),
        "{out}"
    );
    assert!(
        out.contains("default data source: testing (group testers)\n"),
        "{out}"
    );
    assert!(
        out.contains("public.customers (group testers): all rows"),
        "{out}"
    );

    let (code, _, err) = cli(
        config,
        &["access", "--user", "tess", "--database", "production"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("permission denied for data source \"production\""),
        "{err}"
    );

    let (code, out, err) = cli(
        config,
        &["access", "--user", "max", "--database", "production"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data source: production\n"), "{out}");
    assert!(out.contains("WHERE customers.tenant IN ('b')"), "{out}");

    // explain, offline and against each source's live catalog.
    let sql = "SELECT name FROM customers";
    let (code, offline, err) = cli(config, &["explain", "--user", "paula", sql]);
    assert_eq!(code, 0, "{err}");
    assert!(offline.contains("'a'"), "{offline}");
    let (code, live, err) = cli(
        config,
        &["explain", "--user", "max", "--database", "testing", sql],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!live.contains("tenant"), "no filter on testing: {live}");
    let (code, live, err) = cli(
        config,
        &["explain", "--user", "max", "--database", "production", sql],
    );
    assert_eq!(code, 0, "{err}");
    assert!(live.contains("'b'"), "{live}");
}

#[test]
fn check_names_every_undeclared_source_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("proxy.yaml"),
        "upstreams:\n  production: { port: 5432 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "users:\n  u:\n    password: x\n    data_sources: [staging]\n    tables: [\"nope:public.t\"]\ntables:\n  \"other:public.t\": {}\n",
    )
    .unwrap();
    let (code, _, err) = cli(&dir.path().join("proxy.yaml"), &["check"]);
    assert_eq!(code, 1, "{err}");
    for (pos, what) in [
        ("p.yaml:4:20", "undeclared data source `staging`"),
        ("p.yaml:5:14", "undeclared data source `nope`"),
        ("p.yaml:7:3", "undeclared data source `other`"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(pos) && l.contains(what)),
            "{pos} {what}:\n{err}"
        );
    }
}

/// Attacks on the source boundary, every byte received scanned for the
/// other source's rows and its upstream database's name: names that look
/// like a source, startup options, three-part names, a refused source
/// tried with every user, and the catalog.
#[test]
fn no_route_from_one_source_to_another() {
    let s = setup();
    // What a production-only user must never see: testing's rows. (The
    // test's two sources share a cluster, whose pg_database lists both
    // databases to every role, natively too; real sources are servers of
    // their own.)
    let secrets = ["testing-"];
    let scan = |user: &str, db: &str, extra: &[(&str, &str)], sql: &[&str]| {
        let mut c = common::raw::Client::connect(s.proxy.port).unwrap();
        let login = c.login(user, db, Some(PASSWORD), extra);
        if login.is_ok_and(|m| m.iter().all(|m| m.tag != b'E')) {
            for q in sql {
                let _ = c.query(q);
            }
        }
        let bytes = String::from_utf8_lossy(&c.received).into_owned();
        for secret in secrets {
            assert!(
                !bytes.contains(secret),
                "{user}@{db} {extra:?} received {secret:?}: {bytes}"
            );
        }
        bytes
    };
    let reads = [
        "SELECT name FROM customers",
        "SELECT * FROM ds_test_1.public.customers",
        "SELECT current_database()",
        "SELECT datname FROM pg_database",
        "SELECT * FROM pg_stat_activity",
        "SELECT * FROM dblink('dbname=ds_test_1', 'SELECT name FROM customers') AS t(name text)",
    ];
    // paula may use production only: names near `testing` and startup
    // options take her to her default source or are refused.
    for db in [
        "TESTING",
        "testing ",
        "\"testing\"",
        "production",
        "paula",
        "",
    ] {
        scan("paula", db, &[], &reads);
    }
    scan(
        "paula",
        "paula",
        &[("options", "-c rowgate.view_as=tess")],
        &reads,
    );
    scan(
        "paula",
        "paula",
        &[("options", "-c search_path=testing")],
        &reads,
    );
    let refused = scan("paula", "testing", &[], &reads);
    assert!(refused.contains("42501"), "{refused}");
    // The database names of the sources are not sources.
    let db_names: Vec<String> = {
        let mut admin = common::cluster().connect("postgres");
        admin
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'ds_prod%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for db in &db_names {
        let bytes = scan("paula", db, &[], &["SELECT name FROM customers"]);
        assert!(bytes.contains("production-a1"), "{db}: {bytes}");
    }
}

/// `/readyz` is ready only while every data source answers, and names
/// the ones that do not; connect times are counted per source.
#[test]
fn readiness_and_metrics_are_per_data_source() {
    use std::io::{Read, Write};
    let c = common::cluster();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.yaml"), POLICY).unwrap();
    let dead = common::free_port();
    let metrics = common::free_port();
    let get = |path: &str| -> (String, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", metrics)) {
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).unwrap();
                let status = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                return (status, body);
            }
            assert!(std::time::Instant::now() < deadline, "no metrics listener");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let extra = |second: u16| {
        format!(
            "metrics: 127.0.0.1:{metrics}\nupstreams:\n  production: {{ port: {}, user: postgres, tls: disable }}\n  testing: {{ port: {second}, user: postgres, tls: disable }}\n",
            c.port
        )
    };
    {
        let proxy = common::Proxy::start(policies.path(), &extra(dead));
        let (status, body) = get("/readyz");
        assert_eq!(status, "503", "{body}");
        assert_eq!(body, "not reachable: data source testing\n");
        // A session on the source that answers works and is counted as its.
        let db = c.create_database("ds_metrics");
        proxy.connect(&db, "max", PASSWORD).unwrap();
        let (_, text) = get("/metrics");
        assert!(
            text.contains("rowgate_upstream_connect_seconds_count{data_source=\"default\"} 1"),
            "{text}"
        );
        let failed = proxy.connect("testing", "max", PASSWORD).err().unwrap();
        assert_eq!(common::sqlstate(&failed).as_deref(), Some("08006"));
        let (_, text) = get("/metrics");
        assert!(
            text.contains(
                "rowgate_upstream_errors_total{data_source=\"testing\",reason=\"unreachable\"} 1"
            ),
            "{text}"
        );
    }
    let _proxy = common::Proxy::start(policies.path(), &extra(c.port));
    assert_eq!(get("/readyz"), ("200".to_string(), "ready\n".to_string()));
}
