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
//! One test per driver covers its connection options, schema browser and
//! filtered reads; two more cover what needs more of the catalog than the
//! granted tables' own rows: columns of a stand-alone composite type
//! (asyncpg, pgJDBC, psqlODBC) and pgJDBC's `getTablePrivileges`.
//!
//! A missing driver is a test failure that says what to install (`.ci/run`
//! installs them all), never a silent skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use common::programs::{command, facts, on_path, run, show};
use common::rls::{self, PASSWORD};
use common::Gate;

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

impl Gate {
    /// rowgate with the differential policy and this suite's.
    fn start() -> Gate {
        Gate::with_policies(
            &[
                (Path::new(rls::POLICY).to_path_buf(), "differential.yaml"),
                (Path::new(FIXTURES).join("policy.yaml"), "bi_drivers.yaml"),
            ],
            "",
            common::UpstreamAuth::TRUST,
        )
    }

    /// A `postgresql://` URL for the member through rowgate.
    fn member_url(&self) -> String {
        format!(
            "postgresql://{MEMBER}:{PASSWORD}@127.0.0.1:{}/{}",
            self.port,
            warehouse()
        )
    }

    /// The last lines of the proxy's log, each cut at 400 characters, for
    /// failure messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<String> = log
            .lines()
            .map(|l| match l.char_indices().nth(400) {
                Some((cut, _)) => format!("{} [...]", &l[..cut]),
                None => l.to_string(),
            })
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
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

/// What is wrong with a helper's facts: each expected value, and every fact
/// it saw through rowgate that the native oracle saw otherwise
/// (`name.same=false`).
fn problems(what: &str, output: &Output, expected: &[(&str, &str)]) -> Vec<String> {
    let facts = facts(output);
    let mut problems = Vec::new();
    if !output.status.success() || facts.get("done").map(String::as_str) != Some("true") {
        problems.push(format!(
            "{what}: the program did not run to its end\n{}",
            show(output)
        ));
    }
    for (name, want) in expected {
        match facts.get(*name) {
            Some(got) if got == want => {}
            got => problems.push(format!("{what}: {name}: expected {want:?}, got {got:?}")),
        }
    }
    for (name, same) in &facts {
        if let Some(fact) = name.strip_suffix(".same") {
            if same != "true" {
                problems.push(format!(
                    "{what}: {fact}: through rowgate {:?}, but the native oracle saw {:?}",
                    facts.get(fact),
                    facts.get(&format!("{fact}.native"))
                ));
            }
        }
    }
    problems
}

/// Fails with every problem at once, and the proxy's log.
fn assert_no_problems(problems: &[String], gate: &Gate) {
    assert!(
        problems.is_empty(),
        "{}\nrowgate log (tail):\n{}",
        problems.join("\n"),
        gate.log_tail()
    );
}

/// Checks one helper run (see `problems`).
fn check_facts(what: &str, output: &Output, gate: &Gate, expected: &[(&str, &str)]) {
    let problems = problems(what, output, expected);
    if !problems.is_empty() {
        assert_no_problems(&[problems.join("\n"), show(output)], gate);
    }
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

/// asyncpg's helper with `steps`, through `gate` and natively.
fn asyncpg(gate: &Gate, steps: &[&str]) -> Output {
    let python = python(&[("asyncpg", "`pip install asyncpg`")]);
    let mut args = vec![gate.member_url(), native_url()];
    args.extend(steps.iter().map(|s| s.to_string()));
    run_python(&python, "asyncpg_client.py", &args)
}

/// asyncpg with `server_settings={'jit': 'off'}`: its type introspection
/// (after `set_config('jit', 'off', false)`) runs as the member, and enum,
/// range (built-in and user-defined) and array columns decode, and encode as
/// parameters; only the member's rows arrive; refusals are 42501 and the
/// session goes on; a cursor streams the filtered rows; a pool resets its
/// connection between acquisitions.
#[test]
fn asyncpg_decodes_enum_range_and_array_columns_and_sees_the_members_rows() {
    let gate = Gate::start();
    let out = asyncpg(&gate, &["types", "pool"]);
    check_facts(
        "asyncpg as bi",
        &out,
        &gate,
        &[
            ("jit", "off"),
            ("gadget_ids", "1,2,3"),
            (
                "gadget_1",
                "1|\"happy\"|{\"happy\",\"sad\"}|[1,10)|[2024-01-01,2024-02-01)|[0.5,2.5]|\
                 {{1,2},{3,4}}|{\"x\",\"y, z\",NULL}",
            ),
            ("gadget_2", "2|\"sad\"|{}|empty|(,2024-01-01)|(,)|{}|{}"),
            ("gadget_3", "3|NULL|NULL|NULL|NULL|NULL|NULL|NULL"),
            (
                "gadget_types",
                "feeling:mood:scalar,moods:mood[]:array,sizes:int4range:range,\
                 span:daterange:range,weights:floatrange:range,grid:int4[]:array",
            ),
            ("by_enum", "{1}"),
            ("by_enum_array", "{1}"),
            ("by_range", "{1}"),
            ("by_custom_range", "{1}"),
            ("merchants", "{(1,\"King Inc\")}"),
            ("orders", "{11,22,33,44,55}"),
            ("orders_over", "{11,22,55}"),
            ("gadget_merchants", "{(\"lamp\",\"King Inc\")}"),
            ("hidden", "42501"),
            ("ungranted", "42501"),
            ("after_refusal", "3"),
            ("cursor_orders", "{11,22,33,44,55}"),
            // A pool's reset query between acquisitions, on one session.
            ("pool_merchants", "{1,1,1}"),
            ("pool_sessions", "1"),
            ("pool_jit", "off"),
        ],
    );
}

// ---------------------------------------------------------------------------
// SQLAlchemy 2 on psycopg2

/// `sqlalchemy.inspect(engine)` on psycopg2: schemas and tables list only
/// what is granted (no `hr`, `hr.salaries` or `tickets`); columns, keys,
/// indexes and enums of granted tables are what a native role gets; reads
/// through the engine (reflected tables, Core, text with parameters) return
/// the member's rows.
#[test]
fn sqlalchemy_inspector_lists_only_granted_tables_and_the_engine_reads_the_members_rows() {
    let python = python(&[
        ("psycopg2", "`pip install psycopg2-binary`"),
        ("sqlalchemy", "`pip install 'sqlalchemy>=2'`"),
    ]);
    let gate = Gate::start();
    let db = warehouse();
    let url = |port: u16, user: &str| {
        format!("postgresql+psycopg2://{user}@127.0.0.1:{port}/{db}?sslmode=disable")
    };
    let out = run_python(
        &python,
        "sqlalchemy_client.py",
        &[
            url(gate.port, &format!("{MEMBER}:{PASSWORD}")),
            url(common::cluster().port, &format!("{db}_{MEMBER}")),
        ],
    );
    let version = facts(&out).get("sqlalchemy_version").cloned();
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with('2')),
        "SQLAlchemy 2.x is needed: `pip install 'sqlalchemy>=2'`; found {version:?}"
    );
    check_facts(
        "SQLAlchemy (psycopg2) as bi",
        &out,
        &gate,
        &[
            ("default_schema", "public"),
            // The listings: only what is granted (a native role sees hr,
            // hr.salaries and tickets too).
            ("schemas", "information_schema,public,sales"),
            ("public_tables", "countries,gadgets,merchants,orders,products"),
            ("sales_tables", "Returns"),
            ("hr_tables", ""),
            ("has_tickets", "False"),
            ("has_salaries", "False"),
            ("has_gadgets", "True"),
            ("schemas.native", "hr,information_schema,public,sales"),
            (
                "public_tables.native",
                "countries,gadgets,merchants,orders,products,tickets",
            ),
            ("hr_tables.native", "salaries"),
            // Granted tables' reflection, as native PostgreSQL gives it.
            (
                "merchants_columns",
                "id:INTEGER():notnull,name:TEXT():null,country_id:INTEGER():null,\
                 tier:INTEGER():null,created:DATE():null",
            ),
            (
                "gadgets_columns",
                "id:INTEGER():notnull,owner:TEXT():null,merchant_id:INTEGER():null,\
                 name:TEXT():notnull,feeling:ENUM('sad', 'ok', 'happy', name='mood'):null,\
                 moods:ARRAY(ENUM('sad', 'ok', 'happy', name='mood')):null,addr:NullType():null,\
                 addrs:NullType():null,sizes:INT4RANGE():null,span:DATERANGE():null,\
                 weights:NullType():null,grid:ARRAY(INTEGER()):null,tags:ARRAY(TEXT()):null",
            ),
            (
                "returns_columns",
                "id:INTEGER():notnull,order_id:INTEGER():null,reason:TEXT():null",
            ),
            (
                "gadgets_pk",
                "{'constrained_columns': ['id'], 'name': 'gadgets_pkey', 'comment': None, \
                 'dialect_options': {'postgresql_include': []}}",
            ),
            (
                "gadgets_fks",
                "[{'name': 'gadgets_merchant_id_fkey', 'constrained_columns': ['merchant_id'], \
                 'referred_schema': None, 'referred_table': 'merchants', 'referred_columns': ['id'], \
                 'options': {}, 'comment': None}]",
            ),
            (
                "gadgets_indexes",
                "[{'name': 'gadgets_merchant_idx', 'unique': False, 'column_names': ['merchant_id', \
                 'feeling'], 'dialect_options': {'postgresql_include': []}}, {'name': \
                 'gadgets_name_key', 'unique': True, 'column_names': ['name'], 'dialect_options': \
                 {'postgresql_include': []}}]",
            ),
            (
                "enums",
                "[{'name': 'mood', 'schema': 'public', 'visible': True, 'labels': ['sad', 'ok', \
                 'happy']}]",
            ),
            // Reads through the engine: the member's rows.
            ("merchants_rows", "1:King Inc"),
            ("orders_count", "5"),
            ("orders_by_merchant", "King Inc:5:257.50"),
            (
                "gadgets_rows",
                "1:lamp:happy:[1,10)|2:desk:sad:empty|3:chair:None:None",
            ),
            ("orders_over", "3"),
            ("hidden", "42501"),
            ("after_refusal", "1"),
        ],
    );
}

