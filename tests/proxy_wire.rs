//! The proxy at the protocol level, with a raw client: startup negotiation,
//! pipelined extended queries with a refusal in the middle, row-limited
//! portals, session pinning, COPY, and bad input of every kind, each followed
//! by proof that other sessions are unharmed. Also SIGHUP reload, the
//! connection cap, and SIGTERM draining.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::raw::{Client, Msg};
use postgres_protocol::message::frontend;

const POLICY: &str = "tests/fixtures/proxy/policy.yaml";

/// One database with the differential fixture's data, shared by the tests
/// that only read.
fn fixture_db() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let c = common::cluster();
        let db = c.create_database("proxy_wire");
        let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap();
        c.connect(&db).batch_execute(&schema).unwrap();
        db
    })
}

fn proxy() -> &'static common::Proxy {
    static PROXY: OnceLock<common::Proxy> = OnceLock::new();
    PROXY.get_or_init(|| common::Proxy::start(Path::new(POLICY), "max_message_bytes: 1048576\n"))
}

/// A raw session of `user` through the proxy on `port`; what the server
/// said during the startup.
fn login(port: u16, user: &str, password: &str, database: &str) -> (Client, Vec<Msg>) {
    let mut raw = Client::connect(port).unwrap();
    let after = raw.login(user, database, Some(password), &[]).unwrap();
    (raw, after)
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

fn errors(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            (
                m.field(b'C').unwrap_or_default(),
                m.field(b'M').unwrap_or_default(),
            )
        })
        .collect()
}

/// A DataRow's first column as text.
fn first_value(msgs: &[Msg]) -> Option<String> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    row.columns().into_iter().next().flatten()
}

