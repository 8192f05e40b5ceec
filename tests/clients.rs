//! Real clients through `rowgate serve`, against the real PostgreSQL: psql
//! and its meta-commands, tokio-postgres (simple and extended query, every
//! common type, cancel), psycopg 3, node-postgres, pgJDBC, pgbench in every
//! query mode, and authentication on both sides of the proxy.
//!
//! Each test checks what a user of that client would notice: rows filtered
//! by the policy (king sees one merchant where the analyst sees eleven),
//! refusals as SQLSTATE 42501 with the session still usable, values equal to
//! those of a direct connection. The helper programs under `tests/clients/`
//! run every step through rowgate and again directly as the user's native
//! row-level-security role (the oracle of `common::rls`), and print
//! `name=value` facts that the tests here assert on.
//!
//! A missing client program is a test failure that says what to install,
//! never a silent skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::programs::{command, facts, on_path, run, show};
use common::rls::{self, PASSWORD};
use common::RawValue;
use common::{Gate, UpstreamAuth};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

const FIXTURES: &str = "tests/fixtures/clients";

// ---------------------------------------------------------------------------
// The warehouse, the proxy, and the client programs.

/// The database every test but pgbench's reads: the differential schema with
/// its native RLS roles (`{db}_{user}`, the oracle), plus the `types` table.
fn warehouse() -> &'static str {
    static DB: OnceLock<String> = OnceLock::new();
    DB.get_or_init(|| {
        let db = common::cluster().create_database("clients");
        drop(rls::setup(&db));
        let schema = std::fs::read_to_string(Path::new(FIXTURES).join("schema.sql")).unwrap();
        common::cluster()
            .connect(&db)
            .batch_execute(&schema)
            .unwrap();
        db
    })
}

/// A connection string for the native RLS role of a fixture user.
fn native_url(user: &str) -> String {
    common::cluster().url(warehouse(), &format!("{}_{user}", warehouse()))
}

impl Gate {
    fn start() -> Gate {
        Self::start_with(UpstreamAuth::TRUST)
    }

    fn start_with(auth: UpstreamAuth) -> Gate {
        let fixtures = Path::new(FIXTURES);
        // Each client is compared with a native role, which lists every
        // relation: `catalog: native`. (`catalog: hide` is tested with the
        // tools' own SQL in tests/tools.rs and with drivers in
        // tests/bi_drivers.rs.)
        Gate::with_policies(
            &[
                (Path::new(rls::POLICY).to_path_buf(), "differential.yaml"),
                (fixtures.join("types.yaml"), "types.yaml"),
                (fixtures.join("pgbench.yaml"), "pgbench.yaml"),
            ],
            "catalog: native\n",
            auth,
        )
    }

    /// A libpq connection string through rowgate.
    fn url_for(&self, db: &str, user: &str) -> String {
        self.url(db, user, PASSWORD)
    }

