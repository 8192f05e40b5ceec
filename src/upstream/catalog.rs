//! The live catalog: which relations each upstream database holds, read with
//! tokio-postgres over a control connection, kept as a snapshot per database,
//! refreshed when stale and when a name is missing (a table created since).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::config::{Upstream, UpstreamTls};
use crate::rewrite::types::{Cast, Function, Oid, Operator, TypeCatalog, TypeInfo};
use crate::rewrite::{Catalog, ColumnDefault};
use tokio_postgres::config::SslMode;

/// Relations of one database at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Relation names by schema.
    relations: HashMap<String, HashSet<String>>,
    /// Function names by schema, outside the system schemas.
    functions: HashMap<String, HashSet<String>>,
    /// Of those, functions of one row-typed argument.
    row_functions: HashMap<String, HashSet<String>>,
    /// Function names of `pg_catalog`.
    builtin_functions: HashSet<String>,
    /// Operator names by schema, outside the system schemas.
    operators: HashMap<String, HashSet<String>>,
    /// Domain names by schema, outside the system schemas.
    domains: HashMap<String, HashSet<String>>,
    /// Target types (as `format_type` prints them) of casts implemented by
    /// user-defined functions.
    user_casts: HashSet<String>,
    /// Column names and types of every relation, by schema and name.
    columns: HashMap<(String, String), Vec<(String, Oid)>>,
    /// Types, operators, casts and functions, for leakproofness.
    types: TypeCatalog,
    /// The database's name.
    database: String,
    /// Every schema's name.
    schemas: HashSet<String>,
    /// Schemas on which PUBLIC holds USAGE.
    public_schemas: HashSet<String>,
    /// Relations with inheritance children or partitions, or partitioned.
    parents: HashSet<(String, String)>,
    /// Ordinary and partitioned tables without rules or triggers of their
    /// own (the internal ones of foreign keys aside), nor descendants with
    /// any: where a read-write member's statement writes exactly what it
    /// says (see [`WRITABLE`]).
    writable: HashSet<(String, String)>,
    /// Defaults of ordinary tables' columns that have one or are identity
    /// or generated columns, by schema, table and column.
    defaults: HashMap<(String, String, String), ColumnDefault>,
    /// Settings PostgreSQL shows only to superusers and members of
    /// `pg_read_all_settings` (`None` when they could not be told).
    privileged_settings: Option<HashSet<String>>,
    /// The planner's statistics: rows per table, distinct values per column.
    estimates: Estimates,
    taken: Option<Instant>,
    /// Changes when a reload finds different objects; equal generations of
    /// one database hold the same names.
    generation: u64,
}

impl Catalog for Snapshot {
    fn database(&self) -> Option<&str> {
        Some(&self.database)
    }

    fn writable(&self, schema: &str, name: &str) -> bool {
        self.writable
            .contains(&(schema.to_string(), name.to_string()))
    }

    fn has_children(&self, schema: &str, name: &str) -> Option<bool> {
        if !self.contains(schema, name) {
            return None;
        }
        Some(
            self.parents
                .contains(&(schema.to_string(), name.to_string())),
        )
    }

    fn usable_by_all(&self, schema: &str) -> bool {
        self.public_schemas.contains(schema)
    }

    fn has_schema(&self, schema: &str) -> Option<bool> {
        Some(self.schemas.contains(schema))
    }

    fn privileged_settings(&self) -> Option<&HashSet<String>> {
        self.privileged_settings.as_ref()
    }

    fn contains(&self, schema: &str, name: &str) -> bool {
        self.relations
            .get(schema)
            .is_some_and(|names| names.contains(name))
    }

    fn has_function(&self, schema: &str, name: &str) -> bool {
        in_schema(&self.functions, schema, name)
    }

    fn has_row_function(&self, schema: &str, name: &str) -> bool {
        in_schema(&self.row_functions, schema, name)
    }

    fn has_builtin_function(&self, name: &str) -> bool {
        self.builtin_functions.contains(name)
    }

    fn has_operator(&self, schema: &str, symbol: &str) -> bool {
        in_schema(&self.operators, schema, symbol)
    }

    fn has_domain(&self, schema: &str, name: &str) -> bool {
        in_schema(&self.domains, schema, name)
    }

    fn has_user_cast_to(&self, type_name: &str) -> bool {
        self.user_casts.contains(type_name)
    }

    fn columns(&self, schema: &str, name: &str) -> Option<Vec<(String, Oid)>> {
        self.columns
            .get(&(schema.to_string(), name.to_string()))
            .cloned()
    }