// ---------------------------------------------------------------------------
// pgJDBC

/// `JdbcMetadataClient`, compiled once per test process, and the classpath
/// to run it with.
fn jdbc_classpath() -> &'static std::ffi::OsString {
    static CLASSES: OnceLock<(tempfile::TempDir, std::ffi::OsString)> = OnceLock::new();
    &CLASSES
        .get_or_init(|| {
            let jar = Path::new("/usr/share/java/postgresql.jar");
            assert!(
                jar.is_file(),
                "pgJDBC is not installed: `apt-get install libpostgresql-jdbc-java` (.ci/run does)"
            );
            let javac = on_path("javac", JDK);
            let classes = tempfile::tempdir().unwrap();
            let mut compile = command(&javac);
            compile
                .arg("-cp")
                .arg(jar)
                .arg("-d")
                .arg(classes.path())
                .arg("tests/clients/java/JdbcMetadataClient.java");
            let out = run(compile, Duration::from_secs(120));
            assert!(out.status.success(), "javac failed:\n{}", show(&out));
            let classpath = std::env::join_paths([jar, classes.path()]).unwrap();
            (classes, classpath)
        })
        .1
}

const JDK: &str = "install a JDK (Debian/Ubuntu: `apt-get install default-jdk-headless`)";

/// `JdbcMetadataClient` with `steps`, through `gate` and natively.
fn pgjdbc(gate: &Gate, steps: &[&str]) -> Output {
    let classpath = jdbc_classpath();
    let db = warehouse();
    let jdbc = |port: u16| format!("jdbc:postgresql://127.0.0.1:{port}/{db}?sslmode=disable");
    let mut c = command(&on_path("java", JDK));
    c.arg("-cp")
        .arg(classpath)
        .arg("JdbcMetadataClient")
        .arg(jdbc(gate.port))
        .arg(MEMBER)
        .arg(PASSWORD)
        .arg(jdbc(common::cluster().port))
        .arg(format!("{db}_{MEMBER}"))
        .args(steps);
    run(c, Duration::from_secs(90))
}

