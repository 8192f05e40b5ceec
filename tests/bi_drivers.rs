//! BI tools' drivers as members, through `rowgate serve` against the real
//! PostgreSQL: asyncpg (user-defined types learned by its own catalog
//! queries), SQLAlchemy 2 on psycopg2 (its inspector), pgJDBC
//! (`DatabaseMetaData` and the current schema) and psqlODBC through pyodbc
//! (the ODBC catalog functions).
//!
//! The member `bi` (`tests/fixtures/bi_drivers/policy.yaml`, merged with the
//! differential suite's policy) holds what `king` holds, one merchant and its
//! orders, plus the rows it owns of `gadgets`, a table with enum, composite,
//! range and array columns (`tests/fixtures/bi_drivers/schema.sql`). It is
//! granted neither `tickets` (in `public`) nor `hr.salaries`. The helper
//! programs run each step through rowgate and again directly as the native
//! role `{db}_bi`, which holds the same grants and row-level-security
//! policies (the oracle), and print `name=value` facts that the tests here
//! assert on: values exactly as expected, and equal to the oracle's wherever
//! native PostgreSQL shows the same. Catalog listings differ on purpose:
//! with `catalog: hide` (the default) a member is shown only what it may
//! read, where a native role sees every table's name.
//!
//! A missing driver is a test failure that says what to install (`.ci/run`
//! installs them all), never a silent skip.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::rls::{self, PASSWORD};
use common::Proxy;

const FIXTURES: &str = "tests/fixtures/bi_drivers";
/// The member every test connects as.
const MEMBER: &str = "bi";

// ---------------------------------------------------------------------------
// The warehouse, the proxy, and the helper programs.

/// The differential schema with its native roles, `gadgets`, and the native
/// role `{db}_bi`: `king`'s grants and policies plus `gadgets`' rows owned
/// by `bi`.
fn warehouse() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let c = common::cluster();
        let db = c.create_database("bi_drivers");
        drop(rls::setup(&db));
        let mut admin = c.connect(&db);
        let schema = std::fs::read_to_string(Path::new(FIXTURES).join("schema.sql")).unwrap();
        admin.batch_execute(&schema).unwrap();
        let role = format!("{db}_{MEMBER}");
        let (_, king) = rls::oracle_rules()
            .into_iter()
            .find(|(user, _)| *user == "king")
            .unwrap();
        let mut rules = king.unwrap();
        rules.push(("gadgets", "owner IN ('bi')"));
        let mut sql =
            format!("CREATE ROLE {role} LOGIN;\nGRANT USAGE ON SCHEMA sales, hr TO {role};\n");
        for (table, using) in rules {
            sql += &format!(
                "GRANT SELECT ON {table} TO {role};\n\
                 CREATE POLICY {role} ON {table} FOR SELECT TO {role} USING ({using});\n"
            );
        }
        sql += "ALTER TABLE gadgets ENABLE ROW LEVEL SECURITY;\n";
        admin
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        db
    })
}

/// `rowgate serve` with the differential policy and this suite's, which it
/// keeps alive.
struct Gate {
    proxy: Proxy,
    _policies: tempfile::TempDir,
}

impl Deref for Gate {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

impl Gate {
    fn start() -> Gate {
        let policies = tempfile::tempdir().unwrap();
        std::fs::copy(rls::POLICY, policies.path().join("differential.yaml")).unwrap();
        std::fs::copy(
            Path::new(FIXTURES).join("policy.yaml"),
            policies.path().join("bi_drivers.yaml"),
        )
        .unwrap();
        Gate {
            proxy: Proxy::start(policies.path(), ""),
            _policies: policies,
        }
    }

    /// A `postgresql://` URL for the member through rowgate.
    fn member_url(&self) -> String {
        format!(
            "postgresql://{MEMBER}:{PASSWORD}@127.0.0.1:{}/{}",
            self.port,
            warehouse()
        )
    }