    fn row_estimate(&self, schema: &str, name: &str) -> Option<f64> {
        self.estimates
            .rows
            .get(&(schema.to_string(), name.to_string()))
            .copied()
    }

    fn distinct_estimate(&self, schema: &str, name: &str, column: &str) -> Option<f64> {
        let key = (schema.to_string(), name.to_string(), column.to_string());
        let n = *self.estimates.distinct.get(&key)?;
        // A negative n_distinct is a fraction of the rows (-1: unique).
        if n < 0.0 {
            Some(-n * self.row_estimate(schema, name)?)
        } else if n > 0.0 {
            Some(n)
        } else {
            None
        }
    }

    fn types(&self) -> Option<&TypeCatalog> {
        Some(&self.types)
    }

    fn column_default(&self, schema: &str, name: &str, column: &str) -> Option<ColumnDefault> {
        if !self.contains(schema, name) {
            return None;
        }
        let key = (schema.to_string(), name.to_string(), column.to_string());
        Some(
            self.defaults
                .get(&key)
                .cloned()
                .unwrap_or(ColumnDefault::Null),
        )
    }
}

fn in_schema(map: &HashMap<String, HashSet<String>>, schema: &str, name: &str) -> bool {
    map.get(schema).is_some_and(|names| names.contains(name))
}

impl Snapshot {
    pub fn age(&self) -> Duration {
        self.taken.map_or(Duration::MAX, |t| t.elapsed())
    }

    /// See the field; what sessions compare to know whether what they
    /// derived from a snapshot still holds.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn same_objects(&self, other: &Snapshot) -> bool {
        self.relations == other.relations
            && self.functions == other.functions
            && self.row_functions == other.row_functions
            && self.builtin_functions == other.builtin_functions
            && self.operators == other.operators
            && self.domains == other.domains
            && self.user_casts == other.user_casts
            && self.columns == other.columns
            && self.types == other.types
            && self.schemas == other.schemas
            && self.public_schemas == other.public_schemas
            && self.parents == other.parents
            && self.writable == other.writable
            && self.defaults == other.defaults
    }
}

/// Snapshots per database, shared by every session (a handle: clones share
/// them).
#[derive(Clone)]
pub struct LiveCatalog {
    inner: Arc<Inner>,
    /// A snapshot older than this is reloaded in the background when a
    /// statement uses it: objects created upstream are seen within this
    /// time and the time a reload takes.
    pub max_age: Duration,
}

struct Inner {
    upstream: Upstream,
    snapshots: DashMap<String, Arc<Snapshot>>,
    loading: Mutex<()>,
    /// Databases whose background reload is under way.
    reloading: std::sync::Mutex<HashSet<String>>,
}

/// The planner's statistics, as `ANALYZE` left them. They change without
/// changing any name, so they are not part of a snapshot's generation.
#[derive(Debug, Default)]
struct Estimates {
    rows: HashMap<(String, String), f64>,
    /// `pg_stats.n_distinct` as stored (negative: a fraction of the rows).
    distinct: HashMap<(String, String, String), f64>,
}

/// A connection of rowgate's own to `database` as `upstream.user`, with
/// the sessions' TLS rule; the task that drives it ends when the client is
/// dropped.
async fn open(
    upstream: &Upstream,
    database: &str,
    application: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&upstream.host)
        .port(upstream.port)
        .user(&upstream.user)
        .dbname(database)
        .application_name(application)
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = &upstream.password {
        config.password(p);
    }
    Ok(match upstream.tls {
        UpstreamTls::Disable => {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            (
                client,
                tokio::spawn(async move { connection.await.map(drop) }),
            )
        }
        mode => {
            config.ssl_mode(if mode == UpstreamTls::Require {
                SslMode::Require
            } else {
                SslMode::Prefer
            });
            let (client, connection) = config.connect(crate::tls::MakeRustls::new()).await?;
            (
                client,
                tokio::spawn(async move { connection.await.map(drop) }),
            )
        }
    })
}

/// A connection of rowgate's own (see [`open`]), for a task that keeps it.
pub async fn connect_own(
    upstream: &Upstream,
    database: &str,
    application: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    Ok(open(upstream, database, application).await?.0)
}

/// Rows of tables that have been analyzed (`reltuples` is -1 before).
const ROW_ESTIMATES: &str = "SELECT n.nspname::text, c.relname::text, c.reltuples::float8 \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'm', 'f', 'p') AND c.reltuples >= 0";

