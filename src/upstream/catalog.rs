//! The live catalog: which relations each upstream database holds, read with
//! tokio-postgres over a control connection, kept as a snapshot per database,
//! refreshed when stale and when a name is missing (a table created since).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::config::{Upstream, UpstreamTls};
use crate::rewrite::Catalog;
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
    taken: Option<Instant>,
    /// Changes when a reload finds different objects; equal generations of
    /// one database hold the same names.
    generation: u64,
}

impl Catalog for Snapshot {
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
    }
}

/// Snapshots per database, shared by every session.
pub struct LiveCatalog {
    upstream: Upstream,
    snapshots: DashMap<String, Arc<Snapshot>>,
    loading: Mutex<()>,
    /// A snapshot older than this is reloaded before the next statement
    /// that uses it: objects created upstream are seen within this time.
    pub max_age: Duration,
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

const USER_CASTS: &str = "SELECT DISTINCT '', pg_catalog.format_type(c.casttarget, NULL) \
     FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND l.lanname NOT IN ('c', 'internal')";

impl LiveCatalog {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            snapshots: DashMap::new(),
            loading: Mutex::new(()),
            max_age: Duration::from_secs(10),
        }
    }

    /// The current snapshot of `database`, loading it when missing or older
    /// than `max_age`.
    pub async fn get(&self, database: &str) -> Result<Arc<Snapshot>, tokio_postgres::Error> {
        if let Some(s) = self.snapshots.get(database) {
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
        let _guard = self.loading.lock().await;
        if let Some(s) = self.snapshots.get(database) {
            if s.age() < fresh_enough {
                return Ok(s.clone());
            }
        }
        let mut snapshot = self.load(database).await?;
        if let Some(old) = self.snapshots.get(database) {
            snapshot.generation = if old.same_objects(&snapshot) {
                old.generation
            } else {
                old.generation + 1
            };
        }
        let snapshot = Arc::new(snapshot);
        self.snapshots
            .insert(database.to_string(), snapshot.clone());
        Ok(snapshot)
    }

    async fn load(&self, database: &str) -> Result<Snapshot, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.upstream.host)
            .port(self.upstream.port)
            .user(&self.upstream.user)
            .dbname(database)
            .application_name("rowgate catalog")
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = &self.upstream.password {
            config.password(p);
        }
        // The same TLS rule as the sessions' upstream connections.
        let (client, task) = match self.upstream.tls {
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
        };
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
            Ok::<_, tokio_postgres::Error>((
                relations,
                functions,
                row_functions,
                builtin_functions,
                operators,
                domains,
                user_casts,
            ))
        }
        .await;
        drop(client);
        let _ = task.await;
        let (
            relations,
            functions,
            row_functions,
            builtin_functions,
            operators,
            domains,
            user_casts,
        ) = result?;
        Ok(Snapshot {
            relations,
            functions,
            row_functions,
            builtin_functions,
            operators,
            domains,
            user_casts,
            taken: Some(Instant::now()),
            generation: 0,
        })
    }
}