    /// The last lines of the proxy's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A PostgreSQL client program beside the server binaries the harness uses.
fn pg_client(name: &str) -> PathBuf {
    let bin = common::find_pg_bin().unwrap_or_else(|e| panic!("{e}"));
    let path = bin.join(name);
    assert!(
        path.is_file(),
        "`{name}` is not beside the PostgreSQL server binaries in {}: install PostgreSQL's \
         client programs (Debian/Ubuntu: `apt-get install postgresql-client`)",
        bin.display()
    );
    path
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
                    "{fact}: through rowgate {:?}, but the native oracle saw something else",
                    facts.get(fact)
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

// ---------------------------------------------------------------------------
// psql

fn psql(gate: &Gate, user: &str, args: &[&str]) -> Output {
    let port = gate.port.to_string();
    let mut c = command(&pg_client("psql"));
    c.env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "--no-password", "-h", "127.0.0.1", "-p", &port])
        .args(["-U", user, "-d", warehouse(), "-v", "VERBOSITY=verbose"])
        .args(args);
    run(c, Duration::from_secs(30))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn psql_queries_are_filtered_and_a_refused_statement_refuses_its_whole_string() {
    let gate = Gate::start();
    let tuples = |user: &str, sql: &str| {
        let out = psql(
            &gate,
            user,
            &["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        );
        assert!(
            out.status.success(),
            "psql as {user}: {sql}\n{}\n{}",
            show(&out),
            gate.log_tail()
        );
        stdout(&out)
    };
    assert_eq!(tuples("king", "SELECT count(*) FROM merchants"), "1");
    assert_eq!(tuples("analyst", "SELECT count(*) FROM merchants"), "11");
    assert_eq!(
        tuples("king", "SELECT id, name FROM merchants ORDER BY id"),
        "1|King Inc"
    );
    // Several statements in one string, all allowed: every result shows.
    assert_eq!(
        tuples(
            "king",
            "SELECT count(*) FROM merchants; SELECT string_agg(id::text, ',' ORDER BY id) FROM orders"
        ),
        "1\n11,22,33,44,55"
    );
    // The allowed half of the strings below runs on its own.
    assert_eq!(
        tuples("king", "SELECT 'first ran', pg_sleep(0.01)"),
        "first ran|"
    );

    // One refused statement refuses the whole string, wherever it stands:
    // nothing of it runs (the pg_sleep would take 3 s, its row would print).
    for sql in [
        "SELECT 'first ran', pg_sleep(3); SELECT * FROM hr.salaries",
        "SELECT * FROM hr.salaries; SELECT 'second ran', pg_sleep(3)",
        "SELECT 'first ran', pg_sleep(3); SELECT * FROM hr.salaries; SELECT 'third ran'",
    ] {
        let started = Instant::now();
        let out = psql(&gate, "king", &["-A", "-t", "-c", sql]);
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("42501")
                && stderr.contains("hr.salaries")
                && !stdout(&out).contains("ran")
                && elapsed < Duration::from_secs(3),
            "psql -c {sql:?} should be refused whole (42501, no output, no pg_sleep), took {elapsed:?}\n{}\n{}",
            show(&out),
            gate.log_tail()
        );
    }

    // The session stays usable after a refusal: one psql, several -c.
    let out = psql(
        &gate,
        "king",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT * FROM hr.salaries",
            "-c",
            "SELECT count(*) FROM merchants",
            "-c",
            "SELECT count(*) FROM orders",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR:  42501") && stdout(&out) == "1\n5",
        "psql after a refusal:\n{}\n{}",
        show(&out),
        gate.log_tail()
    );
}

#[test]
fn psql_scripts_with_savepoints_cursors_and_copy_are_filtered() {
    let gate = Gate::start();
    // ON_ERROR_ROLLBACK wraps each statement in a savepoint; FETCH_COUNT
    // reads results through a cursor; \copy and COPY stream rows out.
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        "\\set ON_ERROR_ROLLBACK on\n\
         \\set FETCH_COUNT 2\n\
         BEGIN;\n\
         SELECT * FROM hr.salaries;\n\
         SELECT count(*) FROM merchants;\n\
         SELECT id FROM orders ORDER BY id;\n\
         COMMIT;\n\
         \\unset FETCH_COUNT\n\
         \\copy merchants TO STDOUT\n\
         \\copy (SELECT id FROM orders WHERE id > 40) TO STDOUT\n\
         COPY countries (id, name) TO STDOUT;\n\
         \\copy merchants (id, name) TO STDOUT WITH (FORMAT csv, HEADER)\n\
         SELECT name, created FROM merchants \\gdesc\n",
    )
    .unwrap();
    let path = script.path().to_str().unwrap();
    let out = psql(&gate, "king", &["-q", "-A", "-t", "-f", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = "1\n11\n22\n33\n44\n55\n\
                    1\tKing Inc\t1\t1\t2020-01-01\n\
                    44\n55\n\
                    1\tVietnam\n\
                    id,name\n1,King Inc\n\
                    name|text\ncreated|date";
    assert!(
        out.status.success()
            && stdout(&out) == expected
            && stderr.matches("ERROR:").count() == 1
            && stderr.contains("42501"),
        "psql -f as king, expected stdout:\n{expected}\n{}\n{}",
        show(&out),
        gate.log_tail()
    );
}

#[test]
fn psql_meta_commands_work_for_a_member() {
    let gate = Gate::start();
    let db = warehouse();
    let commands: [(&str, &[&str]); 5] = [
        (
            "\\dt",
            &[
                "countries",
                "merchants",
                "orders",
                "products",
                "tickets",
                "types",
            ],
        ),
        (
            "\\d merchants",
            &[
                "Table \"public.merchants\"",
                "country_id",
                "tier",
                "created",
                "merchants_pkey",
            ],
        ),
        ("\\dn", &["public", "sales", "hr"]),
        ("\\l", &[db]),
        ("\\du", &["postgres"]),
    ];
    let mut args = vec!["-v", "ON_ERROR_STOP=1"];
    let markers: Vec<String> = (0..commands.len())
        .map(|i| format!("\\echo ==={i}==="))
        .collect();
    for (i, (meta, _)) in commands.iter().enumerate() {
        args.extend(["-c", markers[i].as_str(), "-c", meta]);
    }
    let out = psql(&gate, "king", &args);
    assert!(
        out.status.success(),
        "psql meta-commands as king:\n{}\n{}",
        show(&out),
        gate.log_tail()
    );
    let text = stdout(&out);
    let mut sections = text.split("===").skip(1);
    for (i, (meta, expected)) in commands.iter().enumerate() {
        let index = sections.next();
        let body = sections.next().unwrap_or_default();
        assert_eq!(index, Some(i.to_string().as_str()), "{text}");
        for want in *expected {
            assert!(
                body.contains(want),
                "{meta} as king should list {want:?}; it printed:\n{body}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// tokio-postgres

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn simple(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Rows as (column name, type, raw bytes) cells.
type RawRows = Vec<Vec<(String, Type, Option<RawValue>)>>;

fn raw_rows(rows: &[tokio_postgres::Row]) -> RawRows {
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_string(), c.type_().clone(), row.get(i)))
                .collect()
        })
        .collect()
}

#[test]
fn tokio_postgres_simple_and_extended_queries_are_filtered() {
    let gate = Gate::start();
    let db = warehouse();
    runtime().block_on(async {
        let king = connect(&gate.url_for(db, "king")).await.unwrap();
        let analyst = connect(&gate.url_for(db, "analyst")).await.unwrap();

        // Simple query protocol.
        let count = "SELECT count(*) FROM merchants";
        assert_eq!(simple(&king, count).await, [[Some("1".into())]]);
        assert_eq!(simple(&analyst, count).await, [[Some("11".into())]]);

        // Columns are described as PostgreSQL describes the query as
        // written: names, types, and the table column each comes from.
        let direct = connect(&common::cluster().url(db, "postgres"))
            .await
            .unwrap();
        for sql in [
            "SELECT m.id, m.name AS merchant, o.amount, o.placed_at, c.name \
             FROM orders o JOIN merchants m ON m.id = o.merchant_id \
             LEFT JOIN countries c ON c.id = m.country_id",
            "SELECT * FROM sales.\"Returns\" r WHERE r.id > $1",
            "SELECT count(*), max(amount) FROM orders",
        ] {
            assert_eq!(
                describe(&king, sql).await,
                describe(&direct, sql).await,
                "{sql} is described differently through rowgate"
            );
        }

        // Extended protocol, with parameters, binary results.
        let by_ids = "SELECT id, name FROM merchants WHERE id = ANY($1) ORDER BY id";
        let ids = vec![1i32, 2, 4, 7, 11];
        let names = |rows: Vec<tokio_postgres::Row>| {
            rows.iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, Option<String>>(1)))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(king.query(by_ids, &[&ids]).await.unwrap()),
            [(1, Some("King Inc".to_string()))]
        );
        assert_eq!(analyst.query(by_ids, &[&ids]).await.unwrap().len(), 5);

        // A named statement, bound again with other values.
        let over = king
            .prepare("SELECT count(*) FROM orders WHERE id > $1")
            .await
            .unwrap();
        let mut counts = Vec::new();
        for n in [0i32, 30, 50, 0] {
            counts.push(king.query_one(&over, &[&n]).await.unwrap().get::<_, i64>(0));
        }
        assert_eq!(counts, [5, 3, 1, 5]);

        // Refusals, in both protocols; the session goes on.
        let e = king
            .query("SELECT * FROM hr.salaries WHERE amount > $1", &[&0i32])
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some("42501"), "{e:?}");
        let e = king
            .simple_query("SELECT * FROM hr.salaries")
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some("42501"), "{e:?}");
        assert!(
            e.as_db_error().unwrap().message().contains("hr.salaries"),
            "{e:?}"
        );
        assert_eq!(
            king.query_one(&over, &[&0i32])
                .await
                .unwrap()
                .get::<_, i64>(0),
            5
        );

        // Pipelined: a refusal between two reads fails alone.
        let (a, b, c) = tokio::join!(
            king.query(&over, &[&0i32]),
            king.query("SELECT amount FROM hr.salaries", &[]),
            king.query_one("SELECT count(*) FROM countries", &[]),
        );
        assert_eq!(a.unwrap()[0].get::<_, i64>(0), 5);
        assert_eq!(code(&b.unwrap_err()), Some("42501"));
        assert_eq!(c.unwrap().get::<_, i64>(0), 1);

        // A portal read in row-limited Executes (PortalSuspended between).
        let mut king = king;
        let tx = king.transaction().await.unwrap();
        let statement = tx
            .prepare("SELECT id FROM orders ORDER BY id")
            .await
            .unwrap();
        let portal = tx.bind(&statement, &[]).await.unwrap();
        let mut chunks = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 2).await.unwrap();
            if rows.is_empty() {
                break;
            }
            chunks.push(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>());
        }
        tx.commit().await.unwrap();
        assert_eq!(chunks, [vec![11, 22], vec![33, 44], vec![55]]);
    });
}