/// Distinct values per column; a table's own statistics, not those of its
/// inheritance tree, unless it only has the latter (a partitioned table).
const DISTINCT_ESTIMATES: &str = "SELECT DISTINCT ON (schemaname, tablename, attname) \
     schemaname::text, tablename::text, attname::text, n_distinct::float8 \
     FROM pg_catalog.pg_stats ORDER BY schemaname, tablename, attname, inherited";

async fn load_estimates(
    client: &tokio_postgres::Client,
) -> Result<Estimates, tokio_postgres::Error> {
    let rows = client
        .query(ROW_ESTIMATES, &[])
        .await?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let distinct = client
        .query(DISTINCT_ESTIMATES, &[])
        .await?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect();
    Ok(Estimates { rows, distinct })
}

const RELATIONS: &str = "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')";

/// The system schemas, whose objects are PostgreSQL's own.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// `(schema, name)` queries, one per kind of object the rewriter asks about.
fn object_queries() -> [String; 5] {
    [
        format!(
            "SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS}"
        ),
        format!(
            "SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             JOIN pg_catalog.pg_type t ON t.oid = p.proargtypes[0] \
             WHERE {USER_SCHEMAS} AND p.pronargs = 1 \
             AND (t.typtype IN ('c', 'p') OR t.typrelid <> 0)"
        ),
        "SELECT DISTINCT 'pg_catalog', p.proname FROM pg_catalog.pg_proc p \
         WHERE p.pronamespace = 'pg_catalog'::regnamespace"
            .to_string(),
        // Operators written in SQL or a procedural language: the ones that
        // can read tables. Extensions' C operators (citext, hstore, ...) are
        // not counted, or every `=` would be suspect where they live.
        format!(
            "SELECT DISTINCT n.nspname, o.oprname FROM pg_catalog.pg_operator o \
             JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
             JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE {USER_SCHEMAS} AND l.lanname NOT IN ('c', 'internal')"
        ),
        format!(
            "SELECT DISTINCT n.nspname, t.typname FROM pg_catalog.pg_type t \
             JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE {USER_SCHEMAS} AND t.typtype = 'd'"
        ),
    ]
}

const COLUMNS: &str = "SELECT n.nspname, c.relname, a.attname, a.atttypid \
     FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'p', 'f') \
     ORDER BY c.oid, a.attnum";

const TYPES: &str = "SELECT t.oid, t.typname, t.typnamespace = 'pg_catalog'::regnamespace, \
     t.typcategory::text, t.typispreferred, t.typtype::text, t.typbasetype, t.typelem, t.typarray \
     FROM pg_catalog.pg_type t";

const OPERATORS: &str =
    "SELECT o.oprname::text, o.oprleft, o.oprright, o.oprresult, p.proleakproof, \
     n.nspname::text \
     FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode \
     JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace";

const CASTS: &str = "SELECT c.castsource, c.casttarget, c.castcontext::text, c.castmethod::text, \
     coalesce(p.proleakproof, false) \
     FROM pg_catalog.pg_cast c LEFT JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc";

const FUNCTIONS: &str =
    "SELECT p.proname::text, p.proargtypes::oid[], p.prorettype, p.proleakproof, \
     p.prokind::text, p.provariadic <> 0 OR p.pronargdefaults > 0 OR p.proretset, n.nspname::text, \
     p.proretset \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace";

/// Reads the type system of the connected database.
async fn load_types(client: &tokio_postgres::Client) -> Result<TypeCatalog, tokio_postgres::Error> {
    let byte = |s: String| s.bytes().next().unwrap_or(0);
    let mut catalog = TypeCatalog::default();
    for row in client.query(TYPES, &[]).await? {
        let oid: Oid = row.get(0);
        let name: String = row.get(1);
        if row.get::<_, bool>(2) {
            catalog.names.insert(name.clone(), oid);
        }
        catalog.types.insert(
            oid,
            TypeInfo {
                name,
                category: byte(row.get(3)),
                preferred: row.get(4),
                kind: byte(row.get(5)),
                base: row.get(6),
                elem: row.get(7),
                array: row.get(8),
            },
        );
    }
    for row in client.query(OPERATORS, &[]).await? {
        catalog
            .operators
            .entry(row.get(0))
            .or_default()
            .push(Operator {
                schema: row.get(5),
                left: row.get(1),
                right: row.get(2),
                result: row.get(3),
                leakproof: row.get(4),
            });
    }
    for row in client.query(CASTS, &[]).await? {
        catalog.casts.insert(
            (row.get(0), row.get(1)),
            Cast {
                context: byte(row.get(2)),
                method: byte(row.get(3)),
                leakproof: row.get(4),
            },
        );
    }
    for row in client.query(FUNCTIONS, &[]).await? {
        let kind = byte(row.get(4));
        catalog
            .functions
            .entry(row.get(0))
            .or_default()
            .push(Function {
                schema: row.get(6),
                aggregate: kind == b'a' || kind == b'w',
                args: row.get(1),
                result: row.get(2),
                leakproof: row.get(3),
                irregular: row.get(5),
                set_returning: row.get(7),
            });
    }
    Ok(catalog)
}

