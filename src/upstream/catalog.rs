//! The live catalog: which relations each upstream database holds, read with
//! tokio-postgres over a control connection, kept as a snapshot per database,
//! refreshed when stale and when a name is missing (a table created since).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::config::Upstream;
use crate::rewrite::Catalog;

/// Relations of one database at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Relation names by schema.
    relations: HashMap<String, HashSet<String>>,
    /// Function names by schema, outside the system schemas.
    functions: HashMap<String, HashSet<String>>,
    taken: Option<Instant>,
}

impl Catalog for Snapshot {
    fn contains(&self, schema: &str, name: &str) -> bool {
        self.relations
            .get(schema)
            .is_some_and(|names| names.contains(name))
    }

    fn has_function(&self, schema: &str, name: &str) -> bool {
        self.functions
            .get(schema)
            .is_some_and(|names| names.contains(name))
    }
}

impl Snapshot {
    pub fn age(&self) -> Duration {
        self.taken.map_or(Duration::MAX, |t| t.elapsed())
    }
}

/// Snapshots per database, shared by every session.
pub struct LiveCatalog {
    upstream: Upstream,
    snapshots: DashMap<String, Arc<Snapshot>>,
    loading: Mutex<()>,
    /// A snapshot older than this is reloaded when a session starts.
    pub max_age: Duration,
}

const RELATIONS: &str = "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')";

const FUNCTIONS: &str = "SELECT DISTINCT n.nspname, p.proname FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')";

impl LiveCatalog {
    pub fn new(upstream: Upstream) -> Self {
        Self {
            upstream,
            snapshots: DashMap::new(),
            loading: Mutex::new(()),
            max_age: Duration::from_secs(60),
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
        let snapshot = Arc::new(self.load(database).await?);
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
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        let rows = client.query(RELATIONS, &[]).await;
        let functions = client.query(FUNCTIONS, &[]).await;
        drop(client);
        let _ = task.await;
        let by_schema = |rows: Vec<tokio_postgres::Row>| {
            let mut map: HashMap<String, HashSet<String>> = HashMap::new();
            for row in rows {
                map.entry(row.get(0)).or_default().insert(row.get(1));
            }
            map
        };
        Ok(Snapshot {
            relations: by_schema(rows?),
            functions: by_schema(functions?),
            taken: Some(Instant::now()),
        })
    }
}