/// Literals of every common type; `$1..$3` echo parameters back.
const LITERALS: &str = "SELECT 1::int2 AS i2, (-2147483648)::int4 AS i4, 9223372036854775807::int8 AS i8,
       123456789012345678901234567890.123456789::numeric AS num, 'NaN'::numeric AS nan,
       1.5::float4 AS f4, 'Infinity'::float8 AS inf, -0.0::float8 AS negzero, 1e-300::float8 AS tiny,
       'héllo ''world'' ✓'::text AS t, 'ab'::char(4) AS ch, 'v'::varchar AS vc, '\\x00deadbeef'::bytea AS b,
       true AS bo, false AS bf, '2024-02-29'::date AS d, '294276-12-31 23:59:59.999999'::timestamp AS ts,
       '2000-01-01 00:00:00+14'::timestamptz AS tstz, '-1 year -2 days +03:04:05.000006'::interval AS iv,
       'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid AS u, '{\"a\": [1, 2.5, null], \"b\": \"x\"}'::json AS j,
       '{\"b\": 1, \"a\": [true, null]}'::jsonb AS jb, ARRAY[[1, 2], [3, NULL]]::int8[] AS a2,
       ARRAY['x', NULL, 'y z', '']::text[] AS at, '{}'::int4[] AS empty, ARRAY[1.5, -2]::numeric[] AS an,
       NULL::int4 AS n4, NULL::text AS nt, NULL::jsonb AS njb, NULL AS unknown_null,
       '12:34:56.789'::time AS tm, '1.2.3.4/32'::inet AS ip, 'x'::\"char\" AS c1, 42::oid AS o,
       int4range(1, 10) AS r, $1::text AS p1, $2::bytea AS p2, $3::int8 AS p3";

/// What a statement's RowDescription says of each column: name, type, the
/// table and column it comes from, type modifier. Clients show these (JDBC's
/// ResultSetMetaData, BI tools' column lists).
type Described = Vec<(String, Type, Option<u32>, Option<i16>, i32)>;

async fn describe(client: &tokio_postgres::Client, sql: &str) -> Described {
    let statement = client
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    statement
        .columns()
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                c.type_().clone(),
                c.table_oid(),
                c.column_id(),
                c.type_modifier(),
            )
        })
        .collect()
}