/// Ordinary and partitioned tables of which neither the table nor any
/// descendant (inheritance child or partition, at any depth) has rules or
/// triggers of its own, and whose descendants are all tables too.
const WRITABLE: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND NOT EXISTS ( \
       WITH RECURSIVE tree(oid) AS (SELECT c.oid UNION \
         SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.oid) \
       SELECT 1 FROM tree t JOIN pg_catalog.pg_class d ON d.oid = t.oid \
       WHERE d.relkind NOT IN ('r', 'p') OR d.relhasrules \
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g \
         WHERE g.tgrelid = d.oid AND NOT g.tgisinternal))";

/// Columns of ordinary tables with a default, or identity or generated;
/// the expression printed with only `pg_catalog` on the search path (see
/// [`load`](LiveCatalog::load)).
const DEFAULTS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text, \
     CASE WHEN a.attidentity = '' AND a.attgenerated = '' \
     THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END \
     FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped \
     AND (d.adbin IS NOT NULL OR a.attidentity <> '' OR a.attgenerated <> '')";

const PARENTS: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'p' OR c.oid IN (SELECT inhparent FROM pg_catalog.pg_inherits)";

const PUBLIC_SCHEMAS: &str = "SELECT n.nspname::text FROM pg_catalog.pg_namespace n \
     WHERE EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) a \
     WHERE a.grantee = 0 AND a.privilege_type = 'USAGE')";

const SCHEMAS: &str = "SELECT nspname::text FROM pg_catalog.pg_namespace";

/// The settings that `pg_settings` lists for the upstream role but not for
/// a role without privileges (one that cannot log in and holds nothing of
/// its own, `pg_read_all_data`, taken for a moment in a transaction that is
/// rolled back): the ones PostgreSQL shows only to superusers and members of
/// `pg_read_all_settings`. `None` when the upstream role cannot take it.
async fn privileged_settings(client: &tokio_postgres::Client) -> Option<HashSet<String>> {
    let names = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> HashSet<String> {
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect()
    };
    const LIST: &str = "SELECT name FROM pg_catalog.pg_settings";
    let all = names(client.simple_query(LIST).await.ok()?);
    let result = client
        .simple_query(&format!(
            "BEGIN; SET LOCAL ROLE pg_read_all_data; {LIST}; ROLLBACK"
        ))
        .await;
    let _ = client.simple_query("ROLLBACK").await;
    let unprivileged = names(result.ok()?);
    if unprivileged.is_empty() {
        return None;
    }
    Some(all.difference(&unprivileged).cloned().collect())
}

const USER_CASTS: &str = "SELECT DISTINCT '', pg_catalog.format_type(c.casttarget, NULL) \
     FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND l.lanname NOT IN ('c', 'internal')";