/// pgJDBC: `currentSchema=public` in the URL and `setSchema("public")`
/// work; `getSchemas`, `getTables` and `getColumns` list only what is
/// granted; keys, indexes and values of granted tables are native's.
#[test]
fn pgjdbc_current_schema_and_database_metadata_list_only_granted_tables() {
    let gate = Gate::start();
    let out = pgjdbc(&gate, &["metadata"]);
    check_facts(
        "pgJDBC as bi",
        &out,
        &gate,
        &[
            // currentSchema=public in the URL, and setSchema("public").
            ("url_schema", "public"),
            ("url_schema_merchants", "1"),
            ("schema_before", "public"),
            ("set_schema", "public"),
            ("set_schema_merchants", "1"),
            // The listings: only what is granted.
            ("schemas", "information_schema,pg_catalog,public,sales"),
            (
                "public_tables",
                "countries,gadgets,merchants,orders,products",
            ),
            (
                "all_tables",
                "public.countries,public.gadgets,public.merchants,public.orders,\
                 public.products,sales.Returns",
            ),
            ("hr_tables", ""),
            ("tickets_columns", ""),
            (
                "schemas.native",
                "hr,information_schema,pg_catalog,public,sales",
            ),
            ("hr_tables.native", "salaries"),
            ("tickets_columns.native", "id,assignee,title,merchant_id"),
            // Granted tables, as native PostgreSQL describes them.
            (
                "merchants_columns",
                "id:int4,name:text,country_id:int4,tier:int4,created:date",
            ),
            ("gadgets_primary_key", "id:gadgets_pkey"),
            ("gadgets_imported_keys", "merchant_id->public.merchants.id"),
            (
                "gadgets_indexes",
                "gadgets_merchant_idx:feeling:true,gadgets_merchant_idx:merchant_id:true,\
                 gadgets_name_key:name:false,gadgets_pkey:id:false",
            ),
            (
                "gadgets_rows",
                "1:happy:{happy,sad}:(\"1 Main St\",12345,\"{a,\"\"b c\"\"}\"):[1,10):[0.5,2.5]|\
                 2:sad:{}:(,,):empty:(,)|3:null:null:null:null:null",
            ),
            ("merchants_rows", "1:King Inc"),
        ],
    );
}

