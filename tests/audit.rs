//! The audit log (`audit:` in `proxy.yaml`) through the wire: a record per
//! statement with its decision, rows and SQLSTATE, per login, failed login
//! and logout, and per policy reload; the hash chain verifies, and breaks
//! where a line is edited or removed; SIGHUP reopens the file and the chain
//! goes on; a log that cannot be written refuses statements (or lets them
//! run, with `on_failure: continue`). No secret ever reaches the file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

const POLICY: &str = "tests/fixtures/proxy/policy.yaml";

fn database() -> String {
    let c = common::cluster();
    let db = c.create_database("audit");
    c.connect(&db)
        .batch_execute(&std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap())
        .unwrap();
    db
}

/// A record's member, `null` when it has none.
fn get<'a>(r: &'a Map<String, Value>, key: &str) -> &'a Value {
    r.get(key).unwrap_or(&Value::Null)
}

fn records(path: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The records once `done` holds of them (the writer is asynchronous).
fn wait_for(path: &Path, done: impl Fn(&[Map<String, Value>]) -> bool) -> Vec<Map<String, Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs = records(path);
        if done(&rs) {
            return rs;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never held what was expected:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn statement<'a>(rs: &'a [Map<String, Value>], sql: &str) -> &'a Map<String, Value> {
    rs.iter()
        .find(|r| get(r, "kind") == "statement" && get(r, "sql") == sql)
        .unwrap_or_else(|| panic!("no record of {sql}: {rs:#?}"))
}

/// `rowgate audit verify FILE`: exit code and output.
fn verify(path: &Path) -> (i32, String) {
    verify_all(&[path])
}

/// `rowgate audit verify FILE...`: exit code and output.
fn verify_all(paths: &[&Path]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(["audit", "verify"])
        .args(paths)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

struct Logged {
    proxy: common::Proxy,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

fn logged(extra: &str) -> Logged {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let proxy = common::Proxy::start(
        Path::new(POLICY),
        &format!("audit:\n  file: {}\n{extra}", file.display()),
    );
    Logged {
        proxy,
        file,
        _dir: dir,
    }
}

#[test]
fn every_statement_and_session_event_is_recorded_and_chained() {
    let db = database();
    let log = logged("");
    let url = format!(
        "{} application_name=audit-test",
        log.proxy.url(&db, "member", "member-pw")
    );
    let mut member = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let select = "SELECT id FROM merchants ORDER BY id";
    let seen = member.simple_query(select).unwrap();
    let rows = seen
        .iter()
        .filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_)))
        .count() as u64;
    assert!(rows > 0);
    let refused = "SELECT * FROM hr.salaries";
    assert!(member.simple_query(refused).is_err());
    let failing = "SELECT 1/0";
    assert!(member.simple_query(failing).is_err());
    // Extended protocol: Parse, Bind, Execute with a parameter.
    let extended = "SELECT id FROM orders WHERE id > $1";
    let ext_rows = member.query(extended, &[&0i32]).unwrap().len() as u64;
    // A text that tries to forge records of its own.
    let forging = "SELECT '\"}\n{\"kind\":\"login\",\"user\":\"admin\"}'";
    member.simple_query(forging).unwrap();
    assert!(log
        .proxy
        .connect(&db, "member", "not-the-password")
        .is_err());
    drop(member);

    let rs = wait_for(&log.file, |rs| {
        rs.iter().any(|r| r["kind"] == "logout") && rs.iter().any(|r| r["kind"] == "login_failure")
    });
    let login = rs.iter().find(|r| r["kind"] == "login").unwrap();
    assert_eq!(login["user"], "member");
    assert_eq!(login["application_name"], "audit-test");
    assert_eq!(login["database"], Value::String(db.clone()));
    assert_eq!(login["auth"], "scram");
    assert_eq!(login["data_source"], "default");
    assert_eq!(
        login["attributes"]["merchant"]["values"][0]["value"], "King Inc",
        "{login:?}"
    );

    let s = statement(&rs, select);
    assert_eq!(s["decision"], "forwarded");
    assert_eq!(s["rows"], rows);
    assert!(
        s["forwarded"].as_str().unwrap().contains("King Inc"),
        "{s:?}"
    );
    assert_eq!(s["session"], login["session"]);
    assert!(s["duration_ms"].as_f64().is_some());

    let r = statement(&rs, refused);
    assert_eq!(
        (&r["decision"], &r["sqlstate"]),
        (&"refused".into(), &"42501".into())
    );
    assert!(!r.contains_key("forwarded"), "{r:?}");
    assert!(r["reason"].as_str().unwrap().contains("hr.salaries"));

    let e = statement(&rs, failing);
    assert_eq!(
        (&e["decision"], &e["sqlstate"]),
        (&"error".into(), &"22012".into())
    );

    let x = statement(&rs, extended);
    assert_eq!(x["decision"], "forwarded");
    assert_eq!(x["rows"], ext_rows);

    assert_eq!(statement(&rs, forging)["decision"], "forwarded");
    assert_eq!(rs.iter().filter(|r| r["kind"] == "login").count(), 1);

    let failure = rs.iter().find(|r| r["kind"] == "login_failure").unwrap();
    assert_eq!(failure["user"], "member");
    let logout = rs.iter().find(|r| r["kind"] == "logout").unwrap();
    assert_eq!(logout["session"], login["session"]);
    assert_eq!(logout["refused"], 1);

    let text = std::fs::read_to_string(&log.file).unwrap();
    for secret in ["member-pw", "not-the-password"] {
        assert!(!text.contains(secret), "the audit log holds a password");
    }
    let (code, out) = verify(&log.file);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chain intact"), "{out}");

    // A policy reload is recorded.
    log.proxy.signal("HUP");
    wait_for(&log.file, |rs| {
        rs.iter()
            .any(|r| r["kind"] == "reload" && get(r, "decision") == "reloaded")
    });
}