impl LiveCatalog {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream,
                snapshots: DashMap::new(),
                loading: Mutex::new(()),
                reloading: std::sync::Mutex::new(HashSet::new()),
            }),
            max_age: Duration::from_secs(10),
        }
    }

    /// The newest snapshot of `database` there is, without loading one.
    pub fn latest(&self, database: &str) -> Option<Arc<Snapshot>> {
        self.inner.snapshots.get(database).map(|s| s.clone())
    }

    /// Reloads `database` in a task of its own, unless one already does, so
    /// that no statement waits for it. Must be called within a tokio
    /// runtime.
    pub fn reload_in_background(&self, database: &str) {
        {
            let mut reloading = self
                .inner
                .reloading
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !reloading.insert(database.to_string()) {
                return;
            }
        }
        let this = self.clone();
        let database = database.to_string();
        tokio::spawn(async move {
            let _ = this.refresh(&database, this.max_age).await;
            this.inner
                .reloading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&database);
        });
    }

    /// The current snapshot of `database`, loading it when missing or older
    /// than `max_age`.
    pub async fn get(&self, database: &str) -> Result<Arc<Snapshot>, tokio_postgres::Error> {
        if let Some(s) = self.inner.snapshots.get(database) {
            if s.age() < self.max_age {
                return Ok(s.clone());
            }
        }
        self.refresh(database, self.max_age).await
    }

    /// Reloads `database` unless its snapshot is younger than `fresh_enough`
    /// (a burst of misses loads once).
    pub async fn refresh(
        &self,
        database: &str,
        fresh_enough: Duration,
    ) -> Result<Arc<Snapshot>, tokio_postgres::Error> {
        let _guard = self.inner.loading.lock().await;
        if let Some(s) = self.inner.snapshots.get(database) {
            if s.age() < fresh_enough {
                return Ok(s.clone());
            }
        }
        // Boxed: a session awaits this rarely, and its own future should
        // not hold the load's state while idle.
        let mut snapshot = Box::pin(self.load(database)).await?;
        if let Some(old) = self.inner.snapshots.get(database) {
            snapshot.generation = if old.same_objects(&snapshot) {
                old.generation
            } else {
                old.generation + 1
            };
        }
        let snapshot = Arc::new(snapshot);
        self.inner
            .snapshots
            .insert(database.to_string(), snapshot.clone());
        Ok(snapshot)
    }

    async fn load(&self, database: &str) -> Result<Snapshot, tokio_postgres::Error> {
        let (client, task) = open(&self.inner.upstream, database, "rowgate catalog").await?;
        let result = async {
            let by_schema = |rows: Vec<tokio_postgres::Row>| {
                let mut map: HashMap<String, HashSet<String>> = HashMap::new();
                for row in rows {
                    map.entry(row.get(0)).or_default().insert(row.get(1));
                }
                map
            };
            let relations = by_schema(client.query(RELATIONS, &[]).await?);
            let [functions, row_functions, builtin, operators, domains] = object_queries();
            let functions = by_schema(client.query(&functions, &[]).await?);
            let row_functions = by_schema(client.query(&row_functions, &[]).await?);
            let builtin_functions = by_schema(client.query(&builtin, &[]).await?)
                .remove("pg_catalog")
                .unwrap_or_default();
            let operators = by_schema(client.query(&operators, &[]).await?);
            let domains = by_schema(client.query(&domains, &[]).await?);
            let user_casts = by_schema(client.query(USER_CASTS, &[]).await?)
                .remove("")
                .unwrap_or_default();
            let mut columns: HashMap<(String, String), Vec<(String, Oid)>> = HashMap::new();
            for row in client.query(COLUMNS, &[]).await? {
                columns
                    .entry((row.get(0), row.get(1)))
                    .or_default()
                    .push((row.get(2), row.get(3)));
            }
            let types = load_types(&client).await?;
            let estimates = load_estimates(&client).await?;
            let schemas = client
                .query(SCHEMAS, &[])
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let public_schemas = client
                .query(PUBLIC_SCHEMAS, &[])
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            let privileged_settings = privileged_settings(&client).await;
            let parents = client
                .query(PARENTS, &[])
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let writable = client
                .query(WRITABLE, &[])
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            // Last: the connection's search path is `pg_catalog` alone from
            // here, so every other name in a default comes qualified.
            client
                .batch_execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)")
                .await?;
            let defaults = client
                .query(DEFAULTS, &[])
                .await?
                .into_iter()
                .map(|r| {
                    let expr: Option<String> = r.get(3);
                    let default = expr.map_or(ColumnDefault::Generated, ColumnDefault::Expr);
                    ((r.get(0), r.get(1), r.get(2)), default)
                })
                .collect();
            Ok::<_, tokio_postgres::Error>((
                defaults,
                public_schemas,
                parents,
                writable,
                schemas,
                privileged_settings,
                relations,
                functions,
                row_functions,
                builtin_functions,
                operators,
                domains,
                user_casts,
                columns,
                types,
                estimates,
            ))
        }
        .await;
        drop(client);
        let _ = task.await;
        let (
            defaults,
            public_schemas,
            parents,
            writable,
            schemas,
            privileged_settings,
            relations,
            functions,
            row_functions,
            builtin_functions,
            operators,
            domains,
            user_casts,
            columns,
            types,
            estimates,
        ) = result?;
        Ok(Snapshot {
            relations,
            functions,
            row_functions,
            builtin_functions,
            operators,
            domains,
            user_casts,
            columns,
            types,
            estimates,
            database: database.to_string(),
            schemas,
            public_schemas,
            parents,
            writable,
            defaults,
            privileged_settings,
            taken: Some(Instant::now()),
            generation: 0,
        })
    }
}
