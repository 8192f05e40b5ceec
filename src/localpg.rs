//! A throwaway PostgreSQL from the machine's installation: initdb and pg_ctl
//! in a temp dir on a free port, as the `postgres` OS user when running as
//! root (initdb refuses root). A watcher process stops the server and
//! removes the directory when the process that started it is gone, however
//! it ends. Used by `rowgate demo` and by the test harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to tell someone without PostgreSQL.
pub const INSTALL_HINT: &str = "install PostgreSQL's server programs (Debian/Ubuntu: \
    `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; macOS: \
    `brew install postgresql`) or point ROWGATE_PG_BIN at the directory holding initdb";

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found: {INSTALL_HINT}"
    )]
    NotInstalled,
    #[error("{0}")]
    Failed(String),
}

/// Where PostgreSQL's server binaries are: `ROWGATE_PG_BIN` when set (and
/// only there), else `pg_config --bindir`, `PATH`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, LocalPgError> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    // An explicit choice is the only place looked at.
    if let Some(dir) = std::env::var_os("ROWGATE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(LocalPgError::NotInstalled)
        };
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    candidates.extend(versioned.into_iter().map(|(_, p)| p));
    candidates
        .into_iter()
        .find(|d| has_server(d))
        .ok_or(LocalPgError::NotInstalled)
}

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running throwaway cluster; its superuser is `postgres`, with trust
/// authentication on 127.0.0.1.
#[derive(Debug)]
pub struct LocalPg {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    root: bool,
}

impl LocalPg {
    /// Initializes and starts a cluster in a new directory under the temp
    /// dir named after `purpose`. `hba` replaces pg_hba.conf when given.
    pub fn start(purpose: &str, hba: Option<&str>) -> Result<LocalPg, LocalPgError> {
        let bin = find_bin_dir()?;
        let root = is_root();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("rowgate-{purpose}-{}-{nanos}", std::process::id()));
        let fail =
            |what: &str, e: &dyn std::fmt::Display| LocalPgError::Failed(format!("{what}: {e}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(&format!("cannot create {}", dir.display()), &e))?;
        let pg = LocalPg {
            port: 0,
            dir,
            bin,
            root,
        };
        if root {
            let ok = Command::new("chown").arg("postgres:").arg(&pg.dir).status();
            if !ok.is_ok_and(|s| s.success()) {
                return Err(LocalPgError::Failed(
                    "running as root, but the directory cannot be handed to a `postgres` OS user (is there one?)".into(),
                ));
            }
        }
        pg.spawn_reaper();
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| fail("cannot run initdb", &e))?;
        if !out.status.success() {
            return Err(fail("initdb failed", &String::from_utf8_lossy(&out.stderr)));
        }
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba)
                .map_err(|e| fail("cannot write pg_hba.conf", &e))?;
        }
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| fail("no free port", &e))?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB",
                pg.dir.display()
            );
            let status = pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(pg.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| fail("cannot run pg_ctl", &e))?;
            if status.success() {
                return Ok(LocalPg { port, ..pg });
            }
            last_error = std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default();
        }
        Err(fail("PostgreSQL did not start", &last_error))
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command running one of the server programs as the right OS user.
    pub fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Stops the server and removes its directory.
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Stops the server and removes the directory once this process is
    /// gone, however it ends.
    fn spawn_reaper(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let runuser = if self.root {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             [ -d '{data}' ] && {runuser}'{pg_ctl}' -D '{data}' stop -m immediate >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data().display(),
            pg_ctl = pg_ctl.display(),
            dir = self.dir.display()
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}