/// pgJDBC's `getTablePrivileges` (which joins `pg_class.relowner` to
/// `pg_roles` and reads `relacl`) shows SELECT, and nothing else, on each
/// granted table, and no ungranted table. The member is no role upstream,
/// so an access privilege cannot name it: the grant reads as PUBLIC's (to
/// a native role it would name the role).
#[test]
fn pgjdbc_table_privileges_show_select_on_granted_tables_only() {
    let gate = Gate::start();
    let out = pgjdbc(&gate, &["privileges"]);
    // SELECT on each granted table; nothing else.
    check_facts(
        "pgJDBC getTablePrivileges as bi",
        &out,
        &gate,
        &[
            (
                "public_privileges",
                "countries:PUBLIC:SELECT,gadgets:PUBLIC:SELECT,merchants:PUBLIC:SELECT,\
                 orders:PUBLIC:SELECT,products:PUBLIC:SELECT",
            ),
            ("sales_privileges", "Returns:PUBLIC:SELECT"),
            ("hr_privileges", ""),
        ],
    );
}

// ---------------------------------------------------------------------------
// psqlODBC through pyodbc

/// psqlODBC through pyodbc, DSN-less: SQLTables and SQLColumns list only
/// what is granted; SQLColumns, SQLPrimaryKeys, SQLForeignKeys and
/// SQLStatistics of granted tables are native's; a plain and a
/// parameterized SELECT return the member's rows, in a transaction (pyodbc
/// turns autocommit off) that survives a refusal after a rollback.
#[test]
fn psqlodbc_catalog_functions_list_only_granted_tables_and_select_the_members_rows() {
    let python = odbc_python();
    let gate = Gate::start();
    let out = odbc(&python, &gate, &["catalog"]);
    check_facts(
        "psqlODBC (pyodbc) as bi",
        &out,
        &gate,
        &[
            // SQLTables: only what is granted.
            (
                "tables",
                "public.countries:TABLE,public.gadgets:TABLE,public.merchants:TABLE,\
                 public.orders:TABLE,public.products:TABLE,sales.Returns:TABLE",
            ),
            (
                "public_tables",
                "countries,gadgets,merchants,orders,products",
            ),
            ("hr_tables", ""),
            ("tickets_columns", ""),
            ("hr_tables.native", "salaries"),
            ("tickets_columns.native", "id,assignee,title,merchant_id"),
            // SQLColumns and the keys of granted tables, as natively.
            (
                "merchants_columns",
                "id:int4:4:0,name:text:-10:1,country_id:int4:4:1,tier:int4:4:1,created:date:91:1",
            ),
            ("merchants_primary_key", "id:merchants_pkey"),
            ("gadgets_foreign_keys", "merchant_id->merchants.id"),
            (
                "gadgets_statistics",
                "gadgets_merchant_idx:feeling:1,gadgets_merchant_idx:merchant_id:1,\
                 gadgets_name_key:name:0,gadgets_pkey:id:0",
            ),
            // Filtered SELECTs, a refusal, and the session after it.
            ("merchants_rows", "1:King Inc"),
            ("orders_over", "3"),
            (
                "gadgets_rows",
                "1:lamp:happy:[1,10)|2:desk:sad:empty|3:chair:None:None",
            ),
            ("hidden", "42501"),
            ("after_refusal", "1"),
        ],
    );
}