#[test]
fn an_edited_or_removed_line_is_detected() {
    let db = database();
    let log = logged("");
    let mut member = log.proxy.connect(&db, "member", "member-pw").unwrap();
    for i in 0..4 {
        member.simple_query(&format!("SELECT {i}")).unwrap();
    }
    drop(member);
    wait_for(&log.file, |rs| rs.iter().any(|r| r["kind"] == "logout"));
    let text = std::fs::read_to_string(&log.file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    let dir = tempfile::tempdir().unwrap();

    // The third statement's line says it returned two rows.
    let edited = dir.path().join("edited.jsonl");
    let n = lines
        .iter()
        .position(|l| l.contains("\"SELECT 2\""))
        .unwrap();
    let changed = lines[n].replacen("\"rows\":1", "\"rows\":2", 1);
    assert_ne!(changed, lines[n]);
    let mut copy: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    copy[n] = changed;
    std::fs::write(&edited, copy.join("\n") + "\n").unwrap();
    let (code, out) = verify(&edited);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!(":{}: chain broken", n + 1)), "{out}");

    let removed = dir.path().join("removed.jsonl");
    let mut copy: Vec<&str> = lines.clone();
    copy.remove(n);
    std::fs::write(&removed, copy.join("\n") + "\n").unwrap();
    let (code, out) = verify(&removed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!(":{}: chain broken", n + 1)), "{out}");
    assert!(out.contains("removed"), "{out}");
}