#[test]
fn tokio_postgres_round_trips_every_common_type_unchanged() {
    let gate = Gate::start();
    let db = warehouse();
    runtime().block_on(async {
        let through = connect(&gate.url_for(db, "typist")).await.unwrap();
        let direct = connect(&common::cluster().url(db, "postgres"))
            .await
            .unwrap();
        let text = "It's ✓ \\ \"q\"".to_string();
        let bytes = vec![0u8, 1, 255, b'\\', b'\''];
        let big = i64::MIN;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&text, &bytes, &big];

        // Literals: binary results byte for byte, text results as text.
        let a = raw_rows(&through.query(LITERALS, &params).await.unwrap());
        let b = raw_rows(&direct.query(LITERALS, &params).await.unwrap());
        assert_eq!(a.len(), 1);
        assert_eq!(a, b, "literals differ through rowgate");
        let literals_text = LITERALS
            .replace("$1::text", "'p'::text")
            .replace("$2::bytea", "'\\x01'::bytea")
            .replace("$3::int8", "3::int8");
        assert_eq!(
            simple(&through, &literals_text).await,
            simple(&direct, &literals_text).await
        );

        // The table: the member sees its own rows only, with every value
        // exactly as a direct connection reads it.
        let mine = raw_rows(
            &through
                .query("SELECT * FROM types ORDER BY id", &[])
                .await
                .unwrap(),
        );
        let direct_sql = "SELECT * FROM types WHERE owner = 'typist' ORDER BY id";
        let expected = raw_rows(&direct.query(direct_sql, &[]).await.unwrap());
        assert_eq!(mine.len(), 3, "typist owns rows 1-3");
        assert_eq!(mine, expected, "the types table differs through rowgate");
        assert_eq!(
            describe(&through, "SELECT * FROM types").await,
            describe(&direct, "SELECT * FROM types").await,
            "the types table's columns are described differently through rowgate"
        );
        assert_eq!(
            simple(&through, "SELECT * FROM types ORDER BY id").await,
            simple(&direct, direct_sql).await
        );
        assert_eq!(
            direct
                .query_one("SELECT count(*) FROM types", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            5,
            "the rows typist must not see are there"
        );

        // Typed values, decoded as an application would.
        let rows = through
            .query(
                "SELECT i2, i4, i8, f4, f8, t, vc, ch, b, bo, ai, at FROM types ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        let first = &rows[0];
        assert_eq!(first.get::<_, i16>("i2"), i16::MIN);
        assert_eq!(first.get::<_, i32>("i4"), i32::MAX);
        assert_eq!(first.get::<_, i64>("i8"), i64::MIN);
        assert_eq!(first.get::<_, f32>("f4"), 3.25);
        assert_eq!(first.get::<_, f64>("f8"), -1.5e300);
        assert_eq!(
            first.get::<_, &str>("t"),
            "héllo 'quoted' \"double\" \\back"
        );
        assert_eq!(first.get::<_, &str>("vc"), "varchar");
        assert_eq!(first.get::<_, &str>("ch"), "ab ");
        assert_eq!(first.get::<_, Vec<u8>>("b"), [0x00, 0xff, 0x10]);
        assert!(first.get::<_, bool>("bo"));
        assert_eq!(
            first.get::<_, Vec<Option<i32>>>("ai"),
            [Some(1), None, Some(-3)]
        );
        assert_eq!(
            first.get::<_, Vec<Option<String>>>("at"),
            [
                Some("a b".into()),
                Some(String::new()),
                None,
                Some("q\"uote".into())
            ]
        );
        assert!(rows[1].get::<_, f32>("f4").is_infinite());
        assert!(rows[2].get::<_, Option<i64>>("i8").is_none());
        assert!(rows[2].get::<_, Option<Vec<u8>>>("b").is_none());

        // Text results of the special values, as psql would print them.
        let special = simple(
            &through,
            "SELECT num, f8, d, ts, tstz::date, iv, u, jb FROM types WHERE id = 2",
        )
        .await;
        assert_eq!(
            special,
            [[
                Some("NaN".to_string()),
                Some("-Infinity".into()),
                Some("infinity".into()),
                Some("-infinity".into()),
                Some("infinity".into()),
                Some("-178000000 years".into()),
                Some("00000000-0000-0000-0000-000000000000".into()),
                Some("{}".into()),
            ]]
        );
    });
}

#[test]
fn tokio_postgres_cancel_stops_a_running_query_and_the_session_goes_on() {
    let gate = Gate::start();
    let db = warehouse();
    runtime().block_on(async {
        let king = connect(&gate.url_for(db, "king")).await.unwrap();
        let token = king.cancel_token();
        for extended in [false, true] {
            let started = Instant::now();
            let sleep = async {
                if extended {
                    king.query("SELECT pg_sleep($1)", &[&30f64])
                        .await
                        .map(|_| ())
                } else {
                    king.simple_query("SELECT pg_sleep(30)").await.map(|_| ())
                }
            };
            let cancel = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                token.cancel_query(NoTls).await
            };
            let (slept, cancelled) = tokio::time::timeout(Duration::from_secs(15), async {
                tokio::join!(sleep, cancel)
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a cancelled pg_sleep(30) still ran after 15 s (extended: {extended})\n{}",
                    gate.log_tail()
                )
            });
            cancelled.unwrap_or_else(|e| panic!("cannot send the cancel request: {e:?}"));
            let e = slept.expect_err("pg_sleep(30) should have been cancelled");
            assert_eq!(code(&e), Some("57014"), "extended: {extended}: {e:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the cancel took {:?} (extended: {extended})",
                started.elapsed()
            );
            assert_eq!(
                simple(&king, "SELECT count(*) FROM merchants").await,
                [[Some("1".into())]]
            );
        }
    });
}

