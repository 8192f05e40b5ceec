//! The offline commands run as processes, the way a user runs them: `check`,
//! `explain`, `access`, `passwd` and `--help`. Every test asserts the exit
//! code and the exact text on stdout and stderr.
//!
//! Broken policy sets are written into temp dirs from the text inline in each
//! test, and each expected diagnostic names the token its `line:column` must
//! point at, so a wrong position is caught by the test's own bookkeeping as
//! well as by the comparison with the output. The valid set the other
//! commands read lives in `tests/fixtures/cli/valid`.
//!
//! SCRAM verifiers from `passwd` are checked independently of the crate:
//! StoredKey and ServerKey are recomputed with Python's hashlib/hmac, whose
//! SCRAM arithmetic is itself checked against the example of RFC 7677.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_rowgate");

/// The variable the valid fixture's `upstream.password` expands.
const PASSWORD_VAR: &str = "ROWGATE_CLI_TEST_UPSTREAM_PASSWORD";

/// A well-formed verifier (of `rowgate-demo`), for users that must not warn.
const VERIFIER: &str = "SCRAM-SHA-256$4096:0GGE1H9DNEVdR81J8HbvyQ==$rFOHGYonHZVbH2w0K1ua6Mnd1JAuotn3UVvMw023ehY=:1cjFhljiPXhtrpNqhTiu0wmF5EEBvzBfFtLb471GnPk=";

/// How long any one command may take before the test calls it hung.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
struct Out {
    /// `None` when a signal ended the process.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// One invocation of `rowgate`, built up and then run.
struct Rowgate {
    args: Vec<String>,
    dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    timeout: Duration,
    /// Address-space cap in KiB (Linux only), to catch runaway allocation.
    memory_kib: Option<u64>,
}

fn rowgate(args: &[&str]) -> Rowgate {
    Rowgate {
        args: args.iter().map(|a| a.to_string()).collect(),
        dir: None,
        env: Vec::new(),
        stdin: Vec::new(),
        timeout: TIMEOUT,
        memory_kib: None,
    }
}

impl Rowgate {
    fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the upstream password variable the valid fixture needs for `check`.
    fn with_password(self) -> Self {
        self.env(PASSWORD_VAR, "not-used-offline")
    }

    fn stdin(mut self, input: &[u8]) -> Self {
        self.stdin = input.to_vec();
        self
    }

    fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn memory_kib(mut self, kib: u64) -> Self {
        self.memory_kib = Some(kib);
        self
    }

    fn run(self) -> Out {
        let mut cmd = match self.memory_kib {
            Some(kib) if cfg!(target_os = "linux") => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"ulimit -v "$0" && exec "$@""#)
                    .arg(kib.to_string())
                    .arg(BIN);
                c
            }
            _ => Command::new(BIN),
        };
        cmd.args(&self.args)
            .env_remove(PASSWORD_VAR)
            .env_remove("ROWGATE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start the rowgate binary");
        let mut stdin = child.stdin.take().unwrap();
        let input = self.stdin.clone();
        let writer = std::thread::spawn(move || {
            // The command may exit without reading; a broken pipe is fine.
            let _ = stdin.write_all(&input);
        });
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            stdout.read_to_end(&mut s).unwrap();
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            stderr.read_to_end(&mut s).unwrap();
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`rowgate {}` did not finish within {:?}",
                    self.args.join(" "),
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = started.elapsed();
        writer.join().unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).expect("output is UTF-8");
        Out {
            code: status.code(),
            stdout: text(out_reader.join().unwrap()),
            stderr: text(err_reader.join().unwrap()),
            elapsed,
        }
    }
}

/// The valid policy set every `explain` and `access` test reads.
fn valid() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cli/valid")
}