/// `python3` with pyodbc and a psqlODBC driver unixODBC can load.
fn odbc_python() -> PathBuf {
    let python = python(&[(
        "pyodbc",
        "`apt-get install unixodbc` and `pip install pyodbc`",
    )]);
    let out = run_python(&python, "odbc_client.py", &["--driver".to_string()]);
    assert!(
        out.status.success(),
        "psqlODBC is not installed: `apt-get install odbc-postgresql` (.ci/run does)\n{}",
        show(&out)
    );
    python
}

/// The ODBC helper with `steps`, through `gate` and natively.
fn odbc(python: &Path, gate: &Gate, steps: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "127.0.0.1".into(),
        gate.port.to_string(),
        warehouse().into(),
        MEMBER.into(),
        PASSWORD.into(),
        common::cluster().port.to_string(),
        format!("{}_{MEMBER}", warehouse()),
    ];
    args.extend(steps.iter().map(|s| s.to_string()));
    run_python(python, "odbc_client.py", &args)
}

// ---------------------------------------------------------------------------
// Composite types, in every driver that needs the catalog to use them

/// A column of a stand-alone composite type (`address`, with its own
/// `pg_class` entry of relkind `c`) and an array of it, in a granted
/// table: asyncpg decodes them from the attributes its introspection reads,
/// and pgJDBC's `getColumns` and psqlODBC's SQLColumns (which join
/// `pg_type`) list them, as for a native role.
#[test]
fn columns_of_a_composite_type_reach_asyncpg_pgjdbc_and_psqlodbc() {
    let gate = Gate::start();
    let odbc_python = odbc_python();
    let mut found = problems(
        "asyncpg",
        &asyncpg(&gate, &["composites"]),
        &[
            (
                "composite_rows",
                "1:(\"1 Main St\",12345,{\"a\",\"b c\"}):{(\"x\",1,{}),NULL}|\
                 2:(NULL,NULL,NULL):{}|3:NULL:NULL",
            ),
            (
                "whole_row_1",
                "(1,\"bi\",1,\"lamp\",\"happy\",{\"happy\",\"sad\"},(\"1 Main St\",12345,\
                 {\"a\",\"b c\"}),{(\"x\",1,{}),NULL},[1,10),[2024-01-01,2024-02-01),[0.5,2.5],\
                 {{1,2},{3,4}},{\"x\",\"y, z\",NULL})",
            ),
            ("zip_of_address", "{12345}"),
        ],
    );
    found.extend(problems(
        "pgJDBC getColumns",
        &pgjdbc(&gate, &["composites"]),
        &[(
            "gadgets_columns",
            "id:int4:4:NO,owner:text:12:YES,merchant_id:int4:4:YES,name:text:12:NO,\
             feeling:mood:12:YES,moods:_mood:2003:YES,addr:address:2002:YES,\
             addrs:_address:2003:YES,sizes:int4range:1111:YES,span:daterange:1111:YES,\
             weights:floatrange:1111:YES,grid:_int4:2003:YES,tags:_text:2003:YES",
        )],
    ));
    found.extend(problems(
        "psqlODBC SQLColumns",
        &odbc(&odbc_python, &gate, &["composites"]),
        &[(
            "gadgets_columns",
            "id:int4:4,owner:text:-10,merchant_id:int4:4,name:text:-10,feeling:mood:-9,\
             moods:_mood:-9,addr:address:-9,addrs:_address:-9,sizes:int4range:-9,\
             span:daterange:-9,weights:floatrange:-9,grid:_int4:-9,tags:_text:-9",
        )],
    ));
    assert_no_problems(&found, &gate);
}
