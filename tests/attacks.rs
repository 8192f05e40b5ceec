//! The attack suite of the hardening issue, as data: every case of
//! `tests/cases/attacks.yaml` is sent through `rowgate serve` by a raw
//! protocol client as the restricted member `king` of the differential
//! fixture, with the cluster's superuser as rowgate's upstream role, so that
//! rowgate alone stands between the member and the data; and then again as
//! `tk_king`, who logs in with a signed token whose integration gives
//! king's grants and values (`king` in a case's expected rows is then that
//! name).
//!
//! A case expects one of:
//!
//! - `refuse`: an ErrorResponse with one of the SQLSTATEs rowgate refuses
//!   with (42501 for policy, 0A000 for what it does not support, 42601 for
//!   what PostgreSQL's parser rejects, 54001 for what is too deep), and no
//!   row, COPY data or function result before it;
//! - `rls`: exactly what native row-level security gives the same user on a
//!   direct connection as that user's native-RLS role (`rls::setup`): the
//!   same rows as a multiset, or an error with the same SQLSTATE;
//! - `rls_or_refuse`: the same, or a refusal (text that rowgate's parser
//!   cannot read, which it may refuse rather than forward);
//! - `ok`: success, and when `rows` is given exactly those rows (for harmless
//!   neighbours whose values differ by connection, like plans and `SHOW`).
//!
//! For every case, whatever the expectation, no secret appears in any byte
//! the client receives (rows, COPY data, errors with their detail, hint and
//! context, notices, parameter statuses): names of merchants and countries
//! the member cannot see, other hidden column values, salaries, password
//! hashes and passwords, a user mapping's password, a large object, a
//! sequence's state, and the query text of two other sessions that run
//! throughout the suite. After every case the session must still answer
//! `SELECT 1`. After the suite, every fixture table, the sequence and the
//! large objects are unchanged, and no relation, role, function, policy,
//! extension, server setting or other catalog object has appeared or
//! changed.
//!
//! Every failure is collected and reported at the end by case name; a
//! failure is a bug in rowgate unless the case is wrong.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::raw::{Client, Msg};
use common::rls;
use postgres_protocol::message::frontend;
use serde::Deserialize;

const CASES: &str = "tests/cases/attacks.yaml";
const SETUP: &str = "tests/fixtures/attacks/setup.sql";
const FUNCTIONS: &str = "tests/fixtures/attacks/functions.yaml";
/// The restricted member: sees merchant 'King Inc' in country 'Vietnam'.
const MEMBER: &str = "king";
/// The case categories, as the first part of each case's name.
const CATEGORIES: &[&str] = &[
    "statements",
    "hidden_reads",
    "functions",
    "catalog",
    "side_channels",
    "lexer",
];
/// Marks the other sessions' query texts, which must never reach the member.
const OTHER_SESSION: &str = "other-session-secret-77";
const OTHER_MEMBER: &str = "other-member-secret-78";

/// A function created after rowgate has read the catalog: a fresh name that
/// the member then calls unqualified.
const LATE_FUNCTION: &str = "CREATE FUNCTION public.atk_late_salaries() RETURNS SETOF int \
     LANGUAGE sql AS $$ SELECT amount FROM hr.salaries $$";

/// One case, as written in the case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Unique; `category.what`.
    name: String,
    /// What the case shows, when the name does not say it.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    /// The statement text (for `function_call`, the function's signature).
    sql: String,
    expect: Expect,
    /// Statements run first on the same session (and on the native one).
    #[serde(default)]
    before: Vec<String>,
    /// For `ok`: the exact rows, as a multiset.
    #[serde(default)]
    rows: Option<Rows>,
    /// Extra startup parameters.
    #[serde(default)]
    startup: BTreeMap<String, String>,
    #[serde(default)]
    protocol: Protocol,
    /// For `function_call`: the arguments, in text format.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Refuse,
    Rls,
    RlsOrRefuse,
    Ok,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Protocol {
    /// One Query message.
    #[default]
    Simple,
    /// Parse, Bind, Describe, Execute, Sync with the unnamed statement.
    Extended,
    /// The FunctionCall message.
    FunctionCall,
}

type Rows = Vec<Vec<Option<String>>>;

/// What a statement gave.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Data rows, COPY data lines or a function result, in arrival order.
    Rows(Rows),
    /// The first error.
    Error { code: String, message: String },
}

