//! Transaction pooling (`pool.mode: transaction`): members of different
//! rows share upstream connections, and nothing of one session reaches
//! another through them: rows, settings, statements, cursors, errors.

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::raw::{Client, Msg};
use postgres_protocol::message::frontend;

const POLICY: &str = "tests/fixtures/pool/policy.yaml";

/// A new database with the differential fixture's data.
fn fixture_data(prefix: &str) -> String {
    let c = common::cluster();
    let db = c.create_database(prefix);
    let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap();
    c.connect(&db).batch_execute(&schema).unwrap();
    db
}

/// The database the tests that only read share.
fn fixture_db() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| fixture_data("pool"))
}

/// A proxy pooling `size` connections; clients wait `wait` for one.
fn pooled(size: usize, wait: &str) -> common::Proxy {
    let extra = format!(
        "pool:\n  mode: transaction\n  size: {size}\n  min_idle: 0\n  max_client_wait: {wait}\n"
    );
    common::Proxy::start(Path::new(POLICY), &extra)
}

fn login(proxy: &common::Proxy, user: &str, app: &str) -> Client {
    login_with(proxy, user, app).0
}

/// A session and what its startup said.
fn login_with(proxy: &common::Proxy, user: &str, app: &str) -> (Client, Vec<Msg>) {
    login_to(proxy, fixture_db(), user, app)
}

/// A session on database `db`.
fn login_to(proxy: &common::Proxy, db: &str, user: &str, app: &str) -> (Client, Vec<Msg>) {
    let mut raw = Client::connect(proxy.port).unwrap();
    let password = format!("{user}-pw");
    let after = raw
        .login(user, db, Some(&password), &[("application_name", app)])
        .unwrap();
    assert_eq!(after.last().map(|m| m.tag), Some(b'Z'), "{user} logs in");
    (raw, after)
}

fn values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.columns()[0].clone().unwrap_or_default())
        .collect()
}

fn error_code(msgs: &[Msg]) -> Option<String> {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| m.field(b'C'))
}

/// Backends connected to database `db`, but this one and the catalog
/// reader's (which reads `pg_catalog` and never runs the tests'
/// statements).
fn backends(db: &str) -> i64 {
    let mut direct = common::cluster().connect(db);
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
             AND application_name <> 'rowgate catalog'",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn members_share_one_connection_and_each_sees_only_their_rows() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "alpha");
    let mut bel = login(&proxy, "bel", "beta");
    for _ in 0..10 {
        let k = king.query("SELECT DISTINCT name FROM merchants").unwrap();
        assert_eq!(values(&k), ["King Inc"]);
        let b = bel.query("SELECT DISTINCT name FROM merchants").unwrap();
        assert_eq!(values(&b), ["Bel Air"]);
        // Settings of the session's own follow it to the connection.
        let k = king.query("SHOW application_name").unwrap();
        assert_eq!(values(&k), ["alpha"]);
        let b = bel.query("SHOW application_name").unwrap();
        assert_eq!(values(&b), ["beta"]);
        // An error in one session is not the other's.
        let k = king.query("SELECT 1/0 FROM merchants").unwrap();
        assert_eq!(error_code(&k).as_deref(), Some("22012"));
        let b = bel.query("SELECT count(*) FROM orders").unwrap();
        assert_eq!(error_code(&b), None, "{b:?}");
    }
    // A database of its own: other tests' pools are not counted.
    let db = fixture_data("pool_count");
    let mut more: Vec<Client> = (0..6)
        .map(|i| login_to(&proxy, &db, if i % 2 == 0 { "king" } else { "bel" }, "more").0)
        .collect();
    for c in &mut more {
        assert_eq!(error_code(&c.query("SELECT 1").unwrap()), None);
    }
    let n = backends(&db);
    assert!((1..=1).contains(&n), "{n} backends for a pool of 1");
}

