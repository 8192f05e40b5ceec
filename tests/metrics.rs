//! Metrics and health over HTTP (`metrics:` in `proxy.yaml`): the counters
//! move as the test drives traffic through rowgate, `/healthz` answers, and
//! `/readyz` tells whether the upstream server is reachable.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const POLICY: &str = "tests/fixtures/proxy/policy.yaml";

/// Status code and body of `GET path` on 127.0.0.1:`port`, retried until
/// the listener answers.
fn get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            return (status, body.to_string());
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `name` (with its labels, as printed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A new database with the differential fixture's data.
fn fixture_db(prefix: &str) -> String {
    let c = common::cluster();
    let db = c.create_database(prefix);
    c.connect(&db)
        .batch_execute(&std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap())
        .unwrap();
    db
}

#[test]
fn counters_move_with_traffic_and_health_answers() {
    let db = fixture_db("metrics");
    let port = common::free_port();
    let proxy = common::Proxy::start(Path::new(POLICY), &format!("metrics: 127.0.0.1:{port}\n"));
    let (status, body) = get(port, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(port, "/readyz").0, 200);
    let (_, before) = get(port, "/metrics");

    let mut member = proxy.connect(&db, "member", "member-pw").unwrap();
    member
        .simple_query("SELECT count(*) FROM merchants")
        .unwrap();
    member.simple_query("SELECT count(*) FROM orders").unwrap();
    assert!(member.simple_query("SELECT * FROM hr.salaries").is_err());
    assert!(member.simple_query("SELEC 1").is_err());
    assert!(proxy.connect(&db, "member", "wrong").is_err());

    let (status, after) = get(port, "/metrics");
    assert_eq!(status, 200);
    let grew = |name: &str, by: f64| {
        let (b, a) = (sample(&before, name), sample(&after, name));
        assert!(a - b >= by, "{name}: {b} -> {a}\n{after}");
    };
    grew(
        "rowgate_statements_total{decision=\"forwarded\",sqlstate=\"\"}",
        2.0,
    );
    grew(
        "rowgate_statements_total{decision=\"refused\",sqlstate=\"42501\"}",
        1.0,
    );
    grew(
        "rowgate_statements_total{decision=\"refused\",sqlstate=\"0A000\"}",
        1.0,
    );
    grew("rowgate_logins_total{method=\"scram\",outcome=\"ok\"}", 1.0);
    grew(
        "rowgate_logins_total{method=\"scram\",outcome=\"failed\"}",
        1.0,
    );
    grew("rowgate_client_connections_total", 2.0);
    grew("rowgate_rewrite_seconds_count", 4.0);
    grew(
        "rowgate_upstream_connect_seconds_count{data_source=\"default\"}",
        1.0,
    );
    grew(
        "rowgate_relayed_bytes_total{direction=\"to_client\"}",
        100.0,
    );
    grew(
        "rowgate_relayed_bytes_total{direction=\"to_upstream\"}",
        50.0,
    );
    // The refused login's connection is counted down when its session
    // has ended, which may be just after the client saw the refusal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = get(port, "/metrics");
        if sample(&now, "rowgate_client_connections") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(member);

    // A reload moves the policy generation.
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&get(port, "/metrics").1, "rowgate_policy_generation") < 2.0 {
        assert!(Instant::now() < deadline, "no reload counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, "/nothing").0, 404);
}

#[test]
fn the_pools_figures_follow_its_connections_waits_and_pins() {
    let db = fixture_db("metrics_pool");
    let port = common::free_port();
    let proxy = common::Proxy::start(
        Path::new(POLICY),
        &format!(
            "metrics: 127.0.0.1:{port}\npool:\n  mode: transaction\n  size: 1\n  min_idle: 0\n  max_client_wait: 500ms\n"
        ),
    );
    let pool = format!("{{data_source=\"default\",database=\"{db}\"}}");
    let figure = |text: &str, name: &str| sample(text, &format!("{name}{pool}"));
    let mut member = proxy.connect(&db, "member", "member-pw").unwrap();
    member
        .simple_query("SELECT count(*) FROM merchants")
        .unwrap();
    member.simple_query("SET datestyle = 'German'").unwrap();
    // The client has its answer before the session reads its settings
    // back and gives the connection up.
    let idle = |open: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, m) = get(port, "/metrics");
            if figure(&m, "rowgate_pool_connections") == open
                && figure(&m, "rowgate_pool_connections_in_use") == 0.0
            {
                return m;
            }
            assert!(Instant::now() < deadline, "the pool never settled: {m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let m = idle(1.0);
    // The login, and each statement, took the connection.
    assert!(figure(&m, "rowgate_pool_wait_seconds_count") >= 3.0, "{m}");
    assert!(
        sample(&m, "rowgate_pool_settings_reads_total") >= 1.0,
        "{m}"
    );

    // A cursor WITH HOLD pins the session; another then waits in vain.
    member
        .simple_query("DECLARE h CURSOR WITH HOLD FOR SELECT 1")
        .unwrap();
    assert!(proxy.connect(&db, "member", "member-pw").is_err());
    let (_, m) = get(port, "/metrics");
    assert_eq!(figure(&m, "rowgate_pool_connections_in_use"), 1.0, "{m}");
    assert_eq!(figure(&m, "rowgate_pool_wait_timeouts_total"), 1.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "rowgate_pool_pinned_sessions_total{reason=\"a cursor WITH HOLD\"}"
        ),
        1.0,
        "{m}"
    );
    // The pinned session gone, its connection is closed, not reused.
    drop(member);
    idle(0.0);
}

#[test]
fn readyz_says_when_the_upstream_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, metrics, dead) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\npolicies: {}\nmetrics: 127.0.0.1:{metrics}\n\
             upstream:\n  host: 127.0.0.1\n  port: {dead}\n  user: nobody\n  tls: disable\n",
            std::fs::canonicalize(POLICY).unwrap().display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let healthz = get(metrics, "/healthz");
    let readyz = get(metrics, "/readyz");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(healthz.0, 200);
    assert_eq!(readyz.0, 503, "{}", readyz.1);
}