    /// The last lines of the proxy's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// The native role of the member (the oracle), as a `postgresql://` URL.
fn native_url() -> String {
    let db = warehouse();
    format!(
        "postgresql://{db}_{MEMBER}@127.0.0.1:{}/{db}",
        common::cluster().port
    )
}

/// A program on PATH, or a failure saying how to install it.
fn on_path(name: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` was not found on PATH: {install}"))
}

/// A command with none of the machine's `PG*` or ODBC variables leaking
/// into it.
fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("PG") || key_text.starts_with("ODBC") {
            c.env_remove(key);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a command to its end, killing it after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        status: status.unwrap_or_default(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if status.is_none() {
        panic!(
            "{cmd:?} did not finish within {timeout:?}\n{}",
            show(&output)
        );
    }
    output
}

fn show(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `name=value` lines a helper program printed.
fn facts(output: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Checks a helper's facts: each expected value, and that every fact it saw
/// through rowgate is what the native oracle saw (`name.same=true`).
/// Reports every mismatch at once.
fn check_facts(what: &str, output: &Output, gate: &Gate, expected: &[(&str, &str)]) {
    let facts = facts(output);
    let mut problems = Vec::new();
    if !output.status.success() || facts.get("done").map(String::as_str) != Some("true") {
        problems.push("the program did not run to its end".to_string());
    }
    for (name, want) in expected {
        match facts.get(*name) {
            Some(got) if got == want => {}
            got => problems.push(format!("{name}: expected {want:?}, got {got:?}")),
        }
    }
    for (name, same) in &facts {
        if let Some(fact) = name.strip_suffix(".same") {
            if same != "true" {
                problems.push(format!(
                    "{fact}: through rowgate {:?}, but the native oracle saw {:?}",
                    facts.get(fact),
                    facts.get(&format!("{fact}.native"))
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n{}\nrowgate log (tail):\n{}",
        problems.join("\n  "),
        show(output),
        gate.log_tail()
    );
}

/// `python3`, with the modules a helper imports, or a failure saying how
/// to install them.
fn python(modules: &[(&str, &str)]) -> PathBuf {
    let python = on_path(
        "python3",
        "install Python 3 (Debian/Ubuntu: `apt-get install python3 python3-pip`)",
    );
    for (module, install) in modules {
        let mut c = command(&python);
        c.args(["-c", &format!("import {module}")]);
        let out = run(c, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "the Python module `{module}` cannot be imported: {install} (.ci/run does)\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    python
}

/// Runs a helper of `tests/clients/python` with `args`.
fn run_python(python: &Path, script: &str, args: &[String]) -> Output {
    let mut c = command(python);
    c.arg(Path::new("tests/clients/python").join(script))
        .args(args);
    run(c, Duration::from_secs(120))
}

// ---------------------------------------------------------------------------
// asyncpg

#[test]
fn asyncpg_decodes_enum_composite_range_and_array_columns_of_a_member() {
    let python = python(&[("asyncpg", "`pip install asyncpg`")]);
    let gate = Gate::start();
    let out = run_python(
        &python,
        "asyncpg_client.py",
        &[gate.member_url(), native_url()],
    );
    check_facts(
        "asyncpg as bi",
        &out,
        &gate,
        &[
            ("jit", "off"),
            ("gadget_ids", "1,2,3"),
            (
                "gadget_1",
                "1|\"happy\"|{\"happy\",\"sad\"}|(\"1 Main St\",12345,{\"a\",\"b c\"})|\
                 {(\"x\",1,{}),NULL}|[1,10)|[2024-01-01,2024-02-01)|[0.5,2.5]|{{1,2},{3,4}}|\
                 {\"x\",\"y, z\",NULL}",
            ),
            (
                "gadget_2",
                "2|\"sad\"|{}|(NULL,NULL,NULL)|{}|empty|(,2024-01-01)|(,)|{}|{}",
            ),
            ("gadget_3", "3|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL"),
            (
                "gadget_types",
                "feeling:mood:scalar,moods:_mood:array,addr:address:composite,\
                 addrs:_address:array,sizes:int4range:range,span:daterange:range,\
                 weights:floatrange:range",
            ),
            ("by_enum", "{1}"),
            ("by_enum_array", "{1}"),
            ("by_range", "{1}"),
            ("by_custom_range", "{1}"),
            ("zip_of_address", "{12345}"),
            ("merchants", "{(1,\"King Inc\")}"),
            ("orders", "{11,22,33,44,55}"),
            ("gadget_merchants", "{(\"lamp\",\"King Inc\")}"),
            ("hidden", "42501"),
            ("after_refusal", "3"),
            ("cursor_orders", "{11,22,33,44,55}"),
        ],
    );
}

#[test]
#[ignore]
fn zz_debug_shell() {
    let gate = Gate::start();
    let c = common::cluster();
    std::fs::write(
        "/tmp/bi_debug.env",
        format!(
            "PROXY={}\nNATIVE={}\nCLUSTER_PORT={}\nGATE_PORT={}\nDB={}\n",
            gate.member_url(),
            native_url(),
            c.port,
            gate.port,
            warehouse()
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1500));
}