/// Lines joined as a command prints them, each ending in a newline.
fn lines(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Compares output lines with expected ones; an expected line ending in `...`
/// matches any line that starts with the rest. Used where a message lists
/// the keys a file accepts, a list that grows with the product.
fn assert_lines(actual: &str, expected: &[&str]) {
    let matches = actual.lines().count() == expected.len()
        && actual
            .lines()
            .zip(expected)
            .all(|(a, e)| match e.strip_suffix("...") {
                Some(prefix) => a.starts_with(prefix),
                None => a == *e,
            });
    assert!(
        matches && actual.ends_with('\n'),
        "expected lines:\n{}\nactual output:\n{actual}",
        expected.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Policy sets in temp dirs
// ---------------------------------------------------------------------------

/// A config and its policy files in a temp dir. Paths are relative to the
/// dir; without a `proxy.yaml` of its own the set gets `policies: policies`.
/// `$VERIFIER` in a file stands for [`VERIFIER`].
struct Set {
    dir: tempfile::TempDir,
}

impl Set {
    fn new(files: &[(&str, &str)]) -> Set {
        let dir = tempfile::tempdir().unwrap();
        let mut has_config = false;
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        for (name, text) in files {
            has_config |= *name == "proxy.yaml";
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text.replace("$VERIFIER", VERIFIER)).unwrap();
        }
        if !has_config {
            std::fs::write(dir.path().join("proxy.yaml"), "policies: policies\n").unwrap();
        }
        Set { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rowgate check -c proxy.yaml`, run inside the set's dir so that the
    /// file names in diagnostics are the short relative ones.
    fn check(&self) -> Out {
        rowgate(&["check", "-c", "proxy.yaml"])
            .dir(self.path())
            .run()
    }

    fn access(&self, user: &str) -> Out {
        rowgate(&["access", "-c", "proxy.yaml", "--user", user])
            .dir(self.path())
            .run()
    }

    /// The text at `line:column` (1-based, counted in characters) of a file
    /// of the set.
    fn text_at(&self, file: &str, line: usize, column: usize) -> String {
        let text = std::fs::read_to_string(self.path().join(file)).unwrap();
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let Some(l) = text.split('\n').nth(line - 1) else {
            panic!("test bug: {file} has no line {line}");
        };
        l.trim_end_matches('\r').chars().skip(column - 1).collect()
    }
}

/// One diagnostic `check` must print: file, line, column, the token that
/// position must point at, and the message.
type Diag<'a> = (&'a str, usize, usize, &'a str, &'a str);

/// The stderr `check` prints for these diagnostics, after making sure every
/// expected position really points at its token.
fn expected_report(set: &Set, diags: &[Diag]) -> String {
    let mut out = String::new();
    let mut errors = 0;
    for &(file, line, column, token, message) in diags {
        let at = set.text_at(file, line, column);
        assert!(
            at.starts_with(token),
            "test bug: {file}:{line}:{column} is at {at:?}, not at {token:?}"
        );
        if !message.starts_with("warning: ") {
            errors += 1;
        }
        out.push_str(&format!("{file}:{line}:{column}: {message}\n"));
    }
    out.push_str(&format!("{errors} problem(s) found\n"));
    out
}

/// Runs `check` on a broken set: exit 1, nothing on stdout, and exactly
/// these diagnostics (in this order) on stderr.
fn assert_check_reports(set: &Set, diags: &[Diag]) {
    let expected = expected_report(set, diags);
    let out = set.check();
    assert_lines(&out.stderr, &expected.lines().collect::<Vec<_>>());
    assert_eq!(out.stdout, "", "stdout of `rowgate check`");
    assert_eq!(out.code, Some(1), "exit code of `rowgate check`");
}

// ---------------------------------------------------------------------------
// check: valid sets
// ---------------------------------------------------------------------------

const VALID_SUMMARY: &str =
    "policy file(s): 5 attribute(s), 6 group(s), 8 user(s), 6 table rule(s), 0 warning(s)";

#[test]
fn check_valid_set_prints_a_one_line_summary() {
    let out = rowgate(&["check", "-c", "proxy.yaml"])
        .dir(&valid())
        .with_password()
        .run();
    assert_eq!(
        out.stdout,
        format!("ok: proxy.yaml and 4 {VALID_SUMMARY}\n")
    );
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

#[test]
fn check_reads_proxy_yaml_of_the_current_directory_by_default() {
    let out = rowgate(&["check"]).dir(&valid()).with_password().run();
    assert_eq!(
        out.stdout,
        format!("ok: proxy.yaml and 4 {VALID_SUMMARY}\n")
    );
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

#[test]
fn check_takes_the_policy_path_relative_to_the_config_file() {
    let parent = valid().parent().unwrap().to_path_buf();
    let out = rowgate(&["check", "-c", "valid/proxy.yaml"])
        .dir(&parent)
        .with_password()
        .run();
    assert_eq!(
        out.stdout,
        format!("ok: valid/proxy.yaml and 4 {VALID_SUMMARY}\n")
    );
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

#[test]
fn check_warns_about_a_plain_text_password_and_passes() {
    let set = Set::new(&[(
        "policies/users.yaml",
        "\
users:
  bob:
    password: hunter2
  carol:
    password: \"$VERIFIER\"
",
    )]);
    let out = set.check();
    assert_eq!(
        out.stderr,
        lines(&["policies/users.yaml:3:15: warning: user `bob` has a plain-text password; store a verifier from `rowgate passwd` instead"])
    );
    assert_eq!(
        out.stdout,
        "ok: proxy.yaml and 1 policy file(s): 0 attribute(s), 0 group(s), 2 user(s), 0 table rule(s), 1 warning(s)\n"
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn check_accepts_a_policy_file_instead_of_a_directory() {
    let set = Set::new(&[
        ("proxy.yaml", "policies: one.yml\n"),
        ("one.yml", "users:\n  bob:\n    password: \"$VERIFIER\"\n"),
    ]);
    let out = set.check();
    assert_eq!(
        out.stdout,
        "ok: proxy.yaml and 1 policy file(s): 0 attribute(s), 0 group(s), 1 user(s), 0 table rule(s), 0 warning(s)\n"
    );
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

// ---------------------------------------------------------------------------
// check: broken sets, every problem at its position
// ---------------------------------------------------------------------------

#[test]
fn check_reports_every_malformed_table_name_and_pattern() {
    let set = Set::new(&[(
        "policies/a.yaml",
        r#"groups:
  sales:
    tables: [public.orders, public., a.b.c, '"unclosed', orders, "*.orders", public.*, hr.*]
users:
  bob:
    password: "$VERIFIER"
    tables:
      - public.orders
      - public.
      - orders
tables:
  public.: {}
  a.b.c: {}
  '"unclosed': {}
  orders: {}
  public.orders: {}
  public.*: {}
"#,
    )]);
    let f = "policies/a.yaml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 3, 29, "public.,", "malformed table pattern `public.`: a name is missing"),
        (f, 3, 38, "a.b.c", "malformed table pattern `a.b.c`: write schema.table or schema.*"),
        (f, 3, 45, "'\"unclosed'", "malformed table pattern `\"unclosed`: a quoted identifier is not closed"),
        (f, 3, 58, "orders,", "table name `orders` must be schema-qualified, e.g. `public.orders`"),
        (f, 3, 66, "\"*.orders\"", "malformed table pattern `*.orders`: write schema.table or schema.*"),
        (f, 9, 9, "public.", "malformed table pattern `public.`: a name is missing"),
        (f, 10, 9, "orders", "table name `orders` must be schema-qualified, e.g. `public.orders`"),
        (f, 12, 3, "public.:", "malformed table name `public.`: a name is missing"),
        (f, 13, 3, "a.b.c:", "`a.b.c` is not a table name of the form schema.table"),
        (f, 14, 3, "'\"unclosed':", "malformed table name `\"unclosed`: a quoted identifier is not closed"),
        (f, 15, 3, "orders:", "table name `orders` must be schema-qualified, e.g. `public.orders`"),
        (f, 17, 3, "public.*:", "`public.*` is not a table name of the form schema.table"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_missing_reference_targets_cycles_and_malformed_references() {
    let set = Set::new(&[(
        "policies/tables.yaml",
        "\
tables:
  public.orders:
    filters:
      - { column: merchant_id, references: public.merchants(id) }
  public.a:
    filters:
      - { column: b_id, references: public.b(id) }
  public.b:
    filters:
      - { column: a_id, references: public.a(id) }
  public.tree:
    filters:
      - { column: parent_id, references: public.tree(id) }
  public.x:
    filters:
      - { column: y, references: public.countries }
      - { column: y, references: countries(id) }
      - { column: y }
      - { column: a.b, attribute: username }
      - { column: y, attribute: username, references: public.a(id) }
",
    )]);
    let f = "policies/tables.yaml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 4, 44, "public.merchants(id)", "references table public.merchants which has no entry under `tables:`; add one (it may have no filters)"),
        (f, 10, 37, "public.a(id)", "references form a cycle: public.a -> public.b -> public.a"),
        (f, 13, 42, "public.tree(id)", "references form a cycle: public.tree -> public.tree"),
        (f, 16, 34, "public.countries", "malformed reference `public.countries`: expected `(column)` after the table name"),
        (f, 17, 34, "countries(id)", "malformed reference `countries(id)`: the referenced table must be schema-qualified"),
        (f, 18, 9, "{ column: y }", "a filter needs `attribute: <name>` or `references: schema.table(column)`"),
        (f, 19, 19, "a.b", "`a.b` is not a column name"),
        (f, 20, 33, "username,", "a filter has either `attribute` or `references`, not both"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_a_reference_cycle_that_spans_files() {
    let set = Set::new(&[
        (
            "policies/a.yaml",
            "\
tables:
  public.b:
    filters:
      - { column: c_id, references: public.c(id) }
",
        ),
        (
            "policies/b.yaml",
            "\
tables:
  public.c:
    filters:
      - { column: d_id, references: PUBLIC.D(ID) }
  public.d:
    filters:
      - { column: b_id, references: public.b(id) }
",
        ),
    ]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/b.yaml", 7, 37, "public.b(id)", "references form a cycle: public.b -> public.c -> public.d -> public.b"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_undefined_groups_unknown_roles_and_missing_passwords() {
    let set = Set::new(&[(
        "policies/users.yaml",
        r#"groups:
  sales: {}
users:
  bob:
    password: "$VERIFIER"
    groups: [sales, ghosts]
    role: superuser
  carol:
    groups: [sales]
  dave:
    password: ""
  erin:
    password: "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ="
  frank:
    password: "$VERIFIER"
    role: Admin
    groups:
      - sales
      - phantoms
"#,
    )]);
    let f = "policies/users.yaml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 6, 21, "ghosts", "user `bob`: undefined group `ghosts`"),
        (f, 7, 11, "superuser", "user `bob`: unknown role `superuser` (expected admin, analyst or member)"),
        (f, 8, 3, "carol:", "user `carol` has no password"),
        (f, 11, 15, "\"\"", "user `dave` has an empty password"),
        (f, 13, 15, "\"SCRAM-SHA-256$4096:c2FsdA==", "user `erin`: malformed SCRAM-SHA-256 verifier (make one with `rowgate passwd`)"),
        (f, 16, 11, "Admin", "user `frank`: unknown role `Admin` (expected admin, analyst or member)"),
        (f, 19, 9, "phantoms", "user `frank`: undefined group `phantoms`"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_undefined_attributes_and_values_that_do_not_fit_their_type() {
    let set = Set::new(&[(
        "policies/attributes.yaml",
        r#"attributes:
  country: { type: text }
  branch:  { type: integer }
  opened:  { type: date }
  tenant:  { type: uuid }
  vip:     { type: boolean }
  budget:  { type: numeric }
  colour:  { type: colour }
  username: { type: text }
groups:
  vn:
    attributes: { country: [Vietnam], region: [APAC], branch: [abc] }
users:
  bob:
    password: "$VERIFIER"
    groups: [vn]
    attributes:
      branch: [1, abc, 2.5]
      opened: [2024-02-29, 2023-02-29, 2023-13-01, tomorrow]
      tenant: [not-a-uuid, 123e4567-e89b-12d3-a456-42661417400]
      vip: [maybe]
      budget: [1.5.3]
      planet: [Mars]
      username: [bob]
      country: [All, Vietnam]
tables:
  public.orders:
    filters:
      - { column: region, attribute: region }
      - { column: planet, attribute: planet }
      - { column: owner, attribute: username }
"#,
    )]);
    let f = "policies/attributes.yaml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 8, 20, "colour }", "attribute `colour`: unknown type `colour` (expected one of text, integer, numeric, boolean, date, uuid)"),
        (f, 9, 3, "username:", "`username` is built in (the login name) and cannot be declared"),
        (f, 12, 39, "region:", "undefined attribute `region`"),
        (f, 12, 64, "abc]", "attribute `branch`: `abc` is not a valid integer value"),
        (f, 18, 19, "abc,", "attribute `branch`: `abc` is not a valid integer value"),
        (f, 18, 24, "2.5]", "attribute `branch`: `2.5` is not a valid integer value"),
        (f, 19, 28, "2023-02-29", "attribute `opened`: `2023-02-29` is not a valid date value"),
        (f, 19, 40, "2023-13-01", "attribute `opened`: `2023-13-01` is not a valid date value"),
        (f, 19, 52, "tomorrow", "attribute `opened`: `tomorrow` is not a valid date value"),
        (f, 20, 16, "not-a-uuid", "attribute `tenant`: `not-a-uuid` is not a valid uuid value"),
        (f, 20, 28, "123e4567-", "attribute `tenant`: `123e4567-e89b-12d3-a456-42661417400` is not a valid uuid value"),
        (f, 21, 13, "maybe", "attribute `vip`: `maybe` is not a valid boolean value"),
        (f, 22, 16, "1.5.3", "attribute `budget`: `1.5.3` is not a valid numeric value"),
        (f, 23, 7, "planet:", "undefined attribute `planet`"),
        (f, 24, 7, "username:", "`username` is built in (the login name) and cannot be assigned"),
        (f, 25, 16, "[All, Vietnam]", "`country`: `All` already means every value; list nothing else"),
        (f, 29, 38, "region }", "undefined attribute `region`"),
        (f, 30, 38, "planet }", "undefined attribute `planet`"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_names_defined_twice_across_files() {
    let set = Set::new(&[
        (
            "policies/one.yaml",
            r#"attributes:
  country: { type: text }
groups:
  sales: { tables: [public.orders] }
users:
  bob:
    password: "$VERIFIER"
tables:
  public.orders: {}
"#,
        ),
        (
            "policies/two.yml",
            r#"attributes:
  country: { type: text }
groups:
  sales: { tables: [public.orders] }
users:
  bob:
    password: "$VERIFIER"
tables:
  public.Orders: {}
  PUBLIC.ORDERS: {}
  '"public"."orders"': {}
  public."Orders": {}
"#,
        ),
    ]);
    let f = "policies/two.yml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 2, 3, "country:", "attribute `country` is already defined at policies/one.yaml:2:3"),
        (f, 4, 3, "sales:", "group `sales` is already defined at policies/one.yaml:4:3"),
        (f, 6, 3, "bob:", "user `bob` is already defined at policies/one.yaml:6:3"),
        (f, 9, 3, "public.Orders:", "table public.orders is already defined at policies/one.yaml:9:3"),
        (f, 10, 3, "PUBLIC.ORDERS:", "table public.orders is already defined at policies/one.yaml:9:3"),
        (f, 11, 3, "'\"public\".\"orders\"':", "table public.orders is already defined at policies/one.yaml:9:3"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_problems_of_several_files_in_one_run() {
    let set = Set::new(&[
        (
            "policies/a.yaml",
            "\
users:
  bob:
    password: hunter2
   role: admin
",
        ),
        (
            "policies/b.yaml",
            "\
groups:
  sales:
    tables: [public.orders]
users:
  carol:
    password: \"$VERIFIER\"
    groups: [sales, ghosts]
",
        ),
        (
            "policies/c.yaml",
            "\
users:
  dave:
    password: pw
    role: root
",
        ),
        ("policies/notes.txt", "not a policy: ignored\n"),
    ]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/a.yaml", 4, 4, "role: admin", "while parsing a block mapping, did not find expected key"),
        ("policies/b.yaml", 7, 21, "ghosts", "user `carol`: undefined group `ghosts`"),
        ("policies/c.yaml", 3, 15, "pw", "warning: user `dave` has a plain-text password; store a verifier from `rowgate passwd` instead"),
        ("policies/c.yaml", 4, 11, "root", "user `dave`: unknown role `root` (expected admin, analyst or member)"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_a_yaml_syntax_error_at_its_position() {
    let set = Set::new(&[("policies/a.yaml", "users:\n  bob: { password: \"pw }\n")]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/a.yaml", 2, 20, "\"pw }", "unclosed quote"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_counts_columns_in_characters_and_lines_in_crlf_and_bom_files() {
    let set = Set::new(&[
        (
            "policies/crlf.yaml",
            "users:\r\n  bob:\r\n    password: \"$VERIFIER\"\r\n    groups: [nope]\r\n",
        ),
        (
            "policies/bom.yaml",
            "\u{feff}users:\n  carol: { password: \"$VERIFIER\" }\n  erin: { role: x }\n",
        ),
        (
            "policies/utf8.yaml",
            "users:\n  \"café_crème\": { groups: [ghosts], role: admin }\n",
        ),
    ]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/bom.yaml", 3, 3, "erin:", "user `erin` has no password"),
        ("policies/bom.yaml", 3, 17, "x }", "user `erin`: unknown role `x` (expected admin, analyst or member)"),
        ("policies/crlf.yaml", 4, 14, "nope", "user `bob`: undefined group `nope`"),
        ("policies/utf8.yaml", 2, 3, "\"café_crème\":", "user `café_crème` has no password"),
        ("policies/utf8.yaml", 2, 28, "ghosts", "user `café_crème`: undefined group `ghosts`"),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_an_empty_policy_directory() {
    let set = Set::new(&[("policies/README.md", "policies go here\n")]);
    let out = set.check();
    assert_eq!(
        out.stderr,
        lines(&[
            "policies:1:1: the policy directory holds no *.yaml or *.yml file",
            "1 problem(s) found",
        ])
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(1));
}

#[test]
fn check_reports_a_missing_policy_directory() {
    let set = Set::new(&[("proxy.yaml", "policies: nowhere\n")]);
    let out = set.check();
    assert_eq!(
        out.stderr,
        lines(&[
            "nowhere:1:1: cannot read: No such file or directory (os error 2)",
            "1 problem(s) found",
        ])
    );
    assert_eq!(out.code, Some(1));
}

#[test]
fn check_without_a_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = rowgate(&["check"]).dir(dir.path()).run();
    assert_eq!(out.stderr, "proxy.yaml: cannot read: no such file\n");
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(2));
    let out = rowgate(&["check", "-c", "elsewhere.yaml"])
        .dir(dir.path())
        .run();
    assert_eq!(out.stderr, "elsewhere.yaml: cannot read: no such file\n");
    assert_eq!(out.code, Some(2));
}

// ---------------------------------------------------------------------------
// check: unknown keys
// ---------------------------------------------------------------------------

/// An unknown key is a problem like any other: it must not stop the rest of
/// the file from being checked, nor hide the other unknown keys.
#[test]
fn check_reports_every_unknown_key_and_keeps_checking_the_file() {
    let set = Set::new(&[(
        "policies/a.yaml",
        r#"attributes:
  country: { type: text, default: Vietnam }
groups:
  sales: { tables: [public.orders], members: [bob] }
users:
  bob:
    password: "$VERIFIER"
    shoe: 42
    groups: [ghosts]
tables:
  public.orders:
    filters:
      - { column: region, attribute: country, colour: blue }
    owner: sales
colour: red
"#,
    )]);
    let f = "policies/a.yaml";
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        (f, 2, 26, "default:", "unknown field `default`, expected one of type..."),
        (f, 4, 37, "members:", "unknown field `members`, expected one of tables, read_only..."),
        (f, 8, 5, "shoe:", "unknown field `shoe`, expected one of password, role, groups, tables, read_only..."),
        (f, 9, 14, "ghosts", "user `bob`: undefined group `ghosts`"),
        (f, 13, 47, "colour:", "unknown field `colour`, expected one of column, attribute, references..."),
        (f, 14, 5, "owner:", "unknown field `owner`, expected one of filters..."),
        (f, 15, 1, "colour:", "unknown field `colour`, expected one of attributes, groups, users, tables, functions..."),
    ];
    assert_check_reports(&set, expected);
}

/// Each unknown key alone, at top level, in a user and in a filter: its
/// position and message.
#[test]
fn check_reports_an_unknown_key_at_top_level_in_a_user_and_in_a_filter() {
    let cases: &[(&str, usize, usize, &str, &str)] = &[
        (
            "users:\n  bob:\n    password: \"$VERIFIER\"\ncolour: red\n",
            4,
            1,
            "colour:",
            "unknown field `colour`, expected one of attributes, groups, users, tables, functions...",
        ),
        (
            "users:\n  bob:\n    password: \"$VERIFIER\"\n    shoe: 42\n",
            4,
            5,
            "shoe:",
            "unknown field `shoe`, expected one of password, role, groups, tables, read_only...",
        ),
        (
            "tables:\n  public.t:\n    filters:\n      - { column: x, attribute: username, colour: blue }\n",
            4,
            43,
            "colour:",
            "unknown field `colour`, expected one of column, attribute, references...",
        ),
    ];
    for &(text, line, column, token, message) in cases {
        let set = Set::new(&[("policies/a.yaml", text)]);
        assert_check_reports(&set, &[("policies/a.yaml", line, column, token, message)]);
    }
}

/// A file with an unknown key must still contribute its definitions, or other
/// files get false reports about names it defines.
#[test]
fn check_does_not_invent_problems_because_another_file_has_an_unknown_key() {
    let set = Set::new(&[
        (
            "policies/merchants.yaml",
            "\
tables:
  public.merchants:
    filters:
      - { column: name, attribute: merchant }
    comment: merchants are restricted by name
",
        ),
        (
            "policies/orders.yaml",
            "\
attributes:
  merchant: { type: text }
tables:
  public.orders:
    filters:
      - { column: merchant_id, references: public.merchants(id) }
",
        ),
    ]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/merchants.yaml", 5, 5, "comment:", "unknown field `comment`, expected one of filters..."),
    ];
    assert_check_reports(&set, expected);
}

#[test]
fn check_reports_a_key_written_twice_in_one_file_in_plain_words() {
    let set = Set::new(&[(
        "policies/a.yaml",
        "groups:\n  sales:\n    tables: [public.orders]\n  sales:\n    tables: [public.x]\n",
    )]);
    let out = set.check();
    assert_eq!(out.code, Some(1));
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("policies/a.yaml:4:3: ") && first.contains("sales"),
        "{}",
        out.stderr
    );
    // The user cannot set the YAML library's options: the message must not
    // tell them to.
    assert!(
        !out.stderr.contains("DuplicateKeyPolicy") && !out.stderr.contains("Options"),
        "the message speaks of library internals: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// check: aliases
// ---------------------------------------------------------------------------

/// The message of an error found through an alias must be whole (the library
/// appends "(used at line L, column C)"; the position prefix says it already).
#[test]
fn check_keeps_the_message_of_an_error_found_through_an_alias_whole() {
    let set = Set::new(&[(
        "policies/a.yaml",
        "groups:\n  g: { tables: &t [public.a] }\nusers:\n  bob: { password: pw, role: *t }\n",
    )]);
    let out = set.check();
    assert_eq!(out.code, Some(1));
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("policies/a.yaml:4:30: "),
        "{}",
        out.stderr
    );
    let opened = first.matches('(').count();
    let closed = first.matches(')').count();
    assert!(
        opened == closed && !first.ends_with("(used"),
        "the message is cut off: {first:?}"
    );
}

/// A classic "billion laughs" document: nested lists of aliases, 10^9 leaves
/// once expanded. It must fail at once without expanding anything.
#[test]
fn check_refuses_a_billion_laughs_document_quickly() {
    let mut bomb = String::from("lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let refs = vec![format!("*lol{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("lol{i}: &lol{i} [{refs}]\n"));
    }
    let mut nested = String::from(
        "attributes:\n  country: { type: text }\nusers:\n  bob:\n    password: \"$VERIFIER\"\n    attributes:\n      country: &c0 [a, a, a, a, a, a, a, a, a, a]\n",
    );
    for i in 1..9 {
        let refs = vec![format!("*c{}", i - 1); 10].join(", ");
        nested.push_str(&format!("  u{i}:\n    password: \"$VERIFIER\"\n    attributes:\n      country: &c{i} [{refs}]\n"));
    }
    for (text, line, column, token, message) in [
        (
            bomb.as_str(),
            1,
            1,
            "lol0:",
            "unknown field `lol0`, expected one of attributes, groups, users, tables, functions",
        ),
        (
            nested.as_str(),
            11,
            21,
            "*c0",
            "invalid type: sequence, expected a single value (text, number, boolean or date)",
        ),
    ] {
        let set = Set::new(&[("policies/bomb.yaml", text)]);
        let out = rowgate(&["check", "-c", "proxy.yaml"])
            .dir(set.path())
            .timeout(Duration::from_secs(10))
            .memory_kib(96 * 1024)
            .run();
        assert_eq!(out.code, Some(1), "{out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        let at = set.text_at("policies/bomb.yaml", line, column);
        assert!(at.starts_with(token), "test bug: {at:?}");
        assert!(
            first.starts_with(&format!("policies/bomb.yaml:{line}:{column}: {message}")),
            "{}",
            out.stderr
        );
        assert!(
            out.elapsed < Duration::from_secs(5),
            "took {:?}",
            out.elapsed
        );
    }
}

/// Merge keys (`<<: [*a, *a, ...]`) nested ten deep are a bomb that fits the
/// policy schema: each level replays the one below ten times. A 700-byte
/// file must be refused quickly, in little memory, with an error that says
/// the aliases are the problem.
#[test]
fn check_refuses_an_alias_bomb_of_merge_keys_quickly_and_in_bounded_memory() {
    let mut text = String::from("groups:\n  g0: &g0 { tables: [public.a] }\n");
    for i in 1..10 {
        let refs = vec![format!("*g{}", i - 1); 10].join(", ");
        text.push_str(&format!("  g{i}: &g{i} {{ <<: [{refs}] }}\n"));
    }
    assert!(text.len() < 1000);
    let set = Set::new(&[("policies/bomb.yaml", text.as_str())]);
    let out = rowgate(&["check", "-c", "proxy.yaml"])
        .dir(set.path())
        .timeout(Duration::from_secs(10))
        .memory_kib(96 * 1024)
        .run();
    assert_eq!(
        out.code,
        Some(1),
        "exit code under a 96 MiB address-space limit (a signal means it ran out of memory): {out:?}"
    );
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("policies/bomb.yaml:")
            && ["alias", "anchor", "merge", "<<"]
                .iter()
                .any(|w| first.to_lowercase().contains(w)),
        "the error should say that the aliases (or merge keys) are the problem: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// check: proxy.yaml
// ---------------------------------------------------------------------------

#[test]
fn check_names_a_missing_environment_variable() {
    let set = Set::new(&[
        (
            "proxy.yaml",
            "\
listen: 127.0.0.1:6432
policies: policies
upstream:
  host: 127.0.0.1
  user: ${ROWGATE_CLI_TEST_UNSET_USER}
  password: \"${ROWGATE_CLI_TEST_UNSET_PASSWORD}\"
",
        ),
        (
            "policies/users.yaml",
            "users:\n  bob:\n    password: \"$VERIFIER\"\n",
        ),
    ]);
    let out = rowgate(&["check", "-c", "proxy.yaml"])
        .dir(set.path())
        .run();
    assert_eq!(
        out.stderr,
        lines(&[
            "proxy.yaml:5:9: environment variable `ROWGATE_CLI_TEST_UNSET_USER` is not set",
            "proxy.yaml:6:13: environment variable `ROWGATE_CLI_TEST_UNSET_PASSWORD` is not set",
            "2 problem(s) found",
        ])
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(1));

    // Set, they expand and the set is valid.
    let out = rowgate(&["check", "-c", "proxy.yaml"])
        .dir(set.path())
        .env("ROWGATE_CLI_TEST_UNSET_USER", "rowgate")
        .env("ROWGATE_CLI_TEST_UNSET_PASSWORD", "x")
        .run();
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

#[test]
fn check_reports_config_and_policy_problems_together() {
    let set = Set::new(&[
        (
            "proxy.yaml",
            "policies: policies\nupstream:\n  password: ${ROWGATE_CLI_TEST_UNSET_PASSWORD}\n",
        ),
        (
            "policies/users.yaml",
            "users:\n  bob:\n    password: \"$VERIFIER\"\n    role: root\n",
        ),
    ]);
    let out = set.check();
    assert_eq!(
        out.stderr,
        lines(&[
            "proxy.yaml:3:13: environment variable `ROWGATE_CLI_TEST_UNSET_PASSWORD` is not set",
            "policies/users.yaml:4:11: user `bob`: unknown role `root` (expected admin, analyst or member)",
            "2 problem(s) found",
        ])
    );
    assert_eq!(out.code, Some(1));
}

#[test]
fn check_reports_an_unknown_key_in_proxy_yaml() {
    // A valid policy set beside it: the policies are checked too, and an
    // empty policy directory would be a problem of its own.
    let set = Set::new(&[
        (
            "proxy.yaml",
            "listen: 127.0.0.1:6432\npolicies: policies\nupstream:\n  host: 127.0.0.1\n  hots: db\n",
        ),
        (
            "policies/users.yaml",
            "users:\n  bob:\n    password: \"$VERIFIER\"\n",
        ),
    ]);
    let out = set.check();
    assert_lines(
        &out.stderr,
        &[
            "proxy.yaml:5:3: unknown field `hots`, expected one of host, port, user, password, database, tls...",
            "1 problem(s) found",
        ],
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(1));
}

#[test]
fn check_reports_every_unknown_key_in_proxy_yaml() {
    let set = Set::new(&[
        (
            "proxy.yaml",
            "\
listne: 127.0.0.1:6432
policies: policies
upstream:
  hots: db
  port: 5432
tls:
  cert: server.crt
  key: server.key
  ca: ca.crt
",
        ),
        (
            "policies/users.yaml",
            "users:\n  bob:\n    password: \"$VERIFIER\"\n",
        ),
    ]);
    let out = set.check();
    assert_lines(
        &out.stderr,
        &[
            "proxy.yaml:1:1: unknown field `listne`, expected one of listen, policies, upstream, upstreams, tls...",
            "proxy.yaml:4:3: unknown field `hots`, expected one of host, port, user, password, database, tls...",
            "proxy.yaml:9:3: unknown field `ca`, expected one of cert, key...",
            "3 problem(s) found",
        ],
    );
    assert_eq!(out.code, Some(1));
}

/// One run reports everything: a config with an unknown key still has its
/// policies checked.
#[test]
fn check_still_checks_the_policies_when_proxy_yaml_has_an_unknown_key() {
    let set = Set::new(&[
        (
            "proxy.yaml",
            "policies: policies\nlisten_addr: 0.0.0.0:6432\n",
        ),
        (
            "policies/users.yaml",
            "users:\n  bob:\n    password: \"$VERIFIER\"\n    role: root\n",
        ),
    ]);
    let out = set.check();
    assert_lines(
        &out.stderr,
        &[
            "proxy.yaml:2:1: unknown field `listen_addr`, expected one of listen, policies, upstream, upstreams, tls...",
            "policies/users.yaml:4:11: user `bob`: unknown role `root` (expected admin, analyst or member)",
            "2 problem(s) found",
        ],
    );
    assert_eq!(out.code, Some(1));
}

// ---------------------------------------------------------------------------
// Attribute values keep what was written
// ---------------------------------------------------------------------------

/// YAML would read `02134` as the integer 2134 and `1e3` as a float; a `text`
/// attribute must keep the value as written, or its filter compares with
/// another value. A `numeric` value must keep all its digits (PostgreSQL
/// numerics are exact).
#[test]
fn attribute_values_keep_the_value_as_written() {
    let set = Set::new(&[(
        "policies/a.yaml",
        r#"attributes:
  zip:    { type: text }
  amount: { type: numeric }
groups:
  post:
    tables: [public.parcels]
users:
  bob:
    password: "$VERIFIER"
    groups: [post]
    attributes:
      zip: [02134, 12.50, 1e3]
      amount: [123456789012345678901234567890, 0.10000000000000000001]
tables:
  public.parcels:
    filters:
      - { column: zip, attribute: zip }
      - { column: amount, attribute: amount }
"#,
    )]);
    let out = set.access("bob");
    assert_eq!(out.code, Some(0), "{out:?}");
    let has = |line: &str| out.stdout.lines().any(|l| l == line);
    for line in [
        "  zip: 02134 (user), 12.50 (user), 1e3 (user)",
        "  amount: 123456789012345678901234567890 (user), 0.10000000000000000001 (user)",
        "  public.parcels (group post): WHERE (parcels.zip IN ('02134', '12.50', '1e3') AND parcels.amount IN (123456789012345678901234567890, 0.10000000000000000001))",
    ] {
        assert!(has(line), "expected the line\n{line}\nin\n{}", out.stdout);
    }
}

/// A misfit is reported with the value the user wrote.
#[test]
fn check_quotes_a_misfit_value_as_written() {
    let set = Set::new(&[(
        "policies/a.yaml",
        "attributes:\n  branch: { type: integer }\nusers:\n  bob:\n    password: \"$VERIFIER\"\n    attributes: { branch: [99999999999999999999] }\n",
    )]);
    #[rustfmt::skip]
    let expected: &[Diag] = &[
        ("policies/a.yaml", 6, 28, "99999999999999999999", "attribute `branch`: `99999999999999999999` is not a valid integer value"),
    ];
    assert_check_reports(&set, expected);
}

// ---------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------

fn explain(user: &str, sql: &str) -> Out {
    rowgate(&["explain", "-c", "proxy.yaml", "--user", user, sql])
        .dir(&valid())
        .run()
}

#[test]
fn explain_prints_the_forwarded_sql_for_a_member() {
    let out = explain("king_manager", "SELECT * FROM orders");
    assert_eq!(
        out.stdout,
        "SELECT * FROM (SELECT * FROM public.orders WHERE orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE (merchants.name IN ('King Inc') AND merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam'))))) AS orders\n"
    );
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));

    let out = explain(
        "apac",
        "SELECT c.name, count(*) FROM orders o JOIN merchants m ON m.id = o.merchant_id JOIN countries c ON c.id = m.country_id GROUP BY c.name",
    );
    assert_eq!(
        out.stdout,
        "SELECT c.name, count(*) FROM (SELECT * FROM public.orders WHERE orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam', 'Singapore'))) OFFSET NULL) o JOIN (SELECT * FROM public.merchants WHERE merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam', 'Singapore')) OFFSET NULL) m ON m.id = o.merchant_id JOIN (SELECT * FROM public.countries WHERE countries.name IN ('Vietnam', 'Singapore') OFFSET NULL) c ON c.id = m.country_id GROUP BY c.name\n"
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn explain_applies_username_no_value_and_schema_grants() {
    let cases = [
        (
            "alice",
            "SELECT * FROM tickets WHERE subject = 'it''s'",
            "SELECT * FROM (SELECT * FROM public.tickets WHERE tickets.assignee IN ('alice') OFFSET NULL) AS tickets WHERE subject = E'it\\'s'",
        ),
        (
            "newcomer",
            "SELECT * FROM countries",
            "SELECT * FROM (SELECT * FROM public.countries WHERE false) AS countries",
        ),
        (
            "hr_lead",
            "SELECT * FROM hr.salaries",
            "SELECT * FROM (SELECT * FROM hr.salaries WHERE salaries.branch_id IN (7, 9)) AS salaries",
        ),
        ("hr_lead", "select * from hr.branches", "SELECT * FROM hr.branches"),
    ];
    for (user, sql, forwarded) in cases {
        let out = explain(user, sql);
        assert_eq!(out.stdout, format!("{forwarded}\n"), "{user}: {sql}");
        assert_eq!(out.stderr, "");
        assert_eq!(out.code, Some(0));
    }
}

#[test]
fn explain_for_analyst_and_admin() {
    let out = explain("analyst", "SELECT * FROM orders");
    assert_eq!(out.stdout, "SELECT * FROM public.orders\n");
    assert_eq!(out.code, Some(0));
    let out = explain("admin", "DELETE FROM orders WHERE id = 1");
    assert_eq!(out.stdout, "DELETE FROM orders WHERE id = 1\n");
    assert_eq!(out.code, Some(0));
}

#[test]
fn explain_prints_a_refusal_with_its_sqlstate_and_exits_1() {
    let cases = [
        ("king_manager", "SELECT * FROM tickets", "permission denied for table public.tickets"),
        (
            "king_manager",
            "SELECT * FROM orders; SELECT * FROM tickets",
            "permission denied for table public.tickets",
        ),
        ("alice", "SELECT * FROM hr.salaries", "permission denied for table hr.salaries"),
        (
            "king_manager",
            "UPDATE orders SET total = 0",
            "permission denied: UPDATE is not allowed through rowgate (read-only access)",
        ),
        (
            "analyst",
            "DROP TABLE orders",
            "permission denied: DROP TABLE is not allowed through rowgate (read-only access)",
        ),
        (
            "king_manager",
            "SELECT 1 FROM",
            "0A000: rowgate does not support this statement (its parser: Expected: identifier, found: EOF)",
        ),
    ];
    for (user, sql, message) in cases {
        let out = explain(user, sql);
        assert_eq!(
            out.stdout,
            if message.starts_with("0A000: ") {
                format!("ERROR {message}\n")
            } else {
                format!("ERROR 42501: {message}\n")
            },
            "{user}: {sql}"
        );
        assert_eq!(out.stderr, "");
        assert_eq!(out.code, Some(1), "{user}: {sql}");
    }
}

#[test]
fn explain_for_an_unknown_user_exits_2() {
    let out = explain("nobody", "SELECT 1");
    assert_eq!(out.stderr, "rowgate: no user `nobody` in the policies\n");
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(2));
}

#[test]
fn explain_with_a_missing_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = rowgate(&["explain", "--user", "apac", "SELECT 1"])
        .dir(dir.path())
        .run();
    assert_eq!(
        out.stderr,
        "proxy.yaml:1:1: cannot read: No such file or directory (os error 2)\n"
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(2));
}

#[test]
fn explain_on_a_broken_policy_set_exits_2_with_the_problems() {
    let set = Set::new(&[(
        "policies/users.yaml",
        "users:\n  bob:\n    password: \"$VERIFIER\"\n    role: root\n",
    )]);
    let out = rowgate(&["explain", "-c", "proxy.yaml", "--user", "bob", "SELECT 1"])
        .dir(set.path())
        .run();
    assert_eq!(
        out.stderr,
        "policies/users.yaml:4:11: user `bob`: unknown role `root` (expected admin, analyst or member)\n"
    );
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(2));
}

/// `explain` never connects upstream, so it needs neither the upstream
/// password variable nor a reachable warehouse; `check` does need the
/// variable.
#[test]
fn explain_and_access_work_without_the_upstream_password() {
    let out = rowgate(&["check", "-c", "proxy.yaml"]).dir(&valid()).run();
    assert_eq!(
        out.stderr,
        lines(&[
            &format!("proxy.yaml:10:13: environment variable `{PASSWORD_VAR}` is not set"),
            "1 problem(s) found",
        ])
    );
    assert_eq!(out.code, Some(1));

    let out = explain("analyst", "SELECT 1");
    assert_eq!(out.stdout, "SELECT 1\n");
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));

    let out = rowgate(&["access", "-c", "proxy.yaml", "--user", "analyst"])
        .dir(&valid())
        .run();
    assert_eq!(out.stderr, "");
    assert_eq!(out.code, Some(0));
}

// ---------------------------------------------------------------------------
// access
// ---------------------------------------------------------------------------

fn access(user: &str) -> Out {
    let out = rowgate(&["access", "-c", "proxy.yaml", "--user", user])
        .dir(&valid())
        .run();
    assert_eq!(out.stderr, "", "stderr of access --user {user}");
    assert_eq!(out.code, Some(0), "exit code of access --user {user}");
    out
}

#[test]
fn access_shows_values_inherited_from_several_groups() {
    assert_eq!(
        access("apac").stdout,
        lines(&[
            "user: apac",
            "role: member (reads granted tables, row filters apply, read-only)",
            "groups: sales, vietnam, singapore",
            "attributes:",
            "  branch: (no value: no rows)",
            "  country: Vietnam (group vietnam), Singapore (group singapore)",
            "  merchant: All (user)",
            "  opened: (no value: no rows)",
            "  tenant: (no value: no rows)",
            "  username: apac (login name)",
            "tables:",
            "  public.countries (group sales): WHERE countries.name IN ('Vietnam', 'Singapore')",
            "  public.merchants (group sales): WHERE merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam', 'Singapore'))",
            "  public.orders (group sales): WHERE orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam', 'Singapore')))",
        ])
    );
}

#[test]
fn access_shows_own_values_as_coming_from_the_user() {
    assert_eq!(
        access("king_manager").stdout,
        lines(&[
            "user: king_manager",
            "role: member (reads granted tables, row filters apply, read-only)",
            "groups: sales, vietnam",
            "attributes:",
            "  branch: (no value: no rows)",
            "  country: Vietnam (group vietnam)",
            "  merchant: King Inc (user)",
            "  opened: (no value: no rows)",
            "  tenant: (no value: no rows)",
            "  username: king_manager (login name)",
            "tables:",
            "  public.countries (group sales): WHERE countries.name IN ('Vietnam')",
            "  public.merchants (group sales): WHERE (merchants.name IN ('King Inc') AND merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam')))",
            "  public.orders (group sales): WHERE orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE (merchants.name IN ('King Inc') AND merchants.country_id IN (SELECT countries.id FROM public.countries WHERE countries.name IN ('Vietnam'))))",
        ])
    );
}

#[test]
fn access_shows_all_from_a_group_over_other_groups_values() {
    assert_eq!(
        access("globe").stdout,
        lines(&[
            "user: globe",
            "role: member (reads granted tables, row filters apply, read-only)",
            "groups: sales, vietnam, everywhere",
            "attributes:",
            "  branch: (no value: no rows)",
            "  country: All (group everywhere)",
            "  merchant: King Inc (user), Queen Ltd (user)",
            "  opened: (no value: no rows)",
            "  tenant: (no value: no rows)",
            "  username: globe (login name)",
            "tables:",
            "  public.countries (group sales): all rows",
            "  public.merchants (group sales): WHERE (merchants.name IN ('King Inc', 'Queen Ltd') AND merchants.country_id IN (SELECT countries.id FROM public.countries))",
            "  public.orders (group sales): WHERE orders.merchant_id IN (SELECT merchants.id FROM public.merchants WHERE (merchants.name IN ('King Inc', 'Queen Ltd') AND merchants.country_id IN (SELECT countries.id FROM public.countries)))",
        ])
    );
}

#[test]
fn access_shows_no_rows_for_a_user_without_values() {
    assert_eq!(
        access("newcomer").stdout,
        lines(&[
            "user: newcomer",
            "role: member (reads granted tables, row filters apply, read-only)",
            "groups: sales",
            "attributes:",
            "  branch: (no value: no rows)",
            "  country: (no value: no rows)",
            "  merchant: (no value: no rows)",
            "  opened: (no value: no rows)",
            "  tenant: (no value: no rows)",
            "  username: newcomer (login name)",
            "tables:",
            "  public.countries (group sales): WHERE false",
            "  public.merchants (group sales): WHERE false",
            "  public.orders (group sales): WHERE false",
        ])
    );
}

#[test]
fn access_shows_the_login_name_as_username() {
    let out = access("alice");
    let tail: Vec<&str> = out.stdout.lines().skip(9).collect();
    assert_eq!(
        tail,
        [
            "  username: alice (login name)",
            "tables:",
            "  public.tickets (group support): WHERE tickets.assignee IN ('alice')",
        ]
    );
}

#[test]
fn access_shows_schema_grants_and_typed_values() {
    assert_eq!(
        access("hr_lead").stdout,
        lines(&[
            "user: hr_lead",
            "role: member (reads granted tables, row filters apply, read-only)",
            "groups: hr",
            "attributes:",
            "  branch: 7 (group hr), 9 (group hr)",
            "  country: (no value: no rows)",
            "  merchant: (no value: no rows)",
            "  opened: 2024-02-29 (user)",
            "  tenant: 123e4567-e89b-12d3-a456-426614174000 (user)",
            "  username: hr_lead (login name)",
            "tables:",
            "  hr.* (group hr): every table of the schema; all rows unless a rule below applies",
            "    hr.branches: all rows",
            "    hr.salaries: WHERE salaries.branch_id IN (7, 9)",
        ])
    );
}

#[test]
fn access_for_analyst_and_admin() {
    for (user, role) in [
        (
            "analyst",
            "role: analyst (reads every table, no row filters, read-only)",
        ),
        ("admin", "role: admin (statements pass unchanged)"),
    ] {
        let out = access(user);
        let all: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            all[..3],
            [&format!("user: {user}") as &str, role, "groups: (none)"]
        );
        assert_eq!(
            all[all.len() - 3..],
            [
                &format!("  username: {user} (login name)") as &str,
                "tables:",
                "  every table: all rows",
            ]
        );
    }
}

#[test]
fn access_for_an_unknown_user_exits_2() {
    let out = rowgate(&["access", "-c", "proxy.yaml", "--user", "nobody"])
        .dir(&valid())
        .run();
    assert_eq!(out.stderr, "rowgate: no user `nobody` in the policies\n");
    assert_eq!(out.stdout, "");
    assert_eq!(out.code, Some(2));
}

// ---------------------------------------------------------------------------
// passwd
// ---------------------------------------------------------------------------

/// StoredKey and ServerKey (base64) as RFC 5802 defines them, computed by
/// Python's standard library, and the salt's length in bytes.
fn reference_scram_keys(
    password: &[u8],
    salt_b64: &str,
    iterations: &str,
) -> (usize, String, String) {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, sys
salt = base64.b64decode(sys.argv[1], validate=True)
password = sys.stdin.buffer.read()
salted = hashlib.pbkdf2_hmac("sha256", password, salt, int(sys.argv[2]))
client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
stored_key = hashlib.sha256(client_key).digest()
server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
print(len(salt), base64.b64encode(stored_key).decode(), base64.b64encode(server_key).decode())
"#;
    let out = python(SCRIPT, &[salt_b64, iterations], password);
    let parts: Vec<&str> = out.split_whitespace().collect();
    let [len, stored, server] = parts[..] else {
        panic!("unexpected output of the reference computation: {out:?}");
    };
    (len.parse().unwrap(), stored.to_string(), server.to_string())
}

/// Runs a Python 3 script (the reference implementation of SCRAM's key
/// derivation); Python is a requirement of this test suite, not optional.
fn python(script: &str, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check SCRAM verifiers independently; install Python 3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The reference itself reproduces the exchange of RFC 7677 section 3
/// (user "user", password "pencil"): the client proof and the server
/// signature.
#[test]
fn scram_reference_matches_the_rfc_7677_example() {
    const SCRIPT: &str = r#"
import base64, hashlib, hmac
salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
stored_key = hashlib.sha256(client_key).digest()
server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
auth = ("n=user,r=rOprNGfwEbeRWgbNEkqO,r=" + nonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=" + nonce).encode()
signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
proof = bytes(a ^ b for a, b in zip(client_key, signature))
print(base64.b64encode(proof).decode(), base64.b64encode(hmac.new(server_key, auth, hashlib.sha256).digest()).decode())
"#;
    assert_eq!(
        python(SCRIPT, &[], b"").trim(),
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ= 6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
    let (_, stored, server) = reference_scram_keys(b"pencil", "W22ZaJ0SNY7soEsUEjb6gQ==", "4096");
    assert_eq!(stored, "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=");
    assert_eq!(server, "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=");
}

/// A verifier split into its parts, after checking its shape:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
struct Verifier {
    iterations: String,
    salt: String,
    stored_key: String,
    server_key: String,
}

fn parse_verifier(text: &str) -> Verifier {
    let b64 = |s: &str| {
        !s.is_empty()
            && s.len().is_multiple_of(4)
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    };
    let rest = text
        .strip_prefix("SCRAM-SHA-256$")
        .unwrap_or_else(|| panic!("not a SCRAM-SHA-256 verifier: {text:?}"));
    let (params, keys) = rest
        .split_once('$')
        .expect("`$` between parameters and keys");
    let (iterations, salt) = params.split_once(':').expect("iterations:salt");
    let (stored_key, server_key) = keys.split_once(':').expect("StoredKey:ServerKey");
    assert!(iterations.bytes().all(|b| b.is_ascii_digit()), "{text}");
    assert!(b64(salt) && b64(stored_key) && b64(server_key), "{text}");
    Verifier {
        iterations: iterations.to_string(),
        salt: salt.to_string(),
        stored_key: stored_key.to_string(),
        server_key: server_key.to_string(),
    }
}

fn passwd(stdin: &[u8]) -> Out {
    rowgate(&["passwd"]).stdin(stdin).run()
}

#[test]
fn passwd_prints_a_verifier_that_verifies_independently() {
    // (what is typed, the password it stands for)
    let cases: [(&[u8], &[u8]); 5] = [
        (b"pencil\n", b"pencil"),
        (b"rowgate-demo", b"rowgate-demo"),
        (
            b"  correct horse battery staple  \r\n",
            b"  correct horse battery staple  ",
        ),
        (
            "pässwörd ünïcödé €\n".as_bytes(),
            "pässwörd ünïcödé €".as_bytes(),
        ),
        (b"p@$$w0rd:with$colons\n", b"p@$$w0rd:with$colons"),
    ];
    for (typed, password) in cases {
        let out = passwd(typed);
        assert_eq!(
            out.stderr, "",
            "nothing but the verifier when stdin is not a terminal"
        );
        assert_eq!(out.code, Some(0));
        let text = out
            .stdout
            .strip_suffix('\n')
            .expect("the verifier ends with a newline");
        assert!(!text.contains('\n'), "one line: {:?}", out.stdout);
        let v = parse_verifier(text);
        assert_eq!(v.iterations, "4096");
        let (salt_len, stored_key, server_key) =
            reference_scram_keys(password, &v.salt, &v.iterations);
        assert!(salt_len >= 16, "a salt of {salt_len} bytes");
        assert_eq!(v.stored_key, stored_key, "StoredKey for {password:?}");
        assert_eq!(v.server_key, server_key, "ServerKey for {password:?}");
    }
}

#[test]
fn passwd_uses_a_fresh_salt_each_time() {
    let a = parse_verifier(passwd(b"same password\n").stdout.trim_end());
    let b = parse_verifier(passwd(b"same password\n").stdout.trim_end());
    assert_ne!(a.salt, b.salt);
    assert_ne!(a.stored_key, b.stored_key);
}

#[test]
fn passwd_refuses_an_empty_password() {
    for input in [&b"\n"[..], b"", b"\r\n"] {
        let out = passwd(input);
        assert_eq!(out.stderr, "rowgate: the password is empty\n", "{input:?}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.code, Some(2), "{input:?}");
    }
}

#[test]
fn a_verifier_from_passwd_passes_check_without_a_warning() {
    let out = passwd(b"s3cret for bob\n");
    assert_eq!(out.code, Some(0));
    let verifier = out.stdout.trim_end().to_string();
    let users = format!("users:\n  bob:\n    password: \"{verifier}\"\n  carol:\n    password: '{verifier}'\n  dave:\n    password: {verifier}\n");
    let set = Set::new(&[("policies/users.yaml", users.as_str())]);
    let out = set.check();
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        "ok: proxy.yaml and 1 policy file(s): 0 attribute(s), 0 group(s), 3 user(s), 0 table rule(s), 0 warning(s)\n"
    );
    assert_eq!(out.code, Some(0));
}

// ---------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------

#[test]
fn help_lists_the_seven_commands() {
    let out = rowgate(&["--help"]).run();
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stderr, "");
    let commands: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["serve", "check", "explain", "access", "passwd", "audit", "demo", "help"]
    );
    assert!(out.stdout.starts_with("A PostgreSQL wire-protocol proxy"));
    assert!(out.stdout.contains("\nUsage: rowgate <COMMAND>\n"));
}
