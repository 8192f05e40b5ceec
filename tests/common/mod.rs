//! The test harness: a throwaway PostgreSQL cluster, started once per test
//! process from the machine's PostgreSQL installation (initdb + pg_ctl in a
//! temp dir on a free port; as root the server runs as the `postgres` OS
//! user, since initdb refuses root) and removed when the process exits, by
//! a watcher process that outlives it even on a crash.
//!
//! A missing PostgreSQL is a test failure with a message saying what to
//! install, never a silent skip.

#![allow(dead_code)]

pub mod programs;
pub mod raw;
pub mod rls;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A running throwaway cluster. Its superuser is `postgres`, trust auth on
/// 127.0.0.1.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("{e}")))
}

/// Where PostgreSQL's server binaries are (see `rowgate::localpg`).
pub fn find_pg_bin() -> Result<PathBuf, String> {
    rowgate::localpg::find_bin_dir().map_err(|e| e.to_string())
}

pub fn free_port() -> u16 {
    rowgate::localpg::free_port().unwrap()
}

/// Upstream authentication methods, one role each (see
/// `Cluster::AUTH_ROLES`); everything else trusts 127.0.0.1.
const HBA: &str = "hostnossl all up_tls_only 127.0.0.1/32 reject
host all up_tls_only 127.0.0.1/32 trust
host all up_password 127.0.0.1/32 password
host all up_md5 127.0.0.1/32 md5
host all up_scram 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
local all all trust
";

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let pg = rowgate::localpg::LocalPg::start("test", Some(HBA)).map_err(|e| e.to_string())?;
        let cluster = Cluster {
            port: pg.port,
            dir: pg.dir.clone(),
            bin: pg.bin.clone(),
        };
        cluster.create_auth_roles();
        Ok(cluster)
    }

    /// Superuser roles that must authenticate with a password by one
    /// method each: `(role, password)`.
    pub const AUTH_ROLES: [(&'static str, &'static str); 3] = [
        ("up_password", "clear-pw"),
        ("up_md5", "md5-pw"),
        ("up_scram", "scram-pw"),
    ];

    fn create_auth_roles(&self) {
        let mut admin = self.connect("postgres");
        admin.batch_execute("SET password_encryption = 'md5'; CREATE ROLE up_md5 SUPERUSER LOGIN PASSWORD 'md5-pw';").unwrap();
        admin
            .batch_execute(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE up_scram SUPERUSER LOGIN PASSWORD 'scram-pw';
                 CREATE ROLE up_password SUPERUSER LOGIN PASSWORD 'clear-pw';
                 CREATE ROLE up_tls_only SUPERUSER LOGIN;",
            )
            .unwrap();
    }

    /// A connection string for `database` as `user`.
    pub fn url(&self, database: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={database}",
            self.port
        )
    }

    /// A superuser connection to `database`.
    pub fn connect(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database, "postgres"), postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
    }

    /// Creates a fresh database named after `prefix`, unique in this process.
    pub fn create_database(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        name
    }
}

