//! TLS: clients that ask for it get it when `tls:` is configured (and plain
//! clients still work); rowgate talks TLS to a warehouse that offers it when
//! `upstream.tls` is `require` or `prefer`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const POLICY: &str = "tests/fixtures/proxy/policy.yaml";

/// A self-signed certificate and key for 127.0.0.1/localhost, as PEM files
/// in `dir`.
fn write_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn fixture_db() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let c = common::cluster();
        let db = c.create_database("tls");
        let schema = std::fs::read_to_string("tests/fixtures/differential/schema.sql").unwrap();
        c.connect(&db).batch_execute(&schema).unwrap();
        db
    })
}

fn psql(port: u16, sslmode: &str, sql: &str) -> std::process::Output {
    let bin = common::find_pg_bin().expect("PostgreSQL client programs");
    Command::new(bin.join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={port} user=member dbname={} sslmode={sslmode}",
            fixture_db()
        ))
        .args(["-X", "-A", "-t", "-c", sql, "-c", "\\conninfo"])
        .env("PGPASSWORD", "member-pw")
        .output()
        .expect("run psql")
}

#[test]
fn clients_get_tls_when_configured_and_plain_clients_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path());
    let extra = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        cert.display(),
        key.display()
    );
    let proxy = common::Proxy::start(Path::new(POLICY), &extra);

    let out = psql(proxy.port, "require", "SELECT count(*) FROM merchants");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("3\n"), "{stdout}");
    assert!(stdout.contains("SSL connection"), "{stdout}");

    let out = psql(proxy.port, "disable", "SELECT count(*) FROM merchants");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("3\n") && !stdout.contains("SSL connection"),
        "{stdout}"
    );
}

#[test]
fn without_tls_configured_ssl_is_declined() {
    let proxy = common::Proxy::start(Path::new(POLICY), "");
    let out = psql(proxy.port, "require", "SELECT 1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support SSL"));
    let out = psql(proxy.port, "prefer", "SELECT count(*) FROM merchants");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("3\n"));
}

/// Turns SSL on in the shared cluster (it stays optional for its clients).
fn enable_upstream_ssl() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let c = common::cluster();
        let data = c.dir.join("data");
        let (cert, key) = write_cert(&data);
        for f in [&cert, &key] {
            let _ = Command::new("chown").arg("postgres:").arg(f).status();
            let _ = Command::new("chmod").arg("600").arg(f).status();
        }
        let mut admin = c.connect("postgres");
        admin.batch_execute("ALTER SYSTEM SET ssl = on").unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
}

#[test]
fn upstream_tls_is_used_when_required() {
    enable_upstream_ssl();
    let proxy = common::Proxy::start_full(
        Path::new(POLICY),
        "",
        common::UpstreamAuth::TRUST,
        "tls: require",
    );
    let mut client = postgres::Client::connect(
        &(proxy.url(fixture_db(), "member", "member-pw") + " application_name=tls-probe"),
        postgres::NoTls,
    )
    .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM merchants", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let mut direct = common::cluster().connect("postgres");
    let ssl: bool = direct
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tls-probe'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "the upstream session is encrypted");
}

#[test]
fn an_upstream_that_accepts_only_tls_serves_members() {
    // `up_tls_only` may only log in over TLS (pg_hba `hostnossl ... reject`):
    // members need both their session and the catalog connection on TLS.
    enable_upstream_ssl();
    let auth = common::UpstreamAuth {
        user: "up_tls_only",
        password: None,
    };
    let proxy = common::Proxy::start_full(Path::new(POLICY), "", auth, "tls: require");
    let mut client = proxy
        .connect(fixture_db(), "member", "member-pw")
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log()));
    let n: i64 = client
        .query_one("SELECT count(*) FROM merchants", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}