#[test]
fn a_transaction_keeps_its_connection_and_others_wait_for_it() {
    let proxy = pooled(1, "10s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    assert_eq!(error_code(&king.query("BEGIN").unwrap()), None);
    let k = king.query("SELECT count(*) FROM merchants").unwrap();
    let native: i64 = common::cluster()
        .connect(fixture_db())
        .query_one(
            "SELECT count(*) FROM merchants WHERE name = 'King Inc'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(values(&k), [native.to_string()]);
    // bel's statement waits for the connection king's transaction holds.
    let mut buf = BytesMut::new();
    frontend::query("SELECT DISTINCT name FROM merchants", &mut buf).unwrap();
    bel.send(&buf).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let k = king.query("SELECT DISTINCT name FROM merchants").unwrap();
    assert_eq!(values(&k), ["King Inc"], "still king's transaction");
    assert_eq!(error_code(&king.query("COMMIT").unwrap()), None);
    let b = bel.until_ready().unwrap();
    assert_eq!(values(&b), ["Bel Air"]);
}

#[test]
fn an_idle_session_timeout_pins_the_session_and_a_client_waiting_too_long_gets_53300() {
    let proxy = pooled(1, "500ms");
    let mut king = login(&proxy, "king", "k");
    // PostgreSQL would end the pooled connection while it waits idle for
    // another session: the setting keeps king on its connection, where it
    // acts as natively.
    let k = king.query("SET idle_session_timeout = '10min'").unwrap();
    assert_eq!(error_code(&k), None, "{k:?}");
    // The connection stays king's: nobody else can have it.
    let mut bel = Client::connect(proxy.port).unwrap();
    let started = Instant::now();
    let refused = bel.login("bel", fixture_db(), Some("bel-pw"), &[]).unwrap();
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("53300"),
        "{refused:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(proxy
        .log()
        .contains("session pinned to its upstream connection: idle_session_timeout is set"));
    let k = king.query("SHOW idle_session_timeout").unwrap();
    assert_eq!(values(&k), ["10min"]);
    // Once king is gone, its connection (with its setting) is not reused.
    king.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut bel = loop {
        let mut c = Client::connect(proxy.port).unwrap();
        let after = c.login("bel", fixture_db(), Some("bel-pw"), &[]).unwrap();
        if error_code(&after).is_none() {
            break c;
        }
        assert!(Instant::now() < deadline, "the pool never freed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let b = bel.query("SHOW idle_session_timeout").unwrap();
    assert_eq!(values(&b), ["0"], "king's setting stayed with king");
}

/// What a step of a settings script shows: its values and its error's
/// SQLSTATE.
fn shown(msgs: &[Msg]) -> (Vec<String>, Option<String>) {
    (values(msgs), error_code(msgs))
}

/// A native session as the test cluster's superuser with the startup
/// parameters `extra`.
fn native(db: &str, extra: &[(&str, &str)]) -> Client {
    let mut raw = Client::connect(common::cluster().port).unwrap();
    let after = raw.login("postgres", db, None, extra).unwrap();
    assert_eq!(error_code(&after), None, "{after:?}");
    raw
}

/// A member's session with the startup parameters `extra`.
fn member(proxy: &common::Proxy, user: &str, extra: &[(&str, &str)]) -> Client {
    let mut raw = Client::connect(proxy.port).unwrap();
    let password = format!("{user}-pw");
    let after = raw
        .login(user, fixture_db(), Some(&password), extra)
        .unwrap();
    assert_eq!(error_code(&after), None, "{after:?}");
    raw
}

#[test]
fn settings_follow_their_session_across_connections_and_stay_its_own() {
    // Two members on a pool of one connection, each statement of the one
    // after the other's; the same script on two native sessions is the
    // oracle for what each step gives.
    let proxy = pooled(1, "2s");
    let king_params = [("application_name", "k"), ("DateStyle", "SQL, DMY")];
    let bel_params = [("application_name", "b")];
    let mut king = member(&proxy, "king", &king_params);
    let mut bel = member(&proxy, "bel", &bel_params);
    let mut native_king = native(fixture_db(), &king_params);
    let mut native_bel = native(fixture_db(), &bel_params);
    let path_at_login = values(&king.query("SHOW search_path").unwrap());
    let script: &[(char, &str)] = &[
        ('k', "SET datestyle = 'German'"),
        ('b', "SHOW datestyle"),
        ('k', "SHOW datestyle"),
        (
            'k',
            "SELECT to_char(date '2024-03-01', 'YYYY') || ' ' || date '2024-03-01'",
        ),
        ('k', "SET statement_timeout = '5min'"),
        ('b', "SHOW statement_timeout"),
        ('k', "SHOW statement_timeout"),
        // Undone by its transaction's rollback; SET LOCAL ends with its
        // transaction.
        (
            'k',
            "BEGIN; SET intervalstyle = 'postgres_verbose'; ROLLBACK",
        ),
        ('k', "SHOW intervalstyle"),
        ('k', "BEGIN"),
        ('k', "SET LOCAL timezone = 'Asia/Tokyo'"),
        ('k', "SHOW timezone"),
        ('k', "COMMIT"),
        ('k', "SHOW timezone"),
        ('k', "BEGIN; SET lock_timeout = '7s'; COMMIT"),
        ('b', "SHOW lock_timeout"),
        ('k', "SHOW lock_timeout"),
        // A value that would be SQL of its own if it were not quoted.
        ('k', "SET application_name = 'x''); SELECT 1; --'"),
        ('b', "SHOW application_name"),
        ('k', "SHOW application_name"),
        (
            'k',
            "SELECT set_config('application_name', 'renamed', false)",
        ),
        ('b', "SHOW application_name"),
        ('k', "SHOW application_name"),
        ('b', "SET timezone = 'Europe/Paris'"),
        ('k', "SHOW timezone"),
        ('b', "SHOW timezone"),
        ('b', "SET extra_float_digits = 0"),
        ('k', "SELECT 0.1::float8 + 0.2::float8"),
        ('b', "SELECT 0.1::float8 + 0.2::float8"),
        // RESET goes back to the session's startup value, not the
        // connection's.
        ('k', "RESET datestyle"),
        ('k', "SHOW datestyle"),
        ('b', "SHOW datestyle"),
        ('k', "SET datestyle = 'Postgres'"),
        ('k', "RESET ALL"),
        ('b', "SHOW datestyle"),
        ('k', "SHOW datestyle"),
        ('k', "SHOW application_name"),
        ('k', "SHOW statement_timeout"),
        ('k', "SHOW lock_timeout"),
        ('k', "SHOW timezone"),
        ('b', "SHOW timezone"),
        ('b', "RESET ALL"),
        ('b', "SHOW timezone"),
        ('b', "SHOW application_name"),
        ('b', "SHOW extra_float_digits"),
    ];
    for (who, sql) in script {
        let (proxied, oracle) = match who {
            'k' => (&mut king, &mut native_king),
            _ => (&mut bel, &mut native_bel),
        };
        let got = proxied
            .query(sql)
            .unwrap_or_else(|e| panic!("{who}: {sql}: {e}\n{}", proxy.log()));
        let want = shown(&oracle.query(sql).unwrap());
        assert_eq!(shown(&got), want, "{who}: {sql}");
    }
    // The search path too, which rowgate sets for members at login.
    king.query("SET search_path = pg_catalog, public").unwrap();
    assert_eq!(
        values(&bel.query("SHOW search_path").unwrap()),
        path_at_login
    );
    assert_eq!(
        values(&king.query("SHOW search_path").unwrap()),
        ["pg_catalog, public"]
    );
    assert_eq!(
        values(&king.query("SELECT DISTINCT name FROM merchants").unwrap()),
        ["King Inc"]
    );
    king.query("RESET search_path").unwrap();
    assert_eq!(
        values(&king.query("SHOW search_path").unwrap()),
        path_at_login
    );
    // A prepared statement that changes a setting when it runs, not when
    // it is parsed.
    let set = "SELECT set_config('extra_float_digits', '2', false)";
    assert_eq!(error_code(&prepare(&mut king, "sf", set)), None);
    let show = "SHOW extra_float_digits";
    let before = values(&king.query(show).unwrap());
    assert_eq!(before, values(&native_king.query(show).unwrap()));
    assert_ne!(before, ["2"]);
    assert_eq!(values(&run_prepared(&mut king, "sf")), ["2"]);
    assert_eq!(
        values(&bel.query(show).unwrap()),
        values(&native_bel.query(show).unwrap())
    );
    assert_eq!(values(&king.query(show).unwrap()), ["2"]);
    // Nobody was pinned: one connection served both all along.
    let log = proxy.log();
    assert!(!log.contains("session pinned"), "{log}");
}

#[test]
fn a_listed_function_that_changes_a_setting_has_it_followed() {
    // The statement does not say that it changes a setting; the function
    // the policy lists does, in its body.
    common::cluster()
        .connect(fixture_db())
        .batch_execute(
            "CREATE OR REPLACE FUNCTION public.pool_set_style(s text) RETURNS text \
             LANGUAGE sql AS $$ SELECT pg_catalog.set_config('datestyle', s, false) $$; \
             CREATE OR REPLACE FUNCTION public.pool_set_digits(d text) RETURNS text \
             LANGUAGE sql AS $$ SELECT pg_catalog.set_config('extra_float_digits', d, false) $$",
        )
        .unwrap();
    let proxy = pooled(1, "2s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    // Three times: a statement run again is prepared automatically.
    for _ in 0..3 {
        let k = king.query("SELECT pool_set_style('German')").unwrap();
        assert_eq!(values(&k), ["German, DMY"], "{k:?}");
        assert_eq!(values(&bel.query("SHOW datestyle").unwrap()), ["ISO, MDY"]);
        assert_eq!(
            values(&king.query("SHOW datestyle").unwrap()),
            ["German, DMY"]
        );
        king.query("RESET datestyle").unwrap();
    }
    // So through a prepared statement, at each run (a setting that does
    // not change how statements read: the session keeps its prepared
    // statement and is not pinned).
    let set = "SELECT pool_set_digits('2')";
    assert_eq!(error_code(&prepare(&mut king, "digits", set)), None);
    for _ in 0..2 {
        assert_eq!(values(&run_prepared(&mut king, "digits")), ["2"]);
        assert_eq!(
            values(&bel.query("SHOW extra_float_digits").unwrap()),
            ["1"]
        );
        assert_eq!(
            values(&king.query("SHOW extra_float_digits").unwrap()),
            ["2"]
        );
        king.query("RESET extra_float_digits").unwrap();
    }
    let log = proxy.log();
    assert!(!log.contains("session pinned"), "{log}");
}

#[test]
fn statements_prepared_under_a_changed_setting_are_not_anothers() {
    // A date literal is read when a statement is prepared, under the
    // session's DateStyle then: 03/04 is March in MDY, April in DMY.
    let proxy = pooled(1, "2s");
    // The same user and startup: statements of the same text are shared.
    let mut first = login(&proxy, "king", "dates");
    let mut second = login(&proxy, "king", "dates");
    let month = "SELECT extract(month FROM '03/04/2024'::date)";
    // Prepared automatically inside the transaction that changed the
    // setting, before the session's settings are read back.
    first.query("BEGIN").unwrap();
    first.query("SET datestyle = 'SQL, DMY'").unwrap();
    for _ in 0..4 {
        assert_eq!(values(&first.query(month).unwrap()), ["4"]);
    }
    first.query("COMMIT").unwrap();
    for _ in 0..4 {
        assert_eq!(values(&second.query(month).unwrap()), ["3"]);
        assert_eq!(values(&first.query(month).unwrap()), ["4"]);
    }
    // A named statement made under the old setting keeps its reading, as
    // natively: the session stays on the connection that has it.
    let mut third = login(&proxy, "bel", "dates");
    drop(second);
    assert_eq!(error_code(&prepare(&mut third, "m", month)), None);
    third.query("SET datestyle = 'SQL, DMY'").unwrap();
    assert_eq!(values(&run_prepared(&mut third, "m")), ["3"]);
    assert_eq!(values(&third.query(month).unwrap()), ["4"]);
    assert!(proxy.log().contains(
        "session pinned to its upstream connection: prepared statements made under other settings"
    ));
}

#[test]
fn a_statement_timeout_left_on_a_connection_harms_no_other_session() {
    let proxy = pooled(2, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    // A millisecond: rowgate's own queries may be cancelled by it too.
    let k = king.query("SET statement_timeout = 1").unwrap();
    assert_eq!(error_code(&k), None, "{k:?}");
    for _ in 0..20 {
        king.query("SELECT 1").unwrap();
        let b = bel.query("SELECT DISTINCT name FROM merchants").unwrap();
        assert_eq!(error_code(&b), None, "{b:?}");
        assert_eq!(values(&b), ["Bel Air"]);
        assert_eq!(values(&bel.query("SHOW statement_timeout").unwrap()), ["0"]);
    }
}

#[test]
fn the_unnamed_statement_follows_its_session_to_another_connection() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    let mut buf = BytesMut::new();
    frontend::parse("", "SELECT DISTINCT name FROM merchants", [], &mut buf).unwrap();
    frontend::sync(&mut buf);
    king.send(&buf).unwrap();
    let parsed = king.until_ready().unwrap();
    assert_eq!(error_code(&parsed), None);
    // bel's simple query on the same connection drops its unnamed
    // statement upstream.
    assert_eq!(
        values(&bel.query("SELECT DISTINCT name FROM merchants").unwrap()),
        ["Bel Air"]
    );
    let ran = run_prepared(&mut king, "");
    let tags: String = ran.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "2DCZ", "{ran:?}");
    assert_eq!(values(&ran), ["King Inc"]);
}

#[test]
fn a_cursor_of_one_session_is_not_anothers() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    let k = king
        .query("BEGIN; DECLARE c CURSOR FOR SELECT name FROM merchants; FETCH 1 FROM c")
        .unwrap();
    assert_eq!(values(&k), ["King Inc"]);
    assert_eq!(error_code(&king.query("COMMIT").unwrap()), None);
    let b = bel.query("FETCH 1 FROM c").unwrap();
    assert_eq!(error_code(&b).as_deref(), Some("34000"), "{b:?}");
    // A cursor WITH HOLD outlives its transaction: it pins its session.
    let k = king
        .query("DECLARE h CURSOR WITH HOLD FOR SELECT name FROM merchants")
        .unwrap();
    assert_eq!(error_code(&k), None, "{k:?}");
    assert_eq!(values(&king.query("FETCH 1 FROM h").unwrap()), ["King Inc"]);
}

#[test]
fn a_cancel_reaches_the_pooled_statement_it_was_meant_for() {
    let proxy = pooled(2, "5s");
    let (mut king, startup) = login_with(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    let key = startup
        .iter()
        .find(|m| m.tag == b'K')
        .map(|m| m.body.clone())
        .expect("a cancel key");
    let mut buf = BytesMut::new();
    frontend::query("SELECT pg_sleep(20) FROM merchants", &mut buf).unwrap();
    king.send(&buf).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut cancel = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let pid = i32::from_be_bytes(key[0..4].try_into().unwrap());
    let secret = i32::from_be_bytes(key[4..8].try_into().unwrap());
    let mut request = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut request);
    assert!(!request.is_empty());
    std::io::Write::write_all(&mut cancel, &request).unwrap();
    let k = king.until_ready().unwrap();
    assert_eq!(error_code(&k).as_deref(), Some("57014"), "{k:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // bel, on the pool's other connection meanwhile, was not touched.
    assert_eq!(
        values(&bel.query("SELECT DISTINCT name FROM merchants").unwrap()),
        ["Bel Air"]
    );
}

#[test]
fn reset_goes_back_to_the_sessions_own_startup_settings() {
    let proxy = pooled(1, "5s");
    let mut raw = Client::connect(proxy.port).unwrap();
    let after = raw
        .login(
            "king",
            fixture_db(),
            Some("king-pw"),
            &[("DateStyle", "SQL, DMY")],
        )
        .unwrap();
    assert_eq!(error_code(&after), None, "{after:?}");
    // Another session's settings ran on the connection in between.
    let mut bel = login(&proxy, "bel", "b");
    assert_eq!(values(&bel.query("SHOW datestyle").unwrap()), ["ISO, MDY"]);
    assert_eq!(values(&raw.query("SHOW datestyle").unwrap()), ["SQL, DMY"]);
    raw.query("SET datestyle = 'German'").unwrap();
    let r = raw.query("SELECT 1; RESET ALL").unwrap();
    assert_eq!(error_code(&r), None, "{r:?}");
    assert_eq!(values(&raw.query("SHOW datestyle").unwrap()), ["SQL, DMY"]);
    // In a transaction rolled back, the RESET is undone with everything.
    raw.query("SET datestyle = 'German'").unwrap();
    raw.query("BEGIN; RESET datestyle").unwrap();
    assert_eq!(values(&raw.query("SHOW datestyle").unwrap()), ["SQL, DMY"]);
    raw.query("ROLLBACK").unwrap();
    assert_eq!(
        values(&raw.query("SHOW datestyle").unwrap()),
        ["German, DMY"]
    );
}

#[test]
fn a_pooled_connection_ended_while_idle_is_replaced_unseen() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "pool-victim");
    assert_eq!(
        values(&king.query("SELECT DISTINCT name FROM merchants").unwrap()),
        ["King Inc"]
    );
    let mut direct = common::cluster().connect(fixture_db());
    let ended = direct
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pool-victim'",
            &[],
        )
        .unwrap();
    assert_eq!(ended.len(), 1, "the idle pooled connection");
    std::thread::sleep(Duration::from_millis(300));
    let k = king.query("SELECT DISTINCT name FROM merchants").unwrap();
    assert_eq!(error_code(&k), None, "{k:?}");
    assert_eq!(values(&k), ["King Inc"]);
}