/// The rows of a simple query as text, the way psql would show them; NULL is
/// `None`. Several statements: the rows of all of them.
pub fn text_rows(
    client: &mut postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, postgres::Error> {
    let mut rows = Vec::new();
    for message in client.simple_query(sql)? {
        if let postgres::SimpleQueryMessage::Row(row) = message {
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// A column value as the exact bytes the server sent, whatever its type.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawValue(pub Vec<u8>);

impl<'a> postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }
    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
}

/// The SQLSTATE of an error, if the server sent one.
pub fn sqlstate(e: &postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// A `rowgate serve` process in front of the test cluster.
/// With `ROWGATE_TEST_POOL=transaction`, every proxy a suite starts pools
/// its members' connections (unless the suite configures `pool:` itself):
/// `.ci/run` runs the differential, attack and client suites so too.
fn pool_mode_extra(extra: &str) -> &'static str {
    let on = std::env::var("ROWGATE_TEST_POOL").is_ok_and(|v| v == "transaction");
    if on && !extra.contains("pool:") {
        "\npool:\n  mode: transaction\n  size: 4\n  min_idle: 0\n"
    } else {
        ""
    }
}

pub struct Proxy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the proxy authenticates upstream.
pub struct UpstreamAuth {
    pub user: &'static str,
    pub password: Option<&'static str>,
}

impl UpstreamAuth {
    pub const TRUST: UpstreamAuth = UpstreamAuth {
        user: "postgres",
        password: None,
    };
}

impl Proxy {
    /// Starts rowgate with the policy file or directory `policies` and the
    /// extra proxy.yaml lines `extra`, upstream as the cluster superuser.
    pub fn start(policies: &Path, extra: &str) -> Proxy {
        Self::start_with(policies, extra, UpstreamAuth::TRUST)
    }

    pub fn start_with(policies: &Path, extra: &str, auth: UpstreamAuth) -> Proxy {
        Self::start_full(policies, extra, auth, "")
    }

    /// As `start_with`, with extra lines inside `upstream:` (e.g. `tls: require`).
    pub fn start_full(
        policies: &Path,
        extra: &str,
        auth: UpstreamAuth,
        upstream_extra: &str,
    ) -> Proxy {
        Self::launch(
            policies,
            extra,
            auth,
            upstream_extra,
            None,
            cluster().port,
            &[],
        )
    }

    /// As `start`, with environment variables of its own (e.g. the
    /// trusted certificates of a test's HTTPS server).
    pub fn start_env(policies: &Path, extra: &str, env: &[(&str, &str)]) -> Proxy {
        Self::launch(
            policies,
            extra,
            UpstreamAuth::TRUST,
            "",
            None,
            cluster().port,
            env,
        )
    }

    /// As `start`, in front of the server at 127.0.0.1:`upstream_port`
    /// instead of the shared cluster (a cluster of a test's own, which it
    /// may stop and restart).
    pub fn start_upstream(upstream_port: u16, policies: &Path, extra: &str) -> Proxy {
        Self::launch(
            policies,
            extra,
            UpstreamAuth::TRUST,
            "",
            None,
            upstream_port,
            &[],
        )
    }

    /// As `start`, listening on `port` (for instances that name each
    /// other's addresses).
    pub fn start_at(port: u16, policies: &Path, extra: &str) -> Proxy {
        Self::launch(
            policies,
            extra,
            UpstreamAuth::TRUST,
            "",
            Some(port),
            cluster().port,
            &[],
        )
    }

    // The child is waited for by `Drop`.
    #[allow(clippy::zombie_processes)]
    fn launch(
        policies: &Path,
        extra: &str,
        auth: UpstreamAuth,
        upstream_extra: &str,
        fixed: Option<u16>,
        upstream_port: u16,
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let policies = std::fs::canonicalize(policies).unwrap();
        let pooled = pool_mode_extra(extra);
        let extra = format!("{extra}{pooled}");
        for _ in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let password = auth
                .password
                .map(|p| format!("  password: {p}\n"))
                .unwrap_or_default();
            let config = format!(
                "listen: 127.0.0.1:{port}\npolicies: {}\nupstream:\n  host: 127.0.0.1\n  port: {}\n  user: {}\n{password}{upstream}{extra}",
                policies.display(),
                upstream_port,
                auth.user,
                upstream = upstream_extra.lines().map(|l| format!("  {l}\n")).collect::<String>()
            );
            let path = dir.path().join("proxy.yaml");
            std::fs::write(&path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("rowgate.log")).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_rowgate"))
                .args(["serve", "-c"])
                .arg(&path)
                .env("ROWGATE_LOG", "info,rowgate=debug")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start rowgate");
            // Proxies kept in statics are never dropped: stop this one when
            // the test process is gone, however it ends.
            let _ = Command::new("setsid")
                .args([
                    "sh",
                    "-c",
                    &format!(
                        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill {} 2>/dev/null",
                        std::process::id(),
                        child.id()
                    ),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Proxy { port, dir, child };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        panic!(
            "rowgate did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("rowgate.log")).unwrap_or_default()
        );
    }

    /// A connection string through the proxy.
    pub fn url(&self, database: &str, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={database}",
            self.port
        )
    }

    pub fn connect(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.url(database, user, password), postgres::NoTls)
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rowgate.log")).unwrap_or_default()
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit; its status, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A proxy whose policy directory is made of several policy files, kept
/// alive as long as the proxy.
pub struct Gate {
    pub proxy: Proxy,
    _policies: tempfile::TempDir,
}

impl std::ops::Deref for Gate {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

impl Gate {
    /// rowgate with `files` (source, name in the policy directory) as its
    /// policies and the extra proxy.yaml lines `extra`.
    pub fn with_policies(files: &[(PathBuf, &str)], extra: &str, auth: UpstreamAuth) -> Gate {
        let policies = tempfile::tempdir().unwrap();
        for (from, to) in files {
            std::fs::copy(from, policies.path().join(to)).unwrap();
        }
        Gate {
            proxy: Proxy::start_with(policies.path(), extra, auth),
            _policies: policies,
        }
    }
}