/// Waits until `want` upstream sessions match `condition` (on
/// `pg_stat_activity`, read directly); fails with `what` after `timeout`.
fn wait_for_sessions(condition: &str, want: i64, timeout: Duration, what: &str) {
    let mut direct = common::cluster().connect("postgres");
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {condition}");
    let deadline = Instant::now() + timeout;
    while direct.query_one(&sql, &[]).unwrap().get::<_, i64>(0) != want {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The suite runs in transaction pooling (`ROWGATE_TEST_POOL`, see
/// `common`).
fn transaction_pooling() -> bool {
    std::env::var("ROWGATE_TEST_POOL").is_ok_and(|v| v == "transaction")
}

/// `SELECT count(*) FROM merchants` on `raw` gives `want`.
fn assert_merchants(raw: &mut Client, want: &str) {
    let out = raw.query("SELECT count(*) FROM merchants").unwrap();
    assert_eq!(
        first_value(&out).as_deref(),
        Some(want),
        "{:?}",
        errors(&out)
    );
}

/// Proof that the proxy still serves: a new member session sees its rows.
fn still_serving() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    assert_merchants(&mut raw, "3");
}

#[test]
fn member_sees_filtered_rows_and_refusals_keep_the_session() {
    let (mut raw, after) = login(proxy().port, "member", "member-pw", fixture_db());
    let t = tags(&after);
    assert!(
        t.contains('S') && t.contains('K') && t.ends_with('Z'),
        "{t}"
    );
    assert_eq!(
        first_value(&raw.query("SELECT count(*) FROM merchants").unwrap()).as_deref(),
        Some("3")
    );
    let refused = raw.query("SELECT * FROM hr.salaries").unwrap();
    assert_eq!(tags(&refused), "EZ");
    assert_eq!(
        errors(&refused),
        vec![(
            "42501".to_string(),
            "permission denied for table hr.salaries".to_string()
        )]
    );
    assert_eq!(refused[0].field(b'S').as_deref(), Some("ERROR"));
    // A text of several statements with one refused runs nothing.
    let out = raw
        .query("SELECT 1; SELECT * FROM products; SELECT 2")
        .unwrap();
    assert_eq!(tags(&out), "EZ", "{:?}", errors(&out));
    assert!(errors(&out)[0].1.contains("public.products"));
    assert_eq!(
        first_value(&raw.query("SELECT 42").unwrap()).as_deref(),
        Some("42")
    );
}

#[test]
fn a_refusal_in_a_pipeline_comes_at_its_place_and_skips_to_sync() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let mut buf = BytesMut::new();
    frontend::parse(
        "a",
        "SELECT count(*) FROM merchants WHERE id > $1",
        [23],
        &mut buf,
    )
    .unwrap();
    frontend::bind(
        "",
        "a",
        [0],
        [Some(1)],
        |v: Option<i32>, out: &mut BytesMut| {
            out.put_slice(v.unwrap().to_string().as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [0],
        &mut buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::parse("b", "SELECT * FROM hr.salaries", [], &mut buf).unwrap();
    frontend::bind(
        "",
        "b",
        [],
        [],
        |_: (), _| Ok(postgres_protocol::IsNull::No),
        [],
        &mut buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    // ParseComplete, BindComplete, DataRow, CommandComplete, the refusal;
    // the rest of the pipeline is skipped until Sync, as PostgreSQL does.
    assert_eq!(tags(&out), "12DCEZ", "{:?}", errors(&out));
    assert_eq!(first_value(&out).as_deref(), Some("2"));
    assert_eq!(errors(&out)[0].0, "42501");
    // The refused statement does not exist; the good one does.
    buf.clear();
    frontend::describe(b'S', "b", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(errors(&out)[0].0, "26000", "{:?}", errors(&out));
    buf.clear();
    frontend::describe(b'S', "a", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    assert_eq!(tags(&raw.until_ready().unwrap()), "tTZ");
}

#[test]
fn a_refusal_in_a_transaction_block_fails_it_as_postgresql_does() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    raw.query("BEGIN").unwrap();
    let out = raw.query("SELECT * FROM hr.salaries").unwrap();
    assert_eq!(
        out.last().unwrap().body,
        b"E",
        "transaction status after a refusal"
    );
    let out = raw.query("SELECT 1").unwrap();
    assert_eq!(errors(&out)[0].0, "25P02");
    // In the failed block, a statement rowgate refuses is answered as
    // PostgreSQL answers any statement there, before looking at it: 25P02.
    for refused in [
        "SELECT * FROM hr.salaries",
        "DELETE FROM orders",
        "LISTEN x",
    ] {
        let out = raw.query(refused).unwrap();
        assert_eq!(errors(&out)[0].0, "25P02", "{refused}: {:?}", errors(&out));
    }
    // ... but a syntax error first, as PostgreSQL parses first.
    let out = raw.query("SELEC 1").unwrap();
    assert_eq!(errors(&out)[0].0, "42601");
    let out = raw.query("ROLLBACK").unwrap();
    assert_eq!(out.last().unwrap().body, b"I");
    // Outside it, the refusal says why.
    let out = raw.query("DELETE FROM orders").unwrap();
    assert_eq!(errors(&out)[0].0, "42501");
}

#[test]
fn portals_suspend_at_their_row_limit() {
    let mut client = proxy()
        .connect(fixture_db(), "member", "member-pw")
        .unwrap();
    let mut tx = client.transaction().unwrap();
    let stmt = tx.prepare("SELECT id FROM orders ORDER BY id").unwrap();
    let portal = tx.bind(&stmt, &[]).unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 2).unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 2);
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().unwrap();
    let direct: Vec<i32> = common::cluster()
        .connect(fixture_db())
        .query(
            "SELECT id FROM orders WHERE merchant_id IN (SELECT id FROM merchants WHERE name = 'King Inc') ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, direct);
    assert!(seen.len() > 2);
}

#[test]
fn session_state_is_pinned_for_members() {
    let mut client = proxy()
        .connect(fixture_db(), "member", "member-pw")
        .unwrap();
    let show = |c: &mut postgres::Client, what: &str| -> String {
        c.query_one(&format!("SHOW {what}"), &[]).unwrap().get(0)
    };
    assert_eq!(show(&mut client, "search_path"), "public");
    assert_eq!(show(&mut client, "standard_conforming_strings"), "on");
    assert_eq!(show(&mut client, "client_encoding"), "UTF8");
    for set in [
        "SET standard_conforming_strings = off",
        "SET client_encoding = 'LATIN1'",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('role', 'postgres', false)",
    ] {
        let e = client.batch_execute(set).expect_err(set);
        assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"), "{set}: {e}");
    }
    // The search path is the session's: rowgate follows it (and `$user` is
    // the member's name); RESET ALL goes back to the startup values.
    for (set, want) in [
        ("SET search_path = hr, public", "hr, public"),
        ("RESET ALL", "public"),
        ("SET search_path = public, \"$user\"", "public, member"),
        ("SET SESSION search_path TO 'public'", "public"),
        (
            "SELECT set_config('search_path', 'sales, \"$user\"', false)",
            "sales, member",
        ),
        ("SET search_path TO DEFAULT", "public"),
        ("SET search_path = hr", "hr"),
        ("RESET search_path", "public"),
    ] {
        client
            .batch_execute(set)
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        assert_eq!(show(&mut client, "search_path"), want, "{set}");
        assert_eq!(show(&mut client, "standard_conforming_strings"), "on");
    }
    client
        .batch_execute("SET application_name = 'still fine'")
        .unwrap();
    assert_eq!(show(&mut client, "application_name"), "still fine");
    assert_eq!(show(&mut client, "search_path"), "public");
}

#[test]
fn startup_options_are_refused_for_members_and_passed_for_admins() {
    let options = [("options", "-c search_path=hr")];
    for refused in ["-c role=postgres", "-d 5", "-c row_security=off"] {
        let mut raw = Client::connect(proxy().port).unwrap();
        let out = raw
            .login(
                "member",
                fixture_db(),
                Some("member-pw"),
                &[("options", refused)],
            )
            .unwrap();
        assert_eq!(errors(&out)[0].0, "42501", "{refused}: {:?}", errors(&out));
    }
    // Settings a member may SET may come in `options` or as parameters of
    // their own; a search path that finds what the pinned one finds is
    // taken as the pinned one.
    let mut raw = Client::connect(proxy().port).unwrap();
    let params = [
        (
            "options",
            "-c jit=off --lock-timeout=7s -c search_path=public,$user",
        ),
        ("search_path", "\"$user\", public"),
        ("TimeZone", "UTC"),
    ];
    let out = raw
        .login("member", fixture_db(), Some("member-pw"), &params)
        .unwrap();
    assert_eq!(out.last().map(|m| m.tag), Some(b'Z'), "{:?}", errors(&out));
    for (setting, want) in [
        ("jit", "off"),
        ("lock_timeout", "7s"),
        // The last one given wins, as in PostgreSQL; `$user` is spelt out.
        ("search_path", "member, public"),
        ("timezone", "UTC"),
    ] {
        let got = first_value(&raw.query(&format!("SHOW {setting}")).unwrap());
        assert_eq!(got.as_deref(), Some(want), "{setting}");
    }

    let mut raw = Client::connect(proxy().port).unwrap();
    let out = raw
        .login("admin", fixture_db(), Some("admin-pw"), &options)
        .unwrap();
    assert_eq!(out.last().map(|m| m.tag), Some(b'Z'), "{:?}", errors(&out));
    assert_eq!(
        first_value(&raw.query("SHOW search_path").unwrap()).as_deref(),
        Some("hr")
    );
}

#[test]
fn ssl_and_gssenc_requests_are_answered_no() {
    for code in [80_877_103i32, 80_877_104] {
        let mut raw = Client::connect(proxy().port).unwrap();
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(code);
        raw.send(&buf).unwrap();
        let mut answer = [0u8; 1];
        raw.stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"N");
        let out = raw
            .login("member", fixture_db(), Some("member-pw"), &[])
            .unwrap();
        assert_eq!(out.last().map(|m| m.tag), Some(b'Z'));
    }
}

#[test]
fn an_old_protocol_version_is_refused_clearly() {
    let mut raw = Client::connect(proxy().port).unwrap();
    let mut buf = BytesMut::new();
    buf.put_i32(8);
    buf.put_i32(2 << 16);
    raw.send(&buf).unwrap();
    let m = raw.read().unwrap();
    assert_eq!(m.field(b'C').as_deref(), Some("0A000"));
    assert!(m
        .field(b'M')
        .unwrap()
        .contains("unsupported frontend protocol 2.0"));
    still_serving();
}

#[test]
fn members_copy_out_is_filtered_copy_in_refused_and_admins_copy_passes() {
    let copy = |c: &mut postgres::Client, sql: &str| -> Result<String, postgres::Error> {
        let mut out = String::new();
        c.copy_out(sql)?.read_to_string(&mut out).unwrap();
        Ok(out)
    };
    let mut member = proxy()
        .connect(fixture_db(), "member", "member-pw")
        .unwrap();
    let rows = copy(&mut member, "COPY merchants (id, name) TO STDOUT").unwrap();
    assert_eq!(rows, "1\tKing Inc\n7\tKing Inc\n11\tKing Inc\n");
    let csv = copy(
        &mut member,
        "COPY (SELECT id FROM merchants ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
    )
    .unwrap();
    assert_eq!(csv, "id\n1\n7\n11\n");
    for refused in [
        "COPY hr.salaries TO STDOUT",
        "COPY merchants FROM STDIN",
        "COPY merchants TO '/tmp/x'",
        "COPY (SELECT 1) TO PROGRAM 'true'",
    ] {
        let e = member.batch_execute(refused).expect_err(refused);
        assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"), "{refused}");
    }
    let mut admin = proxy().connect(fixture_db(), "admin", "admin-pw").unwrap();
    let all = copy(
        &mut admin,
        "COPY (SELECT id FROM merchants ORDER BY id) TO STDOUT",
    )
    .unwrap();
    assert_eq!(all.lines().count(), 11);
}

#[test]
fn garbage_bytes_end_only_that_connection() {
    let mut raw = Client::connect(proxy().port).unwrap();
    raw.send(b"\x16\x03\x01 this is not a startup packet at all")
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.stream.read_to_end(&mut rest);
    still_serving();

    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    raw.send(b"\x01\x00\x00\x00\x09garbage").unwrap();
    let m = raw.read().expect("an error before the connection ends");
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"));
    assert!(raw.read().is_err(), "the connection ends");
    still_serving();
}

#[test]
fn an_oversized_message_ends_only_that_connection() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_i32(64 * 1024 * 1024);
    raw.send(&buf).unwrap();
    let m = raw.read().expect("an error");
    assert_eq!(m.field(b'C').as_deref(), Some("54000"));
    assert!(m.field(b'M').unwrap().contains("exceeds the limit"));
    assert!(raw.read().is_err());
    still_serving();
}

#[test]
fn a_truncated_message_and_a_vanished_client_harm_nothing() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_i32(100);
    buf.put_slice(b"SELECT");
    raw.send(&buf).unwrap();
    drop(raw);

    // A client that leaves in the middle of a query: its upstream session
    // is closed too.
    let mut raw = Client::connect(proxy().port).unwrap();
    let app = [("application_name", "vanishing")];
    raw.login("member", fixture_db(), Some("member-pw"), &app)
        .unwrap();
    let mut buf = BytesMut::new();
    frontend::query("SELECT pg_sleep(1)", &mut buf).unwrap();
    raw.send(&buf).unwrap();
    drop(raw);
    wait_for_sessions(
        "application_name = 'vanishing'",
        0,
        Duration::from_secs(10),
        "the upstream session outlived its client",
    );
    still_serving();
}

#[test]
fn an_upstream_restart_ends_the_session_with_an_error() {
    let mut raw = Client::connect(proxy().port).unwrap();
    let app = [("application_name", "victim")];
    raw.login("member", fixture_db(), Some("member-pw"), &app)
        .unwrap();
    let mut direct = common::cluster().connect("postgres");
    direct
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'")
        .unwrap();
    let mut buf = BytesMut::new();
    frontend::query("SELECT 1", &mut buf).unwrap();
    let _ = raw.send(&buf);
    if transaction_pooling() {
        // The session held no connection while idle: the one ended is
        // replaced unseen (tests/pool.rs), and the statement runs.
        let out = raw.until_ready().unwrap();
        assert_eq!(
            first_value(&out).as_deref(),
            Some("1"),
            "{:?}",
            errors(&out)
        );
        still_serving();
        return;
    }
    let mut fatal = None;
    while let Ok(m) = raw.read() {
        if m.tag == b'E' && m.field(b'S').as_deref() == Some("FATAL") {
            fatal = Some(m);
        }
    }
    assert!(fatal.is_some(), "the client is told its session ended");
    still_serving();
}

#[test]
fn wrong_passwords_and_unknown_users_look_the_same() {
    let (_, wrong) = login(proxy().port, "member", "nope", fixture_db());
    let (_, unknown) = login(proxy().port, "nobody-here", "nope", fixture_db());
    assert_eq!(errors(&wrong)[0].0, "28P01");
    assert_eq!(errors(&unknown)[0].0, "28P01");
    assert_eq!(
        errors(&wrong)[0].1.replace("\"member\"", "\"X\""),
        errors(&unknown)[0].1.replace("\"nobody-here\"", "\"X\"")
    );
}

#[test]
fn sighup_reloads_policies_and_a_broken_set_keeps_the_old_one() {
    let db = fixture_db();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::copy(POLICY, &file).unwrap();
    let proxy = common::Proxy::start(&file, "");
    let count = |c: &mut postgres::Client| -> Result<i64, postgres::Error> {
        c.query_one("SELECT count(*) FROM merchants", &[])
            .map(|r| r.get(0))
    };
    let (mut member, _) = login(proxy.port, "member", "member-pw", db);
    let mut admin = proxy.connect(db, "admin", "admin-pw").unwrap();
    assert_eq!(
        first_value(&member.query("SELECT count(*) FROM merchants").unwrap()).as_deref(),
        Some("3")
    );
    // A statement prepared under the old access must not run under the new.
    let mut buf = BytesMut::new();
    frontend::parse("old", "SELECT count(*) FROM merchants", [], &mut buf).unwrap();
    frontend::sync(&mut buf);
    member.send(&buf).unwrap();
    assert_eq!(tags(&member.until_ready().unwrap()), "1Z");

    let text = std::fs::read_to_string(POLICY).unwrap();
    std::fs::write(
        &file,
        text.replace("merchant: [King Inc]", "merchant: [Bel Air]"),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("policies reloaded") {
        assert!(Instant::now() < deadline, "the reload was not logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The member's access changed: the session ends, prepared statement and all.
    let mut buf = BytesMut::new();
    frontend::bind(
        "",
        "old",
        [],
        [],
        |_: (), _| Ok(postgres_protocol::IsNull::No),
        [],
        &mut buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::sync(&mut buf);
    member.send(&buf).unwrap();
    let m = member.read().expect("the client is told why");
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(m.field(b'C').as_deref(), Some("57P01"));
    assert!(m.field(b'M').unwrap().contains("access changed"));
    assert!(member.read().is_err(), "no rows under the old access");
    // The admin's did not: that session goes on.
    assert_eq!(count(&mut admin).unwrap(), 11);
    let mut member = proxy.connect(db, "member", "member-pw").unwrap();
    assert_eq!(count(&mut member).unwrap(), 2);

    std::fs::write(&file, "users: [this is: not valid").unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("policy reload failed") {
        assert!(Instant::now() < deadline, "no reload error was logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count(&mut member).unwrap(),
        2,
        "the previous policies stay in force"
    );
    assert!(proxy.connect(db, "member", "member-pw").is_ok());
}

#[test]
fn connections_over_the_cap_are_turned_away() {
    let db = fixture_db();
    let proxy = common::Proxy::start(Path::new(POLICY), "max_connections: 2\n");
    let a = proxy.connect(db, "member", "member-pw").unwrap();
    let b = proxy.connect(db, "member", "member-pw").unwrap();
    let e = proxy.connect(db, "member", "member-pw").err().unwrap();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("53300"), "{e}");
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.connect(db, "member", "member-pw").is_err() {
        assert!(Instant::now() < deadline, "slots are not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_running_statements_then_exits() {
    let db = fixture_db();
    let mut proxy = common::Proxy::start(Path::new(POLICY), "");
    let url = proxy.url(db, "member", "member-pw") + " application_name=draining";
    let busy = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one("SELECT pg_sleep(1.5)::text, count(*) FROM merchants", &[])
            .map(|r| r.get::<_, i64>(1))
    });
    // Wait until the statement runs upstream.
    wait_for_sessions(
        "application_name = 'draining' AND query LIKE '%pg_sleep%' AND state = 'active'",
        1,
        Duration::from_secs(20),
        "the busy statement never started",
    );
    let mut idle = proxy.connect(db, "member", "member-pw").unwrap();
    proxy.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        proxy.connect(db, "member", "member-pw").is_err(),
        "no new connections while draining"
    );
    let result = busy.join().unwrap();
    assert_eq!(
        result.as_ref().ok(),
        Some(&3),
        "the running statement finishes: {result:?}\n{}",
        proxy.log()
    );
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("rowgate exits after the drain");
    assert!(status.success());
    assert!(idle.is_closed() || idle.is_valid(Duration::from_secs(1)).is_err());
}

#[test]
fn upstream_authentication_failures_do_not_name_the_upstream_role() {
    let proxy = common::Proxy::start_with(
        Path::new(POLICY),
        "",
        common::UpstreamAuth {
            user: "up_scram",
            password: Some("wrong"),
        },
    );
    let e = proxy
        .connect(fixture_db(), "member", "member-pw")
        .err()
        .expect("the connection fails");
    let db = e.as_db_error().expect("an error from rowgate");
    assert_eq!(db.code().code(), "08006");
    assert_eq!(
        db.message(),
        "rowgate could not authenticate to the upstream database"
    );
    assert!(!db.message().contains("up_scram"));
    assert!(proxy.log().contains("refused rowgate's credentials"));
}

/// Parse (unnamed), Bind (unnamed portal, one text parameter), Execute.
fn parse_bind_execute(buf: &mut BytesMut, sql: &str, value: i32, describe: bool) {
    frontend::parse("", sql, [23], buf).unwrap();
    if describe {
        frontend::describe(b'S', "", buf).unwrap();
    }
    bind_execute(buf, value);
}

fn bind_execute(buf: &mut BytesMut, value: i32) {
    frontend::bind(
        "",
        "",
        [0],
        [Some(value)],
        |v: Option<i32>, out: &mut BytesMut| {
            out.put_slice(v.unwrap().to_string().as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [0],
        buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, buf).unwrap();
}

/// The values of every DataRow's first column.
fn first_values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| first_value(std::slice::from_ref(m)).unwrap_or_default())
        .collect()
}

#[test]
fn repeated_statements_prepared_automatically_keep_the_protocol_exact() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let sql = "SELECT count(*) FROM merchants WHERE id > $1";
    let mut buf = BytesMut::new();
    // One Sync each: the first Parse goes as it is, the second creates
    // rowgate's upstream statement, the later ones reuse it. The client sees
    // the same messages every time.
    for (v, count) in [(0, "3"), (1, "2"), (2, "2"), (7, "1"), (11, "0")] {
        buf.clear();
        parse_bind_execute(&mut buf, sql, v, false);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "12DCZ", "{:?}", errors(&out));
        assert_eq!(first_value(&out).as_deref(), Some(count));
    }
    // Pipelined before one Sync, with Describe of the unnamed statement.
    buf.clear();
    parse_bind_execute(&mut buf, sql, 0, true);
    parse_bind_execute(&mut buf, sql, 1, false);
    bind_execute(&mut buf, 7);
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "1tT2DC12DC2DCZ", "{:?}", errors(&out));
    assert_eq!(first_values(&out), ["3", "2", "1"]);
    // Closing the unnamed statement, or a Query, drops it as PostgreSQL
    // does: a Bind to it then fails.
    for drop_it in ["close", "query"] {
        buf.clear();
        frontend::parse("", sql, [23], &mut buf).unwrap();
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        assert_eq!(tags(&raw.until_ready().unwrap()), "1Z");
        if drop_it == "close" {
            buf.clear();
            frontend::close(b'S', "", &mut buf).unwrap();
            frontend::sync(&mut buf);
            raw.send(&buf).unwrap();
            assert_eq!(tags(&raw.until_ready().unwrap()), "3Z");
        } else {
            assert_eq!(tags(&raw.query("SELECT 1").unwrap()), "TDCZ");
        }
        buf.clear();
        bind_execute(&mut buf, 0);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "EZ", "{drop_it}");
        assert_eq!(errors(&out)[0].0, "26000", "{drop_it}");
    }
    // Simple queries: the first run is rewritten as usual, later ones run
    // rowgate's prepared statement; the client sees PostgreSQL's messages
    // for a SELECT each time, and nothing of the PREPARE.
    for (id, rows) in [(1, 1), (2, 0), (7, 1), (3, 0), (11, 1)] {
        let out = raw
            .query(&format!("SELECT name FROM merchants WHERE id = {id}"))
            .unwrap();
        let expected = if rows == 1 { "TDCZ" } else { "TCZ" };
        assert_eq!(tags(&out), expected, "{:?}", errors(&out));
        let complete = out.iter().find(|m| m.tag == b'C').unwrap();
        assert_eq!(complete.body, format!("SELECT {rows}\0").as_bytes());
    }
    // In transaction pooling rowgate's statements are shared between
    // sessions, under names that members' catalog reads do not show
    // (tests/pool.rs follows them).
    if transaction_pooling() {
        return;
    }
    // The simple query's statement is prepared upstream. The extended one
    // was forgotten when the Binds above failed with 26000 (rowgate then
    // assumes its statements may be gone) and closed upstream since.
    let out = raw
        .query("SELECT name FROM pg_prepared_statements ORDER BY name")
        .unwrap();
    let names = first_values(&out);
    assert!(
        names.len() == 1 && names[0].starts_with("rowgate_auto_"),
        "{names:?}"
    );
    // rowgate's statement is not the client's: a Parse under the reserved
    // prefix is refused, Describe and Bind of rowgate's name find no
    // statement, and Close of it leaves it in place.
    let auto = names[0].clone();
    for name in [auto.as_str(), "rowgate_mine", "ROWGATE_x"] {
        buf.clear();
        frontend::parse(name, "SELECT 1", [], &mut buf).unwrap();
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "EZ", "{name}");
        assert_eq!(errors(&out)[0].0, "42501", "{name}");
    }
    buf.clear();
    frontend::describe(b'S', &auto, &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "EZ");
    assert_eq!(errors(&out)[0].0, "26000");
    buf.clear();
    frontend::bind(
        "",
        &auto,
        [],
        [1i32],
        |v: i32, b: &mut BytesMut| {
            b.extend_from_slice(&v.to_be_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [1],
        &mut buf,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "EZ");
    assert_eq!(errors(&out)[0].0, "26000");
    buf.clear();
    frontend::close(b'S', &auto, &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    assert_eq!(tags(&raw.until_ready().unwrap()), "3Z");
    let out = raw
        .query("SELECT name FROM pg_prepared_statements ORDER BY name")
        .unwrap();
    assert_eq!(first_values(&out), [auto]);
}

#[test]
fn a_query_skipped_inside_a_failed_pipeline_leaves_the_session_exact() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    // A Query between extended messages and their Sync: after the refusal
    // PostgreSQL skips it (no ReadyForQuery of its own) until the Sync.
    let mut buf = BytesMut::new();
    frontend::parse("", "SELECT * FROM hr.salaries", [], &mut buf).unwrap();
    frontend::query("SELECT 1", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "EZ", "{:?}", errors(&out));
    assert_eq!(errors(&out)[0].0, "42501");
    // Repeated statements of both protocols still get exactly their own
    // responses.
    for (id, rows) in [(1, 1), (2, 0), (7, 1), (11, 1)] {
        let out = raw
            .query(&format!("SELECT name FROM merchants WHERE id = {id}"))
            .unwrap();
        let expected = if rows == 1 { "TDCZ" } else { "TCZ" };
        assert_eq!(tags(&out), expected, "{:?}", errors(&out));
        buf.clear();
        parse_bind_execute(
            &mut buf,
            "SELECT count(*) FROM merchants WHERE id > $1",
            id,
            false,
        );
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "12DCZ", "{:?}", errors(&out));
    }
}

/// Code, message and position of the first error.
fn first_error(msgs: &[Msg]) -> Option<(String, String, Option<String>)> {
    let e = msgs.iter().find(|m| m.tag == b'E')?;
    Some((
        e.field(b'C').unwrap_or_default(),
        e.field(b'M').unwrap_or_default(),
        e.field(b'P'),
    ))
}

/// The first error of `sql` sent as a simple Query and as a Parse (with
/// Sync) on `raw`.
fn both_ways(raw: &mut Client, sql: &str) -> [Option<(String, String, Option<String>)>; 2] {
    let simple = raw.query(sql).unwrap();
    let mut buf = BytesMut::new();
    frontend::parse("", sql, [], &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let extended = raw.until_ready().unwrap();
    [first_error(&simple), first_error(&extended)]
}

#[test]
fn text_rowgate_cannot_parse_gets_postgresql_s_own_syntax_error_or_0a000() {
    let (mut gate, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let mut direct = Client::connect(common::cluster().port).unwrap();
    direct.login("postgres", fixture_db(), None, &[]).unwrap();
    // Not valid PostgreSQL: the error PostgreSQL itself gives, field for
    // field, with the position in the client's own text.
    let invalid = [
        "SELEC 1",
        "SELECT 1 AS",
        "SELECT 'abc",
        "SELECT \"abc",
        "SELECT $$abc",
        "SELECT 1 /* open comment",
        "SELECT 1 FROM merchants WHERE",
        "SELECT 1 -- a comment\nFROM",
        "SELECT 'é', (1 +",
        "SELECT E'abc\\",
        "SELECT 1; SELECT 2 FROM WHERE",
        "SELECT count(* FROM merchants",
    ];
    for sql in invalid {
        let want = both_ways(&mut direct, sql);
        assert!(
            want[0].as_ref().is_some_and(|e| e.0 == "42601"),
            "{sql}: {want:?}"
        );
        let got = both_ways(&mut gate, sql);
        assert_eq!(got, want, "{sql}");
        for e in got.iter().flatten() {
            assert!(!e.1.contains("rowgate"), "{sql}: {e:?}");
        }
    }
    // Valid PostgreSQL that rowgate's parser does not read: 0A000, and
    // nothing of it ran (the function would have made a table).
    for sql in [
        "DO $$ BEGIN CREATE TABLE made_by_do (x int); END $$",
        "SELECT * FROM merchants WHERE name ~~~ 'x' AND 1 = 1 ; DO $$ BEGIN CREATE TABLE made_by_do (x int); END $$",
    ] {
        for got in both_ways(&mut gate, sql) {
            let (code, message, position) = got.expect("an error");
            assert_eq!(code, "0A000", "{sql}: {message}");
            assert!(message.contains("rowgate does not support"), "{message}");
            assert_eq!(position, None);
        }
    }
    let made = direct
        .query("SELECT count(*) FROM pg_class WHERE relname = 'made_by_do'")
        .unwrap();
    assert_eq!(first_value(&made).as_deref(), Some("0"));
    // The session goes on.
    let out = gate.query("SELECT count(*) FROM merchants").unwrap();
    assert_eq!(first_value(&out).as_deref(), Some("3"));
    still_serving();
}

/// A Parse of the unnamed statement that fails drops the unnamed statement
/// before it, as PostgreSQL drops it before it parses the new one: a
/// refused `SET rowgate.view_as` in the extended protocol (42501 for a
/// member, 0A000 for an admin, viewing as a user or not) leaves no
/// statement for a Bind of the unnamed one to run, even when rowgate's
/// automatic statement stood for the one before.
#[test]
fn a_refused_unnamed_parse_leaves_no_unnamed_statement() {
    let sql = "SELECT count(*) FROM merchants WHERE id > $1";
    for (user, password, viewing, code) in [
        ("member", "member-pw", false, "42501"),
        ("admin", "admin-pw", true, "0A000"),
    ] {
        let (mut raw, _) = login(proxy().port, user, password, fixture_db());
        if viewing {
            let out = raw.query("SET rowgate.view_as = 'member'").unwrap();
            assert_eq!(tags(&out), "CZ", "{:?}", errors(&out));
        }
        let mut buf = BytesMut::new();
        // Once the ordinary way, then as rowgate's statement.
        for _ in 0..2 {
            buf.clear();
            parse_bind_execute(&mut buf, sql, 0, false);
            frontend::sync(&mut buf);
            raw.send(&buf).unwrap();
            let out = raw.until_ready().unwrap();
            assert_eq!(tags(&out), "12DCZ", "{user}: {:?}", errors(&out));
            assert_eq!(first_value(&out).as_deref(), Some("3"), "{user}");
        }
        buf.clear();
        frontend::parse("", "SET rowgate.view_as = 'analyst'", [], &mut buf).unwrap();
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "EZ", "{user}");
        assert_eq!(errors(&out)[0].0, code, "{user}: {:?}", errors(&out));
        buf.clear();
        bind_execute(&mut buf, 0);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "EZ", "{user}: {:?}", first_values(&out));
        assert_eq!(errors(&out)[0].0, "26000", "{user}: {:?}", errors(&out));
        // The session goes on.
        buf.clear();
        parse_bind_execute(&mut buf, sql, 7, false);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(first_value(&out).as_deref(), Some("1"), "{user}");
    }
}

/// `SET rowgate.view_as` as a Query between extended-protocol messages
/// and their Sync is refused (starting a view runs rowgate's own queries,
/// which PostgreSQL skips after an error there): after a failed Parse the
/// client gets the error and one ReadyForQuery, the admin still sees as
/// itself, and the session goes on; without an error it gets the refusal.
#[test]
fn view_as_before_a_sync_is_refused_and_never_hangs() {
    let (mut raw, _) = login(proxy().port, "admin", "admin-pw", fixture_db());
    let no_params: [u32; 0] = [];
    let mut buf = BytesMut::new();
    frontend::parse("", "SELECT nope FROM merchants", no_params, &mut buf).unwrap();
    frontend::query("SET rowgate.view_as = 'member'", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "EZ", "{:?}", errors(&out));
    assert_eq!(errors(&out)[0].0, "42703", "{:?}", errors(&out));
    // Not viewing: the admin sees every merchant.
    assert_merchants(&mut raw, "11");
    // Without an error before it, the refusal itself.
    buf.clear();
    frontend::parse("", "SELECT 1", no_params, &mut buf).unwrap();
    frontend::query("SET rowgate.view_as = 'member'", &mut buf).unwrap();
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert!(tags(&out).ends_with("EZ"), "{:?}", tags(&out));
    assert_eq!(errors(&out)[0].0, "0A000", "{:?}", errors(&out));
    buf.clear();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    raw.until_ready().unwrap();
    assert_merchants(&mut raw, "11");
}

/// A Query sent after extended-protocol messages and before their Sync,
/// when one of those messages fails (upstream, or refused): PostgreSQL
/// discards everything up to the Sync, the Query with it, which gets no
/// response of its own; the client gets the messages before the error, the
/// error and one ReadyForQuery. The session stays exact after it: the
/// query rowgate runs of its own to read the search path back (after a
/// `SET search_path`) stays unseen, and statements get their own rows.
#[test]
fn a_query_discarded_after_an_extended_error_gets_nothing() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let no_params: [i32; 0] = [];
    let cases: [(&str, &[&str], &str, &str); 4] = [
        ("SELECT nope FROM merchants", &["SELECT 1"], "EZ", "42703"),
        (
            "SELECT 10 / (id - 7) FROM merchants",
            &["SELECT 1"],
            "12DEZ",
            "22012",
        ),
        (
            "SELECT * FROM hr.salaries",
            &["SELECT 1", "SELECT 2"],
            "EZ",
            "42501",
        ),
        ("SELECT nope FROM merchants", &[], "EZ", "42703"),
    ];
    for (sql, queries, want, code) in cases {
        let mut buf = BytesMut::new();
        frontend::parse("", sql, [], &mut buf).unwrap();
        frontend::bind(
            "",
            "",
            [],
            no_params,
            |v: i32, b: &mut BytesMut| {
                b.extend_from_slice(&v.to_be_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            [],
            &mut buf,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut buf).unwrap();
        for q in queries {
            frontend::query(q, &mut buf).unwrap();
        }
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), want, "{sql}: {:?}", errors(&out));
        assert_eq!(errors(&out)[0].0, code, "{sql}");
        // Nothing more comes: the next statement's responses are its own.
        let out = raw.query("SET search_path = public, pg_catalog").unwrap();
        assert_eq!(tags(&out), "CZ", "{sql}: {:?}", errors(&out));
        for _ in 0..2 {
            let out = raw.query("SELECT count(*) FROM merchants").unwrap();
            assert_eq!(tags(&out), "TDCZ", "{sql}: {:?}", errors(&out));
            assert_eq!(first_value(&out).as_deref(), Some("3"), "{sql}");
            buf.clear();
            parse_bind_execute(
                &mut buf,
                "SELECT count(*) FROM merchants WHERE id > $1",
                1,
                false,
            );
            frontend::sync(&mut buf);
            raw.send(&buf).unwrap();
            let out = raw.until_ready().unwrap();
            assert_eq!(tags(&out), "12DCZ", "{sql}: {:?}", errors(&out));
            assert_eq!(first_value(&out).as_deref(), Some("2"), "{sql}");
        }
    }
    still_serving();
}