impl Outcome {
    fn is_refusal(&self) -> bool {
        matches!(self, Outcome::Error { code, .. } if matches!(code.as_str(), "42501" | "0A000" | "42601" | "54001"))
    }

    fn sorted(&self) -> Outcome {
        match self {
            Outcome::Rows(rows) => {
                let mut rows = rows.clone();
                rows.sort();
                Outcome::Rows(rows)
            }
            e => e.clone(),
        }
    }

    /// The same result: rows as a multiset, errors by SQLSTATE.
    fn agrees(&self, other: &Outcome) -> bool {
        match (self.sorted(), other.sorted()) {
            (Outcome::Rows(a), Outcome::Rows(b)) => a == b,
            (Outcome::Error { code: a, .. }, Outcome::Error { code: b, .. }) => a == b,
            _ => false,
        }
    }

    fn show(&self) -> String {
        let text = match self {
            Outcome::Rows(rows) => format!("{} row(s) {:?}", rows.len(), self.sorted()),
            Outcome::Error { code, message } => format!("ERROR {code}: {message}"),
        };
        truncate(&text, 600)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Starts a session with the case's startup parameters; `Ok(Some(error))`
/// when the server refuses it.
fn start_session(
    client: &mut Client,
    user: &str,
    database: &str,
    password: Option<&str>,
    case: &Case,
) -> Result<Option<Outcome>, String> {
    let params: Vec<(&str, &str)> = case
        .startup
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let msgs = client.login(user, database, password, &params)?;
    Ok(msgs.iter().find(|m| m.tag == b'E').map(error_outcome))
}

/// One Query message.
fn simple(client: &mut Client, sql: &str) -> Result<(Outcome, Vec<Msg>), String> {
    let msgs = client.query(sql)?;
    Ok((outcome(&msgs), msgs))
}

/// The unnamed statement and portal, text results.
fn extended(client: &mut Client, sql: &str) -> Result<Vec<Msg>, String> {
    let mut buf = BytesMut::new();
    frontend::parse("", sql, [], &mut buf).map_err(|e| e.to_string())?;
    frontend::bind(
        "",
        "",
        [],
        [],
        |_: (), _: &mut BytesMut| Ok(postgres_protocol::IsNull::No),
        [],
        &mut buf,
    )
    .map_err(|_| "cannot build Bind".to_string())?;
    frontend::describe(b'P', "", &mut buf).map_err(|e| e.to_string())?;
    frontend::execute("", 0, &mut buf).map_err(|e| e.to_string())?;
    frontend::sync(&mut buf);
    client.send(&buf)?;
    client.until_ready()
}

/// The FunctionCall message: text arguments, a text result.
fn function_call(client: &mut Client, oid: u32, args: &[String]) -> Result<Vec<Msg>, String> {
    let mut body = BytesMut::new();
    body.put_u32(oid);
    body.put_i16(1);
    body.put_i16(0);
    body.put_i16(args.len() as i16);
    for a in args {
        body.put_i32(a.len() as i32);
        body.put_slice(a.as_bytes());
    }
    body.put_i16(0);
    let mut buf = BytesMut::new();
    buf.put_u8(b'F');
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(&body);
    client.send(&buf)?;
    client.until_ready()
}

fn error_outcome(m: &Msg) -> Outcome {
    Outcome::Error {
        code: m.field(b'C').unwrap_or_default(),
        message: m.field(b'M').unwrap_or_default(),
    }
}

/// The rows of a response (DataRow, CopyData, FunctionCallResponse), or
/// its first error.
fn outcome(msgs: &[Msg]) -> Outcome {
    let mut rows = Vec::new();
    for m in msgs {
        match m.tag {
            b'E' => return error_outcome(m),
            b'D' => rows.push(m.columns()),
            b'd' => rows.push(vec![Some(String::from_utf8_lossy(&m.body).into_owned())]),
            b'V' => {
                let b = &m.body;
                let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let value = (len >= 0)
                    .then(|| String::from_utf8_lossy(&b[4..4 + len as usize]).into_owned());
                rows.push(vec![value]);
            }
            _ => {}
        }
    }
    Outcome::Rows(rows)
}

/// Values the member must never receive.
struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    /// Every secret found in `bytes`.
    fn found_in(&self, bytes: &[u8]) -> Vec<String> {
        let mut found: Vec<String> = self
            .values
            .iter()
            .filter(|s| contains(bytes, s.as_bytes()))
            .cloned()
            .collect();
        let md5_hash = bytes.windows(35).any(|w| {
            w.starts_with(b"md5")
                && w[3..]
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        });
        if md5_hash {
            found.push("an md5 password hash".into());
        }
        found
    }

    fn in_text(&self, text: &str) -> Option<&String> {
        self.values.iter().find(|s| text.contains(s.as_str()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything the cases run against.
struct Env {
    db: String,
    /// Who the cases run as: `king` with SCRAM, or a token user whose
    /// token gives king's values.
    user: String,
    password: String,
    proxy_port: u16,
    cluster_port: u16,
    native_role: String,
    secrets: Secrets,
    /// Function OIDs by signature, for FunctionCall cases.
    oids: BTreeMap<String, u32>,
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(CASES).unwrap_or_else(|e| panic!("{CASES}: {e}"));
    let cases: Vec<Case> =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{CASES} is malformed: {e}"));
    let mut names = BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.as_str()), "duplicate case {}", c.name);
        assert!(
            CATEGORIES.contains(&category(&c.name)),
            "{}: the name must start with one of {CATEGORIES:?}",
            c.name
        );
        assert!(
            c.rows.is_none() || c.expect == Expect::Ok,
            "{}: `rows` goes with `expect: ok`",
            c.name
        );
        assert!(
            c.args.is_empty() || c.protocol == Protocol::FunctionCall,
            "{}: `args` goes with `protocol: function_call`",
            c.name
        );
    }
    cases
}

fn category(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The secrets of the fixture: every hidden value of the columns below that
/// does not overlap a value the member may see (ignoring case), and is long
/// enough not to turn up by chance; the markers of the suite's own setup;
/// every stored password hash; the other sessions' markers.
fn secrets(admin: &mut postgres::Client, native: &mut postgres::Client) -> Secrets {
    const COLUMNS: &[(&str, &str)] = &[
        ("merchants", "name"),
        ("countries", "name"),
        ("orders", "note"),
        ("orders", "status"),
        ("products", "name"),
        ("orders", "amount::text"),
        ("sales.\"Returns\"", "reason"),
        ("tickets", "title"),
        ("hr.salaries", "amount::text"),
    ];
    let values = |c: &mut postgres::Client, table: &str, column: &str| -> BTreeSet<String> {
        let sql = format!("SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL");
        match c.query(sql.as_str(), &[]) {
            Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
            Err(_) => BTreeSet::new(), // not granted natively: nothing visible
        }
    };
    let mut visible = BTreeSet::new();
    let mut all = BTreeSet::new();
    for (table, column) in COLUMNS {
        visible.extend(values(native, table, column));
        all.extend(values(admin, table, column));
    }
    let visible_lower: Vec<String> = visible.iter().map(|v| v.to_lowercase()).collect();
    let mut out: BTreeSet<String> = all
        .difference(&visible)
        .filter(|h| h.chars().count() >= 6)
        .filter(|h| {
            let h = h.to_lowercase();
            !visible_lower
                .iter()
                .any(|v| v.contains(&h) || h.contains(v.as_str()))
        })
        .cloned()
        .collect();
    for fixed in [
        "Zyxel Secret Ltd",
        "Atlantis Hidden",
        "987654",
        "31337",
        "order-secret-note-4242",
        "return-secret-reason-88",
        "ticket-secret-title-55",
        "424242",
        "lo-secret-bytes-66",
        "fdw-secret-pass-31",
        "fdw-public-pass-32",
        "atk-scram-password-1",
        "atk-md5-password-2",
        "SCRAM-SHA-256$",
        OTHER_SESSION,
        OTHER_MEMBER,
    ] {
        out.insert(fixed.to_string());
    }
    for (_, password) in common::Cluster::AUTH_ROLES {
        out.insert(password.to_string());
    }
    for row in admin
        .query(
            "SELECT rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL",
            &[],
        )
        .unwrap()
    {
        out.insert(row.get(0));
    }
    // As they would stand in SQL text or in escaped output.
    for s in out.clone() {
        if s.contains('\'') {
            out.insert(s.replace('\'', "''"));
        }
        if s.contains('\\') {
            out.insert(s.replace('\\', "\\\\"));
        }
    }
    Secrets {
        values: out.into_iter().collect(),
    }
}

/// A fingerprint of everything a case could change: the fixture's data,
/// the sequence, large objects, and the catalog objects and settings a
/// write, DDL or server-state change would leave behind.
fn fingerprint(db: &str) -> BTreeMap<String, String> {
    let c = common::cluster();
    let mut admin = c.connect(db);
    let mut checks: Vec<(String, String)> = Vec::new();
    for table in [
        "countries",
        "merchants",
        "orders",
        "products",
        "tickets",
        "sales.\"Returns\"",
        "hr.salaries",
    ] {
        checks.push((
            format!("table {table}"),
            format!(
                "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
            ),
        ));
    }
    // (what, relation, the columns that identify and describe each row).
    let catalog: &[(&str, &str, &str)] = &[
        ("sequence atk_seq", "atk_seq", "last_value, is_called"),
        (
            "large objects",
            "pg_largeobject",
            "loid, pageno, encode(data, 'hex')",
        ),
        (
            "large object metadata",
            "pg_largeobject_metadata",
            "oid, lomacl",
        ),
        (
            "relations",
            "pg_class",
            "oid, relname, relkind, relnamespace, relacl, relrowsecurity, relforcerowsecurity",
        ),
        (
            "columns",
            "pg_attribute",
            "attrelid, attnum, attname, atttypid, attisdropped",
        ),
        (
            "roles",
            "pg_authid",
            "oid, rolname, rolsuper, rolbypassrls, rolcanlogin, rolpassword",
        ),
        ("role memberships", "pg_auth_members", "roleid, member"),
        (
            "role settings",
            "pg_db_role_setting",
            "setdatabase, setrole, setconfig",
        ),
        ("functions", "pg_proc", "oid, proname, prosecdef, proacl"),
        ("namespaces", "pg_namespace", "oid, nspname, nspacl"),
        (
            "policies",
            "pg_policy",
            "oid, polname, pg_get_expr(polqual, polrelid)",
        ),
        ("types", "pg_type", "oid, typname"),
        ("operators", "pg_operator", "oid, oprname"),
        ("casts", "pg_cast", "oid, castfunc"),
        ("constraints", "pg_constraint", "oid, conname"),
        ("triggers", "pg_trigger", "oid, tgname, tgenabled"),
        ("event triggers", "pg_event_trigger", "oid, evtname"),
        ("rules", "pg_rewrite", "oid, rulename"),
        ("extensions", "pg_extension", "oid, extname, extversion"),
        ("statistics objects", "pg_statistic_ext", "oid, stxname"),
        (
            "comments",
            "pg_description",
            "objoid, classoid, objsubid, description",
        ),
        (
            "security labels",
            "pg_seclabel",
            "objoid, classoid, objsubid, label",
        ),
        (
            "foreign servers",
            "pg_foreign_server",
            "oid, srvname, srvoptions",
        ),
        ("user mappings", "pg_user_mapping", "oid, umuser, umoptions"),
        ("default privileges", "pg_default_acl", "oid, defaclacl"),
        ("databases", "pg_database", "oid, datname, datacl"),
        (
            "configuration files",
            "pg_file_settings",
            "sourcefile, sourceline, name, setting",
        ),
        ("prepared transactions", "pg_prepared_xacts", "gid"),
        ("replication slots", "pg_replication_slots", "slot_name"),
        ("subscriptions", "pg_subscription", "oid, subname"),
        ("publications", "pg_publication", "oid, pubname"),
    ];
    checks.extend(catalog.iter().map(|(label, relation, columns)| {
        (
            label.to_string(),
            format!(
                "SELECT count(*) || ':' || md5(coalesce(string_agg(x, ',' ORDER BY x), '')) \
                 FROM (SELECT concat_ws('/', {columns}) AS x FROM {relation}) r"
            ),
        )
    }));
    checks
        .into_iter()
        .map(|(label, sql)| {
            let value: String = admin
                .query_one(sql.as_str(), &[])
                .unwrap_or_else(|e| panic!("{label}: {e:?}"))
                .get(0);
            (label, value)
        })
        .collect()
}

/// Runs the case's statement on a logged-in session.
fn run_statement(
    client: &mut Client,
    case: &Case,
    env: &Env,
) -> Result<(Outcome, Vec<Msg>), String> {
    let msgs = match case.protocol {
        Protocol::Simple => client.query(&case.sql)?,
        Protocol::Extended => extended(client, &case.sql)?,
        Protocol::FunctionCall => function_call(client, env.oids[&case.sql], &case.args)?,
    };
    Ok((outcome(&msgs), msgs))
}

/// What native RLS gives: the same before-statements and statement on a
/// direct connection as the member's native-RLS role.
fn native(case: &Case, env: &Env) -> Result<Outcome, String> {
    let mut client = Client::connect(env.cluster_port)?;
    if let Some(e) = start_session(&mut client, &env.native_role, &env.db, None, case)? {
        return Err(format!("the native session was refused: {}", e.show()));
    }
    for b in &case.before {
        let (out, _) = simple(&mut client, b)?;
        if let Outcome::Error { .. } = out {
            return Err(format!("`{b}` fails natively: {}", out.show()));
        }
    }
    let (out, _) = run_statement(&mut client, case, env)?;
    client.terminate();
    Ok(out)
}

/// Runs one case; the problems found (none when it passes).
fn check(case: &Case, env: &Env) -> Vec<String> {
    let mut problems = Vec::new();
    let mut member = match Client::connect(env.proxy_port) {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot reach rowgate: {e}")],
    };
    check_session(case, env, &mut member, &mut problems);
    member.terminate();
    // Whatever happened, nothing the member may not see reached them.
    for secret in env.secrets.found_in(&member.received) {
        problems.push(format!("LEAK: the client received {secret:?}"));
    }
    problems
}

fn check_session(case: &Case, env: &Env, member: &mut Client, problems: &mut Vec<String>) {
    match start_session(member, &env.user, &env.db, Some(&env.password), case) {
        Err(e) => return problems.push(format!("login through rowgate: {e}")),
        Ok(Some(refused)) => {
            if !(case.expect == Expect::Refuse && refused.is_refusal()) {
                problems.push(format!(
                    "the session was refused at startup: {}",
                    refused.show()
                ));
            }
            return;
        }
        Ok(None) => {}
    }
    for b in &case.before {
        match simple(member, b) {
            Ok((Outcome::Error { code, message }, _)) => {
                return problems.push(format!(
                    "`{b}` failed through rowgate: ERROR {code}: {message}"
                ))
            }
            Ok(_) => {}
            Err(e) => return problems.push(format!("`{b}` through rowgate: {e}")),
        }
    }
    let (got, msgs) = match run_statement(member, case, env) {
        Ok(r) => r,
        Err(e) => return problems.push(format!("through rowgate: {e}")),
    };
    match case.expect {
        Expect::Refuse => {
            if !got.is_refusal() {
                problems.push(format!("not refused; rowgate gave {}", got.show()));
            } else if msgs.iter().any(|m| matches!(m.tag, b'D' | b'd' | b'V')) {
                problems.push("refused, but data was sent before the refusal".into());
            }
        }
        Expect::Ok => match (&got, &rows_for(&case.rows, &env.user)) {
            (Outcome::Error { .. }, _) => {
                problems.push(format!("must succeed; rowgate gave {}", got.show()))
            }
            (Outcome::Rows(_), Some(rows)) if !got.agrees(&Outcome::Rows(rows.clone())) => problems
                .push(format!(
                    "rows differ\n      rowgate:  {}\n      expected: {}",
                    got.show(),
                    Outcome::Rows(rows.clone()).show()
                )),
            _ => {}
        },
        Expect::Rls | Expect::RlsOrRefuse => {
            if !(case.expect == Expect::RlsOrRefuse && got.is_refusal()) {
                match native(case, env) {
                    Ok(oracle) if got.agrees(&oracle) => {}
                    Ok(oracle) => problems.push(format!(
                        "differs from native RLS\n      rowgate: {}\n      native:  {}",
                        got.show(),
                        oracle.show()
                    )),
                    Err(e) => problems.push(format!("the case is broken natively: {e}")),
                }
            }
        }
    }
    // Reads run again in the same session: from the second run rowgate
    // prepares the statement upstream automatically (the simple protocol's
    // numbers as parameters), and the third only executes it. Each must
    // give what the first gave. (Not inside a failed transaction block.)
    // (The session's pg_prepared_statements shows rowgate's statement from
    // the second run on, as documented.)
    let lower = case.sql.trim_start().to_ascii_lowercase();
    let read = ["select", "with", "("].iter().any(|k| lower.starts_with(k))
        && !lower.contains("pg_prepared_statements");
    if read
        && matches!(case.protocol, Protocol::Simple | Protocol::Extended)
        && member.status != b'E'
    {
        for run in 2..=3 {
            match run_statement(member, case, env) {
                Ok((again, _)) if again.agrees(&got) => {}
                Ok((again, _)) => problems.push(format!(
                    "run {run} differs from the first: {}\n      run {run}: {}\n      first: {}",
                    case.sql,
                    again.show(),
                    got.show()
                )),
                Err(e) => problems.push(format!("run {run} through rowgate: {e}")),
            }
            if member.status == b'E' {
                break;
            }
        }
    }
    // The session stays usable.
    if member.status != b'I' {
        let _ = member.query("ROLLBACK");
    }
    match simple(member, "SELECT 1") {
        Ok((Outcome::Rows(rows), _)) if rows == vec![vec![Some("1".to_string())]] => {}
        Ok((other, _)) => problems.push(format!(
            "the session is not usable afterwards: SELECT 1 gave {}",
            other.show()
        )),
        Err(e) => problems.push(format!("the session is not usable afterwards: {e}")),
    }
}

/// Two sessions that run throughout the suite: a direct one, and another
/// member's through rowgate (whose rewritten text holds that member's
/// attribute values). Their query texts must never reach the attacker.
struct OtherSessions {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl OtherSessions {
    fn start(db: &str, proxy: &common::Proxy) -> OtherSessions {
        let c = common::cluster();
        let direct = c.url(db, "postgres");
        let member = proxy.url(db, "multi", rls::PASSWORD);
        let queries = [
            (
                direct,
                format!("SELECT pg_sleep(600) /* {OTHER_SESSION} */"),
            ),
            (
                member,
                format!("SELECT pg_sleep(600), '{OTHER_MEMBER}', count(*) FROM merchants"),
            ),
        ];
        let threads = queries
            .into_iter()
            .map(|(url, sql)| {
                std::thread::spawn(move || {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    // Ends with an error when cancelled.
                    let _ = client.simple_query(&sql);
                })
            })
            .collect();
        let mut admin = c.connect(db);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                     AND (query LIKE '%' || $1 || '%' OR query LIKE '%' || $2 || '%') \
                     AND pid <> pg_backend_pid()",
                    &[&OTHER_SESSION, &OTHER_MEMBER],
                )
                .unwrap()
                .get(0);
            if running == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the other sessions did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OtherSessions { threads }
    }

    fn stop(self, db: &str) {
        let mut admin = common::cluster().connect(db);
        admin
            .query(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                 WHERE (query LIKE '%' || $1 || '%' OR query LIKE '%' || $2 || '%') \
                 AND pid <> pg_backend_pid()",
                &[&OTHER_SESSION, &OTHER_MEMBER],
            )
            .unwrap();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The expected rows of a case for the session's user: `king` in them is
/// the login name.
fn rows_for(rows: &Option<Rows>, user: &str) -> Option<Rows> {
    rows.as_ref().map(|rows| {
        rows.iter()
            .map(|row| {
                row.iter()
                    .map(|v| match v {
                        Some(v) if v == MEMBER => Some(user.to_string()),
                        other => other.clone(),
                    })
                    .collect()
            })
            .collect()
    })
}

/// The token login's issuer and integration.
const TOKEN_SECRET: &str = "attack-suite-token-secret-0123456789-abcdef";
const TOKEN_CONFIG: &str = "tokens:
  issuers:
    suite: { issuer: https://suite.test, audience: rowgate, algorithms: [HS256], secret: attack-suite-token-secret-0123456789-abcdef }
  plaintext: local
";
const TOKEN_POLICY: &str = "integrations:
  attack_king:
    tables: [public.countries, public.merchants, public.orders, public.products, sales.*]
    attributes: { country: [Vietnam], merchant: [King Inc], tier: All }
";
const TOKEN_USER: &str = "tk_king";

fn suite_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://suite.test", "aud": "rowgate", "sub": TOKEN_USER,
        "iat": now, "exp": now + 3600, "integration": "attack_king",
    });
    let key = jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Every case runs twice: as `king` (SCRAM), and as a token user whose
/// integration gives king's grants and values, so that a token session is
/// hardened as a declared member's is.
#[test]
fn no_attack_leaks_a_row_or_a_secret_and_the_data_is_unchanged() {
    let started = Instant::now();
    let cases = load_cases();
    let c = common::cluster();
    let db = c.create_database("attacks");
    // The native-RLS roles; their connections are not needed.
    drop(rls::setup(&db));
    let mut admin = c.connect(&db);
    let setup = std::fs::read_to_string(SETUP).unwrap();
    admin.batch_execute(&setup).unwrap_or_else(|e| {
        panic!("{SETUP} failed (are PostgreSQL's contrib extensions dblink and pageinspect installed?): {e}")
    });

    // The policy: the differential fixture's, plus the function allowlist.
    let policies = tempfile::tempdir().unwrap();
    std::fs::copy(rls::POLICY, policies.path().join("policy.yaml")).unwrap();
    std::fs::copy(FUNCTIONS, policies.path().join("functions.yaml")).unwrap();
    std::fs::write(policies.path().join("tokens.yaml"), TOKEN_POLICY).unwrap();
    let proxy = common::Proxy::start(policies.path(), TOKEN_CONFIG);
    let token = suite_token();
    let logins = [
        (MEMBER.to_string(), rls::PASSWORD.to_string()),
        (TOKEN_USER.to_string(), token.clone()),
    ];

    // The other member's session makes rowgate read the catalog; the
    // function created next is newer than that snapshot.
    let others = OtherSessions::start(&db, &proxy);
    admin.batch_execute(LATE_FUNCTION).unwrap();

    let native_role = format!("{db}_{MEMBER}");
    let mut native_client = postgres::Client::connect(&c.url(&db, &native_role), postgres::NoTls)
        .expect("the native role connects");
    let mut secrets = secrets(&mut admin, &mut native_client);
    secrets.values.push(TOKEN_SECRET.to_string());
    secrets.values.push(token);
    drop(native_client);
    for case in &cases {
        let texts = std::iter::once(&case.sql)
            .chain(&case.before)
            .chain(&case.args)
            .chain(case.startup.values());
        for text in texts {
            if let Some(s) = secrets.in_text(text) {
                panic!("case {} itself holds the secret {s:?}", case.name);
            }
        }
    }
    let mut oids = BTreeMap::new();
    for case in cases
        .iter()
        .filter(|c| c.protocol == Protocol::FunctionCall)
    {
        let oid: u32 = admin
            .query_one("SELECT $1::text::regprocedure::oid", &[&case.sql])
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))
            .get(0);
        oids.insert(case.sql.clone(), oid);
    }
    let mut env = Env {
        db: db.clone(),
        user: String::new(),
        password: String::new(),
        proxy_port: proxy.port,
        cluster_port: c.port,
        native_role,
        secrets,
        oids,
    };
    let before = fingerprint(&db);

    let mut failures = Vec::new();
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut checked = 0;
    for (user, password) in logins {
        env.user = user;
        env.password = password;
        for case in &cases {
            if env.user == MEMBER {
                let entry = counts.entry(category(&case.name)).or_default();
                if case.expect == Expect::Refuse {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
            checked += 1;
            let problems = check(case, &env);
            if !problems.is_empty() {
                failures.push(format!(
                    "{} (as {}): {}\n    {}",
                    case.name,
                    env.user,
                    case.sql.escape_debug(),
                    problems.join("\n    ")
                ));
            }
        }
    }
    assert_eq!(checked, 2 * cases.len());

    others.stop(&db);
    let after = fingerprint(&db);
    for (label, value) in &before {
        if after.get(label) != Some(value) {
            failures.push(format!(
                "the data changed: {label} was {value}, is now {:?}",
                after.get(label)
            ));
        }
    }

    let summary: Vec<String> = counts
        .iter()
        .map(|(cat, (refuse, other))| format!("{cat}: {refuse} refused + {other} answered"))
        .collect();
    println!(
        "{} attack cases in {:.1}s\n  {}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        summary.join("\n  ")
    );
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    for cat in CATEGORIES {
        let (refuse, other) = counts.get(cat).copied().unwrap_or_default();
        assert!(
            refuse > 0 || *cat == "side_channels",
            "no refusal case in {cat}"
        );
        assert!(other > 0, "no harmless neighbour in {cat}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} attack cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