/// Parse of a named statement, then Sync.
fn prepare(client: &mut Client, name: &str, sql: &str) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    frontend::parse(name, sql, [], &mut buf).unwrap();
    frontend::sync(&mut buf);
    client.send(&buf).unwrap();
    client.until_ready().unwrap()
}

/// Bind and Execute of a named statement (no parameters), then Sync.
fn run_prepared(client: &mut Client, name: &str) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    frontend::bind(
        "",
        name,
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
    client.send(&buf).unwrap();
    client.until_ready().unwrap()
}

#[test]
fn named_statements_follow_their_session_across_connections() {
    let proxy = pooled(2, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut king2 = login(&proxy, "king", "k2");
    let mut bel = login(&proxy, "bel", "b");
    let sql = "SELECT DISTINCT name FROM merchants";
    let tags = |m: &[Msg]| m.iter().map(|m| m.tag as char).collect::<String>();
    assert_eq!(tags(&prepare(&mut king, "s", sql)), "1Z");
    assert_eq!(tags(&prepare(&mut king2, "s", sql)), "1Z");
    assert_eq!(tags(&prepare(&mut bel, "s", sql)), "1Z");
    for _ in 0..5 {
        // Each session's statement of the same name and text runs with its
        // own rows, whichever connection serves it.
        assert_eq!(values(&run_prepared(&mut king, "s")), ["King Inc"]);
        assert_eq!(values(&run_prepared(&mut bel, "s")), ["Bel Air"]);
        assert_eq!(values(&run_prepared(&mut king2, "s")), ["King Inc"]);
    }
    // No session is pinned by a named statement.
    assert!(!proxy.log().contains("session pinned"), "{}", proxy.log());
    // As natively: a second Parse of the name fails; after a Close the
    // name is gone; another session's name is not this one's.
    let again = prepare(&mut king, "s", sql);
    assert_eq!(error_code(&again).as_deref(), Some("42P05"), "{again:?}");
    let mut buf = BytesMut::new();
    frontend::close(b'S', "s", &mut buf).unwrap();
    frontend::sync(&mut buf);
    king.send(&buf).unwrap();
    assert_eq!(tags(&king.until_ready().unwrap()), "3Z");
    let gone = run_prepared(&mut king, "s");
    assert_eq!(error_code(&gone).as_deref(), Some("26000"), "{gone:?}");
    assert_eq!(values(&run_prepared(&mut king2, "s")), ["King Inc"]);
    let unknown = run_prepared(&mut bel, "t");
    assert_eq!(
        error_code(&unknown).as_deref(),
        Some("26000"),
        "{unknown:?}"
    );
    // DEALLOCATE ALL drops the session's statements, as natively.
    assert_eq!(error_code(&bel.query("DEALLOCATE ALL").unwrap()), None);
    let dropped = run_prepared(&mut bel, "s");
    assert_eq!(
        error_code(&dropped).as_deref(),
        Some("26000"),
        "{dropped:?}"
    );
    assert_eq!(values(&run_prepared(&mut king2, "s")), ["King Inc"]);
}

#[test]
fn automatic_statements_are_shared_per_connection_and_keep_each_users_rows() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut king2 = login(&proxy, "king", "k2");
    let mut bel = login(&proxy, "bel", "b");
    let mut direct = common::cluster().connect(fixture_db());
    let native = |direct: &mut postgres::Client, merchant: &str, id: i32| -> Vec<String> {
        direct
            .query(
                "SELECT name FROM merchants WHERE id = $1 AND name = $2",
                &[&id, &merchant],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for round in 0..3 {
        for id in 1..=8 {
            let sql = format!("SELECT name FROM merchants WHERE id = {id}");
            for (client, merchant) in [
                (&mut king, "King Inc"),
                (&mut bel, "Bel Air"),
                (&mut king2, "King Inc"),
            ] {
                let got = client.query(&sql).unwrap();
                assert_eq!(error_code(&got), None, "{got:?}");
                assert_eq!(
                    values(&got),
                    native(&mut direct, merchant, id),
                    "round {round}, id {id}"
                );
            }
        }
    }
    let log = proxy.log();
    assert!(
        log.contains("EXECUTE rowgate_s_"),
        "automatic statements ran"
    );
    assert!(!log.contains("session pinned"), "{log}");
}

#[test]
fn a_session_takes_up_an_automatic_statement_another_prepared() {
    let proxy = pooled(1, "5s");
    let mut first = login(&proxy, "king", "app");
    let shaped = |proxy: &common::Proxy| {
        proxy
            .log()
            .matches("making an automatic statement of a shape")
            .count()
    };
    for id in 1..=4 {
        let sql = format!("SELECT name FROM merchants WHERE id = {id}");
        assert_eq!(error_code(&first.query(&sql).unwrap()), None);
    }
    assert_eq!(shaped(&proxy), 1, "{}", proxy.log());
    // The same statement from another session of the same settings (the
    // same shared name): the connection has it, and the session uses it
    // from then on without making it again.
    let mut second = login(&proxy, "king", "app");
    for id in 1..=8 {
        let sql = format!("SELECT name FROM merchants WHERE id = {id}");
        let got = second.query(&sql).unwrap();
        assert_eq!(error_code(&got), None, "{got:?}");
    }
    assert_eq!(shaped(&proxy), 2, "{}", proxy.log());
}

/// Parse, Bind and Execute of the unnamed statement, then Sync.
fn parse_and_run(client: &mut Client, sql: &str) -> Vec<Msg> {
    let mut buf = BytesMut::new();
    frontend::parse("", sql, [], &mut buf).unwrap();
    frontend::bind(
        "",
        "",
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
    client.send(&buf).unwrap();
    client.until_ready().unwrap()
}

#[test]
fn unnamed_statements_parsed_again_are_shared_and_keep_each_users_rows() {
    let proxy = pooled(1, "5s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    let sql = "SELECT DISTINCT name FROM merchants";
    let tags = |m: &[Msg]| m.iter().map(|m| m.tag as char).collect::<String>();
    for round in 0..4 {
        // The same text from two users on one connection: each statement
        // upstream is its user's rewrite, whichever was parsed before.
        let k = parse_and_run(&mut king, sql);
        assert_eq!(tags(&k), "12DCZ", "round {round}: {k:?}");
        assert_eq!(values(&k), ["King Inc"], "round {round}");
        let b = parse_and_run(&mut bel, sql);
        assert_eq!(values(&b), ["Bel Air"], "round {round}");
    }
    // From the second Parse on, a shared statement stands for the text.
    let shared = proxy.log().matches("unnamed statement shared").count();
    assert_eq!(shared, 6, "{}", proxy.log());
    // The client's unnamed statement follows it to the next cycle, after
    // another session used the connection.
    assert_eq!(tags(&prepare(&mut king, "", sql)), "1Z");
    assert_eq!(values(&parse_and_run(&mut bel, sql)), ["Bel Air"]);
    assert_eq!(values(&run_prepared(&mut king, "")), ["King Inc"]);
    // A Query drops the unnamed statement, as natively.
    assert_eq!(error_code(&king.query("SELECT 1").unwrap()), None);
    let gone = run_prepared(&mut king, "");
    assert_eq!(error_code(&gone).as_deref(), Some("26000"), "{gone:?}");
    assert_eq!(values(&run_prepared(&mut bel, "")), ["Bel Air"]);
    // So does a Close.
    let mut buf = BytesMut::new();
    frontend::close(b'S', "", &mut buf).unwrap();
    frontend::sync(&mut buf);
    bel.send(&buf).unwrap();
    assert_eq!(tags(&bel.until_ready().unwrap()), "3Z");
    let gone = run_prepared(&mut bel, "");
    assert_eq!(error_code(&gone).as_deref(), Some("26000"), "{gone:?}");
    assert!(!proxy.log().contains("session pinned"), "{}", proxy.log());
}

#[test]
fn another_sessions_unnamed_statement_is_not_bound() {
    let proxy = pooled(1, "5s");
    // The same settings: taking the connection runs nothing that would
    // drop its unnamed statement.
    let mut king = login(&proxy, "king", "app");
    let mut bel = login(&proxy, "bel", "app");
    let sql = "SELECT DISTINCT name FROM merchants";
    // Once (the ordinary way) and again (a shared statement).
    for _ in 0..2 {
        assert_eq!(values(&parse_and_run(&mut king, sql)), ["King Inc"]);
        // A session that parsed nothing binds nothing, as natively, on
        // the connection whose unnamed statement is king's.
        let none = run_prepared(&mut bel, "");
        assert_eq!(error_code(&none).as_deref(), Some("26000"), "{none:?}");
    }
}

#[test]
fn a_refused_unnamed_parse_leaves_no_unnamed_statement_to_restore() {
    let proxy = pooled(1, "5s");
    let sql = "SELECT DISTINCT name FROM merchants";
    let refused = "SET rowgate.view_as = 'bel'";
    // Parsed once: its Parse is what rowgate would send again on the next
    // connection. Parsed again: a shared statement stands for it.
    for parses in [1, 2] {
        let mut king = login(&proxy, "king", "k");
        for _ in 0..parses {
            assert_eq!(values(&parse_and_run(&mut king, sql)), ["King Inc"]);
        }
        let out = prepare(&mut king, "", refused);
        assert_eq!(error_code(&out).as_deref(), Some("42501"), "{out:?}");
        // PostgreSQL dropped the unnamed statement before it parsed the
        // failing one: nothing is left to bind.
        let gone = run_prepared(&mut king, "");
        assert_eq!(
            error_code(&gone).as_deref(),
            Some("26000"),
            "after {parses} parses: {gone:?}"
        );
        assert_eq!(values(&parse_and_run(&mut king, sql)), ["King Inc"]);
    }
}

/// A Query sent after extended-protocol messages and before their Sync,
/// when one of them fails: PostgreSQL discards it with them up to the Sync
/// (no ReadyForQuery of its own). The session's connection goes back to
/// the pool after the Sync's ReadyForQuery, and its later statements get
/// exactly their own responses (the shared statement standing for the
/// unnamed one answers its Parse as a ParseComplete).
#[test]
fn a_query_discarded_after_an_extended_error_hands_the_connection_back() {
    let proxy = pooled(1, "3s");
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    let sql = "SELECT DISTINCT name FROM merchants";
    let tags = |m: &[Msg]| m.iter().map(|m| m.tag as char).collect::<String>();
    for _ in 0..2 {
        assert_eq!(values(&parse_and_run(&mut king, sql)), ["King Inc"]);
    }
    for (bad, queries, want) in [
        ("SELECT nope FROM merchants", 1, "EZ"),
        ("SELECT 10 / (id - 7) FROM merchants", 2, "12DEZ"),
        ("SELECT * FROM hr.salaries", 1, "EZ"),
    ] {
        let mut buf = BytesMut::new();
        // Bind of the unnamed statement first: on a connection that lacks
        // it, rowgate sends its Parse again before it.
        frontend::bind(
            "",
            "",
            [],
            [],
            |_: (), _| Ok(postgres_protocol::IsNull::No),
            [],
            &mut buf,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut buf).unwrap();
        frontend::parse("", bad, [], &mut buf).unwrap();
        frontend::bind(
            "",
            "",
            [],
            [],
            |_: (), _| Ok(postgres_protocol::IsNull::No),
            [],
            &mut buf,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, &mut buf).unwrap();
        for _ in 0..queries {
            frontend::query("SELECT 1", &mut buf).unwrap();
        }
        frontend::sync(&mut buf);
        king.send(&buf).unwrap();
        let out = king.until_ready().unwrap();
        assert_eq!(tags(&out), format!("2DC{want}"), "{bad}: {out:?}");
        assert_eq!(values(&out)[0], "King Inc", "{bad}");
        // The connection is free for another session.
        let b = bel.query(sql).unwrap();
        assert_eq!(values(&b), ["Bel Air"], "{bad}: {b:?}");
        let k = parse_and_run(&mut king, sql);
        assert_eq!(tags(&k), "12DCZ", "{bad}: {k:?}");
        assert_eq!(values(&k), ["King Inc"], "{bad}");
    }
}

/// The unnamed statement's Parse is sent again on the next connection only
/// when it succeeded: one that failed upstream left no unnamed statement
/// (a Bind of it gets 26000, not the Parse's error again), and one that
/// PostgreSQL skipped after an earlier error left the one before.
#[test]
fn only_an_unnamed_parse_that_succeeded_follows_the_session() {
    let proxy = pooled(1, "5s");
    let sql = "SELECT DISTINCT name FROM merchants";
    let bad = "SELECT nope FROM merchants";
    let tags = |m: &[Msg]| m.iter().map(|m| m.tag as char).collect::<String>();
    let mut king = login(&proxy, "king", "k");
    let mut bel = login(&proxy, "bel", "b");
    // Failed once (sent as it is), then again (as a shared statement).
    for parses in [1, 2] {
        for _ in 0..parses {
            let out = prepare(&mut king, "", bad);
            assert_eq!(error_code(&out).as_deref(), Some("42703"), "{out:?}");
        }
        assert_eq!(values(&bel.query(sql).unwrap()), ["Bel Air"]);
        let gone = run_prepared(&mut king, "");
        assert_eq!(tags(&gone), "EZ", "after {parses}: {gone:?}");
        let e = gone.iter().find(|m| m.tag == b'E').unwrap();
        assert_eq!(e.field(b'C').as_deref(), Some("26000"), "{gone:?}");
        assert_eq!(
            e.field(b'M').as_deref(),
            Some("unnamed prepared statement does not exist")
        );
    }
    // Skipped: an Execute of a portal that does not exist fails first.
    for runs in [1, 2] {
        for _ in 0..runs {
            assert_eq!(values(&parse_and_run(&mut king, sql)), ["King Inc"]);
        }
        let out = king.skipped_unnamed_parse().unwrap();
        assert_eq!(tags(&out), "EZ", "{out:?}");
        assert_eq!(values(&bel.query(sql).unwrap()), ["Bel Air"]);
        let ran = run_prepared(&mut king, "");
        assert_eq!(tags(&ran), "2DCZ", "after {runs} runs: {ran:?}");
        assert_eq!(values(&ran), ["King Inc"]);
    }
    // A Close that ran leaves nothing to send again.
    let mut buf = BytesMut::new();
    frontend::close(b'S', "", &mut buf).unwrap();
    frontend::sync(&mut buf);
    king.send(&buf).unwrap();
    assert_eq!(tags(&king.until_ready().unwrap()), "3Z");
    assert_eq!(values(&bel.query(sql).unwrap()), ["Bel Air"]);
    let gone = run_prepared(&mut king, "");
    assert_eq!(error_code(&gone).as_deref(), Some("26000"), "{gone:?}");
}