/// Bind, Execute and Sync of the unnamed statement with one parameter.
fn run_unnamed(raw: &mut Client, value: i32) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    bind_execute(&mut buf, value);
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    raw.until_ready().unwrap()
}

/// A Parse of the unnamed statement that PostgreSQL skips (an earlier
/// message of its pipeline failed) never ran: the unnamed statement before
/// it stays, also when rowgate's statement stood for that one. So for a
/// Close of it and a Query, which drop it when they run.
#[test]
fn an_unnamed_parse_skipped_after_an_error_keeps_the_statement_before() {
    let (mut raw, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let sql = "SELECT count(*) FROM merchants WHERE id > $1";
    // Once the ordinary way, then standing for rowgate's statement.
    for run in 0..4 {
        let mut buf = BytesMut::new();
        parse_bind_execute(&mut buf, sql, 1, false);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(tags(&out), "12DCZ", "{:?}", errors(&out));
        assert_eq!(first_value(&out).as_deref(), Some("2"));
        // An Execute of a portal that does not exist, then a Parse of the
        // unnamed statement that PostgreSQL skips.
        let out = raw.skipped_unnamed_parse().unwrap();
        assert_eq!(tags(&out), "EZ", "run {run}");
        assert_eq!(errors(&out)[0].0, "34000", "run {run}");
        // The statement before is bound.
        let out = run_unnamed(&mut raw, 7);
        assert_eq!(tags(&out), "2DCZ", "run {run}: {:?}", errors(&out));
        assert_eq!(first_value(&out).as_deref(), Some("1"), "run {run}");
    }
    // A Query skipped with them.
    let mut buf = BytesMut::new();
    frontend::execute("no_such_portal", 0, &mut buf).unwrap();
    frontend::query("SELECT 1", &mut buf).unwrap();
    frontend::sync(&mut buf);
    raw.send(&buf).unwrap();
    let out = raw.until_ready().unwrap();
    assert_eq!(tags(&out), "EZ");
    let out = run_unnamed(&mut raw, 7);
    assert_eq!(tags(&out), "2DCZ", "{:?}", errors(&out));
    assert_eq!(first_value(&out).as_deref(), Some("1"));
    // A Query that runs drops it.
    assert_eq!(tags(&raw.query("SELECT 1").unwrap()), "TDCZ");
    let out = run_unnamed(&mut raw, 7);
    assert_eq!(errors(&out)[0].0, "26000");
}

/// A repeated unnamed Parse (which rowgate prepares under a name of its
/// own) that fails upstream leaves no unnamed statement: a Bind of it
/// fails as PostgreSQL says it, naming the unnamed statement.
#[test]
fn a_failed_repeated_unnamed_parse_leaves_postgresql_s_26000() {
    let (mut gate, _) = login(proxy().port, "member", "member-pw", fixture_db());
    let mut direct = Client::connect(common::cluster().port).unwrap();
    direct.login("postgres", fixture_db(), None, &[]).unwrap();
    let sql = "SELECT count(*) FROM merchants WHERE id > $1";
    let mut got = Vec::new();
    for raw in [&mut direct, &mut gate] {
        let mut buf = BytesMut::new();
        parse_bind_execute(&mut buf, sql, 1, false);
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        assert_eq!(tags(&raw.until_ready().unwrap()), "12DCZ");
        // In a failed transaction block the Parse fails, after PostgreSQL
        // dropped the unnamed statement before it.
        assert_eq!(tags(&raw.query("BEGIN").unwrap()), "CZ");
        assert_eq!(tags(&raw.query("SELECT 1/0").unwrap()), "EZ");
        buf.clear();
        frontend::parse("", sql, [23], &mut buf).unwrap();
        frontend::sync(&mut buf);
        raw.send(&buf).unwrap();
        let out = raw.until_ready().unwrap();
        assert_eq!(errors(&out)[0].0, "25P02");
        let out = run_unnamed(raw, 1);
        assert_eq!(tags(&out), "EZ");
        got.push(errors(&out));
        assert_eq!(tags(&raw.query("ROLLBACK").unwrap()), "CZ");
        let out = run_unnamed(raw, 1);
        assert_eq!(tags(&out), "EZ");
        got.push(errors(&out));
    }
    assert_eq!(
        got[0],
        [(
            "26000".to_string(),
            "unnamed prepared statement does not exist".to_string()
        )]
    );
    assert_eq!(got[0], got[1]);
    assert_eq!(got[2], got[0], "in the failed block");
    assert_eq!(got[3], got[0], "after it");
    // The session goes on.
    let mut buf = BytesMut::new();
    parse_bind_execute(&mut buf, sql, 7, false);
    frontend::sync(&mut buf);
    gate.send(&buf).unwrap();
    let out = gate.until_ready().unwrap();
    assert_eq!(first_value(&out).as_deref(), Some("1"));
}