// ---------------------------------------------------------------------------
// psycopg 3, node-postgres, pgJDBC

#[test]
fn psycopg_prepared_binary_and_transactions_behave_as_on_postgres() {
    let python = on_path(
        "python3",
        "install Python 3 (Debian/Ubuntu: `apt-get install python3`)",
    );
    let probe = run(
        {
            let mut c = command(&python);
            c.args(["-c", "import psycopg"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        probe.status.success(),
        "psycopg 3 is not installed for python3: `pip install \"psycopg[binary]\"` (.ci/run does)\n{}",
        show(&probe)
    );
    let gate = Gate::start();
    let db = warehouse();
    let script = Path::new("tests/clients/python/psycopg_client.py");
    let runs: Vec<_> = ["king", "analyst"]
        .into_iter()
        .map(|user| {
            let mut c = command(&python);
            c.arg(script)
                .arg(gate.url_for(db, user))
                .arg(native_url(user));
            (
                user,
                std::thread::spawn(move || run(c, Duration::from_secs(60))),
            )
        })
        .collect();
    for (user, handle) in runs {
        let out = handle.join().unwrap();
        let refused = if user == "king" { "42501" } else { "ok" };
        let mut expected = vec![
            ("binary_format", "1"),
            ("txn_refused", refused),
            ("txn_status_after_rollback", "IDLE"),
            ("txn_status_after_commit", "IDLE"),
            ("prepared_refusal", refused),
            ("write_refused", "42501"),
            ("forged_cancel_ignored", "true"),
            ("cancelled", "57014"),
            ("cancelled_within_3s", "true"),
            ("other_session", "ok"),
        ];
        if user == "king" {
            expected.extend([
                ("prepared_counts", "5,5,4,2"),
                ("prepared_names_0", "King Inc"),
                ("prepared_names_2", "King Inc"),
                ("prepared_after_refusal", "5"),
                ("binary_orders", "5"),
                ("txn_merchants", "1"),
                ("txn_status_after_refusal", "INERROR"),
                ("txn_next_statement", "25P02"),
                ("txn_next_with_param", "25P02"),
                ("txn_after_rollback", "1"),
                ("txn_block_orders", "5"),
                ("named_cursor_ids", "11,22,33,44,55"),
                ("after_cancel", "1"),
                ("copy_table", "1:King Inc"),
                ("copy_query", "44,55"),
                (
                    "pipeline_events",
                    "InsufficientPrivilege:42501,first:5,after_sync:1",
                ),
            ]);
        } else {
            expected.extend([
                ("prepared_counts", "60,60,40,20"),
                ("binary_orders", "60"),
                ("txn_merchants", "11"),
                ("txn_after_rollback", "11"),
                ("pipeline_events", "first:60,after_sync:11"),
            ]);
        }
        check_facts(&format!("psycopg as {user}"), &out, &gate, &expected);
    }
}

#[test]
fn node_postgres_parameterized_queries_are_filtered_and_refusals_are_42501() {
    let node = on_path(
        "node",
        "install Node.js (Debian/Ubuntu: `apt-get install nodejs npm`)",
    );
    let dir = Path::new("tests/clients/node");
    assert!(
        dir.join("node_modules/pg/package.json").is_file(),
        "node-postgres is not installed: run `npm ci` in tests/clients/node (.ci/run does)"
    );
    let gate = Gate::start();
    let db = warehouse();
    let url = |user: &str| {
        format!(
            "postgresql://{user}:{PASSWORD}@127.0.0.1:{}/{db}",
            gate.port
        )
    };
    let native = |user: &str| {
        format!(
            "postgresql://{db}_{user}@127.0.0.1:{}/{db}",
            common::cluster().port
        )
    };
    let runs: Vec<_> = ["king", "analyst"]
        .into_iter()
        .map(|user| {
            let mut c = command(&node);
            c.arg(dir.join("pg_client.js"))
                .arg(url(user))
                .arg(native(user));
            (
                user,
                std::thread::spawn(move || run(c, Duration::from_secs(60))),
            )
        })
        .collect();
    for (user, handle) in runs {
        let out = handle.join().unwrap();
        let expected: &[(&str, &str)] = if user == "king" {
            &[
                ("param_orders", "5"),
                ("param_orders_over_40", "2"),
                ("param_merchants", "1:King Inc"),
                ("param_countries", "Vietnam"),
                ("named_first", "11,22,33,44,55"),
                ("named_second", "33,44,55"),
                ("refused_param", "42501"),
                ("refused_simple", "42501"),
                ("after_refusal", "42/1"),
            ]
        } else {
            &[
                ("param_orders", "60"),
                (
                    "param_merchants",
                    "1:King Inc|2:king inc|4:O'Brien & Co|7:King Inc|11:King Inc",
                ),
                ("param_countries", "France|Vietnam"),
                ("refused_param", "ok"),
                ("after_refusal", "42/11"),
            ]
        };
        check_facts(&format!("node-postgres as {user}"), &out, &gate, expected);
    }
}

#[test]
fn pgjdbc_server_prepared_fetch_size_and_metadata_work_for_a_member() {
    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.is_file(),
        "pgJDBC is not installed: `apt-get install libpostgresql-jdbc-java` (.ci/run does)"
    );
    let install_jdk = "install a JDK (Debian/Ubuntu: `apt-get install default-jdk-headless`)";
    let javac = on_path("javac", install_jdk);
    let java = on_path("java", install_jdk);
    let classes = tempfile::tempdir().unwrap();
    let mut compile = command(&javac);
    compile
        .arg("-cp")
        .arg(jar)
        .arg("-d")
        .arg(classes.path())
        .arg("tests/clients/java/JdbcClient.java");
    let out = run(compile, Duration::from_secs(120));
    assert!(out.status.success(), "javac failed:\n{}", show(&out));

    let gate = Gate::start();
    let db = warehouse();
    let classpath = std::env::join_paths([jar, classes.path()]).unwrap();
    let jdbc = |port: u16| format!("jdbc:postgresql://127.0.0.1:{port}/{db}?sslmode=disable");
    let mut c = command(&java);
    c.arg("-cp")
        .arg(&classpath)
        .arg("JdbcClient")
        .arg(jdbc(gate.port))
        .arg("king")
        .arg(PASSWORD)
        .arg(jdbc(common::cluster().port))
        .arg(format!("{db}_king"));
    let out = run(c, Duration::from_secs(90));
    check_facts(
        "pgJDBC as king",
        &out,
        &gate,
        &[
            ("threshold_counts", "5,5,5,5,2,2,2,2"),
            ("threshold_server_prepared", "true"),
            ("refused", "42501"),
            ("after_refusal_merchants", "1"),
            ("fetch_rows", "5"),
            ("read_only_merchants", "1"),
            ("copy_out", "1:King Inc"),
            ("multi_statement", "1,5"),
            ("multi_statement_refused", "42501"),
            (
                "result_metadata",
                "id:int4:merchants.id:nullable=0,merchant:text:merchants.name:nullable=1,\
                 amount:numeric:orders.amount:nullable=1",
            ),
            ("query_timeout", "57014"),
            ("query_timeout_within_5s", "true"),
            ("after_timeout_orders", "5"),
            ("simple_mode", "3:22"),
            (
                "merchant_columns",
                "id:int4,name:text,country_id:int4,tier:int4,created:date",
            ),
            ("orders_primary_key", "id"),
        ],
    );
    let tables = facts(&out).get("tables").cloned().unwrap_or_default();
    for table in ["countries", "merchants", "orders", "types"] {
        assert!(
            tables.split(',').any(|t| t == table),
            "getTables as king should list {table}: {tables}"
        );
    }
}

// ---------------------------------------------------------------------------
// pgbench

/// A database with pgbench's tables at scale 2 (branches 1 and 2).
fn pgbench_database() -> String {
    let db = common::cluster().create_database("clients_pgbench");
    let mut c = command(&pg_client("pgbench"));
    c.args([
        "-i",
        "-s",
        "2",
        "-q",
        "-I",
        "dtgp",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .args(["-p", &common::cluster().port.to_string(), &db]);
    let out = run(c, Duration::from_secs(120));
    assert!(out.status.success(), "pgbench -i failed:\n{}", show(&out));
    db
}

#[test]
fn pgbench_runs_through_rowgate_in_every_query_mode() {
    let pgbench = pg_client("pgbench");
    let db = pgbench_database();
    let gate = Gate::start();
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        "\\set aid random(1, 200000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
    )
    .unwrap();

    // The filter holds: bencher sees branch 1's 100000 accounts of 200000.
    let mut direct = common::cluster().connect(&db);
    let all: i64 = direct
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .unwrap()
        .get(0);
    let mut bencher = gate.connect(&db, "bencher", PASSWORD).unwrap();
    let visible: i64 = bencher
        .query_one(
            "SELECT count(*) FROM pgbench_accounts WHERE aid > 99990",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!((all, visible), (200000, 10));

    // A large result streams through whole: COPY of the visible 100000.
    let mut c = command(&pg_client("psql"));
    c.env("PGPASSWORD", PASSWORD)
        .args(["-X", "-q", "--no-password", "-h", "127.0.0.1"])
        .args(["-p", &gate.port.to_string(), "-U", "bencher", "-d", &db])
        .args(["-c", "COPY pgbench_accounts (aid, bid) TO STDOUT"]);
    let out = run(c, Duration::from_secs(60));
    let copied = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && copied.lines().count() == 100000
            && copied.lines().all(|l| l.ends_with("\t1")),
        "COPY pgbench_accounts as bencher: {} lines\n{}\n{}",
        copied.lines().count(),
        String::from_utf8_lossy(&out.stderr),
        gate.log_tail()
    );

    let runs: Vec<_> = ["simple", "extended", "prepared"]
        .into_iter()
        .map(|mode| {
            let mut c = command(&pgbench);
            c.env("PGPASSWORD", PASSWORD)
                .args(["-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode, "-f"])
                .arg(script.path())
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &gate.port.to_string(),
                    "-U",
                    "bencher",
                    &db,
                ]);
            (
                mode,
                std::thread::spawn(move || run(c, Duration::from_secs(120))),
            )
        })
        .collect();
    for (mode, handle) in runs {
        let out = handle.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && text.contains("number of transactions actually processed: 800/800")
                && text.contains("number of failed transactions: 0 "),
            "pgbench -M {mode} through rowgate:\n{}\n{}",
            show(&out),
            gate.log_tail()
        );
    }
}

// ---------------------------------------------------------------------------
// Authentication

#[test]
fn client_authentication_fails_alike_for_wrong_passwords_and_unknown_users() {
    let gate = Gate::start();
    let db = warehouse();
    runtime().block_on(async {
        let ok = connect(&gate.url_for(db, "king")).await.unwrap();
        assert_eq!(
            simple(&ok, "SELECT count(*) FROM merchants").await,
            [[Some("1".into())]]
        );

        let failure = |user: &'static str, password: &'static str| {
            let url = format!(
                "host=127.0.0.1 port={} user={user} password='{password}' dbname={db}",
                gate.port
            );
            async move {
                let e = match connect(&url).await {
                    Ok(_) => panic!("{user} logged in with password {password:?}"),
                    Err(e) => e,
                };
                let db_error = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{user}: no ErrorResponse: {e:?}"));
                (
                    db_error.severity().to_string(),
                    db_error.code().code().to_string(),
                    db_error.message().replace(user, "USER"),
                )
            }
        };
        let wrong = failure("king", "not-pw").await;
        let unknown = failure("ghost", "pw").await;
        let empty = failure("king", "").await;
        assert_eq!(wrong.1, "28P01", "{wrong:?}");
        assert_eq!(
            wrong.2, "password authentication failed for user \"USER\"",
            "{wrong:?}"
        );
        assert_eq!(
            unknown, wrong,
            "an unknown user must look like a wrong password"
        );
        assert_eq!(empty.1, "28P01", "{empty:?}");

        // A database the upstream lacks: the upstream's own error.
        let Err(e) = connect(&gate.url_for("no_such_database", "king")).await else {
            panic!("a missing database should fail");
        };
        assert_eq!(code(&e), Some("3D000"), "{e:?}");
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("no_such_database")),
            "{e:?}"
        );
    });

    // psql shows the same failure.
    let out = psql(&gate, "king", &["-c", "SELECT 1"]);
    assert!(out.status.success(), "{}", show(&out));
    let mut c = command(&pg_client("psql"));
    c.env("PGPASSWORD", "wrong")
        .args([
            "-X",
            "--no-password",
            "-h",
            "127.0.0.1",
            "-p",
            &gate.port.to_string(),
        ])
        .args(["-U", "king", "-d", db, "-c", "SELECT 1"]);
    let out = run(c, Duration::from_secs(30));
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("password authentication failed for user \"king\""),
        "{}",
        show(&out)
    );
}

#[test]
fn every_upstream_authentication_method_lets_a_member_query() {
    let db = warehouse();
    let gates: Vec<_> = common::Cluster::AUTH_ROLES
        .iter()
        .map(|&(user, password)| {
            (
                user,
                Gate::start_with(UpstreamAuth {
                    user,
                    password: Some(password),
                }),
            )
        })
        .collect();
    for (upstream_user, gate) in &gates {
        let mut king = gate.connect(db, "king", PASSWORD).unwrap_or_else(|e| {
            panic!(
                "king through rowgate upstream as {upstream_user}: {e:?}\n{}",
                gate.log_tail()
            )
        });
        let rows = common::text_rows(&mut king, "SELECT count(*) FROM merchants").unwrap();
        assert_eq!(
            rows,
            [[Some("1".to_string())]],
            "upstream as {upstream_user}"
        );
        // The member is who the session says it is, whatever the upstream
        // role.
        let who = common::text_rows(&mut king, "SELECT current_user").unwrap();
        assert_eq!(
            who,
            [[Some("king".to_string())]],
            "upstream as {upstream_user}"
        );
    }
}