#[test]
fn sighup_reopens_the_file_and_the_chain_goes_on() {
    let db = database();
    let log = logged("");
    let mut member = log.proxy.connect(&db, "member", "member-pw").unwrap();
    member.simple_query("SELECT 'before'").unwrap();
    wait_for(&log.file, |rs| {
        rs.iter().any(|r| get(r, "sql") == "SELECT 'before'")
    });
    // As logrotate does: move the file, then SIGHUP.
    let rotated = log.file.with_extension("1");
    std::fs::rename(&log.file, &rotated).unwrap();
    log.proxy.signal("HUP");
    wait_for(&log.file, |rs| rs.iter().any(|r| r["kind"] == "reload"));
    member.simple_query("SELECT 'after'").unwrap();
    wait_for(&log.file, |rs| {
        rs.iter().any(|r| get(r, "sql") == "SELECT 'after'")
    });
    let (code, old) = verify(&rotated);
    assert_eq!(code, 0, "{old}");
    let last = old
        .lines()
        .find_map(|l| l.strip_prefix("last hash "))
        .unwrap()
        .to_string();
    let (code, new) = verify(&log.file);
    assert_eq!(code, 0, "{new}");
    assert!(
        new.contains(&format!("first record follows hash {last}")),
        "{old}\n{new}"
    );
    assert!(records(&rotated)
        .iter()
        .all(|r| get(r, "sql") != "SELECT 'after'"));
    // Both files, oldest first, join; the other way round they do not.
    let (code, out) = verify_all(&[&rotated, &log.file]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_all(&[&log.file, &rotated]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not follow the last record"), "{out}");
}

#[test]
fn a_log_that_cannot_be_written_refuses_statements_unless_told_to_continue() {
    let db = database();
    // Every write to /dev/full fails (ENOSPC).
    let refuse = common::Proxy::start(Path::new(POLICY), "audit:\n  file: /dev/full\n");
    let mut member = refuse.connect(&db, "member", "member-pw").unwrap();
    // The login record's failed write marks the log unwritable.
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match member.simple_query("SELECT count(*) FROM merchants") {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "statements still run");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(common::sqlstate(&err).as_deref(), Some("58030"), "{err:?}");
    assert!(format!("{err:?}").contains("audit log"), "{err:?}");
    // Admins too.
    let mut admin = refuse.connect(&db, "admin", "admin-pw").unwrap();
    let err = admin.simple_query("SELECT 1").unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("58030"), "{err:?}");
    let err = admin.query("SELECT $1::int", &[&1i32]).unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("58030"), "{err:?}");

    let go_on = common::Proxy::start(
        Path::new(POLICY),
        "audit:\n  file: /dev/full\n  on_failure: continue\n",
    );
    let mut member = go_on.connect(&db, "member", "member-pw").unwrap();
    for _ in 0..5 {
        member
            .simple_query("SELECT count(*) FROM merchants")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn statements_refused_only_records_refusals() {
    let db = database();
    let log = logged("  statements: refused\n");
    let mut member = log.proxy.connect(&db, "member", "member-pw").unwrap();
    member.simple_query("SELECT 'fine'").unwrap();
    assert!(member.simple_query("SELECT * FROM hr.salaries").is_err());
    drop(member);
    let rs = wait_for(&log.file, |rs| rs.iter().any(|r| r["kind"] == "logout"));
    let statements: Vec<&Map<String, Value>> =
        rs.iter().filter(|r| r["kind"] == "statement").collect();
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(statements[0]["decision"], "refused");
}

#[test]
fn viewing_as_a_user_is_recorded() {
    let db = database();
    let log = logged("");
    let mut admin = log.proxy.connect(&db, "admin", "admin-pw").unwrap();
    admin
        .simple_query("SET rowgate.view_as = 'member'")
        .unwrap();
    admin.simple_query("SELECT 'as the member'").unwrap();
    admin.simple_query("RESET rowgate.view_as").unwrap();
    admin.simple_query("SELECT 'as myself'").unwrap();
    drop(admin);
    let rs = wait_for(&log.file, |rs| rs.iter().any(|r| r["kind"] == "logout"));
    let start = rs.iter().find(|r| r["kind"] == "view_as_start").unwrap();
    assert_eq!(
        (&start["user"], &start["viewed_as"]),
        (&"admin".into(), &"member".into())
    );
    assert!(rs
        .iter()
        .any(|r| r["kind"] == "view_as_end" && r["viewed_as"] == "member"));
    assert_eq!(
        statement(&rs, "SELECT 'as the member'")["viewed_as"],
        "member"
    );
    assert_eq!(statement(&rs, "SELECT 'as the member'")["user"], "admin");
    assert!(!statement(&rs, "SELECT 'as myself'").contains_key("viewed_as"));
}

/// `audit.table`: every record the file gets goes into the table too, and
/// none is lost when the upstream server restarts (with `on_failure:
/// refuse`, records wait until the table takes them). A private cluster,
/// since this test stops its server.
#[test]
fn the_audit_table_gets_every_record_and_survives_an_upstream_restart() {
    let pg = rowgate::localpg::LocalPg::start("audit-table", None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let port = common::free_port();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\npolicies: {}\nupstream:\n  host: 127.0.0.1\n  port: {}\n  user: postgres\n  tls: disable\n\
             audit:\n  file: {}\n  table: {{ data_source: default, name: rowgate.audit_logs }}\n",
            std::fs::canonicalize(POLICY).unwrap().display(),
            pg.port,
            file.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("rowgate.log")).unwrap())
        .spawn()
        .unwrap();
    let url = |user: &str, password: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname=postgres")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut member = loop {
        match postgres::Client::connect(&url("member", "member-pw"), postgres::NoTls) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "rowgate did not start: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    member.simple_query("SELECT 'one'").unwrap();
    member.simple_query("SELECT 'two'").unwrap();
    let direct = || {
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.port
            ),
            postgres::NoTls,
        )
    };
    let table_lines = || -> Vec<String> {
        direct()
            .and_then(|mut c| c.query("SELECT line FROM rowgate.audit_logs", &[]))
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default()
    };
    let wait_table = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = table_lines();
            if done(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the audit table never held {what}: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_table("the first statements", &|l| {
        l.iter().any(|l| l.contains("SELECT 'two'"))
    });

    // The upstream stops: a failed login meanwhile is recorded in the file
    // at once, and in the table once it is back.
    let pg_ctl = |args: &[&str]| {
        pg.command("pg_ctl")
            .arg("-D")
            .arg(pg.data())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    assert!(pg_ctl(&["-m", "fast", "-w", "stop"]).success());
    assert!(postgres::Client::connect(&url("member", "wrong"), postgres::NoTls).is_err());
    wait_for(&file, |rs| rs.iter().any(|r| r["kind"] == "login_failure"));
    let options = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        pg.port,
        pg.dir.display()
    );
    let log = pg.dir.join("restart.log");
    assert!(pg_ctl(&["-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]).success());
    // Statements are refused (58030) until the table takes the records
    // that waited; then they run.
    let mut member =
        postgres::Client::connect(&url("member", "member-pw"), postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = member.simple_query("SELECT 'three'") {
        assert_eq!(common::sqlstate(&e).as_deref(), Some("58030"), "{e:?}");
        assert!(Instant::now() < deadline, "statements still refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(member);
    wait_for(&file, |rs| {
        rs.iter().filter(|r| r["kind"] == "logout").count() >= 2
    });
    let in_file: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let lines = wait_table("every line of the file", &|l| l.len() >= in_file.len());
    let mut sorted = lines.clone();
    sorted.sort();
    let mut expected = in_file.clone();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "the table holds exactly the file's records"
    );
    assert!(lines.iter().any(|l| l.contains("login_failure")));
    // The table is rowgate's own: admins read it, analysts and members not.
    let read = "SELECT count(*) FROM rowgate.audit_logs";
    for (user, password) in [("analyst", "analyst-pw"), ("member", "member-pw")] {
        let mut c = postgres::Client::connect(&url(user, password), postgres::NoTls).unwrap();
        let e = c.simple_query(read).unwrap_err();
        assert_eq!(
            common::sqlstate(&e).as_deref(),
            Some("42501"),
            "{user}: {e:?}"
        );
    }
    let mut admin = postgres::Client::connect(&url("admin", "admin-pw"), postgres::NoTls).unwrap();
    assert!(admin.simple_query(read).is_ok());
    let _ = child.kill();
    let _ = child.wait();
    pg.stop();
}

/// Statements prepared while the log was fine (by the client, or by
/// rowgate automatically) do not run once it fails: here its directory is
/// removed and SIGHUP cannot reopen it.
#[test]
fn prepared_statements_do_not_run_once_the_log_fails() {
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("logs");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("audit.jsonl");
    let proxy = common::Proxy::start(
        Path::new(POLICY),
        &format!("audit:\n  file: {}\n", file.display()),
    );
    let mut member = proxy.connect(&db, "member", "member-pw").unwrap();
    let statement = member
        .prepare("SELECT count(*) FROM merchants WHERE id > $1")
        .unwrap();
    member.query(&statement, &[&0i32]).unwrap();
    // Past the automatic preparing threshold: the next run would execute
    // rowgate's own prepared statement.
    for _ in 0..3 {
        member.simple_query("SELECT count(*) FROM orders").unwrap();
    }
    std::fs::remove_dir_all(&sub).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match member.simple_query("SELECT 1") {
            Err(e) => {
                assert_eq!(common::sqlstate(&e).as_deref(), Some("58030"), "{e:?}");
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "statements still run: {}",
                    proxy.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let err = member.query(&statement, &[&0i32]).unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("58030"), "{err:?}");
    let err = member
        .simple_query("SELECT count(*) FROM orders")
        .unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("58030"), "{err:?}");
    // Once the file can be written again, statements run again.
    std::fs::create_dir(&sub).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while member.query(&statement, &[&0i32]).is_err() {
        assert!(Instant::now() < deadline, "statements still refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    member.simple_query("SELECT count(*) FROM orders").unwrap();
}
