//! `rowgate demo` as a newcomer runs it: it starts, prints a psql line per
//! sample user, every user's one-sentence promise holds through the wire,
//! Ctrl-C removes everything, a crash leaves nothing that stops the next run.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    port: u16,
    banner: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    // Make sure the harness's own PostgreSQL exists first: a missing
    // installation fails the test with the harness's message.
    common::cluster();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .arg("demo")
        .env("ROWGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rowgate demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Press Ctrl-C") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the demo prints its banner");
    let port = banner
        .split("listens on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("the banner names the port");
    Demo {
        child,
        port,
        banner,
    }
}

fn connect(port: u16, user: &str) -> postgres::Client {
    let url =
        format!("host=127.0.0.1 port={port} user={user} password=rowgate-demo dbname=warehouse");
    postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| panic!("{user}: {e}"))
}

fn count(c: &mut postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0)
}

fn demo_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rowgate-demo-"))
        })
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_keeps_every_promise_and_cleans_up() {
    let mut demo = start_demo();
    let port = demo.port;
    for user in [
        "king_manager",
        "vietnam_manager",
        "apac",
        "ceo",
        "newcomer",
        "alice",
        "reporter",
        "analyst",
        "admin",
    ] {
        assert!(
            demo.banner.contains(&format!(
                "psql postgresql://{user}:rowgate-demo@127.0.0.1:{port}/warehouse"
            )),
            "no psql line for {user}"
        );
    }

    let mut king = connect(port, "king_manager");
    let names: Vec<String> = king
        .query("SELECT name FROM merchants", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["King Inc".to_string()]);
    assert_eq!(count(&mut king, "orders"), 10);

    let mut vietnam = connect(port, "vietnam_manager");
    assert_eq!(
        (
            count(&mut vietnam, "merchants"),
            count(&mut vietnam, "orders")
        ),
        (2, 20)
    );

    let mut apac = connect(port, "apac");
    assert_eq!(
        (
            count(&mut apac, "countries"),
            count(&mut apac, "merchants"),
            count(&mut apac, "orders")
        ),
        (5, 6, 60)
    );

    let mut ceo = connect(port, "ceo");
    assert_eq!(
        (
            count(&mut ceo, "countries"),
            count(&mut ceo, "merchants"),
            count(&mut ceo, "orders")
        ),
        (8, 9, 90)
    );

    let mut newcomer = connect(port, "newcomer");
    assert_eq!(
        (
            count(&mut newcomer, "countries"),
            count(&mut newcomer, "merchants"),
            count(&mut newcomer, "orders")
        ),
        (0, 0, 0)
    );

    let mut alice = connect(port, "alice");
    let assignees: Vec<String> = alice
        .query("SELECT assignee FROM tickets", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(assignees, vec!["alice"; 3]);

    let mut reporter = connect(port, "reporter");
    assert!(count(&mut reporter, "daily_sales") > 0);
    let e = reporter
        .query("SELECT * FROM daily_sales, hr.salaries", &[])
        .unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"));
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "permission denied for table hr.salaries"
    );

    let mut analyst = connect(port, "analyst");
    assert_eq!(count(&mut analyst, "hr.salaries"), 3);
    let e = analyst.batch_execute("DELETE FROM tickets").unwrap_err();
    assert_eq!(common::sqlstate(&e).as_deref(), Some("42501"));

    let mut admin = connect(port, "admin");
    admin
        .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .unwrap();
    assert_eq!(count(&mut admin, "scratch"), 1);

    // A crash leaves nothing behind that stops the next run.
    let dirs_before = demo_dirs().len();
    assert!(dirs_before >= 1);
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    wait_until("the crashed demo's PostgreSQL is removed", || {
        demo_dirs().len() < dirs_before
    });
    drop(demo);

    // A second run works; Ctrl-C stops it and removes everything.
    let mut demo = start_demo();
    let mut king = connect(demo.port, "king_manager");
    assert_eq!(count(&mut king, "merchants"), 1);
    drop(king);
    let before = demo_dirs().len();
    Command::new("kill")
        .arg("-INT")
        .arg(demo.child.id().to_string())
        .status()
        .unwrap();
    let status = demo.child.wait().unwrap();
    assert!(
        status.success(),
        "the demo exits cleanly on Ctrl-C: {status}"
    );
    wait_until("the demo's directory is removed", || {
        demo_dirs().len() < before
    });
}

#[test]
fn without_postgresql_the_demo_says_what_to_install() {
    let out = Command::new(env!("CARGO_BIN_EXE_rowgate"))
        .arg("demo")
        .env("PATH", "/nonexistent")
        .env("ROWGATE_PG_BIN", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}
